"""The plots draw what the fitted model holds: history, cluster sizes, embedding, confusion."""

import sys

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy
from sklearn_selflabel.plotting import (
    plot_cluster_count,
    plot_cluster_sizes,
    plot_confusion,
    plot_embedding,
    plot_training_curves,
)

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")

N_SAMPLES, N_CLUSTERS, MAX_EPOCHS = 90, 3, 8


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(n_samples=N_SAMPLES, centers=N_CLUSTERS, n_features=4, random_state=0)


@pytest.fixture(scope="module")
def model(blobs):
    # Three label steps in eight epochs (after epochs 1, 2 and 4; SeLa's schedule from the
    # random start), so that the label-step panel has fewer points than the per-epoch panels.
    return SelfLabelingClusterer(
        init="random",
        n_clusters=N_CLUSTERS,
        n_heads=2,
        hidden_layer_sizes=(32,),
        embedding_dim=8,
        max_epochs=MAX_EPOCHS,
        n_label_steps=3,
        batch_size=32,
        random_state=0,
    ).fit(blobs[0])


def test_training_curves_plot_the_history(model):
    axes = plot_training_curves(model)
    assert axes.shape == (3,)
    history = model.net_.history
    epochs = np.arange(1, MAX_EPOCHS + 1)

    loss = axes[0].lines[0]
    np.testing.assert_array_equal(loss.get_xdata(), epochs)
    np.testing.assert_allclose(loss.get_ydata(), history[:, "train_loss"])

    steps = np.asarray(history[:, "label_step"])
    assert steps.sum() == 3
    changed = axes[1].lines[0]
    np.testing.assert_array_equal(changed.get_xdata(), epochs[steps])
    np.testing.assert_allclose(changed.get_ydata(), np.asarray(history[:, "labels_changed"])[steps])

    smallest, largest, equal_share = axes[2].lines
    np.testing.assert_array_equal(smallest.get_ydata(), history[:, "min_cluster_size"])
    np.testing.assert_array_equal(largest.get_ydata(), history[:, "max_cluster_size"])
    assert len(smallest.get_xdata()) == len(largest.get_xdata()) == MAX_EPOCHS
    np.testing.assert_allclose(equal_share.get_ydata(), N_SAMPLES / N_CLUSTERS)


def test_training_curves_draw_into_given_axes(model):
    _, given = plt.subplots(1, 3)
    axes = plot_training_curves(model, ax=given)
    assert list(axes) == list(given)
    assert all(ax.lines for ax in given)
    with pytest.raises(ValueError, match="three Axes"):
        plot_training_curves(model, ax=given[0])


def test_cluster_sizes_one_bar_per_cluster(model, blobs):
    ax = plot_cluster_sizes(model)
    heights = [bar.get_height() for bar in ax.patches]
    assert len(heights) == N_CLUSTERS
    np.testing.assert_array_equal(heights, np.bincount(model.labels_, minlength=N_CLUSTERS))

    X_new = blobs[0][:30]
    _, ax = plt.subplots()
    assert plot_cluster_sizes(model, X_new, ax=ax) is ax
    heights = [bar.get_height() for bar in ax.patches]
    np.testing.assert_array_equal(heights, np.bincount(model.predict(X_new), minlength=N_CLUSTERS))


def test_cluster_count_draws_the_estimate_curve():
    X, _ = make_blobs(n_samples=1600, centers=4, n_features=6, random_state=0)
    model = SelfLabelingClusterer("auto", n_heads=2, max_epochs=2, random_state=0).fit(X)
    curve = model.n_clusters_curve_
    ax = plot_cluster_count(model)
    counts, selected = ax.lines[0], ax.lines[1]
    np.testing.assert_array_equal(counts.get_xdata(), curve["min_cluster_size"])
    np.testing.assert_array_equal(counts.get_ydata(), curve["n_clusters"])
    assert len(curve["min_cluster_size"]) == 4  # 1,600 rows: 15, 16, 32 and 64
    chosen = curve["selected"]
    assert selected.get_xdata()[0] == curve["min_cluster_size"][chosen]
    assert ax.lines[2].get_ydata()[0] == model.n_clusters_ == 4
    assert ax.get_xscale() == "log"


