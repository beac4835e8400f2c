"""Row access for dense and sparse inputs: index batches for training, row batches for inference.

Sparse matrices are densified one batch at a time, never whole. Out-of-core inputs (a
``numpy.memmap``, or an array-like such as ``h5py.Dataset`` or ``dask.array.Array`` that is
indexed by rows) are read one batch at a time too, never loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.validation import validate_data
from torch.utils.data import BatchSampler, DataLoader, Dataset

# Rows per chunk of the passes that check or summarise a whole out-of-core input: about 8 MB of
# float64 for 128 features, small next to the data and large enough to amortise each read.
_CHUNK_ROWS = 8192
_INPUT_DTYPES = [np.float32, np.float64]
# The network computes in float32 and first subtracts each feature's mean: magnitudes up to
# half of float32's largest value keep that difference finite.
_LARGEST_INPUT = float(np.finfo(np.float32).max) / 2


def check_rows(
    estimator, X, *, reset: bool, ensure_min_samples: int = 1, check_values: bool = True
):
    """The estimator's input checks, in one place: ``validate_data`` (out-of-core inputs chunk
    by chunk), and what the network needs besides: numbers only, within float32's range.

    ``check_values=False`` leaves the values unread: those of an out-of-core ``X`` unchecked,
    and any ``X``'s range, for a caller that profiles the rows next
    (``_geometry.profile_rows``), which checks them as it reads them.

    Raises
    ------
    ValueError
        On anything the estimator cannot use, with a message that names the problem.
    """
    if hasattr(X, "columns") and hasattr(X, "dtypes"):
        _check_frame_columns(X)
    if is_out_of_core(X):
        check_row_layout(X, ensure_min_samples=ensure_min_samples)
        if check_values:
            _check_out_of_core_values(X)
        validate_data(estimator, X, skip_check_array=True, reset=reset)
        return X
    try:
        X = validate_data(
            estimator,
            X,
            accept_sparse="csr",
            dtype=_INPUT_DTYPES,
            reset=reset,
            ensure_min_samples=ensure_min_samples,
        )
    except ValueError as exc:
        if "could not convert string to float" in str(exc):
            raise ValueError(
                f"X holds text ({exc}); the estimator needs numbers: encode text and "
                "categories first, e.g. with TfidfVectorizer or OneHotEncoder in a Pipeline."
            ) from None
        raise
    if check_values:
        _check_magnitude(X.data if sp.issparse(X) else X)
    return X


def _check_frame_columns(frame) -> None:
    """Refuse data-frame columns that are not numbers, by name (categories, text, dates)."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    bad = {
        str(name): str(dtype)
        for name, dtype in frame.dtypes.items()
        if not (is_numeric_dtype(dtype) or is_bool_dtype(dtype)) or str(dtype) == "category"
    }
    if bad:
        described = ", ".join(f"{name!r} ({dtype})" for name, dtype in list(bad.items())[:5])
        raise ValueError(
            f"X has columns that are not numbers: {described}"
            + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            + ". Encode them first, e.g. with OneHotEncoder (categories) or OrdinalEncoder in "
            "a ColumnTransformer, or drop them."
        )


def _check_magnitude(values: np.ndarray) -> None:
    if values.dtype.kind != "f" or values.size == 0:
        return
    flat = values.reshape(len(values), -1) if values.ndim > 1 else values.reshape(-1, 1)
    check_largest_magnitude(max(float(np.abs(part).max()) for part in chunked_rows(flat)))


def check_largest_magnitude(largest: float) -> None:
    """Refuse rows whose largest magnitude, ``largest``, is beyond what the network computes.

    Raises
    ------
    ValueError
        If ``largest`` exceeds half of float32's largest value.
    """
    if largest > _LARGEST_INPUT:
        raise ValueError(
            f"X holds values of magnitude {largest:.3g}, beyond what the network computes "
            f"with (float32, up to {_LARGEST_INPUT:.2g} here); rescale X, e.g. with "
            "StandardScaler or a log transform."
        )


