"""E15: wall-clock training time: a small CNN with this project's BN kernels, with torch's BN, and without BN:
time per step, and time to reach a target test accuracy."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import progress
from ..data import load
from ..models import CNN
from ..protocol import Finding, Result, stat, verdict
from ..train import seed_everything, shuffled_batches, train
from ._common import bar_plot, pct, steps_to, table

ID = "E15"
TITLE = "Wall-clock time: our BN kernels vs torch's BN vs no BN"

NAMES = {"batch": "BN (ours)", "torch_batch": "BN (torch)", "none": "no BN"}


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 3  # seeds per setting
    steps: int = 400  # SGD steps per run
    batch_size: int = 64  # mini-batch size
    lr: float = 0.05  # SGD learning rate (momentum 0.9), the same for all
    target: float = 0.9  # test accuracy whose wall-clock time is measured
    eval_every: int = 20  # steps between test evaluations (excluded from the time)
    channels: tuple = (16, 32)  # CNN channels
    timing_rounds: int = 15  # rounds of interleaved timing (ours / torch), the median is reported
    timing_steps: int = 10  # training steps per round


QUICK = dict(seeds=1, steps=100, timing_rounds=3)
FULL = dict(seeds=5, steps=2000, timing_rounds=50)


def _step_times(cfg: Config, data) -> dict[str, list[float]]:
    """Seconds per training step, interleaving the three models round by round (fair on a shared machine)."""
    models = {}
    for norm in NAMES:
        seed_everything(0)
        model = CNN(data.sample_shape, cfg.channels, data.num_classes, norm=norm)
        models[norm] = (model, torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9),
                        shuffled_batches(len(data.y_train), cfg.batch_size, torch.Generator().manual_seed(0)))
    times = {norm: [] for norm in NAMES}
    for r in range(cfg.timing_rounds + 1):  # round 0 warms up (kernel loading, allocator)
        for norm, (model, opt, batches) in models.items():
            start = time.perf_counter()
            for _ in range(cfg.timing_steps):
                index = next(batches)
                loss = torch.nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if r:
                times[norm].append((time.perf_counter() - start) / cfg.timing_steps)
    return times


def run(cfg: Config) -> Result:
    data = load(cfg.data)
    jobs = [("timing", 0)] + [(n, s) for n in NAMES for s in range(cfg.seeds)]
    seconds_to, steps_needed, final, step_times = {}, {}, {}, {}
    for norm, seed in progress.jobs(jobs):
        if norm == "timing":
            step_times = _step_times(cfg, data)
            continue
        seed_everything(seed)
        model = CNN(data.sample_shape, cfg.channels, data.num_classes, norm=norm)
        h = train(model, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, momentum=0.9, seed=seed,
                  eval_every=cfg.eval_every)
        per_step = h.seconds / max(h.steps[-1], 1)
        needed = steps_to(h.steps, h.test_accuracy, cfg.target)
        steps_needed.setdefault(norm, []).append(needed)
        seconds_to.setdefault(norm, []).append(needed * per_step)
        final.setdefault(norm, []).append(h.final_accuracy)
    median = {k: float(np.median(v)) for k, v in step_times.items()}
    ratio = median["batch"] / median["torch_batch"]
    time_to = {k: stat(v) for k, v in seconds_to.items()}
    bn_t, none_t = time_to["batch"].mean, time_to["none"].mean
    findings = [
        Finding("BN trains faster in wall-clock time, not only in steps",
                "Ioffe & Szegedy 2015 count steps (BN-Baseline 2.3x fewer); each BN step costs extra compute.",
                f"seconds of training to reach {100 * cfg.target:.0f}% test accuracy (inf if never within "
                f"{cfg.steps} steps); holds if BN (ours) needs <= 0.5x the time of no BN; partly if less",
                verdict(math.isfinite(bn_t) and bn_t <= 0.5 * none_t, math.isfinite(bn_t) and bn_t < none_t),
                f"time to {100 * cfg.target:.0f}%: BN (ours) {time_to['batch']} s, BN (torch) {time_to['torch_batch']}"
                f" s, no BN {time_to['none']} s"),
        Finding("This project's BN kernels train as fast as torch's BN",
                "DESIGN.md: judged by ratios measured in the same run (absolute times do not survive a noisy "
                "machine).",
                "median seconds per training step, interleaved rounds; holds if ours / torch <= 1.1; partly if "
                "<= 1.5",
                verdict(ratio <= 1.1, ratio <= 1.5),
                f"per step: ours {1e3 * median['batch']:.2f} ms, torch {1e3 * median['torch_batch']:.2f} ms (ratio "
                f"{ratio:.2f}), no BN {1e3 * median['none']:.2f} ms; batch {cfg.batch_size}, "
                f"{torch.get_num_threads()} thread(s)"),
    ]
    plots = [bar_plot("Milliseconds per training step (median of rounds)", "ms",
                      {"step time": {NAMES[k]: stat([1e3 * t for t in v]) for k, v in step_times.items()}}),
             bar_plot(f"Seconds to {100 * cfg.target:.0f}% test accuracy", "seconds",
                      {"time to target": {NAMES[k]: v for k, v in time_to.items() if np.isfinite(v.mean)}})]
    rows = {NAMES[k]: [f"{1e3 * median[k]:.2f}", str(stat(steps_needed[k]).mean), str(time_to[k]),
                       pct(stat(final[k]))] for k in NAMES}
    notes = [f"CNN {cfg.channels} on {cfg.data}, batch {cfg.batch_size}, SGD momentum 0.9, lr {cfg.lr}. Wall-clock "
             f"times depend on the machine and its load; this lab may run on a shared machine. Time to target = steps "
             f"to target x this run's mean seconds per step (evaluations excluded)."]
    return Result(ID, TITLE, findings,
                  [table("Numbers", ["network", "ms / step", "steps to target", "seconds to target", "final accuracy"],
                         rows)], plots, notes,
                  numbers={"ms per step": {NAMES[k]: 1e3 * v for k, v in median.items()}, "ratio ours/torch": ratio,
                           "seconds to target": {NAMES[k]: v.mean for k, v in time_to.items()},
                           "final accuracy": {NAMES[k]: stat(v).mean for k, v in final.items()}})
