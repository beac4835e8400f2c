"""Input geometry by kind of data: what the rows are, how they are scaled, how neighbours are found.

Flat rows (no ``image_shape``) are one of four kinds, detected from the data unless the
``input_kind`` parameter names one. Rows of fewer than ``MIN_WIDE_FEATURES`` features are
tables; wider rows are told apart by their values:

``"tabular"``
    Measurements: rows of fewer than ``MIN_WIDE_FEATURES`` features, and wider dense rows of
    non-negative features on scales of their own. Each feature standardised, unless every
    feature is centred and all share a common scale (standardised already, coordinates of
    PCA), which keeps the geometry given; Euclidean neighbours.
``"embedding"``
    Wide, dense and signed: the outputs of another model (a pretrained network's features,
    centred or normalised), pixels with their mean taken off. One mean and one scale for all
    features, so the geometry is the one given; cosine neighbours.
``"nonnegative"``
    Wide, dense, non-negative, every feature on a common range: pixels, histograms, the
    features of a network with ReLU outputs. One mean and one scale for all features (a
    feature's share of a row is kept), and cosine neighbours.
``"sparse"``
    A sparse matrix of non-negative values: TF-IDF, counts. Rows are L2-normalised (cosine
    geometry) and scaled by one number; nothing is subtracted, so batches stay sparse and the
    first layer multiplies them directly.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.utils.sparsefuncs import mean_variance_axis

from ._data import chunked_rows, column_mean_and_variance, feature_mean_and_scale

KINDS = ("tabular", "embedding", "nonnegative", "sparse")
# Features are on a common range when the 90th percentile of their typical sizes is at most
# this many times the 10th.
_COMMON_RANGE = 10.0
# Rows of at least this many features may be pixels or a model's outputs, fewer are a table:
# the smallest images (8 x 8) and common embeddings have 64, the widest shared table 60.
MIN_WIDE_FEATURES = 64


def detect_kind(X) -> str:
    """The kind of the flat rows ``X`` (see the module's docstring), from at most one pass
    over them."""
    if sp.issparse(X):
        if X.data.size == 0 or X.data.min() >= 0:
            return "sparse"
        return "embedding" if X.shape[1] >= MIN_WIDE_FEATURES else "tabular"
    if X.shape[1] < MIN_WIDE_FEATURES:
        return "tabular"
    lowest = np.inf
    highest = np.full(X.shape[1], -np.inf)
    for chunk in chunked_rows(X):
        lowest = min(lowest, float(chunk.min()))
        highest = np.maximum(highest, chunk.max(axis=0))
    if lowest >= 0:
        return "nonnegative" if _on_a_common_range(highest) else "tabular"
    return "embedding"


def _centered_on_a_common_scale(mean: np.ndarray, variance: np.ndarray) -> bool:
    """Whether every feature's mean is within half its standard deviation of zero and the
    standard deviations are on a common range: coordinates (PCA's, standardised columns)."""
    std = np.sqrt(variance)
    return bool(np.all(np.abs(mean) <= 0.5 * std) and _on_a_common_range(std))


def _on_a_common_range(sizes: np.ndarray) -> bool:
    sizes = sizes[sizes > 0]
    if sizes.size == 0:
        return True
    low, high = np.percentile(sizes, [10, 90])
    return bool(high <= _COMMON_RANGE * low)


def input_scaling(X, kind: str, image_shape=None) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(mean, scale, normalize_rows)``: the network sees ``(x / |x| if normalize_rows) -
    mean) / scale``, float32 of shape ``(n_features,)``.

    Images (``image_shape``) are standardised per channel, tabular rows per feature unless
    they are centred coordinates on a common scale, the other kinds with one mean and one
    scale for all features.
    """
    n_features = X.shape[1]
    if kind == "sparse":
        # Rows of unit norm: their entries' mean square is 1 / n_features; no centring, so
        # that batches stay sparse (a constant shift is the first layer's bias anyway).
        scale = np.full(n_features, np.sqrt(1.0 / n_features), dtype=np.float32)
        return np.zeros(n_features, dtype=np.float32), scale, True
    mean, variance = (
        mean_variance_axis(X, axis=0) if sp.issparse(X) else column_mean_and_variance(X)
    )
    if image_shape is not None or (
        kind == "tabular" and not _centered_on_a_common_scale(mean, variance)
    ):
        mean, scale = feature_mean_and_scale(mean, variance, image_shape)
        return mean, scale, False
    overall_mean = mean.mean()
    overall_variance = (variance + mean**2).mean() - overall_mean**2
    scale = np.sqrt(max(overall_variance, 1e-24))
    return (
        np.full(n_features, overall_mean, dtype=np.float32),
        np.full(n_features, scale, dtype=np.float32),
        False,
    )
