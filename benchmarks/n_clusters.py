"""``n_clusters="auto"`` against the true number of clusters, and HDBSCAN beside both.

For each data set: the true K; the K that ``SelfLabelingClusterer(n_clusters="auto")``
estimates, with that fit's ACC, NMI and seconds; a fit with the true K (ACC, NMI, seconds);
the ratio of the two fits' seconds; and HDBSCAN of the input rows (standardised tables, the
sparse rows' 100 leading components of their L2-normalised TF-IDF, flat pixels) with the same
minimum cluster size as the estimate, its K and NMI (noise counted as one more cluster).

    python benchmarks/n_clusters.py --data-dir ../shared/data

appends one JSON record per (set, seed) to ``benchmarks/results/n_clusters.jsonl`` (a set
already recorded for a seed is skipped) and writes the table
``benchmarks/results/n_clusters.md`` from all records. Fits run one set per process,
``--jobs`` at a time, each with one torch thread, so that the two fits of a set are timed
alike. With ``--hard-cases`` it measures instead the estimate where it is weakest: data
without groups, and a few hundred non-negative rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed
from sklearn.cluster import HDBSCAN
from sklearn.datasets import make_blobs
from sklearn.decomposition import TruncatedSVD
from sklearn.metrics import normalized_mutual_info_score
from sklearn.preprocessing import normalize

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

try:  # as a script, benchmarks/ is on the path
    from quality import load
except ImportError:  # as a module (tests)
    from benchmarks.quality import load

RESULTS = Path(__file__).parent / "results"
# Blobs in 16 dimensions, 100 rows per centre and at least 1,500 rows.
BLOBS = {"blobs3": 3, "blobs12": 12, "blobs30": 30}
# Sets fitted as images (the others as flat rows).
IMAGES = ("usps",)
SETS = ("blobs3", "blobs12", "blobs30", "digits", "usps", "letter", "text", "wine", "iris")


def data(name: str, data_dir: Path):
    """``(X, y, image_shape or None)``."""
    if name in BLOBS:
        centers = BLOBS[name]
        X, y = make_blobs(
            n_samples=100 * max(centers, 15), centers=centers, n_features=16, random_state=0
        )
        return X.astype(np.float32), y, None
    X, y, shape = load(name, data_dir)
    return X, y, (shape if name in IMAGES else None)


def hdbscan_rows(X) -> np.ndarray:
    """The rows HDBSCAN clusters: dense, and for sparse rows their leading components."""
    if sp.issparse(X):
        return TruncatedSVD(100, random_state=0).fit_transform(normalize(X))
    return np.asarray(X)


def run(name: str, seed: int, data_dir: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    X, y, shape = data(name, data_dir)
    true_k = len(np.unique(y))
    params = dict(random_state=seed, image_shape=shape)
    record = dict(data=name, seed=seed, n_samples=X.shape[0], true_k=true_k)
    # A first fit in a process pays for imports and first calls; neither timed fit should.
    warm_up, _ = make_blobs(n_samples=200, centers=3, random_state=0)
    SelfLabelingClusterer("auto", max_epochs=2, random_state=0).fit(warm_up)
    for key, n_clusters in (("true", true_k), ("auto", "auto")):
        start = time.perf_counter()
        model = SelfLabelingClusterer(n_clusters, **params).fit(X)
        record[f"{key}_seconds"] = time.perf_counter() - start
        record[f"{key}_acc"] = clustering_accuracy(y, model.labels_)
        record[f"{key}_nmi"] = normalized_mutual_info_score(y, model.labels_)
        if key == "auto":
            record["estimated_k"] = int(model.n_clusters_)
            curve = model.n_clusters_curve_
            record["curve"] = dict(
                min_cluster_size=curve["min_cluster_size"].tolist(),
                n_clusters=curve["n_clusters"].tolist(),
                selected=int(curve["selected"]),
            )
            min_size = int(curve["min_cluster_size"][curve["selected"]])
    labels = HDBSCAN(min_cluster_size=min_size, copy=True).fit_predict(hdbscan_rows(X))
    record["hdbscan_k"] = len(np.unique(labels[labels >= 0]))
    record["hdbscan_nmi"] = normalized_mutual_info_score(y, labels)
    return record


def hard_cases(results: Path) -> None:
    """The estimate where it is weakest: printed, and written to ``n_clusters_hard_cases.md``.

    Data without groups (the right estimate is its least, 2), three non-negative blobs of
    150 rows each (too few rows for the autoencoder's codes), and three blobs of unequal sizes
    (the smallest below half its equal share), each for random states 0 to 2.
    """
    rng = np.random.default_rng(0)
    blobs, _ = make_blobs(
        n_samples=450, centers=3, n_features=20, cluster_std=0.5, center_box=(0, 10),
        random_state=0,
    )  # fmt: skip
    unequal, _ = make_blobs(n_samples=[150, 450, 900], n_features=16, random_state=0)
    sets = {
        "Gaussian, 1000 x 5": (rng.normal(size=(1000, 5)), "none (2)"),
        "uniform cube, 1000 x 5": (rng.random((1000, 5)), "none (2)"),
        "3 non-negative blobs, 450 x 20": (np.clip(blobs, 0, None), "3"),
        "3 blobs of 150, 450 and 900 rows, 16-D": (unequal, "3"),
    }
    lines = [
        '# `n_clusters="auto"` where it is weakest',
        "",
        "`python benchmarks/n_clusters.py --hard-cases`; data without groups should give the "
        "least estimate, 2.",
        "",
        "| data | right answer | random_state | n_clusters_ | curve |",
        "|---|---|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    for name, (X, answer) in sets.items():
        for seed in range(3):
            model = SelfLabelingClusterer("auto", max_epochs=1, random_state=seed).fit(X)
            curve = model.n_clusters_curve_
            points = " ".join(
                f"{k}@{m}"
                for m, k in zip(curve["min_cluster_size"], curve["n_clusters"], strict=True)
            )
            lines.append(f"| {name} | {answer} | {seed} | {model.n_clusters_} | {points} |")
            print(lines[-1], flush=True)
    (results / "n_clusters_hard_cases.md").write_text("\n".join(lines) + "\n")


def table(records: list[dict]) -> str:
    lines = [
        '# `n_clusters="auto"`',
        "",
        "`python benchmarks/n_clusters.py --data-dir ../shared/data`: seed 0 for every set; "
        "`--seed S --sets ...` adds other seeds' rows. Fit seconds with one torch thread per "
        "fit, the two fits of a set in the same process. "
        "HDBSCAN: of the input rows (sparse rows: 100 SVD components of the L2-normalised "
        "TF-IDF) with the estimate's minimum cluster size; its noise counts as a cluster in "
        "NMI. Curve: the estimate's count at each minimum cluster size (the estimate's "
        "size in bold).",
        "",
        "| set | seed | N | true K | estimated K | ACC auto | ACC true K | NMI auto | NMI true K "
        "| NMI ratio | fit s auto | fit s true K | time ratio | HDBSCAN K | HDBSCAN NMI | curve |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = {name: i for i, name in enumerate(SETS)}
    for r in sorted(records, key=lambda r: (order.get(r["data"], 99), r["seed"])):
        curve = r["curve"]
        points = [
            f"**{k}@{m}**" if i == curve["selected"] else f"{k}@{m}"
            for i, (m, k) in enumerate(
                zip(curve["min_cluster_size"], curve["n_clusters"], strict=True)
            )
        ]
        lines.append(
            f"| {r['data']} | {r['seed']} | {r['n_samples']} | {r['true_k']} | {r['estimated_k']} "
            f"| {r['auto_acc']:.3f} | {r['true_acc']:.3f} | {r['auto_nmi']:.3f} "
            f"| {r['true_nmi']:.3f} | {r['auto_nmi'] / r['true_nmi']:.2f} "
            f"| {r['auto_seconds']:.1f} | {r['true_seconds']:.1f} "
            f"| {r['auto_seconds'] / r['true_seconds']:.2f} | {r['hdbscan_k']} "
            f"| {r['hdbscan_nmi']:.3f} | {' '.join(points)} |"
        )
    lines.append("")
    for seed in sorted({r["seed"] for r in records}):
        runs = [r for r in records if r["seed"] == seed]
        exact = sum(r["estimated_k"] == r["true_k"] for r in runs)
        within = sum(abs(r["estimated_k"] - r["true_k"]) <= 0.25 * r["true_k"] for r in runs)
        lines.append(
            f"Seed {seed}: exact K on {exact} of {len(runs)} sets; within 25% on {within} of "
            f"{len(runs)}."
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--hard-cases", action="store_true", help="only the weakest cases")
    args = parser.parse_args()
    if args.hard_cases:
        args.results.mkdir(parents=True, exist_ok=True)
        hard_cases(args.results)
        return
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "n_clusters.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    done = {(r["data"], r["seed"]) for r in records}
    todo = [name for name in args.sets if (name, args.seed) not in done]
    for record in Parallel(n_jobs=args.jobs, return_as="generator_unordered")(
        delayed(run)(name, args.seed, args.data_dir) for name in todo
    ):
        print(json.dumps(record), flush=True)
        with path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        records.append(record)
    (args.results / "n_clusters.md").write_text(table(records))
    print(table(records))


if __name__ == "__main__":
    main()
