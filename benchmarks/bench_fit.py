"""Fit time and clustering accuracy per configuration, optionally beside another revision.

Configurations: sklearn digits as flat rows and as 8 x 8 images, USPS and MNIST-test as
images (from ``--data-dir``), the online label mode on 10^5 rows (64-dim blobs, 100
clusters, 4 epochs), and every set of ``benchmarks/suite.py`` as ``suite:NAME`` (``--suite``
adds them all). Every fit runs in a child process of its own with ``--threads`` torch
threads, the estimator's defaults and ``random_state=seed``; it reports the seconds of ``fit``
alone (data loading and imports excluded) and ACC. With ``--compare REV``, the same fits also
run from a checkout of the git revision ``REV`` (a temporary ``git worktree``), alternating
with this working tree's fits so that both meet the same conditions; with ``--devices cuda
cpu`` instead, this tree's fits run on both devices side by side (``device=`` of the
estimator). ``--tiny`` fits 400 rows for 2 epochs: a dry run of the script itself. Writes
``benchmarks/results/fit_speed.md``.

    python benchmarks/bench_fit.py --data-dir ../shared/data --compare 7059056
    python benchmarks/bench_fit.py --configs digits-flat digits-image --seeds 0 1 2
    python benchmarks/bench_fit.py --suite --threads 1 --compare b4f29c3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from suite_data import DATASETS as SUITE
from suite_data import available

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fit_speed.md"
CONFIGS = {
    "digits-flat": "sklearn digits (1797 x 64), flat rows",
    "digits-image": "sklearn digits, image_shape=(8, 8)",
    "usps-image": "USPS (9298 x 16x16), image_shape",
    "mnist-image": "MNIST-test (10000 x 28x28), image_shape",
    "online-1e5": "online mode, 10^5 x 64 blobs, K=100, 4 epochs",
    **{f"suite:{name}": f"suite: {name}" for name in SUITE},
}

# Runs in the child, with the package of the revision under test first on sys.path and this
# tree's benchmarks after it (the suite's data). It uses only the public API, so that any
# revision can run it.
CHILD = r"""
import json, sys, time
import numpy as np
import torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

name, data_dir, seed = spec["config"], spec["data_dir"], spec["seed"]
params = {} if spec["device"] is None else {"device": spec["device"]}
if name.startswith("suite:"):
    from suite_data import load
    X, y = load(name[len("suite:"):], data_dir)
    k = len(np.unique(y))
elif name.startswith("digits"):
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X, k = (X / 16.0).astype(np.float32), 10
    if name == "digits-image":
        params["image_shape"] = (8, 8)
elif name in ("usps-image", "mnist-image"):
    data = np.load(f"{data_dir}/{'usps' if name == 'usps-image' else 'mnist_test'}.npz")
    images = data["X"].astype(np.float32)
    if name == "mnist-image":
        images /= 255.0
    X, y, k = images.reshape(len(images), -1), data["y"], 10
    params["image_shape"] = images.shape[1:]
else:
    rng = np.random.default_rng(0)
    centres = rng.uniform(-10, 10, size=(100, 64))
    y = rng.permutation(np.arange(100_000) % 100)
    X = (centres[y] + rng.standard_normal((100_000, 64))).astype(np.float32)
    k = 100
    params.update(label_mode="online", max_epochs=4)
if spec["tiny"]:
    X, y, k = X[:400], y[:400], min(k, 10)
    params["max_epochs"] = 2
model = SelfLabelingClusterer(k, random_state=seed, **params)
start = time.perf_counter()
model.fit(X)
seconds = time.perf_counter() - start
import sklearn_selflabel
acc, package = clustering_accuracy(y, model.labels_), sklearn_selflabel.__file__
print(json.dumps({"seconds": seconds, "acc": acc, "package": package}))
"""


def run_json_child(code: str, spec: dict, cwd: Path, path: list[Path] | None = None) -> dict:
    """Run ``code`` in a fresh Python process (``sys.argv[1]`` is ``spec`` as JSON, with
    ``spec["threads"]`` OpenMP threads, ``path`` as ``PYTHONPATH``) and return the JSON object
    that its last line of output prints."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(str(entry) for entry in path)
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_child(package_root: Path, spec: dict) -> dict:
    # `python -c` puts its working directory first on sys.path: run in the tree under test,
    # or the package of the directory the script was started from would be imported.
    report = run_json_child(CHILD, spec, package_root, [package_root, ROOT / "benchmarks"])
    imported = Path(report.pop("package")).resolve()
    if not imported.is_relative_to(package_root.resolve()):
        raise RuntimeError(f"the fit imported {imported}, not the package in {package_root}")
    return report


