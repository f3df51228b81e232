"""Sphinx configuration of the batchnorm documentation (built by `bash bin/docs`)."""

from __future__ import annotations

import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))  # this checkout's package first
sys.path.insert(0, os.path.join(HERE, "_ext"))

import batchnorm  # noqa: E402

project = "batchnorm"
author = "batchnorm contributors"
copyright = "2026, batchnorm contributors"
release = version = batchnorm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served from _static: formulas render without a network
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "lab_results",
    "other_pages",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "gallery_src", "lab/README.md", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "deflist"]
myst_heading_anchors = 3

# The reference: signatures as written, members in source order, no torch internals inherited.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": False}
autoclass_content = "class"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = [("Shape", "params_style"), ("Formula", "notes_style"), ("Paper", "notes_style")]

html_theme = "furo"
html_title = f"batchnorm {release}"
html_static_path = []
html_show_sourcelink = False

# The gallery: scripts in gallery_src run at build time (matplotlib's Agg backend, 2 threads).
os.environ.setdefault("MPLBACKEND", "Agg")
sphinx_gallery_conf = {
    "examples_dirs": "gallery_src",
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "min_reported_time": 1,
    "capture_repr": ("_repr_html_", "__repr__"),
    "reset_modules": ("matplotlib",),
}
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")

# `name` in a docstring links to that object when it exists and is shown as code otherwise.
default_role = "py:obj"


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """NamedTuple fields are described in their class's Attributes section; skip torch's generated aliases."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
