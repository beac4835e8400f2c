"""What a fit prints: a progress bar on stderr at verbose=1, skorch's table at 2, nothing at 0."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from sklearn_selflabel import SelfLabelingClusterer

MAX_EPOCHS = 4


@pytest.fixture(scope="module")
def X():
    return make_blobs(n_samples=120, centers=3, n_features=4, random_state=0)[0]


def fit(X, verbose: int) -> SelfLabelingClusterer:
    return SelfLabelingClusterer(
        n_clusters=3,
        n_heads=2,
        hidden_layer_sizes=(16,),
        embedding_dim=8,
        max_epochs=MAX_EPOCHS,
        batch_size=32,
        random_state=0,
        verbose=verbose,
    ).fit(X)


def test_verbose_0_prints_nothing(X, capfd):
    fit(X, verbose=0)
    assert capfd.readouterr() == ("", "")


def test_verbose_1_shows_a_progress_bar_over_epochs_on_stderr(X, capfd):
    model = fit(X, verbose=1)
    out, err = capfd.readouterr()
    assert out == ""
    final = err.rstrip().split("\r")[-1]  # tqdm redraws the bar in place
    assert f"{MAX_EPOCHS}/{MAX_EPOCHS}" in final and "100%" in final
    last = model.net_.history[-1]
    assert f"train_loss={last['train_loss']:.3g}" in final
    assert "labels_changed=" in final
    assert f"min_cluster_size={last['min_cluster_size']}" in final
    assert f"max_cluster_size={last['max_cluster_size']}" in final


def test_verbose_2_prints_the_per_epoch_table_on_stdout(X, capfd):
    model = fit(X, verbose=2)
    out, err = capfd.readouterr()
    assert err == ""
    header = out.splitlines()[0]
    for column in ("epoch", "train_loss", "labels_changed", "min_cluster_size"):
        assert column in header
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == MAX_EPOCHS
    np.testing.assert_array_equal(model.predict(X), model.labels_)
