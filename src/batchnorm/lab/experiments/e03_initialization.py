"""E3: initialization scale and deep saturating networks: a deep sigmoid MLP with and without BN, weights drawn
N(0, gain^2 / fan_in) for gains from too small to too large, including the gain suited to a sigmoid (4: its
slope at 0 is 1/4), every (network, gain) at its own tuned learning rate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import load
from ..models import MLP, gaussian_init
from ..protocol import accuracy_ci, Effect, Finding, Result, Table, diff_ci, fmt_ci, mean_ci, seeds, tune_and_run
from ..train import seed_everything, train
from ._figures import points_plot

ID = "E3"
TITLE = "Initialization scale and deep sigmoid networks"

NORMS = {"no BN": "none", "BN": "batch"}
ANCHOR_SCALE = ("Ioffe & Szegedy 2015 (arXiv 1502.03167), Sec. 3.3: BN((aW)u) = BN(Wu): the layer's output does not "
                "depend on the weights' scale.")
ANCHOR_SIGMOID = ("Ioffe & Szegedy 2015 (arXiv 1502.03167): Inception with sigmoids and no BN stayed at chance "
                  "(1/1000); with BN 69.8%.")


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 5  # seeds per setting for the reported numbers
    seed_base: int = 0  # first seed (the runner sets it from --seed-base)
    tune_seeds: int = 2  # the first seeds choose each (network, gain)'s learning rate
    lr_grid: tuple = (0.01, 0.03, 0.1, 0.3, 1.0)  # SGD rates (momentum 0.9) every setting is tuned over, except:
    bn_small_gain_lr_grid: tuple = (0.001, 0.003, 0.01, 0.03, 0.1)  # BN at gains < 1: smaller rates
    bn_large_gain_lr_grid: tuple = (0.03, 0.1, 0.3, 1.0, 3.0)  # BN at gains > 4: larger rates
    steps: int = 300  # SGD steps per run
    batch_size: int = 32  # mini-batch size
    depth: int = 8  # hidden layers
    width: int = 64  # units per hidden layer
    gains: tuple = (0.1, 1.0, 4.0, 10.0)  # init std = gain / sqrt(fan_in); 4 suits a sigmoid (slope 1/4 at 0)


QUICK = dict(seeds=2, tune_seeds=1, steps=80, depth=6, gains=(1.0, 4.0), lr_grid=(0.01, 0.1, 0.3, 1.0))
FULL = dict(seeds=10, steps=3000, depth=12)


def job(norm: str, gain: float, lr: float, seed: int, data: str, steps: int, batch_size: int, depth: int,
        width: int) -> dict:
    """Train the deep sigmoid MLP initialized at `gain`; validation and test accuracy."""
    dataset = load(data)
    seed_everything(seed)
    model = gaussian_init(MLP(dataset.num_inputs, (width,) * depth, activation="sigmoid", norm=norm), gain=gain)
    history = train(model, dataset, steps=steps, batch_size=batch_size, lr=lr, momentum=0.9, seed=seed)
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy,
            "diverged": float(history.diverged)}


def _name(net: str, gain: float) -> str:
    return f"{net}, gain {gain:g}"


def _grid(cfg: Config, net: str, gain: float) -> tuple:
    """The learning-rate grid of one setting: BN's best rate falls with a small gain and rises with a large one
    (its effective step on the weight direction scales like lr / ||w||^2), so its grid follows."""
    if net == "BN" and gain <= 1:
        return cfg.bn_small_gain_lr_grid
    if net == "BN" and gain > 4:
        return cfg.bn_large_gain_lr_grid
    return cfg.lr_grid


def run(cfg: Config) -> Result:
    run_seeds = seeds(cfg)
    dataset = load(cfg.data)
    chance = 100.0 / dataset.num_classes
    arms = tune_and_run(job, {_name(net, g): dict(norm=norm, gain=g) for net, norm in NORMS.items()
                              for g in cfg.gains},
                        grid={_name(net, g): _grid(cfg, net, g) for net in NORMS for g in cfg.gains}, seeds=run_seeds, tune_seeds=cfg.tune_seeds, data=cfg.data, steps=cfg.steps,
                        batch_size=cfg.batch_size, depth=cfg.depth, width=cfg.width)
    acc = {(net, g): np.array(arms[_name(net, g)].test_accuracy) for net in NORMS for g in cfg.gains}
    # sensitivity per seed (seeds are shared across gains): best - worst test accuracy over the gains, in points
    spread = {net: 100 * (np.max([acc[(net, g)] for g in cfg.gains], axis=0)
                          - np.min([acc[(net, g)] for g in cfg.gains], axis=0)) for net in NORMS}
    spread_estimate, spread_ci = diff_ci(spread["no BN"], spread["BN"], paired=True)
    # the best gain of each network, chosen on validation (the tuning seeds' score at the chosen rate)
    best_gain = {net: cfg.gains[int(np.argmax([np.nanmax(arms[_name(net, g)].val_accuracy) for g in cfg.gains]))]
                 for net in NORMS}
    plain_best = acc[("no BN", best_gain["no BN"])]
    bn_best = acc[("BN", best_gain["BN"])]
    plain_estimate, plain_ci = mean_ci(plain_best, scale=100)
    best_diff = diff_ci(bn_best, plain_best, paired=True, scale=100)
    findings = [
        Finding("BN makes training much less sensitive to the initialization scale", ANCHOR_SCALE,
                f"spread = best - worst test accuracy over the gains {list(cfg.gains)} (per seed, each setting at its "
                f"own tuned rate); effect: no-BN spread - BN spread, in points, paired over seeds; holds if the 95% "
                f"interval lies above 10 points ('much less sensitive'); weaker criterion (partly holds): above 0",
                f"spread: no BN {fmt_ci(*mean_ci(spread['no BN']), 'points')}, BN "
                f"{fmt_ci(*mean_ci(spread['BN']), 'points')}; difference {fmt_ci(spread_estimate, spread_ci, 'points')}",
                Effect("no-BN spread - BN spread over gains, test accuracy (points)", spread_estimate, spread_ci,
                       threshold=10.0), run_seeds,
                weaker=Effect("no-BN spread - BN spread over gains, test accuracy (points)", spread_estimate,
                              spread_ci, threshold=0.0)),
        Finding(f"A deep ({cfg.depth}-layer) sigmoid network does not train without BN (it saturates)", ANCHOR_SIGMOID,
                f"over all gains {list(cfg.gains)}: the no-BN network at its best gain (chosen on validation, here "
                f"{best_gain['no BN']:g}) and its own tuned rate; effect: its test accuracy in %; holds if the 95% "
                f"interval lies below chance + 15 points ({chance + 15:.0f}%: it does not train), does not hold if "
                f"it lies above",
                f"no BN at gain {best_gain['no BN']:g}: {fmt_ci(plain_estimate, plain_ci, '%')} (chance "
                f"{chance:.0f}%); BN at gain {best_gain['BN']:g}: {fmt_ci(*accuracy_ci(bn_best), '%')}; BN - no BN "
                f"at their best gains {fmt_ci(*best_diff, 'points')}",
                Effect(f"no BN at its best gain ({best_gain['no BN']:g}), test accuracy (%)", plain_estimate, plain_ci,
                       threshold=chance + 15, direction="below"), run_seeds),
    ]
    plots = [points_plot(f"Test accuracy, {cfg.depth}-layer sigmoid MLP (each setting at its tuned rate)",
                         "test accuracy (%)", {net: {f"gain {g:g}": acc[(net, g)].tolist() for g in cfg.gains}
                                               for net in NORMS}, scale=100, xlabel="init std = gain / sqrt(fan_in)")]
    rows = [[_name(net, g), f"{arms[_name(net, g)].lr_chosen:g}", fmt_ci(*accuracy_ci(acc[(net, g)]), "%")]
            for net in NORMS for g in cfg.gains]
    notes = [f"{cfg.depth} x {cfg.width} sigmoid MLP, SGD momentum 0.9, batch {cfg.batch_size}, {cfg.steps} steps on "
             f"{cfg.data}. Gain 4 is the scale suited to a sigmoid (its slope at 0 is 1/4, so N(0, 16/fan_in) keeps "
             f"the backward signal's variance, as Glorot & Bengio's 4x rule for the logistic function); gain 1 "
             f"shrinks the gradient by about 4x per layer. Each (network, gain) chooses its learning rate from "
             f"{list(cfg.lr_grid)} (BN at gains <= 1 from {list(cfg.bn_small_gain_lr_grid)}, at gains > 4 from "
             f"{list(cfg.bn_large_gain_lr_grid)}) by validation accuracy on the first {cfg.tune_seeds} seeds."]
    flat = [name for name, arm in arms.items() if np.nanmax(arm.val_accuracy) < (chance + 5) / 100]
    if flat:
        notes.append(f"{', '.join(flat)}: validation accuracy within 5 points of chance at every rate of the grid "
                     f"(the network does not train at any of them; the smallest rate is then reported).")
    numbers = {"final accuracy": {_name(net, g): float(acc[(net, g)].mean()) for net in NORMS for g in cfg.gains},
               "spread": {net: float(v.mean()) for net, v in spread.items()},
               "best gain": best_gain}
    return Result(ID, TITLE, findings, [Table("Test accuracy (mean [95% CI] over seeds)",
                                              ["setting", "learning rate", "test accuracy"], rows)], plots, notes,
                  arms=[arm.to_json() for arm in arms.values()], numbers=numbers)
