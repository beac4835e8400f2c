"""The data sets of ``benchmarks/suite.py``: every shared set that is not an image set.

``load(name, data_dir)`` gives ``(X, y)``: tables standardised (as every method of the suite
sees them), pixels scaled to [0, 1] as flat rows, embeddings and TF-IDF rows as stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.preprocessing import StandardScaler

UCI = (
    "banknote",
    "breast_cancer_wisconsin",
    "ecoli",
    "glass",
    "haberman",
    "ionosphere",
    "new_thyroid",
    "phoneme",
    "pima",
    "seeds",
    "sonar",
    "winequality_red",
)
SKLEARN_TABLES = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer}
# name -> (kind of rows, file under --data-dir, or None for sklearn's)
DATASETS: dict[str, tuple[str, str | None]] = {
    **{name: ("table", f"uci/{name}.npz") for name in UCI},
    **{name: ("table", None) for name in SKLEARN_TABLES},
    "letter": ("table", "letter.npz"),
    "digits": ("pixels", None),
    "usps": ("pixels", "usps.npz"),
    "mnist": ("pixels", "mnist_test.npz"),
    "mnist_lt": ("pixels", "mnist_test.npz"),
    "mvtec_resnet18": ("embedding", "embeddings/mvtec_resnet18.npz"),
    "svhn3_resnet18": ("embedding", "embeddings/svhn3_resnet18.npz"),
    "text_2topics": ("text", "text_2topics.npz"),
}


def available(name: str, data_dir: Path) -> bool:
    file = DATASETS[name][1]
    return file is None or (Path(data_dir) / file).exists()


def long_tailed(y: np.ndarray, imbalance: float = 10.0) -> np.ndarray:
    """Row indices of a long-tailed subset: class ``i`` of ``K`` keeps its first
    ``round(n_max * imbalance ** (-i / (K - 1)))`` rows, as CIFAR-10-LT is built
    (``n_max`` = 1000 for MNIST-test)."""
    classes = np.unique(y)
    keep = []
    for i, label in enumerate(classes):
        n_keep = round(1000 * imbalance ** (-i / (len(classes) - 1)))
        keep.append(np.flatnonzero(y == label)[:n_keep])
    return np.sort(np.concatenate(keep))


def load(name: str, data_dir: Path) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray]:
    """``(X, y)`` of the set ``name`` (see the module docstring)."""
    kind, file = DATASETS[name]
    if name in SKLEARN_TABLES:
        X, y = SKLEARN_TABLES[name](return_X_y=True)
    elif name == "digits":
        X, y = load_digits(return_X_y=True)
        return (X / 16.0).astype(np.float32), y
    else:
        data = np.load(Path(data_dir) / file)
        if name == "text_2topics":
            shape = tuple(data["shape"])
            X = sp.csr_matrix((data["data"], data["indices"], data["indptr"]), shape=shape)
            return X, data["y"]
        X, y = data["X"], data["y"]
    if kind == "table":
        return StandardScaler().fit_transform(X).astype(np.float32), np.asarray(y)
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    if name.startswith("mnist"):
        X /= 255.0
    if name == "mnist_lt":
        keep = long_tailed(y)
        X, y = X[keep], y[keep]
    return X, np.asarray(y)
