"""Scale: online label mode, partial_fit, out-of-core inputs, bounded inference, accelerate."""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from sklearn.datasets import make_blobs

from sklearn_selflabel import SelfLabelingClusterer, _data, clustering_accuracy
from sklearn_selflabel._data import (
    ShuffledBatches,
    is_out_of_core,
)
from sklearn_selflabel._geometry import profile_rows
from sklearn_selflabel._online import QueuedSinkhorn, all_reduce_sum


def small(**params) -> SelfLabelingClusterer:
    defaults = dict(
        n_clusters=4,
        hidden_layer_sizes=(32,),
        embedding_dim=8,
        n_heads=2,
        max_epochs=6,
        batch_size=32,
        queue_size=128,
        propagation=False,
        random_state=0,
    )
    return SelfLabelingClusterer(**{**defaults, **params})


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=400, centers=4, n_features=6, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def online(blobs):
    return small(label_mode="online").fit(blobs[0])


class RowReader:
    """An out-of-core array-like: rows by slice or sorted index, never converted whole."""

    def __init__(self, X: np.ndarray) -> None:
        self.data = X
        self.shape = X.shape
        self.dtype = X.dtype
        self.largest_read = 0

    def __getitem__(self, key):
        rows = self.data[key]
        self.largest_read = max(self.largest_read, len(rows))
        return rows

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was loaded")


# ------------------------------------------------------------------------ online label mode


def test_online_mode_finds_the_blobs_without_an_n_sized_label_table(blobs, online):
    X, y = blobs
    assert clustering_accuracy(y, online.labels_) > 0.95
    assert not hasattr(online.net_, "label_table_")
    np.testing.assert_array_equal(online.predict(X), online.labels_)
    assert online.head_losses_.shape == (2,)
    assert online.best_head_ == np.argmin(online.head_losses_)
    history = online.net_.history
    assert len(history) == online.n_iter_ == 6
    assert not any(history[:, "label_step"])
    # Over an epoch the online labels of every head cover the data about equally.
    assert 0 < history[-1, "min_cluster_size"] <= 100 <= history[-1, "max_cluster_size"] < 200


def test_online_state_does_not_grow_with_the_data(blobs):
    X, _ = blobs
    sizes = []
    for n_samples in (100, 400):
        model = small(label_mode="online", max_epochs=1).fit(X[:n_samples])
        sinkhorn = dict(model.net_.callbacks_)["label_step"].sinkhorn_
        sizes.append((tuple(sinkhorn.queue.shape), tuple(sinkhorn.log_scaling.shape)))
    assert sizes[0] == sizes[1] == ((2, 128, 4), (2, 4))


def test_online_fit_is_reproducible(blobs):
    X, _ = blobs
    first = small(label_mode="online", max_epochs=2).fit(X)
    second = small(label_mode="online", max_epochs=2).fit(X)
    np.testing.assert_array_equal(first.labels_, second.labels_)
    np.testing.assert_array_equal(first.transform(X), second.transform(X))


