"""Precise population statistics for batch norms (PreciseBN / AdaBN): exact pooled mean and variance over data."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
from torch import nn

from .. import distributed
from ._common import batches, call_model, is_batchnorm, is_frozen

__all__ = ["recalibrate", "RecalibrationReport", "precise_statistics", "PreciseStatistics", "Moments"]


@dataclass
class Moments:
    """Per-channel float64 count, mean and M2 (sum of squared deviations from the mean) of one layer's input."""

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    @staticmethod
    def of_batch(x: torch.Tensor, mask: torch.Tensor | None = None) -> "Moments":
        """The moments of one batch x (N, C, *) per channel; with `mask` ((N,) or (N, L), True = valid) only the
        valid positions count, as in the masked `BatchNorm1d`'s training statistics."""
        values = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
        if mask is not None:
            values = values[:, mask.reshape(-1)]
        n = values.shape[1]
        count = torch.tensor(float(n), dtype=torch.float64, device=values.device)
        if n == 0:
            zeros = torch.zeros(values.shape[0], dtype=torch.float64, device=values.device)
            return Moments(count, zeros, zeros.clone())
        mean = values.mean(dim=1)
        return Moments(count, mean, ((values - mean[:, None]) ** 2).sum(dim=1))

    def merge(self, other: "Moments") -> None:
        """Merge another set of moments into these (Chan et al.'s parallel formula)."""
        n = float(other.count)
        if n == 0:
            return
        total = self.count + n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + other.m2 + delta * delta * (self.count * n / total)
        self.count = total

    def add(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Merge the values of a batch x (N, C, *) channel by channel (valid positions only with a mask)."""
        self.merge(Moments.of_batch(x, mask))

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.mean).all() and torch.isfinite(self.m2).all())

    @property
    def unbiased_var(self) -> torch.Tensor:
        """M2 / (count - 1): the variance stored in `running_var`."""
        return self.m2 / (self.count - 1)


class PreciseStatistics(NamedTuple):
    """What `precise_statistics` returns: per-layer moments, the batches and samples used (over all ranks when
    a process group is active), and the batches left out for non-finite statistics as (batch, first layer)."""

    moments: dict
    num_batches: int
    num_samples: int
    skipped_batches: list


@dataclass
class RecalibrationReport:
    """What `recalibrate` did: batches and samples seen, layers updated, layers left (with the reason), and the
    batches left out because they gave non-finite statistics (only with `skip_nonfinite=True`).

    Attributes:
        num_batches: batches read.
        num_samples: samples (first dimension) read.
        updated: names of the batch norms whose running statistics were replaced.
        skipped: (name, reason) of every batch norm left as it was.
        values_per_channel: per updated layer, the number of values each channel's statistics pooled.
        skipped_batches: (batch index, first layer with non-finite statistics) of every batch left out.

    Example:
        >>> import torch
        >>> from batchnorm.tools import recalibrate
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
        >>> _, report = recalibrate(model, [torch.randn(16, 4) for _ in range(3)])
        >>> print(report)
        recalibrate: 1 batch norm(s) updated from 3 batch(es), 48 sample(s)
          1: 48 values per channel
    """

    num_batches: int = 0
    num_samples: int = 0
    updated: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    values_per_channel: dict[str, int] = field(default_factory=dict)
    skipped_batches: list[tuple[int, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"recalibrate: {len(self.updated)} batch norm(s) updated from {self.num_batches} batch(es), "
                 f"{self.num_samples} sample(s)"]
        lines += [f"  {name}: {self.values_per_channel.get(name, 0)} values per channel" for name in self.updated]
        lines += [f"  left {name}: {reason}" for name, reason in self.skipped]
        if self.skipped_batches:
            shown = ", ".join(f"{index} (at {layer})" for index, layer in self.skipped_batches[:10])
            more = f" (+{len(self.skipped_batches) - 10} more)" if len(self.skipped_batches) > 10 else ""
            lines.append(f"  left out {len(self.skipped_batches)} batch(es) with non-finite statistics: "
                         f"{shown}{more}")
        return "\n".join(lines)


def _merge_across_processes(moments: Moments, group) -> Moments:
    """Merge per-process moments over the process group (identity when torch.distributed is not running)."""
    count, mean, m2 = distributed.merge_moments(moments.count, moments.mean, moments.m2, group=group)
    return Moments(torch.as_tensor(count, dtype=torch.float64), mean, m2)


def _mask_of(args: tuple, kwargs: dict):
    """The padding mask passed to a masked batch norm (`layer(x, mask)`), or None."""
    mask = args[1] if len(args) > 1 else kwargs.get("mask")
    return mask if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool else None


def _nonfinite_message(batch: int, layer: str, stats: Moments, where: str) -> str:
    bad = (~(torch.isfinite(stats.mean) & torch.isfinite(stats.m2))).nonzero().flatten().tolist()
    channels = ", ".join(map(str, bad[:5])) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
    return (f"{where}: batch {batch} (counting from 0) gives non-finite statistics at layer {layer!r} "
            f"(NaN or inf in the values it normalizes, channel(s) {channels}); the running statistics were left "
            f"unchanged: remove the NaN/inf from the data, or pass skip_nonfinite=True (batchnorm recalibrate "
            f"--skip-nonfinite) to leave such batches out")


def _exchange(failure: BaseException | None, payload, group) -> list:
    """Every rank reports (error, payload) in one collective, so that all ranks fail together when one fails
    (instead of the others waiting for it until the timeout). Returns every rank's payload."""
    if not distributed.is_active(group):
        if failure is not None:
            raise failure
        return [payload]
    status = None if failure is None else (type(failure).__name__, str(failure))
    statuses: list = [None] * distributed.world_size(group)
    try:
        torch.distributed.all_gather_object(statuses, (status, payload), group=group)
    except RuntimeError as error:
        raise RuntimeError(f"recalibrate: exchanging the per-rank status across {distributed.world_size(group)} "
                           f"ranks failed: another rank has died or timed out. Cause: {error}") from error
    if failure is not None:
        raise failure
    for rank, (other, _) in enumerate(statuses):
        if other is not None:
            kind = ValueError if other[0] == "ValueError" else RuntimeError
            raise kind(f"recalibrate: rank {rank} failed, so no rank changes its statistics: {other[0]}: {other[1]}")
    return [p for _, p in statuses]


def _synchronizing_layers(model: nn.Module) -> list[str]:
    """Names of the SyncBatchNorm layers that communicate in every training forward."""
    from ..nn import SyncBatchNorm  # here, not at import: the command line loads the tools before the kernels

    return [name for name, module in model.named_modules()
            if isinstance(module, (nn.SyncBatchNorm, SyncBatchNorm))
            and module.training and not getattr(module, "freeze_stats", False)]


def _same_batch_count_everywhere(model: nn.Module, data, num_batches, group) -> list:
    """With SyncBatchNorm layers every rank must run the same number of forwards (each one is a collective):
    take this rank's batches as a list and check the counts agree, raising on every rank when they do not."""
    failure, batch_list = None, []
    try:
        for batch in batches(data):
            if num_batches is not None and len(batch_list) >= num_batches:
                break
            batch_list.append(batch)
    except Exception as error:  # noqa: BLE001 - re-raised after telling the other ranks
        failure = error
    counts = _exchange(failure, len(batch_list), group)
    if len(set(counts)) > 1:
        names = ", ".join(_synchronizing_layers(model)[:3])
        raise ValueError(f"recalibrate: the model's SyncBatchNorm layers ({names}) communicate in every forward, so "
                         f"every rank must pass the same number of batches; got {counts} (rank i at position i): "
                         f"pass num_batches={min(counts) or 1} with at least that many batches on every rank, or "
                         f"convert(model, to='batchnorm') first")
    return batch_list


def precise_statistics(model: nn.Module, data, num_batches: int | None = None, *,
                       forward: Callable | None = None, process_group=None, layers=None,
                       skip_nonfinite: bool = False, where: str = "recalibrate") -> PreciseStatistics:
    """Pooled float64 moments of the input of every batch norm over the data (the model runs as it is set).

    A masked batch norm (`layer(x, mask)`) counts the valid positions only. A batch whose moments are not all
    finite at some layer raises ValueError naming the batch and the layer, unless `skip_nonfinite` (then the
    batch is left out for every layer and listed). With an active process group every rank takes part in the
    same collectives whatever its number of batches (zero included), and all ranks raise when one fails; a model
    with SyncBatchNorm layers (a collective in every forward) needs the same number of batches on every rank,
    checked before the pass.

    Returns a `PreciseStatistics` (moments per layer name, batches, samples, skipped batches). Hooks are
    removed afterwards. Used by `recalibrate` and `doctor`; `layers` restricts to these names.
    """
    if num_batches is not None and (not isinstance(num_batches, int) or isinstance(num_batches, bool)
                                    or num_batches < 1):
        raise ValueError(f"num_batches must be a positive integer or None (all the data), got {num_batches!r}")
    if distributed.is_active(process_group) and _synchronizing_layers(model):
        data = _same_batch_count_everywhere(model, data, num_batches, process_group)
    targets = [(name, module) for name, module in model.named_modules()
               if is_batchnorm(module) and (layers is None or name in layers)]
    moments: dict[str, Moments] = {}
    pending: dict[str, Moments] = {}          # this batch's moments, merged once the whole batch is known finite
    handles = []
    for name, module in targets:
        channels, device = module.running_mean.numel(), module.running_mean.device
        zeros = torch.zeros(channels, dtype=torch.float64, device=device)
        moments[name] = Moments(torch.zeros((), dtype=torch.float64, device=device), zeros, zeros.clone())

        def hook(mod, args, kwargs, key=name):
            batch_moments = Moments.of_batch(args[0], _mask_of(args, kwargs))
            if key in pending:
                pending[key].merge(batch_moments)       # a layer called twice in one forward
            else:
                pending[key] = batch_moments
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    run = forward or call_model
    seen, samples, skipped, failure = 0, 0, [], None
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches(data)):
                if num_batches is not None and seen >= num_batches:
                    break
                pending.clear()
                run(model, batch)
                bad = next((key for key, m in pending.items() if not m.is_finite()), None)
                if bad is not None:
                    if not skip_nonfinite:
                        raise ValueError(_nonfinite_message(index, bad, pending[bad], where))
                    skipped.append((index, bad))
                    continue
                for key, batch_moments in pending.items():
                    moments[key].merge(batch_moments)
                seen += 1
                first = batch if isinstance(batch, torch.Tensor) else \
                    batch[0] if isinstance(batch, (tuple, list)) else None
                samples += int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 0
        if num_batches is not None and seen < num_batches:
            raise ValueError(f"num_batches={num_batches} but the data ran out after {seen} batch(es): pass fewer "
                             f"batches, more data, or num_batches=None to use all of it")
    except Exception as error:  # noqa: BLE001 - re-raised here, or after telling the other ranks (no hang)
        failure = error
    finally:
        for handle in handles:
            handle.remove()
    totals = _exchange(failure, (seen, samples), process_group)
    seen, samples = sum(t[0] for t in totals), sum(t[1] for t in totals)
    if seen == 0:
        detail = f" ({len(skipped)} left out for non-finite statistics)" if skipped else ""
        raise ValueError(f"data yielded no batches{detail}: pass an iterable of input batches (for instance a "
                         f"DataLoader)")
    moments = {name: _merge_across_processes(m, process_group) for name, m in moments.items()}
    return PreciseStatistics(moments, seen, samples, skipped)


