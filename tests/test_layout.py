"""The layout start: fuzzy neighbour graphs, their layout, the consensus mixture, and the start."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from sklearn_selflabel import _layout
from sklearn_selflabel._layout import (
    consensus_mixture,
    fuzzy_neighbour_graph,
    layout_labels,
    neighbour_layout,
)
from sklearn_selflabel.propagation import nearest_neighbors


def test_fuzzy_graph_is_symmetric_and_each_rows_memberships_sum_to_log2_k():
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.normal(size=(60, 3)).astype(np.float32))
    neighbors, distances = nearest_neighbors(points, 6, metric="euclidean", return_distance=True)
    exact = torch.cdist(points, points).gather(1, neighbors)
    torch.testing.assert_close(distances, exact, rtol=1e-4, atol=1e-4)
    graph = fuzzy_neighbour_graph(neighbors, distances)
    assert abs(graph - graph.T).max() < 1e-6
    assert graph.data.min() > 0 and graph.data.max() <= 1.0
    assert graph.diagonal().max() == 0
    # A row's own links carry memberships that sum to log2(k), the nearest at 1; the union
    # keeps or raises each of them.
    rows = np.arange(60)[:, None]
    own = graph.toarray()[rows, neighbors.numpy()]
    np.testing.assert_allclose(own[:, 0], 1.0, atol=1e-6)
    assert np.all(own.sum(axis=1) >= math.log2(6) - 1e-4)
    assert np.any(own.sum(axis=1) > math.log2(6) + 1e-3)  # some rows gain by the union


def test_cosine_distances_are_one_minus_the_similarity():
    rng = np.random.default_rng(1)
    rows = torch.from_numpy(rng.random((40, 8)).astype(np.float32))
    neighbors, distances = nearest_neighbors(rows, 5, metric="cosine", return_distance=True)
    unit = torch.nn.functional.normalize(rows, dim=1)
    exact = 1.0 - (unit @ unit.T).gather(1, neighbors)
    torch.testing.assert_close(distances, exact.clamp_min(0), rtol=1e-4, atol=1e-5)
    indices = nearest_neighbors(rows, 5, metric="cosine")
    torch.testing.assert_close(indices, neighbors)


def _two_cliques(size: int) -> sp.csr_matrix:
    block = np.ones((size, size)) - np.eye(size)
    return sp.csr_matrix(sp.block_diag([block, block]))


def test_layout_separates_groups_that_share_no_link():
    graph = _two_cliques(30)
    layout = neighbour_layout(graph, 2, seed=0)
    assert layout.shape == (60, 2) and layout.dtype == np.float32
    first, second = layout[:30], layout[30:]
    within = max(np.ptp(first, axis=0).max(), np.ptp(second, axis=0).max())
    between = np.linalg.norm(first.mean(axis=0) - second.mean(axis=0))
    assert between > 2 * within
    np.testing.assert_array_equal(layout, neighbour_layout(graph, 2, seed=0))


def test_layout_of_a_graph_with_unlinked_rows_is_finite():
    graph = sp.lil_matrix(_two_cliques(10))
    graph = sp.block_diag([graph, sp.csr_matrix((3, 3))]).tocsr()  # 3 rows without a link
    layout = neighbour_layout(graph, 2, seed=0)
    assert np.isfinite(layout).all()


def test_consensus_mixture_keeps_the_solution_most_others_agree_with(monkeypatch):
    points, truth = make_blobs(300, centers=3, n_features=2, cluster_std=0.3, random_state=0)
    labels = consensus_mixture(points, 3, seed=0)
    assert adjusted_rand_score(truth, labels) == 1.0
    # With most seeds finding one solution and a few another, the majority's is kept.
    good = truth.copy()
    bad = np.where(truth == 2, 1, truth)
    bad[:5] = 2
    solutions = iter([bad, good, good, good, bad, good, good, good, good, good, good, good])

    class Fixed:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self, rows):
            self.labels = next(solutions)
            return self

        def predict(self, rows):
            return self.labels

    monkeypatch.setattr(_layout, "GaussianMixture", Fixed)
    np.testing.assert_array_equal(consensus_mixture(points, 3, seed=0), good)


def test_consensus_mixture_of_a_float32_layout_near_a_subspace():
    # Groups stretched along a plane of an 8-dimensional float32 layout: float32 mixtures fail
    # to factorise their covariances (letter's layout did so).
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 100)
    plane = rng.normal(size=(2, 8))
    layout = rng.uniform(-30, 30, size=(4, 8))[truth] + 10 * rng.normal(size=(400, 2)) @ plane
    labels = consensus_mixture(layout.astype(np.float32), 4, seed=0)
    assert adjusted_rand_score(truth, labels) > 0.9


@pytest.fixture
def nonnegative_blobs():
    X, y = make_blobs(400, centers=4, n_features=20, cluster_std=2.0, random_state=0)
    return np.abs(X).astype(np.float32), y


def _start(X, seed, **kwargs):
    mean, scale = float(X.mean()), float(X.std())
    return layout_labels(
        X,
        4,
        seed,
        standardise=lambda rows: (rows - mean) / scale,
        metric="cosine",
        device=torch.device("cpu"),
        **kwargs,
    )


def test_layout_start_finds_the_groups_and_is_reproducible(nonnegative_blobs, monkeypatch):
    X, y = nonnegative_blobs
    monkeypatch.setattr(_layout, "_AUTOENCODER_STEPS", 200)
    labels = _start(X, 0)
    assert labels.shape == (400,) and labels.dtype == np.int64
    assert adjusted_rand_score(y, labels) > 0.95
    np.testing.assert_array_equal(labels, _start(X, 0))


def test_autoencoder_takes_at_most_its_passes_over_small_data(nonnegative_blobs, monkeypatch):
    X, _ = nonnegative_blobs
    steps = []
    original = torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    monkeypatch.setattr(_layout, "_AUTOENCODER_PASSES", 3)
    codes = _layout.autoencoder_codes(
        X,
        10,
        standardise=lambda rows: rows,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
    )
    assert codes.shape == (400, 10)
    assert len(steps) == 3 * 2  # 400 rows are two batches of 256