def _balanced_stream(n_batches: int, batch: int, n_clusters: int, seed: int):
    """Logits whose unconstrained argmax puts half of all rows in cluster 0."""
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        logits = rng.normal(size=(1, batch, n_clusters)).astype(np.float32)
        logits[0, : batch // 2, 0] += 3.0
        yield torch.from_numpy(logits)


def test_queued_sinkhorn_balances_a_skewed_stream():
    sinkhorn = QueuedSinkhorn(1, 5, queue_size=400, lamb=5.0, n_iter=3, device="cpu")
    counts = np.zeros(5)
    for i, logits in enumerate(_balanced_stream(40, 100, 5, seed=0)):
        labels = sinkhorn(logits)
        assert labels.shape == (1, 100) and labels.dtype == torch.int64
        if i >= 20:
            counts += np.bincount(labels[0].numpy(), minlength=5)
    # Without the constraint cluster 0 would take more than half of the rows.
    assert counts.max() / counts.min() < 1.3
    assert float(sinkhorn.marginal_error) < 0.05


def test_queue_keeps_the_most_recent_rows_in_fifo_order():
    sinkhorn = QueuedSinkhorn(1, 3, queue_size=5, lamb=1.0, n_iter=1, device="cpu")
    for start in (0, 3, 6):
        rows = torch.arange(start, start + 3, dtype=torch.float32)
        sinkhorn(rows.reshape(1, 3, 1).expand(1, 3, 3).contiguous())
    kept = sorted(sinkhorn.queue[0, :, 0].tolist())
    assert sinkhorn.n_queued == 5 and kept == [4.0, 5.0, 6.0, 7.0, 8.0]


def test_reduce_hook_makes_data_parallel_labels_equal_one_process_labels():
    """Two 'processes' (threads) summing cluster masses solve the problem of their union."""
    stream = list(_balanced_stream(6, 64, 4, seed=1))
    single = QueuedSinkhorn(1, 4, queue_size=256, lamb=5.0, n_iter=3, device="cpu")
    expected = [single(torch.cat([x[:, ::2], x[:, 1::2]], dim=1)) for x in stream]
    scalings: list[torch.Tensor] = [None, None]

    barrier = threading.Barrier(2)
    shared: list[torch.Tensor] = [None, None]
    results: list[list[torch.Tensor]] = [[], []]

    def worker(rank: int) -> None:
        def reduce(tensor: torch.Tensor) -> torch.Tensor:
            shared[rank] = tensor.clone()
            barrier.wait()
            tensor.copy_(shared[0] + shared[1])
            barrier.wait()
            return tensor

        sinkhorn = QueuedSinkhorn(
            1, 4, queue_size=128, lamb=5.0, n_iter=3, device="cpu", reduce=reduce
        )
        for x in stream:
            results[rank].append(sinkhorn(x[:, rank::2].contiguous()))
        scalings[rank] = sinkhorn.log_scaling

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for rank in (0, 1):
        torch.testing.assert_close(scalings[rank], single.log_scaling, rtol=1e-4, atol=1e-4)
    parallel = torch.stack([torch.cat([results[0][i], results[1][i]], dim=1) for i in range(6)])
    assert (parallel == torch.stack(expected)).float().mean() > 0.99


def test_all_reduce_sum_is_the_identity_without_and_with_a_one_process_group(tmp_path):
    tensor = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(tensor) is tensor and tensor.tolist() == [1.0, 2.0]
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        assert all_reduce_sum(tensor).tolist() == [1.0, 2.0]
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ partial_fit


@pytest.mark.parametrize("label_mode", ["online", "offline"])
def test_partial_fit_learns_from_chunks(blobs, label_mode):
    X, y = blobs
    model = small(label_mode=label_mode)
    for epoch in range(10):
        for chunk in np.array_split(np.random.default_rng(epoch).permutation(len(X)), 2):
            model.partial_fit(X[chunk])
    assert model.n_iter_ == 20 and model.labels_.shape == (200,)
    assert clustering_accuracy(y, model.predict(X)) > 0.95


def test_partial_fit_sequences_are_reproducible(blobs):
    X, _ = blobs
    first, second = small(label_mode="online"), small(label_mode="online")
    for chunk in (X[:200], X[200:]):
        first.partial_fit(chunk)
        second.partial_fit(chunk)
    np.testing.assert_array_equal(first.transform(X), second.transform(X))


def test_partial_fit_continues_an_offline_fit(blobs):
    X, _ = blobs
    model = small(max_epochs=4).fit(X)
    model.partial_fit(X[:100])
    assert model.n_iter_ == 5 and model.labels_.shape == (100,)


def test_partial_fit_checks_features_and_mode(blobs):
    X, _ = blobs
    model = small(label_mode="online").partial_fit(X)
    with pytest.raises(ValueError, match="6 features"):
        model.partial_fit(X[:, :5])
    with pytest.raises(ValueError, match="label_mode='offline' differs"):
        model.set_params(label_mode="offline").partial_fit(X)


# ----------------------------------------------------------------------- out-of-core input


def test_memmap_fit_matches_in_memory_fit(blobs, tmp_path):
    X, _ = blobs
    path = tmp_path / "X.npy"
    np.save(path, X)
    mapped = np.load(path, mmap_mode="r")
    assert is_out_of_core(mapped) and not is_out_of_core(X)
    for label_mode in ("offline", "online"):
        in_memory = small(label_mode=label_mode, max_epochs=3).fit(X)
        from_disk = small(label_mode=label_mode, max_epochs=3).fit(mapped)
        np.testing.assert_array_equal(from_disk.labels_, in_memory.labels_)
        np.testing.assert_array_equal(from_disk.predict(mapped), in_memory.predict(X))


def test_array_likes_are_read_in_bounded_chunks(blobs, monkeypatch):
    X, _ = blobs
    monkeypatch.setattr(_data, "_CHUNK_ROWS", 100)
    reader = RowReader(X.astype(np.float64))
    model = small(label_mode="online", max_epochs=2).fit(reader)
    assert model.n_features_in_ == 6
    np.testing.assert_array_equal(model.predict(reader), model.predict(X))
    assert 0 < reader.largest_read <= 100 < len(X)


def test_out_of_core_input_is_checked_chunk_by_chunk(blobs, tmp_path):
    X = blobs[0].copy()
    X[397, 2] = np.nan
    path = tmp_path / "X.npy"
    np.save(path, X)
    with pytest.raises(ValueError, match="NaN"):
        small().fit(np.load(path, mmap_mode="r"))
    with pytest.raises(ValueError, match="real numbers"):
        small().fit(RowReader(np.ones((10, 2), dtype=np.complex64)))
    with pytest.raises(ValueError, match="1 sample"):
        small().fit(RowReader(np.ones((1, 2))))


def test_column_statistics_are_exact_across_chunks():
    X = np.random.default_rng(0).normal(3.0, 2.0, size=(20_000, 3)).astype(np.float32)
    profile = profile_rows(X)
    mean, var = profile.mean, profile.variance
    np.testing.assert_allclose(mean, X.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(var, X.astype(np.float64).var(axis=0), rtol=1e-10)


def test_shuffled_batches_are_a_batch_sampler_for_accelerate():
    sampler = ShuffledBatches(10, 4, np.random.default_rng(0))
    assert isinstance(sampler, torch.utils.data.BatchSampler)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))


