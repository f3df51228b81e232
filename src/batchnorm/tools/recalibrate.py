"""Precise population statistics for batch norms (PreciseBN / AdaBN): exact pooled mean and variance over data."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ._common import batches, call_model, is_batchnorm, is_frozen

__all__ = ["recalibrate", "RecalibrationReport", "precise_statistics", "Moments"]


@dataclass
class Moments:
    """Per-channel float64 count, mean and M2 (sum of squared deviations from the mean) of one layer's input."""

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    def add(self, x: torch.Tensor) -> None:
        """Merge the values of a batch x (N, C, *) channel by channel (Chan et al.'s parallel formula)."""
        values = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
        n = values.shape[1]
        if n == 0:
            return
        batch_mean = values.mean(dim=1)
        batch_m2 = ((values - batch_mean[:, None]) ** 2).sum(dim=1)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta * delta * (self.count * n / total)
        self.count = total

    @property
    def unbiased_var(self) -> torch.Tensor:
        """M2 / (count - 1): the variance stored in `running_var`."""
        return self.m2 / (self.count - 1)


@dataclass
class RecalibrationReport:
    """What `recalibrate` did: batches and samples seen, layers updated, layers left (with the reason)."""

    num_batches: int = 0
    num_samples: int = 0
    updated: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    values_per_channel: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"recalibrate: {len(self.updated)} batch norm(s) updated from {self.num_batches} batch(es), "
                 f"{self.num_samples} sample(s)"]
        lines += [f"  {name}: {self.values_per_channel.get(name, 0)} values per channel" for name in self.updated]
        lines += [f"  left {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def _merge_across_processes(moments: Moments, group) -> Moments:
    """Merge per-process moments over the process group (identity when torch.distributed is not running)."""
    try:
        from batchnorm.distributed import merge_moments
    except ImportError:
        merge_moments = None
    if merge_moments is not None:
        count, mean, m2 = merge_moments(moments.count, moments.mean, moments.m2, group=group)
        return Moments(torch.as_tensor(count, dtype=torch.float64), mean, m2)
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return moments
    # fallback while batchnorm.distributed is missing: gather every rank's moments and merge them exactly
    local = torch.cat([moments.count.reshape(1).expand(moments.mean.numel()).reshape(1, -1),
                       moments.mean.reshape(1, -1), moments.m2.reshape(1, -1)])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    merged = Moments(torch.zeros((), dtype=torch.float64), torch.zeros_like(moments.mean),
                     torch.zeros_like(moments.m2))
    for other in gathered:
        n = other[0, 0]
        if n == 0:
            continue
        total = merged.count + n
        delta = other[1] - merged.mean
        merged.mean = merged.mean + delta * (n / total)
        merged.m2 = merged.m2 + other[2] + delta * delta * (merged.count * n / total)
        merged.count = total
    return merged


def precise_statistics(model: nn.Module, data, num_batches: int | None = None, *,
                       forward: Callable | None = None, process_group=None, layers=None):
    """Pooled float64 moments of the input of every batch norm over the data (the model runs as it is set).

    Returns (dict name -> `Moments`, batches seen, samples seen). Hooks are removed afterwards. Used by
    `recalibrate` and `doctor`; `layers` restricts to these names.
    """
    if num_batches is not None and (not isinstance(num_batches, int) or isinstance(num_batches, bool)
                                    or num_batches < 1):
        raise ValueError(f"num_batches must be a positive integer or None (all the data), got {num_batches!r}")
    targets = [(name, module) for name, module in model.named_modules()
               if is_batchnorm(module) and (layers is None or name in layers)]
    moments: dict[str, Moments] = {}
    handles = []
    for name, module in targets:
        channels, device = module.running_mean.numel(), module.running_mean.device
        zeros = torch.zeros(channels, dtype=torch.float64, device=device)
        moments[name] = Moments(torch.zeros((), dtype=torch.float64, device=device), zeros, zeros.clone())

        def hook(mod, inputs, key=name):
            moments[key].add(inputs[0])
        handles.append(module.register_forward_pre_hook(hook))
    run = forward or call_model
    seen, samples = 0, 0
    try:
        with torch.no_grad():
            for batch in batches(data):
                if num_batches is not None and seen >= num_batches:
                    break
                run(model, batch)
                seen += 1
                first = batch if isinstance(batch, torch.Tensor) else \
                    batch[0] if isinstance(batch, (tuple, list)) else None
                samples += int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 0
    finally:
        for handle in handles:
            handle.remove()
    if num_batches is not None and seen < num_batches:
        raise ValueError(f"num_batches={num_batches} but the data ran out after {seen} batch(es): pass fewer "
                         f"batches, more data, or num_batches=None to use all of it")
    if seen == 0:
        raise ValueError("data yielded no batches: pass an iterable of input batches (for instance a DataLoader)")
    moments = {name: _merge_across_processes(m, process_group) for name, m in moments.items()}
    return moments, seen, samples


def recalibrate(model: nn.Module, data, num_batches: int | None = None, *, forward: Callable | None = None,
                process_group=None, inplace: bool = True) -> tuple[nn.Module, RecalibrationReport]:
    r"""Replace the running statistics of every batch norm by the exact population statistics of `data`.

    .. math:: \mu = \frac{1}{n} \sum_i x_i, \qquad \sigma^2_{running} = \frac{1}{n - 1} \sum_i (x_i - \mu)^2

    per channel over all n values the layer sees in all batches (N x spatial per batch): the pooled statistics,
    not an average of per-batch variances and not an exponential moving average (PreciseBN, Wu & Johnson 2021;
    on unlabeled target-domain data this is AdaBN, Li et al. 2016). Moments accumulate in float64 with Chan's
    merge. During the pass every batch norm runs in training mode (so each layer sees the inputs it sees in
    training) and every other module in eval mode (dropout off); afterwards each module's training flag,
    `momentum` and `num_batches_tracked` are what they were. With an active `torch.distributed` process group
    the moments are merged across processes first (`batchnorm.distributed.merge_moments`). Frozen layers
    (`freeze_stats=True`, FrozenBatchNorm) and layers without running statistics are left and reported.

    Args:
        model: the model (updated in place unless `inplace=False`).
        data: an iterable of batches (a tensor, an (inputs, targets...) tuple/list, or a dict of keyword inputs),
            for instance a DataLoader; or one tensor.
        num_batches: None (all the data) or how many batches to use; raises ValueError if the data runs out first.
        forward: None, or `forward(model, batch)` to call the model on a batch of another form.
        process_group: None (the default group) when torch.distributed is initialized.
        inplace: True. False works on a deep copy and leaves `model` untouched.

    Returns:
        (the recalibrated model, `RecalibrationReport`).

    Shape: each batch-norm input (N, C, ``*``); statistics per channel C.

    Example:
        >>> model, report = recalibrate(model, loader, num_batches=100)

    Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm" (arXiv 2105.07576); Li et al. 2016, AdaBN (1603.04779).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"recalibrate expected model to be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = RecalibrationReport()
    layers = []
    for name, module in model.named_modules():
        if not is_batchnorm(module):
            continue
        if getattr(module, "running_mean", None) is None or getattr(module, "running_var", None) is None:
            report.skipped.append((name, "no running statistics (track_running_stats=False)"))
        elif is_frozen(module):
            report.skipped.append((name, "frozen (freeze_stats or FrozenBatchNorm): its statistics stay; unfreeze "
                                         "it first to recalibrate"))
        else:
            layers.append(name)
    flags = {module: module.training for module in model.modules()}
    # the training-mode pass moves the running buffers with momentum: keep them, and restore them afterwards
    saved = {name: (model.get_submodule(name).momentum,
                    {key: buffer.clone() for key, buffer in model.get_submodule(name).named_buffers(recurse=False)})
             for name in layers}
    try:
        model.eval()
        for name in layers:
            model.get_submodule(name).train()
        moments, report.num_batches, report.num_samples = precise_statistics(
            model, data, num_batches, forward=forward, process_group=process_group, layers=set(layers))
    finally:
        for module, flag in flags.items():
            module.training = flag
        with torch.no_grad():
            for name, (momentum, buffers) in saved.items():
                module = model.get_submodule(name)
                module.momentum = momentum
                for key, value in buffers.items():
                    getattr(module, key).copy_(value)
    for name in layers:
        module = model.get_submodule(name)
        stats = moments[name]
        count = int(stats.count)
        if count < 2:
            report.skipped.append((name, f"saw {count} value(s) per channel: at least 2 are needed for an unbiased "
                                         f"variance; running statistics unchanged"))
            continue
        with torch.no_grad():
            module.running_mean.copy_(stats.mean.to(module.running_mean.dtype))
            module.running_var.copy_(stats.unbiased_var.to(module.running_var.dtype))
        report.updated.append(name)
        report.values_per_channel[name] = count
    return model, report
