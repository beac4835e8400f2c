"""n_clusters="auto": the estimate, its curve, and a fit that uses it."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.datasets import make_blobs

from sklearn_selflabel import SelfLabelingClusterer, load
from sklearn_selflabel._cluster_count import density_count, estimate_n_clusters

CPU = torch.device("cpu")


def small(**params) -> SelfLabelingClusterer:
    defaults = dict(
        n_heads=2,
        hidden_layer_sizes=(32,),
        embedding_dim=8,
        max_epochs=6,
        batch_size=64,
        random_state=0,
    )
    return SelfLabelingClusterer(**{**defaults, **params})


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(n_samples=400, centers=4, n_features=6, cluster_std=0.6, random_state=3)


def test_density_count_finds_separated_groups_and_keeps_the_curve():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=20.0, size=(5, 10))
    layout = np.repeat(centers, 200, axis=0) + rng.normal(size=(1000, 10))
    count = density_count(layout, max_clusters=50)
    assert count.n_clusters == 5
    # 0.25%, 0.5%, 1%, 2% and 4% of 1,000 rows, none below 15: 15, 20 and 40
    np.testing.assert_array_equal(count.min_cluster_sizes, [15, 20, 40])
    assert count.min_cluster_sizes[count.selected] == 15  # 0.5% of the rows, at least 15
    np.testing.assert_array_equal(count.counts, [5, 5, 5])


def test_density_count_resolves_groups_of_half_a_percent_of_the_rows():
    # 150 groups of 30 rows in 4,500: each holds 0.67% of the rows, above the estimate's
    # 0.5% (22 rows) and below 1% (45 rows, where the count falls to 19).
    rng = np.random.default_rng(2)
    centers = rng.normal(scale=20.0, size=(150, 10))
    layout = np.repeat(centers, 30, axis=0) + rng.normal(size=(4500, 10))
    count = density_count(layout, max_clusters=500)
    assert count.min_cluster_sizes[count.selected] == 22
    assert count.n_clusters == 150


def test_density_count_stays_within_two_and_max_clusters():
    rng = np.random.default_rng(1)
    one_group = rng.normal(size=(300, 10))
    assert density_count(one_group, max_clusters=50).n_clusters == 2
    centers = rng.normal(scale=20.0, size=(6, 10))
    six_groups = np.repeat(centers, 100, axis=0) + rng.normal(size=(600, 10))
    bounded = density_count(six_groups, max_clusters=4)
    assert bounded.n_clusters == 4
    assert bounded.counts[bounded.selected] == 6  # the curve keeps what was found


@pytest.mark.parametrize("centers", [3, 7])
def test_estimate_on_tabular_rows_is_the_number_of_blobs(centers):
    X, _ = make_blobs(n_samples=100 * centers, centers=centers, n_features=8, random_state=0)
    count = estimate_n_clusters(
        X, kind="tabular", image_shape=None, max_clusters=50, seed=0, device=CPU
    )
    assert count.n_clusters == centers


def test_estimate_on_sparse_rows_counts_topics():
    # Three topics, each using its own 40 of 120 terms: documents of a topic share terms.
    rng = np.random.default_rng(0)
    rows = []
    for topic in range(3):
        terms = rng.choice(40, size=(150, 8)) + 40 * topic
        for document in terms:
            row = np.zeros(120)
            row[document] = rng.random(8) + 0.5
            rows.append(row)
    X = sp.csr_matrix(np.array(rows))
    count = estimate_n_clusters(
        X, kind="sparse", image_shape=None, max_clusters=50, seed=0, device=CPU
    )
    assert count.n_clusters == 3


def test_estimate_on_nonnegative_rows_links_through_the_codes():
    # Not fewer rows: on a few hundred, the autoencoder's codes can tear a group apart.
    X, _ = make_blobs(
        n_samples=900, centers=3, n_features=20, cluster_std=0.5, center_box=(0, 10), random_state=1
    )
    X = np.clip(X, 0, None).astype(np.float32)
    count = estimate_n_clusters(
        X, kind="nonnegative", image_shape=None, max_clusters=50, seed=0, device=CPU
    )
    assert count.n_clusters == 3


def test_auto_fits_as_a_fit_with_the_estimated_number(blobs):
    X, y = blobs
    auto = small(n_clusters="auto").fit(X)
    assert auto.n_clusters_ == 4
    curve = auto.n_clusters_curve_
    assert set(curve) == {"min_cluster_size", "n_clusters", "selected"}
    assert curve["n_clusters"][curve["selected"]] == 4
    assert auto.predict_proba(X).shape == (len(X), 4)
    # The estimate draws from a seed of its own: the fit is the one a user would get by
    # passing the estimated number.
    given = small(n_clusters=4).fit(X)
    np.testing.assert_array_equal(auto.labels_, given.labels_)
    assert given.n_clusters_ == 4
    assert given.n_clusters_curve_ is None


def test_partial_fit_after_an_auto_fit_keeps_the_estimated_number(blobs):
    X, _ = blobs
    model = small(n_clusters="auto").fit(X)
    model.partial_fit(X[:200])
    assert model.n_clusters_ == 4
    assert model.predict_proba(X).shape == (len(X), 4)


def test_max_clusters_bounds_the_estimate(blobs):
    X, _ = blobs
    assert small(n_clusters="auto", max_clusters=3).fit(X).n_clusters_ == 3


@pytest.mark.parametrize(
    ("params", "call", "match"),
    [
        (dict(label_mode="online"), "fit", "needs label_mode='offline'"),
        ({}, "partial_fit", "a first partial_fit needs a number"),
        (dict(max_clusters=1), "fit", "max_clusters"),
    ],
)
def test_auto_refuses_what_it_cannot_do(blobs, params, call, match):
    X, _ = blobs
    model = small(n_clusters="auto", **params)
    with pytest.raises(ValueError, match=match):
        getattr(model, call)(X)
    assert not hasattr(model, "n_clusters_")


def test_auto_refuses_an_accelerator(blobs):
    accelerate = pytest.importorskip("accelerate")
    X, _ = blobs
    accelerator = accelerate.Accelerator(cpu=True, device_placement=False)
    with pytest.raises(ValueError, match="n_clusters='auto' cannot be combined"):
        small(n_clusters="auto", accelerator=accelerator).fit(X)


def test_a_saved_auto_model_keeps_its_number_and_curve(blobs, tmp_path):
    X, _ = blobs
    model = small(n_clusters="auto").fit(X)
    model.save(tmp_path / "model.selflabel")
    loaded = load(tmp_path / "model.selflabel")
    assert loaded.n_clusters == "auto"
    assert loaded.n_clusters_ == model.n_clusters_
    for key in ("min_cluster_size", "n_clusters"):
        np.testing.assert_array_equal(loaded.n_clusters_curve_[key], model.n_clusters_curve_[key])
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
