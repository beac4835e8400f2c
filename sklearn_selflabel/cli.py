"""Command line: ``sklearn-selflabel fit`` clusters a data file, ``predict`` applies a saved model.

Run ``sklearn-selflabel --help`` (or ``python -m sklearn_selflabel.cli --help``) for the options.
Every problem with the input or output files is reported as one line on stderr,
``sklearn-selflabel: error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import joblib
import numpy as np

from ._archive import looks_like_a_pickle
from ._files import plain_mode, write_atomically
from ._persistence import load
from .clusterer import SelfLabelingClusterer

PROG = "sklearn-selflabel"
_SUFFIXES = (".csv", ".npy", ".npz", ".parquet")
# Estimator parameters that `fit` exposes as options of the same name (dashes for underscores).
_ESTIMATOR_OPTIONS = (
    "n_clusters",
    "max_epochs",
    "random_state",
    "n_heads",
    "hidden_layer_sizes",
    "embedding_dim",
    "batch_size",
    "lr",
    "device",
    "n_init",
    "cluster_sizes",
)


class CLIError(Exception):
    """A problem with the user's input or files, reported as one line without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str or None, default=None
        Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 2 on a usage error or a problem with the files, 130 when
        interrupted.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error that argparse has already reported
        return int(exc.code or 0)
    try:
        with _warnings_as_lines():
            args.run(args)
    except CLIError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(message: object) -> str:
    return " ".join(str(message).split())  # one line, even for multi-line library messages


