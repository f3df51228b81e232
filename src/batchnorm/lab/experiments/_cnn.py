"""Training jobs shared by the CNN experiments (E5, E6, E7): one module-level function that builds the small CNN
with a chosen norm, trains it with SGD and returns validation, test (and optionally training) accuracy; the
feature-clustered batch sampler of E7; and helpers that turn tuned arms into tables and plots.

A job is a pure function of its keyword arguments (it seeds itself and loads its data by name), so
`batchnorm.lab.jobs.run_jobs` gives the same numbers for any number of workers.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator

import torch

from ..data import Dataset, load
from ..models import CNN
from ..protocol import Plot, Table, accuracy_ci, mean_ci
from ..train import evaluate, seed_everything, shuffled_batches, train

__all__ = ["cnn_job", "steps_for", "ink_clustered_batches", "arm_rows", "accuracy_plot", "domain_pair"]


@functools.lru_cache(maxsize=8)
def cached_data(name: str) -> Dataset:
    """`load(name)`, once per process."""
    return load(name)


def domain_pair(data: str) -> tuple[str, str]:
    """(source, target) of the real digit-domain shift for `--data data`: scikit-learn's digits -> MNIST in the
    digits' 8x8 format ('mnist5k-8x8'); with 'mnist5k' or 'mnist5k-8x8' the other way round. Other datasets have
    no real partner, so the digits pair is used for them too."""
    if data in ("mnist5k", "mnist5k-8x8"):
        return "mnist5k-8x8", "digits"
    return "digits", "mnist5k-8x8"


def steps_for(epochs: float, train_size: int, batch_size: int) -> int:
    """SGD steps that make `epochs` passes over `train_size` samples at `batch_size` (at least 1)."""
    return max(1, int(round(epochs * train_size / batch_size)))


def ink_clustered_batches(x: torch.Tensor, labels: torch.Tensor, batch_size: int, bins: int,
                          generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless non-i.i.d. but class-balanced mini-batches: within each class the samples are sorted by their ink
    (sum of pixel values) and cut into `bins` quantile bins; every batch draws one bin index k at random and takes
    batch_size / num_classes samples of every class from bin k.

    Every batch holds every class equally often (so the gradient is not biased towards a few classes and
    per-sample norms such as Group or Layer Norm see nothing unusual), but all its samples share a stroke
    weight, so the batch statistics that BN normalizes with differ from batch to batch and from the population's.

    Args:
        x: training inputs (N, ...). labels: (N,) int64. batch_size: a multiple of the number of classes.
        bins: quantile bins per class (>= 2). generator: the random source.

    Example:
        >>> import torch
        >>> x, y = torch.rand(200, 1, 8, 8), torch.arange(200) % 10       # 20 samples of each of 10 classes
        >>> batches = ink_clustered_batches(x, y, 40, 4, torch.Generator().manual_seed(0))
        >>> batch = next(batches)                                          # indices into x
        >>> batch.shape, torch.bincount(y[batch]).tolist()                 # 4 samples of every class
        (torch.Size([40]), [4, 4, 4, 4, 4, 4, 4, 4, 4, 4])
    """
    classes = torch.unique(labels)
    if batch_size % len(classes):
        raise ValueError(f"batch_size must be a multiple of the number of classes ({len(classes)}) so every "
                         f"batch is class-balanced, got {batch_size}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2 (one bin is i.i.d. sampling), got {bins}")
    per_class = batch_size // len(classes)
    ink = x.reshape(len(x), -1).sum(1)
    groups = []  # groups[k][c]: indices of class c in ink bin k
    for c in classes:
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.argsort(ink[members], stable=True)]
        groups.append(torch.tensor_split(members, bins))
    if min(len(part) for parts in groups for part in parts) < 1:
        raise ValueError(f"bins ({bins}) leaves an empty bin for some class; use fewer bins")
    while True:
        k = int(torch.randint(bins, (1,), generator=generator))
        parts = [groups[c][k][torch.randint(len(groups[c][k]), (per_class,), generator=generator)]
                 for c in range(len(classes))]
        yield torch.cat(parts)


