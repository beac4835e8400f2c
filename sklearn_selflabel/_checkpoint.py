"""Training state at epoch ends: what an interrupted fit keeps and a crashed fit resumes from.

The state of a fit after an epoch is everything its next epoch depends on: the module's and
the optimizer's ``state_dict``, the history, the net's label table and invariance-propagation
memory bank, the label step's solver state, and the random states of the batch order and of
torch (which draws the augmentations). ``EpochEndState`` serialises it after every completed
epoch, into memory for ``on_interrupt="keep"`` and atomically into ``checkpoint_dir`` for
``warm_start=True``; ``restore_training_state`` loads it into a freshly initialised net.
This module also owns what a resumed fit must match (``fingerprint``) and the checks that
``resume`` makes before it loads a checkpoint into a new net.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import torch
from skorch.callbacks import Callback
from skorch.history import History

from ._archive import ArchiveError, read_archive, write_archive
from ._data import dense_rows
from ._files import write_atomically
from .augment import NeighborViews
from .propagation import InvariancePropagation

# The file in checkpoint_dir that every epoch replaces.
CHECKPOINT_NAME = "checkpoint.selflabel"
# Bumped when the state's layout changes: an older checkpoint is refused, not half-loaded.
_CHECKPOINT_VERSION = 2
# Evenly spaced rows hashed into the data's fingerprint: cheap even for data on disk.
_FINGERPRINT_ROWS = 64


def data_fingerprint(X) -> dict:
    """Shape and a hash of evenly spaced rows of ``X``: cheap for any input, even on disk.

    It tells a checkpoint of other data from one of ``X`` in practice; it is not a checksum
    of every value.
    """
    n_samples, n_features = X.shape
    rows = np.unique(np.linspace(0, n_samples - 1, _FINGERPRINT_ROWS).astype(np.int64))
    digest = hashlib.blake2b(dense_rows(X, index=rows).tobytes(), digest_size=16).hexdigest()
    return {"n_samples": int(n_samples), "n_features": int(n_features), "data_hash": digest}


def fingerprint(X, problem: dict) -> dict:
    """What a checkpoint must match to be resumed by a fit of ``X``: the data and ``problem``
    (the settings that shape the training state)."""
    return {**data_fingerprint(X), **problem}


def resume(net, state: dict, expected: dict, n_epochs: int, directory) -> None:
    """Load a checkpoint's ``state`` into the freshly built ``net``, after checking that it is
    the checkpoint of this fit (``expected``, its ``fingerprint``) and fits in ``n_epochs``.

    Raises
    ------
    ValueError
        If the checkpoint is of another fit or network, or holds more epochs than
        ``n_epochs``.
    """
    saved = state["fingerprint"]
    differences = [
        f"{key} {saved.get(key)!r} in the checkpoint, {value!r} now"
        for key, value in expected.items()
        if saved.get(key) != value
    ]
    if differences:
        raise ValueError(
            f"checkpoint_dir={str(directory)!r} holds the checkpoint of another "
            f"fit ({'; '.join(differences)}). Start afresh with warm_start=False, or use "
            "another checkpoint_dir."
        )
    n_done = len(state["history"])
    if n_done > n_epochs:
        raise ValueError(
            f"The checkpoint in checkpoint_dir holds {n_done} epochs, more than "
            f"max_epochs={n_epochs}."
        )
    net.initialize()
    try:
        restore_training_state(net, state)
    except RuntimeError as exc:  # load_state_dict: weights of a different network
        raise ValueError(
            "The checkpoint in checkpoint_dir holds a different network (module, "
            f"hidden_layer_sizes, embedding_dim or image_shape changed): {exc}"
        ) from None
    restore_torch_rng(state, torch.device(net.device))


def training_state(net) -> dict:
    """The state of ``net`` that the next epoch depends on (references, not copies)."""
    label_step = dict(net.callbacks_)["label_step"]
    device = torch.device(net.device)
    state = {
        "module": net.module_.state_dict(),
        "optimizer": net.optimizer_.state_dict(),
        "history": list(net.history),
        "net": {"label_table_": getattr(net, "label_table_", None)},
        "propagation": None if net.propagation_ is None else net.propagation_.state_dict(),
        "views": None if net.neighbor_views_ is None else net.neighbor_views_.state_dict(),
        "label_step": label_step.state_dict(),
        "batch_order_rng": net.iterator_train__rng.bit_generator.state,
        # numpy, so that map_location never moves a generator state off the CPU
        "torch_rng": torch.get_rng_state().numpy(),
    }
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device).numpy()
    return state


def laid_out_as_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Give each of ``optimizer``'s state tensors its parameter's memory layout, in place.

    A loaded state is contiguous whatever the layout of its parameter (a convolution's weight
    is channels-last); the fused Adam step reads a parameter, its gradient and its moments as
    buffers of one layout, so moments laid out otherwise would be paired with other entries.
    """
    for parameter, entries in optimizer.state.items():
        for name, value in entries.items():
            if torch.is_tensor(value) and value.shape == parameter.shape:
                entries[name] = torch.empty_like(parameter).copy_(value)


