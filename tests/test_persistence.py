"""Model files and checkpoints: exact round trips, and files that cannot run code when read."""

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_blobs

from sklearn_selflabel import SelfLabelingClusterer, load
from sklearn_selflabel._archive import read_archive, write_archive_file
from sklearn_selflabel._checkpoint import CHECKPOINT_NAME
from sklearn_selflabel.cli import main
from sklearn_selflabel.modules import MLPEncoder

SMALL = dict(
    n_clusters=3,
    n_heads=2,
    hidden_layer_sizes=(16,),
    embedding_dim=8,
    max_epochs=4,
    batch_size=32,
    random_state=0,
)


class WideEncoder(MLPEncoder):
    """A custom encoder, importable from this module by name."""

    def __init__(self, n_features: int, width: int = 12) -> None:
        super().__init__(n_features, (width,), 6)


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(n_samples=150, centers=3, n_features=5, random_state=0)
    return X.astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    return (load_digits().data[:200] / 16.0).astype(np.float32)


def fitted(kind: str, blobs, digits):
    if kind == "tabular":
        return SelfLabelingClusterer(**SMALL).fit(blobs), blobs
    if kind == "image":
        params = dict(SMALL, n_clusters=10, image_shape=(8, 8), max_epochs=2)
        return SelfLabelingClusterer(**params).fit(digits), digits
    if kind == "online":
        params = dict(SMALL, label_mode="online", queue_size=64)
        return SelfLabelingClusterer(**params).fit(blobs), blobs
    if kind == "partial_fit":
        model = SelfLabelingClusterer(**SMALL)
        return model.partial_fit(blobs[:75]).partial_fit(blobs[75:]), blobs
    params = dict(SMALL, module=WideEncoder, module_params={"width": 10})
    return SelfLabelingClusterer(**params).fit(blobs), blobs


@pytest.mark.parametrize("kind", ["tabular", "image", "online", "partial_fit", "custom"])
def test_a_loaded_model_is_the_saved_one(kind, blobs, digits, tmp_path):
    model, X = fitted(kind, blobs, digits)
    path = tmp_path / "model.selflabel"
    model.save(path)
    trusted = [WideEncoder] if kind == "custom" else []
    rng_before = torch.get_rng_state()
    loaded = load(path, trusted=trusted)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's random state is kept
    for method in ("predict", "predict_proba", "transform"):
        np.testing.assert_array_equal(getattr(loaded, method)(X), getattr(model, method)(X))
    assert loaded.score(X) == model.score(X)
    assert loaded.get_params() == model.get_params()
    for name in ("labels_", "head_losses_", "logit_offsets_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    for name in ("best_head_", "embedding_dim_", "device_", "n_iter_", "n_features_in_"):
        assert getattr(loaded, name) == getattr(model, name)
    assert list(loaded.net_.history) == list(model.net_.history)
    # Training goes on from the saved state as it would have from the original.
    np.testing.assert_array_equal(
        loaded.partial_fit(X[:80]).transform(X), model.partial_fit(X[:80]).transform(X)
    )


def test_feature_names_and_init_scores_come_back(blobs, tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(blobs, columns=list("abcde"))
    model = SelfLabelingClusterer(**SMALL, n_init=2).fit(frame)
    model.save(tmp_path / "m")
    loaded = load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.feature_names_in_, model.feature_names_in_)
    np.testing.assert_array_equal(loaded.init_scores_, model.init_scores_)
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))


def test_a_custom_module_is_imported_only_when_trusted(blobs, tmp_path):
    model, _ = fitted("custom", blobs, None)
    path = tmp_path / "model.selflabel"
    model.save(path)
    name = f"{__name__}:WideEncoder"
    with pytest.raises(ValueError, match=f"module is {name}, which is not trusted"):
        load(path)
    with pytest.raises(ValueError, match="not trusted"):
        load(path, trusted=["some.other:Encoder"])
    assert load(path, trusted=[name]).module is WideEncoder
    assert load(path, trusted=[f"{__name__}.WideEncoder"]).module is WideEncoder


def test_a_module_that_cannot_be_imported_by_name_is_not_saved(blobs, tmp_path):
    class LocalEncoder(MLPEncoder):
        def __init__(self, n_features: int) -> None:
            super().__init__(n_features, (8,), 4)

    model = SelfLabelingClusterer(**dict(SMALL, module=LocalEncoder)).fit(blobs)
    with pytest.raises(TypeError, match="define it at the top level"):
        model.save(tmp_path / "model.selflabel")
    assert not (tmp_path / "model.selflabel").exists()


