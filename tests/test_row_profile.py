"""The profile of a fit's rows: one pass over them gives their kind, column statistics and
distinct rows, as the separate passes that it replaces gave them."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import make_blobs
from sklearn.utils.sparsefuncs import mean_variance_axis

from sklearn_selflabel import SelfLabelingClusterer, _data, _geometry, _offline, _settings
from sklearn_selflabel._cluster_count import (
    ClusterCount,
    density_count,
    largest_estimate,
    max_clusters_for,
)
from sklearn_selflabel._geometry import RowProfile, input_scaling, profile_rows

CHUNK_ROWS = 64


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    # Rows of a few hundred span several chunks, so that merging chunks is tested.
    monkeypatch.setattr(_data, "_CHUNK_ROWS", CHUNK_ROWS)


class CountingReader:
    """An out-of-core array-like that counts the rows read from it; never converted whole."""

    def __init__(self, X: np.ndarray) -> None:
        self.data = X
        self.shape = X.shape
        self.dtype = X.dtype
        self.rows_read = 0
        self.largest_read = 0

    def __getitem__(self, key):
        rows = self.data[key]
        self.rows_read += len(rows)
        self.largest_read = max(self.largest_read, len(rows))
        return rows

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was loaded")


class TrainingStarts(Exception):
    """Raised where training would start: what was read before it is the preparation."""


def stop_at_training(*args, **kwargs):
    raise TrainingStarts


def chunked_moments(X) -> tuple[np.ndarray, np.ndarray]:
    """Column means and variances as the estimator has always computed them: float64 chunks
    of ``CHUNK_ROWS`` rows, merged by Chan et al.'s pairwise update."""
    n_seen, mean, sum_sq = 0, np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for start in range(0, X.shape[0], CHUNK_ROWS):
        chunk = np.asarray(X[start : start + CHUNK_ROWS], dtype=np.float64)
        n_chunk = chunk.shape[0]
        chunk_mean = chunk.mean(axis=0)
        chunk_sum_sq = ((chunk - chunk_mean) ** 2).sum(axis=0)
        delta = chunk_mean - mean
        n_total = n_seen + n_chunk
        mean = mean + delta * (n_chunk / n_total)
        sum_sq = sum_sq + chunk_sum_sq + delta**2 * (n_seen * n_chunk / n_total)
        n_seen = n_total
    return mean, sum_sq / n_seen


def distinct_float32_rows(X) -> int:
    rows = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32) + np.float32(0.0)
    return len(np.unique(rows, axis=0))


def rows_with_duplicates(n_distinct: int, n_features: int, repeats: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(n_distinct, n_features)).astype(np.float32)
    return rng.permutation(np.repeat(distinct, repeats, axis=0))


def small(**params) -> SelfLabelingClusterer:
    defaults = dict(
        n_clusters=3,
        n_heads=2,
        hidden_layer_sizes=(16,),
        embedding_dim=8,
        max_epochs=2,
        batch_size=64,
        random_state=0,
    )
    return SelfLabelingClusterer(**{**defaults, **params})


# ------------------------------------------------------------------------ what a profile holds


