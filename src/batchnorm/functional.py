"""Torch-facing batch norm: custom ops with autograd and fake implementations, routed to the Numba kernels.

The shared core of every layer in this package is two steps (see the design page of the documentation)::

    1. statistics  mean_c, var_c   from the batch (training) or the running buffers (inference);
    2. transform   y = (x - mean_c) * gamma_c / sqrt(var_c + eps) + beta_c,

and the backward of the transform, with g = dL/dy, xhat = (x - mean) / sqrt(var + eps), m values per channel::

    dbeta = sum g,   dgamma = sum g * xhat,
    dx = gamma / sqrt(var + eps) * (g - [batch] (dbeta + xhat * dgamma) / m)

where the bracketed term is present only when the statistics came from the batch itself.

Ops registered under the ``batchnorm::`` namespace (usable in ``torch.compile(fullgraph=True)``):

* ``batchnorm::batch_stats(x) -> (mean, var)``: per-channel statistics, one read of x;
* ``batchnorm::normalize(x, mean, var, weight?, bias?, eps, batch_stats, r?, d?) -> y``: the transform;
* ``batchnorm::normalize_backward(dy, x, mean, var, weight?, eps, batch_stats, need_dx, r?, d?) -> (dx, dw, db)``.

Optional per-channel ``r``, ``d`` (Batch Renorm) make the transform ((x - mean) / sqrt(var + eps) * r + d) * gamma
+ beta with r, d constants in the backward.
`batch_stats=True` says that mean/var are the statistics of x itself, so the backward includes their
dependence on x. The statistics are not differentiable tensors of their own: a variant that derives them
another way (ghost chunks, other processes, masks) reuses `normalize` with the flag that describes them.

Routing: CPU float32 and float64 inputs run on this package's kernels. Every other device or dtype (CUDA,
float16, bfloat16, ...) goes to `torch.nn.functional.batch_norm`, torch's own implementation.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.autograd import forward_ad as _forward_ad

from . import kernels
from .kernels import config, fused

__all__ = ["batch_norm", "uses_own_kernels", "needs_torch_math", "check_batch_size", "update_running_stats",
           "BatchNormArgumentError", "ArgumentShapeError", "UnsupportedDtypeError", "check_per_channel_sizes",
           "check_running_not_differentiable", "torch_transform"]

_OWN_DTYPES = (torch.float32, torch.float64)


class BatchNormArgumentError(ValueError, RuntimeError):
    """An argument that torch's batch norm refuses with a RuntimeError.

    Both a ValueError (this package's convention) and a RuntimeError (what torch raises for the same mistake),
    so `except RuntimeError` written for torch's BatchNorm catches it too.

    Example:
        >>> import torch
        >>> from batchnorm.functional import BatchNormArgumentError, batch_norm
        >>> try:
        ...     batch_norm(torch.randn(4, 3), torch.zeros(5), torch.ones(5))
        ... except RuntimeError as error:               # what torch's users catch
        ...     print(isinstance(error, BatchNormArgumentError), isinstance(error, ValueError))
        True True
    """


class ArgumentShapeError(BatchNormArgumentError):
    """A weight, bias, running buffer or input whose size does not match the number of channels.

    Example:
        >>> import torch
        >>> from batchnorm.functional import ArgumentShapeError, check_per_channel_sizes
        >>> try:
        ...     check_per_channel_sizes(torch.randn(4, 3), weight=torch.ones(2))
        ... except ArgumentShapeError as error:
        ...     print(str(error)[:54])
        batch_norm expected weight to contain 3 elements (one
    """


class UnsupportedDtypeError(TypeError, NotImplementedError):
    """An input dtype batch norm does not compute in (integer, bool, complex): a TypeError, and the
    NotImplementedError torch raises for it.

    Example:
        >>> import torch
        >>> from batchnorm.functional import UnsupportedDtypeError
        >>> from batchnorm.nn import BatchNorm1d
        >>> try:
        ...     BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.int64))
        ... except UnsupportedDtypeError as error:
        ...     print(isinstance(error, TypeError), isinstance(error, NotImplementedError))
        True True
    """


def check_running_not_differentiable(running_mean: Optional[Tensor], running_var: Optional[Tensor],
                                     where: str = "batch_norm") -> None:
    """Raise BatchNormArgumentError, as torch does, for running buffers that require grad while grad mode is on
    (batch norm is not differentiable with respect to them, and training updates them in place).

    Example:
        >>> import torch
        >>> from batchnorm.functional import check_running_not_differentiable
        >>> check_running_not_differentiable(torch.zeros(3), torch.ones(3))       # plain buffers: fine
        >>> check_running_not_differentiable(torch.zeros(3, requires_grad=True), None)
        Traceback (most recent call last):
        ...
        batchnorm.functional.BatchNormArgumentError: ...
    """
    if not ((running_mean is not None and running_mean.requires_grad)
            or (running_var is not None and running_var.requires_grad)) or not torch.is_grad_enabled():
        return
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.requires_grad:
            raise BatchNormArgumentError(
                f"{where} is not differentiable with respect to {name}, got {name} with requires_grad=True: "
                f"call {name}.requires_grad_(False) (running statistics are buffers, updated in place)")


def needs_torch_math(x) -> bool:
    """True where this package's kernels cannot serve a call on x, so torch's own math must compute it.

    Those contexts record or transform torch operations, which the kernels (NumPy views of the memory) bypass:
    a tensor subclass or proxy (FakeTensor, fx Proxy, Parameter as input), `torch.jit.trace` and the
    TorchScript ONNX exporter, functorch transforms (vmap, grad, jacrev, jacfwd, jvp), forward-mode AD
    (`torch.autograd.forward_ad`), an active TorchDispatchMode (FakeTensorMode, make_fx, FlopCounterMode), and
    `torch.export` (also behind `torch.onnx.export(dynamo=True)`), so exported programs hold standard aten ops
    and load with `import torch` alone. Under `torch.compile` the layers keep this package's custom ops.

    Example:
        >>> import torch
        >>> from batchnorm.functional import needs_torch_math
        >>> needs_torch_math(torch.randn(2, 3))
        False
        >>> torch.func.vmap(lambda row: torch.tensor(needs_torch_math(row)))(torch.randn(2, 3))
        tensor([True, True])
    """
    if torch.compiler.is_compiling():
        return torch.compiler.is_exporting()
    return _eager_context_needs_torch(x)


def _eager_context_needs_torch(x) -> bool:
    """`needs_torch_math` outside torch.compile: a few C-level flags, about 0.3 us per call."""
    return (type(x) is not Tensor or torch._C._get_tracing_state() is not None
            or torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0
            or torch._C._len_torch_dispatch_stack() > 0)


def uses_own_kernels(x: Tensor) -> bool:
    """True when x runs on this package's kernels (CPU float32/float64, outside the contexts of
    `needs_torch_math`), False when routed to torch.

    Example:
        >>> import torch
        >>> from batchnorm.functional import uses_own_kernels
        >>> uses_own_kernels(torch.randn(2, 3)), uses_own_kernels(torch.randn(2, 3).half())
        (True, False)
    """
    if torch.compiler.is_compiling():
        return x.device.type == "cpu" and x.dtype in _OWN_DTYPES and not torch.compiler.is_exporting()
    return type(x) is Tensor and x.is_cpu and x.dtype in _OWN_DTYPES and not _eager_context_needs_torch(x)


def check_per_channel_sizes(input: Tensor, **per_channel: Optional[Tensor]) -> None:
    """Raise ArgumentShapeError when a per-channel tensor (weight, bias, running_mean, running_var) does not hold
    one value per channel of input (dimension 1), as torch checks it, before any kernel runs.

    Example:
        >>> import torch
        >>> from batchnorm.functional import check_per_channel_sizes
        >>> check_per_channel_sizes(torch.randn(4, 3), weight=torch.ones(3), bias=None)      # fine
        >>> check_per_channel_sizes(torch.randn(4, 3), running_mean=torch.zeros(4))
        Traceback (most recent call last):
        ...
        batchnorm.functional.ArgumentShapeError: batch_norm expected running_mean to contain 3 elements ...
    """
    channels = input.shape[1] if input.dim() > 1 else (input.shape[0] if input.dim() == 1 else 1)
    for name, t in per_channel.items():
        if t is not None and t.numel() != channels:
            raise ArgumentShapeError(
                f"batch_norm expected {name} to contain {channels} elements (one per channel of the input of "
                f"shape {tuple(input.shape)}), got {t.numel()} elements (shape {tuple(t.shape)}): {name} "
                f"should contain {channels} elements not {t.numel()}; pass a {name} of shape ({channels},)")


# ------------------------------------------------------------------------------------ per-channel algebra
def _np(t: Optional[Tensor], size: int, fill: float) -> np.ndarray:
    """A per-channel tensor as a float64 NumPy vector (`fill` when the tensor is None)."""
    if t is None:
        return np.full(size, fill)
    return t.detach().to(torch.float64).numpy().reshape(size)


def _inv_std(var: np.ndarray, eps: float) -> np.ndarray:
    return 1.0 / np.sqrt(var + eps)


def _scale_shift(channels: int, var: np.ndarray, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                 r: Optional[np.ndarray], d: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) with (xhat * r + d) * gamma + beta = (x - mean) * scale + shift."""
    gamma = _np(weight, channels, 1.0)
    scale = _inv_std(var, eps) * gamma
    shift = _np(bias, channels, 0.0)
    if r is not None:
        scale = scale * r
    if d is not None:
        shift = shift + gamma * d
    return scale, shift


