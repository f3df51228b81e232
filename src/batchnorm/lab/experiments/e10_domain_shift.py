"""E10: domain shift and AdaBN: a BN network trained on the source domain, evaluated on a shifted target domain
with the source statistics and after recomputing BN statistics on unlabeled target data
(batchnorm.tools.recalibrate)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import progress
from ..data import load, shifted
from ..models import CNN
from ..protocol import Finding, Result, not_run, stat, verdict
from ..train import evaluate, seed_everything, train
from ._common import bar_plot, pct, table

ID = "E10"
TITLE = "Domain shift and AdaBN recalibration"

CLAIM = ("Recomputing BN statistics on the target domain (AdaBN, no labels) recovers accuracy lost to domain shift",
         "Li et al. 2016 (AdaBN, arXiv 1603.04779): replacing source statistics by target statistics improves "
         "target accuracy without labels.", "see the report")


@dataclass
class Config:
    data: str = "digits"  # source dataset; the target is batchnorm.lab.data.shifted(source)
    seeds: int = 3  # seeds per setting
    steps: int = 500  # SGD steps on the source
    batch_size: int = 32  # mini-batch size
    lr: float = 0.05  # SGD learning rate (momentum 0.9)
    channels: tuple = (16, 32)  # CNN channels
    adapt_batch: int = 64  # batch size of the recalibration pass over the unlabeled target training inputs


QUICK = dict(seeds=1, steps=150)
FULL = dict(seeds=5, steps=2000)


def run(cfg: Config) -> Result:
    try:
        from batchnorm.tools import recalibrate
    except ImportError as error:
        return not_run(ID, TITLE, [CLAIM], f"batchnorm.tools.recalibrate is not available yet (issue 7): {error}")
    source = load(cfg.data)
    target = shifted(source)
    acc = {}
    for norm, seed in progress.jobs([(n, s) for n in ("batch", "none") for s in range(cfg.seeds)]):
        seed_everything(seed)
        model = CNN(source.sample_shape, cfg.channels, source.num_classes, norm=norm)
        h = train(model, source, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, momentum=0.9, seed=seed)
        acc.setdefault((norm, "source"), []).append(h.final_accuracy)
        acc.setdefault((norm, "target"), []).append(evaluate(model, target.x_test, target.y_test))
        if norm == "batch":
            batches = [target.x_train[i:i + cfg.adapt_batch] for i in range(0, len(target.y_train), cfg.adapt_batch)]
            recalibrate(model, batches)
            acc.setdefault((norm, "target, AdaBN"), []).append(evaluate(model, target.x_test, target.y_test))
    final = {k: stat(v) for k, v in acc.items()}
    unadapted, adapted = final[("batch", "target")], final[("batch", "target, AdaBN")]
    gain = adapted.mean - unadapted.mean
    findings = [Finding(CLAIM[0], CLAIM[1],
                        "holds if AdaBN's target accuracy is >= 3 points above the unadapted BN network's; partly "
                        "if > 0.5 points",
                        verdict(gain >= 0.03, gain > 0.005),
                        f"target: AdaBN {pct(adapted)}, source statistics {pct(unadapted)} ({100 * gain:+.1f} "
                        f"points); source test {pct(final[('batch', 'source')])}; no-BN network on target "
                        f"{pct(final[('none', 'target')])}")]
    plots = [bar_plot("Test accuracy, source and shifted target", "test accuracy",
                      {"BN": {k[1]: v for k, v in final.items() if k[0] == "batch"},
                       "no BN": {k[1]: v for k, v in final.items() if k[0] == "none"}})]
    rows = {f"{'BN' if k[0] == 'batch' else 'no BN'}, {k[1]}": [pct(v)] for k, v in final.items()}
    notes = [f"CNN {cfg.channels} trained on {source.name}; target = {target.name} (see batchnorm.lab.data.shifted). "
             f"AdaBN = batchnorm.tools.recalibrate on the target's unlabeled training inputs (batches of "
             f"{cfg.adapt_batch})."]
    return Result(ID, TITLE, findings, [table("Test accuracy", ["network, domain", "accuracy"], rows)], plots, notes,
                  numbers={f"{'BN' if k[0] == 'batch' else 'no BN'}, {k[1]}": v.mean for k, v in final.items()})