def test_dense_profile_holds_the_chunked_moments_and_the_distinct_rows():
    X = rows_with_duplicates(50, 5, 6)  # 300 rows over 5 chunks
    X[:10] = -0.0  # -0.0 and 0.0 are the same row to the network
    X[10:20] = 0.0
    profile = profile_rows(X, at_least=len(X))
    mean, variance = chunked_moments(X)
    np.testing.assert_array_equal(profile.mean, mean)
    np.testing.assert_array_equal(profile.variance, variance)
    np.testing.assert_allclose(profile.mean, X.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(profile.variance, X.astype(np.float64).var(axis=0), rtol=1e-10)
    assert profile.n_distinct == distinct_float32_rows(X)
    assert profile.n_features == 5 and profile.kind == "tabular"


def test_the_distinct_count_stops_at_the_first_chunk_that_reaches_at_least():
    X = np.random.default_rng(1).normal(size=(5 * CHUNK_ROWS, 3))
    # Counting ends with the chunk that reaches at_least, as the network's float32 rows.
    assert profile_rows(X, at_least=CHUNK_ROWS + 1).n_distinct == 2 * CHUNK_ROWS
    assert profile_rows(X, at_least=1).n_distinct == CHUNK_ROWS
    assert profile_rows(X).n_distinct == 0  # not counted
    # Below at_least the count is exact: all rows read.
    few = rows_with_duplicates(7, 3, 40)
    assert profile_rows(few, at_least=8).n_distinct == distinct_float32_rows(few) == 7


def test_detected_kinds_follow_the_rule_of_the_module():
    rng = np.random.default_rng(0)
    pixels = rng.random((200, 64))
    signed = rng.normal(size=(200, 64))
    own_scales = pixels * np.geomspace(1, 1e4, 64)
    # The rule, from the columns' largest values: non-negative rows on a common range.
    highest = own_scales.max(axis=0)
    low, high = np.percentile(highest[highest > 0], [10, 90])
    assert high > 10 * low
    assert profile_rows(pixels).kind == "nonnegative"
    assert profile_rows(own_scales).kind == "tabular"
    assert profile_rows(signed).kind == "embedding"
    assert profile_rows(signed[:, :63]).kind == "tabular"
    assert profile_rows(sp.csr_matrix(pixels)).kind == "sparse"
    assert profile_rows(sp.csr_matrix(signed)).kind == "embedding"
    assert profile_rows(sp.csr_matrix(signed[:, :5])).kind == "tabular"
    # A named kind is kept; the kind "sparse" needs no column statistics.
    assert profile_rows(pixels, kind="embedding").kind == "embedding"
    named_sparse = profile_rows(pixels, kind="sparse")
    assert named_sparse.mean is None and named_sparse.variance is None


def test_sparse_profile_holds_the_moments_of_the_stored_values_and_canonical_rows():
    X = rows_with_duplicates(40, 6, 5)
    X[np.abs(X) < 0.7] = 0.0
    rows = sp.csr_matrix(X)
    profile = profile_rows(rows, at_least=len(X))
    expected_mean, expected_variance = mean_variance_axis(rows, axis=0)
    np.testing.assert_array_equal(profile.mean, expected_mean)
    np.testing.assert_array_equal(profile.variance, expected_variance)
    np.testing.assert_allclose(profile.mean, X.astype(np.float64).mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(profile.variance, X.astype(np.float64).var(axis=0), rtol=1e-5)
    assert profile.n_distinct == distinct_float32_rows(X)
    # Stored zeros and an entry stored in two parts are the row that they add up to.
    canonical = sp.csr_matrix(
        (
            np.array([1.0, 0.5, 0.5, 0.0, 1.0, 2.0]),
            np.array([0, 1, 1, 2, 0, 1]),
            np.array([0, 1, 4, 6]),
        ),
        shape=(3, 3),
    )
    dense = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 2.0, 0.0]])
    np.testing.assert_array_equal(canonical.toarray(), dense)
    assert profile_rows(canonical, at_least=3).n_distinct == distinct_float32_rows(dense) == 3
    non_negative = profile_rows(abs(rows))
    assert non_negative.kind == "sparse" and non_negative.mean is None


def test_out_of_core_profiles_equal_the_in_memory_one(tmp_path):
    X = rows_with_duplicates(60, 64, 5)
    in_memory = profile_rows(X, at_least=len(X))
    path = tmp_path / "X.npy"
    np.save(path, X)
    reader = CountingReader(X)
    for rows in (np.load(path, mmap_mode="r"), reader):
        profile = profile_rows(rows, at_least=len(X))
        assert profile.kind == in_memory.kind == "embedding"
        assert profile.n_distinct == in_memory.n_distinct == 60
        np.testing.assert_array_equal(profile.mean, chunked_moments(X)[0])
        np.testing.assert_array_equal(profile.variance, chunked_moments(X)[1])
    # One pass, chunk by chunk.
    assert reader.rows_read == len(X)
    assert reader.largest_read == CHUNK_ROWS


