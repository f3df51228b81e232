"""Helpers shared by the experiments: per-setting statistics over seeds, plots of them, steps to a target."""

from __future__ import annotations

import math

import numpy as np

from ..protocol import Plot, Stat, Table, stat

__all__ = ["stats", "bar_plot", "curve_plot", "steps_to", "pct", "table"]


def stats(values: dict) -> dict[str, Stat]:
    """{setting: [per-seed numbers]} -> {setting: Stat}."""
    return {k: stat(v) for k, v in values.items()}


def pct(s: Stat) -> str:
    """A Stat of accuracies as 'mean +- std%'."""
    return s.format(percent=True)


def bar_plot(title: str, ylabel: str, groups: dict[str, dict[str, Stat]], xlabel: str = "") -> Plot:
    """Bars: one series per group label, one bar per category. groups: {series: {category: Stat}}."""
    return Plot(title, xlabel, ylabel, {series: {"x": [str(c) for c in values], "y": [v.mean for v in values.values()],
                                                 "err": [v.std for v in values.values()]}
                                        for series, values in groups.items()}, kind="bar")


def curve_plot(title: str, xlabel: str, ylabel: str, x: list, curves: dict[str, list[list[float]]], **kw) -> Plot:
    """Mean +- std over seeds of per-seed curves. curves: {label: [[y per x] per seed]}."""
    lines = {}
    for label, runs in curves.items():
        array = np.array(runs, dtype=float)
        lines[label] = {"x": list(x), "y": array.mean(0).tolist(), "err": array.std(0).tolist()}
    return Plot(title, xlabel, ylabel, lines, **kw)


def steps_to(steps: list[int], accuracy: list[float], target: float) -> float:
    """The first step at which accuracy >= target (inf if never)."""
    for s, a in zip(steps, accuracy):
        if a >= target:
            return float(s)
    return math.inf


def table(title: str, header: list[str], rows: dict[str, list[str]]) -> Table:
    """A Table from {row label: [cells]}."""
    return Table(title, header, [[label, *cells] for label, cells in rows.items()])
