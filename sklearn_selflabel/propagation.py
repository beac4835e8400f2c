"""Invariance propagation: positives found by following nearest-neighbour links, hardest kept.

Wang et al. (NeurIPS 2020) learn invariance to category-level variation by treating as
positives of a sample the points reachable from it through a few hops of k-nearest-neighbour
links in the embedding (high-density regions of one category), and training with the hardest
(least similar) of them. The pure functions here find those positives; ``InvariancePropagation``
holds the memory bank and the loss used during training.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin
from sklearn.preprocessing import normalize


@torch.no_grad()
def nearest_neighbors(
    features,
    n_neighbors: int,
    chunk_size: int = 256,
    metric: str = "cosine",
    dtype: torch.dtype = torch.float32,
    return_distance: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of every row among the others, in row chunks.

    Parameters
    ----------
    features : torch.Tensor or scipy sparse matrix of shape (n_samples, n_dims)
        No ``n_samples x n_samples`` matrix is formed, only ``chunk_size x n_samples``
        blocks. A sparse matrix is multiplied as such (cosine only).
    n_neighbors : int
        Number of neighbours ``k`` per row (at most ``n_samples - 1``).
    chunk_size : int
        Rows per block.
    metric : {"cosine", "euclidean"}, default="cosine"
        Cosine similarity (rows L2-normalised here) or Euclidean distance.
    dtype : torch.dtype, default=torch.float32
        Precision of the similarities of dense rows; ``torch.bfloat16`` is faster on
        devices that compute it natively, and can swap neighbours whose similarities agree
        to about three digits.
    return_distance : bool, default=False
        Also return the distances to the neighbours: ``1 - cosine similarity``, or the
        Euclidean distance.

    Returns
    -------
    indices : torch.Tensor of shape (n_samples, k), int64
        Neighbours of each row, most similar first; a row is never its own neighbour.
    distances : torch.Tensor of shape (n_samples, k), float32
        Only with ``return_distance``.
    """
    if sp.issparse(features):
        if metric != "cosine":
            raise ValueError("nearest neighbours of sparse rows are cosine neighbours")
        rows = normalize(sp.csr_matrix(features, dtype=np.float32))

        def block_of(start: int) -> torch.Tensor:
            return torch.from_numpy((rows[start : start + chunk_size] @ rows.T).toarray())

        half_sq_norms = None
    else:
        features = features.float()
        half_sq_norms = None
        if metric == "cosine":
            features = F.normalize(features, dim=1)
        else:  # the largest x.y - |y|^2 / 2 is the nearest y
            half_sq_norms = (0.5 * (features * features).sum(dim=1)).to(dtype)
        features = features.to(dtype)

        # Blocks of a few hundred rows stay in cache while topk reads them; every block is
        # written into one buffer, as a fresh block each time costs as much in page faults
        # as the product itself.
        transposed = features.T.contiguous()
        buffer = features.new_empty((min(chunk_size, len(features)), len(features)))

        def block_of(start: int) -> torch.Tensor:
            rows = features[start : start + chunk_size]
            block = torch.mm(rows, transposed, out=buffer[: len(rows)])
            return block if half_sq_norms is None else block.sub_(half_sq_norms)

    n_samples = features.shape[0]
    k = min(n_neighbors, n_samples - 1)
    indices, distances = [], []
    for start in range(0, n_samples, chunk_size):
        block = block_of(start)
        rows_in_block = torch.arange(block.shape[0], device=block.device)
        block[rows_in_block, rows_in_block + start] = -float("inf")
        nearest = block.topk(k, dim=1)
        indices.append(nearest.indices)
        if return_distance:
            scores = nearest.values.float()
            if half_sq_norms is None:  # cosine similarities
                distances.append((1.0 - scores).clamp_min(0.0))
            else:  # |x - y|^2 = |x|^2 - 2 (x.y - |y|^2 / 2)
                sq_norms = 2.0 * half_sq_norms[start : start + chunk_size].float()
                distances.append((sq_norms[:, None] - 2.0 * scores).clamp_min(0.0).sqrt())
    if return_distance:
        return torch.cat(indices), torch.cat(distances)
    return torch.cat(indices)


