# Two entry points: `make demo` and `make test`. Both build .venv from scratch when it is missing.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of this release lies on disk here; override for a CUDA build, e.g. TORCH=torch.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"

demo: $(PY)
	$(PY) -m pip install --quiet -e .
	$(PY) examples/quickstart.py

test: $(PY)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m ruff check sklearn_selflabel tests examples benchmarks
	$(PY) -m pytest -n 2 -q

bench: $(PY)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_sinkhorn.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
