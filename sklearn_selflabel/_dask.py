"""Lazy, block-wise inference on ``dask.array`` inputs.

``predict``, ``predict_proba`` and ``transform`` of a ``dask.array.Array`` return a dask array
whose blocks are the estimator's outputs on the matching row blocks of the input, so scoring
data larger than one machine runs on a Dask cluster and nothing is computed until asked for.
dask is imported only when such an input arrives.
"""

from __future__ import annotations

import sys
import uuid

import numpy as np

from ._data import check_row_layout


def is_dask_array(X) -> bool:
    """Whether ``X`` is a ``dask.array.Array`` (without importing dask when it is not loaded)."""
    dask_array = sys.modules.get("dask.array")
    return dask_array is not None and isinstance(X, dask_array.Array)


def map_row_blocks(estimator, method: str, X, *, dtype, n_columns: int | None):
    """``getattr(estimator, method)`` applied lazily to each row block of the dask array ``X``.

    Parameters
    ----------
    estimator : fitted estimator
        Shipped once in the task graph, shared by all blocks.
    method : str
        Name of the numpy-in, numpy-out method to apply.
    X : dask.array.Array of shape (n_samples, n_features_in_)
        Rechunked to whole rows if its columns are split.
    dtype : numpy dtype
        Output dtype.
    n_columns : int or None
        Output columns; ``None`` for a 1-D output with one value per row.

    Returns
    -------
    dask.array.Array of shape (n_samples,) or (n_samples, n_columns)
    """
    import dask

    check_row_layout(X, ensure_min_samples=None, n_features=estimator.n_features_in_)
    rows = X.rechunk({1: -1})
    # A delayed estimator is one key of the graph rather than a copy embedded in every task;
    # the unique name spares dask from hashing the network's weights.
    shared = dask.delayed(estimator, pure=True, name=f"{method}-estimator-{uuid.uuid4().hex}")
    name = f"{method}-{uuid.uuid4().hex}"
    if n_columns is None:
        return rows.map_blocks(
            _apply, shared, method, drop_axis=1, dtype=dtype, meta=np.empty((0,), dtype), name=name
        )
    return rows.map_blocks(
        _apply,
        shared,
        method,
        chunks=(rows.chunks[0], (n_columns,)),
        dtype=dtype,
        meta=np.empty((0, 0), dtype),
        name=name,
    )


def _apply(block: np.ndarray, estimator, method: str) -> np.ndarray:
    return getattr(estimator, method)(block)