def _transform(x: Tensor, mean: np.ndarray, var: np.ndarray, weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float, r: Optional[np.ndarray] = None, d: Optional[np.ndarray] = None,
               activation: str = "identity", activation_param: float = 0.0) -> Tensor:
    """y = act((xhat * r + d) * gamma + beta); r, d (Batch Renorm's per-channel constants) default to 1 and 0."""
    scale, shift = _scale_shift(x.shape[1], var, weight, bias, eps, r, d)
    return kernels.affine(x, mean, scale, shift, activation, activation_param)


def input_grad_coefficients(sum_dy: np.ndarray, sum_dy_xc: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray,
                            count: int, batch_stats: bool):
    """Per-channel (k_dy, k_x, k_0) with dx = k_dy * dy + k_x * (x - mean) + k_0.

    From the two gradient sums over all `count` values of a channel (on one process or reduced over many):
    k_dy = gamma * inv_std and, when the statistics are the batch's own,
    k_x = -k_dy * inv_std^2 * sum(dy * (x - mean)) / count,  k_0 = -k_dy * sum(dy) / count.
    """
    k_dy = gamma * inv_std
    if not batch_stats:
        zeros = np.zeros_like(k_dy)
        return k_dy, zeros, zeros
    count = max(count, 1)
    return k_dy, -k_dy * inv_std * inv_std * sum_dy_xc / count, -k_dy * sum_dy / count


def _transform_backward(dy: Tensor, x: Tensor, mean: np.ndarray, var: np.ndarray, weight: Optional[Tensor],
                        eps: float, batch_stats: bool, need_dx: bool, r: Optional[np.ndarray] = None,
                        d: Optional[np.ndarray] = None, bias: Optional[Tensor] = None, activation: str = "identity",
                        activation_param: float = 0.0, sums: Optional[tuple[np.ndarray, np.ndarray]] = None):
    """(dx or None, dgamma, dbeta), the last two as float64 NumPy vectors.

    With Batch Renorm's constants r, d (xhat' = xhat * r + d): dx is the backward with gamma * r in place of
    gamma, dgamma = r * sum(dy * xhat) + d * sum(dy). With an activation, every formula holds with dy replaced
    by g = dy * act'(z), the pre-activation z being recomputed from x (and bias) inside the kernels.
    `sums` = (sum(dy), sum(dy * (x - mean))) when a fused kernel has already computed them.
    """
    channels = x.shape[1]
    inv_std = _inv_std(var, eps)
    scale, shift = _scale_shift(channels, var, weight, bias, eps, r, d)
    if sums is not None:
        sum_dy, sum_dy_xc = sums
    else:
        sum_dy, sum_dy_xc = kernels.grad_sums(dy, x, mean, scale, shift, activation, activation_param)
    dx = None
    if need_dx:
        count = x.numel() // max(channels, 1)
        gamma = _np(weight, channels, 1.0)
        if r is not None:
            gamma = gamma * r
        k_dy, k_x, k_0 = input_grad_coefficients(sum_dy, sum_dy_xc, inv_std, gamma, count, batch_stats)
        dx = kernels.grad_input(dy, x, mean, k_dy, k_x, k_0, scale, shift, activation, activation_param)
    dgamma = sum_dy_xc * inv_std
    if r is not None:
        dgamma = dgamma * r
    if d is not None:
        dgamma = dgamma + d * sum_dy
    return dx, dgamma, sum_dy


