"""The package's comments and docstrings cite no benchmark figures.

Measured results (ACC and NMI by data set, seconds, speed-ups) belong in the user guide, the
changelog and ``benchmarks/results/*.md``, next to the runs that produced them; copied into
the code they go stale unnoticed. A comment says the rule and points to where the evidence is.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sklearn_selflabel"

# What a benchmark figure looks like: a score with three decimals (0.953), a duration (12 s,
# 2.5 ms) or a speed-up (6.2x).
FIGURE = re.compile(r"\b0\.\d{3}|\b\d+(?:\.\d+)? m?s\b|\b\d+(?:\.\d+)?x\b")
# Numbers that are settings, not results: a parameter's default or tolerance.
ALLOWED = re.compile(r"\w*(?:default|tol)\s*=\s*\d+(?:\.\d+)?(?:e-?\d+)?")


def source_files() -> list[Path]:
    return sorted(PACKAGE.glob("*.py"))


def comments(source: str):
    """``(line, text)`` of every comment."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string


def docstrings(source: str):
    """``(line, text)`` of every line of every docstring, attribute docstrings included."""
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for offset, line in enumerate(node.value.value.splitlines()):
                yield node.lineno + offset, line


def figures(text: str) -> list[str]:
    return FIGURE.findall(ALLOWED.sub("", text))


@pytest.mark.parametrize("path", source_files(), ids=lambda path: path.name)
def test_no_benchmark_figures(path):
    source = path.read_text(encoding="utf-8")
    found = [
        f"{path.name}:{line}: {' '.join(figures(text))}  <- {text.strip()}"
        for line, text in [*comments(source), *docstrings(source)]
        if figures(text)
    ]
    assert not found, "benchmark figures in comments or docstrings:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "text",
    [
        "# ACC 0.953 on MNIST-test",
        "# a fit took 12 s",
        "# 12.5 s instead of 20 s",
        "# a step took 2 ms",
        "# 6.2x faster",
    ],
)
def test_figures_are_found(text):
    assert figures(text)


@pytest.mark.parametrize(
    "text",
    [
        "tol : float, default=1e-3",
        "sinkhorn_tol=0.001 stops the solver",
        "the 3s and 5s of MNIST",
        "Conv 3x3 blocks",
        "weights such as 1/9, a floor of 1e-7",
        "12.5% of the image side",
    ],
)
def test_settings_are_not_figures(text):
    assert not figures(text)
