"""The lab's report: DIR/index.html with a summary table of claims, verdicts and numbers, then one section per
experiment with its plots (PNG, drawn with matplotlib from the result's numbers), tables, anchor, config and
the software versions.
"""

from __future__ import annotations

import html
import json
import os

from .protocol import Plot, Result

__all__ = ["write_report", "draw_plot"]

_COLORS = {"holds": "#1b7f3b", "partly holds": "#b07d00", "does not hold": "#b3261e", "not run": "#666666"}

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; text-align: left; }
th { background: #f2f2f2; }
.verdict { font-weight: bold; white-space: nowrap; }
.plots img { max-width: 520px; margin: 0.3em; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
"""


def draw_plot(plot: Plot, path: str) -> None:
    """Draw one Plot to a PNG file (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=90)
    if plot.kind == "bar":
        labels = list(plot.lines)
        categories = list(dict.fromkeys(x for line in plot.lines.values() for x in line["x"]))
        width = 0.8 / max(len(labels), 1)
        for i, label in enumerate(labels):
            line = plot.lines[label]
            positions = [categories.index(x) + (i - (len(labels) - 1) / 2) * width for x in line["x"]]
            ax.bar(positions, line["y"], width, yerr=line.get("err"), label=label, capsize=2)
        ax.set_xticks(range(len(categories)), [str(c) for c in categories])
    else:
        for label, line in plot.lines.items():
            style = line.get("style", "-")
            ax.plot(line["x"], line["y"], style, label=label, linewidth=1.4)
            if line.get("err"):
                low = [y - e for y, e in zip(line["y"], line["err"])]
                high = [y + e for y, e in zip(line["y"], line["err"])]
                ax.fill_between(line["x"], low, high, alpha=0.2)
    if plot.logx:
        ax.set_xscale("log")
        if plot.kind != "bar":  # label the measured x values themselves (e.g. batch sizes 2, 8, 32)
            ticks = sorted({x for line in plot.lines.values() for x in line["x"]})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
    if plot.logy:
        ax.set_yscale("log")
    ax.set_title(plot.title, fontsize=10)
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    ax.grid(alpha=0.3)
    if len(plot.lines) > 1 or plot.kind == "bar":
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(columns: list[str], rows: list[list[str]], raw_columns: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell if i in raw_columns else html.escape(str(cell))}</td>"
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict(v: str) -> str:
    return f'<span class="verdict" style="color:{_COLORS.get(v, "#222")}">{html.escape(v)}</span>'


def write_report(results: list[Result], out: str) -> str:
    """Write out/index.html (and out/img/*.png); returns the page's path."""
    from .runner import write_atomic

    os.makedirs(os.path.join(out, "img"), exist_ok=True)
    summary = []
    for r in results:
        for f in r.findings:
            summary.append([f'<a href="#{r.experiment}">{r.experiment}</a>', f.claim, _verdict(f.verdict), f.evidence])
    total = sum(r.seconds for r in results if r.seconds == r.seconds)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>batchnorm lab</title>"
             f"<style>{_STYLE}</style></head><body>",
             "<h1>The batch-norm lab</h1>",
             "<p>Each claim commonly made about batch normalization, tested at laptop scale against its published "
             "anchor. Verdicts are computed by the code from the numbers (mean &plusmn; std over seeds) against the "
             "stated criterion. Laptop scale tests the direction and rough size of an effect, not ImageNet "
             f"numbers. Experiments: {len(results)}, compute time {total:.0f} s.</p>",
             "<h2>Summary</h2>",
             _table(["exp.", "claim", "verdict", "numbers"], summary, raw_columns=(0, 2))]
    for r in results:
        parts.append(f'<section id="{r.experiment}"><h2>{r.experiment}: {html.escape(r.title)}</h2>')
        for f in r.findings:
            parts.append(f"<p><b>Claim:</b> {html.escape(f.claim)} &mdash; {_verdict(f.verdict)}<br>"
                         f"<b>Anchor:</b> {html.escape(f.anchor)}<br><b>Criterion:</b> {html.escape(f.criterion)}"
                         f"<br><b>Numbers:</b> {html.escape(f.evidence)}</p>")
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
            parts.append(f"<p><i>{html.escape(note)}</i></p>")
        parts.append(f"<details><summary>Config, software, time ({r.seconds:.1f} s)</summary><pre>"
                     f"{html.escape(json.dumps(r.config, indent=1, default=str))}\n"
                     f"{html.escape(json.dumps(r.versions, indent=1, default=str))}</pre></details></section>")
    parts.append("</body></html>")
    path = os.path.join(out, "index.html")
    write_atomic(path, "\n".join(parts))
    return path
