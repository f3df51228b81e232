"""The lab's summary as a Markdown table, from the `results.json` of one or more runs (e.g. two runs with disjoint
seed sets side by side), and the check that their verdicts never contradict each other.

`python -m batchnorm.lab.summary RUN_A/results.json RUN_B/results.json` prints the table: one row per finding,
the effect and its 95% interval from the first run, and one verdict column per run (`--effects 0 2` adds the
effect of run 2 too, e.g. a run on another dataset). With `--readme README.md` it replaces the block between
`<!-- lab-summary:start -->` and `<!-- lab-summary:end -->` in that file. Contradictions are checked between runs
on the same dataset.

Example:
    >>> run = {"experiments": [{"id": "E1", "title": "t", "findings": [{"claim": "BN helps", "verdict": "holds",
    ...     "effect": {"name": "BN - no BN (points)", "estimate": 3.0, "ci95": [1.0, 5.0], "threshold": 0.0},
    ...     "seeds": [0, 1, 2, 3, 4]}]}]}
    >>> print(markdown_table([run], ["seeds 0-4"]).splitlines()[2])
    | E1 | BN helps | BN - no BN (points): 3.0 [1.0, 5.0] | > 0 | holds |
    >>> contradictions([run, run])
    []
"""

from __future__ import annotations

import argparse
import json
import sys

from .protocol import fmt_ci

__all__ = ["markdown_table", "contradictions", "replace_block", "main"]

START, END = "<!-- lab-summary:start -->", "<!-- lab-summary:end -->"


def _findings(run: dict) -> dict[tuple[str, int], dict]:
    """{(experiment id, index of the finding): finding} of one results.json."""
    return {(e["id"], i): dict(f, experiment=e["id"]) for e in run["experiments"]
            for i, f in enumerate(e.get("findings", []))}


def _effect_cell(finding: dict) -> tuple[str, str]:
    effect = finding.get("effect")
    if not effect:
        return "-", "-"
    direction = effect.get("direction", "above")
    sign = "within ±" if direction == "within" else "<" if direction == "below" else ">"
    return (f"{effect['name']}: {fmt_ci(effect['estimate'], effect['ci95'])}",
            f"{sign}{effect['threshold']:g}" if direction == "within" else f"{sign} {effect['threshold']:g}")


def _numbers_cell(finding: dict | None, threshold: str) -> str:
    """The effect of a further run as numbers only (its name is the first run's), with its threshold if it differs."""
    effect = (finding or {}).get("effect")
    if not effect:
        return "-"
    cell = fmt_ci(effect["estimate"], effect["ci95"])
    own = _effect_cell(finding)[1]
    return cell if own == threshold else f"{cell} ({own})"


def markdown_table(runs: list[dict], labels: list[str], effects: tuple[int, ...] = (0,)) -> str:
    """One row per finding of the first run: claim, effect [95% CI] and threshold (first run), verdict per run;
    the runs listed in `effects` (indices, besides 0) get an effect column of their own before their verdict."""
    if len(runs) != len(labels) or not runs:
        raise ValueError(f"markdown_table needs one label per run, got {len(runs)} runs and {len(labels)} labels")
    bad = [i for i in effects if not 0 <= i < len(runs)]
    if bad:
        raise ValueError(f"effects must be indices of runs (0..{len(runs) - 1}), got {bad}")
    tables = [_findings(run) for run in runs]
    header, rule = "| exp. | claim | effect [95% CI] | threshold | verdict (" + labels[0] + ") |", "|---|---|---|---|---|"
    for i, label in enumerate(labels[1:], start=1):
        if i in effects:
            header, rule = header + f" effect ({label}) |", rule + "---|"
        header, rule = header + f" verdict ({label}) |", rule + "---|"
    lines = [header, rule]
    for key, finding in tables[0].items():
        effect, threshold = _effect_cell(finding)
        claim = finding["claim"].replace("|", "/")
        cells = [key[0], claim, effect.replace("|", "/"), threshold, finding["verdict"]]
        for i, table in enumerate(tables[1:], start=1):
            if i in effects:
                cells.append(_numbers_cell(table.get(key), threshold))
            cells.append(table[key]["verdict"] if key in table else "not run")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _dataset(run: dict) -> str:
    """The dataset a run used (the config of its first experiment; digits if not recorded)."""
    for experiment in run.get("experiments", []):
        return str((experiment.get("config") or {}).get("data", "digits"))
    return "digits"


def contradictions(runs: list[dict]) -> list[str]:
    """Findings that hold in one run and do not hold in another run on the same dataset (the lab's stability
    rule forbids this; runs on different datasets may differ)."""
    found = []
    for data in dict.fromkeys(_dataset(run) for run in runs):
        tables = [_findings(run) for run in runs if _dataset(run) == data]
        for key, finding in tables[0].items():
            verdicts = {t[key]["verdict"] for t in tables if key in t}
            if {"holds", "does not hold"} <= verdicts:
                found.append(f"{key[0]}: {finding['claim']}" + ("" if data == "digits" else f" ({data})"))
    return found


def replace_block(text: str, block: str) -> str:
    """`text` with the part between the lab-summary markers replaced by `block`."""
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"the file has no {START} ... {END} block to replace")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchnorm.lab.summary", description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="results.json of each run (the first gives the effects)")
    parser.add_argument("--labels", nargs="+", help="one column label per run (default: the seeds of each run)")
    parser.add_argument("--effects", nargs="+", type=int, default=[0], metavar="I",
                        help="runs (0-based, in the order given) whose effect gets a column (default: 0)")
    parser.add_argument("--readme", help="replace the lab-summary block of this Markdown file instead of printing")
    args = parser.parse_args(argv)
    runs = []
    for path in args.results:
        try:
            with open(path, encoding="utf-8") as f:
                runs.append(json.load(f))
        except (OSError, ValueError) as error:
            print(f"batchnorm.lab.summary: cannot read {path}: {error}", file=sys.stderr)
            return 2
    labels = args.labels or [_seed_label(run) for run in runs]
    try:
        table = markdown_table(runs, labels, tuple(args.effects))
    except ValueError as error:
        print(f"batchnorm.lab.summary: {error}", file=sys.stderr)
        return 2
    for problem in contradictions(runs):
        print(f"batchnorm.lab.summary: contradicting verdicts: {problem}", file=sys.stderr)
    if args.readme:
        from .._atomic import atomic_write

        with open(args.readme, encoding="utf-8") as f:
            text = f.read()
        atomic_write(args.readme, replace_block(text, table))
    else:
        print(table)
    return 0


def _seed_label(run: dict) -> str:
    seeds = sorted({s for e in run["experiments"] for f in e.get("findings", []) for s in f.get("seeds", [])})
    return f"seeds {seeds[0]}-{seeds[-1]}" if seeds else "run"


if __name__ == "__main__":
    sys.exit(main())
