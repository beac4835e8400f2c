"""Online label mode (equipartition labels per mini-batch) and chunk-wise training.

The offline label step (``LabelStep``) keeps an ``(n_heads, n_samples)`` label table and runs
Sinkhorn over the logits of every training row, so its memory grows with ``n_samples``. The
online mode solves the same equipartition problem as SwAV does (Caron et al., 2020): for each
training mini-batch, Sinkhorn runs over the batch's logits together with a FIFO queue of the
logits of recent batches, and the batch's part of ``argmax Q`` becomes that batch's targets.
Memory is ``O((batch_size + queue_size) * n_clusters * n_heads)``, independent of
``n_samples``, so the training data can stream from disk (``numpy.memmap``) or arrive in chunks
(``partial_fit``).

The solver here is a short, fixed number of Sinkhorn sweeps on small matrices that never leave
the training device. Its column scalings are carried over from one batch to the next (the queue
changes by one batch per step), so a few sweeps per batch track the solution; they decay
slightly at every batch, so that the sampling noise of the windows does not pile up in them.
``sinkhorn_equipartition``, built for one large problem solved to a tolerance, would spend
more time on its per-call set-up than on these sweeps.

The queue's logits were computed by older versions of the network. The longer the queue is in
optimiser steps, the more its stale logits mislead the balance, and the smaller a window, the
noisier: a queue of a few batches of about 1000 rows serves better than a long queue of small
batches (``docs/online.rst``).

Under data-parallel training (several processes, each with its own batches and queue), the
column masses are summed over processes with ``torch.distributed.all_reduce``, so that the
equipartition holds over the global batch plus all queues, as in SwAV's distributed Sinkhorn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
from skorch.callbacks import Callback
from skorch.dataset import unpack_data

from ._label_mode import FittedHead
from ._net import SelfLabelNet
from .sinkhorn import LOG_FLOOR

# Largest move of a log column scaling per batch: larger swings relabel confident rows en masse.
_MAX_LOG_STEP = 5.0
# Decay of the carried log column scalings per batch, so that window noise does not pile up.
_SCALING_DECAY = 0.01

__all__ = [
    "OnlineLabelStep",
    "OnlineLabels",
    "OnlineSelfLabelNet",
    "QueuedSinkhorn",
    "all_reduce_sum",
]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place over all processes of ``torch.distributed``, if initialised.

    This is the reduce hook of the online label step: in a single process (the usual case) it
    returns ``tensor`` unchanged; under data-parallel training (e.g. skorch's
    ``AccelerateMixin`` launched with ``accelerate launch``) it makes every process see the
    column masses of all processes' batches and queues.
    """
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@dataclass(frozen=True)
class OnlineLabels:
    """The settings of the online label mode, and what it gives training."""

    n_clusters: int
    n_heads: int
    queue_size: int
    lamb: float
    n_iter: int

    name: ClassVar[str] = "online"

    def fit_label_step(self, n_epochs: int, seed: int) -> OnlineLabelStep:
        return OnlineLabelStep(
            n_clusters=self.n_clusters,
            n_heads=self.n_heads,
            queue_size=self.queue_size,
            lamb=self.lamb,
            n_iter=self.n_iter,
        )

    def chunk_label_step(self) -> OnlineLabelStep:
        # The queue and the column scalings carry over from chunk to chunk.
        return self.fit_label_step(1, 0)

    def net_class(self, accelerated: bool) -> type[OnlineSelfLabelNet]:
        if not accelerated:
            return OnlineSelfLabelNet
        # skorch.hf is slow to import; only accelerated fits pay for it.
        from ._accelerate import AcceleratedOnlineSelfLabelNet

        return AcceleratedOnlineSelfLabelNet

    def fitted_head(self, net: OnlineSelfLabelNet, X) -> FittedHead:
        """The head with the lowest loss over the last epoch, and the scalings it ended with.

        No label table exists, and the last batch's labels were found with those scalings.
        """
        label_step = dict(net.callbacks_)["label_step"]
        best = int(np.argmin(label_step.head_losses_))
        offsets = label_step.sinkhorn_.log_scaling[best] / self.lamb
        return FittedHead(best, label_step.head_losses_, offsets.cpu().numpy().astype(np.float32))