# ------------------------------------------------------------------------------ accelerate


@pytest.mark.parametrize("label_mode", ["online", "offline"])
def test_single_process_accelerator_trains_like_the_plain_net(blobs, label_mode):
    accelerate = pytest.importorskip("accelerate")
    X, _ = blobs
    accelerator = accelerate.Accelerator(cpu=True, device_placement=False)
    plain = small(label_mode=label_mode, max_epochs=3).fit(X)
    accelerated = small(label_mode=label_mode, max_epochs=3, accelerator=accelerator).fit(X)
    assert type(accelerated.net_).__name__.startswith("Accelerated")
    np.testing.assert_array_equal(accelerated.labels_, plain.labels_)
    np.testing.assert_allclose(accelerated.transform(X), plain.transform(X), rtol=1e-5)


def test_two_processes_train_one_model_in_either_label_mode(tmp_path):
    # A real data-parallel fit: two CPU processes under torchrun, gloo, DDP-wrapped modules.
    pytest.importorskip("accelerate")
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    script = Path(__file__).with_name("distributed_fit.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "localhost", "--master_port", str(port), str(script)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [*command, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [rank["n_processes"] for rank in ranks] == [2, 2]
    for label_mode in ("offline", "online"):
        first, second = (rank[label_mode] for rank in ranks)
        # One model: the same weights and labels in both processes, and the blobs found.
        assert first["weights"] == second["weights"]
        assert first["labels"] == second["labels"]
        assert first["accuracy"] > 0.95


def test_accelerator_settings_are_checked(blobs):
    accelerate = pytest.importorskip("accelerate")
    X, _ = blobs
    placing = accelerate.Accelerator(cpu=True)
    with pytest.raises(ValueError, match="device_placement=False"):
        small(accelerator=placing).fit(X)
    accelerator = accelerate.Accelerator(cpu=True, device_placement=False)
    with pytest.raises(ValueError, match="propagation is not supported"):
        small(accelerator=accelerator, propagation=True).fit(X)
    with pytest.raises(ValueError, match="partial_fit"):
        small(accelerator=accelerator, label_mode="online").partial_fit(X)
    with pytest.raises(ValueError, match="n_init=2 cannot be combined with an accelerator"):
        small(accelerator=accelerator, n_init=2).fit(X)
