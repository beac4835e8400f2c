"""Offline label mode: SeLa's label steps over all training rows, on a schedule.

A ``(n_heads, n_samples)`` label table starts as a random equal split, or as a clustering of the
input rows (``initial_labels``). After the scheduled
epochs (dense early, sparse late) the network's logits on the clean training rows go through
``sinkhorn_equipartition`` and ``argmax Q`` rewrites the table. With estimated cluster sizes,
the first step from half the schedule on re-partitions every head by the embedding's
nearest-neighbour links (unless the mode says otherwise: sparse rows keep their labels), and
the later steps aim at the sizes that a neighbour vote supports.
``fitted_head`` runs one more such step on the trained network: it fixes ``logit_offsets_``
(with estimated sizes, topped up so that the hard labels keep every cluster's floor).
``ChunkLabelStep`` labels a ``partial_fit`` chunk by one step before training on it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import normalize
from skorch.callbacks import Callback

from ._data import chunked_rows, holds_rows
from ._label_mode import FittedHead
from ._layout import layout_labels
from ._net import SelfLabelNet
from .propagation import neighbour_link_partition, neighbour_vote_shares
from .sinkhorn import SinkhornResult, sinkhorn_equipartition

# With cluster_sizes="estimated", label steps aim at estimated sizes from this fraction of
# the last label step's epoch on: before, the embedding does not yet hold the categories.
_ESTIMATED_SIZES_FROM = 0.5
# A fit from the mixture lets the network learn it for this fraction of the schedule before
# the first label step, and aims at estimated sizes from that step on, since the mixture's
# clusters already have sizes of their own (wine and breast cancer, 5 seeds: equal sizes
# until half the schedule gave ACC 0.933 and 0.807, estimated sizes from the first step
# 0.976 and 0.946). On text (8 optimizer steps an epoch) the KMeans start lost ACC with the
# first quarter deferred (2 seeds: -0.004, -0.028), so it keeps the plain schedule.
_MIXTURE_LABEL_STEPS_FROM = 0.25
# The starts that the network learns first, as above: the mixture, and the layout's mixture.
_LEARNED_FIRST = ("mixture", "layout")
# The mixture start is fitted on at most this many rows (a seeded sample; all rows are then
# labelled by it), and on their leading principal components when the rows are wider.
_MIXTURE_ROWS = 10_000
_MIXTURE_COMPONENTS = 50
# Estimated cluster sizes are at least this fraction of the equal share, so that no cluster
# can be voted away (below half of it a cluster counts as degenerate). The last label step's
# hard labels hold at least as many rows too: rounding them can end a row or so short of the
# marginal (letter: 384 rows for a floor of 384.6), so a short cluster is topped up.
_MIN_ESTIMATED_SHARE = 0.5


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
    # "random": SeLa's random equal split; "kmeans": each head's KMeans of the L2-normalised
    # input rows; "mixture": each head's Gaussian mixture (one shared covariance) of the
    # standardised input rows; each head from a seed of its own. "layout": every head the
    # consensus mixture of the rows' layout (_layout).
    initial_labels: str = "random"
    # With estimated sizes, whether their first step re-partitions by the embedding's links.
    repartition: bool = True
    # The input rows' metric, in which the layout start links them.
    input_metric: str = "euclidean"

    name: ClassVar[str] = "offline"

    @property
    def label_steps_from(self) -> float:
        """No label step runs before this fraction of the schedule's epochs."""
        return _MIXTURE_LABEL_STEPS_FROM if self.initial_labels in _LEARNED_FIRST else 0.0

    @property
    def estimate_sizes_from(self) -> float:
        """With estimated sizes, the steps from this fraction of the last step's epoch on aim
        at them."""
        return 0.0 if self.initial_labels in _LEARNED_FIRST else _ESTIMATED_SIZES_FROM

    def fit_label_step(self, n_epochs: int, seed: int) -> LabelStep:
        epochs = label_step_epochs(n_epochs, self.n_label_steps)
        later = epochs[epochs >= self.label_steps_from * (n_epochs - 1)]
        epochs = later if later.size else epochs[-1:]
        estimate_from = None
        if self.cluster_sizes == "estimated":
            estimate_from = self.estimate_sizes_from * epochs.max()
        return LabelStep(
            frozenset(epochs.tolist()), mode=self, seed=seed, estimate_sizes_from=estimate_from
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

    def fitted_head(self, net: SelfLabelNet, X) -> FittedHead:
        """The head with the lowest loss against its labels, and a last label step's prior.

        The last step, on the trained network's logits of ``X``, sets the cluster sizes that
        predict gives: ``argmax Q = argmax (lamb * logits + log b)``, rows scaled or not.
        """
        embedding, logits = net.evaluate_rows(X, self.batch_size, output="both")
        head_losses = net.head_losses(logits)
        best = int(np.argmin(head_losses))
        weights = None
        if self.cluster_sizes == "estimated":
            weights = estimated_cluster_weights(embedding, net.label_table_[best], self.n_clusters)
        state = dict(net.callbacks_)["label_step"].solver_state_
        result = self.solve(logits[best], weights, None if state is None else state[best])
        offsets = (result.state / self.lamb).cpu().numpy().astype(np.float32)
        if weights is not None:
            min_rows = math.ceil(_MIN_ESTIMATED_SHARE * logits.shape[1] / self.n_clusters)
            offsets = topped_up(logits[best], offsets, min_rows)
        return FittedHead(best, head_losses, offsets)


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
    n_heads: int,
    seed: int,
    standardise: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Initial labels in the rows' own geometry, shape ``(n_heads, n_samples)``: per head, a
    Gaussian mixture with one covariance shared by all components (a seed of its own) of the
    dense rows of ``X`` as ``standardise`` scales them.

    The mixtures are fitted on at most ``_MIXTURE_ROWS`` rows (a sample drawn from ``seed``),
    projected on their first ``_MIXTURE_COMPONENTS`` principal components when wider, and then
    label every row.
    """
    rng = np.random.default_rng(seed)
    n_samples = X.shape[0]
    sample = np.sort(rng.choice(n_samples, size=min(n_samples, _MIXTURE_ROWS), replace=False))
    rows = standardise(np.asarray(X[sample]))
    projection = None
    if rows.shape[1] > _MIXTURE_COMPONENTS:
        projection = PCA(min(_MIXTURE_COMPONENTS, len(rows)), random_state=seed).fit(rows)
        rows = projection.transform(rows)
    seeds = rng.integers(np.iinfo(np.int32).max, size=n_heads)
    with warnings.catch_warnings():
        # A start need not be a converged mixture: training refines it.
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixtures = [
            GaussianMixture(
                n_clusters, covariance_type="tied", reg_covar=1e-4, random_state=int(s)
            ).fit(rows)
            for s in seeds
        ]
    table = np.empty((n_heads, n_samples), dtype=np.int64)
    start = 0
    for chunk in chunked_rows(X):
        rows = standardise(chunk)
        if projection is not None:
            rows = projection.transform(rows)
        for head, mixture in enumerate(mixtures):
            table[head, start : start + len(rows)] = mixture.predict(rows)
        start += len(rows)
    return table


def estimated_cluster_weights(
    embedding: torch.Tensor,
    labels: torch.Tensor,
    n_clusters: int,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Cluster sizes that the embedding supports, for labels of shape ``(n_samples,)`` or
    ``(n_heads, n_samples)``: the shares after a majority vote of each row's nearest
    neighbours (``neighbour_vote_shares``, neighbours searched at ``dtype``), none below
    ``_MIN_ESTIMATED_SHARE`` times the equal share (the others make room for a raised one),
    so that no cluster can be voted away.
    """
    return neighbour_vote_shares(
        embedding, labels, n_clusters, min_share=_MIN_ESTIMATED_SHARE / n_clusters, dtype=dtype
    )


def standardised_by(net: SelfLabelNet) -> Callable[[np.ndarray], np.ndarray]:
    """Dense raw rows -> the rows in the units that ``net``'s encoder sees, as float32."""

    def standardise(rows: np.ndarray) -> np.ndarray:
        # A copy: torch warns on read-only arrays (a pandas frame's values, a memmap).
        batch = torch.tensor(rows, dtype=torch.float32, device=net.device)
        with torch.no_grad():
            return net.inference_module().standardise(batch).cpu().numpy()

    return standardise


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
    input rows (``OfflineLabels.initial_labels``).
    After each scheduled epoch the network's logits on the clean training rows go through
    ``sinkhorn_equipartition``, warm started from the previous step's scalings, and
    ``argmax Q`` becomes the new label table.
    From epoch ``estimate_sizes_from`` on, each head's step aims at the cluster sizes that its
    current labels and the embedding support (``estimated_cluster_weights``) rather than at
    equal ones; where ``mode.repartition``, the first of those steps does not solve Sinkhorn
    but re-partitions: every head takes the partition of the embedding's nearest-neighbour
    links (``neighbour_link_partition``), its clusters renamed to agree with that head's labels.
    That undoes what the equipartition forces on unequal categories (a large one split, two
    small ones merged), which the later steps, each from the labels of the step before,
    could not undo. Every epoch records in the history: ``label_step`` and ``repartition``
    (bools), ``labels_changed`` (fraction of (head, row) labels that changed, 0 without a
    step), ``min_cluster_size`` and ``max_cluster_size`` (over all heads), at a step
    ``label_step_seconds`` (the whole step: forward pass, neighbour vote and solver), and at a
    Sinkhorn step ``sinkhorn_n_iter``, ``sinkhorn_error`` and ``sinkhorn_seconds`` (the solver
    alone).
    """

    def __init__(
        self,
        epochs: Collection[int],
        *,
        mode: OfflineLabels,
        seed: int,
        estimate_sizes_from: float | None = None,
    ) -> None:
        self.epochs = epochs
        self.mode = mode
        self.seed = seed
        self.estimate_sizes_from = estimate_sizes_from

    def on_train_begin(self, net, X=None, y=None, **kwargs) -> None:
        if holds_rows(getattr(net, "label_table_", None), len(X), axis=1):
            return  # a resumed fit keeps the labels (and solver state) of its checkpoint
        mode = self.mode
        if mode.initial_labels == "kmeans":
            labels = kmeans_labels(X.X, mode.n_clusters, mode.n_heads, self.seed)
        elif mode.initial_labels == "mixture":
            labels = mixture_labels(
                X.X, mode.n_clusters, mode.n_heads, self.seed, standardised_by(net)
            )
        elif mode.initial_labels == "layout":
            start = layout_labels(
                X.X,
                mode.n_clusters,
                self.seed,
                standardise=net.inference_module().standardise,
                metric=mode.input_metric,
                device=torch.device(net.device),
                fast_dtype=net.fast_dtype,
            )
            labels = np.tile(start, (mode.n_heads, 1))
        else:
            labels = random_equal_split(len(X), mode.n_clusters, mode.n_heads, self.seed)
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
        partition = neighbour_link_partition(embedding, n_clusters, random_state=self.seed)
        table = net.label_table_.cpu().numpy()
        renamed = [renamed_to_match(partition, head, n_clusters) for head in table]
        return torch.from_numpy(np.stack(renamed)).to(net.label_table_.device)

    def solve(self, net, X) -> SinkhornResult:
        """Sinkhorn on the clean logits of the rows ``X``, warm-started from the previous step."""
        epoch = len(net.history) - 1
        mode = self.mode
        weights = None
        if self.estimate_sizes_from is not None and epoch >= self.estimate_sizes_from:
            embedding, logits = net.evaluate_rows(X, mode.batch_size, output="both", fast=True)
            # A fast pass's embedding, searched at its precision.
            weights = estimated_cluster_weights(
                embedding, net.label_table_, mode.n_clusters, dtype=net.fast_dtype
            )
        else:
            logits = net.evaluate_rows(X, mode.batch_size, fast=True)
        start = time.perf_counter()
        result = mode.solve(logits, weights, self.solver_state_)
        self.solver_seconds_ = time.perf_counter() - start
        self.solver_state_ = result.state
        return result

    def on_epoch_end(self, net, dataset_train=None, **kwargs) -> None:
        epoch = len(net.history) - 1
        changed = 0.0
        repartition = epoch == self.repartition_epoch()
        if epoch in self.epochs:
            start = time.perf_counter()
            if repartition:
                labels = self.repartition(net, dataset_train.X)
            else:
                result = self.solve(net, dataset_train.X)
                labels = result.labels
                net.history.record("sinkhorn_n_iter", result.n_iter)
                net.history.record("sinkhorn_seconds", self.solver_seconds_)
                net.history.record("sinkhorn_error", result.marginal_error)
            changed = (labels != net.label_table_).float().mean().item()
            net.label_table_ = labels
            net.history.record("label_step_seconds", time.perf_counter() - start)
        sizes = torch.stack(
            [torch.bincount(head, minlength=self.mode.n_clusters) for head in net.label_table_]
        )
        net.history.record("label_step", epoch in self.epochs)
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
