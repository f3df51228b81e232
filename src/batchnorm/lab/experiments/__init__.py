"""The lab's experiments, one file each; `EXPERIMENTS` maps each id to its module, in the order they run.

How to add an experiment (say E20):
1. Start from a short existing file (e.g. `e11_transformer.py`, or `e16_gradient_explosion.py` for one that
   trains nothing) and name it `e20_<topic>.py`. Keep its shape:
   - `ID = "E20"`, `TITLE = "<one line>"`;
   - `@dataclass class Config` with a comment on every field; it has `data: str = "digits"`, `seeds: int = 5`
     (>= 5 at the default scale) and `seed_base: int = 0` (the runner sets it from `--seed-base`; use
     `protocol.seeds(cfg)` for the seed list), plus the learning-rate grid of each arm (>= 4 values spanning
     >= 30x). The defaults are the default scale: all its tuning and final runs within ~70 CPU-seconds;
   - `QUICK = dict(...)`: overrides for the quick scale used by the tests (~3 s), `FULL = dict(...)`: for `--full`;
   - a module-level job function taking plain keyword arguments (names and numbers, never tensors or models),
     seeding itself (`train.seed_everything(seed)`), loading its data by name (`data.load(name)`) and returning a
     dict of numbers with at least "val_accuracy" (validation, higher is better) and "test_accuracy" (the test
     set, read once, at the end). `jobs.run_jobs` runs such calls in parallel worker processes;
   - `run(cfg) -> protocol.Result`: `protocol.tune_and_run(job, {arm: kwargs}, grid=..., seeds=seeds(cfg))` gives
     every arm its own rate chosen on validation and runs every seed at it; compute each effect with
     `mean_ci` / `diff_ci` / `ratio_ci` (95% intervals over seeds), wrap it in `protocol.Effect(name, estimate,
     ci, threshold, direction)`, and make each `protocol.Finding(claim, anchor, criterion, evidence, effect,
     seeds=...)`: the verdict is computed from the interval (holds / inconclusive / does not hold; `weaker=`
     for partly holds), never written by hand. The criterion names the effect and the threshold and says why
     that threshold (from the claim and its anchor, not from the numbers); the evidence formats numbers with
     `fmt_ci`. Put `[arm.to_json() for arm in arms.values()]` in `Result(arms=...)`, per-seed `points` in plots,
     and the design (why these arms, controls, budget) in `notes`.
2. Register it below: `"E20": "e20_<topic>"`.
3. Add a quick-scale test under tests/lab/: the result structure and at least one property that must hold.
Then run it at the default scale with two disjoint seed sets (`--seed-base 0`, `--seed-base 100`): no finding
may hold in one and fail in the other. Results are cached by (id, config, code and versions) in DIR/cache.
"""

from __future__ import annotations

import importlib

EXPERIMENTS = {
    "E1": "e01_figure1",
    "E2": "e02_learning_rate",
    "E3": "e03_initialization",
    "E4": "e04_regularization",
    "E5": "e05_batch_size",
    "E6": "e06_ghost_batch",
    "E7": "e07_non_iid",
    "E8": "e08_precise_stats",
    "E9": "e09_covariate_shift",
    "E10": "e10_domain_shift",
    "E11": "e11_transformer",
    "E12": "e12_recurrent",
    "E13": "e13_norm_position",
    "E14": "e14_transfer",
    "E15": "e15_wall_clock",
    "E16": "e16_gradient_explosion",
    "E17": "e17_weight_decay",
    "E18": "e18_train_test_mode",
    "E19": "e19_deep_residual",
}


def load_experiment(experiment: str):
    """The module of experiment `experiment` ('E1', 'e1', ...)."""
    key = experiment.upper()
    if key not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}, got {experiment!r}")
    return importlib.import_module(f"{__name__}.{EXPERIMENTS[key]}")
