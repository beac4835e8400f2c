"""The skorch network that trains ``h ∘ Φ`` against self-labels looked up by sample index."""

from __future__ import annotations

import numpy as np
import torch
from skorch import NeuralNet

from ._data import iter_row_batches


class SelfLabelNet(NeuralNet):
    """A skorch ``NeuralNet`` whose targets are sample indices.

    The current hard labels of every head live in ``label_table_`` (a ``(n_heads, n_samples)``
    int64 tensor on the training device), which the label-step callback rewrites on its
    schedule. ``get_loss`` looks up each row's labels there, so the training data never change
    while the labels do. The loss is the mean over heads of the cross-entropy.
    """

    label_table_: torch.Tensor

    def get_loss(self, y_pred, y_true, X=None, training=False):
        labels = self.label_table_[:, y_true.to(self.label_table_.device)]
        n_clusters = y_pred.shape[-1]
        # Every head sees the same batch, so the mean over all (head, row) pairs is the mean
        # over heads of each head's cross-entropy.
        return self.criterion_(y_pred.reshape(-1, n_clusters), labels.reshape(-1))

    @torch.no_grad()
    def evaluate_rows(
        self, X, batch_size: int, output: str = "logits", head: int | None = None
    ) -> torch.Tensor:
        """Forward all rows of ``X`` in eval mode (no augmentation), batch by batch.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
        batch_size : int
        output : {"logits", "embedding"}
            ``"logits"`` gives ``(n_heads, n_samples, n_clusters)``; ``"embedding"`` gives
            ``(n_samples, embedding_dim)``.
        head : int or None
            With ``output="logits"``, keep only this head's logits, ``(n_samples, n_clusters)``,
            so that inference holds one head's outputs rather than all of them.

        Returns
        -------
        torch.Tensor on the network's device.
        """
        module = self.module_
        was_training = module.training
        module.eval()
        if output == "embedding":
            forward = module.embed
        elif head is None:
            forward = module
        else:

            def forward(rows: torch.Tensor) -> torch.Tensor:
                return module(rows)[head]

        try:
            parts = [
                forward(torch.from_numpy(rows).to(self.device))
                for rows in iter_row_batches(X, batch_size)
            ]
        finally:
            module.train(was_training)
        return torch.cat(parts, dim=-2)

    def head_losses(self, logits: torch.Tensor) -> np.ndarray:
        """Cross-entropy of each head's ``logits`` against its current labels, shape (n_heads,)."""
        log_probs = torch.log_softmax(logits, dim=-1)
        picked = torch.gather(log_probs, 2, self.label_table_.unsqueeze(-1)).squeeze(-1)
        return (-picked.mean(dim=1)).cpu().numpy()
