"""Row access for dense and sparse inputs: index batches for training, row batches for inference.

Sparse matrices are densified one batch at a time, never whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset


def dense_rows(X, start: int | None = None, stop: int | None = None, index=None) -> np.ndarray:
    """Rows of ``X`` (a slice or an index array) as a dense C-contiguous float32 array."""
    rows = X[index] if index is not None else X[start:stop]
    if sp.issparse(rows):
        rows = rows.toarray()
    return np.ascontiguousarray(rows, dtype=np.float32)


def iter_row_batches(X, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive dense float32 row batches of ``X``; bounded memory for any input size."""
    for start in range(0, X.shape[0], batch_size):
        yield dense_rows(X, start, start + batch_size)


class IndexedRows(Dataset):
    """A dataset whose items are whole batches: ``dataset[indices] -> (rows, indices)``.

    The target of every row is its own index, so that the loss can look up the row's current
    self-labels (which change at every label step) instead of fixed targets.
    """

    def __init__(self, X) -> None:
        self.X = X

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(dense_rows(self.X, index=indices)), torch.from_numpy(indices)


class ShuffledBatches:
    """Index batches of a fresh permutation per epoch, drawn from a seeded numpy Generator.

    A trailing batch of a single row is merged into the previous one, since batch normalisation
    cannot train on one row.
    """

    def __init__(self, n_samples: int, batch_size: int, rng: np.random.Generator) -> None:
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.rng = rng

    def _bounds(self) -> list[int]:
        bounds = list(range(0, self.n_samples, self.batch_size)) + [self.n_samples]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
            del bounds[-2]
        return bounds

    def __len__(self) -> int:
        return len(self._bounds()) - 1

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self.rng.permutation(self.n_samples)
        bounds = self._bounds()
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            yield np.sort(order[start:stop])


def shuffled_batch_loader(
    dataset: IndexedRows, *, batch_size: int, rng: np.random.Generator
) -> DataLoader:
    """``iterator_train`` for skorch: one ``dataset[indices]`` call per mini-batch."""
    sampler = ShuffledBatches(len(dataset), batch_size, rng)
    return DataLoader(dataset, sampler=sampler, batch_size=None)
