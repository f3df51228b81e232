"""E14: transfer learning: pretrain on the source domain, fine-tune on a small labelled shifted set with BN
statistics trainable, frozen (batchnorm.tools.freeze), or recalibrated on the target then frozen."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from .. import progress
from ..data import load, shifted, subset
from ..models import CNN
from ..protocol import Finding, Result, not_run, stat, verdict
from ..train import evaluate, seed_everything, train
from ._common import bar_plot, pct, table

ID = "E14"
TITLE = "Transfer learning: fine-tuning with BN trainable, frozen, recalibrated"

MODES = ("no fine-tuning", "BN trainable", "BN frozen", "BN recalibrated + frozen")
CLAIMS = [("With little target data, freezing BN statistics fine-tunes better than updating them",
           "Wu & Johnson 2021: frozen (population) statistics are the usual choice for fine-tuning with small "
           "batches or little data.", "see the report"),
          ("Recalibrating BN on the target before fine-tuning (AdaBN + frozen) helps transfer",
           "Li et al. 2016 (AdaBN).", "see the report")]


@dataclass
class Config:
    data: str = "digits"  # source dataset; target = batchnorm.lab.data.shifted(source)
    seeds: int = 3  # seeds per setting (also reseeds which target samples are labelled)
    pretrain_steps: int = 500  # SGD steps on the source
    finetune_steps: int = 100  # SGD steps on the small target set
    target_size: int = 50  # labelled target training samples
    batch_size: int = 16  # fine-tuning batch size (pretraining uses 32)
    lr: float = 0.05  # pretraining learning rate (SGD, momentum 0.9)
    finetune_lrs: tuple = (0.001, 0.01)  # fine-tuning learning rates tried (SGD, momentum 0.9); best one counts
    channels: tuple = (16, 32)  # CNN channels


QUICK = dict(seeds=1, pretrain_steps=150, finetune_steps=40)
FULL = dict(seeds=5, pretrain_steps=2000, finetune_steps=300)


def run(cfg: Config) -> Result:
    try:
        from batchnorm.tools import freeze, recalibrate
    except ImportError as error:
        return not_run(ID, TITLE, CLAIMS, f"batchnorm.tools.freeze/recalibrate are not available yet (issue 7): "
                                          f"{error}")
    source = load(cfg.data)
    target_full = shifted(source)
    acc, by_lr = {}, {}
    for seed in progress.jobs(range(cfg.seeds)):
        target = subset(target_full, cfg.target_size, seed)
        seed_everything(seed)
        pretrained = CNN(source.sample_shape, cfg.channels, source.num_classes, norm="batch")
        train(pretrained, source, steps=cfg.pretrain_steps, batch_size=32, lr=cfg.lr, momentum=0.9, seed=seed)
        acc.setdefault("no fine-tuning", []).append(evaluate(pretrained, target.x_test, target.y_test))
        for mode in MODES[1:]:
            for lr in cfg.finetune_lrs:
                model = copy.deepcopy(pretrained)
                if mode == "BN frozen":
                    model = freeze(model)
                elif mode == "BN recalibrated + frozen":
                    recalibrate(model, [target.x_train])  # the labelled target inputs only (no extra data)
                    model = freeze(model)
                seed_everything(seed)
                h = train(model, target, steps=cfg.finetune_steps, batch_size=min(cfg.batch_size, cfg.target_size),
                          lr=lr, momentum=0.9, seed=seed)
                by_lr.setdefault((mode, lr), []).append(h.final_accuracy)
    per_lr = {k: stat(v) for k, v in by_lr.items()}
    best_lr = {mode: max(cfg.finetune_lrs, key=lambda lr: per_lr[(mode, lr)].mean) for mode in MODES[1:]}
    acc.update({mode: by_lr[(mode, best_lr[mode])] for mode in MODES[1:]})
    final = {k: stat(v) for k, v in acc.items()}
    t = {k: final[k].mean for k in MODES}
    findings = [
        Finding(CLAIMS[0][0], CLAIMS[0][1],
                "each mode at its best fine-tuning lr; holds if frozen BN beats trainable BN by >= 1 point; partly "
                "if by > 0",
                verdict(t["BN frozen"] - t["BN trainable"] >= 0.01, t["BN frozen"] > t["BN trainable"]),
                f"target test: frozen {pct(final['BN frozen'])}, trainable {pct(final['BN trainable'])}, no "
                f"fine-tuning {pct(final['no fine-tuning'])}"),
        Finding(CLAIMS[1][0], CLAIMS[1][1],
                "holds if recalibrated + frozen beats the better of frozen and trainable by >= 1 point; partly if "
                "by > 0",
                verdict(t["BN recalibrated + frozen"] - max(t["BN frozen"], t["BN trainable"]) >= 0.01,
                        t["BN recalibrated + frozen"] > max(t["BN frozen"], t["BN trainable"])),
                f"target test: recalibrated + frozen {pct(final['BN recalibrated + frozen'])}, frozen "
                f"{pct(final['BN frozen'])}, trainable {pct(final['BN trainable'])}"),
    ]
    plots = [bar_plot("Target test accuracy after fine-tuning, by fine-tuning lr", "test accuracy",
                      {f"lr {lr}": {mode: per_lr[(mode, lr)] for mode in MODES[1:]} for lr in cfg.finetune_lrs})]
    notes = [f"CNN {cfg.channels} pretrained {cfg.pretrain_steps} steps on {source.name}, fine-tuned "
             f"{cfg.finetune_steps} steps (SGD momentum 0.9, lr in {cfg.finetune_lrs}, the best per mode counts "
             f"(best: {best_lr}), batch {cfg.batch_size}) on "
             f"{cfg.target_size} labelled samples of {target_full.name}; all weights fine-tuned. Frozen = "
             f"batchnorm.tools.freeze (running statistics used in training too, gamma and beta trainable); "
             f"recalibrated = batchnorm.tools.recalibrate on the {cfg.target_size} target inputs first."]
    return Result(ID, TITLE, findings, [table("Target test accuracy", ["mode", "accuracy"],
                                              {k: [pct(final[k])] for k in MODES})], plots, notes,
                  numbers=dict(t, **{f"{mode}, lr {lr}": v.mean for (mode, lr), v in per_lr.items()}))
