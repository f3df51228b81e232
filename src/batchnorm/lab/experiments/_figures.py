"""Plots of per-seed numbers for the experiments: the mean, its 95% interval and every seed's value as a point."""

from __future__ import annotations

import math

import numpy as np

from ..protocol import Plot

__all__ = ["points_plot", "curves_plot", "half_width"]


def half_width(values) -> float:
    """Half-width of the 95% Student-t interval of the mean of `values` (0 for a single value)."""
    from scipy import stats

    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    if array.size < 2:
        return 0.0
    return float(stats.t.ppf(0.975, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size))


def points_plot(title: str, ylabel: str, groups: dict[str, dict[str, list[float]]], scale: float = 1.0,
                xlabel: str = "") -> Plot:
    """Categories with per-seed points. groups: {series: {category: [per-seed values]}}; values times `scale`."""
    lines = {}
    for series, categories in groups.items():
        values = {c: [scale * float(v) for v in vs] for c, vs in categories.items()}
        lines[series] = {"x": [str(c) for c in values], "y": [float(np.mean(v)) for v in values.values()],
                         "err": [half_width(v) for v in values.values()], "points": list(values.values())}
    return Plot(title, xlabel, ylabel, lines, kind="bar")


def curves_plot(title: str, xlabel: str, ylabel: str, x: list, curves: dict[str, list[list[float]]],
                scale: float = 1.0, **options) -> Plot:
    """Per-seed curves: mean, 95% band and points. curves: {label: [[y per x] per seed]}; y times `scale`."""
    lines = {}
    for label, runs in curves.items():
        array = scale * np.array(runs, dtype=float)  # (seeds, len(x))
        lines[label] = {"x": list(x), "y": array.mean(0).tolist(),
                        "err": [half_width(array[:, i]) for i in range(array.shape[1])],
                        "points": array.T.tolist()}
    return Plot(title, xlabel, ylabel, lines, **options)
