"""E4: regularization and dropout: train-test gap of an MLP on a small training set, plain, with dropout, with BN
and with both, each at its own tuned learning rate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import load, subset
from ..models import MLP
from ..protocol import accuracy_ci, Effect, Finding, Result, Table, diff_ci, fmt_ci, mean_ci, seeds, tune_and_run
from ..train import evaluate, seed_everything, train
from ._figures import points_plot

ID = "E4"
TITLE = "Regularization: train-test gap with BN, dropout, both"

SETTINGS = {"plain": dict(norm="none", use_dropout=False), "dropout": dict(norm="none", use_dropout=True),
            "BN": dict(norm="batch", use_dropout=False), "BN + dropout": dict(norm="batch", use_dropout=True)}
ANCHOR_REGULARIZE = ("Ioffe & Szegedy 2015 (arXiv 1502.03167), Sec. 3.4: a BN network no longer gives deterministic "
                     "values for a given example, which helps generalization; Wu & He 2018 (arXiv 1803.08494): BN's "
                     "batch noise regularizes.")
ANCHOR_DROPOUT = ("Ioffe & Szegedy 2015 (arXiv 1502.03167), Sec. 4.2.1: BN-Inception removed dropout ('BN fulfills "
                  "some of the same goals as dropout'); the best ensemble still used 5-10% dropout.")


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 5  # seeds per setting (also reseeds which training samples are kept)
    seed_base: int = 0  # first seed (the runner sets it from --seed-base)
    tune_seeds: int = 2  # the first seeds choose each setting's learning rate (validation accuracy)
    lr_grid: tuple = (0.003, 0.01, 0.03, 0.1, 0.3)  # SGD rates (momentum 0.9) every setting is tuned over
    train_size: int = 300  # training samples kept: small, so the network can overfit
    steps: int = 600  # SGD steps per run (64 epochs of 300 samples)
    batch_size: int = 32  # mini-batch size
    dropout: float = 0.3  # dropout probability after each hidden activation
    hidden: tuple = (256, 256)  # hidden widths of the ReLU MLP


QUICK = dict(seeds=2, tune_seeds=1, steps=100, train_size=200, hidden=(128, 128))
FULL = dict(seeds=10, steps=3000)


def job(norm: str, use_dropout: bool, lr: float, seed: int, data: str, train_size: int, steps: int,
        batch_size: int, dropout: float, hidden: list) -> dict:
    """Train on `train_size` samples (drawn with `seed`); train, validation and test accuracy (eval mode)."""
    dataset = subset(load(data), train_size, seed)
    seed_everything(seed)
    model = MLP(dataset.num_inputs, tuple(hidden), activation="relu", norm=norm,
                dropout=dropout if use_dropout else 0.0)
    history = train(model, dataset, steps=steps, batch_size=batch_size, lr=lr, momentum=0.9, seed=seed)
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy,
            "train_accuracy": evaluate(model, dataset.x_train, dataset.y_train), "diverged": float(history.diverged)}


def run(cfg: Config) -> Result:
    run_seeds = seeds(cfg)
    arms = tune_and_run(job, SETTINGS, grid=cfg.lr_grid, seeds=run_seeds, tune_seeds=cfg.tune_seeds, data=cfg.data,
                        train_size=cfg.train_size, steps=cfg.steps, batch_size=cfg.batch_size, dropout=cfg.dropout,
                        hidden=list(cfg.hidden))
    test = {k: np.array(arm.test_accuracy) for k, arm in arms.items()}
    train_acc = {k: np.array(arm.values("train_accuracy")) for k, arm in arms.items()}
    gap = {k: train_acc[k] - test[k] for k in arms}
    gap_estimate, gap_ci = diff_ci(gap["plain"], gap["BN"], paired=True, scale=100)
    test_estimate, test_ci = diff_ci(test["BN"], test["plain"], paired=True, scale=100)
    # how much dropout adds without BN and with it; the claim: less with BN
    gain_plain, gain_bn = test["dropout"] - test["plain"], test["BN + dropout"] - test["BN"]
    need_estimate, need_ci = diff_ci(gain_plain, gain_bn, paired=True, scale=100)
    findings = [
        Finding("BN regularizes: a smaller train-test gap and better test accuracy than the plain network",
                ANCHOR_REGULARIZE,
                "gap = train - test accuracy; effect: plain gap - BN gap, in points, paired over seeds, each network "
                "at its own tuned rate; holds if the 95% interval lies above 1 point (the smallest gain worth a "
                "regularizer; on digits 6 of the 599 test images); weaker criterion (partly holds): BN's test "
                "accuracy minus the plain network's lies above 0",
                f"gap: plain {fmt_ci(*mean_ci(gap['plain'], 100), 'points')}, BN {fmt_ci(*mean_ci(gap['BN'], 100), 'points')}"
                f"; reduction {fmt_ci(gap_estimate, gap_ci, 'points')}; test BN - plain {fmt_ci(test_estimate, test_ci, 'points')}"
                f" (train accuracy plain {fmt_ci(*accuracy_ci(train_acc['plain']), '%')}, BN "
                f"{fmt_ci(*accuracy_ci(train_acc['BN']), '%')})",
                Effect("plain gap - BN gap (points)", gap_estimate, gap_ci, threshold=1.0), run_seeds,
                weaker=Effect("BN - plain, test accuracy (points)", test_estimate, test_ci, threshold=0.0)),
        Finding("BN reduces the need for dropout", ANCHOR_DROPOUT,
                "dropout's gain = test accuracy with dropout - without; effect: dropout's gain on the plain network "
                "- its gain on the BN network, in points, paired over seeds, every setting at its own tuned rate; "
                "holds if the 95% interval lies above 0 (dropout helps a BN network less)",
                f"dropout's gain: plain {fmt_ci(*mean_ci(gain_plain, 100), 'points')}, BN "
                f"{fmt_ci(*mean_ci(gain_bn, 100), 'points')}; difference {fmt_ci(need_estimate, need_ci, 'points')}; "
                f"test: BN {fmt_ci(*accuracy_ci(test['BN']), '%')}, dropout {fmt_ci(*accuracy_ci(test['dropout']), '%')}",
                Effect("dropout's gain without BN - with BN (points)", need_estimate, need_ci, threshold=0.0),
                run_seeds),
    ]
    plots = [points_plot("Train and test accuracy (each setting at its tuned rate)", "accuracy (%)",
                         {"train": {k: v.tolist() for k, v in train_acc.items()},
                          "test": {k: v.tolist() for k, v in test.items()}}, scale=100)]
    rows = [[k, f"{arms[k].lr_chosen:g}", fmt_ci(*accuracy_ci(train_acc[k]), "%"), fmt_ci(*accuracy_ci(test[k]), "%"),
             fmt_ci(*mean_ci(gap[k], 100), "points")] for k in arms]
    notes = [f"ReLU MLP {cfg.hidden} on {cfg.train_size} {cfg.data} training samples (a different draw per seed), SGD "
             f"momentum 0.9, batch {cfg.batch_size}, {cfg.steps} steps; dropout p = {cfg.dropout}; accuracies in eval "
             f"mode. Each setting chooses its learning rate from {list(cfg.lr_grid)} by validation accuracy on the "
             f"first {cfg.tune_seeds} seeds (the validation split is the full one, not drawn from the 300)."]
    numbers = {"train accuracy": {k: float(v.mean()) for k, v in train_acc.items()},
               "test accuracy": {k: float(v.mean()) for k, v in test.items()},
               "gap": {k: float(v.mean()) for k, v in gap.items()}}
    return Result(ID, TITLE, findings, [Table("Accuracy and gap (mean [95% CI] over seeds)",
                                              ["network", "learning rate", "train", "test", "gap"], rows)],
                  plots, notes, arms=[arm.to_json() for arm in arms.values()], numbers=numbers)
