"""E18: BN's train/test discrepancy: a trained BN CNN evaluated with population statistics (eval mode) and with the
test batch's own statistics (train mode) as the test batch grows from 1 sample to the whole test set, and with
mixed-class vs single-class test batches (Summers & Dinneen 2019)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import load
from ..models import CNN
from ..protocol import (Effect, Finding, Plot, Result, Table, accuracy_ci, diff_ci, fmt_ci, mean_ci, seeds,
                        tune_and_run)
from ..train import evaluate, seed_everything, train

ID = "E18"
TITLE = "Train/test discrepancy: batch statistics vs population statistics at test time"

ANCHOR = ("Summers & Dinneen 2019 (arXiv 1906.03548): BN's train/test discrepancy; predictions made with batch "
          "statistics depend on the other samples in the test batch. Wu & Johnson 2021 (arXiv 2105.07576): the "
          "test-time batch changes the outcome.")


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 5  # seeds (trained networks) for the reported numbers
    seed_base: int = 0  # first seed (--seed-base)
    tune_seeds: int = 2  # seeds the learning rate is chosen on (eval-mode validation accuracy)
    lr_grid: tuple = (0.03, 0.1, 0.3, 1.0, 3.0)  # SGD learning rates (momentum 0.9) tried (100x; 1.0, the old
    # highest, was chosen)
    steps: int = 400  # SGD steps of training
    batch_size: int = 64  # training mini-batch size
    channels: tuple = (16, 32)  # CNN channels
    test_batches: tuple = (1, 2, 4, 8, 16, 32, 64, 128, 0)  # test batch sizes in train mode (0: the whole set)
    small_batch: int = 8  # the small test batch the first finding reads
    class_batch: int = 32  # batch size of the single-class vs mixed-class comparison


QUICK = dict(seeds=2, tune_seeds=1, steps=30, test_batches=(1, 8, 0))
FULL = dict(seeds=10, steps=2000)


def _train_mode_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batches: list) -> float:
    """Accuracy when each batch (a list of index tensors) is normalized with its own statistics."""
    was_training = model.training
    model.train()
    correct = 0
    with torch.no_grad():
        for index in batches:
            out = model(x[index])
            correct += int(((out.argmax(1) == y[index]) & torch.isfinite(out).all(1)).sum())
    model.train(was_training)
    return correct / len(y)


def train_and_probe(data: str, lr: float, seed: int, steps: int, batch_size: int, channels: list,
                    test_batches: list, class_batch: int) -> dict:
    """Train a BN CNN; then its test accuracy in eval mode and in train mode for each test batch size (random
    mixed-class batches), and with batches of `class_batch` samples of one class vs mixed classes."""
    seed_everything(seed)
    dataset = load(data)
    model = CNN(dataset.sample_shape, tuple(channels), dataset.num_classes, norm="batch")
    history = train(model, dataset, steps=steps, batch_size=batch_size, lr=lr, momentum=0.9, seed=seed)
    x, y = dataset.x_test, dataset.y_test
    eval_accuracy = evaluate(model, x, y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    by_size = {}
    for size in test_batches:
        size = size or len(y)
        by_size[str(size)] = _train_mode_accuracy(model, x, y, list(order.split(size)))
    single = [part for c in torch.unique(y) for part in torch.nonzero(y == c).flatten().split(class_batch)]
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy, "eval_mode": eval_accuracy,
            "train_mode": by_size, "single_class": _train_mode_accuracy(model, x, y, single),
            "mixed_class": _train_mode_accuracy(model, x, y, list(order.split(class_batch)))}


def run(cfg: Config) -> Result:
    seed_list = seeds(cfg)
    arms = tune_and_run(train_and_probe, {"BN CNN": dict(data=cfg.data, steps=cfg.steps, batch_size=cfg.batch_size,
                                                         channels=list(cfg.channels),
                                                         test_batches=list(cfg.test_batches),
                                                         class_batch=cfg.class_batch)},
                        grid=list(cfg.lr_grid), seeds=seed_list, tune_seeds=cfg.tune_seeds)
    runs = arms["BN CNN"].runs
    n_test = len(load(cfg.data).y_test)
    sizes = [str(s or n_test) for s in cfg.test_batches]
    eval_acc = [r["eval_mode"] for r in runs]
    train_acc = {s: [r["train_mode"][s] for r in runs] for s in sizes}
    small = str(cfg.small_batch) if str(cfg.small_batch) in sizes else sizes[1]
    whole = str(n_test)
    small_gap = Effect(f"eval mode - train mode with test batches of {small}, test accuracy (points)",
                       *diff_ci(eval_acc, train_acc[small], scale=100), threshold=1.0)
    whole_gap = Effect("eval mode - train mode on the whole test set as one batch (points)",
                       *diff_ci(eval_acc, train_acc[whole], scale=100), threshold=1.0, direction="within")
    mixed = [r["mixed_class"] for r in runs]
    single = [r["single_class"] for r in runs]
    class_gap = Effect(f"mixed-class - single-class test batches of {cfg.class_batch}, train mode (points)",
                       *diff_ci(mixed, single, scale=100), threshold=10.0)

    def pct(values) -> str:
        return fmt_ci(*accuracy_ci(values), "%")

    base = (f"BN CNN trained at lr {arms['BN CNN'].lr_chosen:g} (chosen on eval-mode validation accuracy); test "
            f"accuracy in eval mode {pct(eval_acc)}")
    findings = [
        Finding("Evaluated with the test batch's own statistics (train mode), a BN network loses accuracy when the "
                "test batches are small", ANCHOR,
                f"paired difference eval mode - train mode with random test batches of {small}, over seeds, 95% "
                f"Student-t interval; holds if it lies above +1 point",
                f"{fmt_ci(small_gap.estimate, small_gap.ci95, 'points')}; {base}; train mode, batches of {small}: "
                f"{pct(train_acc[small])}, of 1: {pct(train_acc[sizes[0]])}", small_gap, seeds=seed_list),
        Finding("With a large i.i.d. test batch, batch statistics give the same accuracy as population statistics",
                ANCHOR,
                "paired difference eval mode - train mode with the whole test set as one batch; 'the same' is "
                "two-sided: holds if the 95% interval lies inside (-1, +1) points, does not hold if it lies entirely "
                "outside, inconclusive otherwise",
                f"{fmt_ci(whole_gap.estimate, whole_gap.ci95, 'points')}; {base}; train mode, one batch of {whole}: "
                f"{pct(train_acc[whole])}", whole_gap, seeds=seed_list),
        Finding("Test batches that hold a single class break inference with batch statistics", ANCHOR,
                f"train mode, test batches of {cfg.class_batch}: paired difference mixed-class (random) - "
                f"single-class batches; holds if the interval lies above 10 points (a collapse, not a nuance); eval "
                f"mode is unaffected by construction (each sample is normalized with the population statistics)",
                f"{fmt_ci(class_gap.estimate, class_gap.ci95, 'points')}; mixed {pct(mixed)}, single-class "
                f"{pct(single)}; eval mode {pct(eval_acc)}", class_gap, seeds=seed_list),
    ]
    xs = [int(s) for s in sizes]
    plots = [Plot("Test accuracy vs test batch size", "test batch size", "test accuracy (%)",
                  {"train mode (batch statistics)": {"x": xs, "y": [mean_ci(train_acc[s], 100)[0] for s in sizes],
                                                     "points": [[100 * v for v in train_acc[s]] for s in sizes]},
                   "eval mode (population statistics)": {"x": xs, "y": [mean_ci(eval_acc, 100)[0]] * len(xs)}},
                  logx=True),
             Plot(f"Test batches of {cfg.class_batch}: class composition", "batches", "test accuracy (%)",
                  {"test accuracy": {"x": ["eval mode", "train mode, mixed", "train mode, single class"],
                                     "y": [mean_ci(v, 100)[0] for v in (eval_acc, mixed, single)],
                                     "points": [[100 * a for a in v] for v in (eval_acc, mixed, single)]}},
                  kind="bar")]
    rows = [["eval mode (any batch)", pct(eval_acc)]] + [[f"train mode, batches of {s}", pct(train_acc[s])]
                                                        for s in sizes]
    rows += [[f"train mode, {cfg.class_batch} of one class", pct(single)]]
    notes = [f"CNN {tuple(cfg.channels)} with BN on {cfg.data}, SGD momentum 0.9, batch {cfg.batch_size}, "
             f"{cfg.steps} steps, rate from {list(cfg.lr_grid)} by eval-mode validation accuracy on the first "
             f"{cfg.tune_seeds} seeds. After training, the test set is evaluated several ways (this experiment is "
             f"about the test-time procedure): eval mode, and train mode (no gradient; each batch normalized with its "
             f"own statistics) with random batches of each size (the last batch is what remains), and with "
             f"batches of {cfg.class_batch} drawn from one class. A batch of 1 in a CNN still pools the statistics "
             f"over the spatial positions of each channel (in an MLP it would give a constant output)."]
    return Result(ID, TITLE, findings, [Table("Test accuracy by evaluation", ["evaluation", "test accuracy"], rows)],
                  plots, notes, arms=[a.to_json() for a in arms.values()],
                  numbers={"eval mode": float(np.mean(eval_acc)),
                           "train mode": {s: float(np.mean(v)) for s, v in train_acc.items()},
                           "single class": float(np.mean(single)), "mixed class": float(np.mean(mixed))})
