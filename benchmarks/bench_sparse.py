"""Sparse rows at scale: a 200,000 x 50,000 TF-IDF-like matrix (0.1% non-zero) in online mode.

Synthetic documents of 20 topics: every row holds 50 terms, half drawn from its topic's own
about 2,500 terms and half from the whole vocabulary, with exponential weights, L2-normalised
(the shape of TF-IDF rows). The matrix is written once as a CSR ``.npz`` (about 80 MB) and
read by a child process that fits ``SelfLabelingClusterer(20, label_mode="online")``
(``input_kind`` detected: ``"sparse"``, so batches stay sparse into the first layer) and
reports its peak resident memory (``resource.getrusage``), the fit seconds, the seconds per
epoch and ACC on the topics. Writes ``benchmarks/results/sparse_scale.md``.

    python benchmarks/bench_sparse.py               # 200,000 x 50,000, 2 epochs
    python benchmarks/bench_sparse.py --rows 20000  # a quicker try
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

RESULTS = Path(__file__).parent / "results" / "sparse_scale.md"
N_TOPICS = 20
TERMS_PER_ROW = 50


def make_data(path: Path, n_rows: int, n_terms: int, seed: int) -> None:
    """Write the CSR matrix (``X.npz``) and the topics (``y.npy``)."""
    rng = np.random.default_rng(seed)
    topic_terms = n_terms // 8 // N_TOPICS * 8  # disjoint blocks; the rest are shared terms
    y = rng.integers(N_TOPICS, size=n_rows)
    own = TERMS_PER_ROW // 2
    topical = y[:, None] * topic_terms + rng.integers(topic_terms, size=(n_rows, own))
    anywhere = rng.integers(n_terms, size=(n_rows, TERMS_PER_ROW - own))
    columns = np.concatenate([topical, anywhere], axis=1).ravel()
    rows = np.repeat(np.arange(n_rows), TERMS_PER_ROW)
    weights = rng.exponential(size=n_rows * TERMS_PER_ROW).astype(np.float32)
    X = sp.csr_matrix((weights, (rows, columns)), shape=(n_rows, n_terms), dtype=np.float32)
    X.sum_duplicates()
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = sp.csr_matrix(sp.diags(1.0 / norms) @ X, dtype=np.float32)
    sp.save_npz(path / "X.npz", X, compressed=False)
    np.save(path / "y.npy", y)


def fit_child(spec: dict) -> dict:
    """Fit on the saved matrix; a fresh process, so that its peak RSS is its own."""
    import torch

    from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

    torch.set_num_threads(spec["threads"])
    X = sp.load_npz(Path(spec["data"]) / "X.npz")
    rss_with_data = _peak_rss_mb()
    model = SelfLabelingClusterer(
        N_TOPICS, label_mode="online", max_epochs=spec["epochs"], random_state=spec["seed"]
    )
    start = time.perf_counter()
    model.fit(X)
    fit_seconds = time.perf_counter() - start
    y = np.load(Path(spec["data"]) / "y.npy")
    return {
        "fit_seconds": fit_seconds,
        "epoch_seconds": [float(s) for s in model.net_.history[:, "dur"]],
        "peak_rss_mb": _peak_rss_mb(),
        "rss_with_data_mb": rss_with_data,
        "acc": clustering_accuracy(y, model.labels_),
        "nnz": int(X.nnz),
        "input_kind": model.net_.build_settings_.network.input_kind,
        "smallest_cluster": float(np.bincount(model.labels_, minlength=N_TOPICS).min()),
    }


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--terms", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(fit_child(json.loads(args.child))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp), args.rows, args.terms, args.seed)
        spec = dict(data=tmp, epochs=args.epochs, threads=args.threads, seed=args.seed)
        command = [sys.executable, __file__, "--child", json.dumps(spec)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    n_rows, n_terms = args.rows, args.terms
    density = result["nnz"] / (n_rows * n_terms)
    report = "\n".join(
        [
            "# Sparse rows at scale",
            "",
            f"`python benchmarks/bench_sparse.py {' '.join(sys.argv[1:])}` (seed {args.seed}); "
            f"{args.threads} torch thread(s) on {platform.machine()}. Synthetic TF-IDF-like rows "
            f"of {N_TOPICS} topics, online label mode, defaults otherwise (input kind detected: "
            f"`{result['input_kind']}`). Peak RSS is the fitting process's high-water mark, the "
            "loaded matrix included.",
            "",
            "| rows | terms | non-zero | epochs | s / epoch | fit s | RSS with data MB | "
            "peak RSS MB | ACC | smallest cluster / (N/K) |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {n_rows:,} | {n_terms:,} | {density:.2%} | {args.epochs} | "
            f"{np.mean(result['epoch_seconds']):.1f} | {result['fit_seconds']:.1f} | "
            f"{result['rss_with_data_mb']:.0f} | {result['peak_rss_mb']:.0f} | "
            f"{result['acc']:.3f} | {result['smallest_cluster'] / (n_rows / N_TOPICS):.2f} |",
            "",
        ]
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
