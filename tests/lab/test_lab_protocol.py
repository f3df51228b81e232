"""The lab protocol: intervals against scipy's own tests, the verdict rule, fair tuning, and parallel jobs that
give the same numbers as in-process runs."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from batchnorm.lab import jobs
from batchnorm.lab.data import load
from batchnorm.lab.models import MLP
from batchnorm.lab.protocol import (Effect, Finding, accuracy_ci, check_grid, diff_ci, fmt_ci, judge, mean_ci,
                                    ratio_ci, seeds, tune_and_run)
from batchnorm.lab.train import seed_everything, train


def test_mean_and_paired_intervals_match_scipy():
    rng = np.random.default_rng()
    a, b = rng.normal(0.9, 0.02, 6), rng.normal(0.88, 0.02, 6)
    estimate, (lo, hi) = mean_ci(a)
    expected = stats.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=stats.sem(a))
    assert estimate == pytest.approx(a.mean()) and (lo, hi) == pytest.approx(expected)
    estimate, (lo, hi) = diff_ci(a, b, paired=True, scale=100)
    d = 100 * (a - b)
    assert (lo, hi) == pytest.approx(stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d)))
    # Welch: the interval scipy's ttest_ind(equal_var=False) reports
    estimate, (lo, hi) = diff_ci(a, b[:4], paired=False)
    reference = stats.ttest_ind(a, b[:4], equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((reference.low, reference.high))


def test_ratio_interval_is_the_exponentiated_log_interval():
    a, b = np.array([200.0, 240.0, 190.0, 210.0]), np.array([50.0, 55.0, 52.0, 49.0])
    estimate, (lo, hi) = ratio_ci(a, b)
    logs = np.log(a / b)
    low, high = stats.t.interval(0.95, 3, loc=logs.mean(), scale=stats.sem(logs))
    assert estimate == pytest.approx(math.exp(logs.mean())) and (lo, hi) == pytest.approx((math.exp(low), math.exp(high)))


@pytest.mark.parametrize("ci, direction, expected", [
    ((1.5, 3.0), "above", "holds"), ((0.5, 3.0), "above", "inconclusive"), ((-2.0, 0.5), "above", "does not hold"),
    ((-2.0, 0.5), "below", "holds"), ((0.5, 3.0), "below", "inconclusive"), ((1.5, 3.0), "below", "does not hold")])
def test_verdict_rule_reads_the_interval(ci, direction, expected):
    effect = Effect("difference (points)", sum(ci) / 2, ci, threshold=1.0, direction=direction)
    assert judge(effect) == expected
    assert Finding("claim", "anchor", "criterion", "evidence", effect, [0, 1]).verdict == expected


@pytest.mark.parametrize("ci, expected", [
    ((-0.5, 0.8), "holds"), ((-0.99, 0.99), "holds"),                       # inside (-1, 1)
    ((0.5, 1.5), "inconclusive"), ((-1.5, -0.5), "inconclusive"),           # straddles +1 / -1
    ((-1.5, 1.5), "inconclusive"),                                          # straddles both
    ((1.2, 3.0), "does not hold"), ((-3.0, -1.2), "does not hold")])        # entirely beyond, either sign
def test_equivalence_verdict_is_two_sided(ci, expected):
    effect = Effect("difference (points)", sum(ci) / 2, ci, threshold=1.0, direction="within")
    assert judge(effect) == expected
    assert Finding("the same", "anchor", "criterion", "evidence", effect, [0, 1]).verdict == expected
    # the one-sided 'below' reading would call an interval far below -1 a success; 'within' does not
    assert judge(Effect("d", -2.0, (-3.0, -1.2), threshold=1.0, direction="below")) == "holds"
    with pytest.raises(ValueError, match="threshold > 0"):
        Effect("d", 0.0, (-0.5, 0.5), threshold=0.0, direction="within")
    with pytest.raises(ValueError, match="direction must be one of above, below, within"):
        Effect("d", 0.0, (-0.5, 0.5), threshold=1.0, direction="inside")


def test_accuracy_intervals_are_clipped_to_the_attainable_range():
    # one diverged seed among good ones: the t interval of the mean passes 100% unclipped (E19's SkipInit)
    values = [0.99, 0.985, 0.99, 0.98, 0.10]
    raw, (raw_lo, raw_hi) = mean_ci(values, scale=100)
    estimate, (lo, hi) = accuracy_ci(values)
    assert raw_hi > 100 and 0 < raw_lo
    assert estimate == pytest.approx(raw) and (lo, hi) == (pytest.approx(raw_lo), 100.0)
    assert fmt_ci(estimate, (lo, hi), "%") == "80.9 [31.7, 100.0] %"
    # three seeds, one diverged: both ends pass the range
    raw, (raw_lo, raw_hi) = mean_ci([0.99, 0.98, 0.10], scale=100)
    assert raw_lo < 0 and raw_hi > 100 and accuracy_ci([0.99, 0.98, 0.10])[1] == (0.0, 100.0)
    # an interval inside the range is unchanged
    rng = np.random.default_rng()
    values = rng.uniform(0.8, 0.9, 6)
    assert accuracy_ci(values)[1] == pytest.approx(mean_ci(values, scale=100)[1])
    # clipping is for display: a difference of accuracies keeps its whole interval
    assert diff_ci([0.99, 0.98, 0.10], [0.97, 0.97, 0.96], scale=100)[1][0] < -100
    with pytest.raises(ValueError, match="low < high"):
        mean_ci([0.5, 0.6], bounds=(1, 0))


def test_weaker_criterion_gives_partly_holds_and_verdicts_cannot_be_written_by_hand():
    strong = Effect("difference (points)", 2.0, (0.5, 3.5), threshold=3.0)
    weak = Effect("difference (points)", 2.0, (0.5, 3.5), threshold=0.0)
    assert Finding("c", "a", "k", "e", strong, [0], weaker=weak).verdict == "partly holds"
    with pytest.raises(ValueError, match="computed from the effect"):
        Finding("c", "a", "k", "e", strong, [0], verdict="holds")
    with pytest.raises(ValueError, match="needs an effect"):
        Finding("c", "a", "k", "e")
    assert Finding("c", "a", "k", "not run: no data", verdict="not run").verdict == "not run"


def test_intervals_refuse_non_finite_values_and_a_bad_grid():
    with pytest.raises(ValueError, match="must be finite"):
        mean_ci([0.5, math.inf])
    with pytest.raises(ValueError, match="spanning at least 30x"):
        check_grid([0.01, 0.03, 0.1, 0.2])
    with pytest.raises(ValueError, match="at least 4"):
        check_grid([0.001, 0.1, 1.0])
    assert fmt_ci(-0.04, (-1.26, 1.18), "points") == "-0.0 [-1.3, 1.2] points"


def tiny_job(lr: float, seed: int, norm: str, steps: int = 25) -> dict:
    """A job as experiments write them: module level, plain arguments, seeds itself, loads its data by name."""
    seed_everything(seed)
    data = load("digits")
    history = train(MLP(data.num_inputs, (32,), norm=norm), data, steps=steps, batch_size=32, lr=lr, seed=seed)
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy, "lr": lr, "seed": seed}


def burn(seconds: float) -> float:
    """Spin the CPU for `seconds` of this process's CPU time; returns the CPU time spent."""
    import time

    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return time.process_time() - start


