"""Clustering quality on digits, USPS and MNIST-test: this estimator against classical baselines.

Runs, over several seeds, ``SelfLabelingClusterer`` with its defaults (rows as flat vectors)
and with its defaults plus ``image_shape`` (the recommended configuration for images), and
KMeans, Agglomerative (ward), Spectral (kNN graph) and a Gaussian mixture (on 50 PCA
components; full covariances in 784 dimensions are not estimable from 10000 rows). Prints
and writes ACC (Hungarian-matched accuracy), NMI and ARI as mean +- sd over seeds, the fit
seconds and the smallest cluster as a share of N/K, then an ablation on USPS: SeLa alone,
+ image augmentation, + invariance propagation, + estimated cluster sizes, and 1 head against
the default 8.

    python benchmarks/quality.py --data-dir ../shared/data

Fits run in parallel processes with one torch thread each (``--jobs``, default 2, the cores
of the reference machine); fit seconds are therefore single-thread times. Each finished fit
is appended to ``benchmarks/results/quality.jsonl`` and is not run again (``--fresh``
starts over), so an interrupted run resumes. Writes ``benchmarks/results/quality.md`` and
``benchmarks/results/quality.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

RESULTS = Path(__file__).parent / "results"
N_CLUSTERS = 10
DATASETS = {
    "digits": "sklearn digits (1797 x 8x8)",
    "usps": "USPS (9298 x 16x16)",
    "mnist": "MNIST-test (10000 x 28x28)",
}
# method -> (label in the tables, whether it is given image_shape, estimator parameters)
OURS = {
    "selflabel": ("SelfLabelingClusterer, defaults", False, {}),
    "selflabel_image": ("SelfLabelingClusterer, defaults + image_shape", True, {}),
}
ABLATION = {
    "sela": (
        "SeLa alone (no views, no propagation, equal cluster sizes)",
        dict(augment_strength=0.0, propagation=False, cluster_sizes="equal"),
    ),
    "sela_aug": ("+ image augmentation", dict(propagation=False, cluster_sizes="equal")),
    "sela_aug_ip": ("+ invariance propagation", dict(cluster_sizes="equal")),
    "full": ("+ estimated cluster sizes (= defaults + image_shape)", {}),
    "one_head": ("... with 1 head instead of 8", dict(n_heads=1)),
}
BASELINES = ["KMeans", "Agglomerative (ward)", "Spectral (kNN)", "GMM (PCA 50)"]


def load(name: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        return X.astype(np.float32) / 16.0, y, (8, 8)
    data = np.load(data_dir / ("mnist_test.npz" if name == "mnist" else "usps.npz"))
    images = data["X"].astype(np.float32)
    if name == "mnist":
        images /= 255.0
    return images.reshape(len(images), -1), data["y"], images.shape[1:]


def baseline(method: str, seed: int):
    if method == "KMeans":
        return KMeans(N_CLUSTERS, n_init=10, random_state=seed)
    if method == "Agglomerative (ward)":
        return AgglomerativeClustering(N_CLUSTERS, linkage="ward")
    if method == "Spectral (kNN)":
        return SpectralClustering(
            N_CLUSTERS, affinity="nearest_neighbors", n_neighbors=10, random_state=seed
        )
    return make_pipeline(
        PCA(50, random_state=seed),
        GaussianMixture(N_CLUSTERS, covariance_type="full", n_init=3, random_state=seed),
    )


def run_one(job: dict, data_dir: str) -> dict:
    import torch

    torch.set_num_threads(1)
    X, y, shape = load(job["data"], Path(data_dir))
    if job["method"] in BASELINES:
        model = baseline(job["method"], job["seed"])
    else:
        params = dict(job["params"], image_shape=shape if job["image"] else None)
        model = SelfLabelingClusterer(N_CLUSTERS, random_state=job["seed"], **params)
    start = time.perf_counter()
    labels = model.fit_predict(X)
    seconds = time.perf_counter() - start
    sizes = np.bincount(labels, minlength=N_CLUSTERS)
    return {
        **job,
        "acc": clustering_accuracy(y, labels),
        "nmi": normalized_mutual_info_score(y, labels),
        "ari": adjusted_rand_score(y, labels),
        "fit_s": seconds,
        "min_share": float(sizes.min() / (len(y) / N_CLUSTERS)),
    }


def jobs(datasets: list[str], seeds: list[int], ablation: bool) -> list[dict]:
    out = []
    for seed in seeds:
        for data in datasets:
            for method, (_, image, params) in OURS.items():
                out.append(
                    dict(
                        table="main",
                        data=data,
                        method=method,
                        seed=seed,
                        image=image,
                        params=params,
                    )
                )
            for method in BASELINES:
                # Ward and spectral clustering are deterministic up to the seed of the
                # spectral embedding's k-means; one run of ward is enough.
                if method == "Agglomerative (ward)" and seed != seeds[0]:
                    continue
                out.append(
                    dict(table="main", data=data, method=method, seed=seed, image=False, params={})
                )
        if ablation and "usps" in datasets:
            for method, (_, params) in ABLATION.items():
                if method != "full":  # the same fit as selflabel_image
                    out.append(
                        dict(
                            table="ablation",
                            data="usps",
                            method=method,
                            seed=seed,
                            image=True,
                            params=params,
                        )
                    )
    return out


def key(job: dict) -> str:
    return json.dumps([job["table"], job["data"], job["method"], job["seed"], job["params"]])


def summarise(rows: list[dict]) -> dict:
    def stat(name):
        values = np.array([r[name] for r in rows])
        return values.mean(), values.std()

    return {
        "acc": stat("acc"),
        "nmi": stat("nmi"),
        "ari": stat("ari"),
        "fit_s": float(np.mean([r["fit_s"] for r in rows])),
        "min_share": float(min(r["min_share"] for r in rows)),
        "n": len(rows),
    }


def fmt(mean_sd) -> str:
    return f"{mean_sd[0]:.3f} ± {mean_sd[1]:.3f}"


def method_label(method: str) -> str:
    return OURS[method][0] if method in OURS else method


def equal_size_ceiling(y: np.ndarray) -> float:
    """Highest ACC of any clustering into ``N_CLUSTERS`` clusters of equal size ``N / K``.

    A cluster matched to class ``k`` can hold at most ``min(n_k, N / K)`` of its rows.
    """
    counts = np.bincount(y, minlength=N_CLUSTERS)
    return float(np.minimum(counts, len(y) / N_CLUSTERS).sum() / len(y))


def tables(results: list[dict], datasets: list[str], data_dir: Path) -> tuple[str, dict]:
    lines = []
    summary: dict = {}
    for data in datasets:
        y = load(data, data_dir)[1]
        counts = np.bincount(y)
        lines += [
            f"### {DATASETS[data]}",
            "",
            f"Classes hold {counts.min()} to {counts.max()} rows; a clustering into "
            f"{N_CLUSTERS} equal clusters (the equipartition) can reach at most ACC "
            f"{equal_size_ceiling(y):.3f}.",
            "",
            "| method | ACC | NMI | ARI | fit s | smallest cluster / (N/K) | runs |",
            "|---|---|---|---|---|---|---|",
        ]
        for method in [*OURS, *BASELINES]:
            rows = [
                r for r in results if (r["table"], r["data"], r["method"]) == ("main", data, method)
            ]
            if not rows:
                continue
            s = summary.setdefault(data, {})[method] = summarise(rows)
            lines.append(
                f"| {method_label(method)} | {fmt(s['acc'])} | {fmt(s['nmi'])} | "
                f"{fmt(s['ari'])} | {s['fit_s']:.1f} | {s['min_share']:.2f} | {s['n']} |"
            )
        lines.append("")
    ablation = []
    for method, (label, _) in ABLATION.items():
        # The full configuration is the main table's image fit on USPS.
        table, name = ("main", "selflabel_image") if method == "full" else ("ablation", method)
        rows = [r for r in results if (r["table"], r["data"], r["method"]) == (table, "usps", name)]
        if rows:
            s = summarise(rows)
            ablation.append(
                f"| {label} | {fmt(s['acc'])} | {fmt(s['nmi'])} | {s['fit_s']:.1f} | {s['n']} |"
            )
    if ablation:
        lines += [
            "### Ablation on USPS (all with image_shape)",
            "",
            "| configuration | ACC | NMI | fit s | runs |",
            "|---|---|---|---|---|",
            *ablation,
            "",
        ]
    return "\n".join(lines), summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [*OURS, *BASELINES]
    data_names = list(summary)
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        means = [summary[d].get(method, {"acc": (np.nan, 0)})["acc"][0] for d in data_names]
        sds = [summary[d].get(method, {"acc": (0, 0)})["acc"][1] for d in data_names]
        ax.bar(
            np.arange(len(data_names)) + i * width,
            means,
            width,
            yerr=sds,
            label=method_label(method),
            capsize=2,
        )
    ax.set_xticks(np.arange(len(data_names)) + 0.4 - width / 2, [DATASETS[d] for d in data_names])
    ax.set_ylabel("ACC (mean ± sd over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier results")
    args = parser.parse_args()

    datasets = [
        d
        for d in args.datasets
        if d == "digits"
        or (args.data_dir / ("mnist_test.npz" if d == "mnist" else "usps.npz")).exists()
    ]
    skipped = set(args.datasets) - set(datasets)
    if skipped:
        print(f"not found in {args.data_dir}: {sorted(skipped)} skipped")
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / "quality.jsonl"
    if args.fresh and log.exists():
        log.unlink()
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    finished = {key(r) for r in done}
    todo = [
        j
        for j in jobs(datasets, list(range(args.seeds)), not args.no_ablation)
        if key(j) not in finished
    ]
    # Longest first, so that the parallel workers finish together.
    todo.sort(key=lambda j: (j["data"] != "mnist", j["method"] in BASELINES))
    print(f"{len(done)} fits on record, {len(todo)} to run with {args.jobs} processes")
    parallel = Parallel(n_jobs=args.jobs, return_as="generator_unordered")
    with log.open("a") as out:
        for result in parallel(delayed(run_one)(j, str(args.data_dir)) for j in todo):
            out.write(json.dumps(result) + "\n")
            out.flush()
            done.append(result)
            print(
                f"{result['data']:6} {result['method']:22} seed {result['seed']}: "
                f"ACC {result['acc']:.3f} fit {result['fit_s']:.0f}s",
                flush=True,
            )

    wanted = set(datasets)
    results = [r for r in done if r["data"] in wanted and r["seed"] < args.seeds]
    body, summary = tables(results, datasets, args.data_dir)
    header = (
        "# Clustering quality\n\n"
        f"`python benchmarks/quality.py --data-dir ../shared/data --seeds {args.seeds}`: "
        "mean ± sd over seeds; fit seconds with one torch thread per fit "
        f"({os.cpu_count()} cores here); the smallest cluster is the minimum over runs.\n\n"
    )
    (RESULTS / "quality.md").write_text(header + body)
    print(body)
    if summary:
        plot(summary, RESULTS / "quality.png")


if __name__ == "__main__":
    main()
