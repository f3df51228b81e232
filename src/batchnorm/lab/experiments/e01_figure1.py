"""E1: the paper's Figure 1 at laptop scale: test accuracy over training, and the 15/50/85th percentiles of one
last-hidden-layer sigmoid input, for the 3x100 sigmoid MLP with and without batch norm (Ioffe & Szegedy 2015,
Sec. 4.1)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from .. import progress
from ..data import load
from ..models import MLP
from ..protocol import Finding, Plot, Result, Table, stat, verdict
from ..train import seed_everything, train

ID = "E1"
TITLE = "Figure 1: accuracy and sigmoid-input percentiles, with and without BN"


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 3  # seeds per network (initialization and batch order)
    steps: int = 2000  # SGD steps (the paper: 50,000 steps on MNIST)
    batch_size: int = 60  # the paper's batch size
    lr: float = 0.5  # plain SGD learning rate, the same for both networks
    init_std: float = 0.1  # "small random Gaussian values" (the paper gives no std)
    eval_every: int = 100  # steps between test evaluations and percentile measurements
    unit: int = 0  # which unit of the last hidden layer is tracked


QUICK = dict(seeds=2, steps=300, eval_every=50)
FULL = dict(seeds=5, steps=20000, eval_every=500)

PERCENTILES = (15, 50, 85)


def _train_one(cfg: Config, use_bn: bool, seed: int) -> dict:
    data = load(cfg.data)
    seed_everything(seed)
    model = MLP(data.num_inputs, norm="batch" if use_bn else "none", init_std=cfg.init_std)
    captured = {}  # the input of the last hidden layer's sigmoids (output of its BN, or of its linear map)

    percentiles = []

    def measure(step: int, net: torch.nn.Module, loss=None) -> None:
        if step % cfg.eval_every:
            return
        # the whole test set in training mode on a copy: BN normalizes with the statistics of these 599 inputs
        # (not with running averages that lag behind, nor the initial 0/1 at step 0) and the model is untouched
        probe = copy.deepcopy(net).train()
        probe_hook = list(probe.activation_inputs())[-1].register_forward_hook(
            lambda m, i, o: captured.__setitem__("x", o[:, cfg.unit].detach()))
        with torch.no_grad():
            probe(data.x_test)
        probe_hook.remove()
        percentiles.append(np.percentile(captured["x"].numpy(), PERCENTILES).tolist())

    measure(0, model)
    history = train(model, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
                    eval_every=cfg.eval_every, on_step=measure)
    return {"steps": history.steps, "accuracy": history.test_accuracy, "percentiles": percentiles,
            "diverged": history.diverged}


def run(cfg: Config) -> Result:
    runs = {False: [], True: []}
    for use_bn, seed in progress.jobs([(b, s) for b in (False, True) for s in range(cfg.seeds)]):
        runs[use_bn].append(_train_one(cfg, use_bn, seed))
    label = {False: "without BN", True: "with BN"}
    steps = runs[True][0]["steps"]
    accuracy = {b: np.array([r["accuracy"] for r in runs[b]]) for b in runs}  # (seeds, checkpoints)
    pct = {b: np.array([r["percentiles"] for r in runs[b]]) for b in runs}  # (seeds, checkpoints + 1, 3)
    # movement of a percentile: its range (max - min) over training; averaged over the three percentiles
    movement = {b: stat(np.mean(pct[b].max(1) - pct[b].min(1), axis=1)) for b in runs}
    higher = float(np.mean(accuracy[True].mean(0) > accuracy[False].mean(0)))
    final = {b: stat(accuracy[b][:, -1]) for b in runs}

    findings = [
        Finding("BN networks reach higher test accuracy, at every point of training",
                "Ioffe & Szegedy 2015, Fig. 1a: the BN network's test accuracy is higher at every point (MNIST).",
                "holds if BN's mean test accuracy is higher at >= 90% of checkpoints; partly if at >= 50% "
                "and higher at the end",
                verdict(higher >= 0.9, higher >= 0.5 and final[True].mean > final[False].mean),
                f"BN higher at {100 * higher:.0f}% of {len(steps)} checkpoints; final accuracy with BN "
                f"{final[True].format(percent=True)}, without {final[False].format(percent=True)}"),
        Finding("With BN the distribution of a sigmoid's input is stable over training (without it, it drifts)",
                "Ioffe & Szegedy 2015, Fig. 1b/c: without BN the 15/50/85th percentiles drift; with BN they are "
                "'much more stable'.",
                "movement = range (max - min over checkpoints) of each percentile, averaged over the three; "
                "holds if BN's movement <= 0.5x the movement without BN; partly if smaller",
                verdict(movement[True].mean <= 0.5 * movement[False].mean,
                        movement[True].mean < movement[False].mean),
                f"percentile movement with BN {movement[True]}, without {movement[False]} "
                f"(ratio {movement[True].mean / max(movement[False].mean, 1e-12):.2f})"),
    ]
    plots = [Plot("Test accuracy (mean over seeds)", "step", "test accuracy",
                  {label[b]: {"x": steps, "y": accuracy[b].mean(0).tolist(), "err": accuracy[b].std(0).tolist()}
                   for b in (False, True)})]
    pct_steps = [0] + steps
    for b in (False, True):
        plots.append(Plot(f"Last-layer sigmoid input, unit {cfg.unit}, {label[b]} (seed 0)", "step",
                          "input to the sigmoid",
                          {f"{p}th percentile": {"x": pct_steps, "y": pct[b][0, :, i].tolist()}
                           for i, p in enumerate(PERCENTILES)}))
    table = Table("Final numbers", ["network", "final test accuracy", "percentile movement"],
                  [[label[b], final[b].format(percent=True), str(movement[b])] for b in (False, True)])
    notes = [f"The paper's network (3 x 100 sigmoid units, N(0, {cfg.init_std}^2) init, batch {cfg.batch_size}, "
             f"plain SGD lr {cfg.lr}) on {cfg.data}, {cfg.steps} steps; percentiles over the test set, measured in "
             f"training mode on a copy of the network (BN uses the test set's own statistics)."]
    numbers = {"final accuracy": {label[b]: final[b].mean for b in runs}, "movement": {label[b]: movement[b].mean
               for b in runs}, "fraction of checkpoints BN higher": higher}
    return Result(ID, TITLE, findings, [table], plots, notes, numbers=numbers)
