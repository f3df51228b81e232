"""Where a layer's training statistics come from: the batch, ghost chunks of it, valid positions only, or the
running buffers; and how they are averaged into the running buffers.

Every layer is the shared transform `torch.ops.batchnorm.normalize` (and its backward) fed by a statistics source
(Flax's `_compute_stats` + `_normalize` split):

  * Ghost batch norm (`virtual_batch_size=` on our BatchNorm): each chunk of samples has its own statistics;
  * masked statistics (`BatchNorm1d.forward(x, mask)`): valid positions only, padded positions output 0;
  * frozen statistics (`freeze_stats=True` on our BatchNorm, `FrozenBatchNorm1d/2d/3d`): the running buffers;
  * non-finite-safe running updates (`skip_nonfinite=True`): a batch with NaN/inf statistics is not averaged in;
  * Batch Renormalization (`BatchRenorm1d/2d/3d`): the batch statistics corrected towards the running ones
    by per-channel constants r and d (the generalized transform's optional arguments).

`batch_norm_forward(module, input, mask)` is the forward of `BatchNormBase` with a variant in use, so every
layer built on the base class (BatchNorm*, BatchNormAct*, SyncBatchNorm, BatchRenorm*) gets the variants.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import Tensor

from .. import functional
from ..kernels.algebra import unbiased_variance, update_running
from ._checks import check_integer, check_training_eps

__all__ = ["batch_norm_forward", "check_variant_options", "ghost_chunk_bounds"]


def check_variant_options(where: str, virtual_batch_size, freeze_stats, skip_nonfinite,
                          track_running_stats: bool) -> Optional[int]:
    """Validate the variant keywords of our BatchNorm; returns virtual_batch_size as an int (or None)."""
    if virtual_batch_size is not None:
        virtual_batch_size = check_integer(
            virtual_batch_size, "virtual_batch_size", where, 2,
            "each ghost batch needs at least 2 samples for a variance; use None for whole-batch statistics")
    for argument, value in (("freeze_stats", freeze_stats), ("skip_nonfinite", skip_nonfinite)):
        if not isinstance(value, bool):
            raise TypeError(f"{where} {argument} must be a bool, got {value!r} of type {type(value).__name__}")
    if freeze_stats and not track_running_stats:
        raise ValueError(f"{where} freeze_stats=True needs running statistics, got track_running_stats=False: "
                         f"use track_running_stats=True (and load or recalibrate the running statistics)")
    return virtual_batch_size


def _check_mask(mask, input: Tensor, where: str) -> Tensor:
    """The mask must be boolean, (N, L) for an (N, C, L) input or (N,) for an (N, C) input, on input's device."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{where} mask must be a boolean torch.Tensor or None, got {type(mask).__name__}")
    expected = (input.shape[0],) + tuple(input.shape[2:])
    names = "(N, L)" if input.dim() == 3 else "(N,)"
    if mask.dtype != torch.bool:
        raise ValueError(f"{where} mask must have dtype torch.bool (True = valid position), got dtype {mask.dtype}: "
                         f"pass mask.bool() or (mask != 0)")
    if tuple(mask.shape) != expected:
        raise ValueError(f"{where} mask must have shape {names} = {expected} for input of shape "
                         f"{tuple(input.shape)}, got mask of shape {tuple(mask.shape)}: one flag per sample and "
                         f"position, True where the position is valid")
    if mask.device != input.device:
        raise ValueError(f"{where} mask must be on the input's device {input.device}, got a mask on {mask.device}: "
                         f"use mask.to(input.device)")
    return mask


def ghost_chunk_bounds(batch_size: int, virtual_batch_size: Optional[int],
                       values_per_sample: int) -> list[tuple[int, int]]:
    """Sample ranges [start, stop) of the ghost batches: consecutive chunks of `virtual_batch_size` samples.

    The last chunk holds the remainder (batch_size mod virtual_batch_size samples) and has its own statistics;
    a remainder that would hold a single value per channel (one sample of an (N, C) input) is merged into the
    chunk before it. `None`, or a batch no larger than the virtual batch size, is one chunk.
    """
    if virtual_batch_size is None or batch_size <= virtual_batch_size:
        return [(0, batch_size)]
    bounds = [(start, min(start + virtual_batch_size, batch_size))
              for start in range(0, batch_size, virtual_batch_size)]
    last_start, last_stop = bounds[-1]
    if (last_stop - last_start) * values_per_sample == 1:
        bounds[-2:] = [(bounds[-2][0], last_stop)]
    return bounds


