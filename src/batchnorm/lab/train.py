"""The lab's training loop: mini-batch SGD on cross-entropy with periodic validation, one test evaluation at
the end, divergence detection and progress reporting; plus `evaluate` and the batch samplers (i.i.d. shuffling
and class-clustered batches).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from . import progress
from .data import Dataset

__all__ = ["History", "train", "evaluate", "shuffled_batches", "class_clustered_batches", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (initialization, dropout, noisy BN)."""
    torch.manual_seed(seed)


@dataclass
class History:
    """What `train` measured. steps[i] is the step count at validation i; the test set is read once, at the end."""

    steps: list[int] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)  # validation accuracy at each of `steps`
    train_loss: list[float] = field(default_factory=list)  # mean training loss since the previous evaluation
    test_accuracy: float = math.nan  # test accuracy of the final model (the reported number)
    diverged: bool = False  # the loss became NaN/inf or exceeded `divergence_loss`
    seconds: float = 0.0  # wall-clock training time (evaluations excluded)

    @property
    def final_val(self) -> float:
        """Validation accuracy of the final model (what learning rates are tuned on)."""
        return self.val_accuracy[-1] if self.val_accuracy else math.nan


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024,
             train_mode: bool = False) -> float:
    """Accuracy of `model` on (x, y) in eval mode (or in train mode without gradient, e.g. for batch stats);
    restores the model's mode. Non-finite outputs count as wrong."""
    was_training = model.training
    model.train(train_mode)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            out = model(x[start:start + batch_size])
            ok = out.argmax(1) == y[start:start + batch_size]
            ok &= torch.isfinite(out).all(1)
            correct += int(ok.sum())
    model.train(was_training)
    return correct / max(len(y), 1)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless i.i.d. mini-batches: a fresh permutation every epoch, cut into batches (the last partial one is
    dropped, so every batch has batch_size samples)."""
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be in 1..{n} (the training set size), got {batch_size}")
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def class_clustered_batches(labels: torch.Tensor, batch_size: int, classes_per_batch: int,
                            generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless non-i.i.d. mini-batches: each draws `classes_per_batch` random classes and batch_size /
    classes_per_batch samples of each (Ioffe 2017's 16 classes x 2 images, scaled down)."""
    classes = torch.unique(labels)
    if batch_size % classes_per_batch:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of classes_per_batch ({classes_per_batch})")
    per_class = batch_size // classes_per_batch
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    while True:
        chosen = torch.randperm(len(classes), generator=generator)[:classes_per_batch]
        parts = [members[c][torch.randint(len(members[c]), (per_class,), generator=generator)] for c in chosen]
        yield torch.cat(parts)


def train(model: nn.Module, data: Dataset, *, steps: int, batch_size: int, lr: float, seed: int,
          optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0, eval_every: int | None = None,
          batches: Iterator[torch.Tensor] | None = None, divergence_loss: float = 1e3,
          on_step: Callable[[int, nn.Module, torch.Tensor], None] | None = None,
          lr_schedule: Callable[[int], float] | None = None) -> History:
    """Train `model` in place on `data` and return its `History`.

    loss = cross_entropy(model(x_batch), y_batch), minimized by SGD (lr, momentum, weight_decay) or Adam
    (optimizer='adam'). Evaluates validation accuracy every `eval_every` steps (default: only at the end) and at
    the end, and test accuracy once, at the end. Stops early, marking `diverged`, if the loss is not finite or
    exceeds `divergence_loss` (a diverged network is evaluated as it is: about chance).

    Args:
        steps: number of mini-batch updates. batch_size: samples per batch. lr: learning rate. seed: batch order.
        batches: an iterator of index tensors (default: `shuffled_batches`). on_step(step, model, loss): a hook
        called after each update. lr_schedule(step) -> multiplier of lr (default constant).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    generator = torch.Generator().manual_seed(seed)
    batches = batches if batches is not None else shuffled_batches(len(data.y_train), batch_size, generator)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if data.x_val is None:
        raise ValueError(f"train needs a dataset with a validation split; {data.name!r} has none: pass it "
                         f"through batchnorm.lab.data.with_validation(...) (load(...) does this)")
    x_val, y_val = data.x_val, data.y_val
    history = History()
    eval_every = eval_every or steps
    running, count = 0.0, 0
    model.train()
    clock = 0.0
    for step in range(1, steps + 1):
        start = time.perf_counter()
        if lr_schedule is not None:
            for group in opt.param_groups:
                group["lr"] = lr * lr_schedule(step)
        index = next(batches)
        loss = nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index])
        value = float(loss.detach())
        if not math.isfinite(value) or value > divergence_loss:
            history.diverged = True
            clock += time.perf_counter() - start
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clock += time.perf_counter() - start
        running, count = running + value, count + 1
        if on_step is not None:
            on_step(step, model, loss)
        if step % eval_every == 0 or step == steps:
            history.steps.append(step)
            history.val_accuracy.append(evaluate(model, x_val, y_val))
            history.train_loss.append(running / max(count, 1))
            running, count = 0.0, 0
        if step % 10 == 0:
            progress.within(step / steps)
    if history.diverged:
        # record where it stopped: chance-level accuracy is what a diverged network delivers
        history.steps.append(step)
        history.val_accuracy.append(evaluate(model, x_val, y_val))
        history.train_loss.append(math.nan)
    history.test_accuracy = evaluate(model, data.x_test, data.y_test)
    history.seconds = clock
    return history
