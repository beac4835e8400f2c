"""Behaviour of SelfLabelingClusterer: API, scikit-learn integration, input handling, errors."""

import pickle
import random
from itertools import permutations

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits, make_blobs
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy, sinkhorn_equipartition
from sklearn_selflabel._data import row_tensor
from sklearn_selflabel._offline import OfflineLabels
from sklearn_selflabel.augment import TermDropout
from sklearn_selflabel.modules import SparseLinear
from sklearn_selflabel.propagation import neighbor_link_partition


def small(**params) -> SelfLabelingClusterer:
    defaults = dict(
        n_clusters=3,
        hidden_layer_sizes=(32,),
        embedding_dim=8,
        max_epochs=12,
        batch_size=32,
        random_state=0,
    )
    return SelfLabelingClusterer(**{**defaults, **params})


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=150, centers=3, n_features=5, random_state=0)
    return X, y


@pytest.fixture(scope="module")
def fitted(blobs):
    return small().fit(blobs[0])


def test_outputs_have_documented_types_and_shapes(blobs, fitted):
    X, _ = blobs
    labels = fitted.predict(X)
    assert labels.dtype == np.int64 and labels.shape == (150,)
    assert labels.min() >= 0 and labels.max() < 3
    proba = fitted.predict_proba(X)
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(proba.argmax(axis=1), labels)
    embedding = fitted.transform(X)
    assert embedding.dtype == np.float32 and embedding.shape == (150, fitted.embedding_dim_)
    np.testing.assert_array_equal(fitted.labels_, labels)
    assert fitted.n_iter_ == 12
    assert fitted.n_features_in_ == 5
    assert 0 <= fitted.best_head_ < fitted.n_heads
    assert fitted.best_head_ == np.argmin(fitted.head_losses_)


def test_predict_gives_the_equipartition_labels_of_a_last_label_step():
    # Uneven blobs: the network's own argmax follows the data, the label step balances it.
    X, _ = make_blobs(n_samples=[40, 80, 120, 160], n_features=5, random_state=1)
    model = small(n_clusters=4, max_epochs=20, cluster_sizes="equal").fit(X)
    logits = model.net_.evaluate_rows(X.astype(np.float32), 64)[model.best_head_]
    assert model.logit_offsets_.shape == (4,) and model.logit_offsets_.dtype == np.float32
    shifted = logits.numpy() + model.logit_offsets_
    np.testing.assert_array_equal(model.labels_, shifted.argmax(axis=1))
    expected = sinkhorn_equipartition(logits, lamb=model.sinkhorn_lambda, tol=1e-6).labels
    assert np.mean(model.labels_ == expected.numpy()) > 0.99
    sizes = np.bincount(model.labels_, minlength=4)
    unshifted = np.bincount(logits.argmax(dim=1).numpy(), minlength=4)
    assert sizes.max() - sizes.min() < unshifted.max() - unshifted.min()
    assert sizes.min() >= 0.8 * len(X) / 4
    proba = model.predict_proba(X)
    expected_proba = torch.softmax(torch.from_numpy(shifted).double(), dim=1).numpy()
    np.testing.assert_allclose(proba, expected_proba, rtol=1e-6)


def test_estimated_cluster_sizes_follow_uneven_blobs():
    # The same uneven blobs from SeLa's random split: the equipartition splits the large ones
    # and merges the small ones; the re-partition at half the schedule finds the blobs, whose
    # sizes the later label steps keep.
    X, y = make_blobs(n_samples=[40, 80, 120, 160], n_features=5, random_state=1)
    fits = {
        sizes: small(n_clusters=4, max_epochs=20, cluster_sizes=sizes, init="random").fit(X)
        for sizes in ("equal", "estimated")
    }

    def size_error(model):
        return np.abs(np.sort(np.bincount(model.labels_, minlength=4)) - [40, 80, 120, 160]).sum()

    assert size_error(fits["estimated"]) < 0.6 * size_error(fits["equal"])
    assert adjusted_rand_score(y, fits["estimated"].labels_) > adjusted_rand_score(
        y, fits["equal"].labels_
    )
    estimated = fits["estimated"]
    logits = estimated.net_.evaluate_rows(X.astype(np.float32), 64)[estimated.best_head_]
    shifted = logits.numpy() + estimated.logit_offsets_
    np.testing.assert_array_equal(estimated.labels_, shifted.argmax(axis=1))
    # Above the floor (a fifth of the equal share), the blobs keep their own sizes.
    np.testing.assert_array_equal(np.sort(np.bincount(estimated.labels_)), [40, 80, 120, 160])


def test_estimated_cluster_sizes_enter_training_from_half_the_label_schedule():
    X, _ = make_blobs(n_samples=[40, 80, 120, 160], n_features=5, random_state=1)
    fits = {
        sizes: small(n_clusters=4, max_epochs=20, cluster_sizes=sizes, init="random").fit(X)
        for sizes in ("equal", "estimated")
    }
    label_step = dict(fits["estimated"].net_.callbacks_)["label_step"]
    assert label_step.estimate_sizes_from == 0.5 * max(label_step.epochs)
    assert dict(fits["equal"].net_.callbacks_)["label_step"].estimate_sizes_from is None
    first = min(epoch for epoch in label_step.epochs if epoch >= label_step.estimate_sizes_from)
    equal, estimated = fits["equal"].net_.history, fits["estimated"].net_.history
    # The same training up to the first step that aims at estimated sizes ...
    assert equal[: first + 1, "train_loss"] == estimated[: first + 1, "train_loss"]
    assert equal[:first, "max_cluster_size"] == estimated[:first, "max_cluster_size"]
    # ... which gives the large blobs larger clusters in training, and changes what follows.
    assert estimated[first, "max_cluster_size"] > equal[first, "max_cluster_size"] + 20
    assert estimated[first + 1, "train_loss"] != equal[first + 1, "train_loss"]

    def table_size_error(model):
        table = model.net_.label_table_[model.best_head_].numpy()
        return np.abs(np.sort(np.bincount(table, minlength=4)) - [40, 80, 120, 160]).sum()

    assert table_size_error(fits["estimated"]) < 0.6 * table_size_error(fits["equal"])


