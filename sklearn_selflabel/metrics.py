"""Clustering accuracy: the share of samples whose cluster maps to their class, best mapping."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics.cluster import contingency_matrix


def clustering_accuracy(labels_true, labels_pred) -> float:
    """Hungarian-matched accuracy (ACC) of a clustering against known classes.

    Clusters are mapped one-to-one to classes so as to maximise the number of agreeing samples
    (Kuhn-Munkres on the contingency table); ACC is that number divided by ``n_samples``.
    The numbers of clusters and classes may differ: unmatched clusters count as errors.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth classes.
    labels_pred : array-like of shape (n_samples,)
        Cluster labels to evaluate.

    Returns
    -------
    float
        Accuracy in ``[0, 1]``; 1 means a perfect clustering up to a renaming of clusters.

    Examples
    --------
    >>> from sklearn_selflabel.metrics import clustering_accuracy
    >>> clustering_accuracy([0, 0, 1, 1, 2], [1, 1, 0, 0, 0])
    0.8
    """
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
        raise ValueError(
            "labels_true and labels_pred must be 1-D arrays of the same length, got shapes "
            f"{labels_true.shape} and {labels_pred.shape}."
        )
    if labels_true.size == 0:
        raise ValueError("labels_true and labels_pred are empty.")
    table = contingency_matrix(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / labels_true.size)