def recalibrate(model: nn.Module, data, num_batches: int | None = None, *, forward: Callable | None = None,
                process_group=None, inplace: bool = True, skip_nonfinite: bool = False
                ) -> tuple[nn.Module, RecalibrationReport]:
    r"""Replace the running statistics of every batch norm by the exact population statistics of `data`.

    .. math:: \mu = \frac{1}{n} \sum_i x_i, \qquad \sigma^2_{running} = \frac{1}{n - 1} \sum_i (x_i - \mu)^2

    per channel over all n values the layer sees in all batches (N x spatial per batch): the pooled statistics,
    not an average of per-batch variances and not an exponential moving average (PreciseBN, Wu & Johnson 2021;
    on unlabeled target-domain data this is AdaBN, Li et al. 2016). Moments accumulate in float64 with Chan's
    merge. During the pass every batch norm runs in training mode (so each layer sees the inputs it sees in
    training) and every other module in eval mode (dropout off); afterwards each module's training flag,
    `momentum` and `num_batches_tracked` are what they were. With an active `torch.distributed` process group
    the moments are merged across processes first (`batchnorm.distributed.merge_moments`); every rank takes
    part in the same collectives whatever its number of batches (a rank with none contributes zero counts), and
    when one rank fails all of them raise the same error. A masked `BatchNorm1d` (`layer(x, mask)`) counts its
    valid positions only, as in training. Frozen layers (`freeze_stats=True`, FrozenBatchNorm) and layers
    without running statistics are left and reported.

    Non-finite statistics are never stored: a batch that gives a NaN or inf mean or variance at any layer raises
    ValueError naming the batch and the layer (nothing is changed), or with `skip_nonfinite=True` is left out
    for every layer and listed in the report.

    Args:
        model: the model (updated in place unless `inplace=False`).
        data: an iterable of batches (a tensor, an (inputs, targets...) tuple/list, or a dict of keyword inputs),
            for instance a DataLoader; or one tensor.
        num_batches: None (all the data) or how many batches to use; raises ValueError if the data runs out first.
        forward: None, or `forward(model, batch)` to call the model on a batch of another form.
        process_group: None (the default group) when torch.distributed is initialized.
        inplace: True. False works on a deep copy and leaves `model` untouched.
        skip_nonfinite: False. True leaves out the batches with non-finite statistics instead of raising.

    Returns:
        (the recalibrated model, `RecalibrationReport`).

    Shape: each batch-norm input (N, C, ``*``); statistics per channel C.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``data`` yields no batches, or fewer than ``num_batches``.

    Example:
        >>> import torch
        >>> from batchnorm.tools import recalibrate
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
        >>> data = [torch.randn(16, 4) + 3.0 for _ in range(10)]      # e.g. batches of a new domain
        >>> model, report = recalibrate(model, data)
        >>> report.num_batches, report.num_samples
        (10, 160)
        >>> features = model[0](torch.cat(data)).detach()
        >>> torch.allclose(model[1].running_mean, features.mean(0), atol=1e-5)
        True

    References:
        Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", arXiv 2105.07576 (PreciseBN); Li et al. 2016,
        "Revisiting Batch Normalization For Practical Domain Adaptation", arXiv 1603.04779 (AdaBN).
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
        moments, report.num_batches, report.num_samples, report.skipped_batches = precise_statistics(
            model, data, num_batches, forward=forward, process_group=process_group, layers=set(layers),
            skip_nonfinite=skip_nonfinite)
    finally:
        for module, flag in flags.items():
            module.training = flag
        with torch.no_grad():
            for name, (momentum, buffers) in saved.items():
                module = model.get_submodule(name)
                module.momentum = momentum
                for key, value in buffers.items():
                    getattr(module, key).copy_(value)
    for name in layers:                    # sums of huge finite values can still overflow: check before writing
        if not moments[name].is_finite():
            raise ValueError(f"recalibrate: the pooled statistics of layer {name!r} are not finite (the values it "
                             f"normalizes overflow float64); the running statistics were left unchanged: "
                             f"rescale the data")
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
