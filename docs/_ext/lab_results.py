"""Render the lab's results.json (docs/lab/results.json) into the lab guide at build time.

The page docs/lab.md holds the marker line `<!-- lab-results -->`; on `source-read` it is replaced by Markdown
tables made by `render_markdown(results)` (a summary of every finding, then each experiment's arms). Without the
file the marker becomes a one-line note that no lab results are committed yet.
"""

from __future__ import annotations

import json
import os
from typing import Optional

MARKER = "<!-- lab-results -->"
MISSING = "*No lab results committed yet* (docs/lab/results.json is absent)."


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return _cell(value)


def _mean(values) -> Optional[float]:
    values = [v for v in (values or []) if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def _count(seeds) -> str:
    """The number of seeds, given as a list of seeds or as a count."""
    return str(len(seeds)) if isinstance(seeds, (list, tuple)) else _cell(seeds if seeds is not None else "")


def _chosen_validation(arm: dict):
    """Validation accuracy at the chosen rate: a list per rate of the grid, a dict keyed by rate, or a number."""
    val, grid, chosen = arm.get("val_accuracy"), arm.get("lr_grid") or [], arm.get("lr_chosen")
    if isinstance(val, dict):
        return val.get(str(chosen), val.get(chosen))
    if isinstance(val, (list, tuple)):
        if chosen in grid and len(val) == len(grid):
            return val[grid.index(chosen)]
        numbers = [v for v in val if isinstance(v, (int, float))]
        return max(numbers) if numbers else None
    return val


def render_markdown(results: Optional[dict]) -> str:
    """Markdown for the lab guide: one summary table of findings, then one table of arms per experiment."""
    if not results:
        return MISSING
    experiments = results.get("experiments", [])
    lines = ["| experiment | claim | verdict | effect (estimate, 95% CI) | criterion | seeds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for exp in experiments:
        for finding in exp.get("findings", []):
            effect = finding.get("effect") or {}
            ci = effect.get("ci95") or [None, None]
            text = "–"
            if effect:
                text = (f"{_cell(effect.get('name', ''))} = {_number(effect.get('estimate'))} "
                        f"[{_number(ci[0])}, {_number(ci[1])}]")
                if effect.get("threshold") is not None:
                    text += f" (threshold {_number(effect.get('threshold'))})"
            name = f"{_cell(exp.get('id', ''))} {_cell(exp.get('title', ''))}"
            lines.append(f"| {name} | {_cell(finding.get('claim', ''))}"
                         f" | **{_cell(finding.get('verdict', ''))}** | {text} | {_cell(finding.get('criterion', ''))}"
                         f" | {_count(finding.get('seeds'))} |")
    out = [f"{len(experiments)} experiments.", "", *lines]
    for exp in experiments:
        out += ["", f"### {_cell(exp.get('id', ''))}: {_cell(exp.get('title', ''))}", ""]
        if exp.get("seconds") is not None:
            out += [f"Ran in {_number(exp['seconds'])} s.", ""]
        arms = exp.get("arms", [])
        if not arms:
            out.append("No arms recorded.")
            continue
        out += ["| arm | learning rates tried | chosen | validation accuracy | test accuracy (mean) | seeds |",
                "| --- | --- | --- | --- | --- | --- |"]
        for arm in arms:
            tests = arm.get("test_accuracy") or []
            grid = ", ".join(_number(v) for v in arm.get("lr_grid") or [])
            out.append(f"| {_cell(arm.get('name', ''))} | {grid} | {_number(arm.get('lr_chosen'))} | "
                       f"{_number(_chosen_validation(arm))} | {_number(_mean(tests))} | {len(tests)} |")
    versions = results.get("versions")
    if versions:
        out += ["", "Versions: " + ", ".join(f"{_cell(k)} {_cell(v)}" for k, v in sorted(versions.items())) + "."]
    return "\n".join(out)


def load(path: str) -> Optional[dict]:
    """The parsed results file, or None when it does not exist."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _source_read(app, docname: str, source: list) -> None:
    if MARKER in source[0]:
        results = load(os.path.join(app.srcdir, "lab", "results.json"))
        source[0] = source[0].replace(MARKER, render_markdown(results))


def setup(app):
    app.connect("source-read", _source_read)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