def test_sizes_are_estimated_with_few_rows_per_cluster_too():
    # Four rows per cluster: the start's sizes are kept from the first label step on (by a
    # network wide enough to tell 15 clusters apart).
    X, y = make_blobs(n_samples=[4] * 15, n_features=6, cluster_std=0.3, random_state=0)
    model = SelfLabelingClusterer(15, n_heads=4, max_epochs=60, batch_size=16, random_state=0)
    model.fit(X)
    assert dict(model.net_.callbacks_)["label_step"].estimate_sizes_from == 0.0
    assert adjusted_rand_score(y, model.labels_) == 1.0


def test_first_estimated_step_gives_every_head_the_neighbor_link_partition():
    # Uneven blobs again: the equipartition phase mixes them; re-partitioning from the
    # embedding's neighbour links separates them, renamed to agree with each head's labels.
    X, y = make_blobs(n_samples=[40, 80, 120, 160], n_features=5, random_state=1)
    X = X.astype(np.float32)
    equal = small(n_clusters=4, max_epochs=20, cluster_sizes="equal", init="random").fit(X)
    estimated = small(n_clusters=4, max_epochs=20, init="random").fit(X)
    label_step = dict(estimated.net_.callbacks_)["label_step"]
    history = estimated.net_.history
    assert [i for i, row in enumerate(history) if row["repartition"]] == [
        label_step.repartition_epoch()
    ]
    assert not any(equal.net_.history[:, "repartition"])
    net = equal.net_
    equal_step = dict(net.callbacks_)["label_step"]
    table = equal_step.repartition(net, X).numpy()
    embedding = net.evaluate_rows(X, 64, output="embedding")
    partition = neighbor_link_partition(embedding, 4, random_state=equal_step.seed)
    for head, before in zip(table, net.label_table_.numpy(), strict=True):
        assert adjusted_rand_score(partition, head) == 1.0
        agreement = [
            np.mean(np.asarray(names)[partition] == before) for names in permutations(range(4))
        ]
        assert np.mean(head == before) == max(agreement)
    assert adjusted_rand_score(y, table[0]) > adjusted_rand_score(y, equal.labels_) + 0.2
    assert adjusted_rand_score(y, estimated.labels_) > 0.9


def test_n_init_keeps_the_fit_with_the_best_score(blobs):
    X, _ = blobs
    # With this seed the first of three fits scores best, so the kept one is not the last.
    single = small(n_init=1, random_state=1, init="random").fit(X)
    several = small(n_init=3, random_state=1, init="random").fit(X)
    assert single.init_scores_.shape == (1,) and several.init_scores_.shape == (3,)
    assert several.init_scores_.argmax() == 0
    # The first initialisation is the single fit; the others start from other seeds.
    assert several.init_scores_[0] == pytest.approx(single.init_scores_[0], rel=1e-6)
    assert len(np.unique(several.init_scores_)) == 3
    assert several.score(X) == pytest.approx(several.init_scores_.max(), rel=1e-6)
    np.testing.assert_array_equal(several.labels_, single.labels_)
    np.testing.assert_array_equal(several.transform(X), single.transform(X))


def test_n_init_above_one_refuses_a_checkpoint_dir(blobs, tmp_path):
    with pytest.raises(ValueError, match="n_init=2 cannot be combined with checkpoint_dir"):
        small(n_init=2, checkpoint_dir=tmp_path).fit(blobs[0])


def test_blobs_are_found(blobs, fitted):
    assert adjusted_rand_score(blobs[1], fitted.labels_) > 0.95


def test_fit_predict_and_fit_transform_match_separate_calls(blobs):
    X, _ = blobs
    np.testing.assert_array_equal(small().fit_predict(X), small().fit(X).predict(X))
    np.testing.assert_array_equal(small().fit_transform(X), small().fit(X).transform(X))


def test_score_is_normalized_information(blobs, fitted):
    X, _ = blobs
    # Training against hard labels makes the network confident, and the score grows with it.
    longer = small(max_epochs=60).fit(X)
    assert 0 <= fitted.score(X) < longer.score(X) <= 1.0
    assert longer.score(X) > 0.5
    # The streaming sum over batches is the closed form on predict_proba.
    proba = longer.predict_proba(X)
    marginal = proba.mean(axis=0)
    information = -np.sum(marginal * np.log(marginal)) + np.mean(np.sum(proba * np.log(proba), 1))
    assert longer.score(X) == pytest.approx(information / np.log(3), rel=1e-9)
    # Rows spread evenly carry no information; confident, evenly spread rows carry log K.
    from sklearn_selflabel._inference import InformationSum

    def score_of(logits):
        information = InformationSum(logits.shape[1], "cpu")
        for batch in torch.split(logits, 4):
            information.add(batch)
        return information.score()

    assert score_of(torch.zeros(10, 3)) == pytest.approx(0.0, abs=1e-12)
    assert score_of(100 * torch.eye(3).repeat(3, 1)) == pytest.approx(1.0)


def test_history_records_loss_label_changes_and_cluster_sizes(blobs):
    # From SeLa's random split, which re-partitions once (a start from a clustering does not).
    fitted = small(init="random").fit(blobs[0])
    history = fitted.net_.history
    assert len(history) == fitted.n_iter_
    for key in (
        "train_loss",
        "label_step",
        "labels_changed",
        "min_cluster_size",
        "max_cluster_size",
    ):
        assert len(history[:, key]) == len(history)
    steps = [row for row in history if row["label_step"]]
    assert len(steps) >= 2
    assert all(0.0 <= row["labels_changed"] <= 1.0 for row in history)
    # With estimated sizes (the default) one step re-partitions instead of solving Sinkhorn.
    assert [row["label_step"] for row in history if row["repartition"]] == [True]
    solved = [row for row in steps if not row["repartition"]]
    assert all(row["sinkhorn_error"] <= fitted.sinkhorn_tol for row in solved)
    # The solver's seconds are a part of the whole step's.
    assert all(0 < row["sinkhorn_seconds"] < row["label_step_seconds"] for row in solved)
    # Before the first label step the labels are a random equal split: sizes 50 each.
    assert history[0, "min_cluster_size"] <= history[0, "max_cluster_size"]


