"""``n_clusters="auto"``: the number of clusters, estimated before the fit from the density of
a neighbour layout of the rows.

Deep clusterers take the number of clusters as given; HDBSCAN (Campello et al. 2013) finds one
by density, but in the input space, where pixels and documents hold their categories on
manifolds rather than in dense regions. Laid out by UMAP's objective, the same rows' neighbour
links form such regions (McInnes et al. 2018; BERTopic counts topics this way). The estimate:

1. The rows' neighbour graph, as the layout start builds it, with no number of clusters in it:
   for images and other non-negative rows the links that an autoencoder's codes and the input
   rows agree on (``_layout.neighbor_graph``); for other rows the input rows' own fuzzy
   neighbour graph, in the kind's metric, as the network sees them.
2. Its layout in ``_LAYOUT_DIMS`` dimensions (``_layout.neighbor_layout``, fewer epochs than
   the start's: the estimate needs the regions, not their fine arrangement).
3. HDBSCAN of the layout, where a cluster must hold at least ``_MIN_DENSE_SHARE`` of the rows
   (and ``_MIN_DENSE_ROWS``). Of the ``k`` clusters it selects, those that hold at least half
   their equal share (half of the clustered rows over ``k``) count: the fit that follows keeps
   every cluster at least that large (``cluster_sizes="estimated"``), so a smaller group
   would not stay a cluster of it. The small groups are mostly a category that the layout
   tore into a large part and a fragment (sklearn digits: 13 to 15 clusters, 10 or 11 that
   count). The count, within ``[2, max_clusters]``, is the estimate; the count at other
   minimum sizes is the curve that shows how firm it is: flat where the data hold
   well-separated groups, falling where the number is a matter of resolution.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import HDBSCAN

from ._data import chunked_rows
from ._geometry import RowProfile, input_scaling
from ._layout import (
    MIN_CODES,
    N_NEIGHBORS,
    input_neighbor_graph,
    knn_fuzzy_graph,
    neighbor_graph,
    neighbor_layout,
)
from ._recipes import RECIPES

# The count's layout: its dimensions, and its epochs in one round each (UMAP's for large data
# sets); the start's longer layout barely moved the counts (user guide, "Choosing the number
# of clusters").
_LAYOUT_DIMS = 10
_COUNT_LAYOUT_EPOCHS = 200
# A dense group holds at least this share of the rows, and this many rows (the graph's
# neighbours: a smaller group is not a dense region of it); the share sets the resolution
# where the count depends on it (benchmarks/results/n_clusters.md).
_MIN_DENSE_SHARE = 0.005
_MIN_DENSE_ROWS = N_NEIGHBORS
# The curve: the count at these shares (the estimate's among them).
_CURVE_SHARES = (0.0025, 0.005, 0.01, 0.02, 0.04)
# The estimate looks at most at this many rows (a seeded sample of them).
_MAX_ROWS = 20_000
# The autoencoder's passes over small data sets: the count's figures were measured with the
# start's former 250; fewer tore groups of a few hundred rows apart.
_AUTOENCODER_PASSES = 250
# Of HDBSCAN's clusters, those that hold at least this share of their equal share count; the
# smaller ones are mostly fragments that the layout tore off a category.
_MIN_COUNTED_SHARE = 0.5


@dataclass(frozen=True)
class ClusterCount:
    """The estimated number of clusters, and the count at each minimum cluster size."""

    n_clusters: int
    min_cluster_sizes: np.ndarray
    counts: np.ndarray
    selected: int  # index of the estimate's minimum size

    def as_dict(self) -> dict:
        """The fitted attribute ``n_clusters_curve_``."""
        return {
            "min_cluster_size": self.min_cluster_sizes,
            "n_clusters": self.counts,
            "selected": self.selected,
        }


def estimate_n_clusters(
    X,
    *,
    kind: str,
    image_shape: tuple[int, int, int] | None,
    max_clusters: int,
    seed: int,
    device: torch.device,
    fast_dtype: torch.dtype = torch.float32,
    profile: RowProfile | None = None,
) -> ClusterCount:
    """The number of clusters in ``X`` by HDBSCAN of its neighbour layout (module docstring).

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
    kind : str
        ``"image"`` or the kind of flat rows (``_geometry.RowProfile.kind``).
    image_shape : tuple or None
    max_clusters : int
        The estimate is at most this (and at least 2).
    seed : int
        Seeds the sample of rows, the autoencoder and the layout.
    device : torch.device
        Where the autoencoder trains and neighbours are searched.
    fast_dtype : torch.dtype, default=torch.float32
        The autoencoder's training precision.
    profile : RowProfile or None, default=None
        The profile of ``X`` (``_geometry.profile_rows``), whose column statistics scale the
        rows unless a sample of them is taken; None: the rows are profiled here.
    """
    rng = np.random.default_rng(seed)
    n_samples = X.shape[0]
    if n_samples > _MAX_ROWS:
        X = X[np.sort(rng.choice(n_samples, _MAX_ROWS, replace=False))]
        n_samples = _MAX_ROWS
        profile = None  # the sample is scaled by its own statistics
    mean, scale, normalize_rows = input_scaling(
        X if profile is None else profile, kind, image_shape
    )
    metric = RECIPES[kind].metric
    # Kinds whose categories lie on manifolds are linked through an autoencoder's codes.
    if "layout" in RECIPES[kind].starts and not sp.issparse(X):
        mean_, scale_ = torch.from_numpy(mean).to(device), torch.from_numpy(scale).to(device)
        graph = neighbor_graph(
            X,
            MIN_CODES,
            rng,
            standardize=lambda rows: (rows - mean_) / scale_,
            input_graph=input_neighbor_graph(X, metric, device),
            device=device,
            fast_dtype=fast_dtype,
            max_passes=_AUTOENCODER_PASSES,
        )
    else:
        if sp.issparse(X):
            rows = sp.csr_matrix(X, dtype=np.float32)
        else:
            rows = np.vstack(list(chunked_rows(X))).astype(np.float32)
            if metric == "euclidean" and not normalize_rows:
                rows = (rows - mean) / scale
            rows = torch.from_numpy(rows).to(device)
        graph = knn_fuzzy_graph(rows, min(N_NEIGHBORS, n_samples - 1), metric)
    layout = neighbor_layout(
        graph,
        _LAYOUT_DIMS,
        seed=int(rng.integers(2**31)),
        n_epochs=_COUNT_LAYOUT_EPOCHS,
        n_rounds=1,
    )
    return density_count(layout, max_clusters)


def density_count(layout: np.ndarray, max_clusters: int) -> ClusterCount:
    """HDBSCAN's number of clusters in ``layout`` at each minimum size of ``_CURVE_SHARES``;
    the estimate is the count at ``_MIN_DENSE_SHARE``, within ``[2, max_clusters]``."""
    n_samples = len(layout)
    share_sizes = [_min_cluster_size(n_samples, share) for share in _CURVE_SHARES]
    sizes = np.unique(share_sizes)
    chosen = share_sizes[_CURVE_SHARES.index(_MIN_DENSE_SHARE)]
    counts = np.array([_hdbscan_count(layout, int(size)) for size in sizes])
    selected = int(np.flatnonzero(sizes == chosen)[0])
    n_clusters = int(np.clip(counts[selected], 2, max_clusters))
    return ClusterCount(n_clusters, sizes.astype(np.int64), counts.astype(np.int64), selected)


def _min_cluster_size(n_samples: int, share: float) -> int:
    """HDBSCAN's minimum cluster size for ``share`` of a layout of ``n_samples`` rows."""
    return min(n_samples, max(_MIN_DENSE_ROWS, round(share * n_samples)))


