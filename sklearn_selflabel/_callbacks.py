"""skorch callbacks: the self-labelling step on its schedule, and a guard against divergence."""

from __future__ import annotations

import time
from collections.abc import Collection

import numpy as np
import torch
from skorch.callbacks import Callback

from .sinkhorn import sinkhorn_equipartition


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


class LabelStep(Callback):
    """Recompute every head's hard labels by the equipartition Sinkhorn step on a schedule.

    At ``on_train_begin`` the labels are a random equal split. After each scheduled epoch the
    network's logits on the clean training rows go through ``sinkhorn_equipartition``, warm
    started from the previous step's scalings, and ``argmax Q`` becomes the new label table.
    Every epoch records in the history: ``label_step`` (bool), ``labels_changed`` (fraction of
    (head, row) labels that changed, 0 without a step), ``min_cluster_size`` and
    ``max_cluster_size`` (over all heads), and at a step ``sinkhorn_n_iter``,
    ``sinkhorn_error`` and ``label_step_seconds`` (the whole step: forward pass and solver).
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
    ) -> None:
        self.epochs = epochs
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.lamb = lamb
        self.tol = tol
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.seed = seed

    def on_train_begin(self, net, X=None, y=None, **kwargs) -> None:
        labels = random_equal_split(len(X), self.n_clusters, self.n_heads, self.seed)
        net.label_table_ = torch.from_numpy(labels).to(net.device)
        self.solver_state_ = None

    def on_epoch_end(self, net, dataset_train=None, **kwargs) -> None:
        epoch = len(net.history) - 1
        changed = 0.0
        if epoch in self.epochs:
            start = time.perf_counter()
            logits = net.evaluate_rows(dataset_train.X, self.batch_size)
            result = sinkhorn_equipartition(
                logits,
                lamb=self.lamb,
                tol=self.tol,
                max_iter=self.max_iter,
                init=self.solver_state_,
            )
            self.solver_state_ = result.state
            changed = (result.labels != net.label_table_).float().mean().item()
            net.label_table_ = result.labels
            net.history.record("label_step_seconds", time.perf_counter() - start)
            net.history.record("sinkhorn_n_iter", result.n_iter)
            net.history.record("sinkhorn_error", result.marginal_error)
        sizes = torch.stack(
            [torch.bincount(head, minlength=self.n_clusters) for head in net.label_table_]
        )
        net.history.record("label_step", epoch in self.epochs)
        net.history.record("labels_changed", changed)
        net.history.record("min_cluster_size", int(sizes.min()))
        net.history.record("max_cluster_size", int(sizes.max()))


class FiniteLossGuard(Callback):
    """Stop training at the first non-finite loss with an error that names the likely cause."""

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs) -> None:
        if training and not torch.isfinite(loss):
            raise FloatingPointError(
                f"The training loss became {loss.item()} in epoch {len(net.history)}; the network "
                f"diverged. Lower the learning rate (lr={net.lr}) or check the input scale."
            )
