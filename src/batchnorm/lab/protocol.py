"""The experiment protocol: what `run(cfg)` returns (a `Result` of findings, tables and plots, all plain JSON),
mean +- std over seeds, and verdicts computed from numbers against a stated criterion.

A finding is one claim tested: the claim as texts state it, the published anchor, the criterion (a sentence
that names the numbers and thresholds), the verdict (one of `VERDICTS`, computed by code from the numbers)
and the evidence (the numbers, mean +- std over seeds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["VERDICTS", "Finding", "Plot", "Table", "Result", "Stat", "stat", "verdict", "not_run"]

# Holds: the criterion is met. Partly holds: only its weaker part is met. Does not hold: the opposite or no
# effect. Not run: a layer or tool the experiment needs is missing (said, not faked).
VERDICTS = ("holds", "partly holds", "does not hold", "not run")


@dataclass
class Stat:
    """Mean and standard deviation over seeds (ddof=0), and the per-seed values."""

    mean: float
    std: float
    values: list[float]

    def __str__(self) -> str:
        return self.format()

    def format(self, digits: int = 3, percent: bool = False) -> str:
        if percent:
            return f"{100 * self.mean:.1f} +- {100 * self.std:.1f}%"
        return f"{self.mean:.{digits}g} +- {self.std:.{digits - 1}g}" if abs(self.mean) >= 1e3 or (
            0 < abs(self.mean) < 1e-2) else f"{self.mean:.{digits}f} +- {self.std:.{digits}f}"


def stat(values) -> Stat:
    """Mean +- std (population std) of a list of per-seed numbers; non-finite values give NaN mean.

    Example:
        >>> str(stat([0.9, 0.92]))
        '0.910 +- 0.010'
    """
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        raise ValueError("stat needs at least one value (one per seed), got none")
    with np.errstate(invalid="ignore"):  # inf values (e.g. 'never reached') give an inf mean and a NaN std
        return Stat(float(array.mean()), float(array.std()), [float(v) for v in array])


def verdict(strong: bool, weak: bool | None = None) -> str:
    """'holds' if the criterion's strong part is met; 'partly holds' if only its weak part; else 'does not hold'."""
    if strong:
        return "holds"
    if weak:
        return "partly holds"
    return "does not hold"


@dataclass
class Finding:
    """One claim tested. `verdict` must be computed from the numbers in `evidence` (see `verdict`)."""

    claim: str  # the claim as texts about batch norm state it
    anchor: str  # the published result it mirrors (LITERATURE.md)
    criterion: str  # the test: which numbers, which thresholds
    verdict: str  # one of VERDICTS
    evidence: str  # the numbers, mean +- std over seeds

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")


@dataclass
class Plot:
    """A line or bar chart drawn by the report from plain numbers.

    lines: label -> {"x": [...], "y": [...], "err": [...] (optional, std over seeds)}. kind: 'line' or 'bar'
    (bars: x are category names). logx/logy: log axes.
    """

    title: str
    xlabel: str
    ylabel: str
    lines: dict[str, dict[str, list]]
    kind: str = "line"
    logx: bool = False
    logy: bool = False


@dataclass
class Table:
    """A table for the report: column names and rows of strings."""

    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Result:
    """What an experiment's `run(cfg)` returns; plain data so that it is cached as JSON."""

    experiment: str  # "E1"
    title: str  # one line
    findings: list[Finding]
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # setup, caveats, what is missing
    config: dict = field(default_factory=dict)  # filled by the runner
    seconds: float = 0.0  # filled by the runner
    versions: dict = field(default_factory=dict)  # filled by the runner
    numbers: dict = field(default_factory=dict)  # the key numbers behind the verdicts, for tests and tools

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Result":
        data = dict(data)
        data["findings"] = [Finding(**f) for f in data["findings"]]
        data["tables"] = [Table(**t) for t in data.get("tables", [])]
        data["plots"] = [Plot(**p) for p in data.get("plots", [])]
        return cls(**data)


def not_run(experiment: str, title: str, claims: list[tuple[str, str, str]], reason: str) -> Result:
    """A Result for an experiment that could not run because a layer or tool is missing.

    claims: (claim, anchor, criterion) of every finding it would have made.
    """
    return Result(experiment, title,
                  [Finding(c, a, k, "not run", f"not run: {reason}") for c, a, k in claims],
                  notes=[f"Not run: {reason}. It runs as soon as that lands (re-run `batchnorm lab {experiment}`)."])
