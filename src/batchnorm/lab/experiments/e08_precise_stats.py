"""E8: train/eval mismatch: BN's EMA running statistics vs precise population statistics (PreciseBN, computed
by batchnorm.tools.recalibrate) after training with small batches at a low and a high learning rate."""

from __future__ import annotations

from dataclasses import dataclass

from .. import progress
from ..data import load
from ..models import CNN, LayerMissing
from ..protocol import Finding, Result, not_run, stat, verdict
from ..train import evaluate, seed_everything, train
from ._common import bar_plot, pct, table

ID = "E8"
TITLE = "Train/eval mismatch: EMA vs precise BN statistics"

CLAIM = ("Precise population statistics evaluate better than BN's EMA running statistics (large lr, small batch)",
         "Wu & Johnson 2021 (arXiv 2105.07576): EMA can be inaccurate with large learning rates and few samples "
         "per batch; PreciseBN fixes it.", "see the report")


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 3  # seeds per setting
    steps: int = 400  # SGD steps per run
    batch_size: int = 8  # a small batch: noisy batch statistics
    lrs: tuple = (0.02, 0.2)  # a low and a high learning rate (SGD, momentum 0.9)
    momentum: float = 0.1  # BN's EMA weight of the new batch (torch's default)
    precise_batch: int = 64  # batch size of the precise-statistics pass over the whole training set
    channels: tuple = (16, 32)  # CNN channels


QUICK = dict(seeds=1, steps=150)
FULL = dict(seeds=5, steps=2000)


def _recalibrate():
    """batchnorm.tools.recalibrate (issue 7), or LayerMissing."""
    try:
        from batchnorm.tools import recalibrate
    except ImportError as error:
        raise LayerMissing(f"batchnorm.tools.recalibrate is not available yet (issue 7): {error}") from None
    return recalibrate


def run(cfg: Config) -> Result:
    try:
        recalibrate = _recalibrate()
    except LayerMissing as error:
        return not_run(ID, TITLE, [CLAIM], str(error))
    data = load(cfg.data)
    acc = {}
    for lr, seed in progress.jobs([(lr, s) for lr in cfg.lrs for s in range(cfg.seeds)]):
        seed_everything(seed)
        model = CNN(data.sample_shape, cfg.channels, data.num_classes, norm="batch", momentum=cfg.momentum)
        h = train(model, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=lr, momentum=0.9, seed=seed)
        acc.setdefault(("EMA", lr), []).append(h.final_accuracy)
        ema = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        batches = [data.x_train[i:i + cfg.precise_batch] for i in range(0, len(data.y_train), cfg.precise_batch)]
        recalibrate(model, batches)
        acc.setdefault(("precise", lr), []).append(evaluate(model, data.x_test, data.y_test))
        precise = {k: v for k, v in model.state_dict().items() if "running" in k}
        # how far the EMA was from the population statistics: |mean difference| / population std, first BN layer
        key = sorted(k for k in ema if k.endswith("running_mean"))[0]
        std = precise[key.replace("mean", "var")].sqrt()
        acc.setdefault(("error", lr), []).append(float(((ema[key] - precise[key]).abs() / std).mean()))
        acc.setdefault(("test batch", lr), []).append(evaluate(model, data.x_test, data.y_test, batch_size=64,
                                                               train_mode=True))
    final = {k: stat(v) for k, v in acc.items()}
    high, low = max(cfg.lrs), min(cfg.lrs)
    gain_high = final[("precise", high)].mean - final[("EMA", high)].mean
    gain_low = final[("precise", low)].mean - final[("EMA", low)].mean
    findings = [Finding(CLAIM[0], CLAIM[1],
                        f"at lr {high}: holds if precise statistics give >= 1 point more test accuracy than the EMA; "
                        f"partly if more",
                        verdict(gain_high >= 0.01, gain_high > 0),
                        f"lr {high}: precise {pct(final[('precise', high)])}, EMA {pct(final[('EMA', high)])} "
                        f"({100 * gain_high:+.1f} points); lr {low}: {100 * gain_low:+.1f} points; EMA mean error "
                        f"(first BN, in population stds) {final[('error', high)]} at lr {high}, "
                        f"{final[('error', low)]} at lr {low}")]
    plots = [bar_plot("Test accuracy by the statistics used at evaluation", "test accuracy",
                      {kind: {f"lr {lr}": final[(kind, lr)] for lr in cfg.lrs}
                       for kind in ("EMA", "precise", "test batch")}, "learning rate")]
    rows = {f"lr {lr}": [pct(final[("EMA", lr)]), pct(final[("precise", lr)]), pct(final[("test batch", lr)]),
                         str(final[("error", lr)])] for lr in cfg.lrs}
    notes = [f"CNN {cfg.channels} with BN (momentum {cfg.momentum}) on {cfg.data}, batch {cfg.batch_size}, "
             f"{cfg.steps} steps. 'precise' = batchnorm.tools.recalibrate over the whole training set (batches of "
             f"{cfg.precise_batch}); 'test batch' = normalizing with the statistics of test batches of 64 "
             f"(train-mode evaluation), for reference."]
    return Result(ID, TITLE, findings,
                  [table("Test accuracy", ["setting", "EMA", "precise", "test batch", "EMA error (stds)"], rows)],
                  plots, notes, numbers={f"{kind}, lr {lr}": final[(kind, lr)].mean for kind, lr in final})