def test_cluster_count_needs_a_model_fitted_with_auto(model):
    with pytest.raises(ValueError, match="n_clusters='auto'"):
        plot_cluster_count(model)


def test_cluster_count_of_a_model_trained_by_partial_fit_alone_names_the_problem(blobs):
    model = SelfLabelingClusterer(3, n_heads=2, random_state=0).partial_fit(blobs[0])
    with pytest.raises(ValueError, match="n_clusters='auto'"):
        plot_cluster_count(model)


def test_embedding_scatters_the_pca_of_transform_by_cluster(model, blobs):
    X = blobs[0]
    ax = plot_embedding(model, X)
    points = PCA(n_components=2).fit_transform(model.transform(X))
    labels = model.predict(X)
    drawn = [collection.get_offsets() for collection in ax.collections]
    assert sum(len(offsets) for offsets in drawn) == N_SAMPLES
    clusters = [int(text.get_text()) for text in ax.get_legend().get_texts()]
    for cluster, offsets in zip(clusters, drawn, strict=True):
        np.testing.assert_allclose(offsets, points[labels == cluster], rtol=1e-5, atol=1e-5)


def test_embedding_colors_by_given_labels_and_supports_tsne(model, blobs):
    X, y = blobs
    ax = plot_embedding(model, X, labels=y, method="tsne", random_state=0)
    sizes = [len(collection.get_offsets()) for collection in ax.collections]
    np.testing.assert_array_equal(sizes, np.bincount(y))
    assert ax.get_xlabel() == "t-SNE 1"


def test_embedding_rejects_bad_arguments(model, blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="method"):
        plot_embedding(model, X, method="umap")
    with pytest.raises(ValueError, match="labels must have shape"):
        plot_embedding(model, X, labels=y[:-1])


def _confusion(ax) -> np.ndarray:
    return np.asarray(ax.images[0].get_array())


def test_confusion_diagonal_is_the_matched_accuracy(model, blobs):
    _, y = blobs
    table = _confusion(plot_confusion(model, y_true=y))
    assert table.shape == (N_CLUSTERS, N_CLUSTERS) and table.sum() == N_SAMPLES
    assert np.trace(table) / N_SAMPLES == pytest.approx(clustering_accuracy(y, model.labels_))


def test_confusion_reorders_clusters_to_match_classes(model):
    # Classes that rename every cluster: in cluster order the diagonal would be empty.
    renamed = (model.labels_ + 1) % N_CLUSTERS
    ax = plot_confusion(model, y_true=renamed)
    assert np.trace(_confusion(ax)) == N_SAMPLES
    assert ax.get_title() == "Matched accuracy 1.000"


def test_confusion_with_more_classes_than_clusters_on_new_data(model, blobs):
    X, y = blobs[0][:60], np.arange(60) % 4
    table = _confusion(plot_confusion(model, X, y_true=y))
    assert table.shape == (4, N_CLUSTERS) and table.sum() == 60
    assert np.trace(table) / 60 == pytest.approx(clustering_accuracy(y, model.predict(X)))
    with pytest.raises(ValueError, match="y_true must have shape"):
        plot_confusion(model, y_true=y)


@pytest.mark.parametrize(
    "plot",
    [
        plot_training_curves,
        plot_cluster_sizes,
        plot_cluster_count,
        lambda model: plot_embedding(model, np.ones((4, 4))),
        lambda model: plot_confusion(model, y_true=[0, 1]),
    ],
    ids=["training_curves", "cluster_sizes", "cluster_count", "embedding", "confusion"],
)
def test_unfitted_model_raises_not_fitted(plot):
    with pytest.raises(NotFittedError):
        plot(SelfLabelingClusterer())


def test_missing_matplotlib_says_how_to_install_it(model, monkeypatch):
    # A None entry in sys.modules makes the import fail as if matplotlib were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_cluster_sizes(model)
