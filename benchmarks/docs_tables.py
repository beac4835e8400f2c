"""Publish the benchmark figures: each lives in one results file, and the pages show them.

``benchmarks/results/*.md`` are what the benchmark scripts write. This script turns them into
the documentation's benchmark page and the README's results table and figure, so that no
figure is typed twice:

    python benchmarks/docs_tables.py          # rewrite README.md's results block and suite.png
    python benchmarks/docs_tables.py --check  # exit 1 where README.md's block is out of date

The docs build (``docs/conf.py``) calls ``write_benchmarks_page`` to write
``docs/_generated/benchmarks.rst``, which ``docs/benchmarks.rst`` includes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
FIGURE = RESULTS / "suite.png"
BEGIN = "<!-- results: written by benchmarks/docs_tables.py; do not edit -->"
END = "<!-- end of results -->"
# The pages' order: the suite and image quality first, the rest by name.
FIRST = ("suite.md", "quality.md", "fit_speed.md", "fit_speed_digits_flat.md")
# Section underlines below the page title ("="), by the rank of a heading's depth in its file.
UNDERLINES = ("-", "~", "^", '"')
KIND_NAMES = {"table": "tables", "pixels": "pixels as flat rows", "embedding": "embeddings"}
KIND_NAMES["text"] = "documents (TF-IDF)"
IMAGE_SETS = {"usps": "USPS", "mnist": "MNIST-test", "digits": "digits"}


def _inline(text: str) -> str:
    """Markdown inline markup -> reStructuredText: code spans, and escapes elsewhere."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"``{part[1:-1]}``")
            continue
        part = part.replace("\\", "\\\\")
        bold = re.split(r"(\*\*[^*]+\*\*)", part)
        for i, piece in enumerate(bold):
            if not (piece.startswith("**") and piece.endswith("**")):
                # A lone * or |, or a word ending in _, would be rst markup.
                piece = piece.replace("*", "\\*").replace("|", "\\|")
                piece = re.sub(r"(\w)_(?=\W|$)", r"\1\\_", piece)
            bold[i] = piece
        out.append("".join(bold))
    return "".join(out)


def _table(rows: list[str]) -> list[str]:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    header, body = cells[0], [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *body]:
        for j, cell in enumerate(row):
            text = _inline(cell)
            lead = "   * -" if j == 0 else "     -"
            lines.append(f"{lead} {text}" if text else lead)
    return [*lines, ""]


def markdown_to_rst(text: str) -> str:
    """The subset of markdown that the results files use (headings, paragraphs, pipe tables,
    bullets, indented code), as reStructuredText one level below a page title."""
    lines = text.splitlines()
    depths = sorted({len(m.group(1)) for m in map(re.compile(r"^(#+)\s").match, lines) if m})
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            out += ["", *_table(rows)]
            continue
        heading = re.match(r"^(#+)\s+(.*)$", line)
        if heading:
            title = _inline(heading.group(2))
            underline = UNDERLINES[depths.index(len(heading.group(1)))]
            out += ["", title, underline * len(title), ""]
        elif line.startswith("    ") and (not out or not out[-1].strip()):
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            out += ["::", "", *block]
            continue
        elif line.startswith("- "):
            if out and out[-1].strip() and not out[-1].startswith("- "):
                out.append("")
            out.append("- " + _inline(line[2:]))
        else:
            out.append(_inline(line))
        i += 1
    return "\n".join(out).strip() + "\n"


def results_files(results: Path = RESULTS) -> list[Path]:
    files = {p.name: p for p in results.glob("*.md")}
    return [files[n] for n in FIRST if n in files] + [
        files[n] for n in sorted(files) if n not in FIRST
    ]


