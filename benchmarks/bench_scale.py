"""Scale: seconds per epoch, peak memory, accuracy and predict throughput as N grows.

Synthetic data with known clusters (``make_blobs``' model: 100 centres drawn uniformly in
``[-10, 10]^64``, unit-variance Gaussian clusters of equal size) at N = 10^4, 10^5, 10^6 in
online label mode and 10^4, 10^5 in offline mode. The data are written once as float32 ``.npy``
files and every fit reads them as a ``numpy.memmap``. Each fit runs in a child process of its
own, which reports its peak resident memory (``resource.getrusage``: the process's high-water
mark, including the pages of the memory-mapped data it touched), the seconds per epoch (from
the skorch history), and ACC on the known clusters. Predict throughput (rows/s, 64-dim input,
default MLP) is measured last, in a child process with 1 and with 2 torch threads, best of
three passes over 10^6 rows. Writes ``benchmarks/results/scale.md``.

    python benchmarks/bench_scale.py            # all runs (about 15 minutes on 2 cores)
    python benchmarks/bench_scale.py --quick    # N = 10^4 only, to try the script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "scale.md"
N_CLUSTERS = 100
N_FEATURES = 64
# (label mode, n_samples, estimator parameters besides the defaults). The epoch counts give
# each run a few hundred optimiser steps or more (online batches hold 1024 rows, offline 256).
# Offline runs leave out invariance propagation: its k-NN graph over all rows is a cost of its
# own, not of the label mode.
RUNS = [
    ("online", 10_000, {"max_epochs": 30}),
    ("online", 100_000, {"max_epochs": 4}),
    ("online", 1_000_000, {"max_epochs": 4}),
    ("offline", 10_000, {"max_epochs": 40, "n_label_steps": 20, "propagation": False}),
    ("offline", 100_000, {"max_epochs": 10, "n_label_steps": 8, "propagation": False}),
]
PREDICT_ROWS = 1_000_000


def make_data(path: Path, n_samples: int, seed: int, chunk_rows: int = 100_000) -> None:
    """Write ``X`` (float32) and ``y`` as ``.npy`` files, chunk by chunk, in bounded memory."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10.0, 10.0, size=(N_CLUSTERS, N_FEATURES))
    y = rng.permutation(np.arange(n_samples) % N_CLUSTERS)
    X = np.lib.format.open_memmap(
        path / "X.npy", mode="w+", dtype=np.float32, shape=(n_samples, N_FEATURES)
    )
    for start in range(0, n_samples, chunk_rows):
        labels = y[start : start + chunk_rows]
        noise = rng.standard_normal((len(labels), N_FEATURES))
        X[start : start + len(labels)] = centers[labels] + noise
    X.flush()
    np.save(path / "y.npy", y)


def fit_child(spec: dict) -> dict:
    """Fit on the memory-mapped data; runs in a fresh process so that its peak RSS is its own."""
    import torch

    from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

    torch.set_num_threads(spec["threads"])
    data = Path(spec["data"])
    X = np.load(data / "X.npy", mmap_mode="r")
    rss_before = _peak_rss_mb()
    model = SelfLabelingClusterer(
        N_CLUSTERS, label_mode=spec["mode"], random_state=spec["seed"], **spec["params"]
    )
    start = time.perf_counter()
    model.fit(X)
    fit_seconds = time.perf_counter() - start
    peak_rss = _peak_rss_mb()
    epoch_seconds = [float(s) for s in model.net_.history[:, "dur"]]
    y = np.load(data / "y.npy")
    if spec.get("save_model"):
        model.save(spec["save_model"])
    return {
        "fit_seconds": fit_seconds,
        "epoch_seconds": epoch_seconds,
        "peak_rss_mb": peak_rss,
        "rss_after_imports_mb": rss_before,
        "acc": clustering_accuracy(y, model.labels_),
        "batch_size": model.net_.batch_size,
    }