def test_label_schedule_is_dense_early_and_sparse_late():
    from sklearn_selflabel._offline import label_step_epochs

    epochs = label_step_epochs(100, 20)
    gaps = np.diff(epochs)
    assert epochs[0] == 0 and epochs[-1] < 99
    assert gaps[0] <= gaps[-1] and gaps[-1] > 1


def test_initial_labels_are_a_random_equal_split():
    from sklearn_selflabel._starts import random_equal_split

    labels = random_equal_split(103, 10, 3, seed=0)
    assert labels.shape == (3, 103)
    for head in labels:
        counts = np.bincount(head, minlength=10)
        assert counts.max() - counts.min() <= 1
    assert not np.array_equal(labels[0], labels[1])


def test_mixture_start_labels_every_row_from_a_seeded_sample(monkeypatch):
    from sklearn_selflabel import _starts

    X, y = make_blobs(n_samples=600, centers=4, n_features=60, cluster_std=2.0, random_state=3)
    X = X * np.geomspace(1, 100, X.shape[1])  # columns on scales of their own
    mean, scale = X.mean(axis=0), X.std(axis=0)

    def standardize(rows):
        return ((rows - mean) / scale).astype(np.float32)

    fitted_on = []
    original = _starts.GaussianMixture.fit

    def recording_fit(self, rows, *args, **kwargs):
        fitted_on.append((rows.shape, self.covariance_type))
        return original(self, rows, *args, **kwargs)

    monkeypatch.setattr(_starts, "MIXTURE_ROWS", 250)
    monkeypatch.setattr(_starts.GaussianMixture, "fit", recording_fit)
    labels = _starts.mixture_labels(X, 4, seed=0, standardize=standardize)
    assert labels.shape == (600,) and labels.dtype == np.int64
    # The mixture, after the cross-validated choice of its shrinkage: fitted on 250 rows,
    # on their first 50 principal components, with full covariances.
    assert fitted_on[-1] == ((250, 50), "full")
    assert adjusted_rand_score(y, labels) == 1.0
    again = _starts.mixture_labels(X, 4, seed=0, standardize=standardize)
    np.testing.assert_array_equal(labels, again)


def test_mixture_shrinkage_is_what_held_out_rows_support():
    from sklearn_selflabel._starts import SHRINKAGE_GRID, shrinkage_by_likelihood

    rng = np.random.default_rng(0)
    # Elongated, correlated groups with many rows: held-out rows favour the least shrinkage.
    cov = np.array([[4.0, 3.8], [3.8, 4.0]])
    rows = np.vstack([rng.multivariate_normal(m, cov, 500) for m in ([0, 0], [8, -8])])
    assert shrinkage_by_likelihood(rows, 2, rng) == SHRINKAGE_GRID[0] * rows.var(axis=0).mean()
    # Few rows in many dimensions: full covariances follow the noise, and the most
    # shrinkage predicts held-out rows best.
    wide = rng.normal(size=(60, 40))
    assert shrinkage_by_likelihood(wide, 2, rng) == SHRINKAGE_GRID[-1] * wide.var(axis=0).mean()


def test_mixture_from_kmeans_starts_em_from_the_best_partition():
    from sklearn_selflabel._starts import mixture_from_kmeans

    # Many close components, one of them small: for seeds 0, 1 and 2, the more likely of two
    # EM runs from one KMeans initialisation each merges two of them and splits another
    # (ARI 0.96); from the best of ten KMeans partitions, EM finds all of them.
    X, y = make_blobs(
        n_samples=[20] + [60] * 14,
        n_features=10,
        cluster_std=1.0,
        center_box=(-5, 5),
        random_state=0,
    )
    for seed in range(3):
        mixture = mixture_from_kmeans(X, 15, shrinkage=1e-3, seed=seed)
        assert mixture.converged_
        assert adjusted_rand_score(y, mixture.predict(X)) == 1.0


def test_grid_steps_finds_counts_and_leaves_flags_and_continuous_rows_alone():
    from sklearn_selflabel._starts import grid_steps

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 10, size=300).astype(float)  # a grid of step 1
    rounded = np.round(rng.normal(size=300), 1)  # a measurement to 0.1
    flag = (rng.random(300) < 0.1) * 5.0  # two far-apart values: no grid
    continuous = rng.normal(size=300)
    constant = np.ones(300)
    steps = grid_steps(np.column_stack([counts, rounded, flag, continuous, constant]))
    assert steps[0] == 1.0
    assert steps[1] == pytest.approx(0.1)
    assert steps[2] == 0.0 and steps[4] == 0.0
    assert 0.0 < steps[3] < 1e-3


def test_neighbor_agreement_scores_a_partition_along_the_links_highest():
    from sklearn_selflabel._starts import neighbor_agreement

    block = np.ones((20, 20)) - np.eye(20)
    graph = sp.csr_matrix(sp.block_diag([block, block]))
    along = np.repeat([0, 1], 20)
    across = np.tile([0, 1], 20)
    assert neighbor_agreement(along, graph) == pytest.approx(1.0)
    assert neighbor_agreement(across, graph) < 0.0
    assert neighbor_agreement(np.zeros(40, dtype=np.int64), graph) == pytest.approx(0.0)


