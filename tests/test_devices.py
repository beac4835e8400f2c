"""Devices: the rule of ``device="auto"``, and fits on CUDA (``-m cuda``, skipped without one)."""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from sklearn_selflabel import SelfLabelingClusterer
from sklearn_selflabel._settings import _MIN_CUDA_VALUES, resolve_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


@pytest.mark.parametrize("cuda_available", [True, False])
def test_auto_device_takes_cuda_for_large_data_only(monkeypatch, cuda_available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    large = (_MIN_CUDA_VALUES // 100, 100)
    small = (_MIN_CUDA_VALUES // 100 - 1, 100)
    assert resolve_device("auto", large).type == ("cuda" if cuda_available else "cpu")
    assert resolve_device("auto", small).type == "cpu"
    assert resolve_device("cpu", large).type == "cpu"


@pytest.mark.cuda
@cuda
def test_a_fit_on_cuda_clusters_and_predicts_there():
    X, y = make_blobs(n_samples=600, centers=4, n_features=8, random_state=0)
    model = SelfLabelingClusterer(4, device="cuda", max_epochs=30, random_state=0).fit(X)
    assert model.device_.startswith("cuda")
    assert adjusted_rand_score(y, model.labels_) > 0.95
    np.testing.assert_array_equal(model.predict(X), model.labels_)


@pytest.mark.cuda
@cuda
def test_an_image_fit_on_cuda_matches_the_cpu_fit_closely():
    rng = np.random.default_rng(0)
    X = rng.random((400, 64)).astype(np.float32)
    X[:200, :32] += 1.0
    y = np.repeat([1, 0], 200)
    fits = {
        device: SelfLabelingClusterer(
            2, image_shape=(8, 8), device=device, max_epochs=20, random_state=0
        ).fit(X)
        for device in ("cpu", "cuda")
    }
    for model in fits.values():
        assert adjusted_rand_score(y, model.labels_) > 0.9