def test_cpu_seconds_count_the_work_done_in_worker_processes():
    jobs.set_workers(2)
    try:
        jobs.run_jobs(burn, [dict(seconds=0.01)] * 2)  # start the workers outside the measurement
        before, main_before = jobs.cpu_seconds(), __import__("time").process_time()
        spent = jobs.run_jobs(burn, [dict(seconds=0.3)] * 4)
        worker_cpu = jobs.cpu_seconds() - before - (__import__("time").process_time() - main_before)
    finally:
        jobs.set_workers(1)
    assert sum(spent) >= 1.2 and worker_cpu == pytest.approx(sum(spent), abs=0.05)


def test_tuning_picks_each_arms_best_validation_rate_and_workers_change_nothing(monkeypatch):
    from batchnorm.kernels import config

    monkeypatch.setattr(config, "BACKEND", "numba")  # as in the workers (`jobs.use_own_kernels`), whatever the env
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # workers run one thread; compare at the same thread count
    try:
        jobs.set_workers(1)
        serial = tune_and_run(tiny_job, {"BN": dict(norm="batch"), "none": dict(norm="none")},
                              grid=(0.003, 0.03, 0.3, 1.0), seeds=[3, 4, 5], tune_seeds=2)
        jobs.set_workers(2)
        parallel = tune_and_run(tiny_job, {"BN": dict(norm="batch"), "none": dict(norm="none")},
                                grid=(0.003, 0.03, 0.3, 1.0), seeds=[3, 4, 5], tune_seeds=2)
    finally:
        jobs.set_workers(1)
        torch.set_num_threads(threads)
    for name, arm in serial.items():
        assert arm.lr_chosen == arm.lr_grid[int(np.nanargmax(arm.val_accuracy))]
        assert [r["seed"] for r in arm.runs] == [3, 4, 5] and {r["lr"] for r in arm.runs} == {arm.lr_chosen}
        assert arm.to_json() == parallel[name].to_json()   # same numbers from worker processes
    assert serial["BN"].test_accuracy != serial["none"].test_accuracy


def test_validation_split_is_disjoint_from_training_and_stratified():
    data = load("digits")
    assert len(data.y_val) == 199 and len(data.y_train) == 999
    train_rows = {tuple(r) for r in data.x_train.flatten(1).tolist()}
    overlap = sum(tuple(r) in train_rows for r in data.x_val.flatten(1).tolist())
    assert overlap <= 2   # digits holds a few duplicate images; a leak would overlap by ~199
    counts = torch.bincount(data.y_val, minlength=10)
    assert counts.min() >= 17 and counts.max() <= 23


def test_seeds_start_at_seed_base():
    from types import SimpleNamespace
    assert seeds(SimpleNamespace(seeds=5, seed_base=100)) == [100, 101, 102, 103, 104]
