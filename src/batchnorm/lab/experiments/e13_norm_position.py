"""E13: BN before vs after the activation (ReLU), in a small CNN and an MLP."""

from __future__ import annotations

from dataclasses import dataclass

from .. import progress
from ..data import load
from ..models import CNN, MLP
from ..protocol import Finding, Result, stat, verdict
from ..train import seed_everything, train
from ._common import bar_plot, pct, table

ID = "E13"
TITLE = "BN before vs after the activation"


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 3  # seeds per setting
    steps: int = 400  # SGD steps per run
    batch_size: int = 32  # mini-batch size
    lr: float = 0.05  # SGD learning rate (momentum 0.9)
    channels: tuple = (16, 32)  # CNN channels
    hidden: tuple = (100, 100, 100)  # MLP hidden widths


QUICK = dict(seeds=1, steps=120)
FULL = dict(seeds=5, steps=3000)


def run(cfg: Config) -> Result:
    data = load(cfg.data)
    acc = {}
    for arch, position, seed in progress.jobs([(a, p, s) for a in ("CNN", "MLP") for p in ("before", "after")
                                               for s in range(cfg.seeds)]):
        seed_everything(seed)
        if arch == "CNN":
            model = CNN(data.sample_shape, cfg.channels, data.num_classes, norm="batch", norm_position=position)
        else:
            model = MLP(data.num_inputs, cfg.hidden, data.num_classes, activation="relu", norm="batch",
                        norm_position=position)
        h = train(model, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, momentum=0.9, seed=seed)
        acc.setdefault((arch, position), []).append(h.final_accuracy)
    final = {k: stat(v) for k, v in acc.items()}
    diff = {a: final[(a, "before")].mean - final[(a, "after")].mean for a in ("CNN", "MLP")}
    findings = [Finding(
        "BN belongs before the nonlinearity (as in the paper)",
        "Ioffe & Szegedy 2015 put BN before the nonlinearity; a public CaffeNet benchmark measured 0.474 (before) "
        "vs 0.499 (after) accuracy.",
        "holds if 'before' is >= 1 point more accurate than 'after' in both the CNN and the MLP; partly if in one",
        verdict(min(diff.values()) >= 0.01, max(diff.values()) >= 0.01),
        f"before - after: CNN {100 * diff['CNN']:+.1f} points ({pct(final[('CNN', 'before')])} vs "
        f"{pct(final[('CNN', 'after')])}), MLP {100 * diff['MLP']:+.1f} points ({pct(final[('MLP', 'before')])} vs "
        f"{pct(final[('MLP', 'after')])})")]
    plots = [bar_plot("Final test accuracy", "test accuracy",
                      {p: {a: final[(a, p)] for a in ("CNN", "MLP")} for p in ("before", "after")})]
    rows = {a: [pct(final[(a, "before")]), pct(final[(a, "after")])] for a in ("CNN", "MLP")}
    notes = [f"ReLU networks on {cfg.data}: CNN {cfg.channels}, MLP {cfg.hidden}; SGD momentum 0.9, lr {cfg.lr}, "
             f"batch {cfg.batch_size}, {cfg.steps} steps. 'after': Conv/Linear (with bias) -> ReLU -> BN."]
    return Result(ID, TITLE, findings, [table("Final test accuracy", ["model", "BN before ReLU", "BN after ReLU"],
                                              rows)], plots, notes,
                  numbers={f"{a}, {p}": v.mean for (a, p), v in final.items()})
