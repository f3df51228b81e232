"""E9: internal covariate shift as Santurkar et al. define it (the change of a layer's gradient when the layers
before it are updated), noisy BN (deliberate distribution shift after BN), and gradient predictiveness
(effective beta-smoothness along the gradient)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import progress
from ..data import load
from ..models import MLP
from ..protocol import Finding, Result, stat, verdict
from ..train import seed_everything, shuffled_batches, train
from ._common import bar_plot, curve_plot, pct, table

ID = "E9"
TITLE = "Internal covariate shift (Santurkar et al.), noisy BN, smoothness"

NAMES = {"none": "no BN", "batch": "BN", "noisy_batch": "noisy BN"}


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 3  # seeds per network
    steps: int = 400  # SGD steps per run
    batch_size: int = 64  # mini-batch size
    lr: float = 0.1  # SGD learning rate (no momentum, as the ICS definition uses one plain gradient step)
    hidden: tuple = (64, 64, 64, 64)  # hidden widths of the ReLU MLP
    measure_every: int = 100  # steps between ICS / smoothness measurements
    step_multipliers: tuple = (0.5, 1.0, 2.0, 4.0)  # step sizes (x lr) probed along the gradient


QUICK = dict(seeds=1, steps=100, measure_every=50)
FULL = dict(seeds=5, steps=3000, measure_every=250)


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


def run(cfg: Config) -> Result:
    data = load(cfg.data)
    acc, ics, cosine, beta, loss_range = {}, {}, {}, {}, {}
    for norm, seed in progress.jobs([(n, s) for n in NAMES for s in range(cfg.seeds)]):
        seed_everything(seed)
        model = MLP(data.num_inputs, cfg.hidden, activation="relu", norm=norm)
        probe = shuffled_batches(len(data.y_train), cfg.batch_size, torch.Generator().manual_seed(1000 + seed))
        series = {"ics": [], "cos": [], "beta": [], "range": []}

        def measure(step, net, loss=None):
            if norm == "noisy_batch" or step % cfg.measure_every:
                return
            index = next(probe)
            x, y = data.x_train[index], data.y_train[index]
            state = torch.get_rng_state()
            r, c = internal_covariate_shift(net, x, y, cfg.lr)
            b, lr_range = smoothness(net, x, y, cfg.lr, cfg.step_multipliers)
            torch.set_rng_state(state)
            for key, value in zip(series, (r, c, b, lr_range)):
                series[key].append(value)

        h = train(model, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, on_step=measure)
        acc.setdefault(norm, []).append(h.final_accuracy)
        if norm != "noisy_batch":
            for store, key in ((ics, "ics"), (cosine, "cos"), (beta, "beta"), (loss_range, "range")):
                store.setdefault(norm, []).append(series[key])
    final = {k: stat(v) for k, v in acc.items()}
    mean_of = lambda store, k: stat([float(np.mean(s)) for s in store[k]])  # noqa: E731
    ics_s = {k: mean_of(ics, k) for k in ics}
    cos_s = {k: mean_of(cosine, k) for k in cosine}
    beta_s = {k: mean_of(beta, k) for k in beta}
    range_s = {k: mean_of(loss_range, k) for k in loss_range}
    findings = [
        Finding("BN works by reducing internal covariate shift",
                "Santurkar et al. 2018, Fig. 5: by Def. 2.1 (||G - G'||, cos(G, G')) BN networks often show as "
                "much or *more* ICS than networks without BN.",
                "relative ICS = ||G - G'|| / ||G|| averaged over layers and measurements; holds if BN's is <= 0.8x "
                "no-BN's; partly if smaller",
                verdict(ics_s["batch"].mean <= 0.8 * ics_s["none"].mean, ics_s["batch"].mean < ics_s["none"].mean),
                f"relative ICS: BN {ics_s['batch']}, no BN {ics_s['none']}; cos(G, G'): BN {cos_s['batch']}, "
                f"no BN {cos_s['none']}"),
        Finding("A network with BN followed by deliberate, changing distribution shift ('noisy BN') trains about "
                "as well as BN",
                "Santurkar et al. 2018, Fig. 2: noisy BN trains about as well as BN despite severe shift.",
                "holds if noisy BN's test accuracy is within 3 points of BN's; partly if within 10 points and "
                "above no BN",
                verdict(final["noisy_batch"].mean >= final["batch"].mean - 0.03,
                        final["noisy_batch"].mean >= final["batch"].mean - 0.10
                        and final["noisy_batch"].mean > final["none"].mean),
                f"test: noisy BN {pct(final['noisy_batch'])}, BN {pct(final['batch'])}, no BN "
                f"{pct(final['none'])}"),
        Finding("BN makes the loss landscape smoother (more predictive gradients)",
                "Santurkar et al. 2018, Fig. 4: along the gradient, the loss and the gradient change much less with "
                "BN (effective beta-smoothness; up to ~100x early in training).",
                "along the gradient g (steps eta = multiplier x lr): the gradient's change, as effective "
                "beta-smoothness max ||grad(w - eta g) - grad(w)|| / ||eta g||, and the loss's change, max - min "
                "of L(w - eta g); each averaged over measurements; holds if both are <= 0.5x no-BN's; partly if "
                "one is",
                verdict(beta_s["batch"].mean <= 0.5 * beta_s["none"].mean
                        and range_s["batch"].mean <= 0.5 * range_s["none"].mean,
                        beta_s["batch"].mean <= 0.5 * beta_s["none"].mean
                        or range_s["batch"].mean <= 0.5 * range_s["none"].mean),
                f"beta-smoothness: BN {beta_s['batch']}, no BN {beta_s['none']}; loss range along the gradient: "
                f"BN {range_s['batch']}, no BN {range_s['none']}"),
    ]
    steps = list(range(cfg.measure_every, cfg.steps + 1, cfg.measure_every))
    plots = [curve_plot("Internal covariate shift ||G - G'|| / ||G||", "step", "relative ICS", steps,
                        {NAMES[k]: ics[k] for k in ics}),
             curve_plot("Effective beta-smoothness along the gradient", "step", "beta", steps,
                        {NAMES[k]: beta[k] for k in beta}, logy=True),
             bar_plot("Test accuracy", "test accuracy", {"test": {NAMES[k]: final[k] for k in NAMES}})]
    rows = {NAMES[k]: [pct(final[k]), str(ics_s.get(k, "-")), str(cos_s.get(k, "-")), str(beta_s.get(k, "-"))]
            for k in NAMES}
    notes = [f"ReLU MLP {cfg.hidden} on {cfg.data}, plain SGD lr {cfg.lr}, batch {cfg.batch_size}, {cfg.steps} steps; "
             f"ICS and smoothness measured every {cfg.measure_every} steps on a fresh training batch, in training "
             f"mode (batch statistics), as in Santurkar et al. (who used VGG on CIFAR-10)."]
    return Result(ID, TITLE, findings,
                  [table("Numbers", ["network", "test accuracy", "relative ICS", "cos(G, G')", "beta"], rows)],
                  plots, notes, numbers={"final accuracy": {NAMES[k]: v.mean for k, v in final.items()},
                                         "relative ICS": {NAMES[k]: v.mean for k, v in ics_s.items()},
                                         "cos": {NAMES[k]: v.mean for k, v in cos_s.items()},
                                         "beta": {NAMES[k]: v.mean for k, v in beta_s.items()}})