def _reduce_dims(x: Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _batch_moments(values: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of values (N, C, *), detached float64 (0 and 1 when empty)."""
    if functional.uses_own_kernels(values):
        return torch.ops.batchnorm.batch_stats(values.detach())
    channels = values.shape[1]
    if values.numel() == 0:
        zeros = torch.zeros(channels, dtype=torch.float64, device=values.device)
        return zeros, torch.ones_like(zeros)
    wide = torch.float32 if values.device.type == "mps" else torch.float64
    with torch.no_grad():
        var, mean = torch.var_mean(values.detach().to(wide), dim=_reduce_dims(values), correction=0)
    return mean, var


def _batch_transform(values: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor],
                     bias: Optional[Tensor], eps: float, r: Optional[Tensor] = None, d: Optional[Tensor] = None,
                     activation: str = "identity", activation_param: float = 0.0) -> Tensor:
    """The shared transform with batch statistics (mean, var are values' own): act(((x - mean)/sigma * r + d) g + b).

    CPU float32/float64 run on `torch.ops.batchnorm.normalize`; other devices and dtypes on torch's own
    `batch_norm` (or, with r and d, the same formula in torch ops), as `batchnorm.functional` routes them.
    The activation (BatchNormAct's, "identity" for plain batch norm) is fused on our kernels.
    """
    if functional.uses_own_kernels(values):
        if activation == "identity":
            return torch.ops.batchnorm.normalize(values, mean, var, weight, bias, eps, True, r, d)
        return torch.ops.batchnorm.normalize(values, mean, var, weight, bias, eps, True, r, d, activation,
                                             float(activation_param))
    if activation != "identity":
        y = _batch_transform(values, mean, var, weight, bias, eps, r, d)
        return functional.torch_activation(y, activation, activation_param)
    if r is None and d is None:
        return torch.nn.functional.batch_norm(values, None, None, weight, bias, True, 0.0, eps)
    shape = (1, -1) + (1,) * (values.dim() - 2)
    batch_var, batch_mean = torch.var_mean(values, dim=_reduce_dims(values), correction=0, keepdim=True)
    x_hat = (values - batch_mean) * torch.rsqrt(batch_var + eps)
    x_hat = x_hat * r.to(values.dtype).view(shape) + d.to(values.dtype).view(shape)
    if weight is not None:
        x_hat = x_hat * weight.view(shape)
    if bias is not None:
        x_hat = x_hat + bias.view(shape)
    return x_hat


def _running_moments(moments: list[tuple[int, Tensor, Tensor]]):
    """(count, mean, unbiased variance) for the running update from per-chunk (count, mean, biased var).

    mean = the count-weighted mean of the chunk means (the mean of all values); unbiased variance = the pooled
    within-chunk variance sum_k n_k var_k / (sum_k n_k - K) over the K non-empty chunks, which is
    n/(n-1) * var for a single chunk (BatchNorm's rule). Infinite when no chunk has 2 values.
    """
    moments = [m for m in moments if m[0] > 0]
    total = sum(count for count, _, _ in moments)
    if total == 0:
        return 0, None, None
    if len(moments) == 1:
        count, mean, var = moments[0]
        return count, mean, unbiased_variance(var, count)
    mean = sum(count * chunk_mean for count, chunk_mean, _ in moments) / total
    squares = sum(count * chunk_var for count, _, chunk_var in moments)
    dof = total - len(moments)
    unbiased = squares / dof if dof > 0 else torch.full_like(squares, math.inf)
    return total, mean, unbiased


def _update_running(module, moments: list[tuple[int, Tensor, Tensor]]) -> None:
    """Count the batch and average its statistics into the running buffers, as torch's BatchNorm does.

    With `skip_nonfinite`, a batch whose statistics are not all finite changes nothing (buffers and
    `num_batches_tracked`) and the module warns once.
    """
    if not (module.training and module.track_running_stats):
        return
    count, mean, unbiased = _running_moments(moments)
    if getattr(module, "skip_nonfinite", False) and count > 0 and not (
            bool(torch.isfinite(mean).all()) and bool(torch.isfinite(unbiased).all())):
        _warn_nonfinite(module)
        return
    factor = module._averaging_factor()
    if count > 0:
        update_running(module.running_mean, module.running_var, mean, unbiased, factor)


def _activation_kwargs(module) -> dict:
    """The activation a layer fuses into the transform (BatchNormAct); empty for plain batch norm."""
    return getattr(module, "_activation_kwargs", dict)()


def _warn_nonfinite(module) -> None:
    if not getattr(module, "_warned_nonfinite", False):
        module._warned_nonfinite = True
        warnings.warn(f"{type(module).__name__}: a training batch had non-finite statistics (NaN or inf); "
                      f"running_mean, running_var and num_batches_tracked were left unchanged "
                      f"(skip_nonfinite=True). This warning is shown once per layer.", RuntimeWarning, stacklevel=5)


def _skip_nonfinite_fast(module, input: Tensor) -> Optional[Tensor]:
    """skip_nonfinite on whole-batch statistics: BatchNorm's own (fused) path, then the buffers restored if the
    update made them non-finite (a non-finite batch mean or variance always does, for any momentum). None when
    this shortcut does not apply (no running buffers, or buffers already non-finite): use the exact path."""
    buffers = (module.running_mean, module.running_var, module.num_batches_tracked)
    if not module.track_running_stats or any(t is None for t in buffers):
        return None
    if not (bool(torch.isfinite(buffers[0]).all()) and bool(torch.isfinite(buffers[1]).all())):
        return None
    saved = [t.clone() for t in buffers]
    factor = module._averaging_factor()
    y = functional.batch_norm(input, module.running_mean, module.running_var, module.weight, module.bias, True,
                              factor, module.eps, **_activation_kwargs(module))
    if not (bool(torch.isfinite(module.running_mean).all()) and bool(torch.isfinite(module.running_var).all())):
        with torch.no_grad():
            for buffer, old in zip(buffers, saved):
                buffer.copy_(old)
        _warn_nonfinite(module)
    return y


def _running_forward(module, input: Tensor) -> Tensor:
    """Normalize with the running statistics (inference, or frozen statistics in training)."""
    if module.running_mean is None or module.running_var is None:
        raise ValueError(f"{type(module).__name__} with freeze_stats=True needs running_mean and running_var, "
                         f"got None: construct it with track_running_stats=True")
    return functional.batch_norm(input, module.running_mean, module.running_var, module.weight, module.bias,
                                 False, 0.0, module.eps, **_activation_kwargs(module))


def _zero_padded(y: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.unsqueeze(1), y, torch.zeros((), dtype=y.dtype, device=y.device))


def batch_norm_forward(module, input: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """The forward of our BatchNorm with the variant keywords (`virtual_batch_size`, `freeze_stats`,
    `skip_nonfinite`) and an optional padding mask: choose the statistics, update the running buffers, apply the
    shared transform. Training statistics are per ghost chunk (one chunk without `virtual_batch_size`) over the
    valid positions (all positions without a mask); padded positions output 0 and get no gradient. A layer's
    fused activation (BatchNormAct's `_activation_kwargs`) is applied to the valid positions (every supported
    activation maps 0 to 0, so padded positions stay 0).
    """
    name = type(module).__name__
    functional.check_running_not_differentiable(module.running_mean, module.running_var, name)
    if mask is not None:
        mask = _check_mask(mask, input, name)
    if (module.training and getattr(module, "freeze_stats", False)) or not module._uses_batch_stats():
        y = _running_forward(module, input)
        return y if mask is None else _zero_padded(y, mask)
    if module.training:
        check_training_eps(name, module.eps)
        if mask is None:
            functional.check_batch_size(input, name)
        elif int(mask.sum()) == 1:
            raise ValueError(f"{name} expected more than 1 valid value per channel when training, got a mask with "
                             f"a single valid position: the batch variance of a single value is undefined. Use "
                             f"more valid positions, or call model.eval() to normalize with the running statistics")
    virtual_batch_size = getattr(module, "virtual_batch_size", None) if module.training else None
    if mask is None and virtual_batch_size is None and module.training and getattr(module, "skip_nonfinite", False):
        y = _skip_nonfinite_fast(module, input)
        if y is not None:
            return y
    samples = input.shape[0]
    per_sample = input.shape[2] if input.dim() == 3 else 1
    if mask is not None:
        rows = input.transpose(1, 2) if input.dim() == 3 else input  # (N, L, C) or (N, C)
    else:
        per_sample = input[:1].numel() // max(input.shape[1], 1)
    bounds = ghost_chunk_bounds(samples, virtual_batch_size, per_sample)
    outputs, moments = [], []
    activation = _activation_kwargs(module)
    sizes = [stop - start for start, stop in bounds]
    # split (not slicing): its backward concatenates the chunks' gradients instead of zero-filling one
    # input-sized tensor per chunk
    samples_of = (input if mask is None else rows).split(sizes, dim=0) if len(bounds) > 1 else [
        input if mask is None else rows]
    for (start, stop), chunk in zip(bounds, samples_of):
        piece = chunk if mask is None else chunk[mask[start:stop]]  # (valid values, C) with a mask
        mean, var = _batch_moments(piece)
        outputs.append(_batch_transform(piece, mean, var, module.weight, module.bias, module.eps, **activation))
        moments.append((piece.numel() // max(piece.shape[1], 1), mean, var))
    _update_running(module, moments)
    y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
    if mask is None:
        return y
    out = torch.zeros(rows.shape, dtype=y.dtype, device=y.device).index_put((mask,), y)
    return out.transpose(1, 2).contiguous() if input.dim() == 3 else out
