"""Training runs: the ``n_init`` initialisations of a fit, one run (fresh or resumed), and
``partial_fit`` chunks, each under its own torch random state, with the interrupt policy.

Nothing here touches the estimator: a run returns a ``FittedModel`` (the fitted attributes) or
raises, so that a failed run leaves nothing half-trained behind.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np
import torch

from ._build import build_module, build_net
from ._checkpoint import (
    EpochEndState,
    fingerprint,
    load_state,
    read_checkpoint,
    restore_training_state,
    resume,
)
from ._data import IndexedRows
from ._inference import labels_and_score
from ._net import SelfLabelNet
from ._settings import Settings


@dataclass(frozen=True)
class FittedModel:
    """The fitted attributes of one trained net (each is the estimator's ``name_``)."""

    net: SelfLabelNet
    best_head: int
    head_losses: np.ndarray
    logit_offsets: np.ndarray
    embedding_dim: int
    device: str
    n_iter: int
    labels: np.ndarray

    def attributes(self) -> dict:
        return {f"{field.name}_": getattr(self, field.name) for field in fields(self)}


@dataclass(frozen=True)
class Interruption:
    """A fit cut short by Ctrl-C that kept the state of its last completed epoch."""

    n_completed: int
    n_epochs: int


@dataclass(frozen=True)
class FitResult:
    model: FittedModel
    init_scores: np.ndarray
    interruption: Interruption | None


def fit_initializations(settings: Settings, X) -> FitResult:
    """Train from each of the settings' seeds and keep the fit with the best score.

    Like KMeans' ``n_init``; only the best fit's network stays in memory besides the one in
    training. An interruption that keeps its state (``on_interrupt="keep"``) ends the loop.
    """
    dataset = IndexedRows(X, sparse=settings.network.sparse_batches)
    best, scores, interruption = None, [], None
    for seed in settings.seeds:
        net, interruption = _train(settings, dataset, seed)
        model, score = fitted_model(settings.labels, net, X)
        if best is None or score > max(scores):
            best = model
        scores.append(score)
        del net, model
        if interruption is not None:
            break
    return FitResult(best, np.asarray(scores), interruption)


def _train(settings: Settings, dataset: IndexedRows, seed: int):
    """One initialisation: build the network from ``seed`` and train it, or resume it."""
    X = dataset.X
    expected = None
    if settings.checkpoint_dir is not None:
        expected = fingerprint(X, settings.problem())
    resumed_from = read_checkpoint(settings.checkpoint_dir) if settings.warm_start else None
    end_state = EpochEndState(
        keep_last=settings.on_interrupt == "keep",
        directory=settings.checkpoint_dir,
        fingerprint=expected,
        resumed_from=resumed_from,
    )
    n_epochs = settings.max_epochs
    with isolated_torch_rng(seed, settings.device):
        module = build_module(settings.network, X)
        label_step = settings.labels.fit_label_step(n_epochs, seed)
        net = build_net(settings, module, seed, label_step, end_state)
        if resumed_from is None:
            net.fit(dataset, y=None)
        else:
            state = load_state(resumed_from, settings.device)
            resume(net, state, expected, n_epochs, settings.checkpoint_dir)
            net.partial_fit(dataset, epochs=n_epochs - len(net.history))
        return net, _after_training(net, end_state, n_epochs)


def _after_training(net, end_state: EpochEndState, n_epochs: int) -> Interruption | None:
    """Check that training ran to the end, or to converged labels; act on an interruption as
    ``on_interrupt`` says.

    skorch ends training quietly on a KeyboardInterrupt (Ctrl-C) and returns, so a net
    cut off mid-training is told apart by its count of completed epochs.
    """
    last_state = end_state.release()
    n_done = end_state.n_completed_epochs_
    converged = dict(net.callbacks_).get("labels_converged")
    if n_done >= n_epochs or (converged is not None and converged.stopped_after_ == n_done):
        return None
    if last_state is None:  # on_interrupt="restore", or no epoch had completed
        raise KeyboardInterrupt(
            f"fit was interrupted after {n_done} of {n_epochs} epochs; the "
            "estimator is left as it was before fit."
        )
    # A fitted model, not one that trains on: the memory bank stays out.
    restore_training_state(net, load_state(last_state, net.device), buffers=False)
    return Interruption(n_done, n_epochs)


def train_chunk(settings: Settings, X, previous: SelfLabelNet | None) -> tuple[FittedModel, float]:
    """One ``partial_fit`` epoch on the chunk ``X``: a new net, or a copy of ``previous``.

    The previous net is trained on as a copy, so that a failed or interrupted call leaves
    it as it was. Each call draws its augmentations from its own seed, so that a repeated
    sequence of calls with an integer random_state is reproducible.
    """
    seed = settings.seeds[0]
    if previous is None:
        end_state = EpochEndState(keep_last=False, directory=None, fingerprint=None)
        with isolated_torch_rng(seed, settings.device):
            module = build_module(settings.network, X)
            label_step = settings.labels.chunk_label_step()
            net = build_net(settings, module, seed, label_step, end_state)
            net.partial_fit(IndexedRows(X, sparse=settings.network.sparse_batches), epochs=1)
    else:
        if previous.label_mode != settings.labels.name:
            raise ValueError(
                f"label_mode={settings.labels.name!r} differs from the mode the network was "
                "trained in; call fit to start over in the new mode."
            )
        net = copy.deepcopy(previous)
        fresh_step = settings.labels.chunk_label_step()
        # A fit's scheduled label steps index the fit's rows; chunks need their own.
        if type(dict(net.callbacks_)["label_step"]) is not type(fresh_step):
            net.set_params(callbacks__label_step=fresh_step.initialize())
        # (Setting a callback initialises them all: the online queue would be lost.)
        end_state = dict(net.callbacks_)["epoch_end_state"]
        with isolated_torch_rng(seed + len(net.history), settings.device):
            net.partial_fit(IndexedRows(X, sparse=net.module_.sparse_input), epochs=1)
    if end_state.n_completed_epochs_ < len(net.history):
        raise KeyboardInterrupt(
            "partial_fit was interrupted; the estimator is left as it was before the call."
        )
    return fitted_model(settings.labels, net, X)


def fitted_model(labels, net: SelfLabelNet, X) -> tuple[FittedModel, float]:
    """Make ``net`` the fitted model of its training rows ``X``; its ``score`` of ``X`` too."""
    # Inference never switches a network that is in eval mode (see forward_batches), so
    # predict calls from several threads at once only read it.
    net.module_.eval()
    head = labels.fitted_head(net, X)
    predicted, score = labels_and_score(net, X, head.best_head, head.logit_offsets)
    model = FittedModel(
        net=net,
        best_head=head.best_head,
        head_losses=head.head_losses,
        logit_offsets=head.logit_offsets,
        embedding_dim=net.module_.heads.embedding_dim,
        device=str(net.device),
        n_iter=len(net.history),
        labels=predicted,
    )
    return model, score


@contextmanager
def isolated_torch_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside a fork of its RNG state, so the caller's global state is untouched."""
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield
