"""The skorch network that trains ``h ∘ Φ`` against self-labels looked up by sample index."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from skorch import NeuralNet
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

from ._data import iter_tensor_batches
from .augment import NeighborViews
from .propagation import InvariancePropagation


class SelfLabelNet(NeuralNet):
    """A skorch ``NeuralNet`` whose targets are sample indices.

    The current hard labels of every head live in ``label_table_`` (a ``(n_heads, n_samples)``
    int64 tensor on the training device), which the label-step callback rewrites on its
    schedule. ``get_loss`` looks up each row's labels there, so the training data never change
    while the labels do. The loss is the mean over heads of the cross-entropy. The module is a
    ``SelfLabelModule``.
    """

    # The label mode that trains this class of net.
    label_mode = "offline"
    label_table_: torch.Tensor
    # Set by the propagation callback when invariance propagation is on, and the neighbour
    # views of flat rows with it.
    propagation_: InvariancePropagation | None = None
    neighbor_views_: NeighborViews | None = None
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
        rows = to_tensor(rows, device=self.device)
        if self.neighbor_views_ is not None:
            rows = self.neighbor_views_(rows, indices)
        with self.autocast(True):
            embedding, logits = self.module_(rows, output="both")
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

    @property
    def mixed_precision(self) -> bool:
        """Whether training steps and the passes with ``fast=True`` run in bfloat16 autocast."""
        settings = getattr(self, "build_settings_", None)
        return settings is not None and settings.mixed_precision

    @property
    def fast_dtype(self) -> torch.dtype:
        """The precision of training steps and of the passes with ``fast=True``."""
        return torch.bfloat16 if self.mixed_precision else torch.float32

    def autocast(self, fast: bool):
        """Autocast to ``fast_dtype`` where ``fast`` and the net trains in mixed precision."""
        enabled = fast and self.mixed_precision
        return torch.autocast(torch.device(self.device).type, self.fast_dtype, enabled=enabled)

    def inference_module(self) -> torch.nn.Module:
        """The ``SelfLabelModule`` itself, outside any data-parallel wrapper.

        Inference needs no gradients to synchronise, and a wrapper would hide the module.
        """
        return self.module_

    @torch.no_grad()
    def forward_batches(
        self,
        X,
        batch_size: int,
        output: str = "logits",
        head: int | None = None,
        fast: bool = False,
    ) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """The outputs for consecutive batches of the rows of ``X``, in eval mode (clean rows).

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
        batch_size : int
        output : {"logits", "embedding", "both"}
            As ``SelfLabelModule.forward`` gives them, on the network's device.
        head : int or None
            With ``output="logits"``, keep only this head's logits, ``(batch, n_clusters)``,
            so that inference holds one head's outputs rather than all of them.
        fast : bool
            Compute in bfloat16 when the net trains in mixed precision (the training-time
            passes of the label steps); the outputs are float32 either way.
        """
        module = self.inference_module()
        # A fitted network is left in eval mode and is then never switched: concurrent calls
        # (predict from several threads) only read it.
        was_training = module.training
        if was_training:
            module.eval()
        try:
            for rows in iter_tensor_batches(X, batch_size, sparse=module.sparse_input):
                with self.autocast(fast):
                    outputs = module(rows.to(self.device), output=output)
                if head is not None:
                    outputs = outputs[head]
                yield tuple(o.float() for o in outputs) if output == "both" else outputs.float()
        finally:
            if was_training:
                module.train()

    def evaluate_rows(
        self, X, batch_size: int, output: str = "logits", fast: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``forward_batches`` over all rows of ``X``, joined: what the label steps see.

        Returns ``(n_heads, n_samples, n_clusters)`` logits, the ``(n_samples,
        embedding_dim)`` embedding, or both.
        """
        parts = list(self.forward_batches(X, batch_size, output, fast=fast))
        if output == "both":
            embeddings, logits = zip(*parts, strict=True)
            return torch.cat(embeddings), torch.cat(logits, dim=-2)
        return torch.cat(parts, dim=-2)

    def head_losses(self, logits: torch.Tensor) -> np.ndarray:
        """Cross-entropy of each head's ``logits`` against its current labels, shape (n_heads,)."""
        log_probs = torch.log_softmax(logits, dim=-1)
        picked = torch.gather(log_probs, 2, self.label_table_.unsqueeze(-1)).squeeze(-1)
        return (-picked.mean(dim=1)).cpu().numpy()
