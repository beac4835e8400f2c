"""The labels that an offline fit starts from (``init``): a clustering of the input rows, or
SeLa's random equal split.

Each start returns a label table of shape ``(n_heads, n_samples)``. ``"mixture"`` and
``"layout"`` (``_layout``) give every head the same clustering: the heads then differ by what
their label steps make of it. ``"kmeans"`` and ``"random"`` draw each head from a seed of its
own, as SeLa's heads are.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

from ._data import chunked_rows
from ._layout import input_neighbor_graph, layout_labels

# Smallest cluster of a start and of estimated sizes, in equal shares: a smaller group of rows
# is a fragment of a category (user guide, "Heads").
MIN_CLUSTER_SHARE = 0.2
# Chance-adjusted share of the input's neighbour-link weight at which a start is kept without
# building costlier ones; high, as the layout wins close calls (user guide, "Flat rows").
SEPARATED_AGREEMENT = 0.98

# Rows that the mixture start is fitted on at most (a seeded sample; it labels every row).
MIXTURE_ROWS = 10_000
# Principal components that wider rows are projected on for the mixture start.
MIXTURE_COMPONENTS = 50
# Candidate shrinkages of the mixture's covariances, in units of a feature's average variance.
SHRINKAGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
# Rows (at most) and folds of the cross-validated likelihood that picks the shrinkage.
_SHRINKAGE_ROWS = 1_000
_SHRINKAGE_FOLDS = 3
# KMeans partitions whose best starts the mixture's EM: one made the start depend on the seed
# (user guide, "Flat rows").
_KMEANS_INITS = 10


# The starts' linear algebra is on small matrices (at most MIXTURE_ROWS x MIXTURE_COMPONENTS,
# factorizations of MIXTURE_COMPONENTS squared), where BLAS threads cost more than they save.
@threadpool_limits.wrap(limits=1, user_api="blas")
def initial_labels(
    X,
    starts: tuple[str, ...],
    n_clusters: int,
    n_heads: int,
    seed: int,
    *,
    module: torch.nn.Module,
    metric: str,
    device: torch.device,
    fast_dtype: torch.dtype = torch.float32,
    layout_clusters: str = "merged",
) -> np.ndarray:
    """The label table ``(n_heads, n_samples)`` that a fit of the rows ``X`` starts from.

    ``starts`` names one start (``"random"``, ``"kmeans"``, ``"mixture"`` or ``"layout"``), or
    several clusterings of dense rows, cheapest first, scored by ``neighbor_agreement`` on
    the input rows' neighbour graph (in ``metric``): the first that scores at least
    ``SEPARATED_AGREEMENT`` is kept without building the others, else the best.
    ``module`` standardizes the rows as the network sees them; ``layout_clusters`` says how
    the layout is cut (``layout_labels``'s ``clusters``).
    """
    if starts == ("random",):
        return random_equal_split(X.shape[0], n_clusters, n_heads, seed)
    if starts == ("kmeans",):
        return kmeans_labels(X, n_clusters, n_heads, seed)
    graph = None
    if "layout" in starts or len(starts) > 1:
        graph = input_neighbor_graph(X, metric, device)
    best, best_score = None, -np.inf
    for start in starts:
        if start == "mixture":
            labels = mixture_labels(X, n_clusters, seed, standardized_by(module, device))
        else:
            labels = layout_labels(
                X,
                n_clusters,
                seed,
                standardize=module.standardize,
                input_graph=graph,
                min_cluster_size=MIN_CLUSTER_SHARE * X.shape[0] / n_clusters,
                device=device,
                fast_dtype=fast_dtype,
                clusters=layout_clusters,
            )
        if len(starts) == 1:
            return np.tile(labels, (n_heads, 1))
        score = neighbor_agreement(labels, graph)
        if score > best_score:
            best, best_score = labels, score
        if score >= SEPARATED_AGREEMENT:
            break
    return np.tile(best, (n_heads, 1))


def neighbor_agreement(labels: np.ndarray, graph: sp.csr_matrix) -> float:
    """How much more of the link weight of ``graph`` stays within the clusters of ``labels``
    than if the rows' clusters were shuffled: ``(within - chance) / (1 - chance)``, with
    ``chance`` the sum of the clusters' squared shares of the weight (graph modularity, scaled
    so that a partition along the links scores 1)."""
    graph = sp.coo_matrix(graph)
    total = graph.data.sum()
    if total <= 0:
        return 0.0
    within = graph.data[labels[graph.row] == labels[graph.col]].sum() / total
    degree = np.bincount(graph.row, weights=graph.data, minlength=len(labels))
    shares = np.bincount(labels, weights=degree) / total
    chance = float((shares**2).sum())
    return float((within - chance) / max(1.0 - chance, 1e-12))


def random_equal_split(n_samples: int, n_clusters: int, n_heads: int, seed: int) -> np.ndarray:
    """SeLa's initial labels: a random permutation of an equal split, per head, ``(n_heads, n)``."""
    rng = np.random.default_rng(seed)
    equal = np.arange(n_samples) % n_clusters
    return np.stack([rng.permutation(equal) for _ in range(n_heads)])