def write_benchmarks_page(out: Path, results: Path = RESULTS) -> Path:
    """Write every results file, as rst sections, to ``out``; returns ``out``."""
    sections = []
    for path in results_files(results):
        rst = markdown_to_rst(path.read_text())
        sections.append(f".. From benchmarks/results/{path.name}\n\n{rst}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(sections))
    return out


def _suite():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import suite  # noqa: PLC0415 (the benchmark's own summary, needs its imports)
    from suite_data import DATASETS  # noqa: PLC0415

    rows = [json.loads(line) for line in (RESULTS / "suite.jsonl").read_text().splitlines()]
    sets = [name for name in DATASETS if any(r["data"] == name for r in rows)]
    return suite, DATASETS, suite.verdicts(rows, sets)


def _image_rows() -> dict[str, dict[str, list[float]]]:
    """ACC per image set and method from ``quality.jsonl``'s main table."""
    out: dict[str, dict[str, list[float]]] = {}
    for line in (RESULTS / "quality.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("table") == "main" and r["data"] in IMAGE_SETS:
            out.setdefault(r["data"], {}).setdefault(r["method"], []).append(r["acc"])
    return out


def readme_block() -> str:
    """The README's results: the suite per set, and the image sets of ``quality.py``."""
    suite, datasets, table = _suite()
    lines = [
        BEGIN,
        "",
        "| data | kind | sklearn-selflabel | KMeans | best classical method |",
        "|---|---|---|---|---|",
    ]
    for name, v in table.items():
        ours = v["methods"][suite.OURS]["acc"][0]
        kmeans = v["methods"]["KMeans"]["acc"][0]
        best = v["methods"][v["best"]]["acc"][0]
        mark = "**" if v["at_or_above"] else ""
        lines.append(
            f"| {name} | {KIND_NAMES[datasets[name][0]]} | {mark}{ours:.3f}{mark} | "
            f"{kmeans:.3f} | {v['best']} {best:.3f} |"
        )
    images = _image_rows()
    for name, methods in images.items():
        if "selflabel_image" not in methods:
            continue
        classical = {m: sum(a) / len(a) for m, a in methods.items() if not m.startswith("self")}
        best = max(classical, key=classical.get)
        ours = sum(methods["selflabel_image"]) / len(methods["selflabel_image"])
        lines.append(
            f"| {IMAGE_SETS[name]}, `image_shape` | images | **{ours:.3f}** | "
            f"{classical['KMeans']:.3f} | {best} {classical[best]:.3f} |"
        )
    n_at = sum(v["at_or_above"] for v in table.values())
    lines += [
        "",
        f"Mean ACC over seeds, defaults, `n_clusters` = the number of classes; bold: at or above "
        f"the best classical method (at most {suite.TIE} below), on {n_at} of {len(table)} "
        "sets of the suite (`benchmarks/suite.py`, 3 seeds, `benchmarks/results/suite.md`); "
        "images from `benchmarks/quality.py` (5 seeds, `benchmarks/results/quality.md`).",
        "",
        "![ACC per data set: this estimator against the classical methods]"
        "(benchmarks/results/suite.png)",
        "",
        END,
    ]
    return "\n".join(lines)


def plot_suite(path: Path = FIGURE) -> None:
    """Dots per set: this estimator's mean ACC beside each classical method's."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    suite, datasets, table = _suite()
    names = list(table)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
    others = [*suite.CLASSICAL, suite.UMAP_GMM]
    for k, method in enumerate(others):
        xs = [table[n]["methods"].get(method, {"acc": (float("nan"),)})["acc"][0] for n in names]
        ax.scatter(xs, range(len(names)), s=14, alpha=0.6, label=method, color=f"C{k + 1}")
    ours = [table[n]["methods"][suite.OURS]["acc"][0] for n in names]
    ax.scatter(ours, range(len(names)), s=46, marker="D", color="C0", label="sklearn-selflabel")
    ax.set_yticks(range(len(names)), [f"{n} ({datasets[n][0]})" for n in names], fontsize=8)
    ax.set_xlabel("ACC (mean over 3 seeds)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.4, -0.07), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme_with_block(text: str, block: str) -> str:
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + block + text[stop:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check README.md's block")
    args = parser.parse_args()
    text = README.read_text()
    updated = readme_with_block(text, readme_block())
    if args.check:
        if updated != text:
            print("README.md's results block is out of date: run benchmarks/docs_tables.py")
            return 1
        return 0
    README.write_text(updated)
    plot_suite()
    return 0


if __name__ == "__main__":
    sys.exit(main())