@contextlib.contextmanager
def _warnings_as_lines():
    """Show each warning as one line, ``sklearn-selflabel: warning: ...``, not as source."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


# ------------------------------------------------------------------------------------ parser


def _build_parser() -> argparse.ArgumentParser:
    defaults = SelfLabelingClusterer().get_params()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Self-labelling deep clustering (SeLa) of tabular or image data.",
        epilog="Labels are written as CSV with one column 'label' and one row per input row. "
        "Data files: .csv (header row of column names; every selected column numeric), .npy, "
        ".npz (array 'X', or its only array) or .parquet (needs pyarrow).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser(
        "fit",
        help="cluster a data file, write its labels and optionally save the model",
        description="Fit a SelfLabelingClusterer on DATA and write the cluster of each row.",
    )
    fit.add_argument(
        "data", type=Path, metavar="DATA", help="data file (.csv, .npy, .npz, .parquet)"
    )
    fit.add_argument(
        "--n-clusters",
        type=_n_clusters,
        required=True,
        metavar="K",
        help="number of clusters, or 'auto' to estimate it",
    )
    fit.add_argument(
        "--image-shape",
        type=_positive_int,
        nargs=2,
        metavar=("H", "W"),
        help="treat each row as an H x W image (H * W must equal the number of features): "
        "image augmentation, a convolutional encoder and invariance propagation",
    )
    _add_io_options(fit)
    fit.add_argument(
        "--save",
        type=Path,
        metavar="MODEL",
        help="save the fitted model here (a model file that loading cannot run code from)",
    )
    fit.add_argument(
        "--max-epochs",
        type=_positive_int,
        metavar="N",
        help="training epochs (default: auto: 40 from a start that clusters the rows; from a "
        "random split, enough epochs for at least 480 optimizer steps (960 with --image-shape), "
        "within 60 to 120)",
    )
    fit.add_argument(
        "--random-state",
        type=int,
        metavar="S",
        help="seed, for reproducible fits (default: none, a different fit each run)",
    )
    fit.add_argument(
        "--n-init",
        type=_positive_int,
        metavar="N",
        help="fits from different seeds; the best-scored one is kept (default: auto: 2 for "
        "image fits (--image-shape) from a random split of at most 1000 optimizer steps, epochs "
        "times batches per epoch, else 1)",
    )
    fit.add_argument(
        "--cluster-sizes",
        choices=("equal", "estimated"),
        help="cluster sizes that labelling aims at: equal throughout, or, once the embedding "
        "holds the categories, the sizes it supports (default: estimated)",
    )
    fit.add_argument(
        "--n-heads",
        type=_positive_int,
        metavar="N",
        help=f"classifier heads (default: {defaults['n_heads']})",
    )
    fit.add_argument(
        "--hidden-layer-sizes",
        type=_positive_int,
        nargs="+",
        metavar="N",
        help="widths of the encoder's hidden layers (default: "
        f"{' '.join(map(str, defaults['hidden_layer_sizes']))})",
    )
    fit.add_argument(
        "--embedding-dim",
        type=_positive_int,
        metavar="N",
        help=f"size of the learned embedding (default: {defaults['embedding_dim']})",
    )
    fit.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help=f"mini-batch size (default: {defaults['batch_size']}: 256)",
    )
    fit.add_argument(
        "--lr", type=float, metavar="RATE", help=f"learning rate (default: {defaults['lr']})"
    )
    fit.add_argument(
        "--device",
        metavar="DEVICE",
        help=f"torch device, e.g. cpu or cuda (default: {defaults['device']}: CUDA when it is "
        "available and the data holds at least 2,000,000 values, rows times features, else the "
        "CPU)",
    )
    fit.add_argument(
        "-q", "--quiet", action="store_true", help="print no progress or summary on stderr"
    )
    fit.set_defaults(run=_run_fit)

    predict = commands.add_parser(
        "predict",
        help="write the clusters of a data file under a saved model",
        description="Predict the cluster of each row of DATA with a model saved by 'fit --save' "
        "(or SelfLabelingClusterer.save). Reading a model file runs no code from it.",
    )
    predict.add_argument("model", type=Path, metavar="MODEL", help="model file from 'fit --save'")
    predict.add_argument(
        "data", type=Path, metavar="DATA", help="data file with the model's features, in order"
    )
    predict.add_argument(
        "--trust-module",
        action="append",
        default=[],
        metavar="PACKAGE.MODULE:CLASS",
        help="import this custom encoder class that the model names (importing runs its code)",
    )
    predict.add_argument(
        "--trust-pickle",
        action="store_true",
        help="accept a pickle (joblib) model file from an earlier version; unpickling runs "
        "whatever code the file holds: only for files you trust",
    )
    _add_io_options(predict)
    predict.set_defaults(run=_run_predict)
    return parser


def _add_io_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="LABELS",
        help="write the labels CSV here (default: standard output)",
    )
    parser.add_argument(
        "--columns",
        type=_column_list,
        metavar="A,B,...",
        help="comma-separated feature columns of a .csv or .parquet file (default: all)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _n_clusters(text: str) -> int | str:
    return text if text == "auto" else _positive_int(text)


def _column_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} contains an empty column name")
    return names


# ---------------------------------------------------------------------------------- commands


def _run_fit(args: argparse.Namespace) -> None:
    # Check where the outputs go before a possibly long fit, not after it.
    for path in (args.output, args.save):
        _check_output_dir(path)
    X = _load_data(args.data, args.columns)
    params = {name: getattr(args, name) for name in _ESTIMATOR_OPTIONS}
    params = {name: value for name, value in params.items() if value is not None}
    if "hidden_layer_sizes" in params:
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    if args.image_shape is not None:
        params["image_shape"] = _image_shape(args.image_shape, X.shape[1])
    # verbose=1: a progress bar over the epochs on stderr. Anything else that training might
    # print goes to stderr too, since stdout may be carrying the labels.
    model = SelfLabelingClusterer(**params, verbose=0 if args.quiet else 1)
    with contextlib.redirect_stdout(sys.stderr):
        try:
            model.fit(X)
        except (ValueError, FloatingPointError) as exc:
            raise CLIError(f"fit failed: {exc}") from None
    _write_labels(model.labels_, args.output)
    if args.save is not None:
        try:
            model.save(args.save)
        except OSError as exc:
            raise CLIError(f"{args.save}: cannot write: {exc.strerror or exc}") from None
    if not args.quiet:
        sizes = np.bincount(model.labels_, minlength=model.n_clusters_)
        print(
            f"{PROG}: {X.shape[0]} rows in {model.n_clusters_} clusters of sizes "
            f"{sizes.min()} to {sizes.max()}; labels written to {args.output or 'stdout'}"
            + (f", model saved to {args.save}" if args.save is not None else ""),
            file=sys.stderr,
        )


def _run_predict(args: argparse.Namespace) -> None:
    _check_output_dir(args.output)
    model = _load_model(args.model, args.trust_module, args.trust_pickle)
    X = _load_data(args.data, args.columns)
    if X.shape[1] != model.n_features_in_:
        raise CLIError(
            f"{args.data}: has {X.shape[1]} features but the model {args.model} was fitted on "
            f"{model.n_features_in_}"
        )
    _write_labels(model.predict(X), args.output)


def _image_shape(shape: list[int], n_features: int) -> tuple[int, int]:
    height, width = shape
    if height * width != n_features:
        raise CLIError(
            f"--image-shape {height} {width} describes {height * width} pixels but the data has "
            f"{n_features} features"
        )
    return height, width


def _load_model(path: Path, trusted: list[str], trust_pickle: bool) -> SelfLabelingClusterer:
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    if trust_pickle and looks_like_a_pickle(path):
        try:
            model = joblib.load(path)
        except Exception as exc:  # unpickling arbitrary bytes can raise almost any exception
            raise CLIError(
                f"{path}: cannot load a model from this file ({type(exc).__name__}: {exc})"
            ) from None
    else:
        try:
            model = load(path, trusted=trusted)
        except ValueError as exc:
            hint = ""
            if looks_like_a_pickle(path):
                hint = (
                    "; if you trust it, pass --trust-pickle, or load it and save it again "
                    "with SelfLabelingClusterer.save"
                )
            raise CLIError(f"{exc}{hint}") from None
        except (ImportError, AttributeError) as exc:
            raise CLIError(f"{path}: cannot import the model's module: {exc}") from None
    if not (isinstance(model, SelfLabelingClusterer) and model.__sklearn_is_fitted__()):
        raise CLIError(
            f"{path}: holds a {type(model).__name__}, not a fitted SelfLabelingClusterer"
        )
    return model


# -------------------------------------------------------------------------------------- data


def _load_data(path: Path, columns: list[str] | None) -> np.ndarray:
    """Read ``path`` as a finite float array of shape (n_samples, n_features)."""
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise CLIError(
            f"{path}: unsupported file type {suffix!r}; use one of {', '.join(_SUFFIXES)}"
        )
    if columns is not None and suffix in (".npy", ".npz"):
        raise CLIError(f"{path}: --columns needs a .csv or .parquet file with named columns")
    readers = {".csv": _read_csv, ".npy": _read_npy, ".npz": _read_npz, ".parquet": _read_parquet}
    try:
        X, names = readers[suffix](path, columns)
    except (OSError, ValueError, EOFError, csv.Error, zipfile.BadZipFile) as exc:
        raise CLIError(f"{path}: cannot read this {suffix} file: {exc}") from None
    if X.ndim != 2:
        raise CLIError(f"{path}: expected a 2-D array (rows x features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise CLIError(f"{path}: contains no data (shape {X.shape})")
    if X.dtype.kind not in "biuf":
        raise CLIError(f"{path}: holds {X.dtype} values, not numbers")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    not_finite = np.argwhere(~np.isfinite(X))
    if not_finite.size:
        row, col = not_finite[0]
        column = repr(names[col]) if names is not None else str(col)
        raise CLIError(
            f"{path}: value {X[row, col]} in column {column}, data row {row + 1}; "
            "remove or impute missing and infinite values first"
        )
    return X


def _select_columns(path: Path, names: list[str], columns: list[str] | None) -> list[int]:
    if columns is None:
        return list(range(len(names)))
    missing = [name for name in columns if name not in names]
    if missing:
        raise CLIError(
            f"{path}: no column {', '.join(map(repr, missing))}; the file has "
            f"{', '.join(map(repr, names))}"
        )
    return [names.index(name) for name in columns]


def _read_csv(path: Path, columns: list[str] | None) -> tuple[np.ndarray, list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as file:
        header = next(csv.reader(file), None)
    if not header:
        raise CLIError(f"{path}: is empty; expected a header row of column names")
    header = [name.strip() for name in header]
    usecols = _select_columns(path, header, columns)
    try:
        with warnings.catch_warnings():
            # A header without rows is reported by _load_data; numpy's warning would be a
            # second line on stderr.
            warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
            X = np.loadtxt(
                path,
                delimiter=",",
                skiprows=1,
                # Without a selection loadtxt checks that every row has all the fields.
                usecols=None if columns is None else usecols,
                ndmin=2,
                quotechar='"',
                comments=None,
                encoding="utf-8-sig",
                dtype=np.float64,
            )
    except ValueError as exc:
        # numpy's message counts rows inconsistently; name the file line and column instead.
        raise CLIError(f"{path}: {_csv_problem(path, header, usecols) or exc}") from None
    return X, [header[i] for i in usecols]


def _csv_problem(path: Path, header: list[str], usecols: list[int]) -> str | None:
    """The first ragged row or non-numeric value of a CSV file, described for the user."""
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        next(reader)
        for row in reader:
            if not row:  # loadtxt skips blank lines too
                continue
            if len(row) != len(header):
                return (
                    f"line {reader.line_num} has {len(row)} fields but the header has {len(header)}"
                )
            for col in usecols:
                try:
                    float(row[col])
                except ValueError:
                    return (
                        f"non-numeric value {row[col]!r} in column {header[col]!r} on line "
                        f"{reader.line_num}"
                    )
    return None


def _read_npy(path: Path, columns: None) -> tuple[np.ndarray, None]:
    with open(path, "rb") as file:
        if file.read(6) != b"\x93NUMPY":
            raise CLIError(f"{path}: is not a NumPy .npy file")
    return np.load(path, allow_pickle=False), None


def _read_npz(path: Path, columns: None) -> tuple[np.ndarray, None]:
    if not zipfile.is_zipfile(path):
        raise CLIError(f"{path}: is not a NumPy .npz file")
    with np.load(path, allow_pickle=False) as archive:
        names = archive.files
        if "X" in names:
            return archive["X"], None
        if len(names) == 1:
            return archive[names[0]], None
    raise CLIError(
        f"{path}: holds arrays {', '.join(map(repr, names)) or '(none)'}; name the data 'X' "
        "or store only one array"
    )


def _read_parquet(path: Path, columns: list[str] | None) -> tuple[np.ndarray, list[str]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CLIError("reading .parquet files needs pyarrow: pip install pyarrow") from None
    names = pq.read_schema(path).names
    selected = [names[i] for i in _select_columns(path, names, columns)]
    table = pq.read_table(path, columns=selected)
    for field in table.schema:
        if not (
            pa.types.is_integer(field.type)
            or pa.types.is_floating(field.type)
            or pa.types.is_boolean(field.type)
        ):
            raise CLIError(f"{path}: column {field.name!r} holds {field.type} values, not numbers")
    # Nulls become NaN here, which _load_data then reports.
    X = np.column_stack([table.column(name).to_numpy().astype(np.float64) for name in selected])
    return X, selected


# ------------------------------------------------------------------------------------ output


def _check_output_dir(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        raise CLIError(f"{path}: is a directory; name the file to write")
    if not path.absolute().parent.is_dir():
        raise CLIError(f"{path}: directory {path.absolute().parent} does not exist")


def _write_labels(labels: np.ndarray, output: Path | None) -> None:
    text = "label\n" + "".join(f"{label}\n" for label in labels.tolist())
    if output is None:
        sys.stdout.write(text)
    else:
        _atomic_write(output, lambda file: file.write(text.encode()))


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` atomically, with the mode a plain ``open()`` would give it.

    A failure at any point leaves ``path`` as it was (absent or the previous version) and
    removes the temporary file.
    """
    try:
        write_atomically(path, write, mode=plain_mode())
    except OSError as exc:
        raise CLIError(f"{path}: cannot write: {exc.strerror or exc}") from None


if __name__ == "__main__":
    sys.exit(main())
