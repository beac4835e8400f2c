"""Sphinx configuration for sklearn-selflabel.

Build with ``make docs`` (HTML in ``docs/_build/html``, warnings are errors). The gallery runs
every ``examples/plot_*.py`` and ``examples/quickstart.py`` during the build.
"""

import sys
from pathlib import Path

import sklearn_selflabel

sys.path.insert(0, str(Path(__file__).parent))  # gallery_order
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # docs_tables

from docs_tables import write_benchmarks_page  # noqa: E402

# The benchmark page's sections, written from benchmarks/results/ at every build.
write_benchmarks_page(Path(__file__).parent / "_generated" / "benchmarks.rst")

project = "sklearn-selflabel"
author = "sklearn-selflabel developers"
copyright = "sklearn-selflabel developers"  # noqa: A001 (Sphinx's name)
release = version = sklearn_selflabel.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
exclude_patterns = ["_build", "_generated"]

autosummary_generate = True
numpydoc_show_class_members = False

html_theme = "pydata_sphinx_theme"
html_title = f"sklearn-selflabel {release}"
html_theme_options = {"navigation_with_keys": False}
html_show_sourcelink = False

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # Examples run during the build; others (e.g. the multi-process accelerate recipe) are
    # shown as code only.
    "filename_pattern": r"/(plot_[^/]*|quickstart)\.py$",
    # Names from sklearn_selflabel in the examples' code link to the API reference.
    "doc_module": ("sklearn_selflabel",),
    "backreferences_dir": "generated/backreferences",
    "reference_url": {"sklearn_selflabel": None},
    "remove_config_comments": True,
    "show_memory": False,
    # Two examples run at a time (joblib processes), which halves the build on two cores.
    "parallel": 2,
    "within_subsection_order": "gallery_order.GalleryOrder",
}
