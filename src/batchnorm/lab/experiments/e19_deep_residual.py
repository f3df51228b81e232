"""E19: deep residual networks without normalization (Fixup, SkipInit) vs BN at increasing depth, each network at
its own tuned learning rate; plain He initialization without normalization is the control."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import load
from ..models_deep import ResidualMLP
from ..protocol import accuracy_ci, Effect, Finding, Plot, Result, Table, diff_ci, fmt_ci, mean_ci, seeds, tune_and_run
from ..train import seed_everything, train

ID = "E19"
TITLE = "Deep residual networks without normalization: Fixup and SkipInit vs BN"

ARMS = {"BN": "batch", "Fixup": "fixup", "SkipInit": "skipinit", "no norm (He init)": "none"}
ANCHOR_FIXUP = ("Fixup (Zhang, Dauphin & Ma 2019, arXiv 1901.09321): residual networks train without normalization "
                "when the residual branches' initialization is rescaled (last layer of each branch at zero); they "
                "match BN ResNets on image classification when regularized comparably.")
ANCHOR_SKIPINIT = ("SkipInit (De & Smith 2020, arXiv 2002.10444): a learnable scalar initialized to 0 on each residual "
                   "branch lets deep residual networks train without normalization at moderate batch sizes, but not "
                   "at the largest learning rates BN allows.")


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 5  # seeds per network and depth for the reported numbers
    seed_base: int = 0  # first seed (--seed-base)
    tune_seeds: int = 2  # seeds the learning rate is chosen on (mean final validation accuracy)
    lr_grid: tuple = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # SGD learning rates (momentum 0.9), every arm
    # (1000x; SkipInit at 1 block chose 0.3, the old highest)
    blocks: tuple = (1, 4, 16)  # residual blocks (2 linear layers each); the deepest is where the findings read
    width: int = 64  # units per layer
    steps: int = 150  # SGD steps per run
    batch_size: int = 64  # mini-batch size
    margin: float = 1.0  # points: "matches BN" means at most this much below BN


QUICK = dict(seeds=2, tune_seeds=1, blocks=(1, 3), steps=20, lr_grid=(0.01, 0.03, 0.1, 0.3))
FULL = dict(seeds=10, blocks=(1, 4, 16, 64), steps=2000)


def train_residual(data: str, scheme: str, blocks: int, lr: float, seed: int, steps: int, batch_size: int,
                   width: int) -> dict:
    """Train one residual MLP with SGD (momentum 0.9); its final validation and test accuracy."""
    seed_everything(seed)
    dataset = load(data)
    model = ResidualMLP(dataset.num_inputs, blocks, width, dataset.num_classes, scheme=scheme)
    history = train(model, dataset, steps=steps, batch_size=batch_size, lr=lr, momentum=0.9, seed=seed)
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy, "diverged": history.diverged}


def run(cfg: Config) -> Result:
    seed_list = seeds(cfg)
    common = dict(data=cfg.data, steps=cfg.steps, batch_size=cfg.batch_size, width=cfg.width)
    specs = {f"{name}, {b} blocks": dict(common, scheme=scheme, blocks=b) for b in cfg.blocks
             for name, scheme in ARMS.items()}
    arms = tune_and_run(train_residual, specs, grid=list(cfg.lr_grid), seeds=seed_list, tune_seeds=cfg.tune_seeds)
    deepest = max(cfg.blocks)
    test = {(name, b): arms[f"{name}, {b} blocks"].test_accuracy for b in cfg.blocks for name in ARMS}

    def gap(other: str, direction: str) -> Effect:
        return Effect(f"BN - {other} at {deepest} blocks, test accuracy (points)",
                      *diff_ci(test[("BN", deepest)], test[(other, deepest)], scale=100), threshold=cfg.margin,
                      direction=direction)

    def acc(name: str, b: int = deepest) -> str:
        arm = arms[f"{name}, {b} blocks"]
        return f"{name} {fmt_ci(*accuracy_ci(arm.test_accuracy), '%')} (lr {arm.lr_chosen:g})"

    at_deepest = f"at {deepest} blocks: " + ", ".join(acc(name) for name in ARMS)
    matches = (f"each network at its own rate (chosen on validation); paired difference BN - {{}} in test accuracy "
               f"at {deepest} residual blocks ({2 * deepest} linear layers in the branches), 95% Student-t interval; "
               f"holds if it lies below +{cfg.margin:g} point (at most {cfg.margin:g} point below BN), does not hold "
               f"if it lies above")
    fixup, skipinit, control = gap("Fixup", "below"), gap("SkipInit", "below"), gap("no norm (He init)", "above")
    findings = [
        Finding("Fixup trains a deep residual network without normalization as well as BN", ANCHOR_FIXUP,
                matches.format("Fixup"), f"BN - Fixup: {fmt_ci(fixup.estimate, fixup.ci95, 'points')}; {at_deepest}",
                fixup, seeds=seed_list),
        Finding("SkipInit trains a deep residual network without normalization as well as BN", ANCHOR_SKIPINIT,
                matches.format("SkipInit"),
                f"BN - SkipInit: {fmt_ci(skipinit.estimate, skipinit.ci95, 'points')}; {at_deepest}", skipinit,
                seeds=seed_list),
        Finding("Without normalization or a rescaled initialization, a deep residual network trains worse than "
                "with BN (the control: the depth is enough to need one of them)", ANCHOR_FIXUP,
                f"paired difference BN - no norm (He init, nothing rescaled) at {deepest} blocks, each at its own "
                f"rate; holds if the interval lies above +{cfg.margin:g} point",
                f"BN - no norm: {fmt_ci(control.estimate, control.ci95, 'points')}; {at_deepest}", control,
                seeds=seed_list),
    ]
    plots = [Plot("Test accuracy vs depth (each network at its tuned rate)", "residual blocks", "test accuracy (%)",
                  {name: {"x": list(cfg.blocks), "y": [mean_ci(test[(name, b)], 100)[0] for b in cfg.blocks],
                          "points": [[100 * v for v in test[(name, b)]] for b in cfg.blocks]} for name in ARMS},
                  logx=True)]
    rows = [[name, *[f"{fmt_ci(*accuracy_ci(test[(name, b)]), '%')} (lr {arms[f'{name}, {b} blocks'].lr_chosen:g})"
                     for b in cfg.blocks]] for name in ARMS]
    top_lr = max(cfg.lr_grid)
    top_rows = [[name, *[f"{100 * arms[f'{name}, {b} blocks'].val_accuracy[-1]:.1f}%" for b in cfg.blocks]]
                for name in ARMS]
    notes = [f"Residual MLPs on {cfg.data}: Linear stem to {cfg.width}, blocks x <- x + branch(x) with branch = Linear "
             f"-> [BN] -> ReLU -> Linear -> [BN], ReLU, classifier. BN: BN in the branch. Fixup: no normalization, "
             f"the branch's last layer and the classifier start at zero, its first layer is scaled by blocks^-1/2, "
             f"scalar biases and a scalar multiplier. SkipInit: no normalization, the branch times a learnable scalar "
             f"that starts at 0. No norm (He init): the same without any of this (the signal's variance doubles per "
             f"block). SGD momentum 0.9, batch {cfg.batch_size}, {cfg.steps} steps, no weight decay or other "
             f"regularization for any network; each network and depth gets its rate from {list(cfg.lr_grid)} by "
             f"validation accuracy on the first {cfg.tune_seeds} seed(s), then {cfg.seeds} seeds run at it.",
             "SkipInit's anchor also says normalization-free networks do not reach the largest rates BN allows; the "
             f"second table shows each network's validation accuracy at the largest rate tried ({top_lr:g})."]
    return Result(ID, TITLE, findings,
                  [Table("Test accuracy by depth (tuned rate)", ["network", *[f"{b} blocks" for b in cfg.blocks]], rows),
                   Table(f"Validation accuracy at lr {top_lr:g} (tuning seeds)",
                         ["network", *[f"{b} blocks" for b in cfg.blocks]], top_rows)],
                  plots, notes, arms=[a.to_json() for a in arms.values()],
                  numbers={"test accuracy": {f"{n}, {b} blocks": float(np.mean(test[(n, b)])) for b in cfg.blocks
                                             for n in ARMS}})
