"""The kinds of flat rows: does each kind's recipe suit the rows that ``input_kind="auto"``
gives it?

Two checks of the rule in ``sklearn_selflabel/_geometry.py`` (the user guide's "Flat rows"):

* Tables as a user passes them, not standardised (the 12 UCI tables under ``--data-dir`` and
  sklearn's iris, wine and breast cancer): the defaults, beside the same fit with the recipe
  of wide rows forced (``input_kind="nonnegative"`` for non-negative tables, ``"embedding"``
  for signed ones), and KMeans (``n_init=10``) on the standardised rows.
* Wide signed rows, the outputs of a model or centred pixels (ResNet-18 features of MVTec
  centred, and centred and L2-normalised; sklearn's digits centred): the defaults beside the
  same fit with the table's recipe forced (``input_kind="tabular"``), and KMeans.

    python benchmarks/kinds.py --data-dir ../shared/data

Writes ``benchmarks/results/kinds.md``: mean ACC over ``--seeds`` (2 torch threads, one fit
at a time).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.preprocessing import StandardScaler, normalize
from suite_data import UCI

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy
from sklearn_selflabel._geometry import profile_rows

ROOT = Path(__file__).resolve().parents[1]
SKLEARN = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer}


def tables(data_dir: Path):
    for name in UCI:
        path = data_dir / "uci" / f"{name}.npz"
        if not path.exists():
            print(f"{name}: {path} missing, skipped")
            continue
        with np.load(path) as data:
            yield name, data["X"].astype(np.float32), data["y"]
    for name, loader in SKLEARN.items():
        X, y = loader(return_X_y=True)
        yield name, X.astype(np.float32), y


def wide_signed_rows(data_dir: Path):
    path = data_dir / "embeddings" / "mvtec_resnet18.npz"
    if path.exists():
        with np.load(path) as data:
            X, y = data["X"].astype(np.float32), data["y"]
        centered = X - X.mean(axis=0)
        yield "mvtec_resnet18, centred", centered, y
        yield "mvtec_resnet18, centred and L2-normalised", normalize(centered), y
    else:
        print(f"{path} missing, skipped")
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32) / 16.0
    yield "digits, centred", X - X.mean(axis=0), y


def mean_acc(X, y, seeds, **params) -> tuple[float, float]:
    """Mean ACC over ``seeds`` of the defaults with ``params``, and mean fit seconds."""
    accs, seconds = [], []
    for seed in seeds:
        start = time.perf_counter()
        model = SelfLabelingClusterer(len(np.unique(y)), random_state=seed, **params).fit(X)
        seconds.append(time.perf_counter() - start)
        accs.append(clustering_accuracy(y, model.labels_))
    return float(np.mean(accs)), float(np.mean(seconds))


def kmeans_acc(X, y, seeds, standardize: bool) -> float:
    rows = StandardScaler().fit_transform(X) if standardize else X
    k = len(np.unique(y))
    fits = [KMeans(k, n_init=10, random_state=s).fit_predict(rows) for s in seeds]
    return float(np.mean([clustering_accuracy(y, labels) for labels in fits]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/kinds.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    seeds = args.seeds
    lines = [
        "# The kinds of flat rows",
        "",
        f"`python benchmarks/kinds.py --seeds {' '.join(map(str, seeds))}`: mean ACC over "
        f"{len(seeds)} seeds (2 torch threads). `benchmarks/kinds.py` says what runs.",
        "",
        "## Tables as given (not standardised)",
        "",
        "| table | detected kind | defaults | recipe of wide rows | KMeans (standardised) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, X, y in tables(args.data_dir):
        kind = profile_rows(X).kind
        wide = "nonnegative" if X.min() >= 0 else "embedding"
        ours, _ = mean_acc(X, y, seeds)
        forced, _ = mean_acc(X, y, seeds, input_kind=wide)
        km = kmeans_acc(X, y, seeds, standardize=True)
        row = f"| {name} | {kind} | {ours:.3f} | {forced:.3f} ({wide}) | {km:.3f} |"
        print(row, flush=True)
        lines.append(row)
    lines += [
        "",
        "## Wide signed rows",
        "",
        "| rows | detected kind | defaults | table's recipe | KMeans | fit s, defaults |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, X, y in wide_signed_rows(args.data_dir):
        ours, seconds = mean_acc(X, y, seeds)
        table, _ = mean_acc(X, y, seeds, input_kind="tabular")
        km = kmeans_acc(X, y, seeds, standardize=False)
        kind = profile_rows(X).kind
        row = f"| {name} | {kind} | {ours:.3f} | {table:.3f} | {km:.3f} | {seconds:.1f} |"
        print(row, flush=True)
        lines.append(row)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
