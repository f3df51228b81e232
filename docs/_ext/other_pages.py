"""List every top-level page of docs/ that index.md does not name, in a toctree at the marker line.

Pages written by other parts of the project (for instance a generated compatibility table) appear in the site as
soon as they are committed, without editing index.md, and no page is ever left outside the navigation.
"""

from __future__ import annotations

import os
import re

MARKER = "<!-- other-pages -->"


def other_pages(srcdir: str, index_text: str) -> list[str]:
    """Names (without .md) of docs/*.md pages that the index text does not mention, sorted."""
    named = set(re.findall(r"^([\w./-]+)\s*$", index_text, re.M))
    pages = []
    for entry in sorted(os.listdir(srcdir)):
        name, ext = os.path.splitext(entry)
        if ext == ".md" and name != "index" and name not in named:
            pages.append(name)
    return pages


def _source_read(app, docname: str, source: list) -> None:
    if docname != "index" or MARKER not in source[0]:
        return
    pages = other_pages(app.srcdir, source[0])
    block = "" if not pages else "```{toctree}\n:caption: More\n:maxdepth: 1\n\n" + "\n".join(pages) + "\n```\n"
    source[0] = source[0].replace(MARKER, block)


def setup(app):
    app.connect("source-read", _source_read)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
