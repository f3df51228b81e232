"""The documentation site in a real browser. The test builds the site once into a temporary copy of docs/
(`sphinx-build -W`, the gallery's scripts not executed: `bash bin/docs`, which CI runs after the tests, executes
them), checks that no internal link of any page points to a missing file or anchor, then opens index.html and the
batchnorm.nn reference in headless Chromium (Debian's `chromium`; CI installs it) and checks what they show:
title, navigation, a class signature and typeset formulas."""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag in ("img", "script") and attrs.get("src"):
            self.links.append(attrs["src"])
        if tag == "link" and attrs.get("href") and attrs.get("rel") in (["stylesheet"], "stylesheet"):
            self.links.append(attrs["href"])


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("site")
    shutil.copytree(ROOT / "docs", work / "docs", ignore=shutil.ignore_patterns("_build", "gallery"))
    os.symlink(ROOT / "src", work / "src")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
                           "-D", "plot_gallery=0", str(work / "docs"), str(work / "html")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return work / "html"


def broken_links(site: Path) -> list[str]:
    """Every internal link (href or src) of every page whose file, or whose #anchor in that file, is missing."""
    pages = {path: _parse(path) for path in site.rglob("*.html")}
    broken = []
    for page, parsed in pages.items():
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith(("mailto:", "javascript:", "//")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)}: {link}")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(site)}: {link} (no such anchor)")
    return broken


def test_no_broken_internal_links(site):
    assert (site / "index.html").is_file() and (site / "api" / "nn.html").is_file()
    assert broken_links(site) == []
    # and the check can fail: a page with a link to a missing file and one to a missing anchor
    (site / "bad.html").write_text('<a href="nowhere.html">x</a><a href="index.html#no-such-anchor">y</a>')
    assert sorted(broken_links(site)) == ["bad.html: index.html#no-such-anchor (no such anchor)",
                                          "bad.html: nowhere.html"]
    (site / "bad.html").unlink()


def test_every_public_name_has_a_reference_entry(site):
    import batchnorm.distributed
    import batchnorm.functional
    import batchnorm.nn
    import batchnorm.testing.reference
    import batchnorm.testing.reference_recurrent
    import batchnorm.tools

    pages = {"nn": batchnorm.nn, "functional": batchnorm.functional, "tools": batchnorm.tools,
             "distributed": batchnorm.distributed}
    missing = []
    for page, module in pages.items():
        ids = _parse(site / "api" / f"{page}.html").ids
        missing += [f"{module.__name__}.{n}" for n in module.__all__ if f"{module.__name__}.{n}" not in ids]
    ids = _parse(site / "api" / "reference.html").ids
    for module in (batchnorm.testing.reference, batchnorm.testing.reference_recurrent):
        missing += [f"{module.__name__}.{n}" for n in module.__all__ if f"{module.__name__}.{n}" not in ids]
    assert missing == []


def _dump_dom(page: Path, profile: Path) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (CI installs it: apt-get install chromium)")
def test_index_and_reference_render_in_chromium(site, tmp_path):
    index = _dump_dom(site / "index.html", tmp_path / "profile")
    assert re.search(r"<title>batchnorm .*</title>", index)
    navigation = re.search(r'<div class="sidebar-tree">(.*?)</div>\s*</div>', index, re.S)
    assert navigation, index[:2000]
    for page in ("getting-started.html", "choosing.html", "api/index.html", "gallery/index.html", "lab-guide.html"):
        assert f'href="{page}"' in navigation.group(1), page
    reference = _dump_dom(site / "api" / "nn.html", tmp_path / "profile")
    assert re.search(r"<title>batchnorm\.nn - batchnorm .*</title>", reference)
    signature = re.search(r'<dt class="sig sig-object py" id="batchnorm\.nn\.BatchRenorm2d">(.*?)</dt>', reference,
                          re.S)
    assert signature, "no signature of BatchRenorm2d"
    text = re.sub(r"<[^>]+>", "", signature.group(1))
    assert "BatchRenorm2d" in text and "rmax" in text and "3.0" in text and "warmup_steps" in text
    assert "Parameters" in reference and "Example" in reference
    assert "<mjx-container" in reference, "the formulas were not typeset (MathJax is served from _static)"
