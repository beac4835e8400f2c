"""Inference with a trained net: batched outputs in bounded memory, and the information score.

Every output is computed batch by batch and written into one array (``predict``,
``predict_proba``, ``transform``), or summed on the way (the score), so memory is the result
plus one batch for any input size. The score of the training rows (``init_scores_``) and
``score`` use the same streaming sum.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ._net import SelfLabelNet


def _labels(logits: torch.Tensor) -> np.ndarray:
    return logits.argmax(dim=1).cpu().numpy()


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=1).cpu().numpy()


def _to_numpy(embedding: torch.Tensor) -> np.ndarray:
    return embedding.cpu().numpy()


# estimator method -> (network output, what each batch of it becomes, dtype of the result)
METHODS: dict[str, tuple[str, Callable[[torch.Tensor], np.ndarray], type]] = {
    "predict": ("logits", _labels, np.int64),
    "predict_proba": ("logits", _probabilities, np.float64),
    "transform": ("embedding", _to_numpy, np.float32),
}


def method_outputs(method: str, net: SelfLabelNet, X, head: int, offsets: np.ndarray):
    """What the estimator's ``method`` gives for the rows ``X``: the logits of ``head`` plus
    ``offsets`` as labels or probabilities, or the embedding."""
    output, finish, _ = METHODS[method]
    return batched_outputs(net, X, output, finish, head=head, offsets=offsets)


def batched_outputs(
    net: SelfLabelNet,
    X,
    output: str,
    finish: Callable[[torch.Tensor], np.ndarray],
    *,
    head: int | None = None,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """``finish`` of the network's ``output`` for each batch of rows, written into one array.

    With ``output="logits"``, the logits are those of ``head`` plus ``offsets``.
    """
    if output != "logits":
        head = offsets = None
    shift = None if offsets is None else torch.from_numpy(offsets).to(net.device)
    result, start = None, 0
    for outputs in net.forward_batches(X, net.batch_size, output, head):
        part = finish(outputs if shift is None else outputs + shift)
        if result is None:
            result = np.empty((X.shape[0], *part.shape[1:]), dtype=part.dtype)
        result[start : start + len(part)] = part
        start += len(part)
    return result


class InformationSum:
    """The information between rows and clusters, ``I(x; y) / log K``, summed batch by batch.

    ``I(x; y) = H(mean_i p(y|x_i)) - mean_i H(p(y|x_i))`` under ``p = softmax(logits)``.
    """

    def __init__(self, n_clusters: int, device: torch.device | str) -> None:
        self.n_clusters = n_clusters
        self.proba_sum = torch.zeros(n_clusters, dtype=torch.float64, device=device)
        self.entropy_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.n_rows = 0

    def add(self, logits: torch.Tensor) -> None:
        """Count the rows of a batch of logits, shape ``(batch, n_clusters)``."""
        log_proba = torch.log_softmax(logits.double(), dim=1)
        proba = log_proba.exp()
        self.proba_sum.add_(proba.sum(dim=0))
        self.entropy_sum.sub_((proba * log_proba).sum())
        self.n_rows += logits.shape[0]

    def score(self) -> float:
        """The normalised information in ``[0, 1]``; 0 for a single cluster."""
        if self.n_clusters == 1:
            return 0.0  # one cluster carries no information about the samples
        marginal = (self.proba_sum / self.n_rows).cpu().numpy()
        entropy_of_mean = -np.sum(marginal * np.log(np.clip(marginal, 1e-300, None)))
        information = max(entropy_of_mean - self.entropy_sum.item() / self.n_rows, 0.0)
        return float(information / np.log(self.n_clusters))


def labels_and_score(
    net: SelfLabelNet, X, head: int, offsets: np.ndarray
) -> tuple[np.ndarray, float]:
    """``predict`` and ``score`` of the rows ``X`` in one pass, in memory of the labels."""
    information = InformationSum(len(offsets), net.device)

    def labels_and_sums(logits: torch.Tensor) -> np.ndarray:
        information.add(logits)
        return _labels(logits)

    labels = batched_outputs(net, X, "logits", labels_and_sums, head=head, offsets=offsets)
    return labels, information.score()


def information_score(net: SelfLabelNet, X, head: int, offsets: np.ndarray) -> float:
    """``score`` of the rows ``X``, without holding their probabilities."""
    return labels_and_score(net, X, head, offsets)[1]
