"""The README is a product page whose figures come from ``benchmarks/results/``, and the
benchmark page of the docs is written from the same files."""

import re
import sys
from pathlib import Path

import docutils.core
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import docs_tables  # noqa: E402

README = (ROOT / "README.md").read_text()


def test_readme_is_one_screen_of_the_expected_sections():
    assert len(README.splitlines()) <= 150
    headings = re.findall(r"^## (.+)$", README, flags=re.MULTILINE)
    assert headings == ["Install", "Example", "Results", "What it does", "How to cite", "Licence"]
    assert "pip install -e ." in README and "make test" in README and "make demo" in README
    assert (ROOT / "LICENSE").exists()


def test_readme_results_are_those_the_results_files_give():
    assert docs_tables.readme_with_block(README, docs_tables.readme_block()) == README


def test_every_figure_in_the_readme_is_in_a_results_file():
    results = "".join(p.read_text() for p in (ROOT / "benchmarks" / "results").glob("*.md"))
    figures = set(re.findall(r"\b\d\.\d{3}\b", README))
    assert figures, "the README shows no figure"
    assert sorted(f for f in figures if f not in results) == []
    assert (ROOT / "benchmarks" / "results" / "suite.png").exists()


def test_the_block_check_fails_on_a_stale_figure():
    stale = README.replace("| banknote | tables | ", "| banknote | tables | 0.999 ", 1)
    assert stale != README
    assert docs_tables.readme_with_block(stale, docs_tables.readme_block()) != stale


@pytest.mark.parametrize(
    "path", docs_tables.results_files(), ids=lambda p: p.name if isinstance(p, Path) else p
)
def test_each_results_file_is_valid_restructured_text(path):
    rst = "Page\n====\n\n" + docs_tables.markdown_to_rst(path.read_text())
    docutils.core.publish_doctree(rst, settings_overrides={"halt_level": 2, "report_level": 5})


def test_markdown_markup_becomes_rst_markup():
    rst = docs_tables.markdown_to_rst(
        "# Title\n\nRun `make x` on n_clusters_ rows, *not* all.\n\n| a | b |\n|---|---|\n"
        "| **1** | 2 |\n"
    )
    assert "``make x``" in rst and "n_clusters\\_ " in rst and "\\*not\\*" in rst
    assert ".. list-table::" in rst and "   * - **1**" in rst and "     - 2" in rst


def test_the_readme_example_runs(tmp_path, monkeypatch):
    code = re.search(r"## Example\n\n```python\n(.*?)```", README, flags=re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README's own example)
    assert (tmp_path / "digits.selflabel").exists()
    assert scope["model"].labels_.shape == (1797,)
