#!/usr/bin/env bash
# The GPU check, in one run (within 8 minutes on a machine with one GPU): the CUDA-marked tests,
# then bench_fit.py's configurations on CUDA and on the CPU side by side, written to
# benchmarks/results/gpu.md with the card's name.
#
#   bash benchmarks/gpu_check.sh [--cpu-only] [--tiny] [--data-dir DIR] [--output FILE]
#
# --cpu-only runs the fits on the CPU alone (the tests' dry run, or a machine without CUDA);
# --tiny fits 400 rows for 2 epochs. Run from anywhere; the repository's .venv is used when
# there is one.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
[ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
devices=(cuda cpu)
extra=()
output="$root/benchmarks/results/gpu.md"
data_dir="$root/../shared/data"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-only) devices=(cpu) ;;
    --tiny) extra+=(--tiny) ;;
    --data-dir) data_dir="$2"; shift ;;
    --output) output="$2"; shift ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done
card="$("$python" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')"
if [ -z "$card" ] && [ "${devices[0]}" = cuda ]; then
  echo "CUDA is not available here; run with --cpu-only for the CPU side alone." >&2
  exit 1
fi

tests="skipped (--cpu-only)"
if [ "${devices[0]}" = cuda ]; then
  (cd "$root" && "$python" -m pytest -q -m cuda tests) && tests="passed" || tests="FAILED"
fi

fits="$(mktemp)"
trap 'rm -f "$fits"' EXIT
"$python" "$root/benchmarks/bench_fit.py" --data-dir "$data_dir" --threads "$(nproc)" \
  --configs digits-flat digits-image usps-image mnist-image online-1e5 \
  --devices "${devices[@]}" "${extra[@]}" --output "$fits"

{
  echo "# GPU check"
  echo
  if [ -n "$card" ] && [ "${devices[0]}" = cuda ]; then
    echo "Measured on **$card** by \`bash benchmarks/gpu_check.sh ${extra[*]}\`."
  else
    echo "**No GPU was measured**: this run (\`bash benchmarks/gpu_check.sh --cpu-only ${extra[*]}\`)"
    echo "fitted on the CPU alone."
  fi
  echo
  echo "CUDA-marked tests (\`pytest -m cuda\`): $tests."
  echo
  tail -n +2 "$fits"
} > "$output"
cat "$output"
