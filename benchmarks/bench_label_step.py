"""Share of fit time spent in the label step (forward pass + warm-started Sinkhorn).

Fits ``SelfLabelingClusterer`` with default parameters, and with ``image_shape`` as well (the
recommended setting for images; ``n_init=1`` so that the history covers the whole fit), on
scikit-learn's digits and on MNIST-test (from ``--data-dir``, skipped when absent) and reports,
from the fit's history, the fit seconds, the seconds spent in label steps and their share, and
the Sinkhorn iterations per step (the first step starts cold, the others warm from the previous
step's scalings). Writes ``benchmarks/results/label_step.md``.

    python benchmarks/bench_label_step.py --data-dir ../shared/data
"""

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

RESULTS = Path(__file__).parent / "results" / "label_step.md"


def datasets(data_dir: Path):
    X, y = load_digits(return_X_y=True)
    yield "digits (1797 x 64)", X, y, (8, 8)
    mnist = data_dir / "mnist_test.npz"
    if mnist.exists():
        data = np.load(mnist)
        X = data["X"].reshape(len(data["X"]), -1) / 255.0
        yield "MNIST-test (10000 x 784)", X, data["y"], (28, 28)
    else:
        print(f"{mnist} not found: MNIST-test skipped")


def label_step_row(name: str, X, y, setting: str, params: dict, seed: int) -> str:
    """Fit once and summarise the label steps that its history records, as a table row."""
    model = SelfLabelingClusterer(n_clusters=10, random_state=seed, **params)
    start = time.perf_counter()
    model.fit(X)
    fit_seconds = time.perf_counter() - start
    steps = [row for row in model.net_.history if row["label_step"]]
    step_seconds = sum(row["label_step_seconds"] for row in steps)
    solved = [row for row in steps if not row["repartition"]]
    iters = [row["sinkhorn_n_iter"] for row in solved]
    solver_seconds = sum(row["sinkhorn_seconds"] for row in solved)
    return (
        f"| {name} | {setting} | {fit_seconds:.1f} | {len(steps)} | {step_seconds:.2f} "
        f"| {step_seconds / fit_seconds:.1%} | {solver_seconds:.3f} "
        f"| {solver_seconds / fit_seconds:.2%} | {iters[0] if iters else '-'} "
        f"| {f'{np.mean(iters[1:]):.1f}' if len(iters) > 1 else '-'} | "
        f"{clustering_accuracy(y, model.labels_):.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    header = (
        "| data | model | fit s | label steps | label-step s | share of fit | of which Sinkhorn s "
        "| Sinkhorn share of fit | Sinkhorn iters: first (cold) | later (warm), mean | ACC |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, X, y, image_shape in datasets(args.data_dir):
        for setting, params in (
            ("defaults", {}),
            (f"image_shape={image_shape}", {"image_shape": image_shape, "n_init": 1}),
        ):
            lines.append(label_step_row(name, X, y, setting, params, args.seed))
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# Label-step share of fit time\n\n"
        "`python benchmarks/bench_label_step.py --data-dir ../shared/data`, seed "
        f"{args.seed}, on the CPU (all its cores). Label-step seconds: forward pass over the "
        "training rows, the neighbour vote (estimated sizes) and the warm-started solver, as the "
        "history records them; `of which Sinkhorn`: the solver alone; the image "
        f"settings also refresh invariance propagation at each step (not counted).\n\n{table}\n"
    )
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
