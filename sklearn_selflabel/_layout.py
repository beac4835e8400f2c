"""The layout start: the labels that an offline fit of images or non-negative flat rows starts
from, found in a neighbour-embedding layout of the rows (``init="layout"``).

Pixels as flat rows hold their categories on manifolds that their input geometry does not lay
bare: two categories' rows can be each other's nearest neighbours (a 4 and a 9), and a network
trained from SeLa's random split memorises that split before it finds them. N2D (McConville et
al. 2020) clusters such rows by an autoencoder, a UMAP layout of its codes and a Gaussian
mixture. This start does the same, in four steps:

1. ``autoencoder_codes``: a small autoencoder learns to reconstruct the standardised rows; its
   codes are the bottleneck's outputs.
2. ``fuzzy_neighbor_graph``: each row is linked to its nearest neighbours among the codes and,
   separately, among the input rows (in the kind's metric), each as UMAP's fuzzy graph, and
   only the links that both agree on are kept (their fuzzy intersection). Neither graph alone
   suits every data set (user guide, "Flat rows"); the links both hold cross categories less
   often than either's.
3. ``neighbor_layout``: the graph is laid out in ``n_clusters`` dimensions by UMAP's objective
   (McInnes et al. 2018): a spectral start, then stochastic gradient steps that pull linked
   rows together and push random pairs apart, with a heavy-tailed kernel that separates groups.
4. ``merged_mixture``: a Gaussian mixture of the layout with twice as many components as
   clusters cuts it into parts; parts smaller than a minimum size join the part they share
   most links with, and then the two groups of parts joined by the largest share of the
   smaller one's links merge until ``n_clusters`` remain. A mixture of ``n_clusters``
   components alone splits a large category and merges two small ones, since its components
   are drawn to where the rows are; the links between two halves of one category are many
   next to what either half holds, while a small category's links stay mostly its own,
   whatever its size. Where the categories are about equal (pixels of a benchmark's classes),
   two categories that many links join can merge while one category's halves stay apart
   (user guide, "Images"); ``consensus_mixture`` then cuts the layout instead: mixtures of
   ``n_clusters`` components from several seeds, of which the one that agrees best with the
   others is kept (as N2D does, with a consensus against unlucky seeds).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from torch import nn

from ._data import chunked_rows, iter_row_batches, row_tensor
from .propagation import nearest_neighbors

# The start's autoencoder: encoder widths, mirrored by the decoder; a quarter of N2D's work
# per row (user guide, "Flat rows").
_AUTOENCODER_LAYERS = (256, 256, 1024)
# Its optimizer steps, and rows per step.
_AUTOENCODER_STEPS = 2000
_AUTOENCODER_BATCH = 256
# Its passes over a small data set at most: more cost time for no better start (user guide,
# "Flat rows").
_START_AUTOENCODER_PASSES = 50
# Rows per batch of the pass that computes the codes, which bounds that pass's memory.
_CODES_BATCH = 4096
# The codes have n_clusters dimensions, as in N2D, and at least this many.
MIN_CODES = 10
# Neighbours of each row in both graphs (UMAP's default).
N_NEIGHBORS = 15
# UMAP's kernel 1 / (1 + a d^(2b)) for min_dist=0, spread=1, and its negative samples per link.
_KERNEL_A = 1.929
_KERNEL_B = 0.7915
_NEGATIVES = 5
# Epochs of the start's layout: UMAP's for up to 10,000 rows.
_START_LAYOUT_EPOCHS = 500
# Rounds per epoch, each moving the rows by its links' steps: smaller moves are steadier
# (user guide, "Flat rows").
_START_LAYOUT_ROUNDS = 4
# Mixture components per cluster of the merged cut: a torn category's halves merge again.
_PARTS_PER_CLUSTER = 2
# Initialisations of that mixture; the more likely is kept.
_PARTS_INITS = 2
# Rows that a mixture of the layout is fitted on at most (a seeded sample; it labels every row).
_PARTS_ROWS = 10_000
# Mixtures whose consensus cuts the layout (clusters="consensus"), to outvote unlucky seeds.
_CONSENSUS_SEEDS = 12


def layout_labels(
    X,
    n_clusters: int,
    seed: int,
    *,
    standardize: Callable[[torch.Tensor], torch.Tensor],
    input_graph: sp.csr_matrix,
    min_cluster_size: float,
    device: torch.device,
    fast_dtype: torch.dtype = torch.float32,
    clusters: str = "merged",
) -> np.ndarray:
    """Labels of the dense rows of ``X`` from the merged or consensus mixture of their layout.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Dense rows, as given to ``fit``.
    n_clusters : int
    seed : int
        Seeds the autoencoder's batches, the layout and the mixture.
    standardize : callable
        Maps a batch of raw rows to the rows as the network sees them (the autoencoder's
        input).
    input_graph : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
        The input rows' fuzzy neighbour graph (``input_neighbor_graph``).
    min_cluster_size : float
        Rows in the smallest cluster that the layout's parts may form.
    device : torch.device
        Where the autoencoder trains and the neighbours are searched.
    fast_dtype : torch.dtype, default=torch.float32
        The precision of the autoencoder's training steps (bfloat16 under autocast).
    clusters : {"merged", "consensus"}, default="merged"
        How the layout is cut: ``merged_mixture`` or ``consensus_mixture``.

    Returns
    -------
    labels : ndarray of shape (n_samples,), int64
    """
    rng = np.random.default_rng(seed)
    graph = neighbor_graph(
        X,
        max(n_clusters, MIN_CODES),
        rng,
        standardize=standardize,
        input_graph=input_graph,
        device=device,
        fast_dtype=fast_dtype,
    )
    layout = neighbor_layout(graph, max(n_clusters, 2), seed=int(rng.integers(2**31)))
    if clusters == "consensus":
        return consensus_mixture(layout, n_clusters, seed=int(rng.integers(2**31)))
    return merged_mixture(
        layout, graph, n_clusters, min_cluster_size, seed=int(rng.integers(2**31))
    )


def input_neighbor_graph(X, metric: str, device: torch.device) -> sp.csr_matrix:
    """The fuzzy graph (``fuzzy_neighbor_graph``) of each dense row of ``X``'s
    ``N_NEIGHBORS`` nearest neighbours among the rows, in ``metric``."""
    rows = torch.from_numpy(np.vstack(list(chunked_rows(X)))).float().to(device)
    return knn_fuzzy_graph(rows, min(N_NEIGHBORS, X.shape[0] - 1), metric)


def neighbor_graph(
    X,
    n_codes: int,
    rng: np.random.Generator,
    *,
    standardize: Callable[[torch.Tensor], torch.Tensor],
    input_graph: sp.csr_matrix,
    device: torch.device,
    fast_dtype: torch.dtype = torch.float32,
    max_passes: int = _START_AUTOENCODER_PASSES,
) -> sp.csr_matrix:
    """The fuzzy intersection of the neighbour graphs of the autoencoder's codes (``n_codes``
    of them; the autoencoder's weights and batches seeded from ``rng``, at most ``max_passes``
    passes over the rows) and of the input rows (``input_graph``), as in ``layout_labels``."""
    n_neighbors = min(N_NEIGHBORS, X.shape[0] - 1)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(rng.integers(2**31)))  # the autoencoder's weights
        codes = autoencoder_codes(
            X,
            n_codes,
            standardize=standardize,
            generator=torch.Generator().manual_seed(int(rng.integers(2**31))),
            device=device,
            fast_dtype=fast_dtype,
            max_passes=max_passes,
        )
    graph = knn_fuzzy_graph(codes, n_neighbors, "euclidean").multiply(input_graph)
    return sp.csr_matrix(graph)


def autoencoder_codes(
    X,
    n_codes: int,
    *,
    standardize: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    device: torch.device,
    fast_dtype: torch.dtype = torch.float32,
    max_passes: int = _START_AUTOENCODER_PASSES,
) -> torch.Tensor:
    """Train an autoencoder on the standardised rows of ``X``; their codes, ``(n, n_codes)``.

    Fully connected, ReLU, ``_AUTOENCODER_LAYERS`` wide and mirrored, trained by Adam on the
    mean squared reconstruction error for ``_AUTOENCODER_STEPS`` batches (at most
    ``max_passes`` passes over the rows), drawn without replacement within a pass.
    Weights are drawn from torch's global generator (``layout_labels`` seeds it in a fork of
    its state), batches from ``generator``.
    """
    n_samples, n_features = X.shape
    widths = (n_features, *_AUTOENCODER_LAYERS, n_codes)
    encoder = _relu_stack(widths).to(device)
    decoder = _relu_stack(widths[::-1]).to(device)
    # The multi-tensor step, not the fused one: the merged layout parts follow the codes' last
    # bits, and the fused step's cut worse on MNIST-test (changelog).
    parameters = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3, foreach=True)
    batch_size = min(_AUTOENCODER_BATCH, n_samples)
    steps_per_pass = math.ceil(n_samples / batch_size)
    order = torch.empty(0, dtype=torch.int64)
    for step in range(min(_AUTOENCODER_STEPS, max_passes * steps_per_pass)):
        if step % steps_per_pass == 0:
            order = torch.randperm(n_samples, generator=generator)
        batch = order[(step % steps_per_pass) * batch_size :][:batch_size]
        index = np.sort(batch.numpy())
        rows = standardize(row_tensor(X, index=index).to(device))
        with torch.autocast(device.type, fast_dtype, enabled=fast_dtype != torch.float32):
            reconstructed = decoder(encoder(rows))
        loss = nn.functional.mse_loss(reconstructed.float(), rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return torch.cat(
            [
                encoder(standardize(torch.from_numpy(rows).to(device)))
                for rows in iter_row_batches(X, _CODES_BATCH)
            ]
        )


def _relu_stack(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (width, out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(width, out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def knn_fuzzy_graph(rows, n_neighbors: int, metric: str) -> sp.csr_matrix:
    """``fuzzy_neighbor_graph`` of the ``n_neighbors`` nearest neighbours of each of
    ``rows`` (a tensor, or a sparse matrix) in ``metric``."""
    return fuzzy_neighbor_graph(
        *nearest_neighbors(rows, n_neighbors, metric=metric, return_distance=True)
    )


def fuzzy_neighbor_graph(neighbors: torch.Tensor, distances: torch.Tensor) -> sp.csr_matrix:
    """UMAP's fuzzy graph of the k nearest neighbours: symmetric memberships in ``[0, 1]``.

    Row ``i``'s link to its neighbour ``j`` has membership ``exp(-(d_ij - rho_i) / sigma_i)``,
    with ``rho_i`` the distance to the nearest neighbour and ``sigma_i`` such that the
    memberships of the row sum to ``log2(k)``; the graph is their fuzzy union
    ``W + W.T - W * W.T``.
    """
    distances = distances.float().cpu()
    n_samples, k = distances.shape
    beyond_nearest = (distances - distances[:, :1]).clamp_min(0.0)
    # sigma by bisection: the memberships' sum grows with sigma
    target = math.log2(k) if k > 1 else 1.0
    low = torch.zeros(n_samples)
    high = torch.full((n_samples,), math.inf)
    sigma = torch.ones(n_samples)
    for _ in range(64):
        total = torch.exp(-beyond_nearest / sigma[:, None]).sum(dim=1)
        too_wide = total > target
        high = torch.where(too_wide, sigma, high)
        low = torch.where(too_wide, low, sigma)
        sigma = torch.where(torch.isinf(high), sigma * 2.0, (low + high) / 2.0)
    memberships = torch.exp(-beyond_nearest / sigma[:, None])
    directed = sp.csr_matrix(
        (
            memberships.numpy().ravel(),
            (np.repeat(np.arange(n_samples), k), neighbors.cpu().numpy().ravel()),
        ),
        shape=(n_samples, n_samples),
    )
    return sp.csr_matrix(directed + directed.T - directed.multiply(directed.T))


def neighbor_layout(
    graph: sp.csr_matrix,
    n_components: int,
    *,
    seed: int,
    n_epochs: int = _START_LAYOUT_EPOCHS,
    n_rounds: int = _START_LAYOUT_ROUNDS,
) -> np.ndarray:
    """UMAP's layout of a fuzzy graph in ``n_components`` dimensions, float32.

    Starts from the graph's spectral embedding (a random one if that does not converge), then
    runs ``n_epochs`` epochs in which each link is taken with a probability that its
    membership sets, pulls its two rows together, and pushes the first away from
    ``_NEGATIVES`` random rows; the step size falls linearly to 0. An epoch moves the rows
    in ``n_rounds`` rounds, each of a share of the links.
    """
    generator = torch.Generator().manual_seed(seed)
    graph = sp.coo_matrix(graph)
    # UMAP drops the links too weak to be sampled once over all epochs.
    keep = graph.data >= graph.data.max() / n_epochs if graph.nnz else graph.data > 0
    heads = torch.from_numpy(graph.row[keep].astype(np.int64))
    tails = torch.from_numpy(graph.col[keep].astype(np.int64))
    probabilities = torch.from_numpy(graph.data[keep] / graph.data.max()).float()
    positions = torch.from_numpy(_spectral_start(graph, n_components, seed))
    n_samples = positions.shape[0]
    a, b = _KERNEL_A, _KERNEL_B
    for epoch in range(n_epochs):
        step_size = 1.0 - epoch / n_epochs
        taken = torch.rand(len(probabilities), generator=generator) < probabilities
        links = torch.randperm(int(taken.sum()), generator=generator)
        for part in links.chunk(n_rounds):
            head, tail = heads[taken][part], tails[taken][part]
            update = torch.zeros_like(positions)
            difference = positions[head] - positions[tail]
            sq_distance = (difference * difference).sum(dim=1, keepdim=True)
            pull = -2.0 * a * b * sq_distance.clamp_min(1e-12).pow(b - 1.0)
            pull = torch.where(sq_distance > 0, pull / (a * sq_distance.pow(b) + 1.0), 0.0)
            move = (pull * difference).clamp(-4.0, 4.0) * step_size
            update.index_add_(0, head, move).index_add_(0, tail, -move)
            pushed = head.repeat_interleave(_NEGATIVES)
            others = torch.randint(n_samples, (len(pushed),), generator=generator)
            difference = positions[pushed] - positions[others]
            sq_distance = (difference * difference).sum(dim=1, keepdim=True)
            push = 2.0 * b / ((0.001 + sq_distance) * (a * sq_distance.pow(b) + 1.0))
            move = torch.where(sq_distance > 0, (push * difference).clamp(-4.0, 4.0), 0.0)
            update.index_add_(0, pushed, move * step_size)
            positions += update
    return positions.numpy()


def _spectral_start(graph: sp.coo_matrix, n_components: int, seed: int) -> np.ndarray:
    """The leading non-trivial eigenvectors of the normalised graph, scaled to [-10, 10]
    (UMAP's start); rows without a link sit at 0."""
    n_samples = graph.shape[0]
    rng = np.random.default_rng(seed)
    degrees = np.asarray(graph.sum(axis=1)).ravel()
    scaling = sp.diags(np.divide(1.0, np.sqrt(degrees), out=np.zeros(n_samples), where=degrees > 0))
    normalized = sp.csr_matrix(scaling @ graph @ scaling)
    k = n_components + 1
    start = None
    if k < n_samples - 1:
        try:
            values, vectors = eigsh(
                normalized,
                k=k,
                which="LA",
                tol=1e-4,
                v0=rng.uniform(size=n_samples),
                maxiter=n_samples * 5,
            )
            start = vectors[:, np.argsort(-values)[1:k]]
        except ArpackNoConvergence:
            start = None
    if start is None:
        start = rng.uniform(-1.0, 1.0, size=(n_samples, n_components))
    return (10.0 * start / max(np.abs(start).max(), 1e-12)).astype(np.float32)


def merged_mixture(
    layout: np.ndarray, graph: sp.csr_matrix, n_clusters: int, min_size: float, *, seed: int
) -> np.ndarray:
    """Labels of the rows of ``layout`` (one per node of ``graph``): a Gaussian mixture's parts,
    merged along the graph's links into ``n_clusters`` clusters.

    The mixture (full covariances, ``_PARTS_PER_CLUSTER * n_clusters`` components, the more
    likely of ``_PARTS_INITS`` initialisations) is fitted on at most ``_PARTS_ROWS`` rows drawn
    from ``seed`` and labels every row; its parts merge as ``merged_by_links`` says, into
    groups of at least ``min_size`` rows.
    """
    rng = np.random.default_rng(seed)
    # In float32, a component whose rows lie near a subspace of the layout (letter's 16
    # features laid out in 26 dimensions) fails its Cholesky factorisation.
    layout = np.asarray(layout, dtype=np.float64)
    n_samples = len(layout)
    sample = layout[np.sort(rng.choice(n_samples, min(n_samples, _PARTS_ROWS), replace=False))]
    n_parts = min(_PARTS_PER_CLUSTER * n_clusters, len(sample))
    with warnings.catch_warnings():
        # The parts need not be a converged mixture: they are merged, and training refines them.
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixture = GaussianMixture(
            n_parts, n_init=_PARTS_INITS, random_state=int(rng.integers(2**31))
        ).fit(sample)
    parts = np.unique(mixture.predict(layout), return_inverse=True)[1]
    return merged_by_links(parts, graph, n_clusters, layout, min_size)


def consensus_mixture(layout: np.ndarray, n_clusters: int, *, seed: int) -> np.ndarray:
    """The Gaussian mixture (full covariances) of ``layout`` that agrees best with the others.

    ``_CONSENSUS_SEEDS`` mixtures of ``n_clusters`` components, each fitted on at most
    ``_PARTS_ROWS`` rows (drawn once from ``seed``), label every row; the labels with the
    largest summed adjusted Rand index to the others are returned (int64).
    """
    rng = np.random.default_rng(seed)
    layout = np.asarray(layout, dtype=np.float64)  # as in merged_mixture
    n_samples = len(layout)
    sample = layout[np.sort(rng.choice(n_samples, min(n_samples, _PARTS_ROWS), replace=False))]
    candidates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # training refines the start
        for mixture_seed in rng.integers(2**31, size=_CONSENSUS_SEEDS):
            mixture = GaussianMixture(n_clusters, random_state=int(mixture_seed)).fit(sample)
            candidates.append(mixture.predict(layout))
    agreement = np.zeros((len(candidates), len(candidates)))
    for i, j in zip(*np.triu_indices(len(candidates), k=1), strict=True):
        agreement[i, j] = agreement[j, i] = adjusted_rand_score(candidates[i], candidates[j])
    return candidates[int(agreement.sum(axis=1).argmax())].astype(np.int64)


def merged_by_links(
    parts: np.ndarray,
    graph: sp.csr_matrix,
    n_clusters: int,
    positions: np.ndarray,
    min_size: float = 0.0,
) -> np.ndarray:
    """Merge the parts ``0 .. m - 1`` of the graph's nodes into ``n_clusters`` groups.

    While a group holds fewer than ``min_size`` rows, the smallest such fragment joins the
    group that takes the largest share of its links; then each step merges the two groups
    ``A, B`` with the largest ``W(A, B) / min(vol A, vol B)``, where ``W(A, B)`` is the weight
    of the links between them and ``vol`` a group's summed degree: the share of the smaller
    group's links that join the other. Groups with no link between them merge, when they must,
    by the nearest centroids in ``positions``. Returns labels ``0 .. k - 1`` (int64), with
    ``k`` at most ``n_clusters``, fewer where fragments had to merge.
    """
    n_parts = int(parts.max()) + 1
    membership = sp.csr_matrix(
        (np.ones(len(parts)), (np.arange(len(parts)), parts)), shape=(len(parts), n_parts)
    )
    links = (membership.T @ graph @ membership).toarray()
    volume = links.sum(axis=1)
    np.fill_diagonal(links, 0.0)
    counts = np.bincount(parts, minlength=n_parts).astype(np.float64)
    centroids = (membership.T @ positions) / counts[:, None]
    group = np.arange(n_parts)
    alive = np.ones(n_parts, dtype=bool)
    while alive.sum() > 1:
        fragments = alive & (counts < min_size)
        if alive.sum() <= n_clusters and not fragments.any():
            break
        smaller = np.minimum.outer(volume, volume)
        share = np.divide(links, smaller, out=np.zeros_like(links), where=smaller > 0)
        share[~alive] = -1.0
        share[:, ~alive] = -1.0
        np.fill_diagonal(share, -1.0)
        if fragments.any():
            b = np.flatnonzero(fragments)[np.argmin(counts[fragments])]
            a = int(np.argmax(share[b]))
        else:
            a, b = np.unravel_index(np.argmax(share), share.shape)
        if share[a, b] <= 0:  # no links to another group: the nearest one
            live = np.flatnonzero(alive)
            distance = ((centroids[live, None] - centroids[None, live]) ** 2).sum(axis=-1)
            np.fill_diagonal(distance, np.inf)
            if fragments.any():
                a = live[np.argmin(distance[np.searchsorted(live, b)])]
            else:
                i, j = np.unravel_index(np.argmin(distance), distance.shape)
                a, b = live[i], live[j]
        total = counts[a] + counts[b]
        centroids[a] = (counts[a] * centroids[a] + counts[b] * centroids[b]) / total
        counts[a] = total
        links[a] += links[b]
        links[:, a] += links[:, b]
        links[a, a] = 0.0
        links[b] = links[:, b] = 0.0
        volume[a] += volume[b]
        alive[b] = False
        group[group == b] = a
    return np.unique(group, return_inverse=True)[1][parts].astype(np.int64)
