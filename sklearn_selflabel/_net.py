"""The skorch network that trains ``h ∘ Φ`` against self-labels looked up by sample index."""

from __future__ import annotations

import numpy as np
import torch
from skorch import NeuralNet
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

from ._data import iter_row_batches
from .propagation import InvariancePropagation


class SelfLabelNet(NeuralNet):
    """A skorch ``NeuralNet`` whose targets are sample indices.

    The current hard labels of every head live in ``label_table_`` (a ``(n_heads, n_samples)``
    int64 tensor on the training device), which the label-step callback rewrites on its
    schedule. ``get_loss`` looks up each row's labels there, so the training data never change
    while the labels do. The loss is the mean over heads of the cross-entropy.
    """

    label_table_: torch.Tensor
    # Set by the propagation callback when invariance propagation is on.
    propagation_: InvariancePropagation | None = None
    # Attributes (prefixes) that hold tensors, pickled the way skorch pickles ``module_`` and
    # ``optimizer_``, so that a net pickled on CUDA unpickles onto the CPU where CUDA is absent.
    # "module" also covers the ``module`` parameter, which is the network instance itself, and
    # "callbacks" the callbacks' state (the label step's solver state); each prefix keeps the
    # parameter and its initialised twin (``callbacks_``) one object.
    cuda_dependent_attributes_ = ["module", "label_table_", "propagation_", "callbacks"]

    def train_step_single(self, batch, **fit_params):
        """One training step: the self-label loss, plus the invariance-propagation term."""
        self._set_training(True)
        rows, indices = unpack_data(batch)
        embedding = self.module_.embed(to_tensor(rows, device=self.device))
        logits = self.module_.heads(embedding)
        loss = self.get_loss(logits, indices, X=rows, training=True)
        if self.propagation_ is not None:
            loss = loss + self.propagation_.training_term(
                embedding, logits, indices.to(self.device), self.label_table_
            )
        loss.backward()
        return {"loss": loss, "y_pred": logits}

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
        output : {"logits", "embedding", "both"}
            ``"logits"`` gives ``(n_heads, n_samples, n_clusters)``; ``"embedding"`` gives
            ``(n_samples, embedding_dim)``; ``"both"`` gives ``(embedding, logits)`` from one pass.
        head : int or None
            With ``output="logits"``, keep only this head's logits, ``(n_samples, n_clusters)``,
            so that inference holds one head's outputs rather than all of them.

        Returns
        -------
        torch.Tensor (a pair of them with ``"both"``) on the network's device.
        """
        module = self.module_
        # A fitted network is left in eval mode and is then never switched: concurrent calls
        # (predict from several threads) only read it.
        was_training = module.training
        if was_training:
            module.eval()
        if output == "embedding":
            forward = module.embed
        elif output == "both":

            def forward(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                embedding = module.embed(rows)
                return embedding, module.heads(embedding)

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
            if was_training:
                module.train()
        if output == "both":
            embeddings, logits = zip(*parts, strict=True)
            return torch.cat(embeddings), torch.cat(logits, dim=-2)
        return torch.cat(parts, dim=-2)

    def head_losses(self, logits: torch.Tensor) -> np.ndarray:
        """Cross-entropy of each head's ``logits`` against its current labels, shape (n_heads,)."""
        log_probs = torch.log_softmax(logits, dim=-1)
        picked = torch.gather(log_probs, 2, self.label_table_.unsqueeze(-1)).squeeze(-1)
        return (-picked.mean(dim=1)).cpu().numpy()
