"""Argument checks, routing (our kernels or torch's) and the errors of the functional API."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad as _forward_ad

from ..kernels.activations import check_activation


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


for _error in (BatchNormArgumentError, ArgumentShapeError, UnsupportedDtypeError):
    _error.__module__ = "batchnorm.functional"  # where users import them from (tracebacks, pickling)


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


def _checked_activation(owner: str, activation: str, activation_param: Optional[float],
                        invertible: bool = False) -> float:
    """The activation's parameter (its default filled in) after `batchnorm.nn.check_activation`'s checks:
    a ValueError/TypeError naming the activation and what is allowed, never a KeyError from the kernels."""
    return check_activation(owner, activation, activation_param, invertible)