def _hdbscan_count(layout: np.ndarray, min_cluster_size: int) -> int:
    """HDBSCAN's clusters of ``layout`` that hold at least ``_MIN_COUNTED_SHARE`` of the
    equal share of its clustered rows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        labels = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(layout)
    sizes = np.bincount(labels[labels >= 0])  # HDBSCAN numbers its clusters 0 .. k - 1
    if sizes.size == 0:
        return 0
    return int((sizes >= _MIN_COUNTED_SHARE * sizes.sum() / sizes.size).sum())


def max_clusters_for(n_samples: int, max_clusters: int | None) -> int:
    """The bound on the estimate: ``max_clusters``, and at most a cluster per 2 rows."""
    bound = max(2, n_samples // 2)
    return bound if max_clusters is None else min(max_clusters, bound)


def largest_estimate(n_samples: int, max_clusters: int | None) -> int:
    """The largest number that ``estimate_n_clusters`` can give for ``n_samples`` rows and the
    estimator's ``max_clusters``: each of HDBSCAN's clusters holds at least the minimum
    cluster size, so a layout holds at most its rows over that size of them."""
    n_layout = min(n_samples, _MAX_ROWS)
    most = n_layout // _min_cluster_size(n_layout, _MIN_DENSE_SHARE)
    return min(max_clusters_for(n_samples, max_clusters), max(2, most))