def test_profiling_checks_the_values_as_it_reads_them():
    X = np.random.default_rng(0).normal(size=(300, 4))
    X[200, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        profile_rows(CountingReader(X))
    X[200, 1] = 1e300
    for rows in (X, CountingReader(X), sp.csr_matrix(X)):
        with pytest.raises(ValueError, match="magnitude 1e\\+300"):
            profile_rows(rows)


def test_input_scaling_of_a_profile_is_that_of_its_rows():
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(300, 8)) * np.geomspace(1, 100, 8)).astype(np.float32)
    profile = profile_rows(X)
    for rows in (X, profile):
        mean, scale, normalize_rows = input_scaling(rows, "tabular")
        np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scale, X.std(axis=0), rtol=1e-5)
        assert not normalize_rows
    from_rows, from_profile = input_scaling(X, "embedding"), input_scaling(profile, "embedding")
    for a, b in zip(from_rows, from_profile, strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------- passes of a fit's preparation


@pytest.mark.parametrize(
    "n_features, params",
    [
        (6, {}),  # a table: a mixture start
        (64, {}),  # wide rows: the kind is detected
        (6, {"init": "random", "n_init": 2}),  # two networks built
        (64, {"image_shape": (8, 8), "n_init": 1}),
    ],
)
def test_a_fit_reads_its_rows_once_before_training(monkeypatch, n_features, params):
    X, _ = make_blobs(n_samples=400, centers=3, n_features=n_features, random_state=0)
    X = np.abs(X).astype(np.float32)
    monkeypatch.setattr(_offline, "initial_labels", stop_at_training)
    reader = CountingReader(X)
    with pytest.raises(TrainingStarts):
        small(**params).fit(reader)
    # The check of the values, the kind, the statistics and the distinct rows: one pass.
    assert reader.rows_read == len(X)


def test_a_fit_of_rows_in_memory_walks_them_once(monkeypatch):
    X, _ = make_blobs(n_samples=400, centers=3, n_features=64, random_state=0)
    walked = []
    original = _data.chunked_rows

    def counting_chunks(rows, **kwargs):
        for chunk in original(rows, **kwargs):
            walked.append(len(chunk))
            yield chunk

    monkeypatch.setattr(_data, "chunked_rows", counting_chunks)
    monkeypatch.setattr(_geometry, "chunked_rows", counting_chunks)
    monkeypatch.setattr(_offline, "initial_labels", stop_at_training)
    with pytest.raises(TrainingStarts):
        small(n_init=2, init="random").fit(X)
    assert sum(walked) == len(X)


def test_the_estimate_of_n_clusters_takes_the_fits_profile(monkeypatch):
    X, _ = make_blobs(n_samples=400, centers=3, n_features=6, random_state=0)
    given = []

    def estimate(rows, **kwargs):
        given.append(kwargs["profile"])
        return ClusterCount(3, np.array([15]), np.array([3]), 0)

    monkeypatch.setattr(_settings, "estimate_n_clusters", estimate)
    monkeypatch.setattr(_offline, "initial_labels", stop_at_training)
    reader = CountingReader(X)
    with pytest.raises(TrainingStarts):
        small(n_clusters="auto").fit(reader)
    assert reader.rows_read == len(X)
    (profile,) = given
    assert isinstance(profile, RowProfile) and profile.kind == "tabular"
    # Distinct rows counted far enough for any number the estimate may give.
    assert profile.n_distinct >= largest_estimate(len(X), None)


def test_partial_fit_reads_a_chunk_once_before_training(monkeypatch):
    X, _ = make_blobs(n_samples=300, centers=3, n_features=6, random_state=0)
    reader = CountingReader(X.astype(np.float32))
    from sklearn_selflabel import _training

    monkeypatch.setattr(_training, "build_net", stop_at_training)
    with pytest.raises(TrainingStarts):
        small().partial_fit(reader)
    assert reader.rows_read == len(X)


def test_the_networks_of_a_fit_share_one_resolved_standardization():
    X, _ = make_blobs(n_samples=300, centers=3, n_features=6, random_state=0)
    X = X.astype(np.float32)
    model = small(init="random", n_init=2).fit(X)
    network = model.net_.build_settings_.network
    mean, scale, _ = input_scaling(X, "tabular")
    np.testing.assert_array_equal(network.input_mean, mean)
    np.testing.assert_array_equal(network.input_scale, scale)
    np.testing.assert_array_equal(model.net_.module_.mean.numpy(), mean)
    # The module's buffers are its own, not the settings' arrays.
    assert not np.shares_memory(model.net_.module_.mean.numpy(), network.input_mean)


# ------------------------------------------------------------------ the bound of the estimate


def test_no_estimate_exceeds_the_largest_estimate():
    rng = np.random.default_rng(0)
    # Tight groups of the smallest size that counts: as many clusters as a layout can hold.
    for n_groups, size in ((200, 15), (40, 40)):
        centers = rng.normal(scale=100.0, size=(n_groups, 10))
        layout = np.repeat(centers, size, axis=0) + rng.normal(size=(n_groups * size, 10))
        n_rows = len(layout)
        count = density_count(layout, max_clusters_for(n_rows, None))
        assert count.n_clusters <= largest_estimate(n_rows, None)
    assert largest_estimate(1000, 5) == 5
    assert largest_estimate(10, None) == 2
    assert largest_estimate(10**6, None) == 200