# ---------------------------------------------------------------- higher-order autograd (backward_needs_torch)
# A backward that runs with create_graph=True (grad mode on inside the backward) must return gradients that are
# themselves differentiable, including the second-order term when the upstream gradient is a constant; a backward
# run under a functorch transform (the batched gradients of `jacobian(vectorize=True)`, gradcheck's batched-grad
# check) gets a BatchedTensor gradient that the kernels cannot read. In both cases the kernels are bypassed: the
# transform is recomputed from the saved inputs in torch ops (exactly the forward's formula, with the statistics
# recomputed from x when they are the batch's own) and differentiated with `torch.autograd.grad` (create_graph
# when grad mode is on), so every derivative of any order is torch's.
def backward_needs_torch(dy: Tensor) -> bool:
    """True when a backward must run in torch ops: create_graph=True (grad mode on inside the backward), a
    functorch transform, or a gradient batched by the legacy vmap of `jacobian(vectorize=True)`/gradcheck."""
    return (torch.is_grad_enabled() or torch._C._are_functorch_transforms_active()
            or torch._C._functorch.is_legacy_batchedtensor(dy))


def torch_transform(x: Tensor, mean: Optional[Tensor], var: Optional[Tensor], weight: Optional[Tensor],
                    bias: Optional[Tensor], eps: float, batch_stats: bool, r: Optional[Tensor] = None,
                    d: Optional[Tensor] = None, activation: str = "identity", activation_param: float = 0.0,
                    residual: Optional[Tensor] = None) -> Tensor:
    """act(((x - mean) / sqrt(var + eps) * r + d) * weight + bias [+ residual]) in differentiable torch ops; with
    `batch_stats` mean and (biased) var are computed from x here, else the given per-channel constants are used.

    Example:
        >>> import torch
        >>> from batchnorm.functional import torch_transform
        >>> x = torch.randn(8, 3, 4, 4)
        >>> y = torch_transform(x, None, None, None, None, 1e-5, True, activation="relu")
        >>> torch.allclose(y, torch.relu(torch.nn.functional.batch_norm(x, None, None, training=True)), atol=1e-6)
        True
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if batch_stats:
        var_, mean_ = torch.var_mean(x, dim=[0] + list(range(2, x.dim())), correction=0, keepdim=True)
    else:
        mean_, var_ = mean.detach().to(x.dtype).view(shape), var.detach().to(x.dtype).view(shape)
    z = (x - mean_) * torch.rsqrt(var_ + eps)
    if r is not None:
        z = z * r.detach().to(x.dtype).view(shape)
    if d is not None:
        z = z + d.detach().to(x.dtype).view(shape)
    if weight is not None:
        z = z * weight.view(shape)
    if bias is not None:
        z = z + bias.view(shape)
    if residual is not None:
        z = z + residual
    return torch_activation(z, activation, activation_param)


def differentiable_grads(dy: Tensor, inputs: tuple, needs: tuple, recompute) -> list:
    """Gradients of `recompute(*inputs)` (torch ops) with upstream dy, as differentiable tensors (create_graph):
    one entry per input, None where `needs` is False or the input is None."""
    wanted = [i for i, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None]
    grads = [None] * len(inputs)
    if not wanted:
        return grads
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        y = recompute(*inputs)
        found = torch.autograd.grad(y, [inputs[i] for i in wanted], dy, create_graph=create_graph,
                                    allow_unused=True)
    for i, g in zip(wanted, found):
        grads[i] = torch.zeros_like(inputs[i]) if g is None else g
    return grads


def _stats_tensor(v: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))


# ------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("batchnorm::batch_stats", mutates_args=())
def _batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance (float64, not differentiable); zeros and ones for an empty batch."""
    channels = x.shape[1]
    if x.numel() == 0:
        return torch.zeros(channels, dtype=torch.float64), torch.ones(channels, dtype=torch.float64)
    mean, var = kernels.batch_stats(x)
    return _stats_tensor(mean), _stats_tensor(var)


@_batch_stats.register_fake
def _(x):
    stats = x.new_empty(x.shape[1], dtype=torch.float64)
    return stats, torch.empty_like(stats)


@torch.library.custom_op("batchnorm::normalize", mutates_args=())
def _normalize(x: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float, batch_stats: bool, r: Optional[Tensor] = None, d: Optional[Tensor] = None,
               activation: str = "identity", activation_param: float = 0.0) -> Tensor:
    """y = act(((x - mean) / sqrt(var + eps) * r + d) * weight + bias); `batch_stats`: mean/var came from x.

    r and d (optional, per channel; 1 and 0 when None) are Batch Renorm's corrections, constants in backprop.
    `activation` is one of `kernels.activations.ACTIVATIONS` with its parameter (slope, alpha).
    """
    channels = x.shape[1]
    return _transform(x, _np(mean, channels, 0.0), _np(var, channels, 1.0), weight, bias, eps,
                      None if r is None else _np(r, channels, 1.0), None if d is None else _np(d, channels, 0.0),
                      activation, activation_param)


@_normalize.register_fake
def _(x, mean, var, weight, bias, eps, batch_stats, r=None, d=None, activation="identity", activation_param=0.0):
    return kernels.empty_output_like(x)


