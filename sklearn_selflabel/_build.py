"""Building the torch network and the skorch net with its callbacks from the settings."""

from __future__ import annotations

import numpy as np
import torch

# torch's optimizers import torch._dynamo when first created or stepped (a second or two):
# importing it with the package keeps that cost out of the first fit of a process.
import torch._dynamo  # noqa: F401
from skorch.callbacks import Callback
from torch import nn

from ._callbacks import EpochProgress, FiniteLossGuard, LabelsConverged, PropagationRefresh
from ._checkpoint import EpochEndState
from ._data import shuffled_batch_loader
from ._net import SelfLabelNet
from ._settings import NetworkSettings, Settings
from .augment import ImageAugment, TabularAugment, TermDropout
from .modules import ConvEncoder, MLPEncoder, MultiHeadClassifier, SelfLabelModule


def build_module(network: NetworkSettings, X) -> SelfLabelModule:
    """The network ``h ∘ Φ`` for the rows ``X``, with the standardisation that ``network``
    resolved for them and its views; ``X`` is not read."""
    # Copies: loading a state into the module writes its buffers in place.
    mean, scale = network.input_mean.copy(), network.input_scale.copy()
    return module_for(network, X.shape[1], mean, scale)


def module_for(
    network: NetworkSettings, n_features: int, mean: np.ndarray, scale: np.ndarray
) -> SelfLabelModule:
    """The network ``h ∘ Φ`` for rows of ``n_features`` standardised by ``mean`` and ``scale``.

    Sparse rows (``input_kind="sparse"``) are L2-normalised, and stay sparse up to the first
    layer of the default encoder.
    """
    if network.module is not None:
        encoder = network.module(n_features=n_features, **network.module_params)
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"module must build a torch.nn.Module, got {type(encoder).__name__}.")
    elif network.image_shape is not None:
        encoder = ConvEncoder(network.image_shape, embedding_dim=network.embedding_dim)
    else:
        encoder = MLPEncoder(
            n_features,
            network.hidden_layer_sizes,
            network.embedding_dim,
            sparse_input=network.sparse_batches,
        )
    embedding_dim = _output_size(encoder, n_features)
    sparse = network.input_kind == "sparse"
    augment: nn.Module
    if network.image_shape is not None:
        augment = ImageAugment(network.image_shape, network.augment_strength)
    elif sparse:
        augment = TermDropout(network.augment_strength / 2)
    else:
        augment = TabularAugment(network.augment_strength)
    return SelfLabelModule(
        encoder,
        MultiHeadClassifier(embedding_dim, network.n_clusters, network.n_heads),
        torch.from_numpy(mean),
        torch.from_numpy(scale),
        augment,
        normalize_rows=sparse,
        sparse_input=network.sparse_batches,
    )


def build_net(
    settings: Settings,
    module: SelfLabelModule,
    seed: int,
    label_step: Callback,
    end_state: EpochEndState,
) -> SelfLabelNet:
    """The skorch net that trains ``module`` with ``label_step`` and the settings' callbacks.

    ``end_state`` comes after the others, so that an epoch counts as completed once everything
    else has run; only the stop at converged labels (the label step's ``n_steps_no_change``)
    follows it.
    """
    accelerator = settings.accelerator
    callbacks = [("label_step", label_step), ("finite_loss", FiniteLossGuard())]
    if settings.propagation is not None:
        refresh = PropagationRefresh(
            label_step.epochs,
            settings.propagation,
            batch_size=settings.batch_size,
            seed=seed,
        )
        callbacks.append(("propagation", refresh))
    if settings.verbose == 1:
        main_process = accelerator is None or accelerator.is_local_main_process
        callbacks.append(("progress", EpochProgress(disable=not main_process)))
    callbacks.append(("epoch_end_state", end_state))
    n_steps_no_change = getattr(label_step, "n_steps_no_change", None)
    # Processes that stopped apart would wait for each other's gradients for ever.
    one_process = accelerator is None or accelerator.num_processes == 1
    if n_steps_no_change is not None and one_process:
        stop = LabelsConverged(n_steps_no_change, not_before=label_step.repartition_epoch() or 0)
        callbacks.append(("labels_converged", stop))
    accelerated = {}
    if accelerator is not None:
        # skorch's AccelerateMixin prints through accelerator.print whatever verbose says.
        sink = accelerator.print if settings.verbose >= 2 else print
        accelerated = {"accelerator": accelerator, "callbacks__print_log__sink": sink}
    net = settings.labels.net_class(accelerator is not None)(
        module=module,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=settings.lr,
        optimizer__weight_decay=settings.weight_decay,
        # One fused kernel per step: on the CPU, about a fourth of the time of the multi-tensor
        # step for the wide first layers of pixels and documents.
        optimizer__fused=True,
        max_epochs=settings.max_epochs,
        batch_size=settings.batch_size,
        train_split=None,
        iterator_train=shuffled_batch_loader,
        iterator_train__rng=np.random.default_rng(seed),
        callbacks=callbacks,
        device=str(settings.device),
        verbose=int(settings.verbose >= 2),  # skorch's per-epoch table
        **accelerated,
    )
    # What the net was built from, so that a saved model can be built again.
    net.build_settings_ = settings
    return net


def _output_size(encoder: nn.Module, n_features: int) -> int:
    """Embedding size of ``encoder``, read from one forward pass on two zero rows."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        out = encoder(torch.zeros(2, n_features))
    encoder.train(was_training)
    if out.ndim != 2 or out.shape[0] != 2:
        raise ValueError(
            "module must map (batch, n_features) to (batch, embedding_dim); got output shape "
            f"{tuple(out.shape)} for input (2, {n_features})."
        )
    return int(out.shape[1])