def propagate(neighbors: np.ndarray, n_hops: int) -> sp.csr_matrix:
    """Points reachable from each row within ``n_hops`` nearest-neighbour links.

    Parameters
    ----------
    neighbors : ndarray of shape (n_samples, k), int
        The k nearest neighbours of each row.
    n_hops : int
        Number of hops ``l``; 1 gives the neighbours themselves.

    Returns
    -------
    reachable : scipy.sparse.csr_matrix of shape (n_samples, n_samples), bool
        ``reachable[i, j]`` when ``j != i`` can be reached from ``i``: at most ``k + k**2 + ...
        + k**l`` entries per row.
    """
    n_samples, k = neighbors.shape
    row_starts = np.arange(0, neighbors.size + 1, k)
    links = sp.csr_matrix(
        (np.ones(neighbors.size, dtype=bool), neighbors.ravel(), row_starts),
        shape=(n_samples, n_samples),
    )
    reachable = frontier = links
    for _ in range(n_hops - 1):
        frontier = frontier @ links
        reachable = reachable + frontier
    reachable = reachable.tocoo()
    off_diagonal = reachable.row != reachable.col
    reachable = sp.csr_matrix(
        (reachable.data[off_diagonal], (reachable.row[off_diagonal], reachable.col[off_diagonal])),
        shape=(n_samples, n_samples),
    )
    reachable.sort_indices()
    reachable.eliminate_zeros()
    return reachable