def chunked_rows(X, *, densify: bool = True) -> Iterator:
    """``X`` in consecutive chunks of rows, each a dense array (a sparse matrix's chunks stay
    sparse unless ``densify``): bounded memory for any input."""
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        chunk = X[start : start + _CHUNK_ROWS]
        if sp.issparse(chunk):
            yield chunk.toarray() if densify else chunk
        else:
            yield np.asarray(chunk)


class DistinctRows:
    """A count of distinct rows as the network sees them (float32), chunk by chunk, that needs
    no more chunks once ``at_least`` distinct rows are seen.

    That is the first chunk for almost any data; only degenerate data are read whole. The
    count is exact while it is below ``at_least``.
    """

    def __init__(self, at_least: int) -> None:
        self.at_least = at_least
        self._seen: set[bytes] = set()

    @property
    def count(self) -> int:
        """The distinct rows seen so far."""
        return len(self._seen)

    @property
    def wants_more(self) -> bool:
        """Whether fewer than ``at_least`` distinct rows are seen yet."""
        return len(self._seen) < self.at_least

    def add(self, chunk) -> None:
        """Count the rows of ``chunk``: a dense array, or a sparse matrix (read row by row from
        its CSR arrays, since a dense chunk could be huge)."""
        if sp.issparse(chunk):
            chunk = sp.csr_matrix(chunk, dtype=np.float32, copy=True)
            chunk.sum_duplicates()  # canonical: sorted indices, no index twice
            chunk.eliminate_zeros()
            for lo, hi in zip(chunk.indptr[:-1], chunk.indptr[1:], strict=True):
                self._seen.add(chunk.indices[lo:hi].tobytes() + chunk.data[lo:hi].tobytes())
            return
        rows = np.ascontiguousarray(chunk, dtype=np.float32) + np.float32(0.0)  # -0.0 is 0.0
        as_bytes = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))
        self._seen.update(np.unique(as_bytes.ravel()).tolist())


def dense_rows(X, start: int | None = None, stop: int | None = None, index=None) -> np.ndarray:
    """Rows of ``X`` (a slice or an index array) as a dense C-contiguous float32 array."""
    rows = X[index] if index is not None else X[start:stop]
    if sp.issparse(rows):
        rows = rows.toarray()
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    # torch wants writable memory: a slice of a read-only memmap is copied (one batch).
    return rows if rows.flags.writeable else rows.copy()


