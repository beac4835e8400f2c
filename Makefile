# Entry points: `make demo`, `make test` and `make docs`; each builds .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of this release lies on disk here; override for a CUDA build, e.g. TORCH=torch.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo test docs lint bench clean

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

# HTML in docs/_build/html; warnings are errors, and every gallery example runs.
docs: $(PY)
	$(PY) -m pip install --quiet -e ".[docs]"
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench: $(PY)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_sinkhorn.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	rm -rf docs/_build docs/auto_examples docs/generated docs/sg_execution_times.rst