def kmeans_labels(X, n_clusters: int, n_heads: int, seed: int) -> np.ndarray:
    """Initial labels in the cosine geometry: per head, KMeans (one initialisation, a seed of
    its own) of the L2-normalised rows of ``X``, shape ``(n_heads, n_samples)``."""
    rows = normalize(X if sp.issparse(X) else np.vstack(list(chunked_rows(X))))
    seeds = np.random.default_rng(seed).integers(np.iinfo(np.int32).max, size=n_heads)
    table = [KMeans(n_clusters, n_init=1, random_state=int(s)).fit_predict(rows) for s in seeds]
    return np.stack(table).astype(np.int64)


def mixture_labels(
    X,
    n_clusters: int,
    seed: int,
    standardize: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Labels of the dense rows of ``X`` from a Gaussian mixture with full covariances, shrunk
    towards a multiple of the identity, of the rows as ``standardize`` scales them.

    The mixture is fitted on at most ``MIXTURE_ROWS`` rows (a sample drawn from ``seed``),
    projected on their first ``MIXTURE_COMPONENTS`` principal components when wider; the
    shrinkage (``reg_covar``, from ``SHRINKAGE_GRID``) is the one with the highest
    cross-validated likelihood (``shrinkage_by_likelihood``); EM starts from the best KMeans
    partition (``mixture_from_kmeans``), and the mixture labels every row. The mixture is
    fitted to the rows spread uniformly over their cells where a feature is measured on a
    grid (``grid_steps``). Returns shape ``(n_samples,)``, int64.
    """
    rng = np.random.default_rng(seed)
    n_samples = X.shape[0]
    sample = np.sort(rng.choice(n_samples, size=min(n_samples, MIXTURE_ROWS), replace=False))
    rows = np.asarray(standardize(np.asarray(X[sample], dtype=np.float32)), dtype=np.float64)
    # Its own generator: rows off any grid get the same mixture as without the spread.
    spread = np.random.default_rng([seed, 1]).uniform(-0.5, 0.5, size=rows.shape)
    rows = rows + spread * grid_steps(rows)
    projection = None
    if rows.shape[1] > MIXTURE_COMPONENTS:
        projection = PCA(min(MIXTURE_COMPONENTS, len(rows)), random_state=seed).fit(rows)
        rows = projection.transform(rows)
    shrinkage = shrinkage_by_likelihood(rows, n_clusters, rng)
    mixture = mixture_from_kmeans(rows, n_clusters, shrinkage, int(rng.integers(2**31)))
    labels = np.empty(n_samples, dtype=np.int64)
    start = 0
    for chunk in chunked_rows(X):
        rows = np.asarray(standardize(chunk.astype(np.float32)), dtype=np.float64)
        if projection is not None:
            rows = projection.transform(rows)
        labels[start : start + len(rows)] = mixture.predict(rows)
        start += len(rows)
    return labels


def mixture_from_kmeans(
    rows: np.ndarray, n_clusters: int, shrinkage: float, seed: int
) -> GaussianMixture:
    """A full-covariance Gaussian mixture of ``rows`` (covariances plus ``shrinkage`` times the
    identity) whose EM starts from the best of ``_KMEANS_INITS`` KMeans partitions: each
    component from one part's share, mean and covariance.

    EM only climbs to the nearest optimum; from one KMeans initialisation (scikit-learn's
    default), a mixture of many components often merges two categories and splits another,
    where the best of ten KMeans partitions does not.
    """
    partition = KMeans(n_clusters, n_init=_KMEANS_INITS, random_state=seed).fit(rows)
    parts = partition.labels_
    identity = np.eye(rows.shape[1])
    precisions = []
    for part in range(n_clusters):
        members = rows[parts == part]
        covariance = np.atleast_2d(np.cov(members.T, bias=True)) if len(members) > 1 else 0.0
        precisions.append(np.linalg.inv(covariance + shrinkage * identity))
    with warnings.catch_warnings():
        # A start need not be a converged mixture: training refines it.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(
            n_clusters,
            reg_covar=shrinkage,
            weights_init=np.bincount(parts, minlength=n_clusters) / len(rows),
            means_init=partition.cluster_centers_,
            precisions_init=np.stack(precisions),
            random_state=seed,
        ).fit(rows)


def grid_steps(rows: np.ndarray) -> np.ndarray:
    """Per feature of ``rows``, the smallest gap between two of its values where that gap is
    under the feature's standard deviation, else 0: the step of the grid a count or a rounded
    measurement lies on, over which the mixture spreads the rows.

    A density fitted to rows on a grid rewards components that shrink onto grid lines (their
    likelihood grows without bound), so the cross-validated shrinkage and the mixture follow
    the grid rather than the clusters. A gap of a standard deviation or more is a feature of a
    few far-apart values (a flag), not a grid on a continuous scale: it is left as it is.
    """
    gaps = np.diff(np.sort(rows, axis=0), axis=0)
    gaps[gaps <= 0] = np.inf
    steps = gaps.min(axis=0, initial=np.inf)
    steps[~(steps < rows.std(axis=0))] = 0.0
    return steps


def shrinkage_by_likelihood(rows: np.ndarray, n_clusters: int, rng: np.random.Generator) -> float:
    """The ``reg_covar`` of ``SHRINKAGE_GRID`` (scaled by the rows' average feature variance)
    under which a full-covariance mixture of ``rows`` gives held-out rows the highest mean
    log-likelihood (``_SHRINKAGE_FOLDS``-fold cross-validation on at most ``_SHRINKAGE_ROWS``
    rows).

    Full covariances fit elongated and unequal clusters that KMeans and shared covariances
    cut wrongly, but with few rows per component they follow noise; the shrinkage that
    predicts unseen rows best is as much as the rows support.
    """
    n_rows = min(len(rows), _SHRINKAGE_ROWS)
    rows = rows[np.sort(rng.choice(len(rows), size=n_rows, replace=False))]
    unit = float(rows.var(axis=0).mean()) or 1.0
    if n_rows < _SHRINKAGE_FOLDS * n_clusters:
        return SHRINKAGE_GRID[-1] * unit  # too few rows to compare: the most shrinkage
    splitter = KFold(_SHRINKAGE_FOLDS, shuffle=True, random_state=int(rng.integers(2**31)))
    folds = list(splitter.split(rows))
    seed = int(rng.integers(2**31))
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for shrinkage in SHRINKAGE_GRID:
            held_out = [
                GaussianMixture(n_clusters, reg_covar=shrinkage * unit, random_state=seed)
                .fit(rows[train])
                .score(rows[test])
                for train, test in folds
            ]
            scores.append(np.mean(held_out))
    return SHRINKAGE_GRID[int(np.argmax(scores))] * unit


def standardized_by(module: torch.nn.Module, device) -> Callable[[np.ndarray], np.ndarray]:
    """Dense raw rows -> the rows in the units that ``module``'s encoder sees, as float32."""

    def standardize(rows: np.ndarray) -> np.ndarray:
        # A copy: torch warns on read-only arrays (a pandas frame's values, a memmap).
        batch = torch.tensor(rows, dtype=torch.float32, device=device)
        with torch.no_grad():
            return module.standardize(batch).cpu().numpy()

    return standardize
