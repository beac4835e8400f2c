"""
Quickstart: cluster handwritten digits
======================================

Clusters scikit-learn's digits (1797 images of 8x8 pixels, 10 classes) with the default
``SelfLabelingClusterer``, with the same plus ``image_shape=(8, 8)`` (the rows are images),
and with ``KMeans(n_init=10)``, over two seeds each, and prints the
Hungarian-matched accuracy (ACC), NMI, ARI and fit seconds. The classes are used only to score.
For the self-labelling fits it also prints the smallest of their clusters, relative to an
equal share ``N / K``: training starts with equal clusters and, from half its label schedule
on, lets them follow the sizes estimated from the embedding (``cluster_sizes="estimated"``).
"""

import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

SEEDS = (0, 1)


def smallest_cluster_share(model) -> float:
    """Smallest cluster of the fit, divided by an equal share ``N / K``."""
    sizes = np.bincount(model.labels_, minlength=model.n_clusters)
    return sizes.min() / (len(model.labels_) / model.n_clusters)


def evaluate(make_model, X, y):
    """Mean and sd of ACC, NMI, ARI and fit seconds over SEEDS, and the fitted models."""
    rows, models = [], []
    for seed in SEEDS:
        model = make_model(seed)
        start = time.perf_counter()
        labels = model.fit_predict(X)
        seconds = time.perf_counter() - start
        models.append(model)
        rows.append(
            (
                clustering_accuracy(y, labels),
                normalized_mutual_info_score(y, labels),
                adjusted_rand_score(y, labels),
                seconds,
            )
        )
    rows = np.array(rows)
    return rows.mean(axis=0), rows.std(axis=0), models


def main() -> None:
    X, y = load_digits(return_X_y=True)
    models = {
        "SelfLabelingClusterer": lambda seed: SelfLabelingClusterer(
            n_clusters=10, random_state=seed
        ),
        # The rows are 8x8 images: image views, a small conv net, invariance propagation.
        "... image_shape=(8, 8)": lambda seed: SelfLabelingClusterer(
            n_clusters=10, image_shape=(8, 8), random_state=seed
        ),
        "KMeans(n_init=10)": lambda seed: KMeans(n_clusters=10, n_init=10, random_state=seed),
    }
    shares = []
    print(f"digits: {X.shape[0]} x {X.shape[1]}, mean +- sd over seeds {SEEDS}\n")
    print(f"| {'model':<22} | {'ACC':^13} | {'NMI':^13} | {'ARI':^13} | {'fit s':^12} |")
    print(f"|{'-' * 24}|{'-' * 15}|{'-' * 15}|{'-' * 15}|{'-' * 14}|")
    for name, make_model in models.items():
        mean, sd, fitted = evaluate(make_model, X, y)
        cells = " | ".join(f"{m:.3f} +- {s:.3f}" for m, s in zip(mean[:3], sd[:3], strict=True))
        print(f"| {name:<22} | {cells} | {mean[3]:5.1f} +- {sd[3]:3.1f} |")
        if isinstance(fitted[0], SelfLabelingClusterer):
            shares.extend(smallest_cluster_share(model) for model in fitted)
    print(f"\nSmallest cluster of the self-labelling fits: {min(shares):.2f} x N/K")


if __name__ == "__main__":
    main()
