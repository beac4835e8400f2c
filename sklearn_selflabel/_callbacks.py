"""skorch callbacks: the self-labelling step on its schedule, progress, a divergence guard."""

from __future__ import annotations

import sys
import time
from collections.abc import Collection

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skorch.callbacks import Callback
from tqdm import tqdm

from ._data import iter_row_batches
from .propagation import (
    InvariancePropagation,
    hardest_positives,
    nearest_neighbors,
    neighbour_link_partition,
    neighbour_vote_shares,
)
from .sinkhorn import SinkhornResult, sinkhorn_equipartition


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


def estimated_cluster_weights(
    embedding: torch.Tensor, labels: torch.Tensor, n_clusters: int
) -> np.ndarray:
    """Cluster sizes that the embedding supports, for labels of shape ``(n_samples,)`` or
    ``(n_heads, n_samples)``: the shares after a majority vote of each row's nearest
    neighbours (``neighbour_vote_shares``), none below half the equal share, so that no
    cluster can be voted away.
    """
    return neighbour_vote_shares(embedding, labels, n_clusters, min_share=0.5 / n_clusters)


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

    At ``on_train_begin`` the labels are a random equal split. After each scheduled epoch the
    network's logits on the clean training rows go through ``sinkhorn_equipartition``, warm
    started from the previous step's scalings, and ``argmax Q`` becomes the new label table.
    From epoch ``estimate_sizes_from`` on, each head's step aims at the cluster sizes that its
    current labels and the embedding support (``estimated_cluster_weights``) rather than at
    equal ones; the first of those steps does not solve Sinkhorn but re-partitions: every
    head takes the partition of the embedding's nearest-neighbour links
    (``neighbour_link_partition``), its clusters renamed to agree with that head's labels.
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
        n_clusters: int,
        n_heads: int,
        lamb: float,
        tol: float,
        max_iter: int,
        batch_size: int,
        seed: int,
        estimate_sizes_from: float | None = None,
    ) -> None:
        self.epochs = epochs
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.lamb = lamb
        self.tol = tol
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.seed = seed
        self.estimate_sizes_from = estimate_sizes_from

    def on_train_begin(self, net, X=None, y=None, **kwargs) -> None:
        if _has_rows(getattr(net, "label_table_", None), len(X), axis=1):
            return  # a resumed fit keeps the labels (and solver state) of its checkpoint
        labels = random_equal_split(len(X), self.n_clusters, self.n_heads, self.seed)
        net.label_table_ = torch.from_numpy(labels).to(net.device)
        self.solver_state_ = None

    def repartition_epoch(self) -> int | None:
        """The first label step that aims at estimated sizes: the one that re-partitions."""
        if self.estimate_sizes_from is None:
            return None
        later = [epoch for epoch in self.epochs if epoch >= self.estimate_sizes_from]
        return min(later, default=None)

    def repartition(self, net, X) -> torch.Tensor:
        """Every head's labels from the neighbour links of the embedding of the rows ``X``."""
        embedding = net.evaluate_rows(X, self.batch_size, output="embedding")
        partition = neighbour_link_partition(embedding, self.n_clusters, random_state=self.seed)
        table = net.label_table_.cpu().numpy()
        renamed = [renamed_to_match(partition, head, self.n_clusters) for head in table]
        return torch.from_numpy(np.stack(renamed)).to(net.label_table_.device)

    def solve(self, net, X) -> SinkhornResult:
        """Sinkhorn on the clean logits of the rows ``X``, warm-started from the previous step."""
        epoch = len(net.history) - 1
        weights = None
        if self.estimate_sizes_from is not None and epoch >= self.estimate_sizes_from:
            embedding, logits = net.evaluate_rows(X, self.batch_size, output="both")
            weights = estimated_cluster_weights(embedding, net.label_table_, self.n_clusters)
        else:
            logits = net.evaluate_rows(X, self.batch_size)
        start = time.perf_counter()
        result = sinkhorn_equipartition(
            logits,
            lamb=self.lamb,
            tol=self.tol,
            max_iter=self.max_iter,
            cluster_weights=weights,
            init=self.solver_state_,
        )
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
            [torch.bincount(head, minlength=self.n_clusters) for head in net.label_table_]
        )
        net.history.record("label_step", epoch in self.epochs)
        net.history.record("repartition", repartition)
        net.history.record("labels_changed", changed)
        net.history.record("min_cluster_size", int(sizes.min()))
        net.history.record("max_cluster_size", int(sizes.max()))


