"""E4: regularization and dropout: train-test gap of an MLP on a small training set, plain, with dropout, with BN
and with both."""

from __future__ import annotations

from dataclasses import dataclass

from .. import progress
from ..data import load, subset
from ..models import MLP
from ..protocol import Finding, Result, stat, verdict
from ..train import evaluate, seed_everything, train
from ._common import bar_plot, pct, table

ID = "E4"
TITLE = "Regularization: train-test gap with BN, dropout, both"

SETTINGS = {"plain": ("none", 0.0), "dropout": ("none", None), "BN": ("batch", 0.0), "BN + dropout": ("batch", None)}


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 3  # seeds per setting (also reseeds which training samples are kept)
    train_size: int = 300  # training samples kept: small, so the network can overfit
    steps: int = 800  # SGD steps per run
    batch_size: int = 32  # mini-batch size
    lr: float = 0.05  # SGD learning rate (momentum 0.9)
    dropout: float = 0.3  # dropout probability after each hidden activation
    hidden: tuple = (256, 256)  # hidden widths of the ReLU MLP


QUICK = dict(seeds=2, steps=150, train_size=200, hidden=(128, 128))
FULL = dict(seeds=5, steps=3000)


def run(cfg: Config) -> Result:
    full = load(cfg.data)
    train_acc, test_acc = {}, {}
    for setting, seed in progress.jobs([(k, s) for k in SETTINGS for s in range(cfg.seeds)]):
        data = subset(full, cfg.train_size, seed)
        norm, dropout = SETTINGS[setting]
        seed_everything(seed)
        model = MLP(data.num_inputs, cfg.hidden, activation="relu", norm=norm,
                    dropout=cfg.dropout if dropout is None else dropout)
        h = train(model, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, momentum=0.9, seed=seed)
        train_acc.setdefault(setting, []).append(evaluate(model, data.x_train, data.y_train))
        test_acc.setdefault(setting, []).append(h.final_accuracy)
    train_s = {k: stat(v) for k, v in train_acc.items()}
    test_s = {k: stat(v) for k, v in test_acc.items()}
    gap = {k: stat([a - b for a, b in zip(train_acc[k], test_acc[k])]) for k in SETTINGS}
    t = {k: test_s[k].mean for k in SETTINGS}
    dropout_gain_with_bn = t["BN + dropout"] - t["BN"]
    findings = [
        Finding("BN regularizes: a smaller train-test gap and better test accuracy than the plain network",
                "Ioffe & Szegedy 2015, Sec. 3.4: a BN network no longer gives deterministic values for a given "
                "example, which helps generalization; Wu & He 2018: BN's batch noise regularizes.",
                "holds if BN's gap is >= 2 points below the plain network's and BN's test accuracy is higher; "
                "partly if BN's test accuracy is higher",
                verdict(gap["BN"].mean <= gap["plain"].mean - 0.02 and t["BN"] > t["plain"], t["BN"] > t["plain"]),
                f"gap: BN {100 * gap['BN'].mean:.1f} +- {100 * gap['BN'].std:.1f} points, plain "
                f"{100 * gap['plain'].mean:.1f} +- {100 * gap['plain'].std:.1f}; test BN {pct(test_s['BN'])}, plain "
                f"{pct(test_s['plain'])}"),
        Finding("BN reduces the need for dropout",
                "Ioffe & Szegedy 2015, Sec. 4.2.1: BN-Inception removed dropout; the best ensemble still used "
                "5-10% dropout ('in some cases').",
                "holds if BN alone is within 1 point of dropout alone (or better) and adding dropout to BN gains "
                "< 1 point; partly if one of the two",
                verdict(t["BN"] >= t["dropout"] - 0.01 and dropout_gain_with_bn < 0.01,
                        t["BN"] >= t["dropout"] - 0.01 or dropout_gain_with_bn < 0.01),
                f"test: BN {pct(test_s['BN'])}, dropout {pct(test_s['dropout'])}, BN + dropout "
                f"{pct(test_s['BN + dropout'])} (dropout adds {100 * dropout_gain_with_bn:+.1f} points to BN)"),
    ]
    plots = [bar_plot("Train and test accuracy", "accuracy", {"train": train_s, "test": test_s})]
    rows = {k: [pct(train_s[k]), pct(test_s[k]), f"{100 * gap[k].mean:.1f} +- {100 * gap[k].std:.1f}"]
            for k in SETTINGS}
    notes = [f"ReLU MLP {cfg.hidden} on {cfg.train_size} {cfg.data} training samples, SGD momentum 0.9, lr {cfg.lr}, "
             f"batch {cfg.batch_size}, {cfg.steps} steps; dropout p = {cfg.dropout}; accuracies in eval mode."]
    return Result(ID, TITLE, findings,
                  [table("Accuracy and gap", ["network", "train", "test", "gap (points)"], rows)], plots, notes,
                  numbers={"train accuracy": {k: v.mean for k, v in train_s.items()}, "test accuracy": t,
                           "gap": {k: v.mean for k, v in gap.items()}})
