"""E12: recurrent networks: LSTM vs BN-LSTM (Cooijmans et al.) vs LN-LSTM on sequential digits (one image row,
or one signal value, per time step)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import progress
from ..data import as_sequence, load
from ..models import LayerMissing, RecurrentClassifier
from ..protocol import Finding, Result, not_run, stat, verdict
from ..train import seed_everything, train
from ._common import curve_plot, pct, table

ID = "E12"
TITLE = "Recurrent: LSTM vs BN-LSTM vs LN-LSTM"

NAMES = {"lstm": "LSTM", "bnlstm": "BN-LSTM", "lnlstm": "LN-LSTM"}
CLAIMS = [("BN-LSTM converges faster than the LSTM",
           "Cooijmans et al. 2016 (arXiv 1603.09025): per-time-step BN, gamma 0.1: faster convergence on sequential "
           "MNIST.", "see the report")]


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.as_sequence for the time steps)
    seeds: int = 3  # seeds per setting
    steps: int = 300  # Adam steps per run
    batch_size: int = 64  # mini-batch size
    lr: float = 2e-3  # Adam learning rate
    hidden_size: int = 64  # LSTM hidden units
    eval_every: int = 25  # steps between test evaluations


QUICK = dict(seeds=1, steps=60, eval_every=20)
FULL = dict(seeds=5, steps=3000, eval_every=100)


def run(cfg: Config) -> Result:
    data = load(cfg.data)
    sequence = as_sequence(data.x_test[:1])
    try:
        for kind in NAMES:
            RecurrentClassifier(sequence.shape[2], 4, kind=kind, max_length=sequence.shape[1])
    except LayerMissing as error:
        return not_run(ID, TITLE, CLAIMS, str(error))
    runs = {}
    for kind, seed in progress.jobs([(k, s) for k in NAMES for s in range(cfg.seeds)]):
        seed_everything(seed)
        model = RecurrentClassifier(sequence.shape[2], cfg.hidden_size, data.num_classes, kind=kind,
                                    max_length=sequence.shape[1])
        runs.setdefault(kind, []).append(train(model, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                               seed=seed, optimizer="adam", eval_every=cfg.eval_every))
    # convergence speed: mean test accuracy over the checkpoints (area under the curve / steps)
    area = {k: stat([float(np.mean(h.test_accuracy)) for h in v]) for k, v in runs.items()}
    final = {k: stat([h.final_accuracy for h in v]) for k, v in runs.items()}
    findings = [
        Finding(CLAIMS[0][0], CLAIMS[0][1],
                "speed = mean test accuracy over all checkpoints (area under the curve); holds if BN-LSTM's is "
                ">= 2 points above the LSTM's; partly if above",
                verdict(area["bnlstm"].mean >= area["lstm"].mean + 0.02, area["bnlstm"].mean > area["lstm"].mean),
                f"area: BN-LSTM {pct(area['bnlstm'])}, LSTM {pct(area['lstm'])}; final: BN-LSTM "
                f"{pct(final['bnlstm'])}, LSTM {pct(final['lstm'])}"),
        Finding("LN-LSTM converges faster than the LSTM",
                "Ba et al. 2016 (layer normalization): faster convergence of recurrent networks.",
                "same measure; holds if LN-LSTM's area is >= 2 points above the LSTM's; partly if above",
                verdict(area["lnlstm"].mean >= area["lstm"].mean + 0.02, area["lnlstm"].mean > area["lstm"].mean),
                f"area: LN-LSTM {pct(area['lnlstm'])}, LSTM {pct(area['lstm'])}; final: LN-LSTM "
                f"{pct(final['lnlstm'])}"),
    ]
    steps = runs["lstm"][0].steps
    plots = [curve_plot("Test accuracy over training", "step", "test accuracy", steps,
                        {NAMES[k]: [h.test_accuracy for h in v] for k, v in runs.items()})]
    rows = {NAMES[k]: [pct(area[k]), pct(final[k])] for k in NAMES}
    notes = [f"{cfg.data} as sequences of {sequence.shape[1]} steps x {sequence.shape[2]} features; hidden "
             f"{cfg.hidden_size}, Adam lr {cfg.lr}, batch {cfg.batch_size}, {cfg.steps} steps; classify from the last "
             f"hidden state. BN-LSTM / LN-LSTM: batchnorm.nn.BNLSTM / LNLSTM with their defaults."]
    return Result(ID, TITLE, findings, [table("Accuracy", ["network", "mean over checkpoints", "final"], rows)],
                  plots, notes, numbers={"area": {NAMES[k]: v.mean for k, v in area.items()},
                                         "final accuracy": {NAMES[k]: v.mean for k, v in final.items()}})
