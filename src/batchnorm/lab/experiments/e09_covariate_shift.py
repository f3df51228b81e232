"""E9: internal covariate shift as Santurkar et al. define it (the change of a layer's gradient when the layers
before it are updated), noisy BN (deliberate distribution shift after BN), and gradient predictiveness
(effective beta-smoothness along the gradient), measured where the networks have reached the same training loss
(not after the same number of steps), each network at its own tuned learning rate."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models import MLP
from ..protocol import (accuracy_ci, Effect, Finding, Plot, Result, diff_ci, fmt_ci, mean_ci, ratio_ci, seeds,
                        tune_and_run)
from ..train import seed_everything, train
from ._cnn import accuracy_plot, arm_rows, cached_data

ID = "E9"
TITLE = "Internal covariate shift (Santurkar et al.), noisy BN, smoothness at matched loss"


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 5  # seeds per arm for the reported numbers
    seed_base: int = 0  # first seed (the runner's --seed-base)
    steps: int = 500  # SGD steps per run
    batch_size: int = 64  # mini-batch size
    lr_grid: tuple = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # learning rates tried per arm (plain SGD, no momentum;
    # BN chose 0.03, the old lowest, on digits, and 1.0, the old highest, on mnist5k)
    tune_seeds: int = 2  # seeds that choose each arm's rate (on validation)
    hidden: tuple = (64, 64, 64, 64)  # hidden widths of the ReLU MLP
    loss_levels: tuple = (1.5, 0.8, 0.4)  # training losses at which ICS and smoothness are measured
    probe_lr: float = 0.1  # the step of the ICS definition and the unit of the smoothness probes (same for all)
    step_multipliers: tuple = (0.5, 1.0, 2.0, 4.0)  # step sizes (x probe_lr) probed along the gradient
    probe_size: int = 128  # training samples of the fixed probe batch


QUICK = dict(seeds=2, tune_seeds=1, steps=150, loss_levels=(1.5, 1.0))
FULL = dict(seeds=10, steps=2000, loss_levels=(1.5, 1.0, 0.6, 0.4, 0.2))

NAMES = {"none": "no BN", "batch": "BN", "noisy_batch": "noisy BN"}


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return float(loss.detach()), [p.grad.detach().clone() for p in model.parameters()]


def internal_covariate_shift(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float, float]:
    """Santurkar et al. Def. 2.1, per hidden layer i >= 2: G = dL/dW_i at the current weights; G' = the same
    after one SGD step (lr) on layers 1..i-1 only. Returns (mean ||G - G'|| / ||G||, mean cos(G, G'))."""
    base = copy.deepcopy(model)
    _, grads = _grads(base, x, y)
    params = list(base.parameters())
    linears = _linears(base)
    rel, cos = [], []
    for i in range(1, len(linears)):
        shifted = copy.deepcopy(base)
        shifted_params = list(shifted.parameters())
        target = linears[i].weight
        target_index = next(k for k, p in enumerate(params) if p is target)
        with torch.no_grad():
            for k in range(target_index):  # every parameter before layer i's weight (earlier layers)
                shifted_params[k] -= lr * grads[k]
        _, new = _grads(shifted, x, y)
        g, g2 = grads[target_index].flatten(), new[target_index].flatten()
        rel.append(float((g - g2).norm() / g.norm().clamp_min(1e-12)))
        cos.append(float(torch.nn.functional.cosine_similarity(g, g2, dim=0)))
    return float(np.mean(rel)), float(np.mean(cos))


def smoothness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
               multipliers: tuple) -> tuple[float, float]:
    """Along the gradient g: effective beta-smoothness max_eta ||grad(w - eta g) - grad(w)|| / ||eta g|| and the
    loss range max - min of L(w - eta g), eta = multiplier * lr (Santurkar et al. Fig. 4)."""
    base = copy.deepcopy(model)
    loss0, grads = _grads(base, x, y)
    g_norm = float(torch.sqrt(sum((g ** 2).sum() for g in grads)))
    betas, losses = [], [loss0]
    for m in multipliers:
        eta = m * lr
        moved = copy.deepcopy(base)
        with torch.no_grad():
            for p, g in zip(moved.parameters(), grads):
                p -= eta * g
        loss, new = _grads(moved, x, y)
        losses.append(loss)
        diff = float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(new, grads))))
        betas.append(diff / max(eta * g_norm, 1e-12))
    return max(betas), max(losses) - min(losses)


def measure_job(*, lr: float, seed: int, data: str, norm: str, steps: int, batch_size: int, hidden: tuple,
                loss_levels: tuple, probe_lr: float, step_multipliers: tuple, probe_size: int) -> dict:
    """Train the ReLU MLP with `norm` by plain SGD; each time the smoothed training loss first falls below a level
    of `loss_levels`, measure ICS and smoothness on a fixed probe batch (training mode, on a copy of the network).

    The smoothed training loss is an exponential average (weight 0.1) of the mini-batch losses. Levels not reached
    give NaN. Returns val/test accuracy and, per level, relative ICS, cos(G, G'), beta-smoothness, loss range.
    """
    dataset = cached_data(data)
    seed_everything(seed)
    model = MLP(dataset.num_inputs, tuple(hidden), activation="relu", norm=norm)
    probe = torch.randperm(len(dataset.y_train), generator=torch.Generator().manual_seed(10_000 + seed))[:probe_size]
    x_probe, y_probe = dataset.x_train[probe], dataset.y_train[probe]
    levels = list(loss_levels)
    found: dict[str, list[float]] = {key: [math.nan] * len(levels) for key in ("ics", "cos", "beta", "range", "step")}
    state = {"smooth": None, "next": 0}

    def on_step(step: int, net: nn.Module, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        state["smooth"] = value if state["smooth"] is None else 0.9 * state["smooth"] + 0.1 * value
        while state["next"] < len(levels) and state["smooth"] <= levels[state["next"]]:
            i = state["next"]
            if norm != "noisy_batch":
                rng = torch.get_rng_state()
                found["ics"][i], found["cos"][i] = internal_covariate_shift(net, x_probe, y_probe, probe_lr)
                found["beta"][i], found["range"][i] = smoothness(net, x_probe, y_probe, probe_lr,
                                                                 tuple(step_multipliers))
                torch.set_rng_state(rng)
            found["step"][i] = float(step)
            state["next"] += 1

    history = train(model, dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, on_step=on_step)
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy,
            "diverged": bool(history.diverged), **found}


def _per_seed(arm, key: str, levels: list[int]) -> list[float]:
    """Mean over the given level indices of `key`, per seed."""
    return [float(np.mean([run[key][i] for i in levels])) for run in arm.runs]


def run(cfg: Config) -> Result:
    run_seeds = seeds(cfg)
    arms = tune_and_run(measure_job, {NAMES[n]: dict(norm=n) for n in NAMES}, grid=cfg.lr_grid, seeds=run_seeds,
                        tune_seeds=cfg.tune_seeds, data=cfg.data, steps=cfg.steps, batch_size=cfg.batch_size,
                        hidden=tuple(cfg.hidden), loss_levels=tuple(cfg.loss_levels), probe_lr=cfg.probe_lr,
                        step_multipliers=tuple(cfg.step_multipliers), probe_size=cfg.probe_size)
    bn, none, noisy = arms["BN"], arms["no BN"], arms["noisy BN"]
    # levels every run of both measured arms reached (a level not reached cannot be matched)
    levels = [i for i in range(len(cfg.loss_levels))
              if all(math.isfinite(run["ics"][i]) for arm in (bn, none) for run in arm.runs)]
    unreached = [cfg.loss_levels[i] for i in range(len(cfg.loss_levels)) if i not in levels]
    acc_noisy = diff_ci(noisy.test_accuracy, bn.test_accuracy, scale=100)
    noisy_effect = Effect("noisy BN - BN, test accuracy (points)", *acc_noisy, threshold=3.0, direction="within")

    def pct(arm) -> str:
        return fmt_ci(*accuracy_ci(arm.test_accuracy), "%")

    level_text = ", ".join(f"{cfg.loss_levels[i]:g}" for i in levels)
    anchor_ics = ("Santurkar et al. 2018 (arXiv 1805.11604), Fig. 5: by Def. 2.1 (||G - G'||, cos(G, G')) BN networks "
                  "often show as much or *more* ICS than networks without BN.")
    anchor_smooth = ("Santurkar et al. 2018 (arXiv 1805.11604), Fig. 4: along the gradient, the loss and the gradient "
                     "change much less with BN (effective beta-smoothness; up to ~100x early in training).")
    noisy_finding = Finding(
        "A network with BN followed by deliberate, changing distribution shift ('noisy BN') trains about as well as BN",
        "Santurkar et al. 2018 (arXiv 1805.11604), Fig. 2: noisy BN trains about as well as BN despite severe shift.",
        "each at its own rate; 'about as well' is two-sided: holds if the 95% interval of noisy BN - BN (test "
        "accuracy, paired seeds) lies inside (-3, +3) points, does not hold if it lies entirely outside, "
        "inconclusive otherwise.",
        f"test: noisy BN {pct(noisy)}, BN {pct(bn)}, no BN {pct(none)}; noisy - BN "
        f"{fmt_ci(*acc_noisy, 'points')}", noisy_effect, run_seeds)
    if not levels:
        reason = (f"no training-loss level of {list(cfg.loss_levels)} was reached by every run of both networks in "
                  f"{cfg.steps} steps, so ICS and smoothness cannot be compared at matched loss")
        findings = [Finding("BN works by reducing internal covariate shift", anchor_ics, "-", f"not run: {reason}",
                            verdict="not run"),
                    noisy_finding,
                    Finding("BN makes the loss landscape smoother (more predictive gradients)", anchor_smooth, "-",
                            f"not run: {reason}", verdict="not run")]
        ics_ratio = beta_ratio = range_ratio = (math.nan, (math.nan, math.nan))
    else:
        ics_ratio = ratio_ci(_per_seed(bn, "ics", levels), _per_seed(none, "ics", levels))
        cos = (mean_ci(_per_seed(bn, "cos", levels)), mean_ci(_per_seed(none, "cos", levels)))
        beta_ratio = ratio_ci(_per_seed(bn, "beta", levels), _per_seed(none, "beta", levels))
        range_ratio = ratio_ci(_per_seed(bn, "range", levels), _per_seed(none, "range", levels))
        findings = [
            Finding("BN works by reducing internal covariate shift", anchor_ics,
                    f"relative ICS = ||G - G'|| / ||G|| (Def. 2.1, one SGD step of {cfg.probe_lr:g} on the earlier "
                    f"layers), averaged over layers and over the matched training-loss levels ({level_text}); "
                    f"holds if the 95% interval of the ratio BN / no BN (geometric mean over seeds) lies below 0.8 "
                    f"(a reduction by a fifth or more), does not hold if above.",
                    f"relative ICS ratio BN / no BN {fmt_ci(*ics_ratio, digits=2)}; cos(G, G'): BN "
                    f"{fmt_ci(*cos[0], digits=3)}, no BN {fmt_ci(*cos[1], digits=3)}",
                    Effect("relative ICS, BN / no BN (ratio)", *ics_ratio, threshold=0.8, direction="below",
                           method="Student t over seeds of the log ratio, exponentiated"), run_seeds),
            noisy_finding,
            Finding("BN makes the loss landscape smoother (more predictive gradients)", anchor_smooth,
                    f"at matched training loss ({level_text}), along the gradient g with steps eta = "
                    f"{list(cfg.step_multipliers)} x {cfg.probe_lr:g} (the same for both networks): effective "
                    f"beta-smoothness max ||grad(w - eta g) - grad(w)|| / ||eta g||; holds if the 95% interval of "
                    f"the ratio BN / no BN lies below 0.5 (at least 2x smoother), does not hold if above; partly "
                    f"holds if it is only below 1 (smoother, by less than 2x).",
                    f"beta-smoothness ratio BN / no BN {fmt_ci(*beta_ratio, digits=2)}; loss range along the "
                    f"gradient, ratio {fmt_ci(*range_ratio, digits=2)}",
                    Effect("beta-smoothness, BN / no BN (ratio)", *beta_ratio, threshold=0.5, direction="below",
                           method="Student t over seeds of the log ratio, exponentiated"), run_seeds,
                    weaker=Effect("beta-smoothness, BN / no BN (ratio), weaker: below 1", *beta_ratio,
                                  threshold=1.0, direction="below",
                                  method="Student t over seeds of the log ratio, exponentiated")),
        ]
    plots = [accuracy_plot("Test accuracy (each network at its own rate)", arms)]
    for key, label, log in (("ics", "relative ICS ||G - G'|| / ||G||", False), ("beta", "beta-smoothness", True)):
        lines = {}
        for name, arm in (("BN", bn), ("no BN", none)):
            per_level = [[run[key][i] for run in arm.runs] for i in levels]
            lines[name] = {"x": [cfg.loss_levels[i] for i in levels],
                           "y": [float(np.mean(v)) for v in per_level], "points": per_level}
        plots.append(Plot(f"{label} at matched training loss", "training loss (smoothed)", label, lines, logy=log))
    steps_at = {name: [float(np.mean(reached)) if (reached := [run["step"][i] for run in arm.runs
                                                                if math.isfinite(run["step"][i])]) else math.nan
                       for i in range(len(cfg.loss_levels))]
                for name, arm in (("BN", bn), ("no BN", none))}
    notes = [
        f"ReLU MLP {tuple(cfg.hidden)} on {cfg.data}, plain SGD, batch {cfg.batch_size}, {cfg.steps} steps; every "
        f"network at its own learning rate from {list(cfg.lr_grid)} (validation accuracy on the first "
        f"{cfg.tune_seeds} seeds), {len(run_seeds)} seeds.",
        f"Matched loss, not matched step: BN trains faster, so at a given step it sits in another part of the "
        f"landscape. ICS and smoothness are measured when the smoothed training loss (exponential average of "
        f"mini-batch losses) first falls below {list(cfg.loss_levels)}, on a fixed probe batch of "
        f"{cfg.probe_size} training images, in training mode, on a copy of the network. Mean step at which each "
        f"level was reached: " + "; ".join(f"{name}: " + ", ".join(f"{l:g} at {s:.0f}" if math.isfinite(s) else
                                                                 f"{l:g} not reached"
                                                                 for l, s in zip(cfg.loss_levels, at))
                                           for name, at in steps_at.items()) + ".",
        "ICS by Santurkar et al.'s Def. 2.1: G = dL/dW_i at the current weights, G' = the same after one SGD step "
        f"(lr {cfg.probe_lr:g}, the same for both networks) on layers 1..i-1 only; averaged over layers i >= 2. "
        "Noisy BN (batchnorm.lab.models.NoisyShift after each BN) is measured for accuracy only.",
    ]
    if unreached:
        notes.append(f"Levels not reached by every run of both networks, left out of the comparison: {unreached}.")
    return Result(ID, TITLE, findings, [arm_rows(arms)], plots, notes, arms=[a.to_json() for a in arms.values()],
                  numbers={"test accuracy": {name: float(np.mean(arm.test_accuracy)) for name, arm in arms.items()},
                           "ICS ratio": ics_ratio[0], "beta ratio": beta_ratio[0], "range ratio": range_ratio[0],
                           "matched levels": [cfg.loss_levels[i] for i in levels]})
