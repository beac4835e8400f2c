"""Training views: what the network must become invariant to.

Both augmentations are ``nn.Module`` objects that act only in training mode, like dropout, so
that the label step, ``predict`` and ``transform`` see clean rows.
"""

from __future__ import annotations

import math

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
