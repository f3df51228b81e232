"""E12: recurrent networks reading digits as sequences: LSTM vs BN-LSTM (Cooijmans et al.) vs LN-LSTM, each at its
own tuned Adam rate, after a short budget. On 8x8 digits one pixel per time step (64 steps); on 28x28 MNIST
(`--data mnist5k`, see `batchnorm.lab.scales`) one image row of 28 pixels per step (28 steps): per-time-step BN
cannot train through MNIST's leading blank pixels (see `blank_steps`), and 784 Python-loop steps per sample do not
fit the run's budget."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..data import as_sequence, load
from ..models import RecurrentClassifier
from ..protocol import accuracy_ci, Effect, Finding, Plot, Result, Table, diff_ci, fmt_ci, mean_ci, seeds, tune_and_run
from ..train import seed_everything, train

ID = "E12"
TITLE = "Recurrent: LSTM vs BN-LSTM vs LN-LSTM on pixel-by-pixel digits"

ARMS = {"LSTM": "lstm", "BN-LSTM": "bnlstm", "LN-LSTM": "lnlstm"}
# sequences longer than this run the LSTM and BN-LSTM only (the per-step cost of the normalized LSTMs grows with
# the length: 784 steps on 28x28 MNIST cost ~12x the 64 steps of 8x8 digits)
LONG_SEQUENCE = 100
SEQUENCES = ("pixels", "rows")


@dataclass
class Config:
    data: str = "digits"  # dataset
    sequence: str = "pixels"  # 'pixels': one pixel per time step (row by row, H x W steps); 'rows': one image row
    # of W pixels per step (H steps)
    seeds: int = 5  # seeds per arm for the reported numbers
    seed_base: int = 0  # first seed (--seed-base)
    tune_seeds: int = 1  # seeds the learning rate is chosen on (final validation accuracy)
    lr_grid: tuple = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # Adam learning rates tried for every arm (300x; the
    # BN-LSTM chose 0.1, the old highest)
    steps: int = 200  # Adam steps per run: the short budget at which convergence speed is read
    batch_size: int = 64  # mini-batch size
    hidden_size: int = 32  # LSTM hidden units
    eval_every: int = 50  # steps between validation evaluations (for the curves)
    margin: float = 1.0  # points: the smallest difference counted as faster


QUICK = dict(seeds=2, steps=6, eval_every=3, hidden_size=8, lr_grid=(1e-3, 3e-3, 1e-2, 3e-2))
FULL = dict(seeds=10, steps=2000, eval_every=200, hidden_size=100, tune_seeds=2)


def pixel_sequences(data: str):
    """The dataset with every sample flattened to (1, pixels), so that models read one pixel per time step."""
    dataset = load(data)

    def flat(x):
        return x.reshape(len(x), 1, -1)

    return dataclasses.replace(dataset, x_train=flat(dataset.x_train), x_val=flat(dataset.x_val),
                               x_test=flat(dataset.x_test))


def sequences(data: str, sequence: str = "pixels"):
    """The dataset as the recurrent models read it: 'pixels' gives samples (1, H x W), one pixel per time step
    (`pixel_sequences`); 'rows' keeps the images (C, H, W), read one row of C x W values per time step
    (`data.as_sequence`), each pixel centred by its mean over the training set. Centring keeps a row that is
    blank in one image but not in all from being a zero vector: a per-sample norm (LN-LSTM) of a zero input
    term has zero variance, and over an image's several blank top rows its backward pass multiplies the gradient
    by 1 / sqrt(eps) ~ 316 per row (the LN-LSTM overflowed in its first step without centring)."""
    if sequence not in SEQUENCES:
        raise ValueError(f"sequence must be one of {', '.join(SEQUENCES)}, got {sequence!r}")
    if sequence == "pixels":
        return pixel_sequences(data)
    dataset = load(data)
    if len(dataset.sample_shape) != 3:
        raise ValueError(f"sequence 'rows' needs images (C, H, W); {data!r} has samples of shape "
                         f"{dataset.sample_shape}: use sequence='pixels'")
    mean = dataset.x_train.mean(0, keepdim=True)  # centred by the training set's mean image (see `sequences`)
    return dataclasses.replace(dataset, x_train=dataset.x_train - mean, x_val=dataset.x_val - mean,
                               x_test=dataset.x_test - mean)


def sequence_shape(data: str, sequence: str = "pixels") -> tuple[int, int]:
    """(time steps, values per step) of the sequences `sequences(data, sequence)` gives."""
    shape = load(data).sample_shape
    if sequence == "rows":
        return shape[1], shape[0] * shape[2]
    return int(np.prod(shape)), 1


def blank_steps(data: str, sequence: str = "pixels") -> int:
    """Leading time steps whose input is the same in every training sample (MNIST's blank top rows).

    At such a step per-time-step BN sees zero variance in the input term and, as every hidden state is still the
    same, in the recurrent term too; its backward pass then multiplies the gradient by gamma / sqrt(eps) per
    step (0.1 / sqrt(1e-5) ~ 32 with Cooijmans et al.'s gamma 0.1), so a long run of such steps overflows float32.
    """
    steps = as_sequence(sequences(data, sequence).x_train)  # (N, time steps, values per step)
    varies = (steps != steps[:1]).any(2).any(0)
    return int(varies.float().argmax()) if bool(varies.any()) else int(steps.shape[1])


def train_recurrent(data: str, kind: str, lr: float, seed: int, steps: int, batch_size: int, hidden_size: int,
                    eval_every: int, sequence: str = "pixels") -> dict:
    """Train one recurrent classifier on pixel or row sequences with Adam; its validation curve and test
    accuracy."""
    seed_everything(seed)
    dataset = sequences(data, sequence)
    length, width = sequence_shape(data, sequence)
    model = RecurrentClassifier(width, hidden_size, dataset.num_classes, kind=kind, max_length=length)
    history = train(model, dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, optimizer="adam",
                    eval_every=eval_every)
    return {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy, "steps": history.steps,
            "val_curve": history.val_accuracy, "diverged": history.diverged}


def run(cfg: Config) -> Result:
    seed_list = seeds(cfg)
    length, width = sequence_shape(cfg.data, cfg.sequence)
    names = [n for n in ARMS if length <= LONG_SEQUENCE or n != "LN-LSTM"]
    common = dict(data=cfg.data, steps=cfg.steps, batch_size=cfg.batch_size, hidden_size=cfg.hidden_size,
                  eval_every=cfg.eval_every, sequence=cfg.sequence)
    arms = tune_and_run(train_recurrent, {name: dict(common, kind=ARMS[name]) for name in names},
                        grid=list(cfg.lr_grid), seeds=seed_list, tune_seeds=cfg.tune_seeds)
    test = {name: arm.test_accuracy for name, arm in arms.items()}

    def acc(name: str) -> str:
        return f"{name} {fmt_ci(*accuracy_ci(test[name]), '%')} (lr {arms[name].lr_chosen:g})"

    accuracies = ", ".join(acc(name) for name in names)
    diverged = {name: sum(bool(r["diverged"]) for r in arm.runs) for name, arm in arms.items()}
    if any(diverged.values()):
        accuracies += "; diverged runs: " + ", ".join(f"{n} {k} of {len(seed_list)}" for n, k in diverged.items())
    criterion = (f"test accuracy after {cfg.steps} Adam steps (a short budget: faster convergence shows as higher "
                 f"accuracy at it), each arm at its own rate chosen on validation at that budget; paired difference "
                 f"{{}} - LSTM over seeds, 95% Student-t interval; holds if it lies above +{cfg.margin:g} point")
    findings = []
    for name, anchor in (("BN-LSTM", "Cooijmans et al. 2016 (arXiv 1603.09025): per-time-step BN of the input and "
                                     "recurrent terms, gamma 0.1: faster convergence on sequential (pixel-by-pixel) "
                                     "MNIST."),
                         ("LN-LSTM", "Ba et al. 2016 (arXiv 1607.06450): layer normalization speeds up the training "
                                     "of recurrent networks.")):
        if name not in arms:
            continue
        effect = Effect(f"{name} - LSTM, test accuracy after {cfg.steps} steps (points)",
                        *diff_ci(test[name], test["LSTM"], scale=100), threshold=cfg.margin)
        findings.append(Finding(f"{name} converges faster than the LSTM", anchor, criterion.format(name),
                                f"{name} - LSTM: {fmt_ci(effect.estimate, effect.ci95, 'points')}; {accuracies}",
                                effect, seeds=seed_list))
    curves = {name: {"x": arm.runs[0]["steps"], "y": (100 * np.mean([r["val_curve"] for r in arm.runs], 0)).tolist(),
                     "points": (100 * np.asarray([r["val_curve"] for r in arm.runs])).T.tolist()}
              for name, arm in arms.items() if len({len(r["val_curve"]) for r in arm.runs}) == 1}
    rows = [[name, f"{arm.lr_chosen:g}", fmt_ci(*accuracy_ci(arm.test_accuracy), "%")]
            for name, arm in arms.items()]
    reading = ("one pixel per time step" if cfg.sequence == "pixels" else "one image row per time step")
    notes = [f"{cfg.data} read {reading} ({length} steps of {width} value{'s' if width > 1 else ''}, top to "
             f"bottom); hidden "
             f"{cfg.hidden_size}, Adam, batch {cfg.batch_size}, {cfg.steps} steps; the class is read from the last "
             f"hidden state. BN-LSTM / LN-LSTM: batchnorm.nn.BNLSTM / LNLSTM with their defaults (BN-LSTM keeps "
             f"statistics per time step, gamma 0.1). Each arm's rate from {list(cfg.lr_grid)} by final validation "
             f"accuracy on the first {cfg.tune_seeds} seed(s)."]
    constant = blank_steps(cfg.data, cfg.sequence)
    if constant > 1 and cfg.sequence == "pixels":
        notes.append(f"The first {constant} pixels are the same in every training image (more within one batch), so "
                     f"at those time steps BN sees batches with zero variance: its backward pass then multiplies the "
                     f"gradient by gamma / sqrt(eps) (~32 at gamma 0.1) per step, and through {constant} or more such "
                     f"steps it overflows (the run diverges). This is a property of per-time-step BN on such data, "
                     f"not of the implementation (torch's BatchNorm1d gives the same gradient).")
    if cfg.sequence == "rows":
        notes.append(f"Why rows here: on 28x28 MNIST read pixel by pixel (784 steps), the first ~35 pixels are 0 in "
                     f"every training image and more within a batch of {cfg.batch_size}; per-time-step BN sees zero "
                     f"variance there and its backward pass multiplies the gradient by gamma / sqrt(eps) (~32 at "
                     f"Cooijmans et al.'s gamma 0.1) at each such step, which overflows float32 (the BN-LSTM "
                     f"diverged; torch's BatchNorm1d gives the same gradient). Dropping the pixels that are blank "
                     f"in every training image would not help (batches have longer blank prefixes), and 784 "
                     f"Python-loop steps per sample for 3 arms x 9 runs x {cfg.steps} steps do not fit the run's "
                     f"budget. Read row by row, {constant} leading step(s) are blank in every training image, too "
                     f"few to overflow. Cooijmans et al.'s own setup (gamma 0.1, statistics per time step, those of "
                     f"the last step reused beyond it) is kept; their sequential MNIST reads pixels, so this is a "
                     f"shorter variant of their task.")
    if len(names) < len(ARMS):
        notes.append(f"Sequences of {length} steps: only the LSTM and BN-LSTM run (LN-LSTM is skipped to keep the "
                     f"cost affordable).")
    return Result(ID, TITLE, findings, [Table("Test accuracy", ["network", "lr", "test accuracy"], rows)],
                  [Plot("Validation accuracy over training (each arm at its tuned rate)", "step",
                        "validation accuracy (%)", curves)],
                  notes, arms=[a.to_json() for a in arms.values()],
                  numbers={"test accuracy": {n: float(np.mean(v)) for n, v in test.items()}})
