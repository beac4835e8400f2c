"""Plots of a fitted ``SelfLabelingClusterer``: training, cluster sizes, the estimate of their
number, embedding, confusion.

matplotlib is optional: it is imported when a function is called, and a missing install raises
an ``ImportError`` that says how to get it. Every function draws into the given ``ax`` or, when
``ax`` is None, into a new figure, and returns what it drew into.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.utils.validation import check_is_fitted

from .clusterer import SelfLabelingClusterer

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "plot_cluster_count",
    "plot_cluster_sizes",
    "plot_confusion",
    "plot_embedding",
    "plot_training_curves",
]

# Cells of a confusion matrix up to this many rows and columns get their count written in.
_MAX_ANNOTATED = 20


def plot_training_curves(
    model: SelfLabelingClusterer, ax: Sequence[Axes] | np.ndarray | None = None
) -> np.ndarray:
    """Plot the training history: loss, labels changed by each label step, cluster sizes.

    Parameters
    ----------
    model : SelfLabelingClusterer
        A fitted model; its ``net_.history`` is plotted.
    ax : sequence or array of three matplotlib Axes, or None, default=None
        Where to draw the three panels; None creates a figure with three stacked Axes.

    Returns
    -------
    axes : ndarray of shape (3,) of matplotlib Axes
        ``axes[0]``: the training loss per epoch. ``axes[1]``: the fraction of (head, sample)
        labels that each label step changed, one point per label step. ``axes[2]``: the
        smallest and largest cluster over all heads per epoch, with the equal share
        ``n_samples / n_clusters`` that the equipartition constraint aims at as a dashed line.

    Raises
    ------
    NotFittedError
        If ``model`` is not fitted.
    """
    check_is_fitted(model)
    plt = _pyplot()
    if ax is None:
        _, axes = plt.subplots(3, 1, sharex=True, figsize=(6.4, 7.2), layout="constrained")
    else:
        axes = np.asarray(ax, dtype=object).ravel()
        if axes.shape != (3,):
            raise ValueError(f"ax must hold three Axes, got {axes.size}.")
    history = model.net_.history
    epochs = np.asarray(history[:, "epoch"])
    steps = np.asarray(history[:, "label_step"], dtype=bool)

    axes[0].plot(epochs, history[:, "train_loss"], label="training loss")
    axes[0].set_ylabel("cross-entropy")
    axes[0].set_title("Training loss")

    changed = np.asarray(history[:, "labels_changed"])
    axes[1].plot(epochs[steps], changed[steps], marker="o", label="labels changed")
    axes[1].set_ylabel("fraction changed")
    axes[1].set_title("Labels changed by each label step")

    axes[2].plot(epochs, history[:, "min_cluster_size"], label="smallest cluster")
    axes[2].plot(epochs, history[:, "max_cluster_size"], label="largest cluster")
    equal_share = len(model.labels_) / model.n_clusters_
    axes[2].axhline(equal_share, color="grey", linestyle="--", label="equal share N / K")
    axes[2].set_ylabel("samples")
    axes[2].set_xlabel("epoch")
    axes[2].set_title("Cluster sizes of the training labels")
    axes[2].legend()
    return axes


def plot_cluster_sizes(
    model: SelfLabelingClusterer, X: ArrayLike | None = None, ax: Axes | None = None
) -> Axes:
    """Bar chart of the number of samples in each cluster.

    Parameters
    ----------
    model : SelfLabelingClusterer
        A fitted model.
    X : array-like of shape (n_samples, n_features) or None, default=None
        Data to cluster with ``model.predict``; None uses the training clusters ``labels_``.
    ax : matplotlib Axes or None, default=None
        Where to draw; None creates a figure.

    Returns
    -------
    ax : matplotlib Axes
        One bar per cluster, ``0 .. n_clusters - 1`` (empty clusters included), and the equal
        share ``n_samples / n_clusters`` as a dashed line.

    Raises
    ------
    NotFittedError
        If ``model`` is not fitted.
    """
    check_is_fitted(model)
    ax = _axes(ax)
    from matplotlib.ticker import MaxNLocator

    labels = model.labels_ if X is None else model.predict(X)
    sizes = np.bincount(labels, minlength=model.n_clusters_)
    clusters = np.arange(model.n_clusters_)
    ax.bar(clusters, sizes, color=_palette(model.n_clusters_))
    ax.axhline(labels.size / model.n_clusters_, color="grey", linestyle="--", label="N / K")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cluster")
    ax.set_ylabel("samples")
    ax.set_title("Cluster sizes")
    ax.legend()
    return ax


def plot_cluster_count(model: SelfLabelingClusterer, ax: Axes | None = None) -> Axes:
    """Plot the curve of ``n_clusters="auto"``: clusters found against minimum cluster size.

    Parameters
    ----------
    model : SelfLabelingClusterer
        A model fitted with ``n_clusters="auto"``; its ``n_clusters_curve_`` is plotted.
    ax : matplotlib Axes or None, default=None
        Where to draw; None creates a figure.

    Returns
    -------
    ax : matplotlib Axes
        The number of clusters that HDBSCAN finds in the neighbour layout at each minimum
        cluster size (log scale), the size that the estimate uses marked, and the fitted
        ``n_clusters_`` as a dashed line. A flat curve is a firm estimate; a falling one says
        that the number of clusters depends on the resolution asked for.

    Raises
    ------
    NotFittedError
        If ``model`` is not fitted.
    ValueError
        If ``model`` was fitted with a number of clusters rather than ``"auto"``.
    """
    check_is_fitted(model)
    # Absent where partial_fit alone trained the model.
    curve = getattr(model, "n_clusters_curve_", None)
    if curve is None:
        raise ValueError(
            f"This model was fitted with n_clusters={model.n_clusters}: it has no estimate to "
            "plot. Fit it with n_clusters='auto'."
        )
    ax = _axes(ax)
    from matplotlib.ticker import MaxNLocator

    sizes, counts, selected = curve["min_cluster_size"], curve["n_clusters"], curve["selected"]
    ax.plot(sizes, counts, marker="o", color="C0", label="clusters found")
    ax.plot(
        sizes[selected],
        counts[selected],
        marker="o",
        markersize=12,
        fillstyle="none",
        color="C3",
        linestyle="none",
        label="the estimate's size",
    )
    ax.axhline(model.n_clusters_, color="grey", linestyle="--", label="n_clusters_")
    ax.set_xscale("log")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("minimum cluster size (rows)")
    ax.set_ylabel("clusters")
    ax.set_title("Number of clusters")
    ax.legend()
    return ax


def plot_embedding(
    model: SelfLabelingClusterer,
    X: ArrayLike,
    labels: ArrayLike | None = None,
    ax: Axes | None = None,
    method: Literal["pca", "tsne"] = "pca",
    random_state: int | None = None,
) -> Axes:
    """Scatter plot of the learned embedding ``transform(X)`` projected to two dimensions.

    Parameters
    ----------
    model : SelfLabelingClusterer
        A fitted model.
    X : array-like of shape (n_samples, n_features)
        Data to embed.
    labels : array-like of shape (n_samples,) or None, default=None
        Colour of each point, e.g. known classes; None colours by ``model.predict(X)``, with
        the colours of ``plot_cluster_sizes``.
    ax : matplotlib Axes or None, default=None
        Where to draw; None creates a figure.
    method : {"pca", "tsne"}, default="pca"
        Projection to 2-D: ``sklearn.decomposition.PCA`` or ``sklearn.manifold.TSNE`` (slower,
        non-linear; needs more samples than its perplexity, 30).
    random_state : int or None, default=None
        Seed of the t-SNE projection.

    Returns
    -------
    ax : matplotlib Axes
        One scatter collection per colour (label), with a legend when there are at most 20.

    Raises
    ------
    NotFittedError
        If ``model`` is not fitted.
    ValueError
        If ``method`` is unknown or ``labels`` does not have one entry per row of ``X``.
    """
    check_is_fitted(model)
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}.")
    embedding = model.transform(X)
    if labels is None:
        labels = model.predict(X)
        values = np.arange(model.n_clusters_)
    else:
        labels = np.asarray(labels)
        if labels.shape != (len(embedding),):
            raise ValueError(
                f"labels must have shape ({len(embedding)},) like the rows of X, got "
                f"{labels.shape}."
            )
        values = np.unique(labels)
    if method == "pca":
        points = PCA(n_components=min(2, embedding.shape[1])).fit_transform(embedding)
        name, axis_name = "PCA", "PC"
    else:
        points = TSNE(n_components=2, random_state=random_state).fit_transform(embedding)
        name, axis_name = "t-SNE", "t-SNE"
    if points.shape[1] == 1:  # a 1-D embedding: spread the points along x only
        points = np.column_stack([points, np.zeros(len(points))])

    ax = _axes(ax)
    for value, color in zip(values, _palette(len(values)), strict=True):
        mask = labels == value
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=10, color=color, label=str(value))
    ax.set_xlabel(f"{axis_name} 1")
    ax.set_ylabel(f"{axis_name} 2")
    ax.set_title(f"Embedding ({embedding.shape[1]}-D) by {name}")
    if len(values) <= 20:
        ax.legend(markerscale=2, fontsize="small")
    return ax


def plot_confusion(
    model: SelfLabelingClusterer,
    X: ArrayLike | None = None,
    *,
    y_true: ArrayLike,
    ax: Axes | None = None,
) -> Axes:
    """Confusion matrix of known classes against clusters, in Hungarian-matched order.

    Each class is paired with at most one cluster so as to maximise the agreeing samples
    (``scipy.optimize.linear_sum_assignment``). Matched pairs come first, in class order, so
    the diagonal holds them and its sum divided by ``n_samples`` is the matched accuracy
    (``sklearn_selflabel.clustering_accuracy``); unmatched classes and clusters follow.

    Parameters
    ----------
    model : SelfLabelingClusterer
        A fitted model.
    X : array-like of shape (n_samples, n_features) or None, default=None
        Data to cluster with ``model.predict``; None uses the training clusters ``labels_``.
    y_true : array-like of shape (n_samples,)
        Known class of each sample.
    ax : matplotlib Axes or None, default=None
        Where to draw; None creates a figure.

    Returns
    -------
    ax : matplotlib Axes
        The counts as an image (rows: classes, columns: clusters; ``ax.images[0]``), written
        into the cells when there are at most 20 rows and columns, and the matched accuracy in
        the title.

    Raises
    ------
    NotFittedError
        If ``model`` is not fitted.
    ValueError
        If ``y_true`` does not have one entry per sample.
    """
    check_is_fitted(model)
    clusters = model.labels_ if X is None else model.predict(X)
    y_true = np.asarray(y_true)
    if y_true.shape != clusters.shape:
        raise ValueError(
            f"y_true must have shape {clusters.shape}, one class per sample, got {y_true.shape}."
        )
    classes, class_index = np.unique(y_true, return_inverse=True)
    # Counted over all n_clusters, so that empty clusters show as columns of zeros.
    table = np.zeros((classes.size, model.n_clusters_), dtype=np.int64)
    np.add.at(table, (class_index, clusters), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    row_order = np.concatenate([rows, np.setdiff1d(np.arange(classes.size), rows)])
    col_order = np.concatenate([cols, np.setdiff1d(np.arange(model.n_clusters_), cols)])
    table = table[np.ix_(row_order, col_order)]
    accuracy = np.trace(table) / y_true.size

    ax = _axes(ax)
    ax.imshow(table, cmap="Blues", aspect="auto")
    if max(table.shape) <= _MAX_ANNOTATED:
        for (i, j), count in np.ndenumerate(table):
            color = "white" if count > table.max() / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize="small")
    ax.set_xticks(np.arange(col_order.size), labels=[str(c) for c in col_order])
    ax.set_yticks(np.arange(row_order.size), labels=[str(c) for c in classes[row_order]])
    ax.set_xlabel("cluster (matched order)")
    ax.set_ylabel("true class")
    ax.set_title(f"Matched accuracy {accuracy:.3f}")
    return ax


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "sklearn_selflabel.plotting needs matplotlib: pip install matplotlib "
            "(or pip install 'sklearn-selflabel[plot]')."
        ) from exc
    return plt


def _axes(ax: Axes | None) -> Axes:
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(layout="constrained")
    return ax


def _palette(n_colors: int) -> list[tuple[float, float, float, float]]:
    """``n_colors`` distinct colours: qualitative maps up to 20, a rainbow beyond."""
    from matplotlib import colormaps

    if n_colors <= 10:
        return [colormaps["tab10"](i) for i in range(n_colors)]
    if n_colors <= 20:
        return [colormaps["tab20"](i) for i in range(n_colors)]
    return [colormaps["turbo"](i / (n_colors - 1)) for i in range(n_colors)]
