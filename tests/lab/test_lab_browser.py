"""The lab's report page in a real browser: headless Chromium (Debian's `chromium`; CI installs it) loads
index.html, and every image on it must load (complete, with a natural size)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys

import pytest

from test_lab import _fake_module  # noqa: F401  (the fake experiment of the framework tests)

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)

CHECK = """<script>
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var bad = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  var out = document.createElement('pre');
  out.id = 'image-check';
  out.textContent = 'IMAGES ' + images.length + ' BROKEN ' + bad.length + ' ' +
                    bad.map(function (img) { return img.getAttribute('src'); }).join(',');
  document.body.appendChild(out);
});
</script>"""


def _dump_dom(page: str, profile: str) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", "--dump-dom", "file://" + page]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (CI installs it: apt-get install chromium)")
def test_report_renders_in_chromium_with_every_image(tmp_path, monkeypatch):
    from batchnorm.lab import experiments, runner

    calls = []
    module = _fake_module(calls)
    monkeypatch.setitem(sys.modules, "batchnorm.lab.experiments._fake", module)
    monkeypatch.setitem(experiments.EXPERIMENTS, "E99", "_fake")
    out = tmp_path / "report"
    runner.run_all(["E99"], out=str(out), stream=io.StringIO())
    page = (out / "index.html").read_text()
    expected = len(re.findall(r"<img ", page))
    assert expected == 2
    checked = out / "checked.html"  # the page plus a script that reports every image's state
    checked.write_text(page.replace("</body>", CHECK + "</body>"))
    dom = _dump_dom(str(checked), str(tmp_path / "profile"))
    match = re.search(r"IMAGES (\d+) BROKEN (\d+) ?(\S*)", dom)
    assert match, dom[-2000:]
    assert int(match.group(1)) == expected and match.group(2) == "0", f"broken images: {match.group(3)}"
    assert "The batch-norm lab" in dom and "fake claim" in dom
    # the summary table as the browser built it: the new columns, one row per finding, each cell filled
    header = re.search(r"<tr>(<th>exp\.</th>.*?)</tr>", dom)
    assert header, dom[:3000]
    columns = re.findall(r"<th>(.*?)</th>", header.group(1))
    assert columns == ["exp.", "claim", "verdict", "effect [95% CI]", "threshold", "seeds", "reproduce"]
    row = re.search(r'<tr><td><a href="#E99">E99</a></td>(.*?)</tr>', dom)
    assert row, dom[:3000]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
    assert cells[0] == "fake claim" and "holds" in cells[1]
    assert re.search(r"\d \[[-\d.]+, [-\d.]+\]", cells[2]), cells[2]
    assert cells[3] == "&gt; 0.5" and cells[4].startswith("3 (0") and "bash bin/lab E99 --force" in cells[5]
    assert '<a href="results.json">results.json</a>' in dom

    # and the check itself can fail: a missing image is reported
    os.remove(out / "img" / "E99_0.png")
    dom = _dump_dom(str(checked), str(tmp_path / "profile"))
    match = re.search(r"IMAGES (\d+) BROKEN (\d+) ?(\S*)", dom)
    assert match and match.group(2) == "1" and "E99_0.png" in match.group(3)
