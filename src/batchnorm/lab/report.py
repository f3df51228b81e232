"""The lab's report: DIR/index.html and DIR/results.json.

The page has a summary table (claim, verdict, effect with its 95% interval, threshold, seeds, and the command
that reproduces the experiment), then one section per experiment: each finding with its anchor (linked to the
paper on arXiv), criterion and numbers; the arms with their learning-rate grids, validation scores and chosen
rates; the plots (PNG, drawn with matplotlib from the result's numbers, per-seed values as points); tables,
notes, config and software versions. results.json holds the same numbers for programs (schema in
`results_json`).
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import math
import os
import re

from .protocol import Plot, Result, grid_edge
from ._io import reproduce_command, write_atomic

__all__ = ["write_report", "draw_plot", "results_json", "fmt", "fmt_interval", "link_papers", "PAPERS"]

_COLORS = {"holds": "#1b7f3b", "partly holds": "#b07d00", "does not hold": "#b3261e", "inconclusive": "#5a5a9a",
           "not run": "#666666"}

# Citations that anchors use, and their arXiv ids (so that the report links each to its paper).
PAPERS = {
    "Ioffe & Szegedy 2015": "1502.03167", "Ioffe 2017": "1702.03275", "Wu & He 2018": "1803.08494",
    "Hoffer et al. 2017": "1705.08741", "Santurkar et al. 2018": "1805.11604", "Rota Bulo et al. 2018": "1712.02616",
    "Cooijmans et al. 2016": "1603.09025", "Li et al. 2016": "1603.04779", "Wu & Johnson 2021": "2105.07576",
    "Yang et al. 2019": "1902.08129", "van Laarhoven 2017": "1706.05350", "Summers & Dinneen 2019": "1906.03548",
    "De & Smith 2020": "2002.10444", "Frankle et al. 2021": "2003.00152", "Greydanus & Kobak": "2011.14439",
    "Ba et al. 2016": "1607.06450", "Ulyanov et al. 2016": "1607.08022", "Li et al. 2019": "1801.05134",
}

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.verdict { font-weight: bold; white-space: nowrap; }
.effect-name { color: #555; font-size: 0.85em; }
.plots img { max-width: 540px; margin: 0.3em; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
code { font-size: 0.85em; white-space: nowrap; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
"""


