"""The cost of a process's first fit: seconds of several fits in one fresh process.

Each set is fitted ``--fits`` times in a child process of its own (defaults,
``random_state=0``, ``--threads`` torch threads); the table gives the seconds of importing the
package (which imports ``torch._dynamo``, what torch's optimizers would otherwise import in the
first fit), every fit's seconds, and what the first costs beyond the mean of the others.
Writes ``benchmarks/results/first_fit.md``.

    python benchmarks/first_fit.py
    python benchmarks/first_fit.py --sets wine --fits 2 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
from bench_fit import run_json_child

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETS = ("wine", "iris", "breast_cancer")

CHILD = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
from sklearn import datasets
start = time.perf_counter()
from sklearn_selflabel import SelfLabelingClusterer
imported = time.perf_counter() - start
X, y = getattr(datasets, "load_" + spec["set"])(return_X_y=True)
seconds = []
for _ in range(spec["fits"]):
    start = time.perf_counter()
    SelfLabelingClusterer(len(set(y)), random_state=0).fit(X)
    seconds.append(time.perf_counter() - start)
print(json.dumps({"seconds": seconds, "import_s": imported}))
"""


def run_child(spec: dict) -> dict:
    return run_json_child(CHILD, spec, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--fits", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "first_fit.md")
    args = parser.parse_args()
    if args.fits < 2:
        parser.error("--fits must be at least 2: the first fit is compared with the others.")
    lines = [
        "# The first fit of a process",
        "",
        f"`python benchmarks/first_fit.py {' '.join(sys.argv[1:])}` "
        f"({platform.processor() or 'CPU'}, {args.threads} torch thread(s)): seconds of "
        f'{args.fits} default fits in one fresh process; "extra" is the first fit\'s '
        'seconds less the mean of the others; "import s" is `import sklearn_selflabel` (after '
        "torch and scikit-learn), which imports `torch._dynamo` so that the first fit need not.",
        "",
        "| set | import s | fit s, in order | extra s |",
        "|---|---|---|---|",
    ]
    for name in args.sets:
        result = run_child({"set": name, "fits": args.fits, "threads": args.threads})
        seconds = result["seconds"]
        extra = seconds[0] - float(np.mean(seconds[1:]))
        row = (
            f"| {name} | {result['import_s']:.2f} | "
            f"{', '.join(f'{s:.2f}' for s in seconds)} | {extra:+.2f} |"
        )
        print(row, flush=True)
        lines.append(row)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
