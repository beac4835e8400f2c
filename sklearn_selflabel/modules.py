"""Torch modules: encoders that produce the embedding Φ and the multi-head classifier h."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SparseLinear(nn.Module):
    """A linear layer ``x @ W.T + b``, as ``nn.Linear``, that also multiplies a sparse (COO) batch.

    Time and memory then follow the batch's non-zeros, not ``batch x n_features``. The weight
    is held as the contiguous ``(in_features, out_features)`` matrix ``W.T``, so that a sparse
    batch sums whole rows of it (``embedding_bag``), many times faster than a sparse product
    with ``W``, and Adam's fused step runs over contiguous memory. State dicts hold ``W`` in
    ``nn.Linear``'s shape ``(out_features, in_features)``, as before this layout.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        linear = nn.Linear(in_features, out_features, bias)  # nn.Linear's initialisation
        self.in_features, self.out_features = in_features, out_features
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous())
        self.bias = linear.bias
        self.register_state_dict_post_hook(_weight_as_linear)
        self.register_load_state_dict_pre_hook(_weight_from_linear)

    @property
    def weight(self) -> torch.Tensor:
        """``nn.Linear``'s weight ``W``, of shape ``(out_features, in_features)``."""
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_sparse:
            return F.linear(x, self.weight, self.bias)
        x = x.coalesce()
        rows, columns = x.indices()
        offsets = torch.searchsorted(rows, torch.arange(x.shape[0], device=rows.device))
        out = F.embedding_bag(
            columns, self.weight_t, offsets, mode="sum", per_sample_weights=x.values()
        )
        return out if self.bias is None else out + self.bias


def _weight_as_linear(module, state_dict, prefix, local_metadata) -> None:
    state_dict[prefix + "weight"] = state_dict.pop(prefix + "weight_t").t()


def _weight_from_linear(module, state_dict, prefix, *args) -> None:
    if prefix + "weight" in state_dict:
        state_dict[prefix + "weight_t"] = state_dict.pop(prefix + "weight").t().contiguous()