@torch.library.custom_op("batchnorm::normalize_backward", mutates_args=())
def _normalize_backward(dy: Tensor, x: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor], eps: float,
                        batch_stats: bool, need_dx: bool, r: Optional[Tensor] = None,
                        d: Optional[Tensor] = None, bias: Optional[Tensor] = None, activation: str = "identity",
                        activation_param: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) of `normalize`; dx is empty when need_dx is False (bias only matters with an activation)."""
    channels = x.shape[1]
    dx, dgamma, dbeta = _transform_backward(dy, x, _np(mean, channels, 0.0), _np(var, channels, 1.0), weight,
                                            eps, batch_stats, need_dx,
                                            None if r is None else _np(r, channels, 1.0),
                                            None if d is None else _np(d, channels, 0.0),
                                            bias, activation, activation_param)
    if dx is None:
        dx = x.new_empty(0)
    dtype = x.dtype if weight is None else weight.dtype
    return dx, torch.from_numpy(dgamma).to(dtype), torch.from_numpy(dbeta).to(dtype)


@_normalize_backward.register_fake
def _(dy, x, mean, var, weight, eps, batch_stats, need_dx, r=None, d=None, bias=None, activation="identity",
      activation_param=0.0):
    dtype = x.dtype if weight is None else weight.dtype
    dx = kernels.empty_output_like(x) if need_dx else x.new_empty(0)
    return dx, x.new_empty(x.shape[1], dtype=dtype), x.new_empty(x.shape[1], dtype=dtype)


def _setup_normalize(ctx, inputs, output):
    x, mean, var, weight, bias, eps, batch_stats, r, d, activation, activation_param = (
        tuple(inputs) + (None, None, "identity", 0.0)[len(inputs) - 7:])
    ctx.save_for_backward(x, mean, var, weight, r, d, bias if activation != "identity" else None)
    ctx.eps, ctx.batch_stats = eps, batch_stats
    ctx.activation, ctx.activation_param = activation, activation_param
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None


def _backward_normalize(ctx, dy):
    x, mean, var, weight, r, d, bias = ctx.saved_tensors
    if backward_needs_torch(dy):
        return _backward_normalize_differentiable(ctx, dy, x, mean, var, weight, r, d, bias)
    need_dx = ctx.needs_input_grad[0]
    dx, dgamma, dbeta = torch.ops.batchnorm.normalize_backward(dy, x, mean, var, weight, ctx.eps,
                                                               ctx.batch_stats, need_dx, r, d, bias,
                                                               ctx.activation, ctx.activation_param)
    return ((dx if need_dx else None), None, None, (dgamma if ctx.has_weight else None),
            (dbeta if ctx.has_bias else None), None, None, None, None, None, None)


def _backward_normalize_differentiable(ctx, dy, x, mean, var, weight, r, d, bias):
    needs = ctx.needs_input_grad
    dx, dweight, dbias = differentiable_grads(
        dy, (x, weight, bias), (needs[0], needs[3] and ctx.has_weight, needs[4]),
        lambda x_, w_, b_: torch_transform(x_, mean, var, w_, b_, ctx.eps, ctx.batch_stats, r, d, ctx.activation,
                                           ctx.activation_param))
    if ctx.has_bias and needs[4] and dbias is None:  # bias not saved (no activation): dbias = sum(dy)
        dbias = dy.sum(dim=[0] + list(range(2, dy.dim())))
    return dx, None, None, dweight, dbias, None, None, None, None, None, None


_normalize.register_autograd(_backward_normalize, setup_context=_setup_normalize)


# ------------------------------------------------------------------------------------------ public API
def check_batch_size(x: Tensor, where: str = "batch_norm") -> None:
    """Raise ValueError when training would normalize a single value per channel (variance undefined).

    Args:
        x: the input batch, channels on axis 1.
        where: "batch_norm"; the name the message starts with.

    Raises:
        ValueError: x has fewer than 2 dimensions, or a single value per channel.

    Example:
        >>> import torch
        >>> from batchnorm.functional import check_batch_size
        >>> check_batch_size(torch.randn(2, 3))          # two values per channel: fine
        >>> check_batch_size(torch.randn(1, 3), "MyLayer")
        Traceback (most recent call last):
        ...
        ValueError: MyLayer expected more than 1 value per channel when training, got input of shape (1, 3): ...
    """
    if x.dim() < 2:
        raise ValueError(f"{where} expected input of shape (N, C, *spatial) with at least 2 dimensions, "
                         f"got shape {tuple(x.shape)}")
    values = x.numel() // max(x.shape[1], 1)
    if values == 1:
        raise ValueError(f"{where} expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(x.shape)}: the batch variance of a single value is undefined. Use a batch of "
                         f"at least 2 samples, or call model.eval() to normalize with the running statistics")


def update_running_stats(running_mean: Optional[Tensor], running_var: Optional[Tensor], mean: Tensor, var: Tensor,
                         count: int, momentum: float) -> None:
    """In place: running <- (1 - momentum) * running + momentum * batch, with the unbiased variance stored.

    An empty batch (count 0) leaves the buffers unchanged, as torch does.

    Args:
        running_mean: (C,) buffer, updated in place, or None.
        running_var: (C,) buffer, updated in place with count / (count - 1) * var, or None.
        mean: (C,) batch mean.
        var: (C,) biased batch variance.
        count: the number of values behind each channel's statistics.
        momentum: weight of the batch (PyTorch's convention).

    Example:
        >>> import torch
        >>> from batchnorm.functional import update_running_stats
        >>> running_mean, running_var = torch.zeros(2), torch.ones(2)
        >>> update_running_stats(running_mean, running_var, torch.tensor([1.0, 2.0]), torch.tensor([3.0, 3.0]), 4, 0.5)
        >>> running_mean, running_var
        (tensor([0.5000, 1.0000]), tensor([2.5000, 2.5000]))
    """
    if count == 0:
        return
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var * (count / (count - 1)) if count > 1 else torch.full_like(var, float("inf"))
            running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def _check_statistics_arguments(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                                training: bool, eps: float) -> None:
    """The argument checks of `batch_norm` (eps, running buffers in eval, more than 1 value per channel)."""
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, got eps={eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, got eps={eps}")
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm with training=False needs running_mean and running_var, got None: pass "
                             "the running statistics, or training=True to normalize with the batch statistics")
        return
    check_batch_size(input)


# ------------------------------------------------------------------------------------------ eager path
# Outside torch.compile/export/tracing, `batch_norm` (with or without a fused activation) runs through this one
# autograd.Function: one fused kernel call for the forward (statistics, running update, normalize, activation)
# and one for the backward (both sums, dweight, dbias, dx), with no custom-op dispatch and no per-channel tensors
# in between.
# It computes exactly what `batch_stats` + `normalize` + `normalize_backward` compute; those custom ops remain
# the path for torch.compile (and every variant that builds on them).
def _eager_eligible(input: Tensor, *per_channel: Optional[Tensor]) -> bool:
    """True when the fused eager path applies to an input that `uses_own_kernels` outside torch.compile (tracing,
    functorch and the like never get here): plain tensors, dense per-channel vectors."""
    if torch.overrides.has_torch_function((input,) + per_channel) or input.dim() < 2:
        return False
    channels, dtype = input.shape[1], input.dtype
    for t in per_channel:
        if t is not None and not (t.dtype is dtype and t.is_cpu and t.shape == (channels,) and t.is_contiguous()):
            return False
    return True


class _EagerBatchNorm(torch.autograd.Function):
    """Forward and backward of batch norm (+ activation) on the fused kernels (`kernels.train_forward/normalize/
    train_backward`)."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps, activation,
                activation_param):
        y, mean, var = _eager_forward(input, weight, bias, running_mean, running_var, training, momentum, eps,
                                      activation, activation_param)
        # the backward recomputes the pre-activation z from x, so an activation needs the bias too
        ctx.save_for_backward(input, weight, bias if activation != "identity" else None)
        ctx.stats = (mean, var, training, eps, activation, activation_param)
        return y

    @staticmethod
    def backward(ctx, dy):
        if backward_needs_torch(dy):
            return _eager_backward_differentiable(ctx, dy)
        return _eager_backward(ctx, dy)


