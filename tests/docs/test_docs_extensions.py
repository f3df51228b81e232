"""The documentation's build-time helpers: the lab-results renderer on a synthetic results.json, the note shown
when no results are committed, and the listing of pages that index.md does not name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import lab_results  # noqa: E402
import other_pages  # noqa: E402

RESULTS = {
    "experiments": [
        {"id": "E5", "title": "Batch size", "seconds": 12.5, "config": {"seeds": 3},
         "findings": [
             {"claim": "Batch Renorm helps at batch 2", "verdict": "holds", "criterion": "difference > 2 points",
              "effect": {"name": "renorm - BN (points)", "estimate": 5.25, "ci95": [3.1, 7.4], "threshold": 2.0},
              "seeds": [0, 1, 2]},
             {"claim": "GN | LN beat BN", "verdict": "not run", "criterion": "needs GroupNorm", "effect": None,
              "seeds": []}],
         "arms": [{"name": "BN", "lr_grid": [0.01, 0.1], "lr_chosen": 0.1, "val_accuracy": [0.80, 0.90],
                   "test_accuracy": [0.5, 0.7, 0.6]},
                  {"name": "renorm", "lr_grid": [0.01, 0.1], "lr_chosen": 0.01,
                   "val_accuracy": {"0.01": 0.93, "0.1": 0.91}, "test_accuracy": [0.9, 0.8]}]},
        {"id": "E6", "title": "Ghost", "seconds": None, "config": {}, "findings": [], "arms": []}],
    "versions": {"torch": "2.13.0", "python": "3.11.7"},
}


def test_renders_every_finding_and_arm():
    text = lab_results.render_markdown(RESULTS)
    assert text.startswith("2 experiments.")
    summary = [line for line in text.splitlines() if line.startswith("| E5")]
    assert len(summary) == 2
    assert "**holds**" in summary[0] and "renorm - BN (points) = 5.25 [3.1, 7.4] (threshold 2)" in summary[0]
    assert summary[0].endswith("| 3 |")                          # seeds given as a list: their number
    assert "GN \\| LN beat BN" in summary[1] and "**not run**" in summary[1] and "| – |" in summary[1]
    assert "### E5: Batch size" in text and "Ran in 12.5 s." in text and "### E6: Ghost" in text
    arms = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith(("| BN ", "| renorm"))}
    assert "| 0.01, 0.1 | 0.1 | 0.9 | 0.6 | 3 |" in arms["BN"]           # validation at the chosen rate, mean test
    assert "| 0.01 | 0.93 | 0.85 | 2 |" in arms["renorm"]
    assert "No arms recorded." in text and "Versions: python 3.11.7, torch 2.13.0." in text


def test_missing_file_gives_the_note(tmp_path):
    assert lab_results.load(str(tmp_path / "results.json")) is None
    assert lab_results.render_markdown(None) == lab_results.MISSING
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    assert lab_results.load(str(tmp_path / "results.json")) == RESULTS


def test_source_read_replaces_the_marker(tmp_path):
    class App:
        srcdir = str(tmp_path)

    source = [f"# Lab\n\n{lab_results.MARKER}\n"]
    lab_results._source_read(App, "lab-guide", source)
    assert "No lab results committed yet" in source[0] and lab_results.MARKER not in source[0]
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "results.json").write_text(json.dumps(RESULTS))
    source = [f"# Lab\n\n{lab_results.MARKER}\n"]
    lab_results._source_read(App, "lab-guide", source)
    assert "### E5: Batch size" in source[0]


def test_other_pages_lists_pages_the_index_does_not_name(tmp_path):
    for name in ("index", "guide", "extra", "another"):
        (tmp_path / f"{name}.md").write_text(f"# {name}\n")
    (tmp_path / "notes.txt").write_text("not a page")
    index = "```{toctree}\nguide\n```\n" + other_pages.MARKER + "\n"
    assert other_pages.other_pages(str(tmp_path), index) == ["another", "extra"]

    class App:
        srcdir = str(tmp_path)

    source = [index]
    other_pages._source_read(App, "index", source)
    assert ":caption: More" in source[0] and "another\nextra" in source[0] and other_pages.MARKER not in source[0]


def test_every_public_name_has_an_example():
    """The reference shows an example for every public name; --doctest-modules (pyproject) runs each one."""
    import importlib
    import inspect

    missing = []
    for name in ("batchnorm.nn", "batchnorm.functional", "batchnorm.tools", "batchnorm.distributed",
                 "batchnorm.testing.reference", "batchnorm.testing.reference_recurrent"):
        module = importlib.import_module(name)
        missing += [f"{name}.{n}" for n in module.__all__ if ">>> " not in (inspect.getdoc(getattr(module, n)) or "")]
    assert missing == []