def test_a_start_that_separates_the_rows_as_their_links_do_is_kept_without_the_costlier_one(
    monkeypatch,
):
    from sklearn_selflabel import _starts

    X, y = make_blobs(300, centers=3, n_features=6, cluster_std=0.3, random_state=0)
    X = np.abs(X).astype(np.float32)
    module = torch.nn.Module()
    module.standardize = lambda rows: rows
    built = []

    def layout(X, n_clusters, seed, **kwargs):
        built.append("layout")
        return y.astype(np.int64)  # the blobs, as a layout that found them would give

    monkeypatch.setattr(_starts, "layout_labels", layout)
    settings = dict(module=module, metric="euclidean", device=torch.device("cpu"))
    table = _starts.initial_labels(X, ("mixture", "layout"), 3, 2, 0, **settings)
    assert adjusted_rand_score(y, table[0]) == 1.0 and built == []
    # A mixture that cuts the rows' links: the layout is built, and kept for cutting fewer.
    scrambled = np.random.default_rng(0).integers(3, size=len(y))
    monkeypatch.setattr(_starts, "mixture_labels", lambda *args, **kwargs: scrambled)
    table = _starts.initial_labels(X, ("mixture", "layout"), 3, 2, 0, **settings)
    assert built == ["layout"] and (table == y).all()


def test_held_cluster_sizes_keep_every_cluster_above_the_floor():
    import torch

    from sklearn_selflabel._offline import floored, held_cluster_weights
    from sklearn_selflabel._starts import MIN_CLUSTER_SHARE

    labels = torch.tensor([[0] * 70 + [1] * 28 + [2] * 2, [0] * 50 + [1] * 50])
    shares = held_cluster_weights(labels, 3)
    assert shares.shape == (2, 3)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    floor = MIN_CLUSTER_SHARE / 3
    # The 2-row cluster and the empty one are raised to the floor exactly; the others make
    # room in proportion to their sizes.
    np.testing.assert_allclose(shares[:, 2], floor)
    np.testing.assert_allclose(shares[0, :2] / shares[0, :2].sum(), [70 / 98, 28 / 98])
    np.testing.assert_allclose(shares[1, :2], (1 - floor) / 2)
    # Making room can take another share below the floor; it is raised in turn.
    np.testing.assert_allclose(floored(np.array([0.7, 0.26, 0.04, 0.0]), 0.2), [0.4, 0.2, 0.2, 0.2])
    untouched = np.array([0.4, 0.35, 0.25])
    np.testing.assert_allclose(floored(untouched, 0.25), untouched)


def test_voted_cluster_sizes_move_to_what_the_embedding_holds():
    import torch

    from sklearn_selflabel._offline import held_cluster_weights, voted_cluster_weights
    from sklearn_selflabel._starts import MIN_CLUSTER_SHARE

    # Two groups of 60 and 40 rows in the embedding, labelled 50/50 (ten rows of the large
    # group in the small one's cluster), and a second head that labels them rightly.
    embedding, groups = make_blobs([60, 40], centers=[[5, 0], [0, 5]], random_state=0)
    embedding = torch.from_numpy(embedding).float()
    wrong = groups.copy()
    wrong[np.flatnonzero(groups == 0)[:10]] = 1
    labels = torch.from_numpy(np.stack([wrong, groups]))
    np.testing.assert_allclose(held_cluster_weights(labels[0], 2), [0.5, 0.5])
    np.testing.assert_allclose(voted_cluster_weights(embedding, labels, 2), [[0.6, 0.4]] * 2)
    # No cluster is voted below the floor.
    shares = voted_cluster_weights(embedding, torch.from_numpy(np.append(groups[:-1], 2)), 3)
    assert shares.min() >= MIN_CLUSTER_SHARE / 3 - 1e-12


def test_tables_start_from_a_mixture_and_keep_its_uneven_sizes():
    # Uneven, with no class below the floor of estimated sizes (a fifth of the equal share).
    X, y = make_blobs(n_samples=[25, 65, 90, 220], n_features=5, random_state=1)
    fits = {
        init: small(n_clusters=4, max_epochs=20, init=init).fit(X) for init in ("auto", "random")
    }
    model = fits["auto"]
    label_step = dict(model.net_.callbacks_)["label_step"]
    assert label_step.mode.starts == ("mixture",)
    assert not any(model.net_.history[: min(label_step.epochs), "label_step"])
    # The start's sizes are kept from the first label step on, with no re-partition.
    sizes = np.sort(np.bincount(model.labels_, minlength=4))
    assert np.abs(sizes - [25, 65, 90, 220]).max() <= 5
    assert adjusted_rand_score(y, model.labels_) > 0.95
    # init="random" keeps SeLa's start and schedule.
    random_step = dict(fits["random"].net_.callbacks_)["label_step"]
    assert random_step.mode.starts == ("random",) and min(random_step.epochs) == 0


@pytest.mark.parametrize(
    ("params", "method", "message"),
    [
        (dict(init="kmeans", label_mode="online"), "fit", "init='kmeans' sets the labels"),
        (dict(init="random"), "partial_fit", "init='random' sets the labels"),
        (dict(init="mixture"), "sparse", "init='mixture' needs dense rows"),
    ],
)
def test_init_other_than_auto_needs_an_offline_fit_and_mixture_dense_rows(
    blobs, params, method, message
):
    X = blobs[0]
    model = small(**params)
    with pytest.raises(ValueError, match=message):
        if method == "partial_fit":
            model.partial_fit(X)
        else:
            model.fit(sp.csr_matrix(np.abs(X)) if method == "sparse" else X)


def test_explicit_init_overrides_the_kind(blobs):
    X = np.abs(blobs[0])
    kmeans = small(init="kmeans").fit(X)
    assert kmeans.net_.build_settings_.labels.starts == ("kmeans",)
    assert not any(kmeans.net_.history[:, "repartition"])
    mixture = small(init="mixture", input_kind="nonnegative").fit(X)
    assert dict(mixture.net_.callbacks_)["label_step"].mode.starts == ("mixture",)
    signed_sparse = small().fit(sp.csr_matrix(blobs[0]))
    assert signed_sparse.net_.build_settings_.labels.starts == ("random",)


