"""Invariance propagation: exact neighbours, hop reachability, hard positives, the training term."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from sklearn_selflabel.propagation import (
    InvariancePropagation,
    _merge_densest_links,
    _merged_with_a_floor,
    hardest_positives,
    nearest_neighbors,
    neighbor_link_partition,
    propagate,
)


@pytest.mark.parametrize("chunk_size", [7, 2048])
def test_nearest_neighbors_are_exact_cosine_neighbors_without_self(chunk_size):
    X = torch.from_numpy(np.random.default_rng(0).normal(size=(100, 5)).astype(np.float32))
    found = nearest_neighbors(X, 4, chunk_size=chunk_size).numpy()
    ref = NearestNeighbors(n_neighbors=5, metric="cosine").fit(X.numpy())
    expected = ref.kneighbors(X.numpy(), return_distance=False)[:, 1:]
    np.testing.assert_array_equal(found, expected)
    assert not (found == np.arange(100)[:, None]).any()


def test_nearest_neighbors_caps_k_at_the_other_rows():
    assert nearest_neighbors(torch.eye(3), 10).shape == (3, 2)


def test_propagation_follows_links_for_the_given_number_of_hops():
    # A directed ring 0 -> 1 -> ... -> 9 -> 0 with one link per row.
    ring = (np.arange(10)[:, None] + 1) % 10
    for hops in (1, 3):
        reachable = propagate(ring, hops).toarray()
        expected = np.zeros((10, 10), dtype=bool)
        for step in range(1, hops + 1):
            expected[np.arange(10), (np.arange(10) + step) % 10] = True
        np.testing.assert_array_equal(reachable, expected)
    # Going round the whole ring comes back to the row itself, which is never its own positive.
    assert not propagate(ring, 10).diagonal().any()


def test_hardest_positives_are_the_least_similar_reachable_points():
    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.normal(size=(60, 3)).astype(np.float32))
    neighbors = nearest_neighbors(X, 3)
    positives = hardest_positives(X, neighbors, n_hops=2, n_positives=2).numpy()
    reachable = propagate(neighbors.numpy(), 2)
    unit = F.normalize(X, dim=1).numpy()
    for i in range(60):
        candidates = reachable[i].indices
        similarity = unit[candidates] @ unit[i]
        np.testing.assert_array_equal(positives[i], candidates[np.argsort(similarity)[:2]])


def test_rows_with_few_reachable_points_repeat_them():
    # Two rows, each the other's only neighbour: one reachable point for four slots.
    X = torch.tensor([[1.0, 0.0], [0.9, 0.1]])
    positives = hardest_positives(X, nearest_neighbors(X, 1), n_hops=3, n_positives=4)
    np.testing.assert_array_equal(positives.numpy(), [[1, 1, 1, 1], [0, 0, 0, 0]])


def make_term(bank, positives, **kw):
    settings = dict(label_weight=0.0, contrast_weight=1.0, temperature=0.1, momentum=0.5)
    generator = torch.Generator().manual_seed(0)
    return InvariancePropagation(
        bank, positives, generator=generator, n_negatives=16, **{**settings, **kw}
    )


def test_contrast_is_low_when_a_sample_matches_its_positives_and_bank_moves_towards_it():
    rng = np.random.default_rng(2)
    bank = torch.from_numpy(rng.normal(size=(32, 8)).astype(np.float32))
    positives = torch.from_numpy((np.arange(32)[:, None] + np.array([1, 2])) % 32)
    indices = torch.arange(4)
    logits = torch.zeros(1, 4, 3)
    labels = torch.zeros(1, 32, dtype=torch.int64)
    term = make_term(bank.clone(), positives)
    aligned = term.bank[positives[indices]].mean(dim=1) + term.bank[indices]
    random = torch.from_numpy(rng.normal(size=(4, 8)).astype(np.float32))
    low = float(term.training_term(aligned, logits, indices, labels))
    high = float(make_term(bank.clone(), positives).training_term(random, logits, indices, labels))
    assert low < high
    # Only the batch's rows move, and they stay unit vectors; also without the contrast.
    for weight in (1.0, 0.0):
        term = make_term(bank.clone(), positives, contrast_weight=weight)
        before = term.bank.clone()
        term.training_term(random, logits, indices, labels)
        np.testing.assert_array_equal(term.bank[4:].numpy(), before[4:].numpy())
        assert not torch.allclose(term.bank[:4], before[:4])
        np.testing.assert_allclose(term.bank.norm(dim=1).numpy(), 1.0, rtol=1e-5)


def test_label_term_pulls_a_sample_towards_its_positives_labels():
    bank = torch.eye(4)
    positives = torch.tensor([[1], [0], [3], [2]])
    labels = torch.tensor([[0, 0, 1, 1]])  # one head
    indices = torch.tensor([0, 2])
    agree = torch.tensor([[[5.0, -5.0], [-5.0, 5.0]]])  # (heads, batch, clusters)
    term = make_term(bank, positives, label_weight=1.0, contrast_weight=0.0)
    low = float(term.training_term(bank[indices], agree, indices, labels))
    high = float(term.training_term(bank[indices], -agree, indices, labels))
    assert low < 0.01 < 5 < high


def _on_sphere(points: np.ndarray) -> torch.Tensor:
    # Centred 2-D points lifted to height 5: normalising them (as a cosine embedding is)
    # bends the plane onto a cap of the sphere but keeps who neighbours whom.
    centered = points - points.mean(axis=0)
    return torch.from_numpy(np.hstack([centered, np.full((len(points), 1), 5.0)])).float()


def test_link_partition_follows_the_neighbor_graph_where_kmeans_cuts_across_it():
    points, moon = make_moons(n_samples=400, noise=0.05, random_state=0)
    features = _on_sphere(points)
    labels = neighbor_link_partition(features, 2, random_state=0)
    assert labels.dtype == np.int64 and labels.shape == (400,)
    assert adjusted_rand_score(moon, labels) == 1.0
    kmeans = KMeans(2, n_init=3, random_state=0).fit_predict(F.normalize(features).numpy())
    assert adjusted_rand_score(moon, kmeans) < 0.5
    # On evenly spaced rows only, every row still gets its moon (its nearest KMeans part).
    subsampled = neighbor_link_partition(features, 2, max_rows=150, random_state=0)
    assert adjusted_rand_score(moon, subsampled) > 0.95


def test_link_partition_keeps_unequal_blobs_whole():
    # Blobs of 40, 80, 120 and 400 rows: an equal split would cut the large one in pieces.
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), [40, 80, 120, 400])
    features = torch.from_numpy(np.eye(4, 8)[truth] * 10 + rng.normal(size=(640, 8))).float()
    labels = neighbor_link_partition(features, 4, random_state=0)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert sorted(np.bincount(labels)) == [40, 80, 120, 400]
    # As many parts as rows (each row its own part) is still a valid start.
    few = features[::80]
    np.testing.assert_array_equal(
        np.sort(np.bincount(neighbor_link_partition(few, 4))), [1, 1, 1, 5]
    )


def test_link_partition_joins_a_small_island_to_the_nearest_part_instead_of_keeping_it():
    # Two blobs of 200 rows that touch, and 15 near-identical rows that few links join to
    # them: average linkage alone would keep the 15 rows as a cluster and merge the blobs.
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 200)
    blobs = np.eye(2, 8)[truth] * 2.5 + rng.normal(size=(400, 8))
    island = np.eye(1, 8, 2) * 12 + np.eye(1, 8, 0) * 6 + 0.01 * rng.normal(size=(15, 8))
    features = torch.from_numpy(np.vstack([blobs, island])).float()
    labels = neighbor_link_partition(features, 2, random_state=0)
    assert np.bincount(labels).min() > 150
    assert adjusted_rand_score(truth, labels[:400]) > 0.7
    assert len(np.unique(labels[400:])) == 1
    kept = neighbor_link_partition(features, 2, min_share=0.0, random_state=0)
    assert np.bincount(kept).min() < 30  # the island and a few outlying rows


def test_a_small_group_without_links_joins_the_group_with_the_most_similar_center():
    # Parts 0 and 1 link to each other, part 2 to neither; part 3 links to part 2 only.
    links = np.zeros((4, 4))
    links[0, 1] = links[1, 0] = 5.0
    links[2, 3] = links[3, 2] = 5.0
    sizes = np.array([50, 50, 5, 5])
    centers = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 1.0]])
    merged = _merged_with_a_floor(links, sizes, centers, n_clusters=2, min_size=20)
    # Average linkage ends with {0, 1} and {2, 3} (10 rows). No link joins {2, 3} to {0, 1}, so
    # it joins by centre; merging again from there keeps parts 0 and 1 apart.
    assert len(np.unique(merged)) == 2
    assert merged[2] == merged[3]
    assert merged[0] != merged[1]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no 0 / 0 densities of empty parts
def test_link_partition_of_duplicate_rows_has_no_empty_parts():
    # Three distinct points, 30 rows: KMeans finds 3 parts of the 20 asked for.
    features = torch.eye(3, 4).repeat(10, 1)
    with pytest.warns(ConvergenceWarning):
        labels = neighbor_link_partition(features, 2, random_state=0)
    assert sorted(np.bincount(labels)) == [10, 20]
    with pytest.warns(ConvergenceWarning):
        collapsed = neighbor_link_partition(torch.ones(30, 4), 3, random_state=0)
    np.testing.assert_array_equal(collapsed, 0)


@pytest.mark.parametrize("seed", range(5))
def test_merging_takes_the_densest_link_at_every_step(seed):
    # Against a plain search of all pairs of groups after every merge, on random links.
    rng = np.random.default_rng(seed)
    n_parts, n_clusters = 40, 3
    links = rng.poisson(2.0, size=(n_parts, n_parts)).astype(float)
    links = links + links.T
    sizes = rng.integers(5, 50, size=n_parts)
    members = np.eye(n_parts)  # groups x parts
    while len(members) > n_clusters:
        density = (members @ links @ members.T) / np.outer(members @ sizes, members @ sizes)
        np.fill_diagonal(density, -np.inf)
        a, b = np.unravel_index(density.argmax(), density.shape)
        members[a] += members[b]
        members = np.delete(members, b, axis=0)
    merged_into = _merge_densest_links(links, sizes, n_clusters)
    found = {frozenset(np.flatnonzero(merged_into == value)) for value in set(merged_into)}
    assert found == {frozenset(np.flatnonzero(group)) for group in members}