def predict_child(spec: dict) -> dict:
    """Rows per second of ``predict`` on in-memory float32 rows, best of three passes."""
    import torch

    import sklearn_selflabel

    torch.set_num_threads(spec["threads"])
    model = sklearn_selflabel.load(spec["model"])
    X = np.load(Path(spec["data"]) / "X.npy")[:PREDICT_ROWS]
    model.predict(X[:10_000])  # warm-up
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        model.predict(X)
        best = min(best, time.perf_counter() - start)
    return {"rows_per_second": len(X) / best, "load_average": os.getloadavg()}


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(function: str, spec: dict) -> dict:
    """Run ``function(spec)`` of this script in a new Python process; return its result."""
    command = [sys.executable, __file__, "--child", function, json.dumps(spec)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10^4 only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(globals()[args.child[0]](json.loads(args.child[1]))))
        return

    runs = [run for run in RUNS if run[1] <= 10_000] if args.quick else RUNS
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        tmp = Path(tmp)
        for n_samples in sorted({n for _, n, _ in runs}):
            (tmp / str(n_samples)).mkdir()
            make_data(tmp / str(n_samples), n_samples, args.seed)
        model_path = tmp / "model.selflabel"
        for mode, n_samples, params in runs:
            spec = {
                "mode": mode,
                "data": str(tmp / str(n_samples)),
                "params": params,
                "seed": args.seed,
                "threads": args.threads,
            }
            if mode == "online" and n_samples == min(n for m, n, _ in runs if m == "online"):
                spec["save_model"] = str(model_path)
            result = in_child("fit_child", spec)
            rows.append((mode, n_samples, params, result))
            print(_row(mode, n_samples, params, result), flush=True)
        predict_data = str(tmp / str(max(n for _, n, _ in runs)))
        throughput = {
            threads: in_child(
                "predict_child",
                {"model": str(model_path), "data": predict_data, "threads": threads},
            )
            for threads in (1, 2)
        }
    for threads, result in throughput.items():
        print(
            f"predict, {threads} thread(s): {result['rows_per_second']:,.0f} rows/s "
            f"(load average {result['load_average'][0]:.2f})"
        )
    if not args.quick:
        write_report(rows, throughput, args)


def _row(mode: str, n_samples: int, params: dict, result: dict) -> str:
    epochs = result["epoch_seconds"]
    return (
        f"| {mode} | {n_samples:,} | {len(epochs)} | {result['batch_size']} | "
        f"{np.mean(epochs):.2f} | {result['fit_seconds']:.1f} | "
        f"{result['peak_rss_mb']:.0f} | {result['acc']:.3f} |"
    )


def write_report(rows, throughput, args) -> None:
    online = {n: np.mean(r["epoch_seconds"]) for mode, n, _, r in rows if mode == "online"}
    growth = online[1_000_000] / online[100_000]
    table = "\n".join(
        [
            "| mode | N | epochs | batch | s / epoch | fit s | peak RSS MB | ACC |",
            "|---|---|---|---|---|---|---|---|",
        ]
        + [_row(*row) for row in rows]
    )
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Scale: online and offline label modes",
        "",
        f"`python benchmarks/bench_scale.py` (seed {args.seed}); {os.cpu_count()} CPU cores "
        f"({cpu}), training with {args.threads} torch thread(s), shared with other jobs, so "
        "seconds carry some noise. Data: 100 Gaussian blobs in 64 dims (float32, read as a "
        "`numpy.memmap`); default parameters except the label mode and the epochs (and, "
        "offline, the number of label steps and `propagation=False`: its k-NN graph over all "
        "rows is a cost of its own). Peak RSS is each fit's own process's high-water mark, the "
        "memory-mapped data it touched included (10^6 x 64 float32 = 256 MB).",
        "",
        table,
        "",
        f"Online seconds per epoch grow {growth:.1f}x from 10^5 to 10^6 rows.",
        "",
        "Predict throughput (default MLP, 64-dim float32 rows, in memory, best of 3 passes over "
        f"{PREDICT_ROWS:,} rows):",
        "",
    ]
    for threads, result in throughput.items():
        lines.append(
            f"- {threads} thread(s): {result['rows_per_second']:,.0f} rows/s "
            f"(1-minute load average {result['load_average'][0]:.2f} when measured)"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