def test_auto_init_follows_the_recipe_of_the_kind():
    from sklearn_selflabel._recipes import RECIPES
    from sklearn_selflabel._settings import resolve_settings

    X, _ = make_blobs(n_samples=1500, centers=3, n_features=5, random_state=0)
    X = X.astype(np.float32)
    table = resolve_settings(small(), X)
    assert table.network.input_kind == "tabular"
    assert table.labels.starts == RECIPES["tabular"].starts == ("mixture",)
    assert table.labels.label_steps_from == 0.25 and not table.labels.repartition
    assert table.network.augment_strength == 0.25  # half of augment_strength
    # Wide non-negative rows (pixels) choose between a mixture and their layout, and train
    # on neighbour views instead of noise; so do wide signed rows, the outputs of a model.
    wide, _ = make_blobs(n_samples=200, centers=3, n_features=64, random_state=0)
    wide = wide.astype(np.float32)
    for rows, kind in ((np.abs(wide), "nonnegative"), (wide, "embedding")):
        settings = resolve_settings(small(), rows)
        assert settings.network.input_kind == kind
        assert settings.labels.starts == ("mixture", "layout")
        assert settings.network.augment_strength == 0.0
        assert settings.propagation is not None and settings.propagation.view_neighbors == 10
        assert settings.propagation.input_metric == "cosine"
    # Fewer features are a table, whatever their sign (a table of scores, counts, lengths).
    assert resolve_settings(small(), np.abs(X)).network.input_kind == "tabular"
    narrow = resolve_settings(small(), wide[:, :63].astype(np.float32))
    assert narrow.network.input_kind == "tabular"
    # SeLa's random start, schedule and re-partition, and the full noise.
    random = resolve_settings(small(init="random"), X)
    assert random.labels.starts == ("random",)
    assert random.labels.label_steps_from == 0.0 and random.labels.repartition
    assert random.network.augment_strength == 0.5
    online = resolve_settings(small(label_mode="online"), X[:500])
    assert online.network.augment_strength == 0.5


def test_digits_defaults_never_degenerate_and_beat_chance():
    X, y = load_digits(return_X_y=True)
    model = SelfLabelingClusterer(n_clusters=10, random_state=0).fit(X)
    history = model.net_.history
    n_per_cluster = len(X) / 10
    # The labels that the fit ends with keep every cluster at a fifth of its share or more,
    # and so does every label step up to its hard assignment's rounding.
    for row in history:
        if row["label_step"]:
            assert row["min_cluster_size"] >= 0.19 * n_per_cluster, row
    assert np.bincount(model.labels_).min() >= 0.2 * n_per_cluster
    assert clustering_accuracy(y, model.labels_) > 0.6


def test_same_seed_gives_identical_fits_and_leaves_global_rng_alone(blobs):
    X, _ = blobs
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    py_state = random.getstate()
    first = small(random_state=7).fit(X)
    second = small(random_state=7).fit(X)
    np.testing.assert_array_equal(first.labels_, second.labels_)
    np.testing.assert_array_equal(first.transform(X), second.transform(X))
    after = np.random.get_state()
    assert np.array_equal(np_state[1], after[1]) and np_state[2] == after[2]
    assert torch.equal(torch_state, torch.get_rng_state())
    assert py_state == random.getstate()


def test_unseeded_fit_leaves_global_rng_alone(blobs):
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    small(random_state=None, max_epochs=2).fit(blobs[0])
    assert np.array_equal(np_state[1], np.random.get_state()[1])
    assert torch.equal(torch_state, torch.get_rng_state())


def test_different_seeds_give_different_networks(blobs):
    X, _ = blobs
    a = small(random_state=1).fit(X).transform(X)
    b = small(random_state=2).fit(X).transform(X)
    assert not np.allclose(a, b)


@pytest.mark.parametrize(
    "convert",
    [
        lambda X: X.astype(np.float32),
        lambda X: X.tolist(),
        lambda X: pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])]),
    ],
    ids=["float32", "list", "dataframe"],
)
def test_accepts_other_containers_with_the_same_result(blobs, fitted, convert):
    X, _ = blobs
    model = small().fit(convert(X))
    agreement = np.mean(model.labels_ == fitted.labels_)
    assert agreement > 0.98


def test_sparse_input_matches_dense_and_is_densified_batch_by_batch(blobs, monkeypatch):
    X, _ = blobs
    X = np.where(np.abs(X) > 2, X, 0.0)
    # The random split, which signed sparse rows start from (the mixture needs dense rows).
    dense = small(init="random").fit(X)
    shapes = []
    original = sp.csr_matrix.toarray

    def recording_toarray(self, *args, **kwargs):
        shapes.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", recording_toarray)
    sparse = small().fit(sp.csr_matrix(X))
    assert sparse.net_.build_settings_.labels.starts == ("random",)
    assert shapes and max(rows for rows, _ in shapes) <= sparse.batch_size
    np.testing.assert_array_equal(sparse.labels_, dense.labels_)
    np.testing.assert_allclose(
        sparse.transform(sp.csr_matrix(X)), dense.transform(X), rtol=1e-4, atol=1e-5
    )


