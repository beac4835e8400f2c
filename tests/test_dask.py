"""Dask: lazy block-wise inference on dask arrays; GridSearchCV on a distributed cluster."""

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.model_selection import GridSearchCV

from sklearn_selflabel import SelfLabelingClusterer

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")


def small(**params) -> SelfLabelingClusterer:
    defaults = dict(
        n_clusters=3,
        hidden_layer_sizes=(16,),
        embedding_dim=4,
        n_heads=2,
        max_epochs=4,
        batch_size=32,
        propagation=False,
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


@pytest.mark.parametrize(
    "method, tail, dtype",
    [
        ("predict", (), np.int64),
        ("predict_proba", (3,), np.float64),
        ("transform", (4,), np.float32),
    ],
)
def test_dask_input_gives_a_lazy_dask_array_computed_blockwise(blobs, fitted, method, tail, dtype):
    X, _ = blobs
    blocks_read = []

    def record(block):
        blocks_read.append(block.shape)
        return block

    # Columns split in two: the estimator rechunks to whole rows.
    source = da.from_array(X, chunks=(40, 3)).map_blocks(record, meta=np.empty((0, 0)))
    with dask.config.set(scheduler="synchronous"):
        out = getattr(fitted, method)(source)
        assert isinstance(out, da.Array) and not blocks_read
        assert out.shape == (150, *tail) and out.dtype == dtype
        assert out.chunks[0] == (40, 40, 40, 30)
        computed = out.compute()
    assert len(blocks_read) == 8
    assert isinstance(computed, np.ndarray) and computed.dtype == dtype
    np.testing.assert_array_equal(computed, getattr(fitted, method)(X))


def test_dask_input_with_the_wrong_number_of_features(blobs, fitted):
    with pytest.raises(ValueError, match="4 features.*expecting 5"):
        fitted.predict(da.from_array(blobs[0][:, :4], chunks=50))


def test_grid_search_on_a_dask_cluster_matches_the_local_backend(blobs):
    X, _ = blobs
    grid = {"lr": [1e-3, 1e-2], "embedding_dim": [2, 4]}
    local = GridSearchCV(small(), grid, cv=2).fit(X)
    with (
        distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
        distributed.get_task_stream(client) as tasks,
        joblib.parallel_backend("dask"),
    ):
        remote = GridSearchCV(small(), grid, cv=2).fit(X)
    assert len(tasks.data) >= 8  # the 4 candidates x 2 folds ran on the cluster
    assert remote.best_params_ == local.best_params_
    np.testing.assert_allclose(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"], rtol=1e-6
    )