# --------------------------------------------------------------------------------------------- formatting
def fmt(value, digits: int = 3) -> str:
    """A number for people: '0.912', '12.4', '583', 'n/a' for NaN/None, '+inf' as 'not reached'.

    Example:
        >>> fmt(583.3333333333334), fmt(0.91234), fmt(float("nan")), fmt(4.06)
        ('583', '0.912', 'n/a', '4.06')
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "not reached" if value > 0 else "-inf"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):d}"
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size == 0:
        return "0"
    if size >= 0.01:
        return f"{value:.3f}"
    return f"{value:.{digits}g}"


def _as_dict(obj) -> dict | None:
    if obj is None:
        return None
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return dict(obj)


def fmt_interval(estimate: float, lo: float, hi: float) -> str:
    """An estimate and its interval with one number of decimals for all three, set by the largest of them.

    Example:
        >>> fmt_interval(-0.101, -1.13, 0.925), fmt_interval(87.04, 86.2, 87.8)
        ('-0.10 [-1.13, 0.93]', '87.0 [86.2, 87.8]')
    """
    values = [v for v in (estimate, lo, hi) if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(values) < 3:
        return f"{fmt(estimate)} [{fmt(lo)}, {fmt(hi)}]"
    size = max(abs(v) for v in values)
    decimals = 0 if size >= 100 else 1 if size >= 10 else 2 if size >= 0.1 else 3
    return f"{estimate:.{decimals}f} [{lo:.{decimals}f}, {hi:.{decimals}f}]"


def _effect_cells(effect: dict | None) -> tuple[str, str]:
    """(estimate [lo, hi], threshold with its direction) as HTML."""
    if not effect:
        return "&ndash;", "&ndash;"
    lo, hi = effect["ci95"]
    cell = (f"{fmt_interval(effect['estimate'], lo, hi)}"
            f"<br><span class='effect-name'>{html.escape(effect['name'])}</span>")
    direction = effect.get("direction", "above")
    if direction == "within":
        return cell, f"within &plusmn;{effect['threshold']:g}"
    sign = "&lt;" if direction == "below" else "&gt;"
    return cell, f"{sign} {effect['threshold']:g}"


def _seeds_cell(seeds) -> str:
    seeds = list(seeds or [])
    if not seeds:
        return "&ndash;"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{len(seeds)} ({seeds[0]}&ndash;{seeds[-1]})" if len(seeds) > 1 else f"1 ({seeds[0]})"
    return f"{len(seeds)}"


def link_papers(text: str) -> str:
    """HTML-escape `text` and link arXiv ids ('arXiv 1502.03167') and known citations to arxiv.org."""
    escaped = html.escape(text)
    linked = set()

    def arxiv(match: re.Match) -> str:
        linked.add(match.group(2))
        return f'<a href="https://arxiv.org/abs/{match.group(2)}">{match.group(0)}</a>'

    escaped = re.sub(r"(arXiv[: ]*)(\d{4}\.\d{4,5})", arxiv, escaped)
    for citation, arxiv_id in PAPERS.items():
        key = html.escape(citation)
        if arxiv_id in linked or key not in escaped:
            continue
        escaped = escaped.replace(key, f'<a href="https://arxiv.org/abs/{arxiv_id}">{key}</a>', 1)
        linked.add(arxiv_id)
    return escaped


# ---------------------------------------------------------------------------------------------------- plots
def _attainable(plot: Plot) -> tuple[float, float]:
    """The range the plotted quantity can take: 0-100 for an accuracy in percent, else unbounded."""
    label = plot.ylabel.lower()
    return (0.0, 100.0) if "accuracy" in label and "%" in label else (-math.inf, math.inf)


def _band(plot: Plot, line: dict) -> tuple[list, list]:
    """(low, high) of the 95% band of each mean, clipped to the attainable range (an accuracy's t interval can
    pass 100% when one seed diverged)."""
    floor, ceiling = _attainable(plot)
    errors = line.get("err") or [0.0] * len(line["y"])
    low, high = [], []
    for y, e in zip(line["y"], errors):
        e = e if isinstance(e, (int, float)) and math.isfinite(e) else 0.0
        low.append(max(y - e, floor) if isinstance(y, (int, float)) else y)
        high.append(min(y + e, ceiling) if isinstance(y, (int, float)) else y)
    return low, high


def _value_range(plot: Plot) -> tuple[float, float] | None:
    values = []
    for line in plot.lines.values():
        for y, lo, hi in zip(line["y"], *_band(plot, line)):
            if isinstance(y, (int, float)) and math.isfinite(y):
                values += [lo, hi]
        for seed_values in line.get("points") or []:
            values += [v for v in seed_values or [] if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    low, high = min(values), max(values)
    pad = 0.08 * (high - low) if high > low else max(abs(high) * 0.05, 0.01)
    low, high = low - pad, high + pad
    if plot.logy:
        positive = [v for v in values if v > 0]
        if not positive:
            return None
        return min(positive) / 1.3, max(positive) * 1.3
    return low, high


def draw_plot(plot: Plot, path: str) -> None:
    """Draw one Plot to a PNG file (matplotlib, Agg backend).

    Lines: the mean with a band (err) and the per-seed values (`points`) as dots. Bars (categories): the mean as
    a marker with its error bar and the per-seed values as dots, so that the axis can zoom to the differences
    instead of starting at zero. The y range covers every mean, band and seed value with a small margin.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(5.8, 3.7), dpi=90)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(plot.lines)
    if plot.kind == "bar":
        categories = list(dict.fromkeys(str(x) for line in plot.lines.values() for x in line["x"]))
        width = 0.7 / max(len(labels), 1)
        for i, label in enumerate(labels):
            line, color = plot.lines[label], colors[i % len(colors)]
            offset = (i - (len(labels) - 1) / 2) * width
            xs = [categories.index(str(x)) + offset for x in line["x"]]
            low, high = _band(plot, line)
            yerr = [[y - lo for y, lo in zip(line["y"], low)], [hi - y for y, hi in zip(line["y"], high)]]
            ax.errorbar(xs, line["y"], yerr=yerr if line.get("err") else None, fmt="D", color=color, markersize=6,
                        capsize=3, label=label, zorder=3)
            for x, seed_values in zip(xs, line.get("points") or []):
                seed_values = list(seed_values or [])
                jitter = [x + width * 0.3 * ((k / max(len(seed_values) - 1, 1)) - 0.5) for k in range(len(seed_values))]
                ax.plot(jitter, seed_values, "o", color=color, alpha=0.45, markersize=3.5, zorder=2)
        rotate = sum(len(c) for c in categories) > 48
        ax.set_xticks(range(len(categories)), categories, rotation=25 if rotate else 0,
                      ha="right" if rotate else "center", fontsize=8)
        ax.set_xlim(-0.6, len(categories) - 0.4)
    else:
        for i, label in enumerate(labels):
            line, color = plot.lines[label], colors[i % len(colors)]
            ax.plot(line["x"], line["y"], line.get("style", "-"), color=color, label=label, linewidth=1.5)
            if line.get("err"):
                low, high = _band(plot, line)
                ax.fill_between(line["x"], low, high, color=color, alpha=0.18, linewidth=0)
            points = list(zip(line["x"], line.get("points") or []))
            for x, seed_values in points[::max(1, math.ceil(len(points) / 40))]:  # at most ~40 columns of dots
                seed_values = list(seed_values or [])
                ax.plot([x] * len(seed_values), seed_values, "o", color=color, alpha=0.4, markersize=2.5)
        if plot.logx:
            ax.set_xscale("log")
            ticks = sorted({x for line in plot.lines.values() for x in line["x"] if x > 0})
            if len(ticks) <= 8:  # label the measured x values themselves (e.g. batch sizes 2, 8, 32)
                ax.set_xticks(ticks, [fmt(t) for t in ticks], fontsize=8)
                ax.minorticks_off()
            else:  # many x values: decades, written as plain numbers
                from matplotlib.ticker import FuncFormatter

                ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: fmt(value)))
    if plot.logy:
        ax.set_yscale("log")
    value_range = _value_range(plot)
    if value_range is not None:
        ax.set_ylim(*value_range)
    ax.set_title(plot.title, fontsize=10)
    ax.set_xlabel(plot.xlabel, fontsize=9)
    ax.set_ylabel(plot.ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if len(labels) > 1:
        ax.legend(fontsize=7, framealpha=0.8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------------ the page
def _table(columns: list[str], rows: list[list[str]], raw_columns: tuple[int, ...] = (),
           numeric_columns: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f"<td{' class=num' if i in numeric_columns else ''}>{cell if i in raw_columns else html.escape(str(cell))}</td>"
        for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict(v: str) -> str:
    return f'<span class="verdict" style="color:{_COLORS.get(v, "#222")}">{html.escape(v)}</span>'


def _finding_json(f) -> dict:
    data = {"claim": f.claim, "verdict": f.verdict, "criterion": f.criterion, "anchor": f.anchor,
            "evidence": f.evidence, "effect": _as_dict(getattr(f, "effect", None)),
            "seeds": list(getattr(f, "seeds", None) or [])}
    weaker = _as_dict(getattr(f, "weaker", None))
    if weaker:
        data["weaker"] = weaker
    return data


def results_json(results: list[Result]) -> dict:
    """The report's numbers for programs:
    {"experiments": [{"id", "title", "seconds", "config", "reproduce", "findings": [{"claim", "verdict",
    "criterion", "anchor", "evidence", "effect": {"name", "estimate", "ci95": [lo, hi], "threshold",
    "direction"}, "seeds"}], "arms": [{"name", "lr_grid", "lr_chosen", "val_accuracy", "test_accuracy"}],
    "numbers"}], "versions": {...}}."""

    experiments = []
    for r in results:
        experiments.append({"id": r.experiment, "title": r.title, "seconds": r.seconds,
                            "cpu_seconds": getattr(r, "cpu_seconds", 0.0), "config": r.config,
                            "reproduce": reproduce_command(r.experiment, r.config),
                            "findings": [_finding_json(f) for f in r.findings],
                            "arms": [dict(arm, grid_edge=grid_edge(arm)) for arm in getattr(r, "arms", None) or []],
                            "numbers": r.numbers,
                            "versions": r.versions})
    latest = next((r.versions for r in reversed(results) if r.versions), {})
    return {"experiments": experiments, "versions": latest}


def _finite(value):
    """The same JSON value with NaN and infinities replaced by null (results.json stays strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _edge_warning(results: list[Result]) -> list[str]:
    """A paragraph naming the tuned arms that chose the lowest or highest rate of their grid (none: nothing)."""
    edges = [f"{r.experiment} {arm.get('name')} ({grid_edge(arm)}, {fmt(arm.get('lr_chosen'))})"
             for r in results for arm in getattr(r, "arms", None) or [] if grid_edge(arm)]
    if not edges:
        return []
    return [f"<p><b>Grid edges:</b> {len(edges)} tuned arm(s) chose the lowest or highest learning rate of their "
            f"grid, so their best rate may lie outside it: " + html.escape("; ".join(edges)) + ".</p>"]


def _arms_table(arms: list[dict]) -> str:
    rows = []
    for arm in arms:
        grid = arm.get("lr_grid") or []
        val = arm.get("val_accuracy") or []
        if isinstance(val, dict):
            val = [val.get(str(lr), val.get(lr)) for lr in grid]
        scores = ", ".join(f"{fmt(lr)}: {fmt(v)}" for lr, v in zip(grid, val)) if len(val) == len(grid) else \
            ", ".join(fmt(lr) for lr in grid)
        tests = [t for t in arm.get("test_accuracy") or [] if isinstance(t, (int, float))]
        finite = [t for t in tests if math.isfinite(t)]
        mean = f"{fmt(sum(finite) / len(finite))}" if finite else "n/a"
        if arm.get("score"):
            scores += f" (score: {arm['score']})"
        rows.append([html.escape(str(arm.get("name", ""))), html.escape(scores),
                     f"<b>{html.escape(fmt(arm.get('lr_chosen')))}</b>"
                     + (f" <span class='effect-name'>({grid_edge(arm)} of the grid)</span>" if grid_edge(arm) else ""),
                     f"{mean} <span class='effect-name'>({html.escape(', '.join(fmt(t) for t in tests))})</span>"])
    return _table(["arm", "validation score per learning rate", "chosen rate", "test accuracy: mean (per seed)"],
                  rows, raw_columns=(0, 1, 2, 3))


def write_report(results: list[Result], out: str) -> str:
    """Write out/index.html, out/results.json and out/img/*.png; returns the page's path."""

    os.makedirs(os.path.join(out, "img"), exist_ok=True)
    summary = []
    for r in results:
        command = reproduce_command(r.experiment, r.config)
        for i, f in enumerate(r.findings):
            effect, threshold = _effect_cells(_as_dict(getattr(f, "effect", None)))
            summary.append([f'<a href="#{r.experiment}">{r.experiment}</a>', html.escape(f.claim), _verdict(f.verdict),
                            effect, threshold, _seeds_cell(getattr(f, "seeds", None)),
                            f"<code>{html.escape(command)}</code>" if i == 0 else ""])
    total = sum(r.seconds for r in results if math.isfinite(r.seconds))
    cpu = sum(getattr(r, "cpu_seconds", 0.0) or 0.0 for r in results)
    counts = {}
    for r in results:
        for f in r.findings:
            counts[f.verdict] = counts.get(f.verdict, 0) + 1
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>batchnorm lab</title>"
             f"<style>{_STYLE}</style></head><body>",
             "<h1>The batch-norm lab</h1>",
             "<p>Each claim commonly made about batch normalization, tested against its published anchor. Every arm "
             "of a comparison gets its own learning rate, chosen on a validation split; the test set is read once per "
             "run. Each finding states an effect with a 95% confidence interval over seeds (Student t) and a "
             "threshold taken from the claim: <b>holds</b> when the whole interval lies beyond the threshold in the "
             "claimed direction, <b>does not hold</b> when it lies entirely short of it, <b>inconclusive</b> when it "
             "straddles it; a claim of equivalence (&ldquo;the same&rdquo;: |effect| &lt; t) holds when the whole "
             "interval lies inside (&minus;t, t) and does not hold when it lies entirely outside it; <b>partly "
             "holds</b> when only a stated weaker criterion holds. Accuracy intervals are clipped to the attainable "
             "range 0&ndash;100%. Verdicts are computed by "
             "the code, never written by hand. The models are small, so an effect's direction and rough size are "
             "tested, not ImageNet numbers. In the plots, dots are single seeds and bars or bands the 95% interval of "
             "the mean.</p>",
             f"<p>Experiments: {len(results)}, findings: " + html.escape(", ".join(
                 f"{n} {v}" for v, n in counts.items()) or "none") + f"; wall-clock time {fmt(total)} s, CPU time {fmt(cpu)} s "
             "(this process and its workers). "
             "All numbers as JSON: <a href='results.json'>results.json</a>.</p>",
             *_edge_warning(results),
             "<h2>Summary</h2>",
             _table(["exp.", "claim", "verdict", "effect [95% CI]", "threshold", "seeds", "reproduce"], summary,
                    raw_columns=(0, 1, 2, 3, 4, 5, 6), numeric_columns=(4, 5))]
    for r in results:
        parts.append(f'<section id="{r.experiment}"><h2>{r.experiment}: {html.escape(r.title)}</h2>'
                     f"<p>Reproduce: <code>{html.escape(reproduce_command(r.experiment, r.config))}</code></p>")
        for f in r.findings:
            effect = _as_dict(getattr(f, "effect", None))
            effect_line = ""
            if effect:
                cell, threshold = _effect_cells(effect)
                effect_line = (f"<br><b>Effect:</b> {html.escape(effect['name'])} = {cell.split('<br>')[0]}, "
                               f"threshold {threshold}, seeds {_seeds_cell(getattr(f, 'seeds', None))}")
            parts.append(f"<p><b>Claim:</b> {html.escape(f.claim)} &mdash; {_verdict(f.verdict)}<br>"
                         f"<b>Anchor:</b> {link_papers(f.anchor)}<br><b>Criterion:</b> {html.escape(f.criterion)}"
                         f"{effect_line}<br><b>Numbers:</b> {html.escape(f.evidence)}</p>")
        arms = list(getattr(r, "arms", None) or [])
        if arms:
            parts.append("<h4>Arms: learning rates tuned on validation</h4>" + _arms_table(arms))
        if r.plots:
            parts.append('<div class="plots">')
            for i, plot in enumerate(r.plots):
                name = f"{r.experiment}_{i}.png"
                draw_plot(plot, os.path.join(out, "img", name))
                parts.append(f'<img src="img/{name}" alt="{html.escape(plot.title)}">')
            parts.append("</div>")
        for t in r.tables:
            parts.append(f"<h4>{html.escape(t.title)}</h4>" + _table(t.columns, t.rows))
        for note in r.notes:
            parts.append(f"<p><i>{link_papers(note)}</i></p>")
        parts.append(f"<details><summary>Config, software, time ({fmt(r.seconds)} s)</summary><pre>"
                     f"{html.escape(json.dumps(r.config, indent=1, default=str))}\n"
                     f"{html.escape(json.dumps(r.versions, indent=1, default=str))}</pre></details></section>")
    parts.append("</body></html>")
    write_atomic(os.path.join(out, "results.json"), json.dumps(_finite(results_json(results)), indent=1, default=str))
    path = os.path.join(out, "index.html")
    write_atomic(path, "\n".join(parts))
    return path