def test_each_kind_of_flat_rows_trains_with_its_own_views_and_labels():
    X, y = make_blobs(n_samples=300, n_features=64, random_state=0)
    counts = np.abs(X).round()  # non-negative, a third of the entries zero
    fits = {
        "tabular": small().fit(X[:, :12] * np.geomspace(1, 1000, 12)),
        "nonnegative": small().fit(counts),
        "sparse": small().fit(sp.csr_matrix(counts)),
    }
    kinds = {name: model.net_.build_settings_.network.input_kind for name, model in fits.items()}
    assert kinds == {name: name for name in fits}
    sparse = fits["sparse"].net_
    # Documents: views that drop terms, no propagation, and no re-partition by the
    # embedding's links; the label steps keep the sizes of the KMeans start.
    assert isinstance(sparse.module_.augment, TermDropout)
    assert sparse.module_.augment.rate == 0.25
    assert sparse.build_settings_.propagation is None
    label_step = dict(sparse.callbacks_)["label_step"]
    assert label_step.estimate_sizes_from == 0.0
    assert label_step.repartition_epoch() is None
    assert not any(sparse.history[:, "repartition"])
    # Non-negative dense rows: propagation and neighbour views instead of noise, and a start
    # from their layout that the network learns for a quarter of the schedule; no
    # re-partition.
    nonnegative = fits["nonnegative"].net_
    assert nonnegative.build_settings_.propagation.view_neighbors > 0
    assert nonnegative.module_.augment.strength == 0
    label_step = dict(nonnegative.callbacks_)["label_step"]
    assert min(label_step.epochs) >= 0.25 * (nonnegative.max_epochs - 1)
    assert not any(nonnegative.history[:, "repartition"])
    assert adjusted_rand_score(y, fits["nonnegative"].labels_) > 0.9
    # Tables: noise views at half the strength, no propagation, and a start from a Gaussian
    # mixture that the network learns for a quarter of the schedule before the first label
    # step, which already aims at estimated sizes; no re-partition.
    tabular = fits["tabular"].net_
    assert tabular.build_settings_.propagation is None
    assert tabular.module_.augment.strength == 0.25
    label_step = dict(tabular.callbacks_)["label_step"]
    assert min(label_step.epochs) >= 0.25 * (tabular.max_epochs - 1)
    assert label_step.estimate_sizes_from <= min(label_step.epochs)
    assert not any(tabular.history[: min(label_step.epochs), "label_step"])
    assert not any(tabular.history[:, "repartition"])
    starts = {name: fit.net_.build_settings_.labels.starts for name, fit in fits.items()}
    assert starts == {
        "tabular": ("mixture",),
        "nonnegative": ("mixture", "layout"),
        "sparse": ("kmeans",),
    }


def test_sparse_linear_gives_a_sparse_batch_the_dense_output_and_gradient():
    torch.manual_seed(0)
    layer = SparseLinear(40, 6)
    X = sp.random(9, 40, density=0.15, random_state=0, format="csr", dtype=np.float32)
    X = sp.vstack([X[:3], sp.csr_matrix((1, 40), dtype=np.float32), X[3:]]).tocoo()  # empty row
    batch = torch.sparse_coo_tensor(np.vstack([X.row, X.col]), X.data, X.shape)
    sparse_out = layer(batch)
    (sparse_out**2).sum().backward()
    sparse_grad = layer.weight_t.grad.clone()
    layer.weight_t.grad = None
    dense_out = layer(torch.from_numpy(X.toarray()))
    (dense_out**2).sum().backward()
    torch.testing.assert_close(sparse_out, dense_out)
    torch.testing.assert_close(sparse_grad, layer.weight_t.grad)
    torch.testing.assert_close(sparse_out[3], layer.bias.detach())
    assert layer.weight_t.is_contiguous()  # what the fused optimizer step runs fast on


@pytest.mark.parametrize("to_format", [sp.csr_matrix, sp.csc_matrix])
def test_sparse_row_batches_are_canonical_whatever_the_stored_order(to_format):
    # Rows whose columns are stored out of order and twice: SparseLinear reads a batch's
    # entries as sorted by (row, column), one per index.
    columns = np.array([5, 1, 5, 0, 3, 3, 2])
    values = np.arange(1.0, 8.0)
    X = sp.csr_matrix((values, columns, [0, 3, 3, 7]), shape=(3, 6))
    assert not X.has_canonical_format
    X = to_format(X)
    dense = torch.from_numpy(X.toarray()).float()
    for index in ([0, 1, 2], [2, 0]):
        rows = row_tensor(X, index=np.array(index), sparse=True)
        torch.testing.assert_close(rows.to_dense(), dense[index])
        keys = rows.indices()[0] * X.shape[1] + rows.indices()[1]
        assert torch.all(keys[1:] > keys[:-1])  # sorted, no index twice
    torch.testing.assert_close(row_tensor(X, 1, 3, sparse=True).to_dense(), dense[1:])


def test_sparse_linear_state_dicts_hold_the_weight_as_nn_linear_does():
    torch.manual_seed(0)
    layer, linear = SparseLinear(40, 6), nn.Linear(40, 6)
    state = layer.state_dict()
    assert {name: tuple(value.shape) for name, value in state.items()} == {
        "weight": (6, 40),
        "bias": (6,),
    }
    linear.load_state_dict(state)
    batch = torch.randn(5, 40)
    torch.testing.assert_close(layer(batch), linear(batch))
    reloaded = SparseLinear(40, 6)
    reloaded.load_state_dict(linear.state_dict())
    torch.testing.assert_close(reloaded(batch), linear(batch))


def test_dataframe_fit_records_feature_names_and_predicts_on_frames(blobs):
    X, _ = blobs
    frame = pd.DataFrame(X, columns=list("abcde"))
    model = small().fit(frame)
    np.testing.assert_array_equal(model.feature_names_in_, list("abcde"))
    np.testing.assert_array_equal(model.predict(frame), model.labels_)
    with pytest.warns(UserWarning, match="feature names"):
        model.predict(X)


def test_set_output_pandas(blobs):
    X, _ = blobs
    model = small().set_output(transform="pandas").fit(X)
    out = model.transform(X)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == [f"selflabelingclusterer{i}" for i in range(model.embedding_dim_)]


def test_in_a_pipeline_with_scaling_and_pca(blobs):
    X, y = blobs
    pipe = make_pipeline(StandardScaler(), PCA(n_components=3), small())
    labels = pipe.fit_predict(X)
    assert adjusted_rand_score(y, labels) > 0.9
    np.testing.assert_array_equal(pipe.predict(X), labels)
    assert pipe.transform(X).shape == (150, 8)


