"""E11: BN vs LN in a tiny post-norm transformer encoder, each norm (and no norm) at its own tuned Adam rate."""

from __future__ import annotations

from dataclasses import dataclass

from ..data import as_sequence, load
from ..models import TinyTransformer
from ..protocol import accuracy_ci, Effect, Finding, Plot, Result, Table, diff_ci, fmt_ci, mean_ci, seeds, tune_and_run
from ..train import seed_everything, train

ID = "E11"
TITLE = "Transformers: layer norm vs batch norm (is BERT's norm BN?)"

ARMS = {"LN (BERT's)": dict(norm="layer"), "BN": dict(norm="batch"), "no norm": dict(norm="none")}
ANCHOR = ("BERT uses layer normalization, not batch normalization (google-research/bert modeling.py: layer_norm); so "
          "does the original Transformer. Texts that say BERT uses BN are wrong on the fact; whether BN could "
          "stand in is the question tested here.")


@dataclass
class Config:
    data: str = "digits"  # dataset (image rows or signal values become tokens)
    seeds: int = 5  # seeds per arm for the reported numbers
    seed_base: int = 0  # first seed (--seed-base)
    tune_seeds: int = 2  # seeds the learning rate is chosen on (validation accuracy)
    lr_grid: tuple = (1e-3, 3e-3, 1e-2, 3e-2)  # Adam learning rates tried for every arm (30x)
    steps: int = 300  # Adam steps per run
    batch_size: int = 64  # mini-batch size
    d_model: int = 32  # model width
    layers: int = 2  # encoder layers (post-norm, as BERT)


QUICK = dict(seeds=2, tune_seeds=1, steps=15, d_model=16, layers=1, lr_grid=(1e-3, 3e-3, 1e-2, 3e-2))
FULL = dict(seeds=10, steps=2000, layers=4)


def train_transformer(data: str, norm: str, lr: float, seed: int, steps: int, batch_size: int, d_model: int,
                      layers: int) -> dict:
    """Train one TinyTransformer with Adam; its final validation and test accuracy."""
    seed_everything(seed)
    dataset = load(data)
    tokens = as_sequence(dataset.x_val[:1])
    model = TinyTransformer(tokens.shape[2], tokens.shape[1], d_model, layers=layers,
                            num_classes=dataset.num_classes, norm=norm)
    history = train(model, dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, optimizer="adam")
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy}


def run(cfg: Config) -> Result:
    seed_list = seeds(cfg)
    common = dict(data=cfg.data, steps=cfg.steps, batch_size=cfg.batch_size, d_model=cfg.d_model, layers=cfg.layers)
    arms = tune_and_run(train_transformer, {name: dict(common, **spec) for name, spec in ARMS.items()},
                        grid=list(cfg.lr_grid), seeds=seed_list, tune_seeds=cfg.tune_seeds)
    test = {name: arm.test_accuracy for name, arm in arms.items()}
    ln, bn, none = test["LN (BERT's)"], test["BN"], test["no norm"]
    gap = Effect("LN - BN, test accuracy (points)", *diff_ci(ln, bn, scale=100), threshold=1.0, direction="below")
    control = Effect("LN - no norm, test accuracy (points)", *diff_ci(ln, none, scale=100), threshold=1.0)

    def acc(name: str) -> str:
        return f"{name} {fmt_ci(*accuracy_ci(test[name]), '%')} (lr {arms[name].lr_chosen:g})"

    evidence = "test accuracy: " + ", ".join(acc(name) for name in ARMS)
    findings = [
        Finding("BN can stand in for LN in a transformer encoder (texts say BERT uses batch norm; it uses layer "
                "norm)", ANCHOR,
                "test accuracy, each arm at its own Adam rate chosen on validation; paired difference LN - BN over "
                "seeds, 95% Student-t interval; holds if it lies below +1 point (BN at most 1 point worse), does not "
                "hold if it lies above. The claim about BERT is false either way: it uses LN",
                f"LN - BN: {fmt_ci(gap.estimate, gap.ci95, 'points')}; {evidence}", gap, seeds=seed_list),
        Finding("Normalization matters in this encoder (the control that makes the comparison informative)", ANCHOR,
                "paired difference LN - no norm, test accuracy; holds if the interval lies above +1 point",
                f"LN - no norm: {fmt_ci(control.estimate, control.ci95, 'points')}; {evidence}", control,
                seeds=seed_list),
    ]
    rows = [[name, f"{arm.lr_chosen:g}", fmt_ci(*accuracy_ci(arm.test_accuracy), "%")]
            for name, arm in arms.items()]
    tokens = as_sequence(load(cfg.data).x_val[:1])
    notes = [f"Post-norm encoder ({cfg.layers} layers, d_model {cfg.d_model}, 2 heads, GELU feed-forward) on "
             f"{cfg.data} as {tokens.shape[1]} tokens of {tokens.shape[2]}; Adam, batch {cfg.batch_size}, {cfg.steps} "
             f"steps. Each arm's rate is chosen from {list(cfg.lr_grid)} by final validation accuracy on the first "
             f"{cfg.tune_seeds} seeds, then every seed runs at it. BN normalizes each feature over batch and tokens; "
             f"all sequences have the same length (no padding), the easy case for BN: with padded text BN's "
             f"statistics also mix in padding positions."]
    plot = Plot("Test accuracy per seed (each arm at its tuned rate)", "arm", "test accuracy (%)",
                {"test accuracy": {"x": list(arms), "y": [mean_ci(a.test_accuracy, scale=100)[0] for a in arms.values()],
                                   "points": [[100 * v for v in a.test_accuracy] for a in arms.values()]}}, kind="bar")
    return Result(ID, TITLE, findings, [Table("Test accuracy", ["arm", "lr", "test accuracy [95% CI]"], rows)],
                  [plot], notes, arms=[a.to_json() for a in arms.values()],
                  numbers={"test accuracy": {name: float(sum(v) / len(v)) for name, v in test.items()},
                           "LN - BN (points)": gap.estimate})
