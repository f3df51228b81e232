"""E17: BN + weight decay sets the effective learning rate: scale invariance of the weights before BN, their norm
growing without decay, the effective rate lr / ||w||^2 over training, and what weight decay does to accuracy
compared with a constant effective rate (van Laarhoven 2017; Zhang et al. 2019)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data import load
from ..jobs import run_jobs
from ..models import MLP
from ..protocol import (accuracy_ci, Effect, Finding, Plot, Result, Table, diff_ci, fmt_ci, mean_ci, ratio_ci, seeds,
                        tune_and_run)
from ..train import evaluate, seed_everything, shuffled_batches

ID = "E17"
TITLE = "BN + weight decay: the effective learning rate lr / ||w||^2"

ANCHOR = ("van Laarhoven 2017 (arXiv 1706.05350): a BN layer's output does not depend on the scale of the weights "
          "before it, so L2 on them does not regularize the function; it shrinks ||w|| and so raises the effective "
          "learning rate (~ lr / ||w||^2). Zhang et al. 2019 (arXiv 1810.12281) measure the same in BN networks.")
# the three ways to treat the weights before BN: no decay (their norm grows), L2 weight decay on them, and no decay
# with each weight matrix projected back to its initial norm after every step (a constant effective rate)
ARMS = {"no decay": "none", "weight decay": "decay", "fixed norm": "project"}


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 5  # seeds per arm for the reported numbers
    seed_base: int = 0  # first seed (--seed-base)
    tune_seeds: int = 2  # seeds the learning rate is chosen on (final validation accuracy)
    lr_grid: tuple = (0.001, 0.003, 0.01, 0.03, 0.1)  # SGD learning rates (momentum 0.9) tried for every arm
    # (100x; weight decay chose 0.003, the old lowest, on mnist5k)
    weight_decay: float = 5e-3  # L2 coefficient on the weights before BN (the "weight decay" arm)
    mechanism_lr: float = 0.1  # the common rate at which the norms and effective rates of the arms are compared
    steps: int = 1000  # SGD steps per run (several times 1 / (lr * weight_decay / (1 - momentum)))
    batch_size: int = 64  # mini-batch size
    hidden: tuple = (100, 100, 100)  # hidden widths of the ReLU MLP (Linear -> BN -> ReLU)
    record_every: int = 50  # steps between weight-norm records
    scale: float = 10.0  # factor applied to the weights before BN in the scale-invariance check


QUICK = dict(seeds=2, tune_seeds=1, steps=40, record_every=10, hidden=(32, 32))
FULL = dict(seeds=10, steps=5000, record_every=250)


def _pre_bn_weights(model: MLP) -> list[torch.Tensor]:
    """The hidden linear layers' weights: each is followed by BN, so the network is invariant to their scale."""
    return [m.weight for m in model.net if isinstance(m, torch.nn.Linear)][:-1]