def cnn_job(*, lr: float, seed: int, data: str, norm: str, batch_size: int, steps: int, channels: tuple = (16, 32),
            groups: int = 4, virtual_batch_size: int | None = None, renorm: tuple | None = None,
            sampler: str = "iid", bins: int = 4, momentum: float = 0.9, train_accuracy: bool = False) -> dict:
    """Train the lab's small CNN with `norm` by SGD and measure it.

    Args:
        lr, seed: learning rate and seed (initialization and batch order). data: dataset name.
        norm: see `batchnorm.lab.models.NORMS`. batch_size, steps: the SGD batch and number of updates.
        channels: CNN widths. groups: Group Norm groups. virtual_batch_size: ghost BN's normalization batch.
        renorm: (warmup_steps, rmax_steps, dmax_steps) of Batch Renorm. sampler: 'iid' or 'ink' (see
        `ink_clustered_batches`, with `bins`). momentum: 0.9. train_accuracy: also measure the training set.

    Returns:
        {"val_accuracy", "test_accuracy", "diverged", and "train_accuracy" if asked}; accuracies in eval mode.
    """
    dataset = cached_data(data)
    seed_everything(seed)
    options: dict = {"groups": groups}
    if virtual_batch_size is not None:
        options["virtual_batch_size"] = virtual_batch_size
    if renorm is not None:
        options.update(warmup_steps=renorm[0], rmax_steps=renorm[1], dmax_steps=renorm[2])
        options.pop("groups")
    model = CNN(dataset.sample_shape, tuple(channels), dataset.num_classes, norm=norm, **options)
    generator = torch.Generator().manual_seed(seed)
    if sampler == "iid":
        batches = shuffled_batches(len(dataset.y_train), batch_size, generator)
    elif sampler == "ink":
        batches = ink_clustered_batches(dataset.x_train, dataset.y_train, batch_size, bins, generator)
    else:
        raise ValueError(f"sampler must be 'iid' or 'ink', got {sampler!r}")
    history = train(model, dataset, steps=steps, batch_size=batch_size, lr=lr, momentum=momentum, seed=seed,
                    batches=batches)
    result = {"val_accuracy": history.final_val, "test_accuracy": history.test_accuracy,
              "diverged": bool(history.diverged)}
    if train_accuracy:
        result["train_accuracy"] = evaluate(model, dataset.x_train, dataset.y_train)
    return result


def _pct(values: list[float]) -> str:
    estimate, (lo, hi) = accuracy_ci(values)
    if len(values) < 2:
        return f"{estimate:.1f}%"
    return f"{estimate:.1f}% [{lo:.1f}, {hi:.1f}]"


def arm_rows(arms: dict, extra: dict[str, str] | None = None) -> Table:
    """A table of tuned arms: chosen rate, validation accuracy at it, test accuracy (mean and 95% interval)."""
    extra = extra or {}
    rows = []
    for name, arm in arms.items():
        val = arm.val_accuracy[arm.lr_grid.index(arm.lr_chosen)]
        rows.append([name, f"{arm.lr_chosen:g}", f"{100 * val:.1f}%", _pct(arm.test_accuracy), extra.get(name, "")])
    return Table("Arms (each at its own learning rate, chosen on validation)",
                 ["arm", "lr chosen", "val accuracy (tuning seeds)", "test accuracy, mean [95% CI]",
                  "setting"], rows)


def accuracy_plot(title: str, arms: dict, key: str = "test_accuracy", ylabel: str = "test accuracy (%)",
                  series: str = "test") -> Plot:
    """Bars of mean accuracy per arm with 95% half-widths and the per-seed values as points."""
    x, y, err, points = [], [], [], []
    for name, arm in arms.items():
        values = [100 * v for v in arm.values(key)]
        estimate, (lo, hi) = mean_ci(values)
        x.append(name)
        y.append(estimate)
        err.append((hi - lo) / 2 if math.isfinite(hi) else 0.0)
        points.append(values)
    return Plot(title, "", ylabel, {series: {"x": x, "y": y, "err": err, "points": points}}, kind="bar")
