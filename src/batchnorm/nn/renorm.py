"""Batch Renormalization (Ioffe 2017): `BatchRenorm1d/2d/3d`, batch statistics corrected towards the running ones."""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from .. import functional
from ._base import BatchNormBase
from ._checks import check_integer, check_training_eps
from ._statistics import _batch_moments, _batch_transform, _running_forward, _update_running
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "renorm_limits"]


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


class _BatchRenorm(BatchNormBase):
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
        warmup_steps = check_integer(warmup_steps, "warmup_steps", name, 0, "the number of plain-BatchNorm steps")
        for argument, value in (("rmax_steps", rmax_steps), ("dmax_steps", dmax_steps)):
            check_integer(value, argument, name, 0, "the step at which the limit is reached")
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
        check_training_eps(name, self.eps)
        functional.check_batch_size(input, name)
        mean, var = _batch_moments(input)
        r, d = self.corrections(mean.to(torch.float64), var.to(torch.float64))
        y = _batch_transform(input, mean, var, self.weight, self.bias, self.eps, r, d)
        _update_running(self, [(input.numel() // max(input.shape[1], 1), mean, var)])
        return y


class BatchRenorm1d(_BatchRenorm, torch.nn.BatchNorm1d):
    r"""Batch Renormalization over (N, C) or (N, C, L): batch statistics corrected towards the running ones.

    As `BatchRenorm2d` for (N, C) and (N, C, L) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchRenorm1d
        >>> layer = BatchRenorm1d(16, warmup_steps=0, rmax_steps=1000, dmax_steps=1000)
        >>> y = layer(torch.randn(8, 16))
        >>> [round(limit, 4) for limit in layer.current_limits()]   # after one step
        [1.002, 0.005]
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

    As `BatchRenorm2d` for (N, C, D, H, W) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchRenorm3d
        >>> layer = BatchRenorm3d(16, warmup_steps=0, rmax_steps=1000, dmax_steps=1000)
        >>> y = layer(torch.randn(2, 16, 4, 6, 6))
        >>> [round(limit, 4) for limit in layer.current_limits()]   # after one step
        [1.002, 0.005]
    """
    _input_shapes = BatchNorm3d._input_shapes
