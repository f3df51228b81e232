"""E14: transfer learning across a real domain shift: pretrain on scikit-learn's digits, fine-tune on a small
labelled set of MNIST digits in the same 8x8 format with BN statistics trainable, frozen (batchnorm.tools.freeze)
or recalibrated on the target then frozen; every fine-tuning rate chosen on the target's validation split."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

from ..data import subset
from ..models import CNN
from ..protocol import accuracy_ci, Effect, Finding, Result, Table, diff_ci, fmt_ci, mean_ci, seeds, tune_and_run
from ..train import evaluate, seed_everything, train
from ._cnn import accuracy_plot, arm_rows, cached_data, domain_pair

ID = "E14"
TITLE = "Transfer across a real shift: fine-tuning with BN statistics trainable, frozen, recalibrated"

MODES = {"BN trainable": "trainable", "BN frozen": "frozen", "BN recalibrated + frozen": "recalibrated"}


@dataclass
class Config:
    data: str = "digits"  # picks the direction (see _cnn.domain_pair): pretrain on digits, fine-tune on MNIST 8x8;
    # 'mnist5k': pretrain on MNIST 8x8, fine-tune on digits
    seeds: int = 5  # seeds per arm (each seed: its own pretraining run and its own labelled target subset)
    seed_base: int = 0  # first seed (the runner's --seed-base)
    pretrain_steps: int = 400  # SGD steps on the source
    pretrain_grid: tuple = (0.01, 0.03, 0.1, 0.3, 1.0)  # pretraining rates tried (chosen on source validation)
    finetune_steps: int = 150  # SGD steps on the small target set
    target_size: int = 100  # labelled target training images
    batch_size: int = 16  # fine-tuning batch (pretraining uses 32)
    finetune_grid: tuple = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)  # fine-tuning rates tried per mode (chosen on target
    # validation, never on its test set)
    tune_seeds: int = 2  # seeds that choose each rate
    channels: tuple = (16, 32)  # CNN channels


QUICK = dict(seeds=2, tune_seeds=1, pretrain_steps=60, finetune_steps=20, target_size=40)
FULL = dict(seeds=10, pretrain_steps=1500, finetune_steps=400)


def _pretrain(source: str, seed: int, lr: float, steps: int, channels: tuple):
    dataset = cached_data(source)
    seed_everything(seed)
    model = CNN(dataset.sample_shape, tuple(channels), dataset.num_classes, norm="batch")
    history = train(model, dataset, steps=steps, batch_size=32, lr=lr, momentum=0.9, seed=seed)
    return model, history


@functools.lru_cache(maxsize=16)
def _pretrained(source: str, seed: int, lr: float, steps: int, channels: tuple):
    """The pretrained network of a seed, once per process (fine-tuning jobs copy it)."""
    return _pretrain(source, seed, lr, steps, channels)[0]


def pretrain_job(*, lr: float, seed: int, source: str, steps: int, channels: tuple) -> dict:
    """Pretrain on the source; returns source validation and test accuracy (for choosing the pretraining rate)."""
    _, history = _pretrain(source, seed, lr, steps, channels)
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy}


def finetune_job(*, lr: float, seed: int, source: str, target: str, mode: str, pretrain_lr: float,
                 pretrain_steps: int, finetune_steps: int, target_size: int, batch_size: int,
                 channels: tuple) -> dict:
    """Fine-tune the seed's pretrained network on `target_size` labelled target images (drawn with `seed`).

    mode 'trainable': BN statistics update as usual; 'frozen': batchnorm.tools.freeze (running statistics used in
    training too; gamma, beta trainable); 'recalibrated': batchnorm.tools.recalibrate on the labelled target
    images first, then frozen. Returns target val/test accuracy after fine-tuning, and the target test accuracy
    before it (source statistics, and after recalibration alone).
    """
    from batchnorm.tools import freeze, recalibrate

    target_data = subset(cached_data(target), target_size, seed)
    model = copy.deepcopy(_pretrained(source, seed, pretrain_lr, pretrain_steps, tuple(channels)))
    before = evaluate(model, target_data.x_test, target_data.y_test)
    recalibrated, _ = recalibrate(model, [target_data.x_train], inplace=False)
    before_recalibrated = evaluate(recalibrated, target_data.x_test, target_data.y_test)
    if mode == "frozen":
        model = freeze(model)
    elif mode == "recalibrated":
        model = freeze(recalibrated)
    elif mode != "trainable":
        raise ValueError(f"mode must be 'trainable', 'frozen' or 'recalibrated', got {mode!r}")
    seed_everything(seed)
    history = train(model, target_data, steps=finetune_steps, batch_size=min(batch_size, target_size), lr=lr,
                    momentum=0.9, seed=seed)
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy,
            "before": before, "before recalibrated": before_recalibrated, "diverged": bool(history.diverged)}


def run(cfg: Config) -> Result:
    run_seeds = seeds(cfg)
    channels = tuple(cfg.channels)
    source, target = domain_pair(cfg.data)
    pre = tune_and_run(pretrain_job, {"pretraining": {}}, grid=cfg.pretrain_grid, seeds=run_seeds[:cfg.tune_seeds],
                       tune_seeds=cfg.tune_seeds, source=source, steps=cfg.pretrain_steps,
                       channels=channels)["pretraining"]
    arms = tune_and_run(finetune_job, {name: dict(mode=mode) for name, mode in MODES.items()},
                        grid=cfg.finetune_grid, seeds=run_seeds, tune_seeds=cfg.tune_seeds, source=source,
                        target=target, pretrain_lr=pre.lr_chosen, pretrain_steps=cfg.pretrain_steps,
                        finetune_steps=cfg.finetune_steps, target_size=cfg.target_size, batch_size=cfg.batch_size,
                        channels=channels)
    acc = {name: arm.test_accuracy for name, arm in arms.items()}
    before = arms["BN trainable"].values("before")
    before_recalibrated = arms["BN trainable"].values("before recalibrated")
    frozen_gain = Effect("BN frozen - BN trainable, target test accuracy after fine-tuning (points)",
                         *diff_ci(acc["BN frozen"], acc["BN trainable"], scale=100), threshold=1.0)
    recal_gain = Effect("BN recalibrated + frozen - BN frozen, target test accuracy after fine-tuning (points)",
                        *diff_ci(acc["BN recalibrated + frozen"], acc["BN frozen"], scale=100), threshold=1.0)

    def pct(values: list[float]) -> str:
        return fmt_ci(*accuracy_ci(values), "%")

    findings = [
        Finding(f"With little target data ({cfg.target_size} labelled images), freezing BN statistics fine-tunes "
                f"better than updating them",
                "Wu & Johnson 2021 (arXiv 2105.07576): frozen (population) statistics are the usual choice for "
                "fine-tuning with small batches or little data; detectron2/torchvision FrozenBatchNorm2d.",
                "paired over seeds (same pretrained network and labelled subset per seed), each mode at its own "
                "fine-tuning rate chosen on the target's validation split; holds if the 95% interval of frozen - "
                "trainable (target test) lies above +1 point, does not hold if below.",
                f"target test after fine-tuning: frozen {pct(acc['BN frozen'])}, trainable "
                f"{pct(acc['BN trainable'])}, difference {fmt_ci(frozen_gain.estimate, frozen_gain.ci95, 'points')}; "
                f"before fine-tuning {pct(before)}",
                frozen_gain, run_seeds),
        Finding("Recalibrating BN statistics on the target before fine-tuning (AdaBN, then frozen) helps transfer",
                "Li et al. 2016 (AdaBN, arXiv 1603.04779); Wu & Johnson 2021 (arXiv 2105.07576) on the domain of "
                "the statistics.",
                "control: the same freeze with the source statistics; holds if the 95% interval of recalibrated + "
                "frozen - frozen (target test) lies above +1 point, does not hold if below.",
                f"target test after fine-tuning: recalibrated + frozen {pct(acc['BN recalibrated + frozen'])}, "
                f"frozen {pct(acc['BN frozen'])}, difference "
                f"{fmt_ci(recal_gain.estimate, recal_gain.ci95, 'points')}; without fine-tuning: source statistics "
                f"{pct(before)}, recalibrated {pct(before_recalibrated)}",
                recal_gain, run_seeds),
    ]
    rows = [["no fine-tuning (source statistics)", pct(before)],
            ["no fine-tuning, recalibrated on the target images", pct(before_recalibrated)],
            *[[name, pct(values)] for name, values in acc.items()]]
    tables = [Table("Target test accuracy, mean [95% CI]", ["mode", "accuracy"], rows), arm_rows(arms)]
    plots = [accuracy_plot("Target test accuracy after fine-tuning", arms)]
    notes = [
        f"Pretraining: CNN {channels} with BN, {cfg.pretrain_steps} SGD steps (momentum 0.9, batch 32) on "
        f"{source}, rate {pre.lr_chosen:g} chosen from {list(cfg.pretrain_grid)} by source validation accuracy "
        f"({', '.join(f'{100 * a:.1f}%' for a in pre.val_accuracy)}). Fine-tuning: {cfg.finetune_steps} steps, "
        f"batch {cfg.batch_size}, all weights, on {cfg.target_size} labelled images of {target} drawn per seed; "
        f"each mode's rate from {list(cfg.finetune_grid)} chosen by accuracy on the target's validation split "
        f"(labelled, held out from the target's training set; the test set is read once per run). "
        f"{len(run_seeds)} seeds; intervals: 95% Student t over paired seeds.",
        "Frozen = batchnorm.tools.freeze (running statistics used in training too, gamma and beta trainable); "
        f"recalibrated = batchnorm.tools.recalibrate on the {cfg.target_size} labelled target images first (their "
        "exact statistics), then frozen. The old design picked the rate on the test set and froze source statistics "
        "on a synthetic contrast shift; this one tunes on validation and uses the real digits -> MNIST shift.",
    ]
    return Result(ID, TITLE, findings, tables, plots, notes, arms=[pre.to_json()] + [a.to_json() for a in arms.values()],
                  numbers={"test accuracy": {k: sum(v) / len(v) for k, v in acc.items()},
                           "before": sum(before) / len(before),
                           "before recalibrated": sum(before_recalibrated) / len(before_recalibrated),
                           "effects": {"frozen gain": frozen_gain.estimate, "recalibration gain": recal_gain.estimate}})