class QueuedSinkhorn:
    """Equipartition hard labels for a stream of mini-batches, from Sinkhorn over batch + queue.

    Each call solves the equipartition problem over the batch's logits and the queue's, with
    ``n_iter`` Sinkhorn sweeps that start from the column scalings the previous call ended with,
    decayed by ``_SCALING_DECAY``, and moves them by at most ``_MAX_LOG_STEP`` per call, so that
    the windows' sampling noise cannot pile up into a wholesale relabelling of confidently
    assigned rows (a cascade that ends in collapse). The kernel ``exp(lamb * logits + log b)``
    is built once per call in the log domain (so the carried scalings may grow without overflow)
    and the sweeps are two matrix-vector products each. On the CPU the heads are solved one at a
    time, so that each head's kernel stays in cache through its sweeps; on accelerators all at
    once.

    Parameters
    ----------
    n_heads, n_clusters : int
        Shape of the problem: each head has its own queue slice and column scalings.
    queue_size : int
        Number of rows of past batches' logits kept in the FIFO queue.
    lamb : float
        Inverse entropic regularisation (``Q ∝ softmax(logits) ** lamb`` up to scalings).
    n_iter : int
        Sinkhorn sweeps per batch.
    device : torch.device
        Where the queue lives (the training device).
    reduce : callable, default=all_reduce_sum
        Sums a tensor in place over data-parallel processes; the identity in one process.

    Attributes
    ----------
    log_scaling : torch.Tensor of shape (n_heads, n_clusters)
        Log column scalings ``log b`` (centred), carried from batch to batch.
    marginal_error : torch.Tensor of shape ()
        ``max_j |m_j - w_j| / w_j`` of the soft assignment before the last sweep of the last
        batch, maximum over heads: how far batch + queue were from equipartition.
    """

    def __init__(
        self,
        n_heads: int,
        n_clusters: int,
        *,
        queue_size: int,
        lamb: float,
        n_iter: int,
        device: torch.device | str,
        reduce: Callable[[torch.Tensor], torch.Tensor] = all_reduce_sum,
    ) -> None:
        self.lamb = lamb
        self.n_iter = n_iter
        self.reduce = reduce
        self.queue = torch.empty((n_heads, queue_size, n_clusters), device=device)
        self.n_queued = 0
        self.write_at = 0
        self.log_scaling = torch.zeros((n_heads, n_clusters), device=device)
        self.marginal_error = torch.zeros((), device=device)
        heads_per_group = 1 if self.queue.device.type == "cpu" else n_heads
        self._head_groups = [
            slice(lo, lo + heads_per_group) for lo in range(0, n_heads, heads_per_group)
        ]

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Hard labels of a batch, shape ``(n_heads, batch)``; then the batch joins the queue.

        Parameters
        ----------
        logits : torch.Tensor of shape (n_heads, batch, n_clusters)
        """
        logits = logits.detach().float()
        n_batch, n_clusters = logits.shape[1:]
        n_rows = self.reduce(torch.tensor(float(n_batch + self.n_queued), device=logits.device))
        target = n_rows / n_clusters
        labels = torch.empty(logits.shape[:2], dtype=torch.int64, device=logits.device)
        errors = []
        for heads in self._head_groups:
            # Work buffer per head group: batch then queue, in the log domain, rows max 0.
            log_kernel = torch.cat([logits[heads], self.queue[heads, : self.n_queued]], dim=1)
            log_kernel.mul_(self.lamb).add_(self.log_scaling[heads].unsqueeze(1))
            log_kernel.sub_(log_kernel.amax(dim=2, keepdim=True))
            # The floor keeps exp() off subnormals (slow); it is ~e-37 of each row's mass.
            kernel = log_kernel.clamp_(min=LOG_FLOOR[torch.float32]).exp_()
            log_step = torch.zeros_like(self.log_scaling[heads])
            for _ in range(self.n_iter):
                step = log_step.exp().unsqueeze(1)
                row_share = torch.bmm(kernel, step.mT).reciprocal_()
                mass = self.reduce(torch.bmm(row_share.mT, kernel).mul_(step).squeeze(1))
                log_step += target.log() - mass.clamp_min(1e-30).log()
                # Bounded: an empty column would otherwise take an unbounded step.
                log_step.clamp_(-_MAX_LOG_STEP, _MAX_LOG_STEP)
            errors.append((mass / target - 1).abs().amax())
            labels[heads] = (kernel[:, :n_batch] * log_step.exp().unsqueeze(1)).argmax(dim=2)
            # Once the network is confident, a cluster's mass stops responding to its scaling,
            # and window-to-window sampling noise would pile up in the scaling until it
            # relabels confident rows wholesale; the decay keeps it near what the data need.
            self.log_scaling[heads] *= 1.0 - _SCALING_DECAY
            self.log_scaling[heads] += log_step
        self.log_scaling -= self.log_scaling.mean(dim=1, keepdim=True)
        self.marginal_error = torch.stack(errors).amax()
        self._enqueue(logits)
        return labels

    def state_dict(self) -> dict:
        """The queue and the carried column scalings (tensors; their references)."""
        return {
            "queue": self.queue,
            "n_queued": self.n_queued,
            "write_at": self.write_at,
            "log_scaling": self.log_scaling,
            "marginal_error": self.marginal_error,
        }

    def load_state_dict(self, state: dict) -> None:
        self.queue = state["queue"].to(self.queue.device)
        self.n_queued, self.write_at = state["n_queued"], state["write_at"]
        self.log_scaling = state["log_scaling"].to(self.queue.device)
        self.marginal_error = state["marginal_error"].to(self.queue.device)

    def _enqueue(self, logits: torch.Tensor) -> None:
        capacity = self.queue.shape[1]
        logits = logits[:, -capacity:]
        n_new = logits.shape[1]
        first = min(n_new, capacity - self.write_at)
        self.queue[:, self.write_at : self.write_at + first] = logits[:, :first]
        self.queue[:, : n_new - first] = logits[:, first:]
        self.write_at = (self.write_at + n_new) % capacity
        self.n_queued = min(self.n_queued + n_new, capacity)


class OnlineSelfLabelNet(SelfLabelNet):
    """``SelfLabelNet`` trained against per-batch labels instead of a label table.

    ``OnlineLabelStep`` sets ``batch_labels_`` (``(n_heads, batch)``) before every training
    step; ``get_loss`` uses them, so no ``n_samples``-sized state exists.
    """

    label_mode = "online"
    batch_labels_: torch.Tensor

    def get_loss(self, y_pred, y_true, X=None, training=False):
        n_clusters = y_pred.shape[-1]
        return self.criterion_(y_pred.reshape(-1, n_clusters), self.batch_labels_.reshape(-1))


class OnlineLabelStep(Callback):
    """Give every training batch equipartition labels from ``QueuedSinkhorn``.

    Before each training step the batch's clean rows (no augmentation, eval mode) go through
    the network; their logits and the queue give the batch's labels, which the step trains the
    augmented view against. The solver state (queue and column scalings) is created when the
    network is initialised and kept across ``partial_fit`` calls.

    Every epoch records in the history ``label_step`` (False: there is no whole-data step),
    ``labels_changed`` (0), ``min_cluster_size`` and ``max_cluster_size`` (of the epoch's
    labels, over all heads) and ``sinkhorn_error`` (the last batch's ``marginal_error``).
    ``head_losses_`` holds each head's mean cross-entropy against its labels over the last
    epoch (and over all processes), from which the estimator picks its best head.
    """

    def __init__(
        self,
        *,
        n_clusters: int,
        n_heads: int,
        queue_size: int,
        lamb: float,
        n_iter: int,
        reduce: Callable[[torch.Tensor], torch.Tensor] = all_reduce_sum,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.queue_size = queue_size
        self.lamb = lamb
        self.n_iter = n_iter
        self.reduce = reduce

    def initialize(self) -> OnlineLabelStep:
        # The device is known only once the net is; ``on_train_begin`` builds the solver.
        self.sinkhorn_: QueuedSinkhorn | None = None
        self.head_losses_ = np.zeros(self.n_heads)
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs) -> None:
        if self.sinkhorn_ is None:
            self.sinkhorn_ = self._solver(_module_device(net.module_))

    def _solver(self, device) -> QueuedSinkhorn:
        return QueuedSinkhorn(
            self.n_heads,
            self.n_clusters,
            queue_size=self.queue_size,
            lamb=self.lamb,
            n_iter=self.n_iter,
            device=device,
            reduce=self.reduce,
        )

    def state_dict(self) -> dict:
        """The state that carries over between epochs and ``partial_fit`` calls."""
        return {
            "head_losses": self.head_losses_,
            "sinkhorn": None if self.sinkhorn_ is None else self.sinkhorn_.state_dict(),
        }

    def load_state_dict(self, state: dict, device) -> None:
        self.head_losses_ = state["head_losses"]
        self.sinkhorn_ = None
        if state["sinkhorn"] is not None:
            self.sinkhorn_ = self._solver(device)
            self.sinkhorn_.load_state_dict(state["sinkhorn"])

    def on_epoch_begin(self, net, **kwargs) -> None:
        device = _module_device(net.module_)
        self._counts = torch.zeros((self.n_heads, self.n_clusters), device=device)
        self._loss_sums = torch.zeros(self.n_heads, device=device)
        self._n_rows = torch.zeros((), device=device)

    @torch.no_grad()
    def on_batch_begin(self, net, batch=None, training=False, **kwargs) -> None:
        if not training:
            return
        rows, _ = unpack_data(batch)
        module = net.inference_module()
        module.eval()
        try:
            with net.autocast(True):
                logits = module(rows.to(_module_device(module)))
        finally:
            module.train()
        net.batch_labels_ = self.sinkhorn_(logits)

    @torch.no_grad()
    def on_batch_end(self, net, batch=None, training=False, y_pred=None, **kwargs) -> None:
        if not training:
            return
        labels = net.batch_labels_
        self._counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=self._counts.dtype))
        log_probs = torch.log_softmax(y_pred.detach().float(), dim=2)
        self._loss_sums -= log_probs.gather(2, labels.unsqueeze(2)).squeeze(2).sum(dim=1)
        self._n_rows += labels.shape[1]

    def on_epoch_end(self, net, **kwargs) -> None:
        # Over all processes, so that every process picks the same best head.
        counts, loss_sums, n_rows = map(self.reduce, (self._counts, self._loss_sums, self._n_rows))
        self.head_losses_ = (loss_sums / n_rows.clamp_min(1)).cpu().numpy()
        net.history.record("label_step", False)
        net.history.record("labels_changed", 0.0)
        net.history.record("min_cluster_size", int(counts.min()))
        net.history.record("max_cluster_size", int(counts.max()))
        net.history.record("sinkhorn_error", float(self.sinkhorn_.marginal_error))


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
