"""E6: large batches and Ghost BN: batch 32 vs batch 512 (square-root-scaled learning rate), with ghost batches
of 32, and with more steps (Hoffer et al.'s 'regime')."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import progress
from ..data import load
from ..models import CNN, available
from ..protocol import Finding, Result, not_run, stat, verdict
from ..train import seed_everything, train
from ._common import bar_plot, pct, table

ID = "E6"
TITLE = "Large batches and Ghost BN"

CLAIMS = [("Large batches generalize worse than small ones (same epochs)",
           "Hoffer et al. 2017: ResNet44/CIFAR-10 small batch 92.83%, large batch 86.10%.", "see the report"),
          ("Ghost BN closes part of the large-batch gap", "Hoffer et al. 2017: +lr 89.30%, +ghost BN 90.50%",
           "see the report")]


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 3  # seeds per setting
    epochs: int = 20  # passes over the training set for the small and large batch runs
    small_batch: int = 32  # the small batch (also the ghost batch size)
    large_batch: int = 512  # the large batch
    lr: float = 0.05  # learning rate at the small batch (SGD momentum 0.9); large: x sqrt(large/small)
    regime_factor: int = 4  # 'regime': the large-batch ghost run gets this many times more steps
    channels: tuple = (16, 32)  # CNN channels


QUICK = dict(seeds=1, epochs=2, large_batch=256, regime_factor=2)
FULL = dict(seeds=5, epochs=30)


def run(cfg: Config) -> Result:
    if available("ghost") is not None:
        return not_run(ID, TITLE, CLAIMS, available("ghost"))
    data = load(cfg.data)
    n = len(data.y_train)
    small_steps = cfg.epochs * n // cfg.small_batch
    large_steps = max(1, cfg.epochs * n // cfg.large_batch)
    large_lr = cfg.lr * math.sqrt(cfg.large_batch / cfg.small_batch)
    settings = {f"small (batch {cfg.small_batch})": ("batch", cfg.small_batch, cfg.lr, small_steps),
                f"large (batch {cfg.large_batch}, lr x{math.sqrt(cfg.large_batch / cfg.small_batch):.1f})":
                    ("batch", cfg.large_batch, large_lr, large_steps),
                f"large + ghost BN ({cfg.small_batch})": ("ghost", cfg.large_batch, large_lr, large_steps),
                f"large + ghost + {cfg.regime_factor}x steps": ("ghost", cfg.large_batch, large_lr,
                                                               cfg.regime_factor * large_steps)}
    acc = {}
    for name, seed in progress.jobs([(k, s) for k in settings for s in range(cfg.seeds)]):
        norm, batch, lr, steps = settings[name]
        seed_everything(seed)
        model = CNN(data.sample_shape, cfg.channels, data.num_classes, norm=norm,
                    virtual_batch_size=cfg.small_batch)
        acc.setdefault(name, []).append(train(model, data, steps=steps, batch_size=batch, lr=lr, momentum=0.9,
                                              seed=seed).final_accuracy)
    final = {k: stat(v) for k, v in acc.items()}
    small, large, ghost, regime = (final[k] for k in settings)
    gap = small.mean - large.mean
    closed = (ghost.mean - large.mean) / gap if gap > 0 else 0.0
    findings = [
        Finding(CLAIMS[0][0], CLAIMS[0][1],
                "holds if the small-batch accuracy is >= 2 points above the large batch's (sqrt-scaled lr); partly "
                "if > 0.5 points",
                verdict(gap >= 0.02, gap > 0.005),
                f"small {pct(small)}, large {pct(large)} (gap {100 * gap:.1f} points)"),
        Finding(CLAIMS[1][0], CLAIMS[1][1] + "; a ResNet-50/ImageNet replication found -0.3 to +0.3 points.",
                "fraction of the gap closed by ghost BN = (ghost - large) / (small - large); holds if >= 25% of a "
                "gap >= 1 point; partly if ghost BN is above the large batch",
                verdict(gap >= 0.01 and closed >= 0.25, ghost.mean > large.mean),
                f"ghost {pct(ghost)} vs large {pct(large)}: {100 * closed:.0f}% of the gap closed; with "
                f"{cfg.regime_factor}x steps {pct(regime)}"),
    ]
    plots = [bar_plot("Final test accuracy", "test accuracy", {"test accuracy": final})]
    rows = {k: [str(settings[k][1]), f"{settings[k][2]:.3g}", str(settings[k][3]), pct(final[k])] for k in settings}
    notes = [f"CNN {cfg.channels} on {cfg.data}, SGD momentum 0.9, {cfg.epochs} epochs ({small_steps} small-batch "
             f"steps, {large_steps} large-batch steps). Ghost BN: batchnorm.nn.BatchNorm2d(virtual_batch_size="
             f"{cfg.small_batch}) normalizes each chunk of {cfg.small_batch} with its own statistics."]
    return Result(ID, TITLE, findings, [table("Settings", ["setting", "batch", "lr", "steps", "test accuracy"], rows)],
                  plots, notes, numbers={"final accuracy": {k: v.mean for k, v in final.items()},
                                         "gap": gap, "gap closed": closed})
