"""Clustering quality: this estimator against classical baselines, on images and on flat rows.

Runs, over several seeds, ``SelfLabelingClusterer`` with its defaults (rows as flat vectors)
on every data set, and with its defaults plus ``image_shape`` (the recommended configuration
for images) on the image sets, beside KMeans, Agglomerative (ward), Spectral (kNN graph), a
Gaussian mixture (on at most 50 PCA components, or truncated SVD for sparse rows; full
covariances in 784 dimensions are not estimable from 10000 rows) and, where umap-learn is
installed (``pip install umap-learn``), UMAP + GMM as in N2D. Data: sklearn digits, USPS and
MNIST-test (images, also clustered as flat rows), ``letter.npz`` (a 16-feature table, 26
classes), ``text_2topics.npz`` (sparse TF-IDF, 2 topics), and sklearn's wine, breast cancer
and iris, standardised for every method. ``n_clusters`` is the number of classes.

Prints and writes ACC (Hungarian-matched accuracy), NMI and ARI as mean +- sd over seeds, the
fit seconds and the smallest cluster as a share of N/K, then two ablations: on USPS images
(SeLa alone, + image augmentation, + invariance propagation, + estimated cluster sizes, and
1 head against the default 8) and on flat rows: USPS pixels (the tables' treatment, the
previous version's defaults from SeLa's random split, the layout start without propagation
or neighbour views, and the defaults), TF-IDF text (the tables' treatment, the sparse kind
without views, the defaults, which add views that drop terms, and the defaults with
propagation and neighbour views as well) and the small tables (the random start, the mixture
start with the old noise, and the defaults).

    python benchmarks/quality.py --data-dir ../shared/data

``--datasets`` runs some sets (the report still covers every set on record) and
``--ablations flat`` only the flat-row ablations.

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
import scipy.sparse as sp
from joblib import Parallel, delayed
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

RESULTS = Path(__file__).parent / "results"
# name -> (title, file in --data-dir or None for sklearn's, whether the rows are images)
DATASETS = {
    "digits": ("sklearn digits (1797 x 8x8)", None, True),
    "usps": ("USPS (9298 x 16x16)", "usps.npz", True),
    "mnist": ("MNIST-test (10000 x 28x28)", "mnist_test.npz", True),
    "letter": ("letter (20000 x 16 table, 26 classes)", "letter.npz", False),
    "text": ("text_2topics (1946 x 7511 sparse TF-IDF)", "text_2topics.npz", False),
    "wine": ("wine (178 x 13, standardised)", None, False),
    "breast_cancer": ("breast cancer (569 x 30, standardised)", None, False),
    "iris": ("iris (150 x 4, standardised)", None, False),
}
SKLEARN_TABLES = {"wine": load_wine, "breast_cancer": load_breast_cancer, "iris": load_iris}
# method -> (label in the tables, whether it is given image_shape, estimator parameters)
OURS = {
    "selflabel": ("SelfLabelingClusterer, defaults", False, {}),
    "selflabel_image": ("SelfLabelingClusterer, defaults + image_shape", True, {}),
}
ABLATION = {
    "sela": (
        "SeLa alone (random start, no views, no propagation, equal cluster sizes)",
        dict(init="random", augment_strength=0.0, propagation=False, cluster_sizes="equal"),
    ),
    "sela_aug": (
        "+ image augmentation",
        dict(init="random", propagation=False, cluster_sizes="equal"),
    ),
    "sela_aug_ip": ("+ invariance propagation", dict(init="random", cluster_sizes="equal")),
    "random_start": (
        "+ estimated cluster sizes (SeLa's random start: the previous version's defaults)",
        dict(init="random"),
    ),
    "full": ("+ the layout start (= defaults + image_shape)", {}),
    "one_head": ("... with 1 head instead of 8", dict(n_heads=1)),
}
AS_TABLE = (
    "the tables' treatment (input_kind='tabular': per-feature scaling, noise views, "
    "no propagation, random start; the previous version's flat rows)",
    dict(input_kind="tabular", init="random"),
)
SMALL_TABLE_ABLATION = {
    "random_start": (
        "SeLa's random start and schedule, noise views of 0.5 sd (the previous version's defaults)",
        dict(init="random"),
    ),
    "mixture_start": (
        "start from a Gaussian mixture, first quarter without label steps, sizes estimated "
        "from the first step",
        dict(augment_strength=1.0),
    ),
    "full": ("+ noise views of 0.25 sd (= defaults)", {}),
}
# data -> method -> (label, estimator parameters); "full" is the main table's defaults fit.
FLAT_ABLATION = {
    "usps": {
        "as_table": AS_TABLE,
        "random_start": (
            "the detected kind's geometry, input-space neighbour positives, propagation and "
            "neighbour views, from SeLa's random split (the previous version's defaults)",
            dict(init="random"),
        ),
        "layout_only": (
            "start from the rows' layout (autoencoder, agreed neighbour links, layout, "
            "consensus mixture), without propagation or neighbour views",
            dict(propagation=False),
        ),
        "full": ("+ propagation and neighbour views (= defaults)", {}),
    },
    "text": {
        "as_table": AS_TABLE,
        "kind_only": (
            "the sparse kind's scaling, geometry and KMeans start, no views",
            dict(augment_strength=0.0),
        ),
        "full": ("+ views that drop terms (= defaults)", {}),
        "propagation": (
            "... with propagation and neighbour views as well (the previous version's sparse "
            "recipe, less its re-partition)",
            dict(propagation=True),
        ),
    },
    "wine": SMALL_TABLE_ABLATION,
    "breast_cancer": SMALL_TABLE_ABLATION,
    "iris": SMALL_TABLE_ABLATION,
}
BASELINES = [
    "KMeans",
    "Agglomerative (ward)",
    "Spectral (kNN)",
    "GMM (PCA <= 50)",
    "UMAP + GMM",
]


def umap_installed() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def available(name: str, data_dir: Path) -> bool:
    file = DATASETS[name][1]
    return file is None or (data_dir / file).exists()


def load(name: str, data_dir: Path) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray, tuple | None]:
    """``(X, y, image_shape or None)``."""
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        return X.astype(np.float32) / 16.0, y, (8, 8)
    if name in SKLEARN_TABLES:
        X, y = SKLEARN_TABLES[name](return_X_y=True)
        return StandardScaler().fit_transform(X).astype(np.float32), y, None
    data = np.load(data_dir / DATASETS[name][1])
    if name == "text":
        shape = tuple(data["shape"])
        X = sp.csr_matrix((data["data"], data["indices"], data["indptr"]), shape=shape)
        return X, data["y"], None
    if name == "letter":
        return data["X"].astype(np.float32), data["y"], None
    images = data["X"].astype(np.float32)
    if name == "mnist":
        images /= 255.0
    return images.reshape(len(images), -1), data["y"], images.shape[1:]


def baseline(method: str, n_clusters: int, seed: int, X):
    if method == "KMeans":
        return KMeans(n_clusters, n_init=10, random_state=seed)
    if method == "Agglomerative (ward)":
        return AgglomerativeClustering(n_clusters, linkage="ward")
    if method == "Spectral (kNN)":
        return SpectralClustering(
            n_clusters, affinity="nearest_neighbors", n_neighbors=10, random_state=seed
        )
    # letter's integer features give collapsed components without a little regularisation.
    gmm = GaussianMixture(
        n_clusters, covariance_type="full", n_init=3, reg_covar=1e-4, random_state=seed
    )
    if method == "UMAP + GMM":
        import umap

        # N2D's settings: as many dimensions as clusters, 20 neighbours, min_dist 0.
        metric = "cosine" if sp.issparse(X) else "euclidean"
        embed = umap.UMAP(
            n_components=n_clusters, n_neighbors=20, min_dist=0.0, metric=metric, random_state=seed
        )
        return make_pipeline(embed, gmm)
    n_components = min(50, X.shape[1])
    reduce = (
        TruncatedSVD(n_components, random_state=seed)
        if sp.issparse(X)
        else PCA(n_components, random_state=seed)
    )
    return make_pipeline(reduce, gmm)


def run_one(job: dict, data_dir: str) -> dict:
    import torch

    torch.set_num_threads(1)
    X, y, shape = load(job["data"], Path(data_dir))
    n_clusters = len(np.unique(y))
    if job["method"] in BASELINES:
        model = baseline(job["method"], n_clusters, job["seed"], X)
        if not sp.issparse(X):
            X = X.astype(np.float64)  # sklearn's estimators are most stable in float64
        if job["method"] == "Agglomerative (ward)" and sp.issparse(X):
            X = X.toarray()
    else:
        params = dict(job["params"], image_shape=shape if job["image"] else None)
        model = SelfLabelingClusterer(n_clusters, random_state=job["seed"], **params)
    start = time.perf_counter()
    labels = model.fit_predict(X)
    seconds = time.perf_counter() - start
    sizes = np.bincount(labels, minlength=n_clusters)
    return {
        **job,
        "acc": clustering_accuracy(y, labels),
        "nmi": normalized_mutual_info_score(y, labels),
        "ari": adjusted_rand_score(y, labels),
        "fit_s": seconds,
        "min_share": float(sizes.min() / (len(y) / n_clusters)),
    }


def job(table: str, data: str, method: str, seed: int, image: bool, params: dict) -> dict:
    return dict(table=table, data=data, method=method, seed=seed, image=image, params=params)


def jobs(
    datasets: list[str],
    seeds: list[int],
    ablation_seeds: list[int],
    ablations: tuple[str, ...] = ("image", "flat"),
) -> list[dict]:
    baselines = [m for m in BASELINES if m != "UMAP + GMM" or umap_installed()]
    out = []
    for seed in seeds:
        for data in datasets:
            for method, (_, image, params) in OURS.items():
                if not image or DATASETS[data][2]:
                    out.append(job("main", data, method, seed, image, params))
            for method in baselines:
                # Ward is deterministic; one run is enough.
                if method == "Agglomerative (ward)" and seed != seeds[0]:
                    continue
                out.append(job("main", data, method, seed, False, {}))
    for seed in ablation_seeds:
        if "usps" in datasets and "image" in ablations:
            for method, (_, params) in ABLATION.items():
                if method != "full":  # the same fit as selflabel_image
                    out.append(job("ablation", "usps", method, seed, True, params))
        for data, configs in FLAT_ABLATION.items():
            if data in datasets and "flat" in ablations:
                for method, (_, params) in configs.items():
                    if method != "full":  # the same fit as selflabel
                        out.append(job("flat_ablation", data, method, seed, False, params))
    return out


def key(job: dict) -> str:
    return json.dumps([job["table"], job["data"], job["method"], job["seed"], job["params"]])


def summarize(rows: list[dict]) -> dict:
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
    """Highest ACC of any clustering into as many clusters as classes, all of size ``N / K``.

    A cluster matched to class ``k`` can hold at most ``min(n_k, N / K)`` of its rows.
    """
    counts = np.bincount(y)
    return float(np.minimum(counts, len(y) / len(counts)).sum() / len(y))


def select(results: list[dict], table: str, data: str, method: str) -> list[dict]:
    return [r for r in results if (r["table"], r["data"], r["method"]) == (table, data, method)]


def ablation_table(results: list[dict], data: str, configs: dict, table: str) -> list[str]:
    lines = []
    for method, (label, _) in configs.items():
        # The full configuration is the main table's fit with the defaults.
        full = "selflabel_image" if table == "ablation" else "selflabel"
        rows = (
            select(results, "main", data, full)
            if method == "full"
            else select(results, table, data, method)
        )
        if rows:
            s = summarize(rows)
            lines.append(
                f"| {label} | {fmt(s['acc'])} | {fmt(s['nmi'])} | {s['fit_s']:.1f} | "
                f"{s['min_share']:.2f} | {s['n']} |"
            )
    return lines


ABLATION_HEADER = [
    "| configuration | ACC | NMI | fit s | smallest cluster / (N/K) | runs |",
    "|---|---|---|---|---|---|",
]


def tables(results: list[dict], datasets: list[str], data_dir: Path) -> tuple[str, dict]:
    lines = []
    summary: dict = {}
    for data in datasets:
        y = load(data, data_dir)[1]
        counts = np.bincount(y)
        lines += [
            f"### {DATASETS[data][0]}",
            "",
            f"{len(counts)} classes of {counts.min()} to {counts.max()} rows; a clustering into "
            f"{len(counts)} equal clusters (the equipartition) can reach at most ACC "
            f"{equal_size_ceiling(y):.3f}.",
            "",
            "| method | ACC | NMI | ARI | fit s | smallest cluster / (N/K) | runs |",
            "|---|---|---|---|---|---|---|",
        ]
        for method in [*OURS, *BASELINES]:
            rows = select(results, "main", data, method)
            if not rows:
                continue
            s = summary.setdefault(data, {})[method] = summarize(rows)
            lines.append(
                f"| {method_label(method)} | {fmt(s['acc'])} | {fmt(s['nmi'])} | "
                f"{fmt(s['ari'])} | {s['fit_s']:.1f} | {s['min_share']:.2f} | {s['n']} |"
            )
        lines.append("")
    ablation = ablation_table(results, "usps", ABLATION, "ablation")
    if len(ablation) > 1:  # more than the main table's fit
        lines += ["### Ablation on USPS (all with image_shape)", "", *ABLATION_HEADER]
        lines += [*ablation, ""]
    for data, configs in FLAT_ABLATION.items():
        flat = ablation_table(results, data, configs, "flat_ablation")
        if len(flat) > 1:
            lines += [f"### Ablation on flat rows: {DATASETS[data][0]}", "", *ABLATION_HEADER]
            lines += [*flat, ""]
    return "\n".join(lines), summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in [*OURS, *BASELINES] if any(m in s for s in summary.values())]
    data_names = list(summary)
    fig, ax = plt.subplots(figsize=(12, 4.5))
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
    ax.set_xticks(
        np.arange(len(data_names)) + 0.4 - width / 2,
        [DATASETS[d][0].split(" (")[0] for d in data_names],
    )
    ax.set_ylabel("ACC (mean ± sd over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ablation-seeds", type=int, default=5, help="0: no ablations")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument(
        "--ablations",
        nargs="*",
        default=["image", "flat"],
        choices=["image", "flat"],
        help="which ablations to run: USPS images, and each set's flat rows",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="ignore earlier results")
    parser.add_argument(
        "--report-only", action="store_true", help="write the tables of the fits on record"
    )
    args = parser.parse_args()

    datasets = [d for d in args.datasets if available(d, args.data_dir)]
    skipped = set(args.datasets) - set(datasets)
    if skipped:
        print(f"not found in {args.data_dir}: {sorted(skipped)} skipped")
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / "quality.jsonl"
    if args.fresh and log.exists():
        log.unlink()
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    finished = {key(r) for r in done}
    seeds, ablation_seeds = list(range(args.seeds)), list(range(args.ablation_seeds))
    planned = jobs(datasets, seeds, ablation_seeds, tuple(args.ablations))
    todo = [j for j in planned if key(j) not in finished]
    # The quick baselines first, then the main table's fits, longest first (so that the
    # parallel workers finish together), then the flat and the image ablations, then UMAP:
    # an interrupted run has the comparisons that matter most.
    slow = ["mnist", "letter", "usps", "text"]

    def order(job: dict) -> tuple:
        group = ["main", "flat_ablation", "ablation"].index(job["table"]) + 1
        if job["method"] in BASELINES:
            group = 0 if job["method"] != "UMAP + GMM" else 4
        return group, slow.index(job["data"]) if job["data"] in slow else len(slow)

    todo.sort(key=order)
    if args.report_only:
        todo = []
    print(f"{len(done)} fits on record, {len(todo)} to run with {args.jobs} processes")
    parallel = Parallel(n_jobs=args.jobs, return_as="generator_unordered")
    with log.open("a") as out:
        for result in parallel(delayed(run_one)(j, str(args.data_dir)) for j in todo):
            out.write(json.dumps(result) + "\n")
            out.flush()
            done.append(result)
            print(
                f"{result['data']:13} {result['method']:22} seed {result['seed']}: "
                f"ACC {result['acc']:.3f} fit {result['fit_s']:.0f}s",
                flush=True,
            )

    # The report covers every data set on record, so that a run of a few sets adds to it.
    on_record = {r["data"] for r in done}
    reported = [d for d in DATASETS if d in on_record and available(d, args.data_dir)]
    results = [r for r in done if r["data"] in reported and r["seed"] < args.seeds]
    body, summary = tables(results, reported, args.data_dir)
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
