"""Offline label mode: SeLa's label steps over all training rows, on a schedule.

A ``(n_heads, n_samples)`` label table starts as a random equal split, or as a clustering of the
input rows (``_starts``). After the scheduled epochs (dense early, sparse late) the network's
logits on the clean training rows go through ``sinkhorn_equipartition`` and ``argmax Q``
rewrites the table. With estimated cluster sizes the steps keep the sizes of the clusters that
the start found in the rows, none below a fifth of the equal share (the transport enforces
that floor, and the last step's hard labels keep it too); from the random start they
aim at equal sizes until half the schedule, where one step re-partitions every head by the
embedding's nearest-neighbour links (where the mode says so), whose sizes the later steps keep.
``fitted_head`` runs one more such step on the trained network: it fixes ``logit_offsets_``
(with estimated sizes, topped up so that the hard labels keep every cluster's floor).
``ChunkLabelStep`` labels a ``partial_fit`` chunk by one step before training on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score
from skorch.callbacks import Callback

from ._data import holds_rows
from ._label_mode import FittedHead
from ._net import SelfLabelNet
from ._starts import MIN_CLUSTER_SHARE, initial_labels
from .propagation import nearest_neighbors, neighbor_link_partition
from .sinkhorn import SinkhornResult, sinkhorn_equipartition

# From the random split, steps aim at estimated sizes from this fraction of the last step's
# epoch on, once the embedding holds the categories (user guide, "Heads").
_ESTIMATED_SIZES_FROM = 0.5
# Starts that the network learns before the first label step; documents' KMeans is not one.
_LEARNED_FIRST = ("mixture", "layout")
# The fraction of the schedule spent learning such a start (user guide, "Flat rows").
_LEARNED_FIRST_FOR = 0.25


@dataclass(frozen=True)
class OfflineLabels:
    """The settings of the offline label mode, and what it gives training."""

    n_clusters: int
    n_heads: int
    lamb: float
    tol: float
    max_iter: int
    n_label_steps: int
    cluster_sizes: str
    batch_size: int
    # The start, or the starts to choose from (_starts.initial_labels).
    starts: tuple[str, ...] = ("random",)
    # With estimated sizes, whether their first step re-partitions by the embedding's links.
    repartition: bool = True
    # The input rows' metric, in which the layout start links them.
    input_metric: str = "euclidean"
    # With estimated sizes, what the steps aim at: "held" (held_cluster_weights) or "vote"
    # (voted_cluster_weights).
    size_estimate: str = "held"
    # How the layout start cuts its layout (_layout.layout_labels's clusters).
    layout_clusters: str = "merged"
    # From a start learned first, steps run only while the network's argmax agrees with this
    # share of the labels. Settings pass the kind's recipe; the default is the rule of models
    # saved before the recipes set it.
    learned_agreement: float = 0.9
    # A fit ends once this many consecutive label steps have changed no label (None: it trains
    # every epoch, the rule of models saved before this field).
    n_steps_no_change: int | None = None

    name: ClassVar[str] = "offline"

    @property
    def label_steps_from(self) -> float:
        """No label step runs before this fraction of the schedule's epochs."""
        return _LEARNED_FIRST_FOR if self.learned_first else 0.0

    @property
    def estimate_sizes_from(self) -> float:
        """With estimated sizes, the steps from this fraction of the last step's epoch on aim
        at them."""
        return _ESTIMATED_SIZES_FROM if self.starts == ("random",) else 0.0

    @property
    def learned_first(self) -> bool:
        """Whether the start is a clustering that the network learns before any label step."""
        return all(start in _LEARNED_FIRST for start in self.starts)

    def fit_label_step(self, n_epochs: int, seed: int) -> LabelStep:
        epochs = label_step_epochs(n_epochs, self.n_label_steps)
        later = epochs[epochs >= self.label_steps_from * (n_epochs - 1)]
        epochs = later if later.size else epochs[-1:]
        estimate_from = None
        if self.cluster_sizes == "estimated":
            estimate_from = self.estimate_sizes_from * epochs.max()
        return LabelStep(
            frozenset(epochs.tolist()),
            mode=self,
            seed=seed,
            estimate_sizes_from=estimate_from,
            n_steps_no_change=self.n_steps_no_change,
        )

    def chunk_label_step(self) -> ChunkLabelStep:
        return ChunkLabelStep(mode=self)

    def net_class(self, accelerated: bool) -> type[SelfLabelNet]:
        if not accelerated:
            return SelfLabelNet
        # skorch.hf is slow to import; only accelerated fits pay for it.
        from ._accelerate import AcceleratedSelfLabelNet

        return AcceleratedSelfLabelNet

    def solve(self, logits: torch.Tensor, weights=None, init=None) -> SinkhornResult:
        """Sinkhorn with this mode's settings, aiming at ``weights`` (None: equal sizes)."""
        return sinkhorn_equipartition(
            logits,
            lamb=self.lamb,
            tol=self.tol,
            max_iter=self.max_iter,
            cluster_weights=weights,
            init=init,
        )

    def evaluate(
        self, net: SelfLabelNet, X, fast: bool = False
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The embedding of the rows ``X`` (None where the size estimate needs none) and the
        logits, in one pass."""
        if self.cluster_sizes == "estimated" and self.size_estimate == "vote":
            return net.evaluate_rows(X, self.batch_size, output="both", fast=fast)
        return None, net.evaluate_rows(X, self.batch_size, fast=fast)

    def estimated_weights(self, embedding: torch.Tensor | None, labels: torch.Tensor):
        """The shares that a step with estimated sizes aims at, for ``labels`` of shape
        ``(n_samples,)`` or ``(n_heads, n_samples)``, as ``size_estimate`` says."""
        if self.size_estimate == "vote":
            return voted_cluster_weights(embedding, labels, self.n_clusters)
        return held_cluster_weights(labels, self.n_clusters)

    def fitted_head(self, net: SelfLabelNet, X) -> FittedHead:
        """The head whose labels agree best with the other heads' (``consensus_head``), or
        where every head started from one clustering of the rows, the one with the lowest
        loss; and a last label step's prior.

        The last step, on the trained network's logits of ``X``, sets the cluster sizes that
        predict gives: ``argmax Q = argmax (lamb * logits + log b)``, rows scaled or not.
        """
        embedding, logits = self.evaluate(net, X)
        head_losses = net.head_losses(logits)
        if self.learned_first:
            # Every head started from one clustering: they differ by noise, not by clusterings.
            best = int(np.argmin(head_losses))
        else:
            best = consensus_head(net.label_table_.cpu().numpy(), head_losses)
        weights = None
        if self.cluster_sizes == "estimated":
            weights = self.estimated_weights(embedding, net.label_table_[best])
        state = dict(net.callbacks_)["label_step"].solver_state_
        result = self.solve(logits[best], weights, None if state is None else state[best])
        offsets = (result.state / self.lamb).cpu().numpy().astype(np.float32)
        if weights is not None:
            min_rows = math.ceil(MIN_CLUSTER_SHARE * logits.shape[1] / self.n_clusters)
            offsets = topped_up(logits[best], offsets, min_rows)
        return FittedHead(best, head_losses, offsets)


def consensus_head(label_table: np.ndarray, head_losses: np.ndarray) -> int:
    """The head of ``label_table`` ``(n_heads, n_samples)`` whose labels agree best with the
    other heads' (the highest mean adjusted Rand index), the lower loss between equals.

    Which head fits its labels best changes from epoch to epoch, by less than the heads'
    clusterings differ; a head that many others agree with is a clustering that several starts
    reached (user guide, "Heads").
    """
    n_heads = len(label_table)
    agreement = np.zeros(n_heads)
    for i in range(n_heads):
        for j in range(i + 1, n_heads):
            score = adjusted_rand_score(label_table[i], label_table[j])
            agreement[i] += score
            agreement[j] += score
    return max(range(n_heads), key=lambda head: (agreement[head], -head_losses[head]))


def topped_up(logits: torch.Tensor, offsets: np.ndarray, min_rows: int) -> np.ndarray:
    """``offsets`` (float32) raised so that ``argmax(logits + offsets)`` gives every cluster
    at least ``min_rows`` of the rows, where raises can: the shortest cluster, while short,
    takes the rows that are nearest to joining it, its offset set halfway between the last
    row it needs and the next, so that the two stay apart by as wide a margin as the logits
    allow. A cluster that gives up rows can end short in turn, so this runs a few rounds;
    rows with the same logits cannot be told apart by offsets, so a cluster can stay short.
    """
    offsets = offsets.copy()
    for _ in range(2 * len(offsets)):
        shifted = logits + torch.from_numpy(offsets).to(logits.device)
        labels = shifted.argmax(dim=1)
        counts = torch.bincount(labels, minlength=len(offsets))
        short = int(counts.argmin())
        need = min_rows - int(counts[short])
        if need <= 0:
            break
        margins = (shifted.max(dim=1).values - shifted[:, short])[labels != short]
        last, after = torch.topk(margins, need + 1, largest=False).values[-2:].tolist()
        offsets[short] += (last + after) / 2
    return offsets


def label_step_epochs(max_epochs: int, n_label_steps: int) -> np.ndarray:
    """Epochs (0-based) after which labels are recomputed: dense early, sparse late.

    Steps are placed at ``(max_epochs - 1) * (i / n_label_steps) ** 2`` for
    ``i = 0 .. n_label_steps - 1``, as in SeLa's schedule, so the last epoch always trains on
    fixed labels.
    """
    fractions = np.arange(n_label_steps) / n_label_steps
    return np.unique(np.round((max_epochs - 1) * fractions**2).astype(np.int64))


def held_cluster_weights(labels: torch.Tensor, n_clusters: int) -> np.ndarray:
    """The sizes of the clusters of ``labels`` (shape ``(n_samples,)``, or ``(n_heads,
    n_samples)`` for a row of shares per head) as shares, none below ``MIN_CLUSTER_SHARE`` of
    the equal share (``floored``)."""
    rows = labels.reshape(-1, labels.shape[-1])
    counts = torch.zeros(len(rows), n_clusters, dtype=torch.float64, device=labels.device)
    counts.scatter_add_(1, rows, torch.ones_like(rows, dtype=torch.float64))
    shares = (counts / counts.sum(dim=1, keepdim=True)).cpu().numpy()
    floor = MIN_CLUSTER_SHARE / n_clusters
    return np.stack([floored(row, floor) for row in shares]).reshape(labels.shape[:-1] + (-1,))


def voted_cluster_weights(
    embedding: torch.Tensor, labels: torch.Tensor, n_clusters: int, n_neighbors: int = 10
) -> np.ndarray:
    """Cluster shares after each row takes the vote of its ``n_neighbors`` nearest neighbours
    in ``embedding`` (cosine; the row's own label counts as half a voter), for ``labels`` of
    shape ``(n_samples,)`` or ``(n_heads, n_samples)``: the held sizes
    (``held_cluster_weights``) of the voted labels.

    Held sizes keep a start's errors: where it merged two categories and split another, no
    step can undo it. The neighbours of a row that a step forced into the wrong cluster mostly
    hold its category, so the vote's shares are the sizes that the embedding supports. Each
    vote counts in inverse proportion to its cluster's size (a likelihood ratio rather than a
    count): a plain majority favours the larger cluster wherever two meet, and votes repeated
    on their own outcome would let one cluster swallow its neighbours step by step.
    """
    neighbors = nearest_neighbors(embedding, n_neighbors)
    rows = labels.reshape(-1, labels.shape[-1]).to(embedding.device)
    own = torch.arange(embedding.shape[0], device=embedding.device)
    votes = []
    for head in rows:
        counts = torch.zeros(embedding.shape[0], n_clusters, device=embedding.device)
        counts.scatter_add_(1, head[neighbors], torch.ones(neighbors.shape, device=counts.device))
        counts[own, head] += 0.5
        sizes = torch.bincount(head, minlength=n_clusters).clamp(min=1)
        votes.append((counts / sizes).argmax(dim=1))
    return held_cluster_weights(torch.stack(votes).reshape(labels.shape), n_clusters)


def floored(shares: np.ndarray, floor: float) -> np.ndarray:
    """``shares`` (summing to one) with every share at least ``floor``: shares below it are set
    to it, and the others scaled down together to make room (water-filling), so a raised
    share is the floor exactly, and a share that scaling would take below it is raised too.
    """
    raised = shares < floor
    while True:
        scale = (1.0 - floor * raised.sum()) / shares[~raised].sum()
        newly = ~raised & (shares * scale < floor)
        if not newly.any():
            return np.where(raised, floor, shares * scale)
        raised |= newly


def renamed_to_match(labels: np.ndarray, reference: np.ndarray, n_clusters: int) -> np.ndarray:
    """``labels`` with its clusters renamed to agree with ``reference`` on the most rows."""
    overlap = np.zeros((n_clusters, n_clusters))
    np.add.at(overlap, (labels, reference), 1)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    names = np.empty(n_clusters, dtype=np.int64)
    names[rows] = cols
    return names[labels]


class LabelStep(Callback):
    """Recompute every head's hard labels by the equipartition Sinkhorn step on a schedule.

    At ``on_train_begin`` the labels are a random equal split, or the mode's clustering of the
    input rows (``OfflineLabels.starts``, ``_starts.initial_labels``).
    After each scheduled epoch the network's logits on the clean training rows go through
    ``sinkhorn_equipartition``, warm started from the previous step's scalings, and
    ``argmax Q`` becomes the new label table.
    From epoch ``estimate_sizes_from`` on, each head's step keeps the sizes of its current
    clusters (``held_cluster_weights``) rather than aiming at equal ones; where
    ``mode.repartition``, the first of those steps does not solve Sinkhorn but re-partitions:
    every head takes the partition of the embedding's nearest-neighbour links
    (``neighbor_link_partition``), its clusters renamed to agree with that head's labels. That
    undoes what the equipartition forces on unequal categories (a large one split, two small
    ones merged), which the later steps could not undo. Every epoch records in the history:
    ``label_step`` (whether a step ran: a scheduled step that waits for the network to learn
    its start does not) and ``repartition`` (bools), ``labels_changed`` (fraction of (head, row)
    labels that changed, 0 without a step), ``min_cluster_size`` and ``max_cluster_size``
    (over all heads), at a step ``label_step_seconds`` (the whole step: forward pass and
    solver), and at a Sinkhorn step ``sinkhorn_n_iter``, ``sinkhorn_error`` and
    ``sinkhorn_seconds`` (the solver alone).
    """

    def __init__(
        self,
        epochs: Collection[int],
        *,
        mode: OfflineLabels,
        seed: int,
        estimate_sizes_from: float | None = None,
        n_steps_no_change: int | None = None,
    ) -> None:
        self.epochs = epochs
        self.mode = mode
        self.seed = seed
        self.estimate_sizes_from = estimate_sizes_from
        self.n_steps_no_change = n_steps_no_change

    def on_train_begin(self, net, X=None, y=None, **kwargs) -> None:
        if holds_rows(getattr(net, "label_table_", None), len(X), axis=1):
            return  # a resumed fit keeps the labels (and solver state) of its checkpoint
        mode = self.mode
        labels = initial_labels(
            X.X,
            mode.starts,
            mode.n_clusters,
            mode.n_heads,
            self.seed,
            module=net.inference_module(),
            metric=mode.input_metric,
            device=torch.device(net.device),
            fast_dtype=net.fast_dtype,
            layout_clusters=mode.layout_clusters,
        )
        net.label_table_ = torch.from_numpy(labels).to(net.device)
        self.solver_state_ = None

    def state_dict(self) -> dict:
        """The label step's state between epochs: the solver's warm start."""
        return {"solver_state": getattr(self, "solver_state_", None)}

    def load_state_dict(self, state: dict, device) -> None:
        self.solver_state_ = state["solver_state"]

    def repartition_epoch(self) -> int | None:
        """The first label step that aims at estimated sizes, which re-partitions where the
        mode does; None where no step re-partitions."""
        if self.estimate_sizes_from is None or not self.mode.repartition:
            return None
        later = [epoch for epoch in self.epochs if epoch >= self.estimate_sizes_from]
        return min(later, default=None)

    def repartition(self, net, X) -> torch.Tensor:
        """Every head's labels from the neighbour links of the embedding of the rows ``X``."""
        n_clusters = self.mode.n_clusters
        embedding = net.evaluate_rows(X, self.mode.batch_size, output="embedding", fast=True)
        partition = neighbor_link_partition(embedding, n_clusters, random_state=self.seed)
        table = net.label_table_.cpu().numpy()
        renamed = [renamed_to_match(partition, head, n_clusters) for head in table]
        return torch.from_numpy(np.stack(renamed)).to(net.label_table_.device)

    def solve(self, net, X) -> SinkhornResult | None:
        """Sinkhorn on the clean logits of the rows ``X``, warm-started from the previous step;
        None where the mode's start is to be learned first and the network has not learned it.
        """
        epoch = len(net.history) - 1
        mode = self.mode
        weights = None
        embedding, logits = mode.evaluate(net, X, fast=True)
        if mode.learned_first:
            agreement = (logits.argmax(dim=-1) == net.label_table_).float().mean()
            if agreement.item() < mode.learned_agreement:
                return None
        if self.estimate_sizes_from is not None and epoch >= self.estimate_sizes_from:
            weights = mode.estimated_weights(embedding, net.label_table_)
        start = time.perf_counter()
        result = mode.solve(logits, weights, self.solver_state_)
        self.solver_seconds_ = time.perf_counter() - start
        self.solver_state_ = result.state
        return result

    def on_epoch_end(self, net, dataset_train=None, **kwargs) -> None:
        epoch = len(net.history) - 1
        changed = 0.0
        repartition = epoch == self.repartition_epoch()
        stepped = False
        if epoch in self.epochs:
            start = time.perf_counter()
            if repartition:
                labels = self.repartition(net, dataset_train.X)
            else:
                result = self.solve(net, dataset_train.X)
                labels = None if result is None else result.labels
                if result is not None:
                    net.history.record("sinkhorn_n_iter", result.n_iter)
                    net.history.record("sinkhorn_seconds", self.solver_seconds_)
                    net.history.record("sinkhorn_error", result.marginal_error)
            if labels is not None:  # None: the network has not learned its start yet
                stepped = True
                changed = (labels != net.label_table_).float().mean().item()
                net.label_table_ = labels
                net.history.record("label_step_seconds", time.perf_counter() - start)
        sizes = torch.stack(
            [torch.bincount(head, minlength=self.mode.n_clusters) for head in net.label_table_]
        )
        net.history.record("label_step", stepped)
        net.history.record("repartition", repartition)
        net.history.record("labels_changed", changed)
        net.history.record("min_cluster_size", int(sizes.min()))
        net.history.record("max_cluster_size", int(sizes.max()))


class ChunkLabelStep(LabelStep):
    """Offline ``partial_fit``: label the chunk by one Sinkhorn step before training on it.

    The step runs at the start of every ``partial_fit`` call, over the clean logits of the
    whole chunk, warm-started from the previous chunk's column scalings; the chunk then trains
    one epoch against those labels. The history rows are ``LabelStep``'s, without steps.
    """

    def __init__(self, *, mode: OfflineLabels) -> None:
        # The seed draws the initial split and the re-partition, neither of which runs here.
        super().__init__(frozenset(), mode=mode, seed=0)

    def initialize(self) -> ChunkLabelStep:
        self.solver_state_ = None
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs) -> None:
        net.label_table_ = self.solve(net, X.X).labels
