"""The networks with skorch's ``AccelerateMixin``, for training through Hugging Face accelerate.

Imported only when the estimator is given an ``accelerator``, since importing ``skorch.hf``
takes a while. With ``AccelerateMixin`` first in the bases, training steps go through the
prepared (for several processes, ``DistributedDataParallel``-wrapped) module's forward, and the
loader, split by whole batches among processes, gives each process its own batches.
"""

from __future__ import annotations

import torch
from skorch import NeuralNet
from skorch.hf import AccelerateMixin

from ._net import SelfLabelNet
from ._online import OnlineSelfLabelNet


class _BatchShardingMixin(AccelerateMixin):
    def initialize_criterion(self):
        super().initialize_criterion()
        # The cross-entropy module has no parameters, and DistributedDataParallel refuses to
        # wrap such a module: hand accelerate its forward, which it leaves alone.
        self.criterion_ = self.criterion_.forward
        return self

    def get_iterator(self, dataset, training=False):
        if self.accelerator.num_processes == 1:
            # One process has nothing to shard, and accelerate cannot rebuild a one-process
            # loader whose sampler yields whole batches (``batch_size=None``).
            return NeuralNet.get_iterator(self, dataset, training=training)
        return super().get_iterator(dataset, training=training)

    def inference_module(self) -> torch.nn.Module:
        # During training, module_ is the prepared module (DistributedDataParallel across
        # processes), which hides the SelfLabelModule's own methods and attributes.
        return self.accelerator.unwrap_model(self.module_, keep_fp32_wrapper=False)


class AcceleratedSelfLabelNet(_BatchShardingMixin, SelfLabelNet):
    """``SelfLabelNet`` trained through an ``accelerate.Accelerator`` (offline label mode)."""


class AcceleratedOnlineSelfLabelNet(_BatchShardingMixin, OnlineSelfLabelNet):
    """``OnlineSelfLabelNet`` trained through an ``accelerate.Accelerator`` (online label mode)."""
