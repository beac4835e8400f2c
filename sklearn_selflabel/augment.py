"""Training views: what the network must become invariant to.

The noise and image augmentations are ``nn.Module`` objects that act only in training mode,
like dropout, so that the label step, ``predict`` and ``transform`` see clean rows; the
neighbour views of flat rows are drawn by the training step itself.
"""

from __future__ import annotations

import math
import warnings

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn


class TabularAugment(nn.Module):
    """Training views of tabular rows: Gaussian noise and feature masking, in standardised units.

    Parameters
    ----------
    strength : float
        Noise standard deviation (in units of each feature's standard deviation); a feature is
        masked to its mean with probability ``strength / 2``. ``0`` disables the augmentation.
    """

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.strength == 0:
            return x
        keep = torch.rand_like(x) >= self.strength / 2
        return x * keep + self.strength * torch.randn_like(x)


class TermDropout(nn.Module):
    """Training views of sparse rows (documents): a random subset of each row's terms.

    Every stored entry of a sparse (COO) batch is dropped with probability ``rate`` and the
    others are scaled by ``1 / (1 - rate)``, as dropout does, so that the batch stays sparse.
    Dense rows get the same treatment entry by entry.

    Parameters
    ----------
    rate : float
        Probability in ``[0, 1)`` that an entry is dropped. ``0`` disables the augmentation.
    """

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0 <= rate < 1:
            raise ValueError(f"rate must be in [0, 1), got {rate}.")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return x
        if not x.is_sparse:
            return F.dropout(x, self.rate)
        values = x.values()
        kept = F.dropout(values, self.rate)
        return torch.sparse_coo_tensor(
            x.indices(), kept, x.shape, is_coalesced=x.is_coalesced(), check_invariants=False
        )


class ImageAugment(nn.Module):
    """Training views of flattened images: random affine jitter (shift, rotation, scale, shear).

    Rows of length ``C * H * W`` are viewed as ``(C, H, W)`` images, warped by one random affine
    map each with ``grid_sample`` (border pixels extend outwards, so a shifted digit keeps its
    background), and flattened again. At ``strength=0.5`` (the estimator's default) the jitter
    is up to 12.5% of the image side in translation, 15 degrees of rotation, 10% of scale and
    0.15 of shear; ``strength`` scales all of them linearly.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)``.
    strength : float
        Scale of the jitter; ``0`` disables the augmentation.
    """

    def __init__(self, image_shape: tuple[int, int, int], strength: float) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.strength == 0:
            return x
        n = x.shape[0]
        images = x.reshape(n, *self.image_shape)
        theta = self._random_affine(n, x.device, x.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        warped = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
        return warped.reshape(n, -1)

    def _random_affine(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``(n, 2, 3)`` affine maps in ``affine_grid``'s normalised coordinates ([-1, 1])."""

        def uniform(half_width: float) -> torch.Tensor:
            return (2 * torch.rand(n, device=device, dtype=dtype) - 1) * half_width

        s = self.strength
        angle = uniform(math.radians(30.0) * s)
        scale = 1 + uniform(0.2 * s)
        shear = uniform(0.3 * s)
        shift = torch.stack([uniform(0.5 * s), uniform(0.5 * s)], dim=1)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.empty(n, 2, 3, device=device, dtype=dtype)
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin + shear * cos
        theta[:, 1, 0] = sin
        theta[:, 1, 1] = cos + shear * sin
        theta[:, :, 2] = shift
        return theta


class NeighborViews:
    """Training views of flat rows that move each row towards one of its input-space neighbours.

    Rows of one category lie near each other, so a point between a row and one of its nearest
    neighbours is a plausible member of the same category: training the same label on such
    views teaches invariance to the variation within a category, as affine warps do for
    images, where isotropic noise (on thousands of TF-IDF columns, say) drowns the signal.
    Each view is ``x + t (x_nb - x)``, with ``x_nb`` one of the row's neighbours and
    ``t ~ U(0, 1)``, drawn per row. Sparse rows give sparse views.

    Parameters
    ----------
    neighbors : torch.Tensor of shape (n_samples, k), int64
        Input-space nearest neighbours of every training row.
    generator : torch.Generator
        Draws the neighbours and the mixing (on the CPU).
    """

    def __init__(self, neighbors: torch.Tensor, generator: torch.Generator) -> None:
        self.neighbors = neighbors.cpu()
        self.generator = generator
        self.X = None

    def bind(self, X) -> NeighborViews:
        """Read the rows (raw, one batch at a time) from the training data ``X``."""
        self.X = X
        return self

    def __call__(self, rows: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        from ._data import row_tensor

        indices = indices.cpu()
        n, k = len(indices), self.neighbors.shape[1]
        pick = torch.randint(k, (n,), generator=self.generator)
        chosen = self.neighbors[indices, pick].numpy()
        t = torch.rand(n, 1, generator=self.generator)
        if rows.is_sparse:
            # (1 - t) x + t x_nb, as sparse rows.
            own, other = self.X[indices.numpy()], self.X[chosen]
            mixed = sp.diags(1 - t.numpy().ravel()) @ own + sp.diags(t.numpy().ravel()) @ other
            return row_tensor(mixed, 0, n, sparse=True).to(rows.device)
        other = row_tensor(self.X, index=chosen).to(rows.device)
        return rows + t.to(rows.device) * (other - rows)

    def state_dict(self) -> dict:
        return {"neighbors": self.neighbors, "generator": self.generator.get_state()}

    @classmethod
    def from_state_dict(cls, state: dict) -> NeighborViews:
        generator = torch.Generator()
        generator.set_state(state["generator"].cpu())
        return cls(state["neighbors"], generator)


class NeighbourViews(NeighborViews):
    """Deprecated alias of ``NeighborViews``, to be removed in 0.3."""

    def __init__(self, *args, **kwargs) -> None:
        warnings.warn(
            "NeighbourViews was renamed NeighborViews in 0.2 and will be removed in 0.3.",
            FutureWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)
