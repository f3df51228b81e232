"""The experiment protocol: fair tuning, effects with 95% intervals over seeds, verdicts decided by those
intervals, and what `run(cfg)` returns (a `Result` of findings, arms, tables and plots, all plain JSON).

A finding is one claim tested: the claim as texts state it, the published anchor, the criterion (a sentence
that names the effect and its threshold), the effect (estimate, 95% interval, threshold, direction), the seeds
and the evidence (the numbers, formatted). Its verdict is computed from the effect by `judge`, never written by
hand:

- holds: the whole interval lies beyond the threshold in the claimed direction;
- does not hold: the whole interval lies short of the threshold (or on the opposite side);
- inconclusive: the interval straddles the threshold;
- for a claim of equivalence ("the same", "matches": |effect| < t, direction 'within'): holds when the whole
  interval lies inside (-t, t), does not hold when it lies entirely outside it (all above t or all below -t),
  inconclusive otherwise (a two-sided equivalence test in the spirit of TOST, with 95% intervals);
- partly holds: the main effect does not hold or is inconclusive, but a stated weaker effect holds;
- not run: the finding could not be measured (the evidence says why).

Every arm of a comparison gets its own learning rate (`tune_and_run`): chosen from a grid of at least 4 values
spanning at least 30x by validation accuracy on the first seeds, then every seed runs at it; the test set is
read once per run, for the reported number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["VERDICTS", "LR_GRID", "DIRECTIONS", "Effect", "Finding", "Arm", "Plot", "Table", "Result", "seeds",
           "mean_ci", "accuracy_ci", "diff_ci", "ratio_ci", "judge", "fmt_ci", "tune_and_run", "check_grid",
           "grid_edge"]

VERDICTS = ("holds", "partly holds", "inconclusive", "does not hold", "not run")
# What a claim says about its effect: exceeds the threshold, stays under it, or stays within +-threshold.
DIRECTIONS = ("above", "below", "within")

# The default learning-rate grid (SGD with momentum 0.9 on the lab's small models): 5 values spanning 100x.
LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)


def seeds(cfg) -> list[int]:
    """The seeds of a run: `cfg.seed_base`, ..., `cfg.seed_base + cfg.seeds - 1`.

    Example:
        >>> from types import SimpleNamespace
        >>> seeds(SimpleNamespace(seeds=3, seed_base=100))
        [100, 101, 102]
    """
    count, base = int(cfg.seeds), int(getattr(cfg, "seed_base", 0))
    if count < 1:
        raise ValueError(f"seeds must be >= 1, got {count}")
    return list(range(base, base + count))


def _values(values, name: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty list of per-seed numbers, got {list(values)!r}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite (one number per seed), got {array.tolist()}: treat runs that "
                         f"never reach a target or diverge explicitly before computing an interval")
    return array


def _t_interval(sample: np.ndarray) -> tuple[float, tuple[float, float]]:
    """Mean and 95% Student-t interval of one sample (a single value gives an infinitely wide interval)."""
    from scipy import stats

    mean = float(sample.mean())
    if sample.size < 2:
        return mean, (-math.inf, math.inf)
    half = float(stats.t.ppf(0.975, sample.size - 1) * sample.std(ddof=1) / math.sqrt(sample.size))
    return mean, (mean - half, mean + half)


def mean_ci(values, scale: float = 1.0, bounds: tuple[float, float] | None = None
            ) -> tuple[float, tuple[float, float]]:
    """Mean over seeds and its 95% Student-t interval, times `scale` (100 turns fractions into points).

    Args:
        values: one number per seed. scale: multiplies values (default 1).
        bounds: (low, high), the range the quantity can attain (after scaling); the interval is clipped to it
            (default None: not clipped). A t interval is symmetric, so a mean accuracy near 100% with one
            diverged seed would otherwise reach past 100%.

    Example:
        >>> estimate, (lo, hi) = mean_ci([0.90, 0.92, 0.91], scale=100)
        >>> round(estimate, 1), round(lo, 1), round(hi, 1)
        (91.0, 88.5, 93.5)
        >>> mean_ci([1.0, 1.0, 0.1], scale=100, bounds=(0, 100))[1][1]
        100.0
    """
    estimate, (lo, hi) = _t_interval(_values(values, "values") * scale)
    if bounds is not None:
        low, high = (float(b) for b in bounds)
        if not low < high:
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
        lo, hi = min(max(lo, low), high), max(min(hi, high), low)
    return estimate, (lo, hi)


def accuracy_ci(values) -> tuple[float, tuple[float, float]]:
    """Mean accuracy in percent over seeds (values are fractions in [0, 1]) and its 95% Student-t interval,
    clipped to the attainable range [0, 100] (see `mean_ci`); for display: verdicts are decided on differences.

    Example:
        >>> estimate, (lo, hi) = accuracy_ci([0.99, 0.98, 0.30])
        >>> round(estimate, 1), round(lo, 1), hi
        (75.7, 0.0, 100.0)
    """
    return mean_ci(values, scale=100, bounds=(0.0, 100.0))


def diff_ci(a, b, paired: bool = True, scale: float = 1.0) -> tuple[float, tuple[float, float]]:
    """Mean of a - b and its 95% interval, times `scale`.

    Paired (a[i] and b[i] share seed i): a Student-t interval of the per-seed differences. Unpaired: Welch's
    interval (unequal variances, Welch-Satterthwaite degrees of freedom).

    Example:
        >>> estimate, (lo, hi) = diff_ci([0.95, 0.96, 0.97], [0.90, 0.92, 0.91], scale=100)
        >>> round(estimate, 1), lo > 0
        (5.0, True)
    """
    from scipy import stats

    a, b = _values(a, "a") * scale, _values(b, "b") * scale
    if paired:
        if a.size != b.size:
            raise ValueError(f"paired differences need as many values in a as in b, got {a.size} and {b.size}")
        return _t_interval(a - b)
    estimate = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return estimate, (-math.inf, math.inf)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return estimate, (estimate, estimate)
    dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(stats.t.ppf(0.975, dof) * se)
    return estimate, (estimate - half, estimate + half)


def ratio_ci(a, b, paired: bool = True) -> tuple[float, tuple[float, float]]:
    """Geometric-mean ratio a / b and its 95% interval (a t interval of the log ratios, exponentiated).

    Example:
        >>> estimate, (lo, hi) = ratio_ci([200, 220, 180], [50, 60, 45])
        >>> round(estimate, 2), lo > 1
        (3.89, True)
    """
    a, b = _values(a, "a"), _values(b, "b")
    if (a <= 0).any() or (b <= 0).any():
        raise ValueError(f"ratio_ci needs positive values, got a={a.tolist()}, b={b.tolist()}")
    estimate, (lo, hi) = diff_ci(np.log(a), np.log(b), paired=paired)
    return math.exp(estimate), (math.exp(lo) if lo > -math.inf else 0.0, math.exp(hi) if hi < math.inf else math.inf)


@dataclass
class Effect:
    """An effect measured over seeds and the threshold the claim sets for it.

    direction 'above': the claim says the effect exceeds `threshold`; 'below': that it stays under it; 'within':
    that it stays within +-threshold (|effect| < threshold, a claim of equivalence: "the same", "matches").
    """

    name: str  # what is measured, with its unit: "BN - no BN, test accuracy (points)"
    estimate: float
    ci95: tuple[float, float]  # 95% interval
    threshold: float
    direction: str = "above"
    method: str = "Student t over seeds"  # how the interval was computed

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        lo, hi = (float(v) for v in self.ci95)
        if not (math.isfinite(self.estimate) and lo <= self.estimate <= hi):
            raise ValueError(f"Effect {self.name!r} needs a finite estimate inside its interval, got "
                             f"{self.estimate} in [{lo}, {hi}]")
        if self.direction == "within" and not float(self.threshold) > 0:
            raise ValueError(f"Effect {self.name!r}: an equivalence claim (direction 'within') needs a threshold > 0 "
                             f"(the margin t of |effect| < t), got {self.threshold}")
        self.estimate, self.ci95, self.threshold = float(self.estimate), [lo, hi], float(self.threshold)


def judge(effect: Effect) -> str:
    """The verdict an interval gives: 'holds', 'does not hold' or 'inconclusive' (see the module docstring).

    Example:
        >>> judge(Effect("difference (points)", 2.0, (0.5, 3.5), threshold=1.0))
        'inconclusive'
        >>> judge(Effect("difference (points)", 2.0, (1.5, 2.5), threshold=1.0))
        'holds'
        >>> judge(Effect("difference (points)", -0.2, (-0.6, 0.2), threshold=1.0, direction="within"))
        'holds'
    """
    lo, hi = effect.ci95
    if effect.direction == "within":
        t = effect.threshold
        if -t < lo and hi < t:
            return "holds"
        return "does not hold" if lo > t or hi < -t else "inconclusive"
    if effect.direction == "above":
        return "holds" if lo > effect.threshold else "does not hold" if hi < effect.threshold else "inconclusive"
    return "holds" if hi < effect.threshold else "does not hold" if lo > effect.threshold else "inconclusive"


def fmt_ci(estimate: float, ci95, unit: str = "", digits: int = 1) -> str:
    """'4.1 [2.9, 5.3] points': an estimate and its interval, formatted.

    Example:
        >>> fmt_ci(4.123, (2.94, 5.31), "points")
        '4.1 [2.9, 5.3] points'
    """
    def number(value: float) -> str:
        if not math.isfinite(value):
            return "-inf" if value < 0 else "inf"
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.3g}"

    lo, hi = ci95
    return f"{number(estimate)} [{number(lo)}, {number(hi)}]" + (f" {unit}" if unit else "")


@dataclass
class Finding:
    """One claim tested; its verdict is computed from `effect` (and `weaker`) by `judge`.

    Pass `verdict="not run"` (with the reason in `evidence` and no effect) only for a finding that could not be
    measured; any other verdict is computed, and passing one is an error.
    """

    claim: str  # the claim as texts about batch norm state it
    anchor: str  # the published result it mirrors, with its arXiv id
    criterion: str  # the test: which effect, which threshold and why; the weaker criterion if there is one
    evidence: str  # the numbers, formatted
    effect: Effect | None = None  # the deciding effect with its 95% interval
    seeds: list[int] = field(default_factory=list)  # the seeds the effect is computed over
    weaker: Effect | None = None  # a weaker claim; if it holds while the main one does not: 'partly holds'
    verdict: str = ""  # computed; only "not run" may be given

    def __post_init__(self):
        if isinstance(self.effect, dict):
            self.effect = Effect(**self.effect)
        if isinstance(self.weaker, dict):
            self.weaker = Effect(**self.weaker)
        if self.verdict == "not run":
            return
        if self.effect is None:
            raise ValueError(f"Finding {self.claim!r} needs an effect to compute its verdict (or verdict='not run')")
        computed = judge(self.effect)
        if computed != "holds" and self.weaker is not None and judge(self.weaker) == "holds":
            computed = "partly holds"
        if self.verdict and self.verdict != computed:
            raise ValueError(f"Finding {self.claim!r}: the verdict is computed from the effect ({computed!r}); "
                             f"it cannot be set to {self.verdict!r}")
        self.verdict = computed


def check_grid(grid, name: str = "grid") -> tuple[float, ...]:
    """A learning-rate grid of at least 4 positive values spanning at least 30x, sorted."""
    values = tuple(sorted(float(v) for v in grid))
    if len(values) < 4 or values[0] <= 0 or values[-1] / values[0] < 30:
        raise ValueError(f"{name} must hold at least 4 positive learning rates spanning at least 30x, got "
                         f"{list(values)}")
    return values


def grid_edge(arm: dict) -> str | None:
    """'lowest' or 'highest' when a tuned arm chose the smallest or largest rate of its grid (its best rate may
    lie outside the grid: a warning), else None.

    Example:
        >>> grid_edge({"lr_grid": [0.01, 0.03, 0.1, 0.3], "lr_chosen": 0.3})
        'highest'
    """
    grid, chosen = list(arm.get("lr_grid") or []), arm.get("lr_chosen")
    if len(grid) < 2 or chosen is None:
        return None
    if math.isclose(chosen, min(grid)):
        return "lowest"
    return "highest" if math.isclose(chosen, max(grid)) else None


@dataclass
class Arm:
    """One arm of a comparison after tuning: its grid, the validation score per rate, the chosen rate and
    the runs of every seed at that rate (the job function's dicts)."""

    name: str
    lr_grid: list[float]
    val_accuracy: list[float]  # mean over the tuning seeds, one per rate of lr_grid
    lr_chosen: float
    seeds: list[int]
    runs: list[dict]  # one per seed, at lr_chosen

    @property
    def test_accuracy(self) -> list[float]:
        """Test accuracy per seed at the chosen rate."""
        return [float(r["test_accuracy"]) for r in self.runs]

    def values(self, key: str) -> list[float]:
        """`key` of every seed's run at the chosen rate."""
        return [float(r[key]) for r in self.runs]

    def to_json(self) -> dict:
        return {"name": self.name, "lr_grid": self.lr_grid, "lr_chosen": self.lr_chosen,
                "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy, "seeds": self.seeds}


def tune_and_run(job: Callable[..., dict], arms: dict[str, dict], grid, seeds: list[int], tune_seeds: int = 2,
                 score: str = "val_accuracy", **common: Any) -> dict[str, Arm]:
    """Give every arm its own learning rate, then run every seed at it.

    For each arm, `job(lr=..., seed=..., **common, **arms[name])` runs for every rate of its grid on the first
    `tune_seeds` seeds; the rate with the highest mean `score` (a validation number, higher is better; NaN
    counts as worst; ties go to the smaller rate) is chosen, and the remaining seeds run at it (the tuning runs
    at the chosen rate are reused). All calls of a stage go to `jobs.run_jobs` at once.

    Args:
        job: module-level function returning a dict with at least `score` and "test_accuracy".
        arms: {arm name: keyword arguments of the job for that arm}.
        grid: learning rates (>= 4 values spanning >= 30x), or {arm name: grid}.
        seeds: the run's seeds (`seeds(cfg)`). tune_seeds: how many of the first seeds choose the rate.
        score: the key of the job's result that chooses the rate.
        common: keyword arguments passed to every call.

    Returns:
        {arm name: Arm}, in the order of `arms`.
    """
    from .jobs import run_jobs

    if not arms:
        raise ValueError("arms must name at least one arm")
    grids = {name: check_grid(grid[name] if isinstance(grid, dict) else grid, f"grid of arm {name!r}")
             for name in arms}
    seeds = list(seeds)
    tuning = seeds[:max(1, min(tune_seeds, len(seeds)))]
    calls = [(name, lr, seed) for name in arms for lr in grids[name] for seed in tuning]
    results = run_jobs(job, [dict(common, **arms[name], lr=lr, seed=seed) for name, lr, seed in calls])
    by_call = dict(zip(calls, results))
    chosen, scores = {}, {}
    for name in arms:
        means = []
        for lr in grids[name]:
            values = [float(by_call[(name, lr, seed)][score]) for seed in tuning]
            means.append(float(np.mean(values)) if all(math.isfinite(v) for v in values) else -math.inf)
        scores[name] = means
        chosen[name] = grids[name][int(np.argmax(means))]
    rest = [(name, seed) for name in arms for seed in seeds if seed not in tuning]
    results = run_jobs(job, [dict(common, **arms[name], lr=chosen[name], seed=seed) for name, seed in rest])
    by_call.update({(name, chosen[name], seed): r for (name, seed), r in zip(rest, results)})
    return {name: Arm(name, list(grids[name]), [m if math.isfinite(m) else float("nan") for m in scores[name]],
                      chosen[name], seeds, [by_call[(name, chosen[name], seed)] for seed in seeds])
            for name in arms}


@dataclass
class Plot:
    """A line or bar chart drawn by the report from plain numbers.

    lines: label -> {"x": [...], "y": [...], "err": [...] (optional: half-width of the 95% interval),
    "points": [[per-seed values] per x] (optional: drawn as dots)}. kind: 'line' or 'bar' (bars: x are category
    names). logx/logy: log axes.
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
    notes: list[str] = field(default_factory=list)  # setup, caveats, what the design cannot show
    arms: list[dict] = field(default_factory=list)  # Arm.to_json() of every tuned arm
    config: dict = field(default_factory=dict)  # filled by the runner
    seconds: float = 0.0  # filled by the runner: wall-clock time
    cpu_seconds: float = 0.0  # filled by the runner: CPU time of this process and its worker processes
    versions: dict = field(default_factory=dict)  # filled by the runner
    numbers: dict = field(default_factory=dict)  # the key numbers behind the verdicts, for tests and tools

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Result":
        data = dict(data)
        data["findings"] = [Finding(**f) for f in data["findings"]]
        data.setdefault("arms", [])
        data["tables"] = [Table(**t) for t in data.get("tables", [])]
        data["plots"] = [Plot(**p) for p in data.get("plots", [])]
        return cls(**data)
