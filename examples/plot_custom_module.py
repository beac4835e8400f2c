"""
Your own torch module as the encoder
====================================

The default encoder is an MLP (or, with ``image_shape``, a small CNN). Any ``torch.nn.Module``
can take its place: pass the class as ``module`` and its keyword arguments as
``module_params``. The estimator builds it as ``module(n_features=n_features_in_,
**module_params)``; it maps a float32 batch of shape ``(batch, n_features)`` to the embedding
``(batch, embedding_dim)``, whose size is read from one forward pass. The estimator adds the
input standardisation, the training views and the classifier heads around it.

Here the encoder is a residual MLP with layer normalisation, fitted on the digits.
"""

import torch
from sklearn.datasets import load_digits
from torch import nn

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualEncoder(nn.Module):
    """``n_features -> width``, ``n_blocks`` residual blocks, then ``width -> embedding_dim``."""

    def __init__(
        self, n_features: int, width: int = 128, n_blocks: int = 2, embedding_dim: int = 32
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(n_features, width),
            *(ResidualBlock(width) for _ in range(n_blocks)),
            nn.LayerNorm(width),
            nn.Linear(width, embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


X, y = load_digits(return_X_y=True)
model = SelfLabelingClusterer(
    n_clusters=10,
    module=ResidualEncoder,
    module_params={"width": 128, "n_blocks": 2, "embedding_dim": 32},
    random_state=0,
)
labels = model.fit_predict(X)
print(f"accuracy {clustering_accuracy(y, labels):.3f}")
print(f"embedding: {model.transform(X).shape}")  # (1797, 32): the encoder's output size

# %%
# The fitted network is a skorch ``NeuralNet`` (``model.net_``); the encoder sits inside it:
print(model.net_.module_.encoder)