@pytest.mark.parametrize("scoring", ["adjusted_rand_score", None])
def test_grid_search(blobs, scoring):
    X, y = blobs
    grid = {"n_clusters": [2, 3], "lr": [1e-3, 3e-3], "embedding_dim": [4, 8]}
    search = GridSearchCV(small(max_epochs=8), grid, cv=2, scoring=scoring)
    search.fit(X, y if scoring else None)
    assert set(search.cv_results_["params"][0]) == set(grid)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and search.best_score_ == scores.max()
    assert search.best_estimator_.n_iter_ == 8
    if scoring:
        assert search.best_params_["n_clusters"] == 3
    else:
        # Without scoring, GridSearchCV ranks by score(): the normalised information.
        assert np.ptp(scores) > 0 and np.all((0 <= scores) & (scores <= 1))


class TinyEncoder(nn.Module):
    def __init__(self, n_features: int, width: int = 16, out: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, out))

    def forward(self, x):
        return self.net(x)


def test_custom_module_and_its_arguments_are_tunable(blobs):
    X, y = blobs
    model = small(module=TinyEncoder, module_params={"width": 24, "out": 6}).fit(X)
    assert model.embedding_dim_ == 6 and model.transform(X).shape == (150, 6)
    assert isinstance(model.net_.module_.encoder, TinyEncoder)
    search = GridSearchCV(
        small(module=TinyEncoder, max_epochs=6),
        {"module_params": [{"width": 8}, {"width": 32}]},
        cv=2,
    ).fit(X)
    assert search.best_params_["module_params"] in ({"width": 8}, {"width": 32})


def test_custom_module_must_be_a_module(blobs):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        small(module=lambda n_features: "not a module").fit(blobs[0])


def test_clone_keeps_parameters_and_drops_fit(fitted):
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "net_")


@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_serialization_round_trip_predicts_identically(blobs, fitted, tmp_path, how):
    X, _ = blobs
    if how == "pickle":
        restored = pickle.loads(pickle.dumps(fitted))
    else:
        joblib.dump(fitted, tmp_path / "model.joblib")
        restored = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(restored.predict(X), fitted.predict(X))
    np.testing.assert_array_equal(restored.transform(X), fitted.transform(X))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_rejected(blobs, fitted, bad):
    X = blobs[0].copy()
    X[3, 1] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        small().fit(X)
    with pytest.raises(ValueError, match="NaN|infinity"):
        fitted.predict(X)


def test_wrong_number_of_features_at_predict(blobs, fitted):
    with pytest.raises(ValueError, match="5 features"):
        fitted.predict(blobs[0][:, :4])


def test_more_clusters_than_samples():
    with pytest.raises(ValueError, match="n_samples=5 should be >= n_clusters=8"):
        SelfLabelingClusterer(n_clusters=8).fit(np.random.default_rng(0).normal(size=(5, 3)))


@pytest.mark.parametrize("n_samples", [0, 1])
def test_too_few_samples(n_samples):
    with pytest.raises(ValueError, match=f"{n_samples} sample"):
        small(n_clusters=1).fit(np.ones((n_samples, 3)))


def test_strings_are_rejected():
    with pytest.raises(ValueError, match="could not convert string to float"):
        small().fit([["a", "b"], ["c", "d"], ["e", "f"]])


def test_complex_numbers_are_rejected():
    with pytest.raises(ValueError, match="[Cc]omplex"):
        small().fit(np.ones((10, 2)) + 1j)


def test_predict_before_fit():
    for method in ("predict", "predict_proba", "transform", "score"):
        with pytest.raises(NotFittedError):
            getattr(small(), method)(np.ones((3, 2)))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_clusters": 0}, "n_clusters"),
        ({"lr": -1.0}, "lr"),
        ({"hidden_layer_sizes": (16, 0)}, "hidden_layer_sizes"),
        ({"device": "tpu"}, "device"),
        ({"sinkhorn_lambda": 0}, "sinkhorn_lambda"),
    ],
)
def test_bad_parameters_are_named(blobs, params, match):
    with pytest.raises(ValueError, match=match):
        small(**params).fit(blobs[0])


def test_divergence_raises_and_keeps_the_previous_fit(blobs):
    X, _ = blobs
    model = small().fit(X)
    before = model.predict(X)
    net = model.net_
    with pytest.raises(FloatingPointError, match="Lower the learning rate"):
        model.set_params(lr=1e20).fit(X)
    assert model.net_ is net
    np.testing.assert_array_equal(model.predict(X), before)


class InterruptingEncoder(TinyEncoder):
    """Raises KeyboardInterrupt in the middle of training, as Ctrl-C would."""

    def forward(self, x):
        if self.training:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 7:
                raise KeyboardInterrupt
        return super().forward(x)


def test_interrupted_fit_does_not_pose_as_fitted(blobs):
    model = small(module=InterruptingEncoder)
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        model.fit(blobs[0])
    with pytest.raises(NotFittedError):
        model.predict(blobs[0])


def test_topped_up_offsets_give_a_short_cluster_the_rows_nearest_to_joining_it():
    from sklearn_selflabel import _offline

    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(200, 4)).astype(np.float32))
    logits[:, 3] -= 3.0  # cluster 3 holds few rows
    offsets = np.zeros(4, dtype=np.float32)
    counts = np.bincount((logits + torch.from_numpy(offsets)).argmax(1).numpy(), minlength=4)
    assert counts[3] < 25
    raised = _offline.topped_up(logits, offsets, min_rows=25)
    labels = (logits + torch.from_numpy(raised)).argmax(1).numpy()
    assert np.bincount(labels, minlength=4).min() == 25
    np.testing.assert_array_equal(raised[:3], offsets[:3])
    # The rows that join are those whose best logit beat cluster 3's by the least.
    margins = (logits.max(1).values - logits[:, 3]).numpy()
    joined = (labels == 3) & (margins > 0)
    assert margins[joined].max() < margins[(labels != 3)].min()
    # Clusters that already hold the rows keep their offsets.
    np.testing.assert_array_equal(_offline.topped_up(logits, raised, 25), raised)


