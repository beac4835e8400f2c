"""The layout start: fuzzy neighbour graphs, their layout, the merged mixture, and the start."""

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
    fuzzy_neighbor_graph,
    input_neighbor_graph,
    layout_labels,
    merged_by_links,
    merged_mixture,
    neighbor_layout,
)
from sklearn_selflabel.propagation import nearest_neighbors


def test_fuzzy_graph_is_symmetric_and_each_rows_memberships_sum_to_log2_k():
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.normal(size=(60, 3)).astype(np.float32))
    neighbors, distances = nearest_neighbors(points, 6, metric="euclidean", return_distance=True)
    exact = torch.cdist(points, points).gather(1, neighbors)
    torch.testing.assert_close(distances, exact, rtol=1e-4, atol=1e-4)
    graph = fuzzy_neighbor_graph(neighbors, distances)
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
    layout = neighbor_layout(graph, 2, seed=0)
    assert layout.shape == (60, 2) and layout.dtype == np.float32
    first, second = layout[:30], layout[30:]
    within = max(np.ptp(first, axis=0).max(), np.ptp(second, axis=0).max())
    between = np.linalg.norm(first.mean(axis=0) - second.mean(axis=0))
    assert between > 2 * within
    np.testing.assert_array_equal(layout, neighbor_layout(graph, 2, seed=0))


def test_layout_of_a_graph_with_unlinked_rows_is_finite():
    graph = sp.lil_matrix(_two_cliques(10))
    graph = sp.block_diag([graph, sp.csr_matrix((3, 3))]).tocsr()  # 3 rows without a link
    layout = neighbor_layout(graph, 2, seed=0)
    assert np.isfinite(layout).all()


def _chain_of_cliques(sizes: list[int], bridges: dict[tuple[int, int], int]) -> sp.csr_matrix:
    """Cliques of the given sizes, with ``bridges[(i, j)]`` links between cliques i and j."""
    starts = np.cumsum([0, *sizes])
    graph = sp.lil_matrix((starts[-1], starts[-1]))
    for i, size in enumerate(sizes):
        block = slice(starts[i], starts[i + 1])
        graph[block, block] = np.ones((size, size)) - np.eye(size)
    for (i, j), n_links in bridges.items():
        pairs = np.stack(np.meshgrid(np.arange(sizes[i]), np.arange(sizes[j]))).reshape(2, -1)
        for a, b in pairs[:, :: pairs.shape[1] // n_links][:, :n_links].T:
            graph[starts[i] + a, starts[j] + b] = graph[starts[j] + b, starts[i] + a] = 1.0
    return graph.tocsr()


def test_merging_by_link_share_joins_the_halves_of_a_category_whatever_the_sizes():
    # A large category cut into two halves (parts 0 and 1, a fifth of whose links join the
    # other) and two small categories (parts 2 and 3) with a few links to the rest: the
    # halves merge, and the small categories stay clusters of their own.
    graph = _chain_of_cliques([40, 40, 8, 6], {(0, 1): 400, (1, 2): 2, (0, 3): 1})
    parts = np.repeat([0, 1, 2, 3], [40, 40, 8, 6])
    positions = np.zeros((94, 2))
    labels = merged_by_links(parts, graph, 3, positions)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.repeat([0, 0, 1, 2], [40, 40, 8, 6]))
    # A fragment below the minimum size joins the group it shares most links with, before
    # any other merge: the two halves then stay apart.
    labels = merged_by_links(parts, graph, 3, positions, min_size=7)
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2, 0], [40, 40, 8, 6]))


def test_groups_without_links_merge_by_the_nearest_centroids():
    graph = sp.csr_matrix((30, 30))
    parts = np.repeat([0, 1, 2], 10)
    positions = np.repeat([[0.0], [1.0], [10.0]], 10, axis=0)
    labels = merged_by_links(parts, graph, 2, positions)
    np.testing.assert_array_equal(labels, np.repeat([0, 0, 1], 10))


def test_merged_mixture_finds_unequal_groups_of_a_layout():
    # Groups of 400, 60 and 40 points: a mixture of three components tends to split the
    # large one; the merged mixture keeps every group whole.
    points, truth = make_blobs(
        [400, 60, 40],
        centers=[[0, 0], [12, 0], [0, 12]],
        cluster_std=[2.0, 0.5, 0.5],
        random_state=0,
    )
    neighbors, distances = nearest_neighbors(
        torch.from_numpy(points).float(), 15, metric="euclidean", return_distance=True
    )
    graph = fuzzy_neighbor_graph(neighbors, distances)
    labels = merged_mixture(points.astype(np.float32), graph, 3, 20, seed=0)
    assert adjusted_rand_score(truth, labels) == 1.0
    np.testing.assert_array_equal(labels, merged_mixture(points, graph, 3, 20, seed=0))


def test_consensus_mixture_keeps_the_mixture_that_agrees_with_the_others():
    points, truth = make_blobs(
        [100, 100, 100, 100], centers=[[0, 0], [10, 0], [0, 10], [10, 10]], random_state=0
    )
    labels = consensus_mixture(points.astype(np.float32), 4, seed=0)
    assert labels.dtype == np.int64
    assert adjusted_rand_score(truth, labels) == 1.0
    np.testing.assert_array_equal(labels, consensus_mixture(points, 4, seed=0))


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
        standardize=lambda rows: (rows - mean) / scale,
        input_graph=input_neighbor_graph(X, "cosine", torch.device("cpu")),
        min_cluster_size=20,
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
    codes = _layout.autoencoder_codes(
        X,
        10,
        standardize=lambda rows: rows,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        max_passes=3,
    )
    assert codes.shape == (400, 10)
    assert len(steps) == 3 * 2  # 400 rows are two batches of 256
