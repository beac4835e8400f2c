"""
Quickstart: cluster handwritten digits
======================================

Clusters scikit-learn's digits (1797 images of 8x8 pixels, 10 classes) with the default
``SelfLabelingClusterer``, with the same plus ``image_shape=(8, 8)`` (the rows are images),
and with ``KMeans(n_init=10)``, and prints the Hungarian-matched accuracy (ACC), NMI, ARI, fit
seconds and the smallest cluster relative to an equal share ``N / K`` (the self-labelling fits
learn the clusters' sizes, ``cluster_sizes="estimated"``). The classes are used only to score.
``benchmarks/quality.py`` gives the same comparison over five seeds and more data sets.
"""

import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

SEED = 0


def evaluate(model, X, y) -> str:
    """One table row: ACC, NMI, ARI, fit seconds and the smallest cluster over ``N / K``."""
    start = time.perf_counter()
    labels = model.fit_predict(X)
    seconds = time.perf_counter() - start
    sizes = np.bincount(labels, minlength=model.n_clusters)
    smallest = sizes.min() / (len(labels) / model.n_clusters)
    scores = (
        clustering_accuracy(y, labels),
        normalized_mutual_info_score(y, labels),
        adjusted_rand_score(y, labels),
    )
    return " | ".join(f"{score:.3f}" for score in scores) + f" | {seconds:5.1f} | {smallest:.2f}"


def main() -> None:
    X, y = load_digits(return_X_y=True)
    models = {
        "SelfLabelingClusterer": SelfLabelingClusterer(n_clusters=10, random_state=SEED),
        # The rows are 8x8 images: image views, a small conv net, invariance propagation.
        "... image_shape=(8, 8)": SelfLabelingClusterer(
            n_clusters=10, image_shape=(8, 8), random_state=SEED
        ),
        "KMeans(n_init=10)": KMeans(n_clusters=10, n_init=10, random_state=SEED),
    }
    print(f"digits: {X.shape[0]} x {X.shape[1]}, random_state={SEED}\n")
    print(f"| {'model':<22} | ACC   | NMI   | ARI   | fit s | smallest |")
    print(f"|{'-' * 24}|-------|-------|-------|-------|----------|")
    for name, model in models.items():
        print(f"| {name:<22} | {evaluate(model, X, y)}     |")


if __name__ == "__main__":
    main()
