"""The command line: fit and predict round trips, data formats, one-line errors, atomic outputs."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_blobs

from sklearn_selflabel import SelfLabelingClusterer, _archive, cli, load
from sklearn_selflabel.cli import main

TINY = [
    "--hidden-layer-sizes", "32", "--embedding-dim", "8", "--n-heads", "2",
    "--batch-size", "32", "--max-epochs", "5", "--random-state", "0",
]  # fmt: skip
N_SAMPLES, N_FEATURES, N_CLUSTERS = 90, 4, 3


def write_csv(path: Path, X: np.ndarray, names: list[str]) -> Path:
    np.savetxt(path, X, delimiter=",", header=",".join(names), comments="")
    return path


def read_labels(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    assert lines[0] == "label"
    return np.array([int(line) for line in lines[1:]])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One CLI fit shared by the module: the data, its labels file and the saved model."""
    folder = tmp_path_factory.mktemp("fitted")
    X, _ = make_blobs(n_samples=N_SAMPLES, centers=3, n_features=N_FEATURES, random_state=0)
    data = write_csv(folder / "data.csv", X, ["a", "b", "c", "d"])
    labels, model = folder / "labels.csv", folder / "model.selflabel"
    argv = ["fit", str(data), "--n-clusters", str(N_CLUSTERS), *TINY, "-q"]
    assert main([*argv, "-o", str(labels), "--save", str(model)]) == 0
    return SimpleNamespace(X=X, data=data, labels=labels, model=model)