def test_a_model_saved_on_cuda_loads_onto_the_cpu(blobs, tmp_path):
    model, X = fitted("tabular", blobs, None)
    path = tmp_path / "model.selflabel"
    model.save(path)
    # The same file as a CUDA machine writes it: only the recorded devices differ.
    version, content = read_archive(path, "model", 1, "cpu")
    content["settings"]["device"] = "cuda:0"
    content["fitted"]["device_"] = "cuda:0"
    write_archive_file(path, "model", version, content)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the model would load there")
    loaded = load(path)
    assert loaded.device_ == "cpu" and str(loaded.net_.device) == "cpu"
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_a_file_of_a_newer_format_is_refused(blobs, tmp_path):
    model, _ = fitted("tabular", blobs, None)
    path = tmp_path / "model.selflabel"
    model.save(path)
    _, content = read_archive(path, "model", 1, "cpu")
    write_archive_file(path, "model", 2, content)
    with pytest.raises(ValueError, match="format version 2, newer than this version reads"):
        load(path)


def test_a_damaged_file_is_refused_with_a_clear_error(blobs, tmp_path):
    model, _ = fitted("tabular", blobs, None)
    path = tmp_path / "model.selflabel"
    model.save(path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="damaged or truncated"):
        load(path)
    # A whole archive whose content does not describe a model.
    write_archive_file(path, "model", 1, {"estimator": "SelfLabelingClusterer"})
    with pytest.raises(ValueError, match="is not a valid model file"):
        load(path)
    # A checkpoint is not a model.
    write_archive_file(path, "checkpoint", 1, {})
    with pytest.raises(ValueError, match="a sklearn-selflabel checkpoint file, not a model"):
        load(path)


# ----------------------------------------------------------------------- pickle payloads


class Payload:
    """Unpickling this object creates the file ``sentinel``, as hostile code could do worse."""

    def __init__(self, sentinel) -> None:
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def payload_files(sentinel, kind: str) -> dict[str, bytes]:
    """Files that run the payload if unpickled: a pickle, a torch.save file, an archive of
    this library's format whose array is a pickled object array, and joblib's file."""
    joblib = pytest.importorskip("joblib")
    torch_file, archive, joblib_file = io.BytesIO(), io.BytesIO(), io.BytesIO()
    torch.save({"model": Payload(sentinel)}, torch_file)
    with zipfile.ZipFile(archive, "w") as zf:
        header = {"format": "sklearn-selflabel", "kind": kind, "version": 1}
        zf.writestr("format.json", json.dumps(header))
        zf.writestr("content.json", json.dumps({"w": {"__array__": "arrays/0.npy"}}))
        with zf.open("arrays/0.npy", "w") as member:
            np.save(member, np.array([Payload(sentinel)], dtype=object), allow_pickle=True)
    joblib.dump(Payload(sentinel), joblib_file)
    return {
        "pickle": pickle.dumps(Payload(sentinel)),
        "torch.save": torch_file.getvalue(),
        "archive with an object array": archive.getvalue(),
        "joblib": joblib_file.getvalue(),
    }


def test_a_model_file_with_a_pickle_payload_is_refused_and_never_run(tmp_path, capsys):
    sentinel = tmp_path / "sentinel"
    data = tmp_path / "x.npy"
    np.save(data, np.ones((4, 5)))
    for kind, payload in payload_files(sentinel, "model").items():
        path = tmp_path / f"{kind}.model"
        path.write_bytes(payload)
        with pytest.raises(ValueError):
            load(path)
        assert main(["predict", str(path), str(data)]) == 2, kind
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert not sentinel.exists(), kind


def test_a_checkpoint_with_a_pickle_payload_is_refused_and_never_run(blobs, tmp_path):
    sentinel = tmp_path / "sentinel"
    for kind, payload in payload_files(sentinel, "checkpoint").items():
        directory = tmp_path / kind
        directory.mkdir()
        (directory / CHECKPOINT_NAME).write_bytes(payload)
        model = SelfLabelingClusterer(**SMALL, checkpoint_dir=directory, warm_start=True)
        with pytest.raises(ValueError, match="start over with warm_start=False"):
            model.fit(blobs)
        assert not hasattr(model, "net_")
        assert not sentinel.exists(), kind


def test_a_trusted_pickle_is_loaded_only_with_the_flag(blobs, tmp_path, capsys):
    joblib = pytest.importorskip("joblib")
    model, X = fitted("tabular", blobs, None)
    path, data = tmp_path / "model.joblib", tmp_path / "x.npy"
    joblib.dump(model, path)
    np.save(data, X)
    assert main(["predict", str(path), str(data)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["predict", str(path), str(data), "--trust-pickle"]) == 0
    labels = capsys.readouterr().out.splitlines()[1:]
    np.testing.assert_array_equal(np.array(labels, dtype=int), model.predict(X))
