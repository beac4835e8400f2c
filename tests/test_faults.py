"""Fits that survive faults: Ctrl-C, crashes with checkpoints, CUDA pickles, threads."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from skorch.exceptions import DeviceWarning

from sklearn_selflabel import SelfLabelingClusterer
from sklearn_selflabel._checkpoint import CHECKPOINT_NAME, load_state, read_checkpoint
from sklearn_selflabel.modules import MLPEncoder

N_SAMPLES, BATCH_SIZE = 150, 32
BATCHES_PER_EPOCH = 5  # 150 rows in batches of 32


SMALL = dict(
    n_clusters=3,
    n_heads=2,
    hidden_layer_sizes=(16,),
    embedding_dim=8,
    max_epochs=6,
    n_label_steps=4,
    batch_size=BATCH_SIZE,
    random_state=0,
)


def small(**params) -> SelfLabelingClusterer:
    return SelfLabelingClusterer(**{**SMALL, **params})


@pytest.fixture(scope="module")
def X():
    X, _ = make_blobs(n_samples=N_SAMPLES, centers=3, n_features=5, random_state=0)
    return X.astype(np.float32)


@pytest.fixture(scope="module")
def fitted(X):
    return small().fit(X)


class InterruptedEncoder(MLPEncoder):
    """The default encoder, except that its ``interrupt_at``-th training batch raises
    KeyboardInterrupt, as Ctrl-C would."""

    def __init__(self, n_features: int, interrupt_at: int) -> None:
        super().__init__(n_features, (16,), 8)
        self.interrupt_at = interrupt_at
        self.n_training_batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.n_training_batches += 1
            if self.n_training_batches == self.interrupt_at:
                raise KeyboardInterrupt
        return super().forward(x)


def interrupted(at_batch: int, **params) -> SelfLabelingClusterer:
    return small(module=InterruptedEncoder, module_params={"interrupt_at": at_batch}, **params)


# ------------------------------------------------------------------------------- Ctrl-C


class CountingEncoder(MLPEncoder):
    """The default encoder, counting training batches over all its instances (all the
    initialisations of a fit); the ``interrupt_at``-th raises KeyboardInterrupt."""

    n_training_batches = 0
    interrupt_at: int | None = None

    def __init__(self, n_features: int) -> None:
        super().__init__(n_features, (16,), 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            cls = type(self)
            cls.n_training_batches += 1
            if cls.n_training_batches == cls.interrupt_at:
                raise KeyboardInterrupt
        return super().forward(x)


@pytest.mark.parametrize("on_interrupt", ["restore", "keep"])
def test_interrupt_in_a_later_initialization(X, on_interrupt, monkeypatch):
    monkeypatch.setattr(CountingEncoder, "n_training_batches", 0)
    monkeypatch.setattr(CountingEncoder, "interrupt_at", None)
    first = small(module=CountingEncoder).fit(X)
    per_fit = CountingEncoder.n_training_batches
    # Three batches into epoch 3 of the second of three initialisations.
    monkeypatch.setattr(CountingEncoder, "n_training_batches", 0)
    monkeypatch.setattr(CountingEncoder, "interrupt_at", per_fit + 2 * BATCHES_PER_EPOCH + 3)
    model = small(module=CountingEncoder, n_init=3, on_interrupt=on_interrupt)
    if on_interrupt == "restore":
        with pytest.raises(KeyboardInterrupt, match="after 2 of 6 epochs"):
            model.fit(X)
        assert not hasattr(model, "net_") and not hasattr(model, "labels_")
        return
    with pytest.warns(UserWarning, match="interrupted in epoch 3 of 6.*after epoch 2"):
        model.fit(X)
    # The third initialisation never started; the kept fit is the better of the two that ran.
    assert model.init_scores_.shape == (2,)
    assert model.init_scores_[0] == pytest.approx(first.init_scores_[0], rel=1e-6)
    kept = int(model.init_scores_.argmax())
    assert model.n_iter_ == (6 if kept == 0 else 2)
    assert model.score(X) == pytest.approx(model.init_scores_[kept], rel=1e-6)


def test_interrupt_in_last_epoch_restores_the_previous_fit(X, fitted):
    model = small().fit(X)
    before, net = model.transform(X), model.net_
    last_epoch_batch = 5 * BATCHES_PER_EPOCH + 2
    model.set_params(module=InterruptedEncoder, module_params={"interrupt_at": last_epoch_batch})
    with pytest.raises(KeyboardInterrupt, match="after 5 of 6 epochs"):
        model.fit(X)
    assert model.net_ is net
    np.testing.assert_array_equal(model.transform(X), before)


def test_keep_fits_from_the_last_completed_epoch(X):
    # Interrupted at the first batch of epoch 3, nothing of epoch 3 was trained yet; later in
    # epoch 3, three batches were: "keep" must roll those back to the end of epoch 2.
    models = []
    for at_batch in (2 * BATCHES_PER_EPOCH + 1, 2 * BATCHES_PER_EPOCH + 4):
        with pytest.warns(UserWarning, match="interrupted in epoch 3 of 6.*after epoch 2"):
            models.append(interrupted(at_batch, on_interrupt="keep").fit(X))
    at_start, mid_epoch = models
    for model in models:
        assert model.n_iter_ == 2 and len(model.net_.history) == 2
        labels = model.predict(X)
        np.testing.assert_array_equal(labels, model.labels_)
        assert set(np.unique(labels)) <= {0, 1, 2}
    np.testing.assert_array_equal(mid_epoch.transform(X), at_start.transform(X))
    np.testing.assert_array_equal(mid_epoch.head_losses_, at_start.head_losses_)


def test_keep_with_no_completed_epoch_leaves_the_estimator_unfitted(X):
    model = interrupted(3, on_interrupt="keep")
    with pytest.raises(KeyboardInterrupt, match="after 0 of 6 epochs"):
        model.fit(X)
    with pytest.raises(NotFittedError):
        model.predict(X)


def test_restore_is_the_default_and_leaves_the_estimator_unfitted(X):
    model = interrupted(2 * BATCHES_PER_EPOCH + 2)
    assert model.on_interrupt == "restore"
    with pytest.raises(KeyboardInterrupt, match="after 2 of 6 epochs"):
        model.fit(X)
    assert not hasattr(model, "net_") and not hasattr(model, "labels_")


def test_the_keep_warning_points_at_the_callers_line(X):
    # fit_predict calls fit from scikit-learn's ClusterMixin: the warning must still name
    # the line that called fit_predict, not a line inside a library.
    with pytest.warns(UserWarning, match="on_interrupt='keep'") as record:
        interrupted(2 * BATCHES_PER_EPOCH + 2, on_interrupt="keep").fit_predict(X)
    assert [warning.filename for warning in record] == [__file__]


def test_a_kept_interrupted_fit_ends_training_once(X, monkeypatch):
    from sklearn_selflabel._net import SelfLabelNet

    calls = []
    original = SelfLabelNet.on_train_end
    monkeypatch.setattr(
        SelfLabelNet,
        "on_train_end",
        lambda net, *args, **kwargs: calls.append(1) or original(net, *args, **kwargs),
    )
    with pytest.warns(UserWarning, match="on_interrupt='keep'"):
        interrupted(2 * BATCHES_PER_EPOCH + 2, on_interrupt="keep", propagation=True).fit(X)
    assert len(calls) == 1


class FailingEncoder(MLPEncoder):
    """The default encoder; once armed, its ``fail_at``-th training batch raises ``error``."""

    n_training_batches = 0
    fail_at: int | None = None
    error: type[BaseException] = KeyboardInterrupt

    def __init__(self, n_features: int) -> None:
        super().__init__(n_features, (16,), 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = type(self)
        if self.training and cls.fail_at is not None:
            cls.n_training_batches += 1
            if cls.n_training_batches == cls.fail_at:
                raise cls.error("in a training batch")
        return super().forward(x)


@pytest.mark.parametrize("label_mode", ["offline", "online"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_failed_partial_fit_leaves_the_estimator_as_it_was(X, label_mode, error, monkeypatch):
    model = small(module=FailingEncoder, label_mode=label_mode, queue_size=64)
    model.partial_fit(X[:75])
    before = {
        "weights": {k: v.clone() for k, v in model.net_.module_.state_dict().items()},
        "labels": model.labels_.copy(),
        "offsets": model.logit_offsets_.copy(),
        "predict": model.predict(X),
        "n_iter": model.n_iter_,
    }
    monkeypatch.setattr(FailingEncoder, "fail_at", 2)
    monkeypatch.setattr(FailingEncoder, "n_training_batches", 0)
    monkeypatch.setattr(FailingEncoder, "error", error)
    # Ctrl-C reaches the caller, so that a streaming loop stops.
    with pytest.raises(error):
        model.partial_fit(X[75:])
    for name, value in model.net_.module_.state_dict().items():
        assert torch.equal(value, before["weights"][name]), name
    np.testing.assert_array_equal(model.labels_, before["labels"])
    np.testing.assert_array_equal(model.logit_offsets_, before["offsets"])
    np.testing.assert_array_equal(model.predict(X), before["predict"])
    assert model.n_iter_ == before["n_iter"] == len(model.net_.history)
    # The next call trains on as if the failed one had never been made.
    monkeypatch.setattr(FailingEncoder, "fail_at", None)
    assert model.partial_fit(X[75:]).n_iter_ == 2


# ---------------------------------------------------------------------------- checkpoints

CRASHING_FIT = """
import os
import signal
import sys

