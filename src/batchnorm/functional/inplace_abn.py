"""`inplace_abn`: in-place activated batch norm (Rota Bulo et al. 2018), saving only its output."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import kernels
from ..kernels.algebra import float64_vector, input_grad_coefficients, inv_std
from ._checks import (_check_statistics_arguments, _checked_activation, check_per_channel_sizes,
                      check_running_not_differentiable, uses_own_kernels)
from .batch_norm import batch_norm


def effective_weight(weight: Optional[Tensor], channels: int, min_abs_weight: float) -> np.ndarray:
    """gamma with |gamma| raised to at least `min_abs_weight` (sign kept, 0 counts as +): keeps BN invertible."""
    gamma = float64_vector(weight, channels, 1.0)
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
        else:
            kernels.normalize(x, running_mean, running_var, gamma_x, bias, eps, activation, activation_param, out=x)
            var = running_var.detach().numpy().astype(np.float64)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.gamma, ctx.beta, ctx.inv_std = gamma, float64_vector(bias, channels, 0.0), inv_std(var, eps)
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
        sum_g, sum_g_zc = kernels.grad_sums_from_output(dy, y, beta, ctx.activation, ctx.activation_param)
        dgamma = sum_g_zc / gamma  # sum(g * x_hat), x_hat = (z - beta) / gamma
        dx = None
        if ctx.needs_input_grad[0]:
            count = y.numel() // max(y.shape[1], 1)
            k_dy, _, k_0 = input_grad_coefficients(sum_g, sum_g_zc, inv_std, gamma, count, ctx.batch_stats)
            # k_x multiplies (x - mean) = (z - beta) / (gamma * inv_std)
            k_z = -inv_std * dgamma / max(count, 1) if ctx.batch_stats else np.zeros_like(gamma)
            dx = kernels.grad_input_from_output(dy, y, beta, ctx.activation, ctx.activation_param, k_dy, k_z, k_0)
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