def _has_rows(table: torch.Tensor | None, n_rows: int, axis: int) -> bool:
    return table is not None and table.shape[axis] == n_rows


class EpochProgress(Callback):
    """A progress bar over the training epochs, on stderr, with each epoch's figures.

    After every epoch the bar shows its ``train_loss``, ``labels_changed`` (fraction of labels
    that the label step changed) and ``min_cluster_size`` / ``max_cluster_size``.

    Parameters
    ----------
    disable : bool, default=False
        Show nothing (e.g. on all but the main process of a distributed fit).
    """

    keys = ("train_loss", "labels_changed", "min_cluster_size", "max_cluster_size")

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable

    def on_train_begin(self, net, **kwargs) -> None:
        # A resumed fit starts the bar at the epochs its checkpoint already holds.
        self.bar_ = tqdm(
            total=net.max_epochs,
            initial=len(net.history),
            unit="epoch",
            file=sys.stderr,
            disable=self.disable,
        )

    def on_epoch_end(self, net, **kwargs) -> None:
        row = net.history[-1]
        self.bar_.set_postfix({key: row[key] for key in self.keys if key in row}, refresh=False)
        self.bar_.update()

    def on_train_end(self, net, **kwargs) -> None:
        if self.bar_ is not None:
            self.bar_.close()
        self.bar_ = None  # a fitted net pickles without the bar and its stream


class FiniteLossGuard(Callback):
    """Stop training at the first non-finite loss with an error that names the likely cause."""

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs) -> None:
        if training and not torch.isfinite(loss):
            raise FloatingPointError(
                f"The training loss became {loss.item()} in epoch {len(net.history)}; the network "
                f"diverged. Lower the learning rate (lr={net.lr}) or check the input scale."
            )


class PropagationRefresh(Callback):
    """Keep invariance propagation's memory bank and hard positives up to date.

    At ``on_train_begin`` the positives are found among the input rows (standardised, as the
    network sees them: an untrained network's embedding carries no category-level structure yet)
    and the memory bank holds the clean embedding of every row. After each epoch in ``epochs``
    the positives are found again in the memory bank, which training keeps updating.
    """

    def __init__(
        self,
        epochs: Collection[int],
        *,
        n_neighbors: int,
        n_hops: int,
        n_positives: int,
        label_weight: float,
        contrast_weight: float,
        temperature: float,
        momentum: float,
        n_negatives: int,
        batch_size: int,
        seed: int,
    ) -> None:
        self.epochs = epochs
        self.n_neighbors = n_neighbors
        self.n_hops = n_hops
        self.n_positives = n_positives
        self.label_weight = label_weight
        self.contrast_weight = contrast_weight
        self.temperature = temperature
        self.momentum = momentum
        self.n_negatives = n_negatives
        self.batch_size = batch_size
        self.seed = seed

    def on_train_begin(self, net, X=None, y=None, **kwargs) -> None:
        if net.propagation_ is not None and _has_rows(net.propagation_.bank, len(X), axis=0):
            return  # a resumed fit keeps the memory bank and positives of its checkpoint
        module = net.module_
        standardised = torch.cat(
            [
                (torch.from_numpy(rows).to(net.device) - module.mean) / module.scale
                for rows in iter_row_batches(X.X, self.batch_size)
            ]
        )
        bank = net.evaluate_rows(X.X, self.batch_size, output="embedding")
        generator = torch.Generator(device=net.device).manual_seed(self.seed)
        net.propagation_ = InvariancePropagation(
            bank,
            self._positives(standardised),
            label_weight=self.label_weight,
            contrast_weight=self.contrast_weight,
            temperature=self.temperature,
            momentum=self.momentum,
            n_negatives=self.n_negatives,
            generator=generator,
        )

    def _positives(self, features: torch.Tensor) -> torch.Tensor:
        neighbors = nearest_neighbors(features, self.n_neighbors)
        return hardest_positives(features, neighbors, self.n_hops, self.n_positives)

    def on_epoch_end(self, net, **kwargs) -> None:
        epoch = len(net.history) - 1
        if epoch in self.epochs:
            net.propagation_.positives = self._positives(net.propagation_.bank)

    def on_train_end(self, net, **kwargs) -> None:
        # The bank is an N x d training buffer; a fitted model does not need it.
        net.propagation_ = None
