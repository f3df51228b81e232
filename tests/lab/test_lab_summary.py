"""The lab summary: the README table from two runs' results.json, contradictions flagged, the block replaced."""

import json
import subprocess
import sys

from batchnorm.lab.summary import END, START, contradictions, markdown_table


def _run(verdict: str, seeds: list[int], lo: float) -> dict:
    finding = {"claim": "BN | helps", "verdict": verdict, "seeds": seeds, "criterion": "c",
               "effect": {"name": "difference (points)", "estimate": lo + 1, "ci95": [lo, lo + 2], "threshold": 0.5}}
    return {"experiments": [{"id": "E3", "title": "t", "findings": [finding]}]}


def test_table_has_a_verdict_column_per_run_and_flags_contradictions():
    a, b = _run("holds", [0, 1, 2, 3, 4], 1.0), _run("does not hold", [100, 101, 102, 103, 104], -3.0)
    table = markdown_table([a, b], ["seeds 0-4", "seeds 100-104"])
    header, _, row = table.splitlines()
    assert "verdict (seeds 0-4)" in header and "verdict (seeds 100-104)" in header
    assert row.endswith("| holds | does not hold |") and "BN / helps" in row and "2.0 [1.0, 3.0]" in row
    assert contradictions([a, b]) == ["E3: BN | helps"]
    assert contradictions([a, _run("inconclusive", [100], 0.0)]) == []


def test_cli_replaces_only_the_readme_block(tmp_path):
    paths = []
    for i, run in enumerate([_run("holds", [0, 1, 2, 3, 4], 1.0), _run("inconclusive", [100, 101], 0.0)]):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(run))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{START}\nold table\n{END}\nafter\n")
    done = subprocess.run([sys.executable, "-m", "batchnorm.lab.summary", *map(str, paths), "--readme", str(readme)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = readme.read_text()
    assert text.startswith("# title\n") and text.endswith(f"{END}\nafter\n") and "old table" not in text
    assert "| holds | inconclusive |" in text and "verdict (seeds 0-4)" in text and "verdict (seeds 100-101)" in text
    missing = subprocess.run([sys.executable, "-m", "batchnorm.lab.summary", str(tmp_path / "nope.json")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot read" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_equivalence_thresholds_are_written_two_sided():
    run = {"experiments": [{"id": "E18", "title": "t", "findings": [
        {"claim": "the same", "verdict": "holds", "seeds": [0, 1],
         "effect": {"name": "d (points)", "estimate": 0.1, "ci95": [-0.4, 0.6], "threshold": 1.0,
                    "direction": "within"}}]}]}
    row = markdown_table([run], ["seeds 0-1"]).splitlines()[2]
    assert "| within ±1 | holds |" in row


def test_a_run_on_another_dataset_gets_its_own_effect_column_and_is_not_a_contradiction():
    digits_a, digits_b = _run("holds", [0, 1, 2, 3, 4], 1.0), _run("inconclusive", [100, 101], 0.0)
    mnist = _run("does not hold", [0, 1, 2, 3, 4], -3.0)
    mnist["experiments"][0]["config"] = {"data": "mnist5k"}
    table = markdown_table([digits_a, digits_b, mnist], ["s0", "s100", "mnist5k"], effects=(0, 2))
    header, _, row = table.splitlines()
    assert header.endswith("| verdict (s0) | verdict (s100) | effect (mnist5k) | verdict (mnist5k) |")
    assert row.endswith("| holds | inconclusive | -2.0 [-3.0, -1.0] | does not hold |")
    assert contradictions([digits_a, digits_b, mnist]) == []  # holds on digits, not on mnist5k: allowed
    other = _run("does not hold", [0], -3.0)
    assert contradictions([digits_a, digits_b, other]) == ["E3: BN | helps"]
    try:
        markdown_table([digits_a], ["s0"], effects=(0, 3))
    except ValueError as error:
        assert "effects must be indices of runs" in str(error)
    else:
        raise AssertionError("an effect column of a run that is not given must be refused")