def _eager_backward(ctx, dy):
    """The backward of `_EagerBatchNorm`: (dx, dweight, dbias) from one kernel call (no autograd graph)."""
    x, weight, bias = ctx.saved_tensors
    mean, var, training, eps, activation, activation_param = ctx.stats
    need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
    dx, dweight, dbias = kernels.train_backward(dy, x, mean, var, weight, eps, training, need_dx, need_dweight,
                                                bias, activation, activation_param)
    return dx, dweight, (dbias if need_dbias else None), None, None, None, None, None, None, None


def _eager_backward_differentiable(ctx, dy):
    """The backward of `_EagerBatchNorm` under create_graph=True: torch ops (`differentiable_grads`)."""
    x, weight, bias = ctx.saved_tensors
    mean, var, training, eps, activation, activation_param = ctx.stats
    needs = ctx.needs_input_grad
    mean_t, var_t = (None, None) if training else (torch.from_numpy(mean), torch.from_numpy(var))
    dx, dweight, dbias = differentiable_grads(
        dy, (x, weight, bias), needs[:3],
        lambda x_, w_, b_: torch_transform(x_, mean_t, var_t, w_, b_, eps, training, None, None, activation,
                                           activation_param))
    if needs[2] and dbias is None:  # bias not saved (no activation): dbias = sum(dy)
        dbias = dy.sum(dim=[0] + list(range(2, dy.dim())))
    return dx, dweight, dbias, None, None, None, None, None, None, None


# Function.apply without its functorch bookkeeping (`_eager_eligible` has ruled functorch transforms out).
_eager_apply = super(torch.autograd.Function, _EagerBatchNorm).apply


def _eager_forward(input, weight, bias, running_mean, running_var, training, momentum, eps, activation,
                   activation_param, pooled=False):
    """(y, mean, var) with float64 NumPy statistics; updates the running buffers in training. `pooled`: y may
    come from `kernels.pool` (outputs computed without autograd)."""
    if training:
        y, mean, var = kernels.train_forward(input, weight, bias, eps, momentum, running_mean, running_var,
                                             activation, activation_param, pooled=pooled)
        if input.numel():
            for buffer in (running_mean, running_var):
                if buffer is not None:
                    torch.autograd.graph.increment_version(buffer)
        return y, mean, var
    y = kernels.normalize(input, running_mean, running_var, weight, bias, eps, activation, activation_param)
    return y, running_mean.detach().numpy().astype(np.float64), running_var.detach().numpy().astype(np.float64)


def _eager_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, activation,
                      activation_param) -> Tensor:
    _check_statistics_arguments(input, running_mean, running_var, training, eps)
    if torch.is_grad_enabled() and (input.requires_grad or (weight is not None and weight.requires_grad)
                                    or (bias is not None and bias.requires_grad)):
        return _eager_apply(input, weight, bias, running_mean, running_var, training, momentum, eps, activation,
                            activation_param)
    # without autograd the output usually dies after the next layer: its memory can serve the next output
    if training:
        return _eager_forward(input, weight, bias, running_mean, running_var, training, momentum, eps, activation,
                              activation_param, pooled=True)[0]
    return kernels.normalize(input, running_mean, running_var, weight, bias, eps, activation, activation_param,
                             pooled=True)


def _torch_is_faster(input: Tensor, training: bool, weight: Optional[Tensor], bias: Optional[Tensor],
                     fused: bool) -> bool:
    """Whether torch's native batch norm serves this eager call: `kernels.config.BACKEND`, and under "auto" the
    measured crossover `kernels.config.TORCH_BELOW` for the call's mode and layout (an empty input always runs
    on the kernels, whose behaviour for it is defined)."""
    backend = config.BACKEND
    numel = input.numel()
    if backend != "auto" or not numel:
        return backend == "torch" and numel > 0
    if not training:
        mode = "eval"
    elif torch.is_grad_enabled() and (input.requires_grad or (weight is not None and weight.requires_grad)
                                      or (bias is not None and bias.requires_grad)):
        mode = "train"
    else:
        mode = "train_nograd"
    layout = "rows" if input.dim() == 2 or (not input.is_contiguous() and kernels.is_channels_last(input)) else "cf"
    return numel < config.TORCH_BELOW[mode, layout, fused]


def _native_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps) -> Optional[Tensor]:
    """`batch_norm` on torch's native kernel (`torch.batch_norm`), after the same argument checks as the kernels'
    path; None when torch rejects the per-channel tensors (another length or dtype), which the kernels' path
    then serves or rejects with its own message. torch checks them before it touches the running buffers."""
    _check_statistics_arguments(input, running_mean, running_var, training, eps)
    try:
        return torch.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, False)
    except RuntimeError:
        return None


