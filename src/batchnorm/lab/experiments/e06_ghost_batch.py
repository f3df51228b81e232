"""E6: large batches and ghost BN (Hoffer et al. 2017): small vs large batch for the same epochs, ghost BN at the
large batch, and the same extra steps ('regime') with and without ghost BN, so that the effect of ghost BN is
told apart from the effect of more updates; training accuracy tells optimization from generalization gaps."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import accuracy_ci, Effect, Finding, Result, diff_ci, fmt_ci, mean_ci, seeds, tune_and_run
from ._cnn import accuracy_plot, arm_rows, cached_data, cnn_job, steps_for

ID = "E6"
TITLE = "Large batches and ghost BN, with a more-steps control"


@dataclass
class Config:
    data: str = "digits"  # dataset (see batchnorm.lab.data.load)
    seeds: int = 5  # seeds per arm for the reported numbers
    seed_base: int = 0  # first seed (the runner's --seed-base)
    epochs: float = 10.0  # passes over the training set for the small- and large-batch arms
    small_batch: int = 32  # the small batch (also the ghost batch)
    large_batch: int = 256  # the large batch
    regime_factor: int = 4  # 'regime' arms: this many times the large batch's steps
    small_grid: tuple = (0.01, 0.03, 0.1, 0.3)  # learning rates tried at the small batch (SGD, momentum 0.9)
    large_grid: tuple = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # learning rates tried at the large batch (larger: lr
    # scales up; the 4x-steps arms chose 1.0 and then 3.0, each time the highest of the grid)
    tune_seeds: int = 3  # seeds that choose each arm's rate (on validation; 2 seeds chose different rates per seed set)
    channels: tuple = (16, 32)  # CNN channels


QUICK = dict(seeds=2, tune_seeds=1, epochs=1.0, large_batch=128, regime_factor=2)
FULL = dict(seeds=10, epochs=30.0, regime_factor=8)


def run(cfg: Config) -> Result:
    data = cached_data(cfg.data)
    n = len(data.y_train)
    small, large, factor = cfg.small_batch, cfg.large_batch, cfg.regime_factor
    small_steps, large_steps = steps_for(cfg.epochs, n, small), steps_for(cfg.epochs, n, large)
    names = {"small": f"small (batch {small})", "large": f"large (batch {large})",
             "ghost": f"large + ghost BN ({small})", "steps": f"large + {factor}x steps",
             "ghost steps": f"large + ghost BN + {factor}x steps"}
    settings = {
        names["small"]: dict(norm="batch", batch_size=small, steps=small_steps),
        names["large"]: dict(norm="batch", batch_size=large, steps=large_steps),
        names["ghost"]: dict(norm="ghost", virtual_batch_size=small, batch_size=large, steps=large_steps),
        names["steps"]: dict(norm="batch", batch_size=large, steps=factor * large_steps),
        names["ghost steps"]: dict(norm="ghost", virtual_batch_size=small, batch_size=large,
                                   steps=factor * large_steps),
    }
    grids = {name: cfg.small_grid if s["batch_size"] == small else cfg.large_grid for name, s in settings.items()}
    run_seeds = seeds(cfg)
    arms = tune_and_run(cnn_job, settings, grid=grids, seeds=run_seeds, tune_seeds=cfg.tune_seeds, data=cfg.data,
                        channels=tuple(cfg.channels), train_accuracy=True)
    test = {k: arms[v].test_accuracy for k, v in names.items()}
    train = {k: arms[v].values("train_accuracy") for k, v in names.items()}

    gap = Effect("small - large batch, test accuracy (points)", *diff_ci(test["small"], test["large"], scale=100),
                 threshold=1.0)
    train_gap = diff_ci(train["small"], train["large"], scale=100)
    ghost = Effect("large + ghost BN - large, test accuracy (points)",
                   *diff_ci(test["ghost"], test["large"], scale=100), threshold=0.5)
    beyond_steps = Effect(f"(large + ghost BN + {factor}x steps) - (large + {factor}x steps), test accuracy (points)",
                          *diff_ci(test["ghost steps"], test["steps"], scale=100), threshold=0.5)
    steps_only = diff_ci(test["steps"], test["large"], scale=100)

    def pct(key: str, kind: str = "test") -> str:
        return fmt_ci(*accuracy_ci((test if kind == "test" else train)[key]), "%")

    findings = [
        Finding(f"Large batches generalize worse than small ones (batch {small} vs {large}, same epochs)",
                "Hoffer et al. 2017 (arXiv 1705.08741): ResNet44/CIFAR-10 small batch 92.83%, large batch 86.10%.",
                f"both trained {cfg.epochs:g} epochs ({small_steps} vs {large_steps} steps), each at its own rate; "
                f"holds if the 95% interval of small - large (test accuracy) lies above +1 point, does not hold "
                f"if below. Training accuracy is reported beside it: a gap that is also there in training accuracy "
                f"is an optimization gap (too few updates), not a generalization gap.",
                f"test: small {pct('small')}, large {pct('large')}, difference "
                f"{fmt_ci(gap.estimate, gap.ci95, 'points')}; training accuracy: small {pct('small', 'train')}, large "
                f"{pct('large', 'train')}, difference {fmt_ci(*train_gap, 'points')}",
                gap, run_seeds),
        Finding(f"Ghost BN (normalizing chunks of {small}) closes part of the large-batch gap at equal steps",
                "Hoffer et al. 2017 (arXiv 1705.08741): large batch + sqrt lr 89.30%, + ghost BN 90.50% (+1.2 points); "
                "a ResNet-50/ImageNet replication found -0.3 to +0.3 points.",
                f"same batch ({large}), same steps ({large_steps}), each at its own rate; holds if the 95% interval "
                f"of ghost - plain BN (test accuracy) lies above +0.5 point (a part of the anchor's +1.2 worth "
                f"naming), does not hold if below.",
                f"test: large + ghost {pct('ghost')}, large {pct('large')}, difference "
                f"{fmt_ci(ghost.estimate, ghost.ci95, 'points')}; training accuracy: ghost {pct('ghost', 'train')}, "
                f"plain {pct('large', 'train')}",
                ghost, run_seeds),
        Finding(f"With more steps (Hoffer's 'regime', here {factor}x), ghost BN still adds accuracy beyond what the "
                f"extra steps give",
                "Hoffer et al. 2017 (arXiv 1705.08741): + ghost BN + regime 93.07%, credited to ghost BN and longer "
                "training together; the paper has no 'more steps without ghost BN' arm.",
                f"control: large batch with the same {factor}x steps and plain BN; holds if the 95% interval of "
                f"(ghost + {factor}x) - (plain + {factor}x) lies above +0.5 point, does not hold if below.",
                f"test: ghost + {factor}x {pct('ghost steps')}, plain + {factor}x {pct('steps')}, difference "
                f"{fmt_ci(beyond_steps.estimate, beyond_steps.ci95, 'points')}; the extra steps alone: plain + "
                f"{factor}x - plain {fmt_ci(*steps_only, 'points')}; training accuracy: ghost + {factor}x "
                f"{pct('ghost steps', 'train')}, plain + {factor}x {pct('steps', 'train')}, small "
                f"{pct('small', 'train')}",
                beyond_steps, run_seeds),
    ]
    plots = [accuracy_plot("Test accuracy per arm (mean, 95% interval, seeds)", arms),
             accuracy_plot("Training accuracy per arm (eval mode)", arms, key="train_accuracy",
                           ylabel="training accuracy (%)", series="train")]
    notes = [
        f"CNN {tuple(cfg.channels)} on {cfg.data} ({n} training images), SGD momentum 0.9. {cfg.epochs:g} epochs: "
        f"{small_steps} steps at batch {small}, {large_steps} at batch {large}; the regime arms run "
        f"{factor * large_steps} steps. Every arm gets its own learning rate (batch {small}: {list(cfg.small_grid)}; "
        f"batch {large}: {list(cfg.large_grid)}), chosen by validation accuracy on the first {cfg.tune_seeds} "
        f"seeds, then {len(run_seeds)} seeds at it. Intervals: 95% Student t over paired seeds.",
        f"Ghost BN: batchnorm.nn.BatchNorm2d(virtual_batch_size={small}) normalizes each chunk of {small} samples "
        f"of the {large}-sample batch with its own statistics; the gradient is still the whole batch's. The "
        f"'{names['steps']}' arm is the control the ghost BN claim needs: without it, a gain of ghost + regime "
        f"cannot be told from the gain of the extra steps.",
        "Training accuracy is measured in eval mode on the whole training set. If the large batch's training "
        "accuracy is as far below the small batch's as its test accuracy, the gap is one of optimization (fewer "
        "updates at equal epochs), which more steps close; a generalization gap shows as equal training accuracy "
        "and lower test accuracy.",
    ]
    extra = {name: f"batch {s['batch_size']}, {s['steps']} steps" + (
        f", ghost {s['virtual_batch_size']}" if "virtual_batch_size" in s else "") for name, s in settings.items()}
    return Result(ID, TITLE, findings, [arm_rows(arms, extra)], plots, notes,
                  arms=[a.to_json() for a in arms.values()],
                  numbers={"test accuracy": {names[k]: sum(v) / len(v) for k, v in test.items()},
                           "train accuracy": {names[k]: sum(v) / len(v) for k, v in train.items()},
                           "effects": {"gap": gap.estimate, "ghost": ghost.estimate,
                                       "ghost beyond steps": beyond_steps.estimate}})
