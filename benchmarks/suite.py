"""The suite: this estimator's defaults against classical methods on every kind of flat rows.

Every shared set that is not an image set (``suite_data.py``): the 12 UCI tables, sklearn's
iris, wine and breast cancer, ``letter.npz`` (tables, standardised for every method), sklearn
digits, USPS, MNIST-test and a long-tailed MNIST-test as flat pixel rows, the two ResNet-18
embedding sets and the sparse TF-IDF ``text_2topics.npz``. ``n_clusters`` is the number of
classes. For each set: ``SelfLabelingClusterer`` with its defaults over ``--seeds`` seeds, beside
KMeans (``n_init=10``), GaussianMixture, Ward and spectral clustering on a kNN graph with their
defaults (the mixture on at most 50 principal components, truncated SVD for sparse rows: full
covariances are not estimable in hundreds of dimensions), and UMAP + GMM as in N2D where
umap-learn is installed (``pip install -e .[umap]``).

    python benchmarks/suite.py --data-dir ../shared/data

Fits run in ``--jobs`` parallel processes (default 2, the reference machine's cores) with one
torch thread each; UMAP's compilation is done once per process before any timed fit. Each
finished fit is appended to ``benchmarks/results/suite.jsonl`` and not run again (``--fresh``
starts over), so an interrupted run resumes. Writes ``benchmarks/results/suite.md``: per set
the mean ± sd of ACC and NMI, fit seconds, the smallest cluster as a share of N/K, the best
classical method, and whether the defaults are at or above it (mean ACC at most 0.005 below),
ending with the count of such sets.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.metrics import normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from suite_data import DATASETS, available, load

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OURS = "SelfLabelingClusterer"
CLASSICAL = ["KMeans", "GaussianMixture", "Ward", "Spectral (kNN)"]
UMAP_GMM = "UMAP + GMM"
# Mean ACC this far below the best classical method still counts as at or above it.
TIE = 0.005


def umap_installed() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def classical(method: str, n_clusters: int, seed: int, X):
    """The classical method ``method`` with its defaults (see the module docstring)."""
    if method == "KMeans":
        return KMeans(n_clusters, n_init=10, random_state=seed)
    if method == "Ward":
        return AgglomerativeClustering(n_clusters, linkage="ward")
    if method == "Spectral (kNN)":
        return SpectralClustering(n_clusters, affinity="nearest_neighbors", random_state=seed)
    gmm = GaussianMixture(n_clusters, random_state=seed)
    if method == UMAP_GMM:
        import umap

        # N2D's settings: as many dimensions as clusters, 20 neighbours, min_dist 0.
        metric = "cosine" if sp.issparse(X) else "euclidean"
        layout = umap.UMAP(
            n_components=n_clusters, n_neighbors=20, min_dist=0.0, metric=metric, random_state=seed
        )
        return make_pipeline(layout, gmm)
    if sp.issparse(X):
        return make_pipeline(TruncatedSVD(50, random_state=seed), gmm)
    if X.shape[1] > 50:
        return make_pipeline(PCA(50, random_state=seed), gmm)
    return gmm


def _warm_umap() -> None:
    """Compile UMAP's numba functions, so that no timed fit pays for it."""
    import umap

    rows = np.random.default_rng(0).standard_normal((300, 5))
    umap.UMAP(n_components=2, n_neighbors=10, random_state=0).fit_transform(rows)


_WARM = {"umap": False}


