"""E13: BN before vs after the activation (ReLU), in a small CNN and an MLP, each placement at its own tuned
learning rate."""

from __future__ import annotations

from dataclasses import dataclass

from ..data import load
from ..models import CNN, MLP
from ..protocol import accuracy_ci, Effect, Finding, Result, Table, diff_ci, fmt_ci, mean_ci, seeds, tune_and_run
from ..train import seed_everything, train
from ._figures import points_plot

ID = "E13"
TITLE = "BN before vs after the activation"

ARCHITECTURES = ("CNN", "MLP")
POSITIONS = ("before", "after")
ANCHOR = ("Ioffe & Szegedy 2015 (arXiv 1502.03167) put BN before the nonlinearity; a public CaffeNet benchmark "
          "(ducha-aiki/caffenet-benchmark) measured 0.474 (before) vs 0.499 (after) top-1 accuracy.")


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 5  # seeds per arm for the reported numbers
    seed_base: int = 0  # first seed (the runner sets it from --seed-base)
    tune_seeds: int = 2  # the first seeds choose each arm's learning rate (validation accuracy)
    cnn_lr_grid: tuple = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # SGD rates (momentum 0.9) each CNN arm is tuned over
    mlp_lr_grid: tuple = (0.001, 0.003, 0.01, 0.03, 0.1)  # the same for each MLP arm
    steps: int = 400  # SGD steps per run
    batch_size: int = 32  # mini-batch size
    channels: tuple = (16, 32)  # CNN channels
    hidden: tuple = (100, 100, 100)  # MLP hidden widths


QUICK = dict(seeds=2, tune_seeds=1, steps=50)
FULL = dict(seeds=10, steps=3000)


def job(arch: str, position: str, lr: float, seed: int, data: str, steps: int, batch_size: int, channels: list,
        hidden: list) -> dict:
    """Train one network with BN `position` ('before'/'after') the ReLU; validation and test accuracy."""
    dataset = load(data)
    seed_everything(seed)
    if arch == "CNN":
        model = CNN(dataset.sample_shape, tuple(channels), dataset.num_classes, norm="batch", norm_position=position)
    else:
        model = MLP(dataset.num_inputs, tuple(hidden), dataset.num_classes, activation="relu", norm="batch",
                    norm_position=position)
    history = train(model, dataset, steps=steps, batch_size=batch_size, lr=lr, momentum=0.9, seed=seed)
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy,
            "diverged": float(history.diverged)}


def run(cfg: Config) -> Result:
    run_seeds = seeds(cfg)
    grids = {"CNN": cfg.cnn_lr_grid, "MLP": cfg.mlp_lr_grid}
    arms = tune_and_run(job, {f"{a}, BN {p} ReLU": dict(arch=a, position=p) for a in ARCHITECTURES for p in POSITIONS},
                        grid={f"{a}, BN {p} ReLU": grids[a] for a in ARCHITECTURES for p in POSITIONS}, seeds=run_seeds, tune_seeds=cfg.tune_seeds, data=cfg.data, steps=cfg.steps,
                        batch_size=cfg.batch_size, channels=list(cfg.channels), hidden=list(cfg.hidden))
    acc = {(a, p): arms[f"{a}, BN {p} ReLU"].test_accuracy for a in ARCHITECTURES for p in POSITIONS}
    findings, numbers = [], {}
    for a in ARCHITECTURES:
        estimate, ci = diff_ci(acc[(a, "before")], acc[(a, "after")], paired=True, scale=100)
        before, after = mean_ci(acc[(a, "before")], 100), mean_ci(acc[(a, "after")], 100)
        numbers[a] = {"before": before[0], "after": after[0], "before - after": estimate}
        findings.append(Finding(
            f"BN belongs before the nonlinearity ({a})", ANCHOR,
            f"effect: test accuracy of BN before ReLU minus BN after ReLU, in points, paired over seeds, each "
            f"placement at its own learning rate; holds if the 95% interval lies above 0 (the claim is only that "
            f"'before' is better), does not hold if it lies below 0, inconclusive if it contains 0",
            f"{a}: before - after {fmt_ci(estimate, ci, 'points')}; before {fmt_ci(*before, '%')}, after "
            f"{fmt_ci(*after, '%')} (lr {arms[f'{a}, BN before ReLU'].lr_chosen:g} vs "
            f"{arms[f'{a}, BN after ReLU'].lr_chosen:g})",
            Effect(f"{a}: before - after, test accuracy (points)", estimate, ci, threshold=0.0), run_seeds))
    plots = [points_plot("Test accuracy by BN placement (each at its tuned rate)", "test accuracy (%)",
                         {p: {a: acc[(a, p)] for a in ARCHITECTURES} for p in POSITIONS}, scale=100)]
    rows = [[a, fmt_ci(*accuracy_ci(acc[(a, "before")]), "%"), fmt_ci(*accuracy_ci(acc[(a, "after")]), "%")]
            for a in ARCHITECTURES]
    notes = [f"ReLU networks on {cfg.data}: CNN {cfg.channels}, MLP {cfg.hidden}; SGD momentum 0.9, batch "
             f"{cfg.batch_size}, {cfg.steps} steps. 'before': Conv/Linear (no bias) -> BN -> ReLU; 'after': "
             f"Conv/Linear (with bias) -> ReLU -> BN. Each of the four arms chooses its learning rate (CNN from "
             f"{list(cfg.cnn_lr_grid)}, MLP from {list(cfg.mlp_lr_grid)}) by validation accuracy on the first {cfg.tune_seeds} seeds; all {cfg.seeds} seeds "
             f"then run at that rate and are tested once. Intervals: Student t over the paired seed differences."]
    return Result(ID, TITLE, findings, [Table("Test accuracy (mean [95% CI])", ["model", "BN before ReLU",
                                                                                "BN after ReLU"], rows)],
                  plots, notes, arms=[arm.to_json() for arm in arms.values()], numbers=numbers)
