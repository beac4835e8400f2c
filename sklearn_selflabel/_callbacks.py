"""skorch callbacks that every label mode shares: progress, a divergence guard, the stop at
converged labels, propagation.

The label steps themselves are the label modes' (``_offline``, ``_online``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Collection
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from skorch.callbacks import Callback
from tqdm import tqdm

from ._data import chunked_rows, holds_rows, iter_row_batches
from .augment import NeighborViews
from .propagation import InvariancePropagation, hardest_positives, nearest_neighbors

if TYPE_CHECKING:
    from ._settings import PropagationSettings


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

    def on_batch_end(self, net, batch=None, training=None, **kwargs) -> None:
        if not training:
            return
        # The float that skorch has recorded: no second read of the loss from the device.
        loss = net.history[-1, "batches", -1, "train_loss"]
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"The training loss became {loss} in epoch {len(net.history)}; the network "
                f"diverged. Lower the learning rate (lr={net.lr}) or check the input scale."
            )


class LabelsConverged(Callback):
    """End training, as skorch's ``EarlyStopping`` does, once ``n_steps`` consecutive label
    steps have changed no label: the labels are a fixed point of the label step, and the
    epochs left would train on labels that no longer move.

    It must come after every other callback, so that the epoch it stops after has completed.
    ``stopped_after_`` is the number of epochs completed when it stopped training (None while
    training goes on), which tells a fit that converged from one cut short by Ctrl-C.

    Parameters
    ----------
    n_steps : int
        Consecutive label steps without a changed label (``label_step`` and
        ``labels_changed`` in the history) after which training ends.
    not_before : int, default=0
        Only the steps from this (0-based) epoch on count: labels that settle before the
        label steps' re-partition are not the fit's last word.
    """

    def __init__(self, n_steps: int, not_before: int = 0) -> None:
        self.n_steps = n_steps
        self.not_before = not_before

    def on_train_begin(self, net, **kwargs) -> None:
        self.stopped_after_ = None

    def on_epoch_end(self, net, **kwargs) -> None:
        if not net.history[-1].get("label_step"):
            return
        changed = [
            row["labels_changed"]
            for epoch, row in enumerate(net.history)
            if epoch >= self.not_before and row.get("label_step")
        ]
        if len(changed) >= self.n_steps and not any(changed[-self.n_steps :]):
            self.stopped_after_ = len(net.history)
            raise KeyboardInterrupt  # skorch's way to end fit_loop early


class PropagationRefresh(Callback):
    """Keep invariance propagation's memory bank and hard positives up to date.

    At ``on_train_begin`` the positives are found among the input rows (an untrained
    network's embedding carries no category-level structure yet): for images by hops among
    the standardised rows, for flat rows their nearest neighbours in the input geometry, with
    whom the neighbour views then mix them. The memory bank holds the clean embedding of every
    row; after every ``settings.refresh_every``-th label step the positives are found again in
    it, by hops, while training keeps updating it.

    Parameters
    ----------
    epochs : collection of int
        The label steps' epochs.
    settings : PropagationSettings
        Neighbours, hops, positives and the weights and constants of the training terms.
    batch_size : int
        Rows per batch of the passes over the data.
    seed : int
        Seeds the draw of the contrastive term's negatives.
    """

    def __init__(
        self, epochs: Collection[int], settings: PropagationSettings, *, batch_size: int, seed: int
    ) -> None:
        self.epochs = epochs
        self.settings = settings
        self.batch_size = batch_size
        self.seed = seed

    def initialize(self) -> PropagationRefresh:
        self.refresh_epochs_ = frozenset(sorted(self.epochs)[:: self.settings.refresh_every])
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs) -> None:
        if net.propagation_ is not None and holds_rows(net.propagation_.bank, len(X), axis=0):
            # A resumed fit keeps the memory bank, positives and views of its checkpoint.
            if net.neighbor_views_ is not None:
                net.neighbor_views_.bind(X.X)
            return
        s = self.settings
        features = self._input_features(net, X.X)
        neighbors = nearest_neighbors(
            features, max(s.n_neighbors, s.view_neighbors), metric=s.input_metric
        )
        if s.input_positives == "knn":  # the nearest neighbours themselves, nearest first
            n_nearest = min(s.n_neighbors, neighbors.shape[1])  # fewer rows than neighbours
            slots = torch.arange(s.n_positives, device=neighbors.device) % n_nearest
            positives = neighbors[:, slots]
        else:
            positives = hardest_positives(
                features, neighbors[:, : s.n_neighbors], s.n_hops, s.n_positives
            )
        if s.view_neighbors:
            views_rng = torch.Generator().manual_seed(self.seed + 1)
            views = NeighborViews(neighbors[:, : s.view_neighbors], views_rng)
            net.neighbor_views_ = views.bind(X.X)
        bank = net.evaluate_rows(X.X, self.batch_size, output="embedding", fast=True)
        generator = torch.Generator(device=net.device).manual_seed(self.seed)
        net.propagation_ = InvariancePropagation(
            bank,
            positives.to(net.device),
            label_weight=s.label_weight,
            contrast_weight=s.contrast_weight,
            temperature=s.temperature,
            momentum=s.momentum,
            n_negatives=s.n_negatives,
            generator=generator,
        )

    def _input_features(self, net, X):
        """The input rows in the geometry of the first positives: raw (a sparse matrix stays
        sparse) or standardised as the network sees them."""
        if self.settings.input_space == "raw":
            return X if sp.issparse(X) else torch.from_numpy(np.vstack(list(chunked_rows(X))))
        module = net.inference_module()
        return torch.cat(
            [
                module.standardize(torch.from_numpy(rows).to(net.device))
                for rows in iter_row_batches(X, self.batch_size)
            ]
        )

    def _positives(self, features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        neighbors = nearest_neighbors(features, self.settings.n_neighbors, dtype=dtype)
        return hardest_positives(
            features, neighbors, self.settings.n_hops, self.settings.n_positives
        )

    def on_epoch_end(self, net, **kwargs) -> None:
        epoch = len(net.history) - 1
        if epoch in self.refresh_epochs_:
            # The bank is filled by fast passes, and is searched at their precision too.
            net.propagation_.positives = self._positives(net.propagation_.bank, net.fast_dtype)

    def on_train_end(self, net, **kwargs) -> None:
        # The bank is an N x d training buffer; a fitted model does not need it, nor the views.
        net.propagation_ = None
        net.neighbor_views_ = None