def _activation_in_place(y: Tensor, activation: str, param: float) -> Tensor:
    """The activation of `torch_activation`, written over y where torch has an in-place form (y is the fresh
    output of torch's batch norm, whose backward does not read it, as in torch's BatchNorm + ReLU(inplace=True))."""
    if activation == "relu":
        return torch.relu_(y)
    if activation == "leaky_relu":
        return torch.nn.functional.leaky_relu_(y, param)
    if activation == "elu":
        return torch.nn.functional.elu_(y, param)
    if activation == "silu":
        return torch.nn.functional.silu(y, inplace=True)
    return torch_activation(y, activation, param)


def _statistics(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool,
                momentum: float, eps: float) -> tuple[Tensor, Tensor]:
    """The (mean, var) to normalize with: the batch's (updating the running buffers) or the running ones."""
    _check_statistics_arguments(input, running_mean, running_var, training, eps)
    if not training:
        return running_mean, running_var
    mean, var = torch.ops.batchnorm.batch_stats(input.detach())
    count = input.numel() // input.shape[1] if input.shape[1] else 0
    update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return mean, var


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, activation: str = "identity",
               activation_param: Optional[float] = None) -> Tensor:
    """Batch normalization with the signature and semantics of `torch.nn.functional.batch_norm`.

    y = (x - mean) / sqrt(var + eps) * weight + bias, per channel (axis 1). With `training=True` the mean and
    biased variance of the batch are used, and `running_mean`/`running_var` (if given) are updated in place:
    running <- (1 - momentum) * running + momentum * batch, storing the unbiased variance m/(m-1) * var.
    With `training=False` the running statistics are used.

    CPU float32/float64 inputs run on this package's kernels; other devices and dtypes go to torch's
    `torch.nn.functional.batch_norm` unchanged, and so do inputs too small for the kernels to beat torch's
    fixed cost per call (`kernels.config.TORCH_BELOW`; `BATCHNORM_BACKEND=numba` or `torch` forces one path).

    Args:
        input: the input, channels on axis 1.
        running_mean: (C,) buffer or None.
        running_var: (C,) buffer or None.
        weight: None; (C,) gamma.
        bias: None; (C,) beta.
        training: False; True uses the batch statistics (and updates the running ones).
        momentum: 0.1; weight of the new batch in the running average (PyTorch's convention).
        eps: 1e-5; added to the variance inside the square root.
        activation: "identity" (keyword only); an activation fused into the same pass, y = act(BN(x)): one of
            "identity", "relu", "leaky_relu", "elu", "silu", "gelu", "gelu_tanh".
        activation_param: None (keyword only); the slope of leaky_relu (default 0.01) or the alpha of elu
            (default 1.0).

    Shape:
        input: (N, C) or (N, C, ``*spatial``).
        output: the same as the input.

    Returns:
        The normalized tensor.

    Raises:
        ValueError: a training batch with a single value per channel, or an unknown activation.

    Example:
        >>> import torch
        >>> from batchnorm.functional import batch_norm
        >>> x = torch.randn(8, 3, 4, 4)
        >>> running_mean, running_var = torch.zeros(3), torch.ones(3)
        >>> y = batch_norm(x, running_mean, running_var, training=True)
        >>> torch.allclose(y, torch.nn.functional.batch_norm(x, None, None, training=True), atol=1e-5)
        True
        >>> torch.allclose(running_mean, 0.1 * x.mean((0, 2, 3)))
        True

    References:
        Ioffe & Szegedy 2015, "Batch Normalization", arXiv 1502.03167.
    """
    activation_param = 0.0 if activation == "identity" else _checked_activation("batch_norm", activation,
                                                                                 activation_param)
    compiling = torch.compiler.is_compiling()
    if not (uses_own_kernels(input) if compiling else
            type(input) is Tensor and input.is_cpu and input.dtype in _OWN_DTYPES
            and not _eager_context_needs_torch(input)):  # `uses_own_kernels`, inlined on the per-call path
        y = torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        return torch_activation(y, activation, activation_param)
    check_running_not_differentiable(running_mean, running_var)
    if not compiling and _torch_is_faster(input, training, weight, bias, activation != "identity"):
        y = _native_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        if y is not None:
            return y if activation == "identity" else _activation_in_place(y, activation, activation_param)
    if not compiling and _eager_eligible(input, weight, bias, running_mean, running_var):
        return _eager_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                                 activation, activation_param)
    check_per_channel_sizes(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    mean, var = _statistics(input, running_mean, running_var, training, momentum, eps)
    if activation == "identity":
        return torch.ops.batchnorm.normalize(input, mean, var, weight, bias, eps, training)
    return torch.ops.batchnorm.normalize(input, mean, var, weight, bias, eps, training, None, None, activation,
                                         float(activation_param))


def _checked_activation(owner: str, activation: str, activation_param: Optional[float],
                        invertible: bool = False) -> float:
    """The activation's parameter (its default filled in) after `batchnorm.nn.check_activation`'s checks:
    a ValueError/TypeError naming the activation and what is allowed, never a KeyError from the kernels."""
    from .nn.activated import check_activation  # the layers' own check (nn imports this module)

    return check_activation(owner, activation, activation_param, invertible)


def torch_activation(z: Tensor, activation: str, param: float) -> Tensor:
    """The activation `activation` computed with torch's own functions (the unfused oracle and the fallback)."""
    functions = {
        "identity": lambda t: t,
        "relu": torch.nn.functional.relu,
        "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, param),
        "elu": lambda t: torch.nn.functional.elu(t, param),
        "silu": torch.nn.functional.silu,
        "gelu": torch.nn.functional.gelu,
        "gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
    }
    return functions[activation](z)


# ------------------------------------------------------------------------- BN + add + activation (ResNet)
@torch.library.custom_op("batchnorm::normalize_add_act", mutates_args=())
def _normalize_add_act(x: Tensor, residual: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor],
                       bias: Optional[Tensor], eps: float, batch_stats: bool, activation: str,
                       activation_param: float) -> Tensor:
    """y = act((x - mean) / sqrt(var + eps) * weight + bias + residual)."""
    channels = x.shape[1]
    scale, shift = _scale_shift(channels, _np(var, channels, 1.0), weight, bias, eps, None, None)
    return fused.affine_add_act(x, _np(mean, channels, 0.0), scale, shift, residual, activation, activation_param)


