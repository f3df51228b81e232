"""The lab's experiments, one file each; `EXPERIMENTS` maps each id to its module, in the order they run.

How to add an experiment (say E16):
1. Copy the shortest existing file (e.g. `e13_norm_position.py`) to `e16_<topic>.py`. Keep its shape:
   - `ID = "E16"`, `TITLE = "<one line>"`;
   - `@dataclass class Config` with a comment on every field; it must have `data: str = "digits"` and
     `seeds: int = 3`; the defaults are the default scale (the whole default run must stay <= 10 minutes);
   - `QUICK = dict(...)`: overrides for the quick scale used by the tests (a few seconds), `FULL = dict(...)`:
     overrides for `--full`;
   - `run(cfg) -> protocol.Result`: loop over jobs with `progress.jobs(...)` (the training loop reports
     within a job), summarize per setting with `protocol.stat` (mean +- std over seeds), and make each
     `protocol.Finding` with the claim, the anchor from LITERATURE.md, a criterion that names numbers and
     thresholds, and a verdict computed from those numbers with `protocol.verdict(...)`.
   - If it needs a layer or tool that may be missing, catch `models.LayerMissing` and return
     `protocol.not_run(...)` (say so, never fake it).
2. Register it below: `"E16": "e16_<topic>"`.
3. Add a quick-scale test in tests/test_lab_experiments.py: the result structure and at least one property
   that must hold.
Results are cached by (id, config, code digest) in DIR/cache, so changing the file re-runs it.
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
