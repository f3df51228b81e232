"""`batch_norm_add_act`: BN + residual add + activation in one pass (ResNet's BN + add + ReLU)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import kernels
from ..kernels.algebra import float64_vector, scale_shift
from ._autograd import backward_needs_torch, differentiable_grads, torch_activation, torch_transform
from ._checks import (_check_statistics_arguments, _checked_activation, check_per_channel_sizes,
                      check_running_not_differentiable, uses_own_kernels)
from ._transform import _transform_backward
from .batch_norm import (_activation_in_place, _native_batch_norm, _statistics, _torch_is_faster, eager_eligible,
                         update_running_stats)


@torch.library.custom_op("batchnorm::normalize_add_act", mutates_args=())
def _normalize_add_act(x: Tensor, residual: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor],
                       bias: Optional[Tensor], eps: float, batch_stats: bool, activation: str,
                       activation_param: float) -> Tensor:
    """y = act((x - mean) / sqrt(var + eps) * weight + bias + residual)."""
    channels = x.shape[1]
    scale, shift = scale_shift(float64_vector(var, channels, 1.0), weight, bias, eps, None, None)
    return kernels.affine_add_act(x, float64_vector(mean, channels, 0.0), scale, shift, residual, activation,
                                  activation_param)


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
    mean_np, var_np = float64_vector(mean, channels, 0.0), float64_vector(var, channels, 1.0)
    scale, shift = scale_shift(var_np, weight, bias, eps, None, None)
    g, sum_g, sum_g_xc = kernels.grad_add_act(dy, x, mean_np, scale, shift, residual, activation, activation_param)
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


class _EagerAddAct(torch.autograd.Function):
    """BN + add + activation on the kernels without the custom ops' dispatch (eager calls outside torch.compile):
    statistics, then one pass for y; in the backward one pass for g (the residual's gradient) and its sums, one
    for dx. Computes exactly what `normalize_add_act` and its backward compute."""

    @staticmethod
    def forward(ctx, input, residual, weight, bias, running_mean, running_var, training, momentum, eps, activation,
                activation_param):
        mean, var = _eager_statistics(input, running_mean, running_var, training, momentum)
        scale, shift = scale_shift(var, weight, bias, eps)
        ctx.save_for_backward(input, residual, weight, bias)
        ctx.stats = (mean, var, scale, shift, training, eps, activation, activation_param)
        return kernels.affine_add_act(input, mean, scale, shift, residual, activation, activation_param)

    @staticmethod
    def backward(ctx, dy):
        x, residual, weight, bias = ctx.saved_tensors
        mean, var, scale, shift, training, eps, activation, param = ctx.stats
        needs = ctx.needs_input_grad
        if backward_needs_torch(dy):  # create_graph or functorch: torch ops, statistics recomputed from x
            mean_t, var_t = (None, None) if training else (torch.from_numpy(mean), torch.from_numpy(var))
            grads = differentiable_grads(
                dy, (x, residual, weight, bias), needs[:4],
                lambda x_, r_, w_, b_: torch_transform(x_, mean_t, var_t, w_, b_, eps, training, None, None,
                                                       activation, param, r_))
            return (*grads, None, None, None, None, None, None, None)
        g, sum_g, sum_g_xc = kernels.grad_add_act(dy, x, mean, scale, shift, residual, activation, param)
        dx, dgamma, dbeta = _transform_backward(g, x, mean, var, weight, eps, training, needs[0],
                                                sums=(sum_g, sum_g_xc))
        dtype = x.dtype if weight is None else weight.dtype
        return (dx, (g if needs[1] else None), (torch.from_numpy(dgamma).to(dtype) if needs[2] else None),
                (torch.from_numpy(dbeta).to(dtype) if needs[3] else None), None, None, None, None, None, None, None)


def _eager_statistics(input, running_mean, running_var, training, momentum) -> tuple[np.ndarray, np.ndarray]:
    """(mean, biased var) as float64 arrays: the batch's (the running buffers updated in place), or the running
    ones; zeros and ones for an empty batch."""
    channels = input.shape[1]
    if not training:
        return float64_vector(running_mean, channels, 0.0), float64_vector(running_var, channels, 1.0)
    if input.numel() == 0:
        return np.zeros(channels), np.ones(channels)
    mean, var = kernels.batch_stats(input)
    update_running_stats(running_mean, running_var, mean, var, input.numel() // channels, momentum)
    return mean, var


def _torch_add_act(input, residual, running_mean, running_var, weight, bias, training, momentum, eps, activation,
                   activation_param) -> Optional[Tensor]:
    """act(BN(input) + residual) with torch's native batch norm, the add and the activation in place on its fresh
    output (None when torch rejects the per-channel tensors: the kernels' path then serves or rejects them)."""
    y = _native_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return None if y is None else _activation_in_place(y.add_(residual), activation, activation_param)


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
    eager = not torch.compiler.is_compiling() and residual.layout == torch.strided and not \
        torch.overrides.has_torch_function((residual,))
    if eager and _torch_is_faster(input, training, weight, bias, "add_act"):
        y = _torch_add_act(input, residual, running_mean, running_var, weight, bias, training, momentum, eps,
                           activation, float(activation_param))
        if y is not None:
            return y
    if eager and eager_eligible(input, weight, bias, running_mean, running_var):
        _check_statistics_arguments(input, running_mean, running_var, training, eps)
        return _EagerAddAct.apply(input, residual, weight, bias, running_mean, running_var, training, momentum, eps,
                                  activation, float(activation_param))
    check_per_channel_sizes(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    mean, var = _statistics(input, running_mean, running_var, training, momentum, eps)
    return torch.ops.batchnorm.normalize_add_act(input, residual, mean, var, weight, bias, eps, training,
                                                 activation, float(activation_param))
