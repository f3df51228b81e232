"""`batch_norm` (torch's signature) on the fused eager path, and the custom ops of the transform."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import kernels
from ..kernels import config
from ..kernels.algebra import float64_vector, unbiased_variance, update_running
from ._autograd import backward_needs_torch, differentiable_grads, torch_activation, torch_transform
from ._checks import (_OWN_DTYPES, _check_statistics_arguments, _checked_activation, _eager_context_needs_torch,
                      check_per_channel_sizes, check_running_not_differentiable, uses_own_kernels)
from ._transform import _stats_tensor, _transform, _transform_backward


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
    return _transform(x, float64_vector(mean, channels, 0.0), float64_vector(var, channels, 1.0), weight, bias, eps,
                      None if r is None else float64_vector(r, channels, 1.0),
                      None if d is None else float64_vector(d, channels, 0.0), activation, activation_param)


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
    dx, dgamma, dbeta = _transform_backward(dy, x, float64_vector(mean, channels, 0.0),
                                            float64_vector(var, channels, 1.0), weight, eps, batch_stats, need_dx,
                                            None if r is None else float64_vector(r, channels, 1.0),
                                            None if d is None else float64_vector(d, channels, 0.0),
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
    update_running(running_mean, running_var, mean, unbiased_variance(var, count), momentum)


# Outside torch.compile/export/tracing, `batch_norm` (with or without a fused activation) runs through this one
# autograd.Function: one fused kernel call for the forward (statistics, running update, normalize, activation)
# and one for the backward (both sums, dweight, dbias, dx), with no custom-op dispatch and no per-channel tensors
# in between.
# It computes exactly what `batch_stats` + `normalize` + `normalize_backward` compute; those custom ops remain
# the path for torch.compile (and every variant that builds on them).
def eager_eligible(input: Tensor, *per_channel: Optional[Tensor]) -> bool:
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


# Function.apply without its functorch bookkeeping (`eager_eligible` has ruled functorch transforms out).
_eager_apply = super(torch.autograd.Function, _EagerBatchNorm).apply


def _eager_forward(input, weight, bias, running_mean, running_var, training, momentum, eps, activation,
                   activation_param):
    """(y, mean, var) with float64 NumPy statistics; updates the running buffers in training."""
    if training:
        y, mean, var = kernels.train_forward(input, weight, bias, eps, momentum, running_mean, running_var,
                                             activation, activation_param)
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
    if training:
        return _eager_forward(input, weight, bias, running_mean, running_var, training, momentum, eps, activation,
                              activation_param)[0]
    return kernels.normalize(input, running_mean, running_var, weight, bias, eps, activation, activation_param)


def _torch_is_faster(input: Tensor, training: bool, weight: Optional[Tensor], bias: Optional[Tensor],
                     kind: str) -> bool:
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
    if layout == "cf":
        if mode == "train" and input.shape[1] < config.FUSED_MIN_CHANNELS_PER_THREAD * torch.get_num_threads():
            return numel < config.FEW_CHANNELS_TRAIN_BELOW  # an input layer (RGB): the kernels' multi-pass path
    elif numel < (config.ROWS_MIN if input.dim() == 2 else config.ROWS_MIN_CHANNELS_LAST) * input.shape[1]:
        return True  # few rows per channel: too few row blocks for the threads
    return numel < config.TORCH_BELOW[mode, layout, kind]


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
    kind = "plain" if activation == "identity" else "act"
    if not compiling and _torch_is_faster(input, training, weight, bias, kind):
        y = _native_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        if y is not None:
            return y if activation == "identity" else _activation_in_place(y, activation, activation_param)
    if not compiling and eager_eligible(input, weight, bias, running_mean, running_var):
        return _eager_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                                 activation, activation_param)
    check_per_channel_sizes(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    mean, var = _statistics(input, running_mean, running_var, training, momentum, eps)
    if activation == "identity":
        return torch.ops.batchnorm.normalize(input, mean, var, weight, bias, eps, training)
    return torch.ops.batchnorm.normalize(input, mean, var, weight, bias, eps, training, None, None, activation,
                                         float(activation_param))
