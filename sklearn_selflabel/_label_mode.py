"""The interface of a label mode: how the labels are found (offline, online), as training sees it.

The estimator picks its mode once, when it resolves its settings (``OfflineLabels`` or
``OnlineLabels``); training then asks the mode for the label-step callback of a fit or of a
``partial_fit`` chunk, for the skorch net class, and, at the end, for the head that predicts
and the cluster prior it predicts with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
from skorch.callbacks import Callback

if TYPE_CHECKING:
    from ._net import SelfLabelNet


@dataclass(frozen=True)
class FittedHead:
    """What a label mode makes of a trained net.

    Attributes
    ----------
    best_head : int
        The head that ``predict`` uses.
    head_losses : ndarray of shape (n_heads,)
        What the head was chosen by (the lowest).
    logit_offsets : ndarray of shape (n_clusters,), float32
        Added to that head's logits before their argmax: the cluster prior of the mode's
        last label step.
    """

    best_head: int
    head_losses: np.ndarray
    logit_offsets: np.ndarray


class LabelMode(Protocol):
    """What a label mode gives training; both modes are frozen dataclasses of their settings."""

    # The ``label_mode`` of the nets that the mode trains.
    name: ClassVar[str]

    def fit_label_step(self, n_epochs: int, seed: int) -> Callback:
        """The label-step callback of a fit of ``n_epochs`` epochs."""

    def chunk_label_step(self) -> Callback:
        """The label-step callback of ``partial_fit`` chunks."""

    def net_class(self, accelerated: bool) -> type[SelfLabelNet]:
        """The skorch net class, with or without Hugging Face accelerate."""

    def fitted_head(self, net: SelfLabelNet, X) -> FittedHead:
        """The predicting head of ``net``, trained on the rows ``X``, and its cluster prior."""