def run_one(job: dict, data_dir: str, params: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    X, y = load(job["data"], Path(data_dir))
    n_clusters = len(np.unique(y))
    if job["method"] == OURS:
        model = SelfLabelingClusterer(n_clusters, random_state=job["seed"], **params)
    else:
        if job["method"] == UMAP_GMM and not _WARM["umap"]:
            _warm_umap()
            _WARM["umap"] = True
        model = classical(job["method"], n_clusters, job["seed"], X)
        if job["method"] == "Ward" and sp.issparse(X):
            X = X.toarray()
        if not sp.issparse(X):
            X = X.astype(np.float64)  # sklearn's estimators are most stable in float64
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = model.fit_predict(X)
    seconds = time.perf_counter() - start
    sizes = np.bincount(labels, minlength=n_clusters)
    return {
        **job,
        "acc": clustering_accuracy(y, labels),
        "nmi": normalized_mutual_info_score(y, labels),
        "fit_s": seconds,
        "min_share": float(sizes.min() / (len(y) / n_clusters)),
    }


def planned_jobs(sets: list[str], seeds: list[int], methods: list[str]) -> list[dict]:
    jobs = []
    for data in sets:
        for method in methods:
            # Ward is deterministic: one run.
            for seed in seeds[:1] if method == "Ward" else seeds:
                jobs.append(dict(data=data, method=method, seed=seed))
    return jobs


def key(job: dict) -> tuple:
    return job["data"], job["method"], job["seed"]


def summary(rows: list[dict]) -> dict:
    def stat(name):
        values = np.array([r[name] for r in rows])
        return float(values.mean()), float(values.std())

    return {
        "acc": stat("acc"),
        "nmi": stat("nmi"),
        "fit_s": float(np.mean([r["fit_s"] for r in rows])),
        "min_share": float(min(r["min_share"] for r in rows)),
        "n": len(rows),
    }


def verdicts(results: list[dict], sets: list[str]) -> dict:
    """Per set: the summaries by method, the best classical method, and the comparisons."""
    out = {}
    for data in sets:
        by_method = {}
        for method in [OURS, *CLASSICAL, UMAP_GMM]:
            rows = [r for r in results if r["data"] == data and r["method"] == method]
            if rows:
                by_method[method] = summary(rows)
        if OURS not in by_method:
            continue
        others = [m for m in by_method if m != OURS]
        if not others:
            continue
        best = max(others, key=lambda m: by_method[m]["acc"][0])
        ours = by_method[OURS]["acc"][0]
        kmeans = by_method.get("KMeans", {"acc": (np.nan, 0)})["acc"][0]
        umap_s = by_method.get(UMAP_GMM, {}).get("fit_s")
        out[data] = {
            "methods": by_method,
            "best": best,
            "gap": ours - by_method[best]["acc"][0],
            "at_or_above": ours >= by_method[best]["acc"][0] - TIE,
            "kmeans_gap": ours - kmeans,
            "time_bound": None if umap_s is None else max(3 * umap_s, 5.0),
        }
    return out


def per_method(table: dict, methods: list[str], title: str, cell) -> list[str]:
    """A table of ``cell(summary)`` per set and method, under ``title``."""
    lines = ["", title, "", "| set | " + " | ".join(methods) + " |"]
    lines.append("|" + "---|" * (len(methods) + 1))
    for data, v in table.items():
        cells = [cell(v["methods"][m]) if m in v["methods"] else "" for m in methods]
        lines.append(f"| {data} | " + " | ".join(cells) + " |")
    return lines


def report(results: list[dict], sets: list[str], args) -> str:
    table = verdicts(results, sets)
    methods = [OURS, *CLASSICAL] + (
        [UMAP_GMM] if any(UMAP_GMM in v["methods"] for v in table.values()) else []
    )
    lines = [
        "# The suite: defaults against classical methods",
        "",
        f"`python benchmarks/suite.py --data-dir {args.data_dir} --seeds {len(args.seeds)}` "
        f"(`benchmarks/suite.py` says what runs). ACC as mean ± sd over seeds (Ward: one run, "
        f"it is deterministic); fit seconds with one torch thread per fit, {args.jobs} fits at "
        f'a time on {os.cpu_count()} cores; "smallest" is the smallest cluster of '
        f'{OURS}\'s fits as a share of N/K (the minimum over seeds). "at or above": mean ACC '
        f"at most {TIE} below the best classical method. The time bound is 3 times the fit "
        "seconds of UMAP + GMM, or 5 s if larger.",
        "",
        "| set | rows x features, classes | "
        + " | ".join(methods)
        + " | best classical | at or above | ours: fit s | time bound s | smallest |",
        "|" + "---|" * (len(methods) + 7),
    ]
    for data, v in table.items():
        X, y = load(data, Path(args.data_dir))
        counts = np.bincount(y)
        cells = []
        for method in methods:
            s = v["methods"].get(method)
            if s is None:
                cells.append("")
                continue
            acc = f"{s['acc'][0]:.3f}"
            if s["n"] > 1:
                acc += f" ± {s['acc'][1]:.3f}"
            cells.append(f"**{acc}**" if method == v["best"] else acc)
        bound = "" if v["time_bound"] is None else f"{v['time_bound']:.1f}"
        lines.append(
            f"| {data} | {X.shape[0]} x {X.shape[1]}, {len(counts)} ({counts.max()} .. "
            f"{counts.min()}) | "
            + " | ".join(cells)
            + f" | {v['best']} | {'yes' if v['at_or_above'] else 'no'} ({v['gap']:+.3f}) | "
            f"{v['methods'][OURS]['fit_s']:.1f} | {bound} | "
            f"{v['methods'][OURS]['min_share']:.2f} |"
        )
    n_at = sum(v["at_or_above"] for v in table.values())
    below_kmeans = [d for d, v in table.items() if v["kmeans_gap"] < -0.02]
    over_time = [
        d
        for d, v in table.items()
        if v["time_bound"] is not None and v["methods"][OURS]["fit_s"] > v["time_bound"]
    ]
    lines += per_method(table, methods, "NMI, mean over seeds:", lambda m: f"{m['nmi'][0]:.3f}")
    lines += per_method(
        table, methods, "Fit seconds, mean over seeds:", lambda m: f"{m['fit_s']:.2f}"
    )
    lines += [
        "",
        f"More than 0.02 below KMeans on: {', '.join(below_kmeans) or 'no set'}.",
        "",
        f"Over the time bound on: {', '.join(over_time) or 'no set'}"
        + ("" if any(v["time_bound"] for v in table.values()) else " (UMAP + GMM not run)")
        + ".",
        "",
        f"At or above the best classical method on {n_at} of {len(table)} sets.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=None, help="default: all")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--params", type=json.loads, default={}, help="estimator parameters, as JSON"
    )
    parser.add_argument("--fresh", action="store_true", help="ignore earlier results")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--log", type=Path, default=RESULTS / "suite.jsonl")
    parser.add_argument("--output", type=Path, default=RESULTS / "suite.md")
    args = parser.parse_args()

    sets = [s for s in args.sets if available(s, args.data_dir)]
    for name in sorted(set(args.sets) - set(sets)):
        print(f"{name}: not found in {args.data_dir}, skipped")
    methods = args.methods or [OURS, *CLASSICAL] + ([UMAP_GMM] if umap_installed() else [])
    args.log.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh and args.log.exists():
        args.log.unlink()
    done = (
        [json.loads(line) for line in args.log.read_text().splitlines()]
        if args.log.exists()
        else []
    )
    finished = {key(r) for r in done}
    todo = (
        []
        if args.report_only
        else [j for j in planned_jobs(sets, args.seeds, methods) if key(j) not in finished]
    )
    # The quick classical fits first, then the estimator's, largest sets first.
    size = {name: i for i, name in enumerate(["letter", "svhn3_resnet18", "mnist", "usps"])}
    todo.sort(key=lambda j: (j["method"] == OURS, j["method"] == UMAP_GMM, size.get(j["data"], 9)))
    print(f"{len(done)} fits on record, {len(todo)} to run with {args.jobs} processes", flush=True)
    parallel = Parallel(n_jobs=args.jobs, return_as="generator_unordered")
    with args.log.open("a") as log:
        jobs = (delayed(run_one)(j, str(args.data_dir), args.params) for j in todo)
        for result in parallel(jobs):
            log.write(json.dumps(result) + "\n")
            log.flush()
            done.append(result)
            print(
                f"{result['data']:24} {result['method']:22} seed {result['seed']}: "
                f"ACC {result['acc']:.3f}  {result['fit_s']:.1f} s",
                flush=True,
            )
    results = [r for r in done if r["seed"] in args.seeds and r["data"] in sets]
    text = report(results, sets, args)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