@_normalize_add_act.register_fake
def _(x, residual, mean, var, weight, bias, eps, batch_stats, activation, activation_param):
    return kernels.empty_output_like(x)


@torch.library.custom_op("batchnorm::normalize_add_act_backward", mutates_args=())
def _normalize_add_act_backward(dy: Tensor, x: Tensor, residual: Tensor, mean: Tensor, var: Tensor,
                                weight: Optional[Tensor], bias: Optional[Tensor], eps: float, batch_stats: bool,
                                need_dx: bool, activation: str,
                                activation_param: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dresidual, dweight, dbias): g = dy * act'(z) is the residual's gradient, then BN's backward of g."""
    channels = x.shape[1]
    mean_np, var_np = _np(mean, channels, 0.0), _np(var, channels, 1.0)
    scale, shift = _scale_shift(channels, var_np, weight, bias, eps, None, None)
    g, sum_g, sum_g_xc = fused.grad_add_act(dy, x, mean_np, scale, shift, residual, activation, activation_param)
    dx, dgamma, dbeta = _transform_backward(g, x, mean_np, var_np, weight, eps, batch_stats, need_dx,
                                            sums=(sum_g, sum_g_xc))
    dtype = x.dtype if weight is None else weight.dtype
    return (x.new_empty(0) if dx is None else dx), g, torch.from_numpy(dgamma).to(dtype), \
        torch.from_numpy(dbeta).to(dtype)


@_normalize_add_act_backward.register_fake
def _(dy, x, residual, mean, var, weight, bias, eps, batch_stats, need_dx, activation, activation_param):
    dtype = x.dtype if weight is None else weight.dtype
    dx = kernels.empty_output_like(x) if need_dx else x.new_empty(0)
    return dx, kernels.empty_output_like(x), x.new_empty(x.shape[1], dtype=dtype), \
        x.new_empty(x.shape[1], dtype=dtype)


def _setup_add_act(ctx, inputs, output):
    x, residual, mean, var, weight, bias, eps, batch_stats, activation, activation_param = inputs
    ctx.save_for_backward(x, residual, mean, var, weight, bias)
    ctx.eps, ctx.batch_stats, ctx.activation, ctx.activation_param = eps, batch_stats, activation, activation_param
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None


def _backward_add_act(ctx, dy):
    x, residual, mean, var, weight, bias = ctx.saved_tensors
    if backward_needs_torch(dy):
        needs = ctx.needs_input_grad
        dx, dresidual, dweight, dbias = differentiable_grads(
            dy, (x, residual, weight, bias), (needs[0], needs[1], needs[4], needs[5]),
            lambda x_, res_, w_, b_: torch_transform(x_, mean, var, w_, b_, ctx.eps, ctx.batch_stats, None, None,
                                                     ctx.activation, ctx.activation_param, res_))
        return dx, dresidual, None, None, dweight, dbias, None, None, None, None
    need_dx = ctx.needs_input_grad[0]
    dx, dresidual, dgamma, dbeta = torch.ops.batchnorm.normalize_add_act_backward(
        dy, x, residual, mean, var, weight, bias, ctx.eps, ctx.batch_stats, need_dx, ctx.activation,
        ctx.activation_param)
    return ((dx if need_dx else None), (dresidual if ctx.needs_input_grad[1] else None), None, None,
            (dgamma if ctx.has_weight else None), (dbeta if ctx.has_bias else None), None, None, None, None)


_normalize_add_act.register_autograd(_backward_add_act, setup_context=_setup_add_act)