def assert_one_error_line(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sklearn-selflabel: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_fit_writes_one_label_per_row_and_a_loadable_model(fitted):
    labels = read_labels(fitted.labels)
    assert labels.shape == (N_SAMPLES,)
    assert set(labels.tolist()) <= set(range(N_CLUSTERS))
    model = load(fitted.model)
    assert isinstance(model, SelfLabelingClusterer)
    assert model.n_features_in_ == N_FEATURES and model.embedding_dim_ == 8
    np.testing.assert_array_equal(model.labels_, labels)
    np.testing.assert_array_equal(model.predict(fitted.X), labels)
    # Outputs get the permissions of a plain open(), not the private mode of a temp file.
    umask = os.umask(0)
    os.umask(umask)
    assert fitted.model.stat().st_mode & 0o777 == 0o666 & ~umask


def test_fit_without_output_prints_labels_on_stdout_and_progress_on_stderr(fitted, capsys):
    assert main(["fit", str(fitted.data), "--n-clusters", str(N_CLUSTERS), *TINY]) == 0
    out, err = capsys.readouterr()
    assert out == fitted.labels.read_text()  # the same seed gives the same labels
    assert "train_loss" in err and "labels_changed" in err  # skorch's per-epoch table
    assert "labels written to stdout" in err


def test_quiet_fit_prints_nothing_on_stderr(fitted, tmp_path, capsys):
    argv = ["fit", str(fitted.data), "--n-clusters", str(N_CLUSTERS), *TINY, "-q"]
    assert main([*argv, "-o", str(tmp_path / "labels.csv")]) == 0
    assert capsys.readouterr() == ("", "")


def test_fit_estimates_the_number_of_clusters_when_asked(tmp_path, capsys):
    X, _ = make_blobs(n_samples=400, centers=4, n_features=N_FEATURES, random_state=0)
    data = write_csv(tmp_path / "data.csv", X, ["a", "b", "c", "d"])
    argv = ["fit", str(data), "--n-clusters", "auto", *TINY, "-o", str(tmp_path / "labels.csv")]
    assert main(argv) == 0
    assert "400 rows in 4 clusters" in capsys.readouterr().err
    assert set(read_labels(tmp_path / "labels.csv").tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("fmt", ["csv", "npy", "npz", "npz-only-array", "parquet"])
def test_predict_with_saved_model_matches_fit_labels(fitted, tmp_path, fmt):
    X = fitted.X
    if fmt == "csv":
        path = fitted.data
    elif fmt == "npy":
        path = tmp_path / "data.npy"
        np.save(path, X)
    elif fmt == "npz":
        path = tmp_path / "data.npz"
        np.savez(path, X=X.astype(np.float32), y=np.zeros(len(X)))
    elif fmt == "npz-only-array":
        path = tmp_path / "data.npz"
        np.savez(path, features=X)
    else:
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        path = tmp_path / "data.parquet"
        pq.write_table(pa.table({name: X[:, i] for i, name in enumerate("abcd")}), path)
    out = tmp_path / "predicted.csv"
    assert main(["predict", str(fitted.model), str(path), "-o", str(out)]) == 0
    assert out.read_text() == fitted.labels.read_text()


def test_columns_selects_and_orders_features(fitted, tmp_path):
    # A text column and the features in another order, as a spreadsheet export might have them.
    rows = [f"row{i},{d},{c},{b},{a}" for i, (a, b, c, d) in enumerate(fitted.X.tolist())]
    path = tmp_path / "export.csv"
    path.write_text("name,d,c,b,a\n" + "\n".join(rows) + "\n")
    out = tmp_path / "predicted.csv"
    argv = ["predict", str(fitted.model), str(path), "--columns", "a,b,c,d", "-o", str(out)]
    assert main(argv) == 0
    assert out.read_text() == fitted.labels.read_text()


@dataclass
class Pickled:
    """File content for a case: this object saved with joblib."""

    value: object


# Each case: files to create (name -> content), arguments ({dir} is the test's folder, {model}
# the fitted model), and fragments the error line must contain.
ERROR_CASES = {
    "ragged csv": (
        {"x.csv": "a,b\n1,2\n3,4,5\n"},
        ["predict", "{model}", "{dir}/x.csv"],
        ["x.csv", "line 3 has 3 fields but the header has 2"],
    ),
    "missing column": (
        {"x.csv": "a,b,c,d\n1,2,3,4\n"},
        ["predict", "{model}", "{dir}/x.csv", "--columns", "a,b,c,zz"],
        ["no column 'zz'", "'a', 'b', 'c', 'd'"],
    ),
    "non-numeric value": (
        {"x.csv": "a,b,c,d\n1,2,3,4\n1,2,three,4\n"},
        ["predict", "{model}", "{dir}/x.csv"],
        ["non-numeric value 'three' in column 'c' on line 3"],
    ),
    "empty field": (
        {"x.csv": "a,b,c,d\n1,2,,4\n"},
        ["predict", "{model}", "{dir}/x.csv"],
        ["non-numeric value '' in column 'c' on line 2"],
    ),
    "nan": (
        {"x.csv": "a,b,c,d\n1,2,3,4\n1,nan,3,4\n"},
        ["fit", "{dir}/x.csv", "--n-clusters", "2"],
        ["value nan in column 'b', data row 2"],
    ),
    "infinity in npy": (
        {"x.npy": np.array([[1.0, 2.0], [np.inf, 0.0]])},
        ["fit", "{dir}/x.npy", "--n-clusters", "2"],
        ["value inf in column 0, data row 2"],
    ),
    "empty csv": ({"x.csv": ""}, ["predict", "{model}", "{dir}/x.csv"], ["is empty"]),
    "header only": (
        {"x.csv": "a,b,c,d\n"},
        ["predict", "{model}", "{dir}/x.csv"],
        ["contains no data"],
    ),
    "missing data file": ({}, ["fit", "{dir}/nope.csv", "--n-clusters", "2"], ["no such file"]),
    "missing model file": (
        {},
        ["predict", "{dir}/nope.joblib", "{dir}/nope.csv"],
        ["nope.joblib: no such file"],
    ),
    "unsupported suffix": (
        {"x.txt": "1 2\n"},
        ["fit", "{dir}/x.txt", "--n-clusters", "2"],
        ["unsupported file type '.txt'"],
    ),
    "garbage npy": ({"x.npy": b"garbage"}, ["predict", "{model}", "{dir}/x.npy"], ["not a NumPy"]),
    "text npy": (
        {"x.npy": np.array([["a", "b"], ["c", "d"]])},
        ["predict", "{model}", "{dir}/x.npy"],
        ["holds <U1 values, not numbers"],
    ),
    "1-D npy": (
        {"x.npy": np.arange(4.0)},
        ["predict", "{model}", "{dir}/x.npy"],
        ["expected a 2-D array"],
    ),
    "npz without X": (
        {"x.npz": {"a": np.ones((2, 4)), "b": np.ones(2)}},
        ["predict", "{model}", "{dir}/x.npz"],
        ["holds arrays 'a', 'b'"],
    ),
    "columns on npy": (
        {"x.npy": np.ones((3, 4))},
        ["predict", "{model}", "{dir}/x.npy", "--columns", "a"],
        ["--columns needs a .csv or .parquet"],
    ),
    "wrong number of features": (
        {"x.csv": "a,b,c\n1,2,3\n"},
        ["predict", "{model}", "{dir}/x.csv"],
        ["has 3 features but the model", "fitted on 4"],
    ),
    "data file as model": (
        {"x.csv": "a,b,c,d\n1,2,3,4\n"},
        ["predict", "{dir}/x.csv", "{dir}/x.csv"],
        ["x.csv: is not a zip archive, not a sklearn-selflabel model file"],
    ),
    "empty model file": (
        {"m.selflabel": b"", "x.csv": "a,b,c,d\n1,2,3,4\n"},
        ["predict", "{dir}/m.selflabel", "{dir}/x.csv"],
        ["m.selflabel: is empty"],
    ),
    "truncated model file": (
        {"m.selflabel": "TRUNCATED", "x.csv": "a,b,c,d\n1,2,3,4\n"},
        ["predict", "{dir}/m.selflabel", "{dir}/x.csv"],
        ["m.selflabel: is damaged or truncated"],
    ),
    "pickle as model": (
        {"m.joblib": Pickled(SelfLabelingClusterer()), "x.csv": "a,b,c,d\n1,2,3,4\n"},
        ["predict", "{dir}/m.joblib", "{dir}/x.csv"],
        ["is a pickle (or joblib) file, which can run code when loaded", "--trust-pickle"],
    ),
    "trusted pickle of another object": (
        {"m.joblib": Pickled({"not": "a model"}), "x.csv": "a,b,c,d\n1,2,3,4\n"},
        ["predict", "{dir}/m.joblib", "{dir}/x.csv", "--trust-pickle"],
        ["holds a dict, not a fitted SelfLabelingClusterer"],
    ),
    "trusted pickle of an unfitted model": (
        {"m.joblib": Pickled(SelfLabelingClusterer()), "x.csv": "a,b,c,d\n1,2,3,4\n"},
        ["predict", "{dir}/m.joblib", "{dir}/x.csv", "--trust-pickle"],
        ["holds a SelfLabelingClusterer, not a fitted"],
    ),
    "more clusters than rows": (
        {"x.csv": "a,b\n1,2\n3,4\n5,6\n"},
        ["fit", "{dir}/x.csv", "--n-clusters", "5"],
        ["fit failed", "n_clusters=5"],
    ),
    "output folder missing": (
        {"x.csv": "a,b\n1,2\n3,4\n"},
        ["fit", "{dir}/x.csv", "--n-clusters", "2", "-o", "{dir}/no/labels.csv"],
        ["does not exist"],
    ),
    "output is a folder": (
        {"x.csv": "a,b\n1,2\n3,4\n"},
        ["fit", "{dir}/x.csv", "--n-clusters", "2", "--save", "{dir}"],
        ["is a directory"],
    ),
    "image shape mismatch": (
        {"x.csv": "a,b,c,d\n1,2,3,4\n5,6,7,8\n"},
        ["fit", "{dir}/x.csv", "--n-clusters", "2", "--image-shape", "3", "3"],
        ["describes 9 pixels but the data has 4 features"],
    ),
}


def _create(path: Path, content, model: Path) -> None:
    if isinstance(content, dict):
        np.savez(path, **content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, Pickled):
        joblib.dump(content.value, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "TRUNCATED":  # the first half of a real model file
        whole = model.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    else:
        path.write_text(content)


@pytest.mark.filterwarnings("error")  # a warning would be a second line on stderr
@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_input_gives_one_error_line_and_exit_2(case, fitted, tmp_path, capsys):
    files, argv, fragments = ERROR_CASES[case]
    for name, content in files.items():
        _create(tmp_path / name, content, fitted.model)
    argv = [arg.format(dir=tmp_path, model=fitted.model) for arg in argv]
    before = set(tmp_path.iterdir())
    assert main(argv) == 2
    assert_one_error_line(capsys, *fragments)
    assert set(tmp_path.iterdir()) == before  # no output, no leftover temp file


def test_parquet_without_pyarrow_is_a_clear_error(fitted, tmp_path, monkeypatch, capsys):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    # A None entry in sys.modules makes the import fail as if pyarrow were not installed.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert main(["predict", str(fitted.model), str(path)]) == 2
    assert_one_error_line(capsys, "needs pyarrow", "pip install pyarrow")


def test_parquet_text_column_is_an_error(fitted, tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": ["x", "y"]}), path)
    assert main(["predict", str(fitted.model), str(path)]) == 2
    assert_one_error_line(capsys, "column 'b' holds string values, not numbers")


def test_image_shape_fits_an_image_model(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((40, 16)).astype(np.float32)
    data = tmp_path / "images.npy"
    np.save(data, X)
    out, model = tmp_path / "labels.csv", tmp_path / "model.selflabel"
    argv = ["fit", str(data), "--n-clusters", "2", "--image-shape", "4", "4", "-q"]
    tiny = ["--embedding-dim", "8", "--n-heads", "2", "--batch-size", "16", "--max-epochs", "2"]
    options = ["--n-init", "3", "--cluster-sizes", "equal"]
    assert main([*argv, *tiny, *options, "-o", str(out), "--save", str(model)]) == 0
    fitted = load(model)
    assert fitted.image_shape == (4, 4)
    assert fitted.n_init == 3 and fitted.init_scores_.shape == (3,)
    assert fitted.cluster_sizes == "equal"
    assert read_labels(out).shape == (40,)
    np.testing.assert_array_equal(read_labels(out), fitted.predict(X))


def test_failed_label_write_leaves_no_file(fitted, tmp_path, monkeypatch, capsys):
    out = tmp_path / "labels.csv"
    out.write_text("previous labels\n")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    assert main(["predict", str(fitted.model), str(fitted.data), "-o", str(out)]) == 2
    assert_one_error_line(capsys, "labels.csv: cannot write: No space left on device")
    assert out.read_text() == "previous labels\n"  # the old file is intact
    assert list(tmp_path.iterdir()) == [out]  # and the temp file is gone


def test_model_write_failing_midway_leaves_no_file(fitted, tmp_path, monkeypatch, capsys):
    model = tmp_path / "model.selflabel"
    write = _archive.write_archive

    def failing_write(file, *args):
        write(file, *args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_archive, "write_archive", failing_write)
    argv = ["fit", str(fitted.data), "--n-clusters", "3", *TINY, "-q", "--save", str(model)]
    assert main([*argv, "-o", str(tmp_path / "labels.csv")]) == 2
    assert_one_error_line(capsys, "model.selflabel: cannot write: No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]


def test_interrupted_fit_exits_130(fitted, monkeypatch, capsys):
    def interrupted_fit(self, X, y=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(SelfLabelingClusterer, "fit", interrupted_fit)
    assert main(["fit", str(fitted.data), "--n-clusters", "3"]) == 130
    out, err = capsys.readouterr()
    assert out == "" and err == "sklearn-selflabel: interrupted\n"


def test_usage_errors_exit_2(capsys):
    assert main(["fit", "data.csv"]) == 2  # --n-clusters is required
    assert "--n-clusters" in capsys.readouterr().err
    assert main(["fit", "data.csv", "--n-clusters", "0"]) == 2
    assert "not a positive integer" in capsys.readouterr().err


def test_help_documents_every_option():
    parser = cli._build_parser()
    subparsers = parser._subparsers._group_actions[0].choices
    assert set(subparsers) == {"fit", "predict"}
    for name, subparser in subparsers.items():
        for action in subparser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_module_runs_as_a_script_and_prints_help():
    result = subprocess.run(
        [sys.executable, "-m", "sklearn_selflabel.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: sklearn-selflabel" in result.stdout
    assert "fit" in result.stdout and "predict" in result.stdout