import numpy as np
import torch

from sklearn_selflabel import SelfLabelingClusterer
from sklearn_selflabel._net import SelfLabelNet

torch.set_num_threads(1)
data, checkpoint_dir, crash_at, params = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
train_step = SelfLabelNet.train_step_single
n_steps = 0


def train_step_then_crash(net, batch, **fit_params):
    global n_steps
    n_steps += 1
    if n_steps == crash_at:  # as a power cut or the OOM killer would: no clean-up at all
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(net, batch, **fit_params)


SelfLabelNet.train_step_single = train_step_then_crash
SelfLabelingClusterer(checkpoint_dir=checkpoint_dir, **eval(params)).fit(np.load(data))
"""


def crash_a_fit(X, tmp_path: Path, crash_at: int, params: dict) -> Path:
    """Run ``fit`` with a checkpoint_dir in a subprocess that is killed (SIGKILL) mid-epoch."""
    data, checkpoint_dir = tmp_path / "X.npy", tmp_path / "checkpoints"
    np.save(data, X)
    script = tmp_path / "crashing_fit.py"
    script.write_text(textwrap.dedent(CRASHING_FIT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    argv = [sys.executable, str(script), str(data), str(checkpoint_dir), str(crash_at)]
    result = subprocess.run(
        [*argv, repr(params)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    return checkpoint_dir


@pytest.mark.parametrize("propagation", [False, True])
def test_a_killed_fit_resumes_from_its_checkpoint_as_if_never_killed(X, tmp_path, propagation):
    params = dict(SMALL, propagation=propagation)
    checkpoint_dir = crash_a_fit(X, tmp_path, 3 * BATCHES_PER_EPOCH + 2, params)
    # Killed in epoch 4: the checkpoint holds the three completed epochs, and no stray file.
    assert [p.name for p in checkpoint_dir.iterdir()] == [CHECKPOINT_NAME]
    assert len(load_state(read_checkpoint(checkpoint_dir), "cpu")["history"]) == 3

    resumed = small(checkpoint_dir=checkpoint_dir, warm_start=True, propagation=propagation)
    resumed.fit(X)
    assert resumed.n_iter_ == 6 and len(resumed.net_.history) == 6
    never_killed = small(propagation=propagation).fit(X)
    # Every piece of state came back (weights, optimizer, labels, solver, memory bank, random
    # states): the resumed fit is the uninterrupted one.
    for key in ("train_loss", "labels_changed", "min_cluster_size", "max_cluster_size"):
        assert resumed.net_.history[:, key] == never_killed.net_.history[:, key]
    np.testing.assert_array_equal(resumed.labels_, never_killed.labels_)
    np.testing.assert_array_equal(resumed.transform(X), never_killed.transform(X))


@pytest.mark.parametrize("label_mode", ["offline", "online"])
def test_an_interrupted_fit_resumes_in_either_label_mode(X, tmp_path, label_mode):
    never_interrupted = small(label_mode=label_mode).fit(X)
    model = interrupted(3 * BATCHES_PER_EPOCH + 2, label_mode=label_mode, checkpoint_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt, match="after 3 of 6 epochs"):
        model.fit(X)
    model.set_params(module=None, module_params=None, warm_start=True).fit(X)
    assert model.n_iter_ == 6
    np.testing.assert_array_equal(model.transform(X), never_interrupted.transform(X))
    np.testing.assert_array_equal(model.head_losses_, never_interrupted.head_losses_)
    # The checkpoint of a finished fit gives the same model again, training no further.
    again = small(label_mode=label_mode, checkpoint_dir=tmp_path, warm_start=True).fit(X)
    assert again.n_iter_ == 6
    np.testing.assert_array_equal(again.transform(X), never_interrupted.transform(X))


def test_warm_start_with_no_checkpoint_yet_starts_afresh(X, fitted, tmp_path):
    model = small(checkpoint_dir=tmp_path / "new", warm_start=True).fit(X)
    np.testing.assert_array_equal(model.transform(X), fitted.transform(X))
    assert (tmp_path / "new" / CHECKPOINT_NAME).is_file()


def test_raising_max_epochs_continues_a_finished_fit(X, tmp_path):
    short = small(max_epochs=3, checkpoint_dir=tmp_path).fit(X)
    history = [dict(row) for row in short.net_.history]
    longer = short.set_params(max_epochs=5, warm_start=True).fit(X)
    assert longer.n_iter_ == 5
    assert longer.net_.history[:3, "train_loss"] == [row["train_loss"] for row in history]


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(X, tmp_path, monkeypatch):
    fsync = os.fsync
    n_calls = 0

    def fsync_failing_the_third_time(fd):
        nonlocal n_calls
        n_calls += 1
        if n_calls == 3:
            raise OSError(28, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_failing_the_third_time)
    model = small(checkpoint_dir=tmp_path)
    with pytest.raises(OSError, match="No space left"):
        model.fit(X)
    assert not hasattr(model, "net_")
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # no temporary left
    assert len(load_state(read_checkpoint(tmp_path), "cpu")["history"]) == 2
    monkeypatch.setattr(os, "fsync", fsync)
    assert model.set_params(warm_start=True).fit(X).n_iter_ == 6


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(n_clusters=4), "n_clusters 3 in the checkpoint, 4 now"),
        (dict(hidden_layer_sizes=(12,)), "holds a different network"),
        (dict(max_epochs=2), "holds 3 epochs, more than max_epochs=2"),
        (dict(shift_data=1.0), "data_hash '[0-9a-f]+' in the checkpoint, '[0-9a-f]+' now"),
    ],
)
def test_a_checkpoint_of_another_fit_is_refused(X, tmp_path, change, match):
    small(max_epochs=3, checkpoint_dir=tmp_path).fit(X)
    shift = change.pop("shift_data", 0.0)
    model = small(**{"max_epochs": 3, "checkpoint_dir": tmp_path, "warm_start": True, **change})
    with pytest.raises(ValueError, match=match):
        model.fit(X + shift)
    assert not hasattr(model, "net_")


def test_warm_start_needs_a_checkpoint_dir(X):
    with pytest.raises(ValueError, match="set checkpoint_dir"):
        small(warm_start=True).fit(X)


# ----------------------------------------------------------------- pickles and threads


def test_a_model_pickled_on_cuda_predicts_on_a_cpu_only_machine(X, fitted, monkeypatch):
    # Make the pickle exactly as one written on a GPU: the net's device is CUDA and every
    # tensor storage is tagged "cuda:0", so that a tensor the net does not map on loading
    # fails to load where CUDA is absent.
    on_gpu = pickle.loads(pickle.dumps(fitted))
    on_gpu.net_.device = on_gpu.device_ = "cuda"
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        blob = pickle.dumps(on_gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(DeviceWarning) as warned:
        restored = pickle.loads(blob)
    assert any("no CUDA devices are available" in str(w.message) for w in warned)
    assert restored.device_ == "cpu" and str(restored.net_.device) == "cpu"
    assert restored.net_.label_table_.device.type == "cpu"
    np.testing.assert_array_equal(restored.predict(X), fitted.predict(X))
    np.testing.assert_array_equal(restored.transform(X), fitted.transform(X))


def test_concurrent_predicts_match_serial_ones(fitted):
    rows = np.random.default_rng(0).normal(size=(4000, 5)).astype(np.float32)
    labels, embedding = fitted.predict(rows), fitted.transform(rows)
    with ThreadPoolExecutor(max_workers=8) as pool:
        predicted = list(pool.map(fitted.predict, [rows] * 16))
        transformed = list(pool.map(fitted.transform, [rows] * 16))
    for result in predicted:
        np.testing.assert_array_equal(result, labels)
    for result in transformed:
        np.testing.assert_array_equal(result, embedding)
    np.testing.assert_array_equal(fitted.transform(rows), embedding)  # no state changed


def test_no_warning_from_a_plain_fit(X):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small(max_epochs=2).fit(X)
        # Scoring several fits must not re-validate the rows without their column names.
        small(max_epochs=2, n_init=2).fit(frame).predict(frame)
