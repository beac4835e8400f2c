"""Code lines per module of a package, and the estimator class's code, docstring and methods.

A code line is a line that holds a token of code: docstrings, comments and blank lines do not
count (the standard library's ``ast`` and ``tokenize``). The architecture issue's limits (at
most 300 code lines in ``SelfLabelingClusterer``, at most 500 in any module) are measured so.

    python benchmarks/code_size.py                  # sklearn_selflabel of this tree
    python benchmarks/code_size.py /path/to/package
"""

from __future__ import annotations

import argparse
import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASS = "SelfLabelingClusterer"
_NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}


def docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers of every module, class and function docstring in ``tree``."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def code_lines(source: str) -> set[int]:
    """Line numbers that hold code (not docstring, comment or blank) in ``source``."""
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _NOT_CODE:
            lines.update(range(token.start[0], token.end[0] + 1))
    return lines - docstring_lines(ast.parse(source))


def class_size(source: str, name: str) -> tuple[int, int, int] | None:
    """``(code lines, docstring lines, methods)`` of the top-level class ``name``, if any."""
    tree = ast.parse(source)
    code, docs = code_lines(source), docstring_lines(tree)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            span = range(node.lineno, node.end_lineno + 1)
            methods = sum(isinstance(n, ast.FunctionDef) for n in node.body)
            return len(code & set(span)), len(docs & set(span)), methods
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", type=Path, default=ROOT / "sklearn_selflabel")
    args = parser.parse_args()
    total = 0
    for path in sorted(args.package.glob("*.py")):
        source = path.read_text()
        n_lines = len(code_lines(source))
        total += n_lines
        print(f"{path.name:24} {n_lines:5}")
        size = class_size(source, CLASS)
        if size is not None:
            print(f"   {CLASS}: {size[0]} code / {size[1]} docstring lines, {size[2]} methods")
    print(f"{'total':24} {total:5}")


if __name__ == "__main__":
    main()