def batch_norm_add_act(input: Tensor, residual: Tensor, running_mean: Optional[Tensor],
                       running_var: Optional[Tensor], weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                       training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                       activation: str = "relu", activation_param: Optional[float] = None) -> Tensor:
    """y = act(BN(input) + residual) in one pass (ResNet's BN + add + ReLU); BN as in `batch_norm`.

    The residual's gradient is g = dy * act'(z), the input's is BN's backward of g. Only `input` and `residual`
    are saved for the backward. Other devices/dtypes: torch's batch_norm, add and activation.
    """
    activation_param = _checked_activation("batch_norm_add_act", activation, activation_param)
    if residual.shape != input.shape:
        raise ValueError(f"batch_norm_add_act expected residual of the input's shape {tuple(input.shape)}, got "
                         f"{tuple(residual.shape)}: the skip connection must match the block's output")
    if not (uses_own_kernels(input) and residual.dtype == input.dtype and residual.device == input.device):
        y = torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        return torch_activation(y + residual, activation, activation_param)
    check_running_not_differentiable(running_mean, running_var, "batch_norm_add_act")
    check_per_channel_sizes(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    mean, var = _statistics(input, running_mean, running_var, training, momentum, eps)
    return torch.ops.batchnorm.normalize_add_act(input, residual, mean, var, weight, bias, eps, training,
                                                 activation, float(activation_param))


# ----------------------------------------------------------------------------- in-place activated batch norm
def effective_weight(weight: Optional[Tensor], channels: int, min_abs_weight: float) -> np.ndarray:
    """gamma with |gamma| raised to at least `min_abs_weight` (sign kept, 0 counts as +): keeps BN invertible."""
    gamma = _np(weight, channels, 1.0)
    return np.where(gamma < 0, -1.0, 1.0) * np.maximum(np.abs(gamma), min_abs_weight)


def check_overwritable(x: Tensor, owner: str) -> None:
    """Raise ValueError if overwriting x in place would lose something autograd or the caller still needs."""
    if x.is_leaf and x.requires_grad:
        raise ValueError(f"{owner} overwrites its input, but the input is a leaf tensor that requires grad (its "
                         f"gradient would be lost): feed it the output of another layer, or use the out-of-place "
                         f"BatchNormAct layer")
    producer = x.grad_fn
    if producer is not None:
        for name in dir(producer):
            if not name.startswith("_saved_"):
                continue
            try:
                saved = getattr(producer, name)
            except RuntimeError:
                continue
            if isinstance(saved, Tensor) and saved.data_ptr() == x.data_ptr() and saved.shape == x.shape:
                raise ValueError(f"{owner} overwrites its input, but {type(producer).__name__} (the operation that "
                                 f"produced it) saved it for its own backward pass: put {owner} after a layer "
                                 f"that does not need its output (a convolution or linear layer), or use the "
                                 f"out-of-place BatchNormAct layer")
    if not (x.is_contiguous() or kernels.is_channels_last(x)):
        raise ValueError(f"{owner} overwrites its input in place and needs it dense (contiguous or channels_last), "
                         f"got shape {tuple(x.shape)} with strides {x.stride()}: call .contiguous() first")


class _InPlaceABN(torch.autograd.Function):
    """y = act(BN(x)) written over x; the backward recovers z = act^-1(y) and x_hat = (z - beta) / gamma."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps, activation,
                activation_param, min_abs_weight, owner):
        ctx.owner = owner
        channels = x.shape[1]
        gamma = effective_weight(weight, channels, min_abs_weight)
        gamma_x = gamma.astype(kernels.numpy_dtype(x))  # the kernels read per-channel values in x's dtype
        if training:  # one kernel: statistics, running update, and act(BN(x)) written over x
            _, _, var = kernels.train_forward(x, gamma_x, bias, eps, momentum, running_mean, running_var,
                                              activation, activation_param, out=x)
            if x.numel():
                for buffer in (running_mean, running_var):
                    if buffer is not None:
                        torch.autograd.graph.increment_version(buffer)
        else:
            kernels.normalize(x, running_mean, running_var, gamma_x, bias, eps, activation, activation_param, out=x)
            var = running_var.detach().numpy().astype(np.float64)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.gamma, ctx.beta, ctx.inv_std = gamma, _np(bias, channels, 0.0), _inv_std(var, eps)
        ctx.batch_stats, ctx.activation, ctx.activation_param = training, activation, activation_param
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        return x

    @staticmethod
    def backward(ctx, dy):
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{ctx.owner} cannot be differentiated twice (backward with create_graph=True): its input was "
                f"overwritten, so the graph of its gradient cannot be built. Use the out-of-place BatchNormAct layer "
                f"with the same activation (same parameters and state_dict) for double backward")
        (y,) = ctx.saved_tensors
        gamma, beta, inv_std = ctx.gamma, ctx.beta, ctx.inv_std
        sum_g, sum_g_zc = fused.grad_sums_from_output(dy, y, beta, ctx.activation, ctx.activation_param)
        dgamma = sum_g_zc / gamma  # sum(g * x_hat), x_hat = (z - beta) / gamma
        dx = None
        if ctx.needs_input_grad[0]:
            count = y.numel() // max(y.shape[1], 1)
            k_dy, _, k_0 = input_grad_coefficients(sum_g, sum_g_zc, inv_std, gamma, count, ctx.batch_stats)
            # k_x multiplies (x - mean) = (z - beta) / (gamma * inv_std)
            k_z = -inv_std * dgamma / max(count, 1) if ctx.batch_stats else np.zeros_like(gamma)
            dx = fused.grad_input_from_output(dy, y, beta, ctx.activation, ctx.activation_param, k_dy, k_z, k_0)
        dtype = y.dtype
        dweight = torch.from_numpy(dgamma).to(dtype) if ctx.has_weight else None
        dbias = torch.from_numpy(sum_g).to(dtype) if ctx.has_bias else None
        return dx, dweight, dbias, None, None, None, None, None, None, None, None, None


def inplace_abn(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
                momentum: float = 0.1, eps: float = 1e-5, activation: str = "leaky_relu",
                activation_param: Optional[float] = None, min_abs_weight: float = 1e-5,
                owner: str = "inplace_abn") -> Tensor:
    """In-place activated batch norm (Rota Bulo et al. 2018, arXiv 1712.02616): input <- act(BN(input)).

    Saves only the output. The backward inverts the activation, z = act^-1(y), recovers
    x_hat = (z - beta) / gamma, and then applies BN's backward: with g = dy * act'(z),
    dbeta = sum g, dgamma = sum(g (z - beta)) / gamma, dx = gamma inv_std (g - dbeta/m) - inv_std dgamma (z - beta)/m.
    The activation must be invertible (identity, leaky_relu with slope > 0, elu with alpha > 0).

    gamma close to 0: x_hat is recovered by dividing by gamma, so a gamma of exactly 0 would lose it. This layer
    normalizes with gamma' = sign(gamma) * max(|gamma|, min_abs_weight) (1e-5 by default; identical to gamma for
    every |gamma| >= min_abs_weight) and passes gamma's gradient straight through. (inplace_abn uses
    |gamma| + eps for every channel, which also flips negative gammas; we keep the sign and change nothing above
    the threshold, so a trained BatchNormAct checkpoint gives the same outputs.)

    Under torch.compile, and for devices/dtypes other than CPU float32/float64, it computes the same values out
    of place (BatchNormAct's path) and returns a new tensor.
    """
    activation_param = _checked_activation(owner, activation, activation_param, invertible=True)
    if torch.compiler.is_compiling() or not uses_own_kernels(input):
        gamma = weight
        if weight is not None:
            gamma = torch.where(weight < 0, -1.0, 1.0) * weight.abs().clamp_min(min_abs_weight)
            gamma = weight + (gamma - weight).detach()  # straight-through, as in the in-place path
        return batch_norm(input, running_mean, running_var, gamma, bias, training, momentum, eps,
                          activation=activation, activation_param=activation_param)
    if torch.is_grad_enabled():
        check_overwritable(input, owner)
    elif not (input.is_contiguous() or kernels.is_channels_last(input)):
        check_overwritable(input, owner)
    check_running_not_differentiable(running_mean, running_var, owner)
    check_per_channel_sizes(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    _check_statistics_arguments(input, running_mean, running_var, training, eps)
    return _InPlaceABN.apply(input, weight, bias, running_mean, running_var, training, momentum, eps, activation,
                             float(activation_param), float(min_abs_weight), owner)