def checkout(revision: str, directory: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(directory), revision],
        check=True,
        capture_output=True,
    )
    return directory


def table(results: dict, sides: list[str], threads: int) -> str:
    """The markdown table of ``results[config][side]`` (one side, or two side by side)."""

    def stat(values):
        values = np.asarray(values)
        return (
            f"{values.mean():.1f}"
            if len(values) == 1
            else f"{values.mean():.1f} ± {values.std():.1f}"
        )

    lines = [
        "# Fit time",
        "",
        f"`python benchmarks/bench_fit.py {' '.join(sys.argv[1:])}`: seconds of `fit` (mean ± sd "
        f"over seeds), {threads} torch thread(s) per fit, one fit at a time, on "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}).",
        "",
    ]
    if len(sides) == 1:
        lines += ["| configuration | fit s | ACC | seeds |", "|---|---:|---:|---:|"]
        for name, runs in results.items():
            mine = runs[sides[0]]
            lines.append(
                f"| {CONFIGS[name]} | {stat([r['seconds'] for r in mine])} | "
                f"{stat_acc([r['acc'] for r in mine])} | {len(mine)} |"
            )
        return "\n".join(lines) + "\n"
    first, second = sides
    lines += [
        f"| configuration | fit s, {first} | fit s, {second} | speed-up | ACC, {first} | "
        f"ACC, {second} | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        mine, theirs = runs[first], runs[second]
        ratio = np.mean([r["seconds"] for r in theirs]) / np.mean([r["seconds"] for r in mine])
        lines.append(
            f"| {CONFIGS[name]} | {stat([r['seconds'] for r in mine])} | "
            f"{stat([r['seconds'] for r in theirs])} | {ratio:.2f}x | "
            f"{stat_acc([r['acc'] for r in mine])} | {stat_acc([r['acc'] for r in theirs])} | "
            f"{len(mine)} |"
        )
    return "\n".join(lines) + "\n"


def stat_acc(values) -> str:
    values = np.asarray(values)
    per_seed = ", ".join(f"{v:.3f}" for v in values)
    return f"{values.mean():.3f} ({per_seed})" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[c for c in CONFIGS if not c.startswith("suite:")],
        choices=list(CONFIGS),
    )
    parser.add_argument("--suite", action="store_true", help="add every set of the suite")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare", metavar="REV", help="also fit from this git revision")
    parser.add_argument(
        "--devices", nargs="+", default=[None], help="fit on each (e.g. cuda cpu) side by side"
    )
    parser.add_argument("--tiny", action="store_true", help="400 rows, 2 epochs: a dry run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.compare and len(args.devices) > 1:
        parser.error("--compare and several --devices cannot be combined")
    if args.suite:
        args.configs += [c for c in CONFIGS if c.startswith("suite:") and c not in args.configs]
    configs = [
        c
        for c in args.configs
        if (c.startswith("suite:") and available(c[len("suite:") :], args.data_dir))
        or (not c.startswith(("usps", "mnist", "suite:")))
        or (args.data_dir / ("usps.npz" if c.startswith("usps") else "mnist_test.npz")).exists()
    ]
    with tempfile.TemporaryDirectory() as tmp:
        other = checkout(args.compare, Path(tmp) / "other") if args.compare else None
        # (label, tree, device) of each side of the comparison.
        if other is not None:
            sides = [("this tree", ROOT, args.devices[0]), (args.compare, other, args.devices[0])]
        elif len(args.devices) > 1:
            sides = [(device, ROOT, device) for device in args.devices]
        else:
            sides = [("this tree", ROOT, args.devices[0])]
        try:
            results = {}
            for name in configs:
                results[name] = {label: [] for label, _, _ in sides}
                for i, seed in enumerate(args.seeds):
                    for label, tree, device in sides if i % 2 == 0 else sides[::-1]:
                        spec = dict(
                            config=name,
                            seed=seed,
                            threads=args.threads,
                            data_dir=str(args.data_dir.resolve()),
                            device=device,
                            tiny=args.tiny,
                        )
                        result = run_child(tree, spec)
                        results[name][label].append(result)
                        print(
                            f"{name:13} seed {seed} {label:9}: {result['seconds']:7.1f} s, "
                            f"ACC {result['acc']:.3f}",
                            flush=True,
                        )
        finally:
            if other is not None:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
                    check=False,
                    capture_output=True,
                )
    text = table(results, [label for label, _, _ in sides], args.threads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
