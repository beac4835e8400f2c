"""Every kind of input in docs/input.rst gets what the table says; hypothesis tries the rest.

Each kind is one function registered under its name in the table. A kind either gives a
correct result (checked) or a ValueError whose message names the problem; the command line
turns every such problem into one error line.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score

from sklearn_selflabel import SelfLabelingClusterer, load
from sklearn_selflabel.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs" / "input.rst"
TINY = dict(
    n_clusters=3,
    n_heads=2,
    hidden_layer_sizes=(16,),
    embedding_dim=4,
    max_epochs=6,
    batch_size=32,
    random_state=0,
)
KINDS = {}


def kind(name):
    def register(check):
        KINDS[name] = check
        return check

    return register


def tiny(**params) -> SelfLabelingClusterer:
    return SelfLabelingClusterer(**{**TINY, **params})


def blobs(n_samples: int = 90, n_features: int = 5, scale: float = 1.0):
    X, y = make_blobs(n_samples, n_features=n_features, centers=3, cluster_std=0.5, random_state=0)
    return X * scale, y


def refused(X, match: str, **params) -> None:
    model = tiny(**params)
    with pytest.raises(ValueError, match=match):
        model.fit(X)
    assert not hasattr(model, "net_")


@kind("nan")
def _(tmp_path):
    X, _ = blobs()
    X[4, 2] = np.nan
    refused(X, "Input X contains NaN")


@kind("inf")
def _(tmp_path):
    X, _ = blobs()
    X[4, 2] = -np.inf
    refused(X, "Input X contains infinity")


@kind("nan_in_sparse")
def _(tmp_path):
    X = sp.random(60, 20, density=0.2, format="csr", random_state=0)
    X.data[3] = np.nan
    refused(X, "Input X contains NaN")


@kind("inf_in_sparse")
def _(tmp_path):
    X = sp.random(60, 20, density=0.2, format="csr", random_state=0)
    X.data[3] = np.inf
    refused(X, "Input X contains infinity")


@kind("empty_rows_sparse")
def _(tmp_path):
    X = sp.random(60, 30, density=0.2, format="lil", random_state=0)
    X[::6] = 0
    model = tiny().fit(X.tocsr())
    empty = model.labels_[::6]
    assert (empty == empty[0]).all()
    assert np.isfinite(model.transform(X.tocsr())).all()


@kind("constant_columns")
def _(tmp_path):
    X, y = blobs()
    with_constants = np.column_stack([X, np.full(len(X), 7.0), np.zeros(len(X))])
    model = tiny(max_epochs=30).fit(with_constants)
    assert adjusted_rand_score(y, model.labels_) > 0.9


@kind("all_rows_equal")
def _(tmp_path):
    refused(np.ones((50, 4)), r"X holds only 1 distinct row\(s\), fewer than n_clusters=3")
    two = np.repeat(np.eye(4)[:2], 25, axis=0)
    refused(two, r"only 2 distinct row\(s\), fewer than n_clusters=3")


@kind("duplicated_rows")
def _(tmp_path):
    X, _ = blobs(30)
    repeated = np.repeat(X, 4, axis=0)
    model = tiny().fit(repeated)
    labels = model.labels_.reshape(30, 4)
    assert (labels == labels[:, :1]).all()
    embedding = model.transform(repeated).reshape(30, 4, -1)
    np.testing.assert_array_equal(embedding, np.repeat(embedding[:, :1], 4, axis=1))


@kind("large_magnitudes")
def _(tmp_path):
    X, y = blobs(scale=1e30)
    model = tiny(max_epochs=30).fit(X)
    assert adjusted_rand_score(y, model.labels_) > 0.9
    assert np.isfinite(model.transform(X)).all()


@kind("beyond_float32")
def _(tmp_path):
    X, _ = blobs()
    refused(X * 1e300, r"X holds values of magnitude .*e\+30\d, beyond what the network")
    model = tiny().fit(X)
    with pytest.raises(ValueError, match="beyond what the network computes with"):
        model.predict(X * 1e300)


def same_clustering_as_floats(X, converted) -> None:
    expected = tiny().fit(np.asarray(X, dtype=np.float32)).labels_
    np.testing.assert_array_equal(tiny().fit(converted).labels_, expected)


@kind("float16")
def _(tmp_path):
    X = blobs()[0].astype(np.float16)
    same_clustering_as_floats(X, X)


@kind("integers")
def _(tmp_path):
    X = np.round(blobs()[0] * 10).astype(np.int64)
    same_clustering_as_floats(X, X)
    flags = np.random.default_rng(0).random((90, 8)) > 0.5
    same_clustering_as_floats(flags, flags)


@kind("object_numbers")
def _(tmp_path):
    X = blobs()[0]
    same_clustering_as_floats(X, X.astype(object))


@kind("strings")
def _(tmp_path):
    refused(np.array([["a", "b"], ["c", "d"]] * 20), "X holds text")
    refused([["1.0", "x"]] * 40, "X holds text")


@kind("frame_categorical")
def _(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(blobs()[0], columns=list("abcde"))
    frame["colour"] = pd.Categorical(["red", "green", "blue"] * 30)
    refused(frame, r"columns that are not numbers: 'colour' \(category\)")
    frame["colour"] = pd.Categorical([1, 2, 3] * 30)  # categories that look like numbers
    refused(frame, r"'colour' \(category\)")


@kind("frame_text_column")
def _(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(blobs()[0], columns=list("abcde"))
    frame["name"] = [f"row {i}" for i in range(90)]
    frame["when"] = pd.date_range("2026-01-01", periods=90)
    refused(frame, "not numbers: 'name' .*'when' \\(datetime64")


@kind("frame_missing")
def _(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(blobs()[0], columns=list("abcde")).astype("Float64")
    frame.iloc[5, 1] = pd.NA
    refused(frame, "Input X contains NaN")


@kind("single_feature")
def _(tmp_path):
    y = np.repeat([0, 1, 2], 30)
    X = (5.0 * y + np.random.default_rng(0).normal(scale=0.3, size=90)).reshape(-1, 1)
    model = tiny(max_epochs=30).fit(X)
    assert model.labels_.shape == (90,) and adjusted_rand_score(y, model.labels_) > 0.9


@kind("n_samples_equal_n_clusters")
def _(tmp_path):
    X = np.eye(4) * 10
    model = tiny(n_clusters=4, max_epochs=30).fit(X)
    assert sorted(model.labels_.tolist()) == [0, 1, 2, 3]


@kind("n_clusters_above_n_samples")
def _(tmp_path):
    refused(np.eye(5), "n_samples=5 should be >= n_clusters=6", n_clusters=6)


@kind("n_clusters_near_n_samples")
def _(tmp_path):
    X = np.random.default_rng(0).normal(size=(60, 5))
    with pytest.warns(ConvergenceWarning, match="of the n_clusters=40 clusters hold no training"):
        model = tiny(n_clusters=40, max_epochs=20).fit(X)
    n_empty = 40 - len(np.unique(model.labels_))
    assert n_empty > 0  # the warning told the truth


@kind("too_few_rows")
def _(tmp_path):
    refused(np.empty((0, 3)), "0 sample")
    refused(np.ones((1, 3)), r"1 sample\(s\) .* minimum of 2")


@kind("not_2d")
def _(tmp_path):
    refused(np.arange(10.0), "Expected 2D array")
    refused(np.ones((10, 2, 2)), "dim 3")


@kind("complex")
def _(tmp_path):
    refused(blobs()[0] + 1j, "Complex data not supported")


@kind("predict_other_features")
def _(tmp_path):
    X, _ = blobs()
    model = tiny().fit(X)
    with pytest.raises(ValueError, match="X has 4 features, but SelfLabelingClusterer is"):
        model.predict(X[:, :4])


@kind("out_of_core_with_nan")
def _(tmp_path):
    X, _ = blobs()
    X[70, 1] = np.nan
    path = tmp_path / "x.dat"
    disk = np.memmap(path, dtype=np.float64, mode="w+", shape=X.shape)
    disk[:] = X
    refused(np.memmap(path, dtype=np.float64, mode="r", shape=X.shape), "NaN or infinity")


def saved_model(tmp_path) -> tuple[Path, SelfLabelingClusterer]:
    X, _ = blobs(n_features=4)
    model = tiny().fit(X)
    model.save(tmp_path / "model.selflabel")
    return tmp_path / "model.selflabel", model


def one_error_line(capsys, fragment: str) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("sklearn-selflabel: error: ") and fragment in err, err


@kind("damaged_model_file")
def _(tmp_path, capsys):
    path, _ = saved_model(tmp_path)
    whole = path.read_bytes()
    data = tmp_path / "x.npy"
    np.save(data, np.ones((3, 4)))
    damaged = {"truncated": whole[: len(whole) // 3], "corrupt": whole[:100] + b"\0" * 500}
    for name, content in damaged.items():
        path.write_bytes(content)
        with pytest.raises(ValueError, match="damaged or truncated"):
            load(path)
        assert main(["predict", str(path), str(data)]) == 2, name
        one_error_line(capsys, "damaged or truncated")


@kind("pickle_model_file")
def _(tmp_path, capsys):
    joblib = pytest.importorskip("joblib")
    _, model = saved_model(tmp_path)
    path, data = tmp_path / "model.joblib", tmp_path / "x.npy"
    joblib.dump(model, path)
    np.save(data, np.ones((3, 4)))
    with pytest.raises(ValueError, match="is a pickle"):
        load(path)
    assert main(["predict", str(path), str(data)]) == 2
    one_error_line(capsys, "which can run code when loaded")


@kind("model_for_other_features")
def _(tmp_path, capsys):
    path, _ = saved_model(tmp_path)
    with pytest.raises(ValueError, match="X has 3 features"):
        load(path).predict(np.ones((2, 3)))
    data = tmp_path / "x.npy"
    np.save(data, np.ones((2, 3)))
    assert main(["predict", str(path), str(data)]) == 2
    one_error_line(capsys, "has 3 features but the model")


@kind("damaged_data_file")
def _(tmp_path, capsys):
    path, _ = saved_model(tmp_path)
    npy, csv = tmp_path / "x.npy", tmp_path / "x.csv"
    np.save(npy, np.ones((50, 4)))
    npy.write_bytes(npy.read_bytes()[:150])
    csv.write_text("a,b,c,d\n1,2,3,4\n5,6,oops,8\n")
    for data, fragment in ((npy, "x.npy: cannot read"), (csv, "'oops' in column 'c' on line 3")):
        assert main(["predict", str(path), str(data)]) == 2
        one_error_line(capsys, fragment)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_kind_of_input_gets_what_the_docs_say(name, tmp_path, capsys):
    check = KINDS[name]
    if check.__code__.co_argcount == 2:
        check(tmp_path, capsys)
    else:
        check(tmp_path)


def test_the_docs_table_lists_exactly_the_tested_kinds():
    documented = re.findall(r"^   \* - ``(\w+)``$", DOCS.read_text(), flags=re.MULTILINE)
    assert len(documented) >= 15
    assert sorted(documented) == sorted(KINDS)


# --------------------------------------------------------------------- property-based

SOME = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
# Every refusal names its problem with one of these.
PROBLEMS = (
    "NaN",
    "infinity",
    "distinct row",
    "magnitude",
    "n_clusters",
    "features",
    "sample",
)
POISON = st.sampled_from([np.nan, np.inf, -np.inf, 1e300, 1e30, -0.0, 0.0])


@st.composite
def matrices(draw, n_features=None):
    n_samples = draw(st.integers(2, 40))
    n_columns = n_features or draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.bool_]))
    elements = {
        np.float64: st.floats(-1e6, 1e6, width=64),
        np.float32: st.floats(-1e4, 1e4, width=32),
        np.float16: st.floats(-100, 100, width=16),
        np.int64: st.integers(-1000, 1000),
        np.bool_: st.booleans(),
    }[dtype]
    X = draw(hnp.arrays(dtype, (n_samples, n_columns), elements=elements))
    if dtype == np.float64 and draw(st.booleans()):
        rows = draw(st.lists(st.integers(0, n_samples - 1), min_size=1, max_size=3))
        X[rows, draw(st.integers(0, n_columns - 1))] = draw(POISON)
    if draw(st.booleans()):
        X = sp.csr_matrix(X.astype(np.float64))
    return X


def as_dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)


def check_fitted(model, X) -> None:
    n = X.shape[0]
    assert model.labels_.shape == (n,) and model.labels_.dtype == np.int64
    assert 0 <= model.labels_.min() and model.labels_.max() < model.n_clusters
    np.testing.assert_array_equal(model.predict(X), model.labels_)
    assert np.isfinite(model.transform(X)).all()
    proba = model.predict_proba(X)
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1.0)


@SOME
@given(X=matrices(), n_clusters=st.integers(1, 4))
def test_fit_on_any_small_matrix_gives_a_valid_model_or_names_the_problem(X, n_clusters):
    model = tiny(n_clusters=n_clusters, max_epochs=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X)
    except ValueError as exc:
        assert any(problem in str(exc) for problem in PROBLEMS), exc
        assert not hasattr(model, "net_")
        dense = as_dense(X)
        finite = np.isfinite(dense).all() and np.abs(dense).max(initial=0) < 1e38
        with np.errstate(over="ignore"):
            distinct = len(np.unique(dense.astype(np.float32) + np.float32(0), axis=0))
        assert not finite or distinct < n_clusters or X.shape[0] < n_clusters, exc
        return
    check_fitted(model, X)


@pytest.fixture(scope="module")
def fitted_on_three():
    return tiny().fit(blobs(n_features=3)[0])


@SOME
@given(X=matrices())
def test_predict_on_any_small_matrix_gives_valid_labels_or_names_the_problem(fitted_on_three, X):
    try:
        labels = fitted_on_three.predict(X)
    except ValueError as exc:
        assert any(problem in str(exc) for problem in PROBLEMS), exc
        dense = as_dense(X)
        finite = np.isfinite(dense).all() and np.abs(dense).max(initial=0) < 1e38
        assert not finite or X.shape[1] != 3, exc
        return
    assert labels.shape == (X.shape[0],) and set(labels.tolist()) <= {0, 1, 2}


@SOME
@given(chunks=st.lists(matrices(n_features=3), min_size=1, max_size=4))
def test_partial_fit_chunks_either_train_or_leave_the_model_unchanged(chunks):
    model, trained = tiny(), 0
    probe = blobs(n_features=3)[0][:10]
    for X in chunks:
        before = model.predict(probe) if trained else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.partial_fit(X)
        except ValueError as exc:
            assert any(problem in str(exc) for problem in PROBLEMS), exc
            if trained:
                np.testing.assert_array_equal(model.predict(probe), before)
                assert model.n_iter_ == trained
            else:
                assert not hasattr(model, "net_")
            continue
        trained += 1
        assert model.n_iter_ == trained
        check_fitted(model, X)


TEXT = st.text(alphabet='0123456789.,-eE naNif\n"x', max_size=200)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(content=TEXT | st.binary(max_size=200), as_model=st.booleans())
def test_the_command_line_never_shows_a_traceback(content, as_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = folder / ("model.selflabel" if as_model else "data.csv")
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    data = folder / "x.csv"
    data.write_text("a,b\n1,2\n3,4\n5,7\n")
    options = ["--max-epochs", "1", "--hidden-layer-sizes", "4", "--n-heads", "1", "-q"]
    if as_model:
        argv = ["predict", str(path), str(data)]
    else:
        argv = ["fit", str(path), "--n-clusters", "2", *options, "-o", str(folder / "l.csv")]
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    assert status in (0, 2)
    assert "Traceback" not in err.getvalue()
    if status == 2:
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sklearn-selflabel: error: ")