def restore_training_state(net, state: dict, *, buffers: bool = True) -> None:
    """Load ``state`` (from ``training_state``) into an initialised ``net``.

    ``buffers=False`` leaves out the training buffers (the propagation memory bank): the
    state then makes a fitted model rather than one that trains on. The torch random state is
    restored separately, by ``restore_torch_rng``, inside the fit's own random-state context.
    """
    net.module_.load_state_dict(state["module"])
    net.optimizer_.load_state_dict(state["optimizer"])
    laid_out_as_parameters(net.optimizer_)
    net.history_ = History(state["history"])
    net.label_table_ = state["net"]["label_table_"]
    if buffers and state["propagation"] is not None:
        net.propagation_ = InvariancePropagation.from_state_dict(state["propagation"])
    if buffers and state["views"] is not None:  # bound to the rows when training begins
        net.neighbor_views_ = NeighborViews.from_state_dict(state["views"])
    dict(net.callbacks_)["label_step"].load_state_dict(state["label_step"], net.device)
    net.iterator_train__rng.bit_generator.state = state["batch_order_rng"]


def restore_torch_rng(state: dict, device: torch.device) -> None:
    """Set torch's random state (CPU, and CUDA when training there) to that of ``state``."""
    torch.set_rng_state(torch.from_numpy(state["torch_rng"]))
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(torch.from_numpy(state["cuda_rng"]), device)


def dump_state(state: dict) -> bytes:
    """``state`` serialised, which also copies it away from the live tensors."""
    buffer = io.BytesIO()
    write_archive(buffer, "checkpoint", _CHECKPOINT_VERSION, state)
    return buffer.getvalue()


def load_state(blob: bytes, device: torch.device | str) -> dict:
    """A state serialised by ``dump_state``, its tensors on ``device``.

    Reading a checkpoint runs no code from it (see ``_archive``).

    Raises
    ------
    ValueError
        If ``blob`` is not a checkpoint of this version of sklearn-selflabel.
    """
    name = "the checkpoint in checkpoint_dir"
    try:
        _, state = read_archive(blob, "checkpoint", _CHECKPOINT_VERSION, device, name=name)
    except ArchiveError as exc:
        raise ValueError(f"{exc}; start over with warm_start=False.") from None
    return state


def read_checkpoint(directory: str | os.PathLike) -> bytes | None:
    """The bytes of the checkpoint in ``directory``, or None when there is none."""
    try:
        return (Path(directory) / CHECKPOINT_NAME).read_bytes()
    except FileNotFoundError:
        return None


class EpochEndState(Callback):
    """Serialise the training state after every completed epoch.

    It must come after the estimator's other callbacks, so that an epoch counts as completed
    once its label step has run.

    Parameters
    ----------
    keep_last : bool
        Keep the latest state in memory, as ``last_state_`` (bytes).
    directory : str, path-like or None
        Write the latest state, with ``fingerprint``, to ``directory / CHECKPOINT_NAME``,
        atomically; the directory is created when missing.
    fingerprint : dict or None
        What a fit that resumes from the checkpoint must match: the data and the shape of
        the problem. Needed with ``directory``.
    resumed_from : bytes or None, default=None
        The state a resumed fit starts from, which counts as its latest until an epoch
        completes.

    Attributes
    ----------
    n_completed_epochs_ : int
        Epochs completed so far, those of a resumed fit's checkpoint included. skorch ends
        training quietly on a KeyboardInterrupt; this tells such a fit from a finished one.
    last_state_ : bytes or None
        With ``keep_last``, the state after the latest completed epoch.
    """

    def __init__(
        self,
        *,
        keep_last: bool,
        directory: str | os.PathLike | None,
        fingerprint: dict | None,
        resumed_from: bytes | None = None,
    ) -> None:
        self.keep_last = keep_last
        self.directory = directory
        self.fingerprint = fingerprint
        self.resumed_from = resumed_from

    def on_train_begin(self, net, **kwargs) -> None:
        self.n_completed_epochs_ = len(net.history)
        self.last_state_ = self.resumed_from if self.keep_last else None
        if self.directory is not None:
            Path(self.directory).mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, net, **kwargs) -> None:
        if self.keep_last or self.directory is not None:
            blob = dump_state({**training_state(net), "fingerprint": self.fingerprint})
            if self.directory is not None:
                path = Path(self.directory) / CHECKPOINT_NAME
                write_atomically(path, lambda file: file.write(blob))
            if self.keep_last:
                self.last_state_ = blob
        # Last: an interruption anywhere above leaves the epoch uncounted.
        self.n_completed_epochs_ = len(net.history)

    def release(self) -> bytes | None:
        """Hand over ``last_state_`` and forget it (a fitted model need not carry it)."""
        last, self.last_state_ = self.last_state_, None
        self.resumed_from = None
        return last