@torch.no_grad()
def hardest_positives(
    features: torch.Tensor, neighbors: torch.Tensor, n_hops: int, n_positives: int
) -> torch.Tensor:
    """The ``n_positives`` least similar points among those reachable by propagation.

    Parameters
    ----------
    features : torch.Tensor of shape (n_samples, n_dims)
        Embedding in which similarity is measured (L2-normalised here).
    neighbors : torch.Tensor of shape (n_samples, k)
        Nearest neighbours of each row, as from ``nearest_neighbors``.
    n_hops : int
        Propagation depth ``l``.
    n_positives : int
        Number of hard positives per row.

    Returns
    -------
    positives : torch.Tensor of shape (n_samples, n_positives), int64, on ``features``' device
        Least similar first. Rows with fewer reachable points repeat their hardest ones.
    """
    features = F.normalize(features.float(), dim=1)
    reachable = propagate(neighbors.cpu().numpy(), n_hops)
    n_samples, n_dims = features.shape
    counts = np.diff(reachable.indptr)
    rows = torch.from_numpy(np.repeat(np.arange(n_samples), counts)).to(features.device)
    cols = torch.from_numpy(reachable.indices.astype(np.int64)).to(features.device)
    # Every row padded to the same width; padding has +inf similarity (never hard).
    width = int(counts.max())
    offsets = np.arange(len(cols)) - np.repeat(reachable.indptr[:-1], counts)
    offsets = torch.from_numpy(offsets).to(features.device)
    padded_idx = torch.zeros((n_samples, width), dtype=torch.int64, device=features.device)
    padded_idx[rows, offsets] = cols
    padding = torch.ones((n_samples, width), dtype=torch.bool, device=features.device)
    padding[rows, offsets] = False
    # Similarities row block by row block: a block's gathered points stay within ~64 MB.
    padded_sim = torch.empty((n_samples, width), device=features.device)
    block = max(1, (1 << 24) // (width * n_dims))
    for start in range(0, n_samples, block):
        points = features[padded_idx[start : start + block]]  # (block, width, n_dims)
        own = features[start : start + block].unsqueeze(2)
        padded_sim[start : start + block] = torch.bmm(points, own).squeeze(2)
    padded_sim.masked_fill_(padding, float("inf"))
    order = padded_sim.argsort(dim=1)[:, :n_positives]
    positives = torch.gather(padded_idx, 1, order)
    # repeat the hardest positives where a row has fewer than n_positives reachable points
    have = torch.from_numpy(np.minimum(counts, n_positives)).to(features.device)
    slot = torch.arange(n_positives, device=features.device).expand(n_samples, -1)
    slot = torch.remainder(slot, have.clamp(min=1).unsqueeze(1))
    return torch.gather(positives, 1, slot)


class InvariancePropagation:
    """Memory bank, propagated hard positives and the training terms of invariance propagation.

    Two terms bring the positives into training. The label term is the cross-entropy of a
    row's logits against the current labels of each of its hard positives (a sample and its
    positives should share a cluster). The contrastive term is a softmax over memory-bank
    similarities in which the sample itself and its hard positives count as the correct class,
    against ``n_negatives`` random bank entries ``N``: with ``s_j = v_j . f_i / tau``, it is
    ``-log( sum_{p in {i} + P(i)} exp(s_p) / sum_{j in {i} + P(i) + N} exp(s_j) )``.
    Either way the bank follows the batch's embeddings with momentum.

    Parameters
    ----------
    bank : torch.Tensor of shape (n_samples, n_dims)
        Initial memory bank (L2-normalised here).
    positives : torch.Tensor of shape (n_samples, n_positives), int64
    label_weight : float
        Weight of the label term.
    contrast_weight : float
        Weight of the contrastive term.
    temperature : float
    momentum : float
        Bank update ``v_i <- normalise(momentum * v_i + (1 - momentum) * f_i)``.
    n_negatives : int
        Random bank entries per batch used as negatives.
    generator : torch.Generator
        Draws the negatives, on the bank's device.
    """

    def __init__(
        self,
        bank: torch.Tensor,
        positives: torch.Tensor,
        *,
        label_weight: float,
        contrast_weight: float,
        temperature: float,
        momentum: float,
        n_negatives: int,
        generator: torch.Generator,
    ) -> None:
        self.bank = F.normalize(bank.float(), dim=1)
        self.positives = positives
        self.label_weight = label_weight
        self.contrast_weight = contrast_weight
        self.temperature = temperature
        self.momentum = momentum
        self.n_negatives = n_negatives
        self.generator = generator

    def state_dict(self) -> dict:
        """The bank, the positives, the settings and the negatives' random state."""
        return {
            "bank": self.bank,
            "positives": self.positives,
            "label_weight": self.label_weight,
            "contrast_weight": self.contrast_weight,
            "temperature": self.temperature,
            "momentum": self.momentum,
            "n_negatives": self.n_negatives,
            "generator": self.generator.get_state(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> InvariancePropagation:
        """The propagation of ``state_dict()``, on the device of its bank."""
        generator = torch.Generator(device=state["bank"].device)
        generator.set_state(state["generator"].cpu())
        settings = {k: v for k, v in state.items() if k not in ("bank", "positives", "generator")}
        propagation = cls(state["bank"], state["positives"], generator=generator, **settings)
        propagation.bank = state["bank"]  # as it was: normalising it again would round it
        return propagation

    def training_term(
        self,
        embedding: torch.Tensor,
        logits: torch.Tensor,
        indices: torch.Tensor,
        label_table: torch.Tensor,
    ) -> torch.Tensor:
        """Weighted propagation terms for a batch, and the bank update for its rows.

        ``logits`` is ``(n_heads, batch, n_clusters)`` and ``label_table`` ``(n_heads,
        n_samples)``: each head is held to its own labels.
        """
        features = F.normalize(embedding, dim=1)
        indices = indices.to(self.bank.device)
        term = logits.new_zeros(())
        if self.label_weight > 0:
            positive_labels = label_table[:, self.positives[indices]]  # (H, B, P)
            n_positives = positive_labels.shape[-1]
            expanded = logits.unsqueeze(2).expand(-1, -1, n_positives, -1)
            term = term + self.label_weight * F.cross_entropy(
                expanded.reshape(-1, logits.shape[-1]), positive_labels.reshape(-1)
            )
        if self.contrast_weight > 0:
            term = term + self.contrast_weight * self.contrastive_loss(features, indices)
        with torch.no_grad():
            updated = self.momentum * self.bank[indices] + (1 - self.momentum) * features
            self.bank[indices] = F.normalize(updated, dim=1)
        return term

    def contrastive_loss(self, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The contrastive term for a batch of L2-normalised embeddings."""
        n_samples = self.bank.shape[0]
        negatives = torch.randint(
            n_samples,
            (min(self.n_negatives, n_samples),),
            device=self.bank.device,
            generator=self.generator,
        )
        own = torch.cat([indices.unsqueeze(1), self.positives[indices]], dim=1)
        positive_logits = torch.einsum("bd,bpd->bp", features, self.bank[own]) / self.temperature
        negative_logits = features @ self.bank[negatives].T / self.temperature
        all_logits = torch.cat([positive_logits, negative_logits], dim=1)
        return (all_logits.logsumexp(dim=1) - positive_logits.logsumexp(dim=1)).mean()


def neighbor_link_partition(
    features: torch.Tensor,
    n_clusters: int,
    *,
    n_subclusters: int | None = None,
    n_neighbors: int = 10,
    max_rows: int = 50_000,
    min_share: float = 0.25,
    random_state: int | None = None,
) -> np.ndarray:
    """Partition the rows by the nearest-neighbour links of the embedding, sizes left free.

    KMeans cuts the L2-normalised embedding into ``n_subclusters`` small parts, each inside
    one dense region; then, as in average-linkage agglomeration on the nearest-neighbour
    graph, the two parts joined by the densest links (links between them divided by the
    product of their sizes) merge, until ``n_clusters`` remain. Where an equipartition must
    split a large category and merge two small ones to give every cluster the same size,
    this keeps a category whole as long as its rows link to each other, and two categories
    apart as long as few links join them. A group that few or no links join to the rest
    (such as a handful of near-identical rows) would merge last and end as a cluster of its
    own; a final group of fewer than ``min_share`` times the equal share of rows joins the
    group it links to most densely instead, and the merging runs again.

    Parameters
    ----------
    features : torch.Tensor of shape (n_samples, n_dims)
        Embedding (cosine similarity).
    n_clusters : int
    n_subclusters : int, default=None
        Parts before merging; when None, ``3 * n_clusters`` but at least 20, so that parts
        stay small enough to lie inside one dense region when there are few clusters (at
        most the number of rows).
    n_neighbors : int
        Links per row.
    max_rows : int
        Above this many rows, KMeans and the links use evenly spaced rows only, and every
        row then takes the part of its nearest KMeans centre.
    min_share : float, default=0.25
        Final groups of fewer than ``min_share * n_samples / n_clusters`` rows join another.
    random_state : int, default=None
        Seed of KMeans.

    Returns
    -------
    labels : ndarray of shape (n_samples,), int64
        Cluster of each row, in ``0 .. n_clusters - 1`` (fewer clusters only when the rows
        hold fewer distinct points).
    """
    rows = F.normalize(features.float(), dim=1)
    step = -(-rows.shape[0] // max_rows)
    sample = rows[::step]
    n_parts = min(n_subclusters or max(3 * n_clusters, 20), sample.shape[0])
    kmeans = KMeans(n_parts, n_init=3, random_state=random_state).fit(sample.cpu().numpy())
    # Duplicate rows can leave parts empty: only the parts that hold rows take part.
    present, parts = np.unique(kmeans.labels_, return_inverse=True)
    n_parts = len(present)
    neighbors = nearest_neighbors(sample, n_neighbors).cpu().numpy()
    links = np.zeros((n_parts, n_parts))
    np.add.at(links, (np.repeat(parts, neighbors.shape[1]), parts[neighbors].ravel()), 1)
    centers = kmeans.cluster_centers_[present]
    min_size = min_share * len(sample) / n_clusters
    merged_into = _merged_with_a_floor(
        links + links.T, np.bincount(parts), centers, n_clusters, min_size
    )
    if step > 1:
        parts = pairwise_distances_argmin(rows.cpu().numpy(), centers)
    return np.unique(merged_into, return_inverse=True)[1][parts].astype(np.int64)


def _merged_with_a_floor(
    links: np.ndarray, sizes: np.ndarray, centers: np.ndarray, n_clusters: int, min_size: float
) -> np.ndarray:
    """``_merge_densest_links``, where a group of fewer than ``min_size`` rows at the end
    (parts that few or no links join to the rest) is joined to the group it links to most
    densely, or without links to the one with the most similar centre, and the merging
    starts again from the parts with that join fixed, until no group is that small."""
    joined = np.arange(len(sizes))  # each part's fixed representative
    while True:
        _, fixed = np.unique(joined, return_inverse=True)
        one_hot = np.eye(fixed.max() + 1)[fixed]  # parts x fixed groups
        merged = _merge_densest_links(
            one_hot.T @ links @ one_hot, np.bincount(fixed, weights=sizes), n_clusters
        )[fixed]
        groups, of_part = np.unique(merged, return_inverse=True)
        group_sizes = np.bincount(of_part, weights=sizes)
        smallest = int(np.argmin(group_sizes))
        if group_sizes[smallest] >= min_size or fixed.max() + 1 <= n_clusters:
            return merged
        members = of_part == smallest
        to_group = np.bincount(of_part, weights=links[members].sum(axis=0)) / group_sizes
        to_group[smallest] = -np.inf
        if to_group.max() <= 0:  # no link at all: the most similar centre
            sums = (sizes[:, None] * centers).T @ np.eye(len(groups))[of_part]
            to_group = sums.T @ sums[:, smallest] / np.linalg.norm(sums, axis=0)
            to_group[smallest] = -np.inf
        target = int(np.argmax(to_group))
        joined[members] = joined[np.flatnonzero(of_part == target)[0]]


def _merge_densest_links(links: np.ndarray, sizes: np.ndarray, n_clusters: int) -> np.ndarray:
    """Average linkage on a graph: merge the pair of groups with the densest links.

    ``links`` is the symmetric count of links between parts, ``sizes`` their rows. Returns,
    for each part, the part whose group it ends in (``n_clusters`` distinct values, or
    ``len(sizes)`` when that is fewer).
    """
    n_parts = len(sizes)
    links, sizes = links.astype(np.float64), sizes.astype(np.float64)
    alive = np.ones(n_parts, dtype=bool)
    merged_into = np.arange(n_parts)
    density = links / np.outer(sizes, sizes)
    np.fill_diagonal(density, -np.inf)
    every = np.arange(n_parts)
    partner = density.argmax(axis=1)  # each group's densest link, kept up to date
    for _ in range(n_parts - n_clusters):
        a = int(np.argmax(density[every, partner]))
        b = int(partner[a])
        links[a] += links[b]
        links[:, a] = links[a]
        sizes[a] += sizes[b]
        alive[b] = False
        merged_into[merged_into == b] = a
        density[a] = np.where(alive, links[a] / (sizes[a] * sizes), -np.inf)
        density[a, a] = -np.inf
        density[:, a] = density[a]
        density[b] = density[:, b] = -np.inf
        # The merged group's density to any other is a size-weighted mean of the two it
        # replaces, so only groups whose densest link was a or b (a's was b) need a new one.
        stale = (partner == a) | (partner == b)
        partner[stale] = density[stale].argmax(axis=1)
    return merged_into


def neighbour_link_partition(*args, **kwargs) -> np.ndarray:
    """Deprecated alias of ``neighbor_link_partition``, to be removed in 0.3."""
    warnings.warn(
        "neighbour_link_partition was renamed neighbor_link_partition in 0.2 and will be "
        "removed in 0.3.",
        FutureWarning,
        stacklevel=2,
    )
    return neighbor_link_partition(*args, **kwargs)