def test_tables_keep_a_common_scale_and_standardize_columns_on_scales_of_their_own():
    from sklearn_selflabel._geometry import input_scaling

    rows = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    rows -= rows.mean(axis=0)
    # Centred coordinates (PCA's): one scale for all, so the geometry is the one given.
    coordinates = rows * np.array([3.0, 1.0, 0.5], dtype=np.float32)
    _, scale, _ = input_scaling(coordinates, "tabular")
    assert np.ptp(scale) == 0
    # Columns in units of their own (grams and kilometres): each standardised; so are
    # measurements, which are non-negative, even on one range (scores from 1 to 10).
    mixed = rows * np.array([1000.0, 1.0, 0.01], dtype=np.float32)
    _, scale, _ = input_scaling(mixed, "tabular")
    np.testing.assert_allclose(scale, mixed.std(axis=0), rtol=1e-3)
    for measurements in (np.abs(coordinates), coordinates + 10.0):  # not centred
        _, scale, _ = input_scaling(measurements, "tabular")
        np.testing.assert_allclose(scale, measurements.std(axis=0), rtol=1e-3)


@pytest.mark.parametrize("agreement, steps", [(0.98, False), (0.9, True)])
def test_a_label_step_from_a_learned_start_waits_until_the_network_agrees(agreement, steps):
    # The network's argmax agrees with 95% of the labels: a step runs under a 90% rule
    # (images) and waits under a 98% rule (flat rows).
    n_samples, n_clusters = 200, 4
    labels = torch.arange(n_samples) % n_clusters
    predicted = labels.clone()
    predicted[:10] = (predicted[:10] + 1) % n_clusters
    logits = 5.0 * torch.nn.functional.one_hot(predicted, n_clusters).float()[None]

    class Net:
        label_table_ = labels[None]
        history: list = [{}]

        def evaluate_rows(self, X, batch_size, fast=False):
            return logits

    mode = OfflineLabels(
        n_clusters=n_clusters,
        n_heads=1,
        lamb=25.0,
        tol=1e-6,
        max_iter=1000,
        n_label_steps=10,
        cluster_sizes="equal",
        batch_size=64,
        starts=("mixture",),
        learned_agreement=agreement,
    )
    step = mode.fit_label_step(n_epochs=10, seed=0)
    step.solver_state_ = None
    result = step.solve(Net(), np.zeros((n_samples, 1)))
    assert (result is not None) == steps
    if steps:
        assert torch.equal(result.labels[0], predicted)


def test_the_consensus_head_agrees_most_with_the_others_and_breaks_ties_by_loss():
    from sklearn_selflabel._offline import consensus_head

    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 50)
    noisy = [np.where(rng.random(200) < 0.1, rng.integers(4, size=200), truth) for _ in range(4)]
    merged = np.minimum(truth, 2)  # two categories merged
    table = np.stack([merged, *noisy, merged])
    losses = np.array([0.01, 0.5, 0.4, 0.3, 0.2, 0.02])
    # the merged heads fit best, and the others agree with them least
    assert consensus_head(table, losses) in (1, 2, 3, 4)
    identical = np.stack([truth, truth, merged])
    assert consensus_head(identical, np.array([0.3, 0.1, 0.2])) == 1


@pytest.mark.parametrize(
    "init, consensus", [("random", True), ("kmeans", True), ("mixture", False)]
)
def test_the_head_is_chosen_by_consensus_only_where_heads_had_starts_of_their_own(
    init, consensus, monkeypatch
):
    from sklearn_selflabel import _offline

    X = np.random.default_rng(0).random((150, 5))
    picked = []

    def last_head(table, losses):  # a choice that the lowest loss would not make
        picked.append(len(table) - 1 if np.argmin(losses) != len(table) - 1 else 0)
        return picked[-1]

    monkeypatch.setattr(_offline, "consensus_head", last_head)
    model = SelfLabelingClusterer(3, init=init, max_epochs=3, random_state=0).fit(X)
    if consensus:
        assert model.best_head_ == picked[-1]
    else:
        assert not picked and model.best_head_ == int(np.argmin(model.head_losses_))


def test_a_fit_ends_once_its_label_steps_change_no_label(blobs):
    X, _ = blobs
    params = dict(n_clusters=3, max_epochs=40, random_state=0)
    stopped = SelfLabelingClusterer(**params).fit(X)
    full = SelfLabelingClusterer(n_steps_no_change=None, **params).fit(X)
    assert full.n_iter_ == 40
    assert stopped.n_iter_ < 40
    history = stopped.net_.history
    assert len(history) == stopped.n_iter_
    changed = [row["labels_changed"] for row in history if row["label_step"]]
    assert len(changed) >= 3 and changed[-3:] == [0.0, 0.0, 0.0]
    assert history[-1, "label_step"]  # it stops right after the third such step
    assert any(changed[:-3]) or len(changed) == 3  # and not before it


@pytest.mark.parametrize(
    "changes, not_before, stops",
    [
        ([0.1, 0.0, 0.0], 0, False),
        ([0.1, 0.0, 0.0, 0.0], 0, True),
        ([0.0, 0.0, None, 0.0], 0, True),  # None: an epoch without a step
        ([0.1, 0.0, 0.0, None, None], 0, False),  # epochs without a step are not steps
        ([0.0, 0.0, 0.01, 0.0, 0.0], 0, False),
        ([0.0, 0.0, 0.0, 0.0, 0.0], 3, False),  # steps before the re-partition do not count
        ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 3, True),
    ],
)
def test_labels_converged_counts_consecutive_steps_without_a_change(changes, not_before, stops):
    from skorch.history import History

    from sklearn_selflabel._callbacks import LabelsConverged

    class Net:
        history = History()

    callback = LabelsConverged(3, not_before=not_before)
    callback.on_train_begin(Net())
    for epoch, change in enumerate(changes):
        Net.history.new_epoch()
        Net.history.record("label_step", change is not None)
        Net.history.record("labels_changed", change or 0.0)
        last = epoch == len(changes) - 1
        if last and stops:
            with pytest.raises(KeyboardInterrupt):
                callback.on_epoch_end(Net())
            assert callback.stopped_after_ == len(changes)
        else:
            callback.on_epoch_end(Net())
    assert (callback.stopped_after_ is not None) == stops
