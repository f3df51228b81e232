"""Higher-order autograd: backward passes recomputed in differentiable torch ops, and torch's activations."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


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
