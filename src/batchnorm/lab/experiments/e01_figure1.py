"""E1: the paper's Figure 1 at laptop scale: validation accuracy over training, and the 15/50/85th percentiles of
one last-hidden-layer sigmoid input, for the 3x100 sigmoid MLP with and without batch norm, each network at its
own tuned learning rate (Ioffe & Szegedy 2015, Sec. 4.1)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from ..data import load
from ..models import MLP
from ..protocol import accuracy_ci, Effect, Finding, Plot, Result, Table, diff_ci, fmt_ci, mean_ci, ratio_ci, seeds, tune_and_run
from ..train import seed_everything, train
from ._figures import curves_plot

ID = "E1"
TITLE = "Figure 1: accuracy and sigmoid-input percentiles, with and without BN"

PERCENTILES = (15, 50, 85)
ARMS = {"without BN": dict(norm="none"), "with BN": dict(norm="batch")}
ANCHOR_A = ("Ioffe & Szegedy 2015 (arXiv 1502.03167), Fig. 1a: on MNIST the BN network's test accuracy is higher at "
            "every point of training (3x100 sigmoid MLP, batch 60).")
ANCHOR_B = ("Ioffe & Szegedy 2015 (arXiv 1502.03167), Fig. 1b/c: without BN the 15/50/85th percentiles of a "
            "last-layer sigmoid input drift; with BN they are 'much more stable'.")


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 5  # seeds per network for the reported numbers (initialization and batch order)
    seed_base: int = 0  # first seed (the runner sets it from --seed-base)
    tune_seeds: int = 2  # the first seeds choose each network's learning rate (final validation accuracy)
    lr_grid: tuple = (0.1, 0.3, 1.0, 3.0, 10.0)  # plain-SGD rates the network without BN is tuned over
    bn_lr_grid: tuple = (0.3, 1.0, 3.0, 10.0, 30.0)  # the same for the BN network (it tolerates larger rates)
    steps: int = 1500  # SGD steps (the paper: 50,000 steps on MNIST)
    batch_size: int = 60  # the paper's batch size
    init_std: float = 0.1  # "small random Gaussian values" (the paper gives no std)
    eval_every: int = 100  # steps between validation checkpoints and percentile measurements
    unit: int = 0  # which unit of the last hidden layer is tracked


QUICK = dict(seeds=2, tune_seeds=1, steps=200, eval_every=50)
FULL = dict(seeds=10, steps=20000, eval_every=500)


def job(norm: str, lr: float, seed: int, data: str, steps: int, batch_size: int, init_std: float, eval_every: int,
        unit: int) -> dict:
    """Train the paper's MLP; the validation curve and the tracked sigmoid input's percentiles at each checkpoint.

    The percentiles are measured on the validation set in training mode on a copy of the network (BN then uses
    these inputs' own statistics, not running averages that lag behind), so the model itself is untouched.
    """
    dataset = load(data)
    seed_everything(seed)
    model = MLP(dataset.num_inputs, norm=norm, init_std=init_std)
    percentiles = []

    def measure(step: int, net: torch.nn.Module, loss=None) -> None:
        if step % eval_every:
            return
        probe = copy.deepcopy(net).train()
        captured = {}
        hook = list(probe.activation_inputs())[-1].register_forward_hook(
            lambda m, i, o: captured.__setitem__("x", o[:, unit].detach()))
        with torch.no_grad():
            probe(dataset.x_val)
        hook.remove()
        percentiles.append(np.percentile(captured["x"].numpy(), PERCENTILES).tolist())

    measure(0, model)
    history = train(model, dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every,
                    on_step=measure)
    curve = history.val_accuracy + [history.val_accuracy[-1]] * (steps // eval_every - len(history.val_accuracy))
    pct = np.array(percentiles)  # (checkpoints + 1, 3); a diverged run stops early: movement over what it did
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy, "curve": curve,
            "percentiles": percentiles, "movement": float(np.mean(pct.max(0) - pct.min(0))),
            "diverged": float(history.diverged)}


def run(cfg: Config) -> Result:
    run_seeds = seeds(cfg)
    arms = tune_and_run(job, ARMS, grid={"without BN": cfg.lr_grid, "with BN": cfg.bn_lr_grid}, seeds=run_seeds, tune_seeds=cfg.tune_seeds, data=cfg.data,
                        steps=cfg.steps, batch_size=cfg.batch_size, init_std=cfg.init_std,
                        eval_every=cfg.eval_every, unit=cfg.unit)
    bn, plain = arms["with BN"], arms["without BN"]
    steps = list(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every))
    curves = {name: np.array([r["curve"][:len(steps)] for r in arm.runs]) for name, arm in arms.items()}
    # per seed: the smallest lead of BN over the checkpoints (negative: behind at some point)
    lead = (curves["with BN"] - curves["without BN"]).min(axis=1)
    lead_estimate, lead_ci = mean_ci(lead, scale=100)
    final_estimate, final_ci = diff_ci(bn.test_accuracy, plain.test_accuracy, paired=True, scale=100)
    movement = {name: arm.values("movement") for name, arm in arms.items()}
    ratio, ratio_interval = ratio_ci(movement["with BN"], movement["without BN"], paired=True)
    findings = [
        Finding("BN networks reach higher accuracy, at every point of training", ANCHOR_A,
                "effect: per seed, the smallest difference (BN - no BN) in validation accuracy over the "
                f"{len(steps)} checkpoints, in points, each network at its own tuned rate; holds if its 95% "
                "interval lies above 0 (ahead at every checkpoint). Weaker criterion (partly holds): the final "
                "test-accuracy difference lies above 0",
                f"smallest lead over checkpoints {fmt_ci(lead_estimate, lead_ci, 'points')}; final test accuracy "
                f"BN - no BN {fmt_ci(final_estimate, final_ci, 'points')} (BN {fmt_ci(*accuracy_ci(bn.test_accuracy), '%')}"
                f" at lr {bn.lr_chosen:g}, no BN {fmt_ci(*accuracy_ci(plain.test_accuracy), '%')} at lr "
                f"{plain.lr_chosen:g})",
                Effect("smallest BN - no BN lead over checkpoints, validation accuracy (points)", lead_estimate,
                       lead_ci, threshold=0.0), run_seeds,
                weaker=Effect("BN - no BN, final test accuracy (points)", final_estimate, final_ci, threshold=0.0)),
        Finding("With BN the distribution of a sigmoid's input is stable over training (without it, it drifts)",
                ANCHOR_B,
                "movement = range (max - min over checkpoints) of each percentile, averaged over the three; effect: "
                "movement with BN / without BN (geometric mean over paired seeds, t interval of the log ratio); "
                "holds if the interval lies below 0.5 ('much more stable': at most half the drift); weaker "
                "criterion (partly holds): below 1",
                f"movement ratio {fmt_ci(ratio, ratio_interval, digits=2)}; movement with BN "
                f"{fmt_ci(*mean_ci(movement['with BN']), digits=2)}, without {fmt_ci(*mean_ci(movement['without BN']), digits=2)}",
                Effect("movement with BN / without BN (ratio)", ratio, ratio_interval, threshold=0.5, direction="below",
                       method="Student t of the paired log ratios, exponentiated"), run_seeds,
                weaker=Effect("movement with BN / without BN (ratio)", ratio, ratio_interval, threshold=1.0,
                              direction="below", method="Student t of the paired log ratios, exponentiated"))]
    plots = [curves_plot("Validation accuracy during training (each at its tuned rate)", "step",
                         "validation accuracy (%)", steps, {k: v.tolist() for k, v in curves.items()}, scale=100)]
    pct_steps = [0] + steps
    for name, arm in arms.items():
        pct = np.array(arm.runs[0]["percentiles"])
        plots.append(Plot(f"Last-layer sigmoid input, unit {cfg.unit}, {name} (seed {run_seeds[0]})", "step",
                          "input to the sigmoid",
                          {f"{p}th percentile": {"x": pct_steps[:len(pct)], "y": pct[:, i].tolist()}
                           for i, p in enumerate(PERCENTILES)}))
    table = Table("Final numbers (mean [95% CI] over seeds)",
                  ["network", "learning rate", "final test accuracy", "percentile movement"],
                  [[name, f"{arm.lr_chosen:g}", fmt_ci(*accuracy_ci(arm.test_accuracy), "%"),
                    fmt_ci(*mean_ci(movement[name]), digits=2)] for name, arm in arms.items()])
    notes = [f"The paper's network (3 x 100 sigmoid units, N(0, {cfg.init_std}^2) init, batch {cfg.batch_size}, "
             f"plain SGD) on {cfg.data}, {cfg.steps} steps. Each network chooses its learning rate (without BN from "
             f"{list(cfg.lr_grid)}, with BN from {list(cfg.bn_lr_grid)}) by final validation accuracy on the first {cfg.tune_seeds} seeds; all "
             f"{cfg.seeds} seeds run at it. Curves and percentiles use the validation split (percentiles in training "
             f"mode on a copy of the network: BN normalizes with the validation inputs' own statistics); the test "
             f"set is read once per run, at the end."]
    numbers = {"final accuracy": {name: float(np.mean(arm.test_accuracy)) for name, arm in arms.items()},
               "movement": {name: float(np.mean(v)) for name, v in movement.items()},
               "smallest lead": lead_estimate, "movement ratio": ratio}
    return Result(ID, TITLE, findings, [table], plots, notes, arms=[arm.to_json() for arm in arms.values()],
                  numbers=numbers)
