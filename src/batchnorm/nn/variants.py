"""Batch-norm variants that differ from BatchNorm only in where the statistics come from.

Every layer here is the shared transform `torch.ops.batchnorm.normalize` (and its backward) fed by a different
statistics source (see the design page of the documentation, "The layers"):

  * Ghost batch norm (`virtual_batch_size=` on our BatchNorm): each chunk of samples has its own statistics;
  * masked statistics (`BatchNorm1d.forward(x, mask)`): valid positions only, padded positions output 0;
  * frozen statistics (`freeze_stats=True` on our BatchNorm, `FrozenBatchNorm1d/2d/3d`): the running buffers;
  * non-finite-safe running updates (`skip_nonfinite=True`): a batch with NaN/inf statistics is not averaged in;
  * Batch Renormalization (`BatchRenorm1d/2d/3d`): the batch statistics corrected towards the running ones
    by per-channel constants r and d (the generalized transform's optional arguments).

`batch_norm_forward(module, input, mask)` is the statistics-source logic of `BatchNormMixin`; it lives here so
that every subclass of the mixin (BatchNorm*, and layers built on it such as BatchNormAct) gets the variants.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional

import torch
from torch import Tensor

from .. import functional
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormMixin, check_eps_momentum, traced_as_leaf

__all__ = [
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "batch_norm_forward",
    "check_variant_options",
    "ghost_chunk_bounds",
    "renorm_limits",
]


# ------------------------------------------------------------------------------------------- validation
def _check_integer(value, argument: str, where: str, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where} {argument} must be an integer >= {minimum}, got {value!r} of type "
                        f"{type(value).__name__}: {fix}")
    if value < minimum:
        raise ValueError(f"{where} {argument} must be >= {minimum}, got {argument}={value}: {fix}")
    return int(value)


def check_variant_options(where: str, virtual_batch_size, freeze_stats, skip_nonfinite,
                          track_running_stats: bool) -> Optional[int]:
    """Validate the variant keywords of our BatchNorm; returns virtual_batch_size as an int (or None)."""
    if virtual_batch_size is not None:
        virtual_batch_size = _check_integer(
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


# ----------------------------------------------------------------------------------- statistics sources
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


def _normalize(values: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float, r: Optional[Tensor] = None, d: Optional[Tensor] = None, activation: str = "identity",
               activation_param: float = 0.0) -> Tensor:
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
        y = _normalize(values, mean, var, weight, bias, eps, r, d)
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
        unbiased = var * (count / (count - 1)) if count > 1 else torch.full_like(var, math.inf)
        return count, mean, unbiased
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
    factor = 0.0 if module.momentum is None else module.momentum
    if module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        if module.momentum is None:
            factor = 1.0 / float(module.num_batches_tracked)
    if count == 0:
        return
    with torch.no_grad():
        if module.running_mean is not None:
            module.running_mean.mul_(1.0 - factor).add_(mean.to(module.running_mean), alpha=factor)
        if module.running_var is not None:
            module.running_var.mul_(1.0 - factor).add_(unbiased.to(module.running_var), alpha=factor)


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
        if not module.eps > 0.0:
            raise ValueError(f"{name} eps must be positive during training, got eps={module.eps}: the batch "
                             f"variance can be 0; use eps=1e-5 (torch's default)")
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
        outputs.append(_normalize(piece, mean, var, module.weight, module.bias, module.eps, **activation))
        moments.append((piece.numel() // max(piece.shape[1], 1), mean, var))
    _update_running(module, moments)
    y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
    if mask is None:
        return y
    out = torch.zeros(rows.shape, dtype=y.dtype, device=y.device).index_put((mask,), y)
    return out.transpose(1, 2).contiguous() if input.dim() == 3 else out


# ------------------------------------------------------------------------------------------ Batch Renorm
def renorm_limits(step: int, rmax: float, dmax: float, warmup_steps: int, rmax_steps: int,
                  dmax_steps: int) -> tuple[float, float]:
    """Batch Renorm's clipping limits (rmax_t, dmax_t) for the training step `step` (0 for the first batch).

    rmax_t = 1 + (rmax - 1) * ramp(rmax_steps), dmax_t = dmax * ramp(dmax_steps), with ramp(end) = 1 once
    step >= end and clip((step - warmup_steps) / (end - warmup_steps), 0, 1) before, so steps 0..warmup_steps
    are plain BatchNorm (rmax_t = 1, dmax_t = 0) and the limits grow linearly to rmax at step rmax_steps and
    dmax at step dmax_steps (an end equal to warmup_steps switches the limit on at that step).
    Ioffe 2017, arXiv 1702.03275, Sec. 4.
    """

    def ramp(end: int) -> float:
        if step >= end:
            return 1.0
        if step <= warmup_steps:
            return 0.0
        return (step - warmup_steps) / (end - warmup_steps)

    return 1.0 + (rmax - 1.0) * ramp(rmax_steps), dmax * ramp(dmax_steps)


class _BatchRenorm(BatchNormMixin):
    """Batch Renormalization (Ioffe 2017); the public layers are `BatchRenorm1d/2d/3d`."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.01, affine: bool = True,
                 rmax: float = 3.0, dmax: float = 5.0, warmup_steps: int = 5000, rmax_steps: int = 40000,
                 dmax_steps: int = 25000, device=None, dtype=None, *, skip_nonfinite: bool = False) -> None:
        name = type(self).__name__
        if not isinstance(rmax, numbers.Real) or not rmax >= 1.0 or math.isinf(rmax):
            raise ValueError(f"{name} rmax must be a finite number >= 1 (r is clipped to [1/rmax, rmax]), got "
                             f"rmax={rmax!r}: use rmax=1 for plain BatchNorm or the paper's 3")
        if not isinstance(dmax, numbers.Real) or not dmax >= 0.0 or math.isinf(dmax):
            raise ValueError(f"{name} dmax must be a finite number >= 0 (d is clipped to [-dmax, dmax]), got "
                             f"dmax={dmax!r}: use dmax=0 for plain BatchNorm or the paper's 5")
        warmup_steps = _check_integer(warmup_steps, "warmup_steps", name, 0, "the number of plain-BatchNorm steps")
        for argument, value in (("rmax_steps", rmax_steps), ("dmax_steps", dmax_steps)):
            _check_integer(value, argument, name, 0, "the step at which the limit is reached")
            if value < warmup_steps:
                raise ValueError(f"{name} {argument} must be >= warmup_steps={warmup_steps}, got {argument}={value}: "
                                 f"the limit grows from the end of the warm-up to step {argument}")
        super().__init__(num_features, eps, momentum, affine, True, device, dtype, skip_nonfinite=skip_nonfinite)
        self.rmax, self.dmax = float(rmax), float(dmax)
        self.warmup_steps, self.rmax_steps, self.dmax_steps = warmup_steps, int(rmax_steps), int(dmax_steps)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, warmup_steps={self.warmup_steps}, "
                f"rmax_steps={self.rmax_steps}, dmax_steps={self.dmax_steps}")

    def current_limits(self) -> tuple[float, float]:
        """(rmax_t, dmax_t) that the next training step will use."""
        counter = self.num_batches_tracked
        step = 0 if counter is None or counter.is_meta else int(counter)  # meta: shapes only, no values
        return renorm_limits(step, self.rmax, self.dmax, self.warmup_steps, self.rmax_steps, self.dmax_steps)

    def corrections(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel float64 (r, d) for a batch with mean and biased variance var, at the current step."""
        rmax_t, dmax_t = self.current_limits()
        running_mean = self.running_mean.detach().to(torch.float64)
        sigma = torch.sqrt(self.running_var.detach().to(torch.float64) + self.eps)
        r = torch.clamp(torch.sqrt(var + self.eps) / sigma, 1.0 / rmax_t, rmax_t)
        d = torch.clamp((mean - running_mean) / sigma, -dmax_t, dmax_t)
        return r, d

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            if self.training and not self.freeze_stats and getattr(input.tracer, "root", None) is self:
                raise TypeError(f"torch.fx cannot trace {type(self).__name__} itself as the root module in "
                                f"training (its corrections depend on the data): trace a model that contains it (it "
                                f"becomes a leaf call_module node), or use torch.compile")
            return self._traced_forward(input)
        self._check_input_dim(input)
        functional.check_running_not_differentiable(self.running_mean, self.running_var, type(self).__name__)
        if not self.training or self.freeze_stats:
            return _running_forward(self, input)
        name = type(self).__name__
        if not self.eps > 0.0:
            raise ValueError(f"{name} eps must be positive during training, got eps={self.eps}: the batch variance "
                             f"can be 0; use eps=1e-5 (torch's default)")
        functional.check_batch_size(input, name)
        mean, var = _batch_moments(input)
        r, d = self.corrections(mean.to(torch.float64), var.to(torch.float64))
        y = _normalize(input, mean, var, self.weight, self.bias, self.eps, r, d)
        _update_running(self, [(input.numel() // max(input.shape[1], 1), mean, var)])
        return y


class BatchRenorm1d(_BatchRenorm, torch.nn.BatchNorm1d):
    r"""Batch Renormalization over (N, C) or (N, C, L): batch statistics corrected towards the running ones.

    .. math::
        \hat x = \frac{x - \mu_B}{\sigma_B} r + d,\quad y = \gamma \hat x + \beta,\quad
        \sigma_B = \sqrt{\sigma_B^2 + \epsilon},\quad \sigma = \sqrt{\mathrm{running\_var} + \epsilon},

        r = \mathrm{clip}_{[1/r_{max}, r_{max}]}(\sigma_B / \sigma),\quad
        d = \mathrm{clip}_{[-d_{max}, d_{max}]}((\mu_B - \mathrm{running\_mean}) / \sigma)

    r and d are per-channel constants in backprop (computed from the running statistics before this batch's
    update); the gradient is batch norm's with gamma * r in place of gamma. The limits follow the paper's
    schedule: plain batch norm (r_max = 1, d_max = 0) for the first ``warmup_steps`` steps, then linear growth
    to ``rmax`` at step ``rmax_steps`` and ``dmax`` at step ``dmax_steps``; steps are counted by
    ``num_batches_tracked``, and `current_limits` gives the next step's. The running statistics are batch
    norm's (so a checkpoint is a BatchNorm1d checkpoint) and the paper's running sigma is
    sqrt(running_var + eps); inference is identical to batch norm's. ``freeze_stats = True`` (attribute)
    normalizes with the running statistics in training too.

    Args:
        num_features: C, the number of channels.
        eps: 1e-5; added to the variance inside the square root.
        momentum: 0.01 (the paper's rate); weight of the new batch in the running averages (None: cumulative).
        affine: True; learnable gamma and beta.
        rmax: 3.0; r is clipped to [1/rmax, rmax] (>= 1; 1 gives plain batch norm).
        dmax: 5.0; d is clipped to [-dmax, dmax] (>= 0; 0 gives plain batch norm).
        warmup_steps: 5000; training steps of plain batch norm before the limits grow.
        rmax_steps: 40000; step at which the r limit reaches rmax (>= warmup_steps).
        dmax_steps: 25000; step at which the d limit reaches dmax (>= warmup_steps).
        device: None; factory argument.
        dtype: None; factory argument.
        skip_nonfinite: False (keyword only); as in `BatchNorm1d`.

    Shape:
        input: (N, C) or (N, C, L).
        output: the same as the input.

    Raises:
        ValueError: rmax < 1, dmax < 0, step counts that are negative or before ``warmup_steps``, eps <= 0 in
            training, or an input of another rank or channel count.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchRenorm1d
        >>> layer = BatchRenorm1d(16, warmup_steps=0, rmax_steps=1000, dmax_steps=1000)
        >>> y = layer(torch.randn(8, 16))
        >>> [round(limit, 4) for limit in layer.current_limits()]   # after one step
        [1.002, 0.005]

    References:
        Ioffe 2017, "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models",
        arXiv 1702.03275.
    """
    _input_shapes = BatchNorm1d._input_shapes


class BatchRenorm2d(_BatchRenorm, torch.nn.BatchNorm2d):
    r"""Batch Renormalization over (N, C, H, W): batch statistics corrected towards the running ones.

    .. math::
        \hat x = \frac{x - \mu_B}{\sigma_B} r + d,\quad y = \gamma \hat x + \beta,\quad
        \sigma_B = \sqrt{\sigma_B^2 + \epsilon},\quad \sigma = \sqrt{\mathrm{running\_var} + \epsilon},

        r = \mathrm{clip}_{[1/r_{max}, r_{max}]}(\sigma_B / \sigma),\quad
        d = \mathrm{clip}_{[-d_{max}, d_{max}]}((\mu_B - \mathrm{running\_mean}) / \sigma)

    r and d are per-channel constants in backprop (computed from the running statistics before this batch's
    update); the gradient is batch norm's with gamma * r in place of gamma. The limits follow the paper's
    schedule: plain batch norm (r_max = 1, d_max = 0) for the first ``warmup_steps`` steps, then linear growth
    to ``rmax`` at step ``rmax_steps`` and ``dmax`` at step ``dmax_steps``; steps are counted by
    ``num_batches_tracked``, and `current_limits` gives the next step's. The running statistics are batch
    norm's (so a checkpoint is a BatchNorm2d checkpoint) and the paper's running sigma is
    sqrt(running_var + eps); inference is identical to batch norm's. ``freeze_stats = True`` (attribute)
    normalizes with the running statistics in training too.

    Args:
        num_features: C, the number of channels.
        eps: 1e-5; added to the variance inside the square root.
        momentum: 0.01 (the paper's rate); weight of the new batch in the running averages (None: cumulative).
        affine: True; learnable gamma and beta.
        rmax: 3.0; r is clipped to [1/rmax, rmax] (>= 1; 1 gives plain batch norm).
        dmax: 5.0; d is clipped to [-dmax, dmax] (>= 0; 0 gives plain batch norm).
        warmup_steps: 5000; training steps of plain batch norm before the limits grow.
        rmax_steps: 40000; step at which the r limit reaches rmax (>= warmup_steps).
        dmax_steps: 25000; step at which the d limit reaches dmax (>= warmup_steps).
        device: None; factory argument.
        dtype: None; factory argument.
        skip_nonfinite: False (keyword only); as in `BatchNorm2d`.

    Shape:
        input: (N, C, H, W).
        output: the same as the input.

    Raises:
        ValueError: rmax < 1, dmax < 0, step counts that are negative or before ``warmup_steps``, eps <= 0 in
            training, or an input of another rank or channel count.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchRenorm2d
        >>> layer = BatchRenorm2d(16, warmup_steps=0, rmax_steps=1000, dmax_steps=1000)
        >>> y = layer(torch.randn(4, 16, 8, 8))
        >>> [round(limit, 4) for limit in layer.current_limits()]   # after one step
        [1.002, 0.005]

    References:
        Ioffe 2017, "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models",
        arXiv 1702.03275.
    """
    _input_shapes = BatchNorm2d._input_shapes


class BatchRenorm3d(_BatchRenorm, torch.nn.BatchNorm3d):
    r"""Batch Renormalization over (N, C, D, H, W): batch statistics corrected towards the running ones.

    .. math::
        \hat x = \frac{x - \mu_B}{\sigma_B} r + d,\quad y = \gamma \hat x + \beta,\quad
        \sigma_B = \sqrt{\sigma_B^2 + \epsilon},\quad \sigma = \sqrt{\mathrm{running\_var} + \epsilon},

        r = \mathrm{clip}_{[1/r_{max}, r_{max}]}(\sigma_B / \sigma),\quad
        d = \mathrm{clip}_{[-d_{max}, d_{max}]}((\mu_B - \mathrm{running\_mean}) / \sigma)

    r and d are per-channel constants in backprop (computed from the running statistics before this batch's
    update); the gradient is batch norm's with gamma * r in place of gamma. The limits follow the paper's
    schedule: plain batch norm (r_max = 1, d_max = 0) for the first ``warmup_steps`` steps, then linear growth
    to ``rmax`` at step ``rmax_steps`` and ``dmax`` at step ``dmax_steps``; steps are counted by
    ``num_batches_tracked``, and `current_limits` gives the next step's. The running statistics are batch
    norm's (so a checkpoint is a BatchNorm3d checkpoint) and the paper's running sigma is
    sqrt(running_var + eps); inference is identical to batch norm's. ``freeze_stats = True`` (attribute)
    normalizes with the running statistics in training too.

    Args:
        num_features: C, the number of channels.
        eps: 1e-5; added to the variance inside the square root.
        momentum: 0.01 (the paper's rate); weight of the new batch in the running averages (None: cumulative).
        affine: True; learnable gamma and beta.
        rmax: 3.0; r is clipped to [1/rmax, rmax] (>= 1; 1 gives plain batch norm).
        dmax: 5.0; d is clipped to [-dmax, dmax] (>= 0; 0 gives plain batch norm).
        warmup_steps: 5000; training steps of plain batch norm before the limits grow.
        rmax_steps: 40000; step at which the r limit reaches rmax (>= warmup_steps).
        dmax_steps: 25000; step at which the d limit reaches dmax (>= warmup_steps).
        device: None; factory argument.
        dtype: None; factory argument.
        skip_nonfinite: False (keyword only); as in `BatchNorm3d`.

    Shape:
        input: (N, C, D, H, W).
        output: the same as the input.

    Raises:
        ValueError: rmax < 1, dmax < 0, step counts that are negative or before ``warmup_steps``, eps <= 0 in
            training, or an input of another rank or channel count.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchRenorm3d
        >>> layer = BatchRenorm3d(16, warmup_steps=0, rmax_steps=1000, dmax_steps=1000)
        >>> y = layer(torch.randn(2, 16, 4, 6, 6))
        >>> [round(limit, 4) for limit in layer.current_limits()]   # after one step
        [1.002, 0.005]

    References:
        Ioffe 2017, "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models",
        arXiv 1702.03275.
    """
    _input_shapes = BatchNorm3d._input_shapes


# -------------------------------------------------------------------------------------------- Frozen BN
class _FrozenBatchNorm(torch.nn.Module):
    """Batch norm with fixed statistics; the public layers are `FrozenBatchNorm1d/2d/3d`."""

    _input_shapes: dict[int, str] = {}
    _version = 2  # torch's BatchNorm state-dict version (the counter is saved), so the metadata matches too

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, affine_trainable: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        name = type(self).__name__
        num_features = _check_integer(num_features, "num_features", name, 1, "pass the number of channels C")
        check_eps_momentum(name, eps, None)
        if affine_trainable and not affine:
            raise ValueError(f"{name} affine_trainable=True needs affine=True (there is no gamma or beta to train), "
                             f"got affine=False: pass affine=True or affine_trainable=False")
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps = num_features, float(eps)
        self.affine, self.affine_trainable = bool(affine), bool(affine_trainable)
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(num_features, **factory), requires_grad=affine_trainable)
            self.bias = torch.nn.Parameter(torch.zeros(num_features, **factory), requires_grad=affine_trainable)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    @classmethod
    def from_batchnorm(cls, module: torch.nn.Module, affine_trainable: bool = False) -> "_FrozenBatchNorm":
        """A frozen copy of a batch-norm module (its eps, affine parameters and running statistics)."""
        if getattr(module, "running_mean", None) is None or getattr(module, "running_var", None) is None:
            raise ValueError(f"{cls.__name__}.from_batchnorm needs a module with running statistics, got "
                             f"{type(module).__name__} without running_mean/running_var "
                             f"(track_running_stats=False): there are no statistics to freeze")
        weight = getattr(module, "weight", None)
        frozen = cls(module.running_mean.shape[0], module.eps, weight is not None,
                     affine_trainable and weight is not None, device=module.running_mean.device,
                     dtype=module.running_mean.dtype)
        with torch.no_grad():
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                frozen.num_batches_tracked.copy_(module.num_batches_tracked)
            if weight is not None:
                frozen.weight.copy_(weight)
                bias = getattr(module, "bias", None)
                if bias is not None:
                    frozen.bias.copy_(bias)
                else:
                    frozen.bias.zero_()
        return frozen

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "num_batches_tracked"
        if key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long, device=self.num_batches_tracked.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, affine={self.affine}, "
                f"affine_trainable={self.affine_trainable}")

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            leaf = traced_as_leaf(self, (input,))
            if leaf is not None:
                return leaf
            return torch.nn.functional.batch_norm(input, self.running_mean, self.running_var, self.weight,
                                                  self.bias, False, 0.0, self.eps)
        BatchNormMixin._check_input_dim(self, input)
        return functional.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False,
                                     0.0, self.eps)


class FrozenBatchNorm1d(_FrozenBatchNorm):
    r"""Batch norm with fixed running statistics, in training and in inference, over (N, C) or (N, C, L).

    .. math:: y = \frac{x - \mathrm{running\_mean}}{\sqrt{\mathrm{running\_var} + \epsilon}} \gamma + \beta

    The statistics never move (``model.train()`` changes nothing); gamma and beta are trainable only with
    ``affine_trainable=True``. Parameters and buffers carry torch's names, so a BatchNorm1d state dict loads as is
    (and back); a state dict without ``num_batches_tracked`` (torchvision's FrozenBatchNorm2d) loads too. Not a
    subclass of torch's ``_BatchNorm``, so converters such as ``SyncBatchNorm.convert_sync_batchnorm`` leave it
    alone. `from_batchnorm` makes one from an existing layer.

    Args:
        num_features: C, the number of channels.
        eps: 1e-5; added to the variance inside the square root.
        affine: True; gamma and beta exist.
        affine_trainable: False; True lets gamma and beta receive gradients (needs affine=True).
        device: None; factory argument.
        dtype: None; factory argument.

    Shape:
        input: (N, C) or (N, C, L).
        output: the same as the input.

    Raises:
        ValueError: num_features < 1, eps < 0, affine_trainable without affine, or an input of another rank or
            channel count.

    Example:
        >>> import torch
        >>> from batchnorm.nn import FrozenBatchNorm1d
        >>> bn = torch.nn.BatchNorm1d(16)
        >>> _ = bn(torch.randn(8, 16))                              # some running statistics
        >>> frozen = FrozenBatchNorm1d.from_batchnorm(bn).train()
        >>> x = torch.randn(8, 16)
        >>> torch.allclose(frozen(x), bn.eval()(x), atol=1e-6)
        True
    """
    _input_shapes = BatchNorm1d._input_shapes


class FrozenBatchNorm2d(_FrozenBatchNorm):
    r"""Batch norm with fixed running statistics, in training and in inference, over (N, C, H, W).

    .. math:: y = \frac{x - \mathrm{running\_mean}}{\sqrt{\mathrm{running\_var} + \epsilon}} \gamma + \beta

    The statistics never move (``model.train()`` changes nothing); gamma and beta are trainable only with
    ``affine_trainable=True``. Parameters and buffers carry torch's names, so a BatchNorm2d state dict loads as is
    (and back); a state dict without ``num_batches_tracked`` (torchvision's FrozenBatchNorm2d) loads too. Not a
    subclass of torch's ``_BatchNorm``, so converters such as ``SyncBatchNorm.convert_sync_batchnorm`` leave it
    alone. `from_batchnorm` makes one from an existing layer.

    Args:
        num_features: C, the number of channels.
        eps: 1e-5; added to the variance inside the square root.
        affine: True; gamma and beta exist.
        affine_trainable: False; True lets gamma and beta receive gradients (needs affine=True).
        device: None; factory argument.
        dtype: None; factory argument.

    Shape:
        input: (N, C, H, W).
        output: the same as the input.

    Raises:
        ValueError: num_features < 1, eps < 0, affine_trainable without affine, or an input of another rank or
            channel count.

    Example:
        >>> import torch
        >>> from batchnorm.nn import FrozenBatchNorm2d
        >>> bn = torch.nn.BatchNorm2d(16)
        >>> _ = bn(torch.randn(4, 16, 8, 8))                              # some running statistics
        >>> frozen = FrozenBatchNorm2d.from_batchnorm(bn).train()
        >>> x = torch.randn(4, 16, 8, 8)
        >>> torch.allclose(frozen(x), bn.eval()(x), atol=1e-6)
        True
    """
    _input_shapes = BatchNorm2d._input_shapes


class FrozenBatchNorm3d(_FrozenBatchNorm):
    r"""Batch norm with fixed running statistics, in training and in inference, over (N, C, D, H, W).

    .. math:: y = \frac{x - \mathrm{running\_mean}}{\sqrt{\mathrm{running\_var} + \epsilon}} \gamma + \beta

    The statistics never move (``model.train()`` changes nothing); gamma and beta are trainable only with
    ``affine_trainable=True``. Parameters and buffers carry torch's names, so a BatchNorm3d state dict loads as is
    (and back); a state dict without ``num_batches_tracked`` (torchvision's FrozenBatchNorm2d) loads too. Not a
    subclass of torch's ``_BatchNorm``, so converters such as ``SyncBatchNorm.convert_sync_batchnorm`` leave it
    alone. `from_batchnorm` makes one from an existing layer.

    Args:
        num_features: C, the number of channels.
        eps: 1e-5; added to the variance inside the square root.
        affine: True; gamma and beta exist.
        affine_trainable: False; True lets gamma and beta receive gradients (needs affine=True).
        device: None; factory argument.
        dtype: None; factory argument.

    Shape:
        input: (N, C, D, H, W).
        output: the same as the input.

    Raises:
        ValueError: num_features < 1, eps < 0, affine_trainable without affine, or an input of another rank or
            channel count.

    Example:
        >>> import torch
        >>> from batchnorm.nn import FrozenBatchNorm3d
        >>> bn = torch.nn.BatchNorm3d(16)
        >>> _ = bn(torch.randn(2, 16, 4, 6, 6))                              # some running statistics
        >>> frozen = FrozenBatchNorm3d.from_batchnorm(bn).train()
        >>> x = torch.randn(2, 16, 4, 6, 6)
        >>> torch.allclose(frozen(x), bn.eval()(x), atol=1e-6)
        True
    """
    _input_shapes = BatchNorm3d._input_shapes
