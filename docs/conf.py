"""Sphinx configuration for sklearn-selflabel."""

project = "sklearn-selflabel"
author = "sklearn-selflabel developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "numpydoc"]
autosummary_generate = True
numpydoc_show_class_members = False
html_theme = "pydata_sphinx_theme"
exclude_patterns = ["_build"]
