"""E3: initialization scale and deep saturating networks: a deep sigmoid MLP with and without BN, weights drawn
N(0, gain^2 / fan_in) for gains 0.1, 1, 10."""

from __future__ import annotations

from dataclasses import dataclass

from .. import progress
from ..data import load
from ..models import MLP, gaussian_init
from ..protocol import Finding, Result, stat, verdict
from ..train import seed_everything, train
from ._common import bar_plot, pct, table

ID = "E3"
TITLE = "Initialization scale and deep sigmoid networks"


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 3  # seeds per setting
    steps: int = 500  # SGD steps per run
    batch_size: int = 32  # mini-batch size
    lr: float = 0.05  # SGD learning rate (momentum 0.9), the same for every network
    depth: int = 8  # hidden layers
    width: int = 64  # units per hidden layer
    gains: tuple = (0.1, 1.0, 10.0)  # init std = gain / sqrt(fan_in)


QUICK = dict(seeds=2, steps=100, depth=6)
FULL = dict(seeds=5, steps=3000, depth=12)


def run(cfg: Config) -> Result:
    data = load(cfg.data)
    acc = {}
    for bn, gain, seed in progress.jobs([(b, g, s) for b in (False, True) for g in cfg.gains
                                         for s in range(cfg.seeds)]):
        seed_everything(seed)
        model = gaussian_init(MLP(data.num_inputs, (cfg.width,) * cfg.depth, activation="sigmoid",
                                  norm="batch" if bn else "none"), gain=gain)
        h = train(model, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, momentum=0.9, seed=seed)
        acc.setdefault((bn, gain), []).append(h.final_accuracy)
    final = {k: stat(v) for k, v in acc.items()}
    name = {False: "no BN", True: "BN"}
    spread = {bn: max(final[(bn, g)].mean for g in cfg.gains) - min(final[(bn, g)].mean for g in cfg.gains)
              for bn in (False, True)}
    worst = {bn: min(final[(bn, g)].mean for g in cfg.gains) for bn in (False, True)}
    chance = 1.0 / data.num_classes
    plain, normed = final[(False, 1.0)], final[(True, 1.0)]
    findings = [
        Finding("BN makes training much less sensitive to the initialization scale",
                "Ioffe & Szegedy 2015, Sec. 3.3: BN((aW)u) = BN(Wu): the layer's output does not depend on the "
                "weights' scale.",
                "spread = best - worst final accuracy over the init gains; holds if BN's spread <= 1/3 of no-BN's "
                "and BN's worst >= no-BN's worst + 10 points; partly if BN's spread is smaller",
                verdict(spread[True] <= spread[False] / 3 and worst[True] >= worst[False] + 0.10,
                        spread[True] < spread[False]),
                f"spread over gains {cfg.gains}: BN {100 * spread[True]:.1f} points, no BN "
                f"{100 * spread[False]:.1f}; worst BN {100 * worst[True]:.1f}%, no BN {100 * worst[False]:.1f}%"),
        Finding(f"A deep ({cfg.depth}-layer) sigmoid network trains with BN but not without it (saturation)",
                "Ioffe & Szegedy 2015: Inception with sigmoids and no BN stayed at chance (1/1000); with BN 69.8%.",
                f"at gain 1: holds if no BN stays below {100 * (chance + 0.15):.0f}% (chance + 15 points) and BN "
                f"exceeds 80%; partly if BN is >= 10 points above no BN",
                verdict(plain.mean < chance + 0.15 and normed.mean > 0.8, normed.mean >= plain.mean + 0.10),
                f"gain 1: BN {pct(normed)}, no BN {pct(plain)} (chance {100 * chance:.0f}%)"),
    ]
    plots = [bar_plot(f"Final test accuracy, {cfg.depth}-layer sigmoid MLP", "test accuracy",
                      {name[bn]: {f"gain {g:g}": final[(bn, g)] for g in cfg.gains} for bn in (False, True)},
                      "init std = gain / sqrt(fan_in)")]
    rows = {f"{name[bn]}, gain {g:g}": [pct(final[(bn, g)])] for bn in (False, True) for g in cfg.gains}
    notes = [f"{cfg.depth} x {cfg.width} sigmoid MLP, SGD momentum 0.9, lr {cfg.lr}, batch {cfg.batch_size}, "
             f"{cfg.steps} steps on {cfg.data}."]
    return Result(ID, TITLE, findings, [table("Final test accuracy", ["network", "test accuracy"], rows)], plots,
                  notes, numbers={"final accuracy": {f"{name[bn]}, gain {g:g}": final[(bn, g)].mean
                                                     for bn in (False, True) for g in cfg.gains}})
