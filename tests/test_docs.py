"""The documentation builds with warnings as errors, and every gallery example runs in it."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("sphinx_gallery")
pytest.importorskip("numpydoc")
pytest.importorskip("pydata_sphinx_theme")

REPOSITORY = Path(__file__).resolve().parents[1]
# The gallery that the issue asks for: quickstart, Pipeline, GridSearchCV, images with a
# montage, sparse text, a custom torch module and the embedding in 2-D.
REQUIRED_EXAMPLES = (
    "quickstart",
    "plot_pipeline",
    "plot_grid_search",
    "plot_images",
    "plot_text",
    "plot_custom_module",
    "plot_embedding",
)
# What the build writes into the source tree; the copy below starts without them.
GENERATED = ("_build", "generated", "auto_examples", "sg_execution_times.rst")


def test_docs_build_with_warnings_as_errors_and_run_every_example(tmp_path):
    # The build writes the gallery and the API pages into its source directory: build a copy,
    # so that the test leaves the checkout alone and cannot meet a `make docs` running in it.
    shutil.copytree(
        REPOSITORY / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns(*GENERATED)
    )
    shutil.copytree(REPOSITORY / "examples", tmp_path / "examples")
    # The benchmark page is written from the results files by the build (docs/conf.py).
    shutil.copytree(REPOSITORY / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    shutil.copy(REPOSITORY / "benchmarks" / "docs_tables.py", tmp_path / "benchmarks")
    html = tmp_path / "html"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "agg"}
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html"]
    result = subprocess.run(
        [*command, str(tmp_path / "docs"), str(html)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    examples = sorted(
        path.stem
        for path in (REPOSITORY / "examples").glob("*.py")
        if re.search(r"^(plot_.*|quickstart)$", path.stem)
    )
    assert set(REQUIRED_EXAMPLES) <= set(examples)
    executed = re.search(r"successfully executed (\d+) out of (\d+) files", result.stdout)
    assert executed and executed.groups() == (str(len(examples)),) * 2, result.stdout[-2000:]
    for name in examples:
        assert (html / "auto_examples" / f"{name}.html").is_file()
    for page in ("index", "user_guide", "api", "online", "benchmarks", "auto_examples/index"):
        assert (html / f"{page}.html").is_file()
    # numpydoc renders every parameter of the estimator from its docstring.
    reference = (html / "generated" / "sklearn_selflabel.SelfLabelingClusterer.html").read_text()
    for parameter in ("n_clusters", "sinkhorn_lambda", "checkpoint_dir", "on_interrupt"):
        assert f"<strong>{parameter}</strong>" in reference
    # The image example shows the recommended configuration at its real quality.
    montage = (html / "auto_examples" / "plot_images.html").read_text()
    shown = re.search(r"(USPS|digits): \d+ images.*?accuracy (\d\.\d+)", montage, re.S)
    assert shown, montage[-2000:]
    assert float(shown.group(2)) >= (0.95 if shown.group(1) == "USPS" else 0.9)
    # The benchmark page shows the suite's results file.
    assert "At or above the best classical method on" in (html / "benchmarks.html").read_text()


def test_gallery_examples_fit_with_the_default_schedule():
    for path in (REPOSITORY / "examples").glob("*.py"):
        code = path.read_text()
        for cut in ("max_epochs=", "n_label_steps="):
            assert cut not in code, f"{path.name} sets {cut[:-1]}"