def train_bn_mlp(data: str, treatment: str, lr: float, seed: int, steps: int, batch_size: int, hidden: list,
                 weight_decay: float, record_every: int) -> dict:
    """Train a BN MLP with SGD (momentum 0.9) and the given treatment of the weights before BN ('none', 'decay':
    L2 on them, 'project': rescale each to its initial norm after every step); record their norms."""
    seed_everything(seed)
    dataset = load(data)
    model = MLP(dataset.num_inputs, tuple(hidden), dataset.num_classes, activation="relu", norm="batch")
    pre_bn = _pre_bn_weights(model)
    others = [p for p in model.parameters() if all(p is not w for w in pre_bn)]
    decay = weight_decay if treatment == "decay" else 0.0
    opt = torch.optim.SGD([{"params": pre_bn, "weight_decay": decay}, {"params": others, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9)
    initial = [float(w.detach().norm()) for w in pre_bn]
    batches = shuffled_batches(len(dataset.y_train), batch_size, torch.Generator().manual_seed(seed))
    record_steps, norms, diverged = [0], [initial], False
    model.train()
    for step in range(1, steps + 1):
        index = next(batches)
        loss = torch.nn.functional.cross_entropy(model(dataset.x_train[index]), dataset.y_train[index])
        if not math.isfinite(loss.item()):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if treatment == "project":
            with torch.no_grad():
                for w, n in zip(pre_bn, initial):
                    w.mul_(n / w.norm())
        if step % record_every == 0 or step == steps:
            record_steps.append(step)
            norms.append([float(w.detach().norm()) for w in pre_bn])
    # effective rate relative to the start: mean over layers of (||w_0|| / ||w_t||)^2
    relative = [float(np.mean([(n0 / n) ** 2 for n0, n in zip(initial, row)])) for row in norms]
    return {"val_accuracy": evaluate(model, dataset.x_val, dataset.y_val),
            "test_accuracy": evaluate(model, dataset.x_test, dataset.y_test), "diverged": diverged,
            "record_steps": record_steps, "norm_growth": float(np.mean([n / n0 for n0, n in zip(initial, norms[-1])])),
            "relative_effective_lr": relative, "effective_lr_end": lr * float(np.mean([1 / n ** 2 for n in norms[-1]]))}


def scale_invariance(data: str, seed: int, hidden: list, scale: float, batch_size: int) -> dict:
    """Multiply every weight before BN by `scale`: the largest relative change of the training-mode output, and
    scale * |grad| (scaled) / |grad| (original) for those weights (1 if the gradient scales as 1 / scale)."""
    seed_everything(seed)
    dataset = load(data)
    model = MLP(dataset.num_inputs, tuple(hidden), dataset.num_classes, activation="relu", norm="batch")
    index = torch.randperm(len(dataset.y_train), generator=torch.Generator().manual_seed(seed))[:batch_size]
    x, y = dataset.x_train[index], dataset.y_train[index]

    def forward_backward():
        model.zero_grad()
        out = model(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        return out.detach(), [float(w.grad.norm()) for w in _pre_bn_weights(model)]

    out, grads = forward_backward()
    with torch.no_grad():
        for w in _pre_bn_weights(model):
            w.mul_(scale)
    out_scaled, grads_scaled = forward_backward()
    return {"output_change": float((out_scaled - out).abs().max() / out.abs().max()),
            "gradient_ratio": float(np.mean([scale * g2 / g for g, g2 in zip(grads, grads_scaled)]))}


def run(cfg: Config) -> Result:
    seed_list = seeds(cfg)
    common = dict(data=cfg.data, steps=cfg.steps, batch_size=cfg.batch_size, hidden=list(cfg.hidden),
                  weight_decay=cfg.weight_decay, record_every=cfg.record_every)
    arms = tune_and_run(train_bn_mlp, {name: dict(common, treatment=t) for name, t in ARMS.items()},
                        grid=list(cfg.lr_grid), seeds=seed_list, tune_seeds=cfg.tune_seeds)
    mechanism_calls = [(name, s) for name in ("no decay", "weight decay") for s in seed_list]
    extra = run_jobs(train_bn_mlp, [dict(common, treatment=ARMS[name], lr=cfg.mechanism_lr, seed=s)
                                    for name, s in mechanism_calls])
    extra += run_jobs(scale_invariance, [dict(data=cfg.data, seed=s, hidden=list(cfg.hidden), scale=cfg.scale,
                                              batch_size=cfg.batch_size) for s in seed_list])
    mech = {name: [r for (n, _), r in zip(mechanism_calls, extra) if n == name] for name in ("no decay", "weight decay")}
    invariance = extra[len(mechanism_calls):]

    change = [r["output_change"] for r in invariance]
    grad_ratio = [r["gradient_ratio"] for r in invariance]
    invariant = Effect(f"largest relative output change when the weights before BN are scaled x{cfg.scale:g}",
                       *mean_ci(change), threshold=1e-3, direction="below")
    growth = [r["norm_growth"] for r in mech["no decay"]]
    grows = Effect("||w_T|| / ||w_0|| without decay (mean over layers)", *mean_ci(growth), threshold=1.0)
    eff = Effect("effective rate at the end, weight decay / no decay, ratio",
                 *ratio_ci([r["effective_lr_end"] for r in mech["weight decay"]],
                           [r["effective_lr_end"] for r in mech["no decay"]]), threshold=2.0)
    test = {name: arm.test_accuracy for name, arm in arms.items()}
    helps = Effect("weight decay - no decay, test accuracy (points)",
                   *diff_ci(test["weight decay"], test["no decay"], scale=100), threshold=1.0)
    same = Effect("weight decay - fixed norm, test accuracy (points)",
                  *diff_ci(test["weight decay"], test["fixed norm"], scale=100), threshold=1.0, direction="within")

    def acc(name: str) -> str:
        return f"{name} {fmt_ci(*accuracy_ci(test[name]), '%')} (lr {arms[name].lr_chosen:g})"

    accuracies = ", ".join(acc(name) for name in ARMS)
    findings = [
        Finding("A BN layer's output does not depend on the scale of the weights before it (and their gradient "
                "scales inversely)", ANCHOR,
                f"freshly initialized BN MLP in train mode, one batch: multiply every weight before BN by "
                f"{cfg.scale:g}; largest |change of the output| / largest |output|, 95% t interval over seeds; holds "
                f"if it lies below 1e-3 (exact invariance up to eps: eps = 1e-5 inside the square root against "
                f"activation variances of ~0.1 moves each BN layer's output by ~eps / (2 var) ~ 1e-4)",
                f"output change {invariant.estimate:.1e} [{invariant.ci95[0]:.1e}, {invariant.ci95[1]:.1e}]; "
                f"{cfg.scale:g} x |grad| after scaling / |grad| before: {fmt_ci(*mean_ci(grad_ratio), digits=3)} (1 = "
                f"gradient scales as 1/{cfg.scale:g})",
                invariant, seeds=seed_list),
        Finding("Without weight decay, the norm of the weights before BN grows during training", ANCHOR,
                f"SGD (momentum 0.9) at lr {cfg.mechanism_lr:g} for {cfg.steps} steps without decay: ||w_T|| / ||w_0||"
                f" averaged over the hidden layers, 95% t interval over seeds; holds if it lies above 1 (the gradient "
                f"is orthogonal to w, so every step lengthens w)",
                f"growth {fmt_ci(grows.estimate, grows.ci95, 'x', digits=2)}; with weight decay "
                f"{cfg.weight_decay:g}: {fmt_ci(*mean_ci([r['norm_growth'] for r in mech['weight decay']]), 'x', digits=2)}",
                grows, seeds=seed_list),
        Finding("Weight decay on the weights before BN raises the effective learning rate lr / ||w||^2", ANCHOR,
                f"same rate lr {cfg.mechanism_lr:g}, same seeds, with and without L2 {cfg.weight_decay:g} on the "
                f"weights before BN: ratio of lr / ||w_T||^2 (mean over layers) at the end, paired, 95% t interval "
                f"of the mean log ratio; holds if it lies above 2 (decay at least doubles the effective rate)",
                f"ratio {fmt_ci(eff.estimate, eff.ci95, 'x', digits=2)}", eff, seeds=seed_list),
        Finding("Weight decay improves the test accuracy of a BN network", ANCHOR,
                "each arm at its own rate chosen on validation; paired difference weight decay - no decay over seeds, "
                "95% Student-t interval; holds if it lies above +1 point",
                f"{fmt_ci(helps.estimate, helps.ci95, 'points')}; {accuracies}", helps, seeds=seed_list),
        Finding("What weight decay does to a BN network's accuracy, a constant effective learning rate does too "
                "(it does not regularize the function)", ANCHOR,
                "each arm at its own rate chosen on validation; 'fixed norm' = no decay, each weight matrix before BN "
                "rescaled to its initial norm after every step (constant lr / ||w||^2); paired difference weight "
                "decay - fixed norm; 'does too' is two-sided: holds if the 95% interval lies inside (-1, +1) points, "
                "does not hold if it lies entirely outside, inconclusive otherwise",
                f"{fmt_ci(same.estimate, same.ci95, 'points')}; {accuracies}", same, seeds=seed_list),
    ]
    steps = mech["no decay"][0]["record_steps"]
    curve = {name: [r["relative_effective_lr"] for r in mech[name]] for name in mech}
    plots = [Plot(f"Effective learning rate relative to the start, (||w_0|| / ||w_t||)^2, at lr {cfg.mechanism_lr:g}",
                  "step", "relative effective rate",
                  {name: {"x": steps, "y": np.mean(v, 0).tolist(), "points": np.asarray(v).T.tolist()}
                   for name, v in curve.items()}, logy=True),
             Plot("Test accuracy (each arm at its tuned rate)", "arm", "test accuracy (%)",
                  {"test accuracy": {"x": list(ARMS), "y": [mean_ci(test[n], 100)[0] for n in ARMS],
                                     "points": [[100 * v for v in test[n]] for n in ARMS]}}, kind="bar")]
    rows = [[name, f"{arm.lr_chosen:g}", fmt_ci(*accuracy_ci(arm.test_accuracy), "%"),
             fmt_ci(*mean_ci([r["norm_growth"] for r in arm.runs]), "x", digits=2)] for name, arm in arms.items()]
    notes = [f"ReLU MLP {tuple(cfg.hidden)} with BN after every hidden linear layer (no bias) on {cfg.data}; SGD "
             f"momentum 0.9, batch {cfg.batch_size}, {cfg.steps} steps. Weight decay (L2 in the optimizer, "
             f"{cfg.weight_decay:g}) applies to the hidden linear weights only, the ones BN makes scale-invariant; "
             f"the classifier and BN's gamma/beta are never decayed. The mechanism (norms, effective rates) is "
             f"compared at one common rate ({cfg.mechanism_lr:g}); the accuracies at each arm's own rate from "
             f"{list(cfg.lr_grid)} (chosen on the first {cfg.tune_seeds} seeds' validation accuracy). With momentum "
             f"0.9 the decay shrinks w by ~lr * wd / (1 - momentum) = {cfg.mechanism_lr * cfg.weight_decay / 0.1:.1e} "
             f"per step at lr {cfg.mechanism_lr:g}, so {cfg.steps} steps reach the equilibrium norm."]
    return Result(ID, TITLE, findings,
                  [Table("Each arm at its tuned rate", ["arm", "lr", "test accuracy", "||w_T|| / ||w_0||"], rows)],
                  plots, notes, arms=[a.to_json() for a in arms.values()],
                  numbers={"output change": float(np.mean(change)), "norm growth": float(np.mean(growth)),
                           "effective lr ratio": eff.estimate,
                           "test accuracy": {n: float(np.mean(v)) for n, v in test.items()}})
