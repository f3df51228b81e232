"""E7: non-i.i.d. mini-batches that keep every class in every batch but group samples by stroke weight (ink): BN,
whose statistics come from the batch, against Batch Renorm and the per-sample norms Group and Layer Norm as
controls (they do not see the batch, so whatever they lose is the sampler's doing, not BN's)."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import accuracy_ci, Effect, Finding, Result, diff_ci, fmt_ci, mean_ci, seeds, tune_and_run
from ._cnn import accuracy_plot, arm_rows, cached_data, cnn_job, steps_for

ID = "E7"
TITLE = "Non-i.i.d. batches (class-balanced, grouped by stroke weight): BN vs Batch Renorm, with GN and LN controls"

NORMS = {"BN": "batch", "GN": "group", "LN": "layer", "Batch Renorm": "renorm"}


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 5  # seeds per arm for the reported numbers
    seed_base: int = 0  # first seed (the runner's --seed-base)
    epochs: float = 10.0  # passes over the training set (same for every arm)
    batch_size: int = 40  # mini-batch size: a multiple of the 10 classes (4 samples of each class per batch)
    bins: int = 8  # ink quantile bins per class; a non-i.i.d. batch comes from one bin (~12 images per class)
    lr_grid: tuple = (0.01, 0.03, 0.1, 0.3, 1.0)  # learning rates tried per arm (SGD, momentum 0.9)
    tune_seeds: int = 2  # seeds that choose each arm's rate (on validation)
    channels: tuple = (16, 32)  # CNN channels
    groups: int = 4  # Group Norm groups
    renorm_schedule: tuple = (0.1, 0.5, 0.5)  # Batch Renorm: plain BN until this fraction of the steps, then
    # rmax -> 3 and dmax -> 5 reached at these fractions (Ioffe 2017: 5k, 40k, 25k of ~130k steps)


QUICK = dict(seeds=2, tune_seeds=1, epochs=1.0)
FULL = dict(seeds=10, epochs=30.0, bins=16)


def run(cfg: Config) -> Result:
    data = cached_data(cfg.data)
    n = len(data.y_train)
    steps = steps_for(cfg.epochs, n, cfg.batch_size)
    renorm = tuple(max(1, int(f * steps)) for f in cfg.renorm_schedule)
    settings = {}
    for label, norm in NORMS.items():
        for sampler in ("iid", "ink"):
            if label == "Batch Renorm" and sampler == "iid":
                continue  # Batch Renorm is the fix for the non-i.i.d. case; BN is its i.i.d. reference
            settings[f"{label}, {'i.i.d.' if sampler == 'iid' else 'grouped by ink'}"] = dict(
                norm=norm, sampler=sampler, **({"renorm": renorm} if norm == "renorm" else {}))
    run_seeds = seeds(cfg)
    arms = tune_and_run(cnn_job, settings, grid=cfg.lr_grid, seeds=run_seeds, tune_seeds=cfg.tune_seeds,
                        data=cfg.data, batch_size=cfg.batch_size, steps=steps, bins=cfg.bins,
                        channels=tuple(cfg.channels), groups=cfg.groups)
    acc = {name: arm.test_accuracy for name, arm in arms.items()}

    def drop(label: str) -> list[float]:
        return [a - b for a, b in zip(acc[f"{label}, i.i.d."], acc[f"{label}, grouped by ink"])]

    bn_drop = Effect("BN i.i.d. - BN grouped by ink, test accuracy (points)", *diff_ci(acc["BN, i.i.d."],
                     acc["BN, grouped by ink"], scale=100), threshold=2.0)
    # the control: the per-sample norm that loses more to the sampler (chosen by its mean drop on validation)
    val_drop = {label: arms[f"{label}, i.i.d."].val_accuracy[arms[f"{label}, i.i.d."].lr_grid.index(
        arms[f"{label}, i.i.d."].lr_chosen)] - arms[f"{label}, grouped by ink"].val_accuracy[
        arms[f"{label}, grouped by ink"].lr_grid.index(arms[f"{label}, grouped by ink"].lr_chosen)]
        for label in ("GN", "LN")}
    control = max(val_drop, key=val_drop.get)
    beyond = Effect(f"BN's drop - {control}'s drop (i.i.d. -> grouped by ink), test accuracy (points)",
                    *diff_ci(drop("BN"), drop(control), scale=100), threshold=2.0)
    renorm_gain = Effect("Batch Renorm - BN, both grouped by ink, test accuracy (points)",
                         *diff_ci(acc["Batch Renorm, grouped by ink"], acc["BN, grouped by ink"], scale=100),
                         threshold=2.0)

    def pct(name: str) -> str:
        return fmt_ci(*accuracy_ci(acc[name]), "%")

    findings = [
        Finding("BN loses accuracy when its mini-batches are not i.i.d.",
                "Ioffe 2017 (arXiv 1702.03275): Inception-v3 with non-i.i.d. batches (16 classes x 2 images): BN "
                "67.0% vs 78.3% i.i.d.",
                "paired over seeds, each arm at its own rate; holds if the 95% interval of BN's test accuracy with "
                "i.i.d. batches minus with batches grouped by ink lies above +2 points (a drop clearly beyond the "
                "seed noise; the anchor's is 11 points), does not hold if below.",
                f"BN: i.i.d. {pct('BN, i.i.d.')}, grouped {pct('BN, grouped by ink')}, drop "
                f"{fmt_ci(bn_drop.estimate, bn_drop.ci95, 'points')}",
                bn_drop, run_seeds),
        Finding("The loss is BN's: per-sample norms (Group, Layer Norm) trained on the same batches lose much less",
                "Wu & He 2018 (arXiv 1803.08494): GN's computation is independent of the batch; Ioffe 2017's failure "
                "is attributed to BN's batch statistics.",
                f"control = the per-sample norm that loses more on validation ({control}); holds if the 95% interval "
                f"of BN's drop - {control}'s drop lies above +2 points, does not hold if below. If the control lost "
                f"as much, the sampler (biased gradients), not BN, would be the cause.",
                f"drops (i.i.d. - grouped): BN {fmt_ci(*mean_ci(drop('BN'), scale=100), 'points')}, GN "
                f"{fmt_ci(*mean_ci(drop('GN'), scale=100), 'points')}, LN "
                f"{fmt_ci(*mean_ci(drop('LN'), scale=100), 'points')}; BN's - {control}'s: "
                f"{fmt_ci(beyond.estimate, beyond.ci95, 'points')}",
                beyond, run_seeds),
        Finding("Batch Renorm fixes BN on non-i.i.d. batches",
                "Ioffe 2017 (arXiv 1702.03275): non-i.i.d. batches: Batch Renorm 78.6% vs BN 67.0% (i.i.d. BN "
                "78.3%).",
                "paired over seeds, both on batches grouped by ink, each at its own rate; holds if the 95% interval "
                "of Batch Renorm - BN lies above +2 points (the anchor recovers 11.6), does not hold if below.",
                f"grouped by ink: Batch Renorm {pct('Batch Renorm, grouped by ink')}, BN {pct('BN, grouped by ink')}, "
                f"difference {fmt_ci(renorm_gain.estimate, renorm_gain.ci95, 'points')}; BN i.i.d. "
                f"{pct('BN, i.i.d.')}",
                renorm_gain, run_seeds),
    ]
    plots = [accuracy_plot("Test accuracy per arm (mean, 95% interval, seeds)", arms)]
    notes = [
        f"CNN {tuple(cfg.channels)} on {cfg.data} ({n} training images), SGD momentum 0.9, batch {cfg.batch_size}, "
        f"{steps} steps ({cfg.epochs:g} epochs) for every arm; every arm gets its own learning rate from "
        f"{list(cfg.lr_grid)}, chosen by validation accuracy on the first {cfg.tune_seeds} seeds, then "
        f"{len(run_seeds)} seeds at it. Intervals: 95% Student t over paired seeds.",
        f"The non-i.i.d. sampler (batchnorm.lab.experiments._cnn.ink_clustered_batches): within each class the "
        f"training images are sorted by ink (sum of pixel values) and cut into {cfg.bins} quantile bins; each batch "
        f"picks one bin and takes {cfg.batch_size // 10} images of every class from it. Every batch is "
        f"class-balanced, so the gradient is not pulled towards a few classes (the earlier 2-classes-per-batch "
        f"sampler broke Group Norm worse than BN, so it tested the sampler, not BN); but all images of a batch share "
        f"a stroke weight, so BN's batch statistics differ from batch to batch and from the population's, like "
        f"Ioffe 2017's batches of few classes. Validation and test are evaluated in eval mode (running statistics).",
        f"Batch Renorm schedule: plain BN for {renorm[0]} steps, rmax 3 at step {renorm[1]}, dmax 5 at step "
        f"{renorm[2]}.",
    ]
    return Result(ID, TITLE, findings, [arm_rows(arms)], plots, notes, arms=[a.to_json() for a in arms.values()],
                  numbers={"test accuracy": {k: sum(v) / len(v) for k, v in acc.items()},
                           "effects": {"BN drop": bn_drop.estimate, "BN drop beyond control": beyond.estimate,
                                       "renorm gain": renorm_gain.estimate}, "control": control})
