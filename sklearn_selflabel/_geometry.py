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

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.utils.sparsefuncs import mean_variance_axis

from ._data import (
    ColumnMoments,
    DistinctRows,
    check_finite,
    check_largest_magnitude,
    chunked_rows,
    feature_mean_and_scale,
    is_out_of_core,
)

KINDS = ("tabular", "embedding", "nonnegative", "sparse")
# Features are on a common range when the 90th percentile of their typical sizes is at most
# this many times the 10th.
_COMMON_RANGE = 10.0
# Rows of at least this many features may be pixels or a model's outputs, fewer are a table:
# the smallest images (8 x 8) and common embeddings have 64, the widest shared table 60.
MIN_WIDE_FEATURES = 64


@dataclass(frozen=True)
class RowProfile:
    """What preparing a fit needs to know of its rows, gathered in one pass over them by
    ``profile_rows``.

    Attributes
    ----------
    n_features : int
        The number of columns.
    kind : str
        The kind of the rows: the one named to ``profile_rows``, else the one detected from
        them (the module's docstring).
    mean : ndarray of shape (n_features,) or None
        Each column's mean: float64 for dense rows, the dtype of ``mean_variance_axis`` for a
        sparse matrix. None for rows of kind ``"sparse"``, whose scaling needs none.
    variance : ndarray of shape (n_features,) or None
        Each column's (population) variance, as ``mean``.
    n_distinct : int
        The distinct rows as the network sees them (float32), counted until ``at_least``
        (``_data.DistinctRows``): exact below it, at least it otherwise.
    """

    n_features: int
    kind: str
    mean: np.ndarray | None
    variance: np.ndarray | None
    n_distinct: int


def profile_rows(X, *, kind: str = "auto", at_least: int = 0) -> RowProfile:
    """The ``RowProfile`` of the rows ``X``, from one pass over them, chunk by chunk.

    The values are checked as they are read, as ``_data.check_rows`` would: finite (those of
    an out-of-core ``X``; ``validate_data`` has checked an array in memory) and within
    float32's range.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Rows in memory, or out of core (read one chunk at a time). A sparse matrix is read
        from its stored values, and row by row only as far as the distinct rows need.
    kind : str, default="auto"
        The kind of the rows where the caller names it (``"image"`` for images); ``"auto"``:
        detected from them.
    at_least : int, default=0
        Distinct rows are counted until this many are seen; 0: not counted.

    Returns
    -------
    profile : RowProfile

    Raises
    ------
    ValueError
        If a value of ``X`` is NaN, infinite or beyond float32's range.
    """
    if sp.issparse(X):
        return _sparse_profile(X, kind, at_least)
    n_features = X.shape[1]
    check_values = is_out_of_core(X) and X.dtype.kind == "f"
    moments = ColumnMoments(n_features) if kind != "sparse" else None
    distinct = DistinctRows(at_least)
    lowest, highest = np.inf, np.full(n_features, -np.inf)
    for chunk in chunked_rows(X):
        if check_values:
            check_finite(chunk)
        values = np.asarray(chunk, dtype=np.float64)
        chunk_lowest, chunk_highest = float(values.min()), values.max(axis=0)
        # Before float32 rows and moments, which would overflow on values this large.
        check_largest_magnitude(max(-chunk_lowest, float(chunk_highest.max())))
        if distinct.wants_more:
            distinct.add(chunk)
        lowest = min(lowest, chunk_lowest)
        highest = np.maximum(highest, chunk_highest)
        if moments is not None:
            moments.add(values)
    if kind == "auto":
        if n_features < MIN_WIDE_FEATURES:
            kind = "tabular"
        elif lowest >= 0:
            kind = "nonnegative" if _on_a_common_range(highest) else "tabular"
        else:
            kind = "embedding"
    return RowProfile(
        n_features=n_features,
        kind=kind,
        mean=None if moments is None else moments.mean,
        variance=None if moments is None else moments.variance,
        n_distinct=distinct.count,
    )


def _sparse_profile(X, kind: str, at_least: int) -> RowProfile:
    """``profile_rows`` of a sparse matrix: its stored values, and its rows as far as the count
    of distinct rows needs them."""
    nonnegative = True
    if X.data.size:
        lowest, highest = float(X.data.min()), float(X.data.max())
        check_largest_magnitude(max(-lowest, highest))
        nonnegative = lowest >= 0
    if kind == "auto":
        if nonnegative:
            kind = "sparse"
        else:
            kind = "embedding" if X.shape[1] >= MIN_WIDE_FEATURES else "tabular"
    mean = variance = None
    if kind != "sparse":
        mean, variance = mean_variance_axis(X, axis=0)
    distinct = DistinctRows(at_least)
    for chunk in chunked_rows(X, densify=False):
        if not distinct.wants_more:
            break
        distinct.add(chunk)
    return RowProfile(
        n_features=X.shape[1], kind=kind, mean=mean, variance=variance, n_distinct=distinct.count
    )


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


def input_scaling(rows, kind: str, image_shape=None) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(mean, scale, normalize_rows)``: the network sees ``(x / |x| if normalize_rows) -
    mean) / scale``, float32 of shape ``(n_features,)``.

    ``rows`` is the ``RowProfile`` of the rows of kind ``kind``, or the rows themselves
    (profiled here). Images (``image_shape``) are standardised per channel, tabular rows per
    feature unless they are centred coordinates on a common scale, the other kinds with one
    mean and one scale for all features.
    """
    profile = rows if isinstance(rows, RowProfile) else profile_rows(rows, kind=kind)
    n_features = profile.n_features
    if kind == "sparse":
        # Rows of unit norm: their entries' mean square is 1 / n_features; no centring, so
        # that batches stay sparse (a constant shift is the first layer's bias anyway).
        scale = np.full(n_features, np.sqrt(1.0 / n_features), dtype=np.float32)
        return np.zeros(n_features, dtype=np.float32), scale, True
    mean, variance = profile.mean, profile.variance
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
