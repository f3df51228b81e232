"""E16: gradient explosion at initialization: per-layer weight-gradient norms of deep ReLU MLPs (depth 10-50) with
BN and no shortcuts, without BN, and with BN and identity shortcuts (Yang et al. 2019)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data import load
from ..jobs import run_jobs
from ..models_deep import DeepMLP
from ..protocol import Effect, Finding, Plot, Result, Table, fmt_ci, mean_ci, seeds

ID = "E16"
TITLE = "Gradient explosion at initialization: deep BN networks without skip connections"

ARMS = {"BN, no shortcuts": dict(norm="batch", residual=False),
        "no BN (He init)": dict(norm="none", residual=False),
        "BN + shortcuts": dict(norm="batch", residual=True)}
ANCHOR = ("Yang et al. 2019 (arXiv 1902.08129): in deep feed-forward networks without skip connections, BN makes "
          "gradients explode at initialization, geometrically with depth; residual connections avoid it.")
# A gradient ratio (first / last hidden layer) that grows by at least 2x every 10 layers is an explosion: ~1000x
# over 100 layers. He-initialized ReLU networks without BN keep the ratio near 1 at any depth.
RATE_THRESHOLD = math.log10(2.0)


@dataclass
class Config:
    data: str = "digits"  # dataset (a batch of training samples is the input)
    seeds: int = 10  # seeds (initializations and batches); each is cheap: one forward/backward per network
    seed_base: int = 0  # first seed (--seed-base)
    depths: tuple = (10, 20, 30, 50)  # hidden layers
    width: int = 64  # hidden units per layer
    batch_size: int = 64  # samples in the batch whose loss is differentiated


QUICK = dict(seeds=3, depths=(4, 12))
FULL = dict(seeds=20, depths=(10, 20, 30, 50, 100))


def gradient_norms(data: str, depth: int, width: int, norm: str, residual: bool, batch_size: int,
                   seed: int) -> dict:
    """Norms of d loss / d W for each hidden layer (input side first) of a freshly initialized network, in train
    mode on one random batch; and log10(first / last)."""
    torch.manual_seed(seed)
    dataset = load(data)
    model = DeepMLP(dataset.num_inputs, depth, width, dataset.num_classes, norm=norm, residual=residual)
    index = torch.randperm(len(dataset.y_train), generator=torch.Generator().manual_seed(seed))[:batch_size]
    loss = torch.nn.functional.cross_entropy(model(dataset.x_train[index]), dataset.y_train[index])
    loss.backward()
    norms = [float(layer.weight.grad.norm()) for layer in model.hidden]
    return {"norms": norms, "log10_ratio": math.log10(norms[0] / norms[-1])}


def _rate(depths: list[int], log_ratios: list[float]) -> float:
    """Least-squares slope of log10(first / last) against depth, in decades per 10 layers."""
    return 10.0 * float(np.polyfit(np.asarray(depths, float), np.asarray(log_ratios, float), 1)[0])


def run(cfg: Config) -> Result:
    seed_list = seeds(cfg)
    calls = [(arm, depth, seed) for arm in ARMS for depth in cfg.depths for seed in seed_list]
    results = run_jobs(gradient_norms, [dict(data=cfg.data, depth=depth, width=cfg.width, batch_size=cfg.batch_size,
                                             seed=seed, **ARMS[arm]) for arm, depth, seed in calls])
    by = dict(zip(calls, results))
    ratio = {arm: {d: [by[(arm, d, s)]["log10_ratio"] for s in seed_list] for d in cfg.depths} for arm in ARMS}
    rate = {arm: [_rate(list(cfg.depths), [by[(arm, d, s)]["log10_ratio"] for d in cfg.depths]) for s in seed_list]
            for arm in ARMS}
    effects = {arm: Effect(f"{arm}: growth of log10(|grad W_1| / |grad W_L|), decades per 10 layers",
                           *mean_ci(rate[arm]), threshold=RATE_THRESHOLD,
                           direction="above" if arm == "BN, no shortcuts" else "below") for arm in ARMS}
    deepest = max(cfg.depths)

    def evidence(arm: str) -> str:
        at_deepest = mean_ci(ratio[arm][deepest])
        return (f"{arm}: {fmt_ci(*mean_ci(rate[arm]), 'decades per 10 layers', digits=2)}; at depth {deepest} the first "
                f"layer's gradient is 10^{fmt_ci(*at_deepest, digits=2)} times the last's "
                f"(threshold {RATE_THRESHOLD:.2f} decades per 10 layers = 2x)")

    criterion = (f"fit log10(|grad W_1| / |grad W_L|) (first over last hidden layer's weight-gradient norm, at "
                 f"initialization, one batch of {cfg.batch_size}) against depth {', '.join(map(str, cfg.depths))} per "
                 f"seed; the slope in decades per 10 layers, 95% Student-t interval over seeds")
    findings = [
        Finding("Batch norm without skip connections makes gradients explode at initialization, geometrically "
                "with depth", ANCHOR,
                f"{criterion}; holds if the interval for BN without shortcuts lies above {RATE_THRESHOLD:.2f} "
                f"(the ratio at least doubles every 10 layers)", evidence("BN, no shortcuts"),
                effects["BN, no shortcuts"], seeds=seed_list),
        Finding("The explosion comes from BN, not from depth: the same network without BN (He init) does not "
                "explode", ANCHOR,
                f"{criterion}; holds if the interval without BN lies below {RATE_THRESHOLD:.2f}",
                evidence("no BN (He init)"), effects["no BN (He init)"], seeds=seed_list),
        Finding("Identity shortcuts remove BN's gradient explosion", ANCHOR,
                f"{criterion}; holds if the interval for BN with shortcuts x <- x + relu(BN(W x)) lies below "
                f"{RATE_THRESHOLD:.2f}", evidence("BN + shortcuts"), effects["BN + shortcuts"], seeds=seed_list),
    ]
    plots = [
        Plot("log10(first / last layer's gradient norm) at initialization", "hidden layers",
             "log10(|grad W_1| / |grad W_L|)",
             {arm: {"x": list(cfg.depths), "y": [mean_ci(ratio[arm][d])[0] for d in cfg.depths],
                    "err": [mean_ci(ratio[arm][d])[0] - mean_ci(ratio[arm][d])[1][0] for d in cfg.depths],
                    "points": [ratio[arm][d] for d in cfg.depths]} for arm in ARMS}),
        Plot(f"Weight-gradient norm per layer at depth {deepest} (mean over seeds)", "layer (input side first)",
             "|grad W_l|",
             {arm: {"x": list(range(1, deepest + 1)),
                    "y": np.mean([by[(arm, deepest, s)]["norms"] for s in seed_list], 0).tolist()} for arm in ARMS},
             logy=True),
    ]
    rows = [[arm, *[fmt_ci(*mean_ci(ratio[arm][d]), digits=2) for d in cfg.depths], fmt_ci(*mean_ci(rate[arm]), digits=2)]
            for arm in ARMS]
    notes = [f"ReLU MLPs of width {cfg.width} on {cfg.data} (first hidden layer maps the {load(cfg.data).num_inputs} "
             f"inputs to {cfg.width}), weights N(0, 2/fan_in), no training: one forward and backward pass in train "
             f"mode on a random batch of {cfg.batch_size} per seed. Gradient norms are Frobenius norms of "
             f"d loss / d W_l. The residual network adds x to each layer's output from the second layer on, so it "
             f"has exactly the same weights as the plain one. The threshold (2x per 10 layers) separates geometric "
             f"growth from the sub-geometric drift of He-initialized networks; nothing is trained, so there is no "
             f"learning rate to tune.",
             "Mean-field theory predicts the explosion rate for infinitely wide layers and large batches; at width "
             f"{cfg.width} and batch {cfg.batch_size} the measured rate is what these networks have."]
    return Result(ID, TITLE, findings,
                  [Table("log10(|grad W_1| / |grad W_L|) at initialization, mean [95% CI]",
                         ["network", *[f"depth {d}" for d in cfg.depths], "decades per 10 layers"], rows)],
                  plots, notes, numbers={"decades per 10 layers": {arm: float(np.mean(rate[arm])) for arm in ARMS},
                                         "log10 ratio": {arm: {str(d): float(np.mean(ratio[arm][d]))
                                                               for d in cfg.depths} for arm in ARMS}})
