"""E11: BN vs LN in a tiny transformer encoder (the seeds' claim that BERT uses batch norm; it uses layer norm)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import progress
from ..data import as_sequence, load
from ..models import TinyTransformer
from ..protocol import Finding, Result, stat, verdict
from ..train import seed_everything, train
from ._common import bar_plot, curve_plot, pct, table

ID = "E11"
TITLE = "Transformers: layer norm vs batch norm (is BERT's norm BN?)"

NAMES = {"layer": "LN (BERT's)", "batch": "BN", "none": "no norm"}


@dataclass
class Config:
    data: str = "digits"  # dataset (image rows or signal values become tokens)
    seeds: int = 3  # seeds per setting
    steps: int = 400  # Adam steps per run
    batch_size: int = 64  # mini-batch size
    lr: float = 2e-3  # Adam learning rate
    d_model: int = 32  # model width
    layers: int = 2  # encoder layers (post-norm, as BERT)
    eval_every: int = 50  # steps between test evaluations


QUICK = dict(seeds=1, steps=100)
FULL = dict(seeds=5, steps=3000, layers=4)


def run(cfg: Config) -> Result:
    data = load(cfg.data)
    tokens = as_sequence(data.x_test[:1])
    runs = {}
    for norm, seed in progress.jobs([(n, s) for n in NAMES for s in range(cfg.seeds)]):
        seed_everything(seed)
        model = TinyTransformer(tokens.shape[2], tokens.shape[1], cfg.d_model, layers=cfg.layers,
                                num_classes=data.num_classes, norm=norm)
        runs.setdefault(norm, []).append(train(model, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                               seed=seed, optimizer="adam", eval_every=cfg.eval_every))
    final = {k: stat([h.final_accuracy for h in v]) for k, v in runs.items()}
    ln, bn = final["layer"], final["batch"]
    findings = [Finding(
        "BN can stand in for LN in a transformer encoder (texts say BERT uses batch norm; it uses layer norm)",
        "BERT uses layer normalization, not batch normalization (google-research/bert modeling.py: layer_norm); "
        "so does the original Transformer.",
        "holds if BN's test accuracy is >= LN's - 1 point; partly if >= LN's - 3 points. The claim about BERT is "
        "false either way: it uses LN",
        verdict(bn.mean >= ln.mean - 0.01, bn.mean >= ln.mean - 0.03),
        f"test: LN {pct(ln)}, BN {pct(bn)}, no norm {pct(final['none'])}")]
    steps = runs["layer"][0].steps
    plots = [curve_plot("Test accuracy over training", "step", "test accuracy", steps,
                        {NAMES[k]: [h.test_accuracy for h in v] for k, v in runs.items()
                         if all(len(h.test_accuracy) == len(steps) for h in v)}),
             bar_plot("Final test accuracy", "test accuracy", {"test": {NAMES[k]: final[k] for k in NAMES}})]
    notes = [f"Post-norm encoder ({cfg.layers} layers, d_model {cfg.d_model}, 2 heads, GELU feed-forward) on "
             f"{cfg.data} as {tokens.shape[1]} tokens of {tokens.shape[2]}; Adam lr {cfg.lr}, batch {cfg.batch_size}, "
             f"{cfg.steps} steps. BN normalizes each feature over batch and tokens. All sequences have the same length "
             f"(no padding), the easy case for BN."]
    return Result(ID, TITLE, findings, [table("Final test accuracy", ["norm", "test accuracy"],
                                              {NAMES[k]: [pct(final[k])] for k in NAMES})], plots, notes,
                  numbers={"final accuracy": {NAMES[k]: final[k].mean for k in NAMES}})