def iter_row_batches(X, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive dense float32 row batches of ``X``; bounded memory for any input size."""
    for start in range(0, X.shape[0], batch_size):
        yield dense_rows(X, start, start + batch_size)


def row_tensor(X, start=None, stop=None, index=None, *, sparse: bool = False) -> torch.Tensor:
    """Rows of ``X`` (a slice or an index array) as a float32 tensor: sparse (COO) when
    ``sparse`` and ``X`` is a sparse matrix, else dense."""
    if sparse and sp.issparse(X):
        rows = sp.csr_matrix(X[index] if index is not None else X[start:stop], dtype=np.float32)
        # Canonical (sorted columns, no index twice): a no-op on rows of canonical CSR, whose
        # COO form is then sorted by (row, column) as the tensor claims.
        rows.sum_duplicates()
        rows = rows.tocoo()
        indices = torch.from_numpy(np.vstack([rows.row, rows.col]).astype(np.int64))
        return torch.sparse_coo_tensor(
            indices,
            torch.from_numpy(rows.data),
            rows.shape,
            is_coalesced=True,
            check_invariants=False,
        )
    return torch.from_numpy(dense_rows(X, start, stop, index))


def iter_tensor_batches(X, batch_size: int, *, sparse: bool = False) -> Iterator[torch.Tensor]:
    """Consecutive row batches of ``X`` as ``row_tensor`` gives them."""
    for start in range(0, X.shape[0], batch_size):
        yield row_tensor(X, start, start + batch_size, sparse=sparse)


def holds_rows(table: torch.Tensor | None, n_rows: int, axis: int) -> bool:
    """Whether ``table`` exists and has ``n_rows`` along ``axis``: state of these rows' fit."""
    return table is not None and table.shape[axis] == n_rows


def is_out_of_core(X) -> bool:
    """Whether ``X`` should be read by rows rather than converted to an in-memory array.

    True for a ``numpy.memmap`` and for array-likes that are not numpy arrays but expose a
    numpy ``dtype``, a 2-D ``shape`` and row indexing (``h5py.Dataset``, ``zarr.Array``,
    ``dask.array.Array``, ...). Sparse matrices, lists, data frames and torch tensors are not.
    """
    if isinstance(X, np.memmap):
        return True
    if isinstance(X, np.ndarray) or sp.issparse(X) or hasattr(X, "columns"):
        return False
    return (
        isinstance(getattr(X, "dtype", None), np.dtype)
        and len(getattr(X, "shape", ())) == 2
        and hasattr(X, "__getitem__")
    )


def check_row_layout(X, *, ensure_min_samples: int | None = 1, n_features: int | None = None):
    """Check the shape and dtype of an array read by rows, as ``check_array`` would, unread.

    ``ensure_min_samples=None`` accepts an unknown number of rows (a lazy dask array's);
    ``n_features`` is the number of columns a fitted estimator expects.

    Raises
    ------
    ValueError
        If the array is not 2-D, its shape is unknown or too small, it has other than
        ``n_features`` columns, or its dtype is not real numeric.
    """
    if len(X.shape) != 2:
        raise ValueError(f"Expected a 2-D array, got {len(X.shape)} dimension(s).")
    n_samples, n_columns = X.shape
    if not isinstance(n_columns, (int, np.integer)) or (
        ensure_min_samples is not None and not isinstance(n_samples, (int, np.integer))
    ):
        raise ValueError(f"X must have a known shape, got {X.shape}; compute chunk sizes first.")
    if ensure_min_samples is not None and n_samples < ensure_min_samples:
        raise ValueError(
            f"Found array with {n_samples} sample(s) (shape={X.shape}) while a minimum of "
            f"{ensure_min_samples} is required."
        )
    if n_columns < 1:
        raise ValueError(f"Found array with 0 feature(s) (shape={X.shape}).")
    if n_features is not None and n_columns != n_features:
        raise ValueError(
            f"X has {n_columns} features, but the estimator is expecting {n_features} features "
            "as input."
        )
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must hold real numbers, got dtype {X.dtype}.")


def _check_out_of_core_values(X) -> None:
    """Check the values of an out-of-core ``X`` as ``check_array`` would, one chunk at a time.

    Raises
    ------
    ValueError
        If a value is NaN, infinite or beyond float32's range.
    """
    if X.dtype.kind == "f":
        for chunk in chunked_rows(X):
            check_finite(chunk)
            _check_magnitude(chunk.astype(np.float64, copy=False))


def check_finite(chunk: np.ndarray) -> None:
    """Refuse a chunk of rows that holds NaN or an infinity, as ``check_array`` would.

    Raises
    ------
    ValueError
        If a value of ``chunk`` is NaN or infinite.
    """
    if not np.isfinite(chunk).all():
        raise ValueError("Input X contains NaN or infinity.")


class ColumnMoments:
    """Per-column mean and variance in float64, merged one dense chunk of rows at a time.

    Chunks are merged with Chan et al.'s pairwise update, which is as accurate as a two-pass
    computation and needs no full-size temporary (``X.var`` makes one of ``X``'s size).
    """

    def __init__(self, n_features: int) -> None:
        self.n_seen = 0
        self.mean = np.zeros(n_features)
        self.sum_sq = np.zeros(n_features)

    def add(self, chunk: np.ndarray) -> None:
        """Merge the rows of ``chunk``, a float64 array, into the moments."""
        n_chunk = chunk.shape[0]
        chunk_mean = chunk.mean(axis=0)
        chunk_sum_sq = ((chunk - chunk_mean) ** 2).sum(axis=0)
        delta = chunk_mean - self.mean
        n_total = self.n_seen + n_chunk
        self.mean = self.mean + delta * (n_chunk / n_total)
        self.sum_sq = self.sum_sq + chunk_sum_sq + delta**2 * (self.n_seen * n_chunk / n_total)
        self.n_seen = n_total

    @property
    def variance(self) -> np.ndarray:
        """The (population) variance of the rows merged so far."""
        return self.sum_sq / self.n_seen


def feature_mean_and_scale(
    mean: np.ndarray, var: np.ndarray, image_shape=None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (1 where constant), float32, from the columns'
    ``mean`` and ``var``.

    For images the statistics are per channel, spread over that channel's pixels, so that a
    shifted image is standardised like the original.
    """
    if image_shape is not None:
        channel_mean = mean.reshape(image_shape[0], -1).mean(axis=1, keepdims=True)
        # total variance of the channel = mean within-pixel variance + variance of pixel means
        channel_var = var.reshape(image_shape[0], -1) + mean.reshape(image_shape[0], -1) ** 2
        channel_var = channel_var.mean(axis=1, keepdims=True) - channel_mean**2
        pixels = np.ones((1, int(np.prod(image_shape[1:]))))
        mean, var = (channel_mean * pixels).ravel(), (channel_var * pixels).ravel()
    scale = np.sqrt(var)
    scale[scale < 1e-12 * np.maximum(np.abs(mean), 1.0)] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


class IndexedRows(Dataset):
    """A dataset whose items are whole batches: ``dataset[indices] -> (rows, indices)``.

    The target of every row is its own index, so that the loss can look up the row's current
    self-labels (which change at every label step) instead of fixed targets. With ``sparse``,
    the rows of a sparse ``X`` come as sparse (COO) tensors.
    """

    def __init__(self, X, sparse: bool = False) -> None:
        self.X = X
        self.sparse = sparse

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        indices = np.asarray(indices)
        rows = row_tensor(self.X, index=indices, sparse=self.sparse)
        return rows, torch.from_numpy(indices)


class ShuffledBatches(BatchSampler):
    """Index batches of a fresh permutation per epoch, drawn from a seeded numpy Generator.

    A trailing batch of a single row is merged into the previous one, since batch normalisation
    cannot train on one row. Each batch's indices are sorted, so that out-of-core inputs are
    read in file order. Being a ``BatchSampler``, it is split by whole batches among processes
    when Hugging Face accelerate prepares the loader for data-parallel training.
    """

    def __init__(self, n_samples: int, batch_size: int, rng: np.random.Generator) -> None:
        # BatchSampler's own __init__ wants a row sampler; batches are drawn here instead.
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.drop_last = False
        self.rng = rng

    def _bounds(self) -> list[int]:
        bounds = list(range(0, self.n_samples, self.batch_size)) + [self.n_samples]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
            del bounds[-2]
        return bounds

    def __len__(self) -> int:
        return len(self._bounds()) - 1

    def __iter__(self) -> Iterator[list[int]]:
        order = self.rng.permutation(self.n_samples)
        bounds = self._bounds()
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            # A list, as from any BatchSampler: accelerate's batch sharding relies on it.
            yield np.sort(order[start:stop]).tolist()


def shuffled_batch_loader(
    dataset: IndexedRows, *, batch_size: int, rng: np.random.Generator
) -> DataLoader:
    """``iterator_train`` for skorch: one ``dataset[indices]`` call per mini-batch."""
    sampler = ShuffledBatches(len(dataset), batch_size, rng)
    return DataLoader(dataset, sampler=sampler, batch_size=None)