class MLPEncoder(nn.Module):
    """Fully connected encoder ``Φ``: ``Linear, BatchNorm, ReLU`` blocks, then a linear embedding.

    Parameters
    ----------
    n_features : int
        Number of input features.
    hidden_layer_sizes : sequence of int
        Width of each hidden block.
    embedding_dim : int
        Size of the embedding returned by ``forward``.
    sparse_input : bool, default=False
        Whether the first layer is a ``SparseLinear``, which takes sparse (COO) batches as
        well; its weight layout suits them and makes dense batches a little slower.
    """

    def __init__(
        self,
        n_features: int,
        hidden_layer_sizes: Sequence[int] = (256, 256),
        embedding_dim: int = 64,
        sparse_input: bool = False,
    ) -> None:
        super().__init__()
        first = SparseLinear if sparse_input else nn.Linear
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden_layer_sizes:
            layers += [(nn.Linear if layers else first)(width, size)]
            layers += [nn.BatchNorm1d(size), nn.ReLU()]
            width = size
        layers.append((nn.Linear if layers else first)(width, embedding_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MultiHeadClassifier(nn.Module):
    """``n_heads`` independent linear heads ``h_1..h_H`` on a shared embedding.

    The heads are stored as one ``Linear`` layer so that all of them cost a single matmul.
    ``forward`` returns logits of shape ``(n_heads, batch, n_clusters)``.
    """

    def __init__(self, embedding_dim: int, n_clusters: int, n_heads: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        # SeLa puts the heads on rectified, normalised features rather than on the raw embedding.
        self.norm = nn.Sequential(nn.BatchNorm1d(embedding_dim), nn.ReLU())
        self.linear = nn.Linear(embedding_dim, n_heads * n_clusters)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        logits = self.linear(self.norm(embedding))
        return logits.view(-1, self.n_heads, self.n_clusters).transpose(0, 1)


class GridAveragePool(nn.Module):
    """``AdaptiveAvgPool2d(size)`` for maps of a known size, as a product with a fixed matrix.

    The pooling windows of maps of known size are fixed, so the pooled grid is a
    ``(size**2, H * W)`` matrix that marks each window's pixels, times every map, divided by
    the windows' areas. On channels-last maps that is one batched product and its backward
    another, where adaptive pooling's backward is slow on the CPU (user guide, "Images").

    Parameters
    ----------
    input_size : tuple of int
        ``(H, W)`` of the maps.
    size : int
        Side of the output grid.
    """

    def __init__(self, input_size: tuple[int, int], size: int) -> None:
        super().__init__()
        height, width = input_size
        self.size = size
        windows = torch.kron(_windows(height, size), _windows(width, size))
        # Not saved: they follow from the sizes, which the model's settings hold. Marks of
        # ones stay exact in bfloat16, where weights such as 1/9 would be rounded.
        self.register_buffer("windows", windows, persistent=False)
        self.register_buffer("areas", windows.sum(dim=1, keepdim=True), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, channels, height, width = x.shape
        maps = x.permute(0, 2, 3, 1).reshape(n, height * width, channels)  # a view if NHWC
        sums = torch.matmul(self.windows.to(maps.dtype), maps)  # (n, size**2, C)
        pooled = sums / self.areas.to(sums.dtype)
        return pooled.transpose(1, 2).unflatten(2, (self.size, self.size))


def _windows(length: int, size: int) -> torch.Tensor:
    """``(size, length)`` marks of adaptive average pooling's windows along one axis:
    window ``i`` covers ``floor(i * length / size) .. ceil((i + 1) * length / size)``."""
    windows = torch.zeros(size, length)
    for i in range(size):
        windows[i, (i * length) // size : -(-((i + 1) * length) // size)] = 1.0
    return windows


class ConvEncoder(nn.Module):
    """Small convolutional encoder ``Φ`` for flattened images.

    Three ``Conv 3x3, BatchNorm, ReLU`` blocks (max-pooling after the first two), average
    pooling of the last feature map onto a ``pooled_size x pooled_size`` grid, and a linear
    embedding of the grid. Rows of length ``C * H * W`` are viewed as ``(C, H, W)`` images.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)``.
    channels : sequence of int
        Output channels of the three blocks.
    embedding_dim : int
        Size of the embedding returned by ``forward``.
    pooled_size : int
        Side of the grid; ``1`` is global average pooling.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        channels: Sequence[int] = (16, 32, 64),
        embedding_dim: int = 64,
        pooled_size: int = 3,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        layers: list[nn.Module] = []
        width, (height, breadth) = self.image_shape[0], self.image_shape[1:]
        for i, size in enumerate(channels):
            layers += [nn.Conv2d(width, size, 3, padding=1), nn.BatchNorm2d(size)]
            if i < len(channels) - 1:
                # Max-pooling commutes with ReLU; pooling first leaves ReLU a quarter of the map.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                height, breadth = -(-height // 2), -(-breadth // 2)
            layers.append(nn.ReLU())
            width = size
        layers += [
            GridAveragePool((height, breadth), pooled_size),
            nn.Flatten(),
            nn.Linear(width * pooled_size**2, embedding_dim),
        ]
        # Channels-last feature maps, on which the convolution and pooling kernels are faster
        # (user guide, "Images").
        self.layers = nn.Sequential(*layers).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(-1, *self.image_shape)
        return self.layers(images.contiguous(memory_format=torch.channels_last))


class SelfLabelModule(nn.Module):
    """The full network ``h ∘ Φ`` with the input standardisation and training views folded in.

    This is the skorch net's ``module_``. Its ``forward`` returns the logits, the embedding
    or both, so that every use, a data-parallel wrapper's included, goes through it.

    Parameters
    ----------
    encoder : nn.Module
        Maps ``(batch, n_features)`` to ``(batch, embedding_dim)``.
    heads : MultiHeadClassifier
        Maps the embedding to per-head logits.
    mean, scale : torch.Tensor of shape (n_features,)
        Standardisation of the raw input, kept as buffers so that it travels with the weights.
    augment : nn.Module
        Makes a random training view of standardised rows; the identity in eval mode.
    normalize_rows : bool, default=False
        L2-normalise each row before the standardisation (cosine geometry). A sparse (COO)
        batch stays sparse; ``mean`` must then be zero.
    sparse_input : bool, default=False
        Whether the encoder takes sparse (COO) batches, so that sparse data are fed as such.
    normalise_rows : bool, default=None
        Deprecated alias of ``normalize_rows``, to be removed in 0.3.
    """

    def __init__(
        self,
        encoder: nn.Module,
        heads: MultiHeadClassifier,
        mean: torch.Tensor,
        scale: torch.Tensor,
        augment: nn.Module,
        normalize_rows: bool = False,
        sparse_input: bool = False,
        normalise_rows: bool | None = None,
    ) -> None:
        super().__init__()
        if normalise_rows is not None:
            warnings.warn(
                "normalise_rows was renamed normalize_rows in 0.2 and will be removed in 0.3.",
                FutureWarning,
                stacklevel=2,
            )
            normalize_rows = normalise_rows
        self.encoder = encoder
        self.heads = heads
        self.augment = augment
        self.normalize_rows = normalize_rows
        self.sparse_input = sparse_input
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)

    def __setstate__(self, state: dict) -> None:
        # A module pickled before the rename (0.1) holds the old attribute name.
        if "normalise_rows" in state:
            state["normalize_rows"] = state.pop("normalise_rows")
        super().__setstate__(state)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Deprecated alias of ``standardize``, to be removed in 0.3."""
        warnings.warn(
            "standardise was renamed standardize in 0.2 and will be removed in 0.3.",
            FutureWarning,
            stacklevel=2,
        )
        return self.standardize(x)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw input rows in the units that the encoder sees."""
        if x.is_sparse:
            x = x.coalesce()
            rows, columns = x.indices()
            values = x.values()
            if self.normalize_rows:
                squares = torch.zeros(x.shape[0], dtype=values.dtype, device=values.device)
                norms = squares.index_add_(0, rows, values * values).sqrt_().clamp_min_(1e-12)
                values = values / norms[rows]
            return torch.sparse_coo_tensor(
                x.indices(),
                values / self.scale[columns],
                x.shape,
                is_coalesced=True,
                check_invariants=False,
            )
        if self.normalize_rows:
            x = F.normalize(x, dim=1)
        return (x - self.mean) / self.scale

    def forward(
        self, x: torch.Tensor, output: str = "logits"
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The network's outputs for raw input rows (augmented only in training mode).

        Parameters
        ----------
        x : torch.Tensor of shape (batch, n_features)
        output : {"logits", "embedding", "both"}, default="logits"
            ``"logits"``: per-head logits ``(n_heads, batch, n_clusters)``; ``"embedding"``:
            ``Φ(x)``, ``(batch, embedding_dim)``; ``"both"``: ``(embedding, logits)``.
        """
        embedding = self.encoder(self.augment(self.standardize(x)))
        if output == "embedding":
            return embedding
        logits = self.heads(embedding)
        return (embedding, logits) if output == "both" else logits
