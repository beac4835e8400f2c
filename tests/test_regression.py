"""Recorded outputs: ``labels_``, ``predict`` and ``transform`` of fixed-seed fits.

A change that should not change behaviour must reproduce ``fixtures/regression.npz`` exactly
(on the CPU, one torch thread). A change that is meant to change behaviour re-records the
fixtures in a commit of its own, saying why:

    python tests/test_regression.py --record [NAME ...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.datasets import load_digits, load_iris, make_blobs

from sklearn_selflabel import SelfLabelingClusterer

FIXTURES = Path(__file__).parent / "fixtures" / "regression.npz"

SMALL = dict(
    n_clusters=3,
    n_heads=2,
    hidden_layer_sizes=(16,),
    embedding_dim=8,
    max_epochs=8,
    n_label_steps=5,
    batch_size=32,
    random_state=0,
)


def blobs() -> np.ndarray:
    X, _ = make_blobs(n_samples=150, centers=3, n_features=5, random_state=0)
    return X.astype(np.float32)


def uneven_blobs() -> np.ndarray:
    X, _ = make_blobs(n_samples=[30, 60, 120], n_features=4, random_state=1)
    return X.astype(np.float32)


def digits() -> np.ndarray:
    return (load_digits().data[:200] / 16.0).astype(np.float32)


def iris() -> np.ndarray:
    X = load_iris().data
    return ((X - X.mean(axis=0)) / X.std(axis=0)).astype(np.float32)


def sparse_rows() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    X = blobs()
    X[rng.random(X.shape) < 0.4] = 0.0
    return sp.csr_matrix(X)


def documents() -> sp.csr_matrix:
    """Non-negative sparse rows, which the estimator treats as documents (TF-IDF, counts)."""
    return abs(sparse_rows())


def fit(X, **params) -> tuple[SelfLabelingClusterer, object]:
    return SelfLabelingClusterer(**{**SMALL, **params}).fit(X), X


def chunks(label_mode: str) -> tuple[SelfLabelingClusterer, np.ndarray]:
    X = blobs()
    model = SelfLabelingClusterer(**{**SMALL, "label_mode": label_mode, "queue_size": 64})
    for start in range(0, len(X), 50):
        model.partial_fit(X[start : start + 50])
    return model, X


def resumed() -> tuple[SelfLabelingClusterer, np.ndarray]:
    X = blobs()
    with tempfile.TemporaryDirectory() as directory:
        SelfLabelingClusterer(**{**SMALL, "max_epochs": 4, "checkpoint_dir": directory}).fit(X)
        model = SelfLabelingClusterer(**SMALL, checkpoint_dir=directory, warm_start=True).fit(X)
    return model, X


# name -> a function that returns a fitted model and its training rows
CONFIGURATIONS = {
    "tabular": lambda: fit(blobs()),
    "tabular_equal_sizes": lambda: fit(blobs(), cluster_sizes="equal"),
    "tabular_uneven_estimated": lambda: fit(uneven_blobs(), max_epochs=12),
    "tabular_propagation": lambda: fit(blobs(), propagation=True),
    "image": lambda: fit(
        digits(), n_clusters=10, image_shape=(8, 8), max_epochs=4, n_init=1, batch_size=64
    ),
    "image_no_propagation": lambda: fit(
        digits(), n_clusters=10, image_shape=(8, 8), max_epochs=4, propagation=False, n_init=1
    ),
    "nonnegative_layout": lambda: fit(digits(), n_clusters=10),
    # The defaults on a real table: its label steps wait for the network to learn the start.
    "tabular_iris_defaults": lambda: (SelfLabelingClusterer(3, random_state=0).fit(iris()), iris()),
    "sparse": lambda: fit(sparse_rows()),
    "sparse_documents": lambda: fit(documents()),
    "online": lambda: fit(blobs(), label_mode="online", queue_size=64),
    "partial_fit_offline": lambda: chunks("offline"),
    "partial_fit_online": lambda: chunks("online"),
    "n_init_2": lambda: fit(blobs(), n_init=2),
    "checkpoint_resume": resumed,
}


def outputs(name: str) -> dict[str, np.ndarray]:
    model, X = CONFIGURATIONS[name]()
    result = {
        "labels": model.labels_,
        "predict": model.predict(X),
        "transform": model.transform(X),
    }
    if name == "tabular":
        import dask.array  # a test dependency

        dask_rows = dask.array.from_array(X, chunks=(40, X.shape[1]))
        result["dask_predict"] = model.predict(dask_rows).compute()
    return result


def platform() -> str:
    """What the recorded floats depend on besides the code: torch's version and CPU kernels."""
    bfloat16 = "native bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no bfloat16"
    return f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {bfloat16}"


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    with np.load(FIXTURES) as archive:
        arrays = dict(archive)
    if str(arrays["platform"]) != platform():
        # Other kernels round differently, and training amplifies the last bits.
        pytest.skip(f"fixtures recorded with {arrays['platform']}, this is {platform()}")
    return arrays


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_outputs_match_the_recorded_fixtures(name, recorded):
    for output, value in outputs(name).items():
        expected = recorded[f"{name}/{output}"]
        np.testing.assert_array_equal(value, expected, err_msg=f"{name}: {output}")


def _record(names: list[str]) -> None:
    torch.set_num_threads(1)  # as in the test session (tests/conftest.py)
    arrays = {}
    if FIXTURES.exists():
        with np.load(FIXTURES) as archive:
            arrays = dict(archive)
    for name in names or list(CONFIGURATIONS):
        for output, value in outputs(name).items():
            arrays[f"{name}/{output}"] = value
        print(f"recorded {name}")
    arrays["platform"] = np.array(platform())
    FIXTURES.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURES, **arrays)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--record"]:
        sys.exit(__doc__)
    _record(sys.argv[2:])
