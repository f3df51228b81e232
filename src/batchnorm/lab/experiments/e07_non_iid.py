"""E7: non-i.i.d. mini-batches (each batch drawn from 2 classes only): BN vs Batch Renorm vs Group Norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import progress
from ..data import load
from ..models import CNN, available
from ..protocol import Finding, Result, stat, verdict
from ..train import class_clustered_batches, seed_everything, train
from ._common import bar_plot, pct, table

ID = "E7"
TITLE = "Non-i.i.d. batches: BN vs Batch Renorm vs Group Norm"

NAMES = {"batch": "BN", "renorm": "Batch Renorm", "group": "Group Norm"}


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 3  # seeds per setting
    steps: int = 400  # SGD steps per run
    batch_size: int = 32  # mini-batch size
    classes_per_batch: int = 2  # non-i.i.d.: each batch holds this many classes (Ioffe 2017: 16 of 1000)
    lr: float = 0.05  # SGD learning rate (momentum 0.9)
    channels: tuple = (16, 32)  # CNN channels
    renorm_warmup: int = 100  # Batch Renorm plain-BN steps (scaled from the paper's 5k)
    renorm_ramp: int = 300  # Batch Renorm: rmax=3, dmax=5 reached at this step (scaled)


QUICK = dict(seeds=1, steps=150, renorm_warmup=40, renorm_ramp=120)
FULL = dict(seeds=5, steps=2000, renorm_warmup=500, renorm_ramp=1500)


def run(cfg: Config) -> Result:
    data = load(cfg.data)
    norms = [n for n in NAMES if available(n) is None]
    acc = {}
    options = dict(warmup_steps=cfg.renorm_warmup, rmax_steps=cfg.renorm_ramp, dmax_steps=cfg.renorm_ramp)
    for norm, iid, seed in progress.jobs([(n, i, s) for n in norms for i in (True, False) for s in range(cfg.seeds)]):
        seed_everything(seed)
        model = CNN(data.sample_shape, cfg.channels, data.num_classes, norm=norm,
                    **(options if norm == "renorm" else {}))
        batches = None if iid else class_clustered_batches(data.y_train, cfg.batch_size, cfg.classes_per_batch,
                                                           torch.Generator().manual_seed(seed))
        h = train(model, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, momentum=0.9, seed=seed,
                  batches=batches)
        acc.setdefault((norm, iid), []).append(h.final_accuracy)
    final = {k: stat(v) for k, v in acc.items()}
    bn_drop = final[("batch", True)].mean - final[("batch", False)].mean
    findings = [
        Finding("BN fails when the mini-batches are not i.i.d.",
                "Ioffe 2017: Inception-v3, batches of 16 classes x 2 images: BN 67.0% vs 78.3% i.i.d.",
                "holds if BN's accuracy with class-clustered batches is >= 5 points below i.i.d.; partly if >= 2",
                verdict(bn_drop >= 0.05, bn_drop >= 0.02),
                f"BN i.i.d. {pct(final[('batch', True)])}, non-i.i.d. {pct(final[('batch', False)])} "
                f"(drop {100 * bn_drop:.1f} points); Group Norm non-i.i.d. {pct(final[('group', False)])}"),
    ]
    if "renorm" in norms:
        gain = final[("renorm", False)].mean - final[("batch", False)].mean
        findings.append(Finding(
            "Batch Renorm fixes BN on non-i.i.d. batches",
            "Ioffe 2017: non-i.i.d. batches: Batch Renorm 78.6% vs BN 67.0% (i.i.d. 78.5%).",
            "holds if Batch Renorm's non-i.i.d. accuracy is >= 5 points above BN's; partly if >= 1",
            verdict(gain >= 0.05, gain >= 0.01),
            f"non-i.i.d.: Batch Renorm {pct(final[('renorm', False)])}, BN {pct(final[('batch', False)])} "
            f"({100 * gain:+.1f} points)"))
    else:
        findings.append(Finding("Batch Renorm fixes BN on non-i.i.d. batches", "Ioffe 2017", "-", "not run",
                                f"not run: {available('renorm')}"))
    plots = [bar_plot("Final test accuracy", "test accuracy",
                      {"i.i.d.": {NAMES[n]: final[(n, True)] for n in norms},
                       f"{cfg.classes_per_batch} classes per batch": {NAMES[n]: final[(n, False)] for n in norms}})]
    rows = {NAMES[n]: [pct(final[(n, True)]), pct(final[(n, False)])] for n in norms}
    notes = [f"CNN {cfg.channels} on {cfg.data}, SGD momentum 0.9, lr {cfg.lr}, batch {cfg.batch_size}, {cfg.steps} "
             f"steps; non-i.i.d. batches draw {cfg.classes_per_batch} random classes and "
             f"{cfg.batch_size // cfg.classes_per_batch} samples of each. Eval mode (running statistics)."]
    return Result(ID, TITLE, findings, [table("Final test accuracy", ["norm", "i.i.d.", "non-i.i.d."], rows)],
                  plots, notes, numbers={"final accuracy": {f"{NAMES[n]}, {'i.i.d.' if i else 'non-i.i.d.'}": v.mean
                                                            for (n, i), v in final.items()}})
