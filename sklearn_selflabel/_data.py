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

    With a ``neighbors`` table, the training view of sample ``i`` is, with probability
    ``swap_prob``, the row of one of its neighbours drawn at random, while its target stays
    ``i``: the network learns that neighbours share a label (category-level invariance rather
    than invariance to noise alone).
    """

    def __init__(
        self,
        X,
        neighbors: np.ndarray | None = None,
        swap_prob: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.X = X
        self.neighbors = neighbors
        self.swap_prob = swap_prob
        self.rng = rng

    def __len__(self) -> int:
        return self.X.shape[0]

    def _view_indices(self, indices: np.ndarray) -> np.ndarray:
        if self.neighbors is None or self.swap_prob == 0:
            return indices
        n_neighbors = self.neighbors.shape[1]
        picks = self.neighbors[indices, self.rng.integers(n_neighbors, size=len(indices))]
        swap = self.rng.random(len(indices)) < self.swap_prob
        return np.where(swap, picks, indices)

    def __getitem__(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = dense_rows(self.X, index=self._view_indices(indices))
        return torch.from_numpy(rows), torch.from_numpy(indices)


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
