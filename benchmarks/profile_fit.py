"""Where a default fit spends its time: cProfile of one fit, its top entries by cumulative time.

One fit of a set of ``benchmarks/suite.py`` (``suite_data.load``), with the defaults and
``random_state``, on ``--threads`` torch threads, in this process. ``--image`` fits the pixel
sets with ``image_shape``. Prints the fit's seconds, its ACC and the ``--top`` entries.

    python benchmarks/profile_fit.py digits
    python benchmarks/profile_fit.py usps --threads 1 --top 40
    python benchmarks/profile_fit.py mnist --image --threads 2
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import numpy as np
import torch
from suite_data import DATASETS, load

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

IMAGE_SHAPES = {
    "digits": (1, 8, 8),
    "usps": (1, 16, 16),
    "mnist": (1, 28, 28),
    "mnist_lt": (1, 28, 28),
}


def profile_fit(X, y, *, seed: int, top: int, **params) -> tuple[float, float, str]:
    """``(seconds, ACC, report)`` of one profiled fit of ``X``."""
    model = SelfLabelingClusterer(len(np.unique(y)), random_state=seed, **params)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    model.fit(X)
    profiler.disable()
    seconds = time.perf_counter() - start
    report = io.StringIO()
    pstats.Stats(profiler, stream=report).sort_stats("cumulative").print_stats(top)
    return seconds, clustering_accuracy(y, model.labels_), report.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--image", action="store_true", help="fit with image_shape")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    if args.image and args.set not in IMAGE_SHAPES:
        parser.error(f"--image needs a pixel set: {', '.join(IMAGE_SHAPES)}")
    torch.set_num_threads(args.threads)
    X, y = load(args.set, args.data_dir)
    params = {"image_shape": IMAGE_SHAPES[args.set]} if args.image else {}
    seconds, accuracy, report = profile_fit(X, y, seed=args.seed, top=args.top, **params)
    mode = "image_shape" if args.image else "flat rows"
    print(
        f"{args.set} ({mode}), {args.threads} torch thread(s): {seconds:.1f} s, ACC {accuracy:.3f}"
    )
    print(report)


if __name__ == "__main__":
    main()
