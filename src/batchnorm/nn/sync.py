"""`SyncBatchNorm`: batch norm whose training statistics are those of the global batch across processes (CPU and GPU).

Each rank computes its per-channel (count, mean, M2) with the shared statistics kernel, the moments are merged
exactly across the process group (`batchnorm.distributed.merge_moments`, Chan's formula: ranks with uneven or
empty batches take part), and the shared transform normalizes the local slice with the global statistics. The
backward reduces the two per-channel gradient sums across the group (one all_reduce) and feeds them, with the
global count, to the same input-gradient coefficients as single-process batch norm. Weight and bias gradients
stay local: `DistributedDataParallel` averages them, as with torch's SyncBatchNorm.

CPU float32/float64 inputs run on this package's Numba kernels over gloo. Every other device or dtype (CUDA over
NCCL, float16, bfloat16) runs the same algorithm with torch tensor ops; that path is tested on CPU (float64 and
bfloat16 over gloo) but there is no GPU in this project's test environment, so NCCL/CUDA is untested here.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .. import distributed, functional, kernels
from ..kernels.algebra import input_grad_coefficients
from ._base import BatchNormBase
from ._checks import check_input_dtype, check_training_eps
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


# ------------------------------------------------------------------------- per-rank primitives, two backends
def _uses_own_kernels(x: Tensor) -> bool:
    """CPU float32/float64 run on the Numba kernels; everything else on torch ops (same algorithm)."""
    return functional.uses_own_kernels(x)


def _reduce_dims(x: Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _compute_dtype(x: Tensor) -> torch.dtype:
    """Elementwise work of the torch path: float64 stays float64, everything else runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _channel_view(v: Tensor, x: Tensor) -> Tensor:
    """A per-channel (C,) vector shaped to broadcast against x = (N, C, *spatial)."""
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


def _local_moments(x: Tensor, own_kernels: bool) -> tuple[Tensor, Tensor]:
    """This rank's per-channel mean and M2 (float64, on x's device); zeros for an empty batch."""
    channels = x.shape[1]
    if x.numel() == 0:
        zeros = torch.zeros(channels, dtype=torch.float64, device=x.device)
        return zeros, zeros.clone()
    count = x.numel() // channels
    if own_kernels:
        mean, var = kernels.batch_stats(x)
        return torch.from_numpy(mean), torch.from_numpy(var * count)
    var, mean = torch.var_mean(x.to(torch.float64), dim=_reduce_dims(x), correction=0)
    return mean, var * count


def _transform(x: Tensor, mean: Tensor, inv_std: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
               own_kernels: bool) -> Tensor:
    """y = (x - mean) * inv_std * weight + bias: the shared transform (kernels) or its torch-ops twin."""
    channels = x.shape[1]
    gamma = torch.ones_like(mean) if weight is None else weight.detach().to(torch.float64)
    beta = torch.zeros_like(mean) if bias is None else bias.detach().to(torch.float64)
    scale = inv_std * gamma
    if own_kernels:
        return kernels.affine(x, mean.numpy(), scale.numpy(), beta.numpy().reshape(channels))
    dtype = _compute_dtype(x)
    y = (x.to(dtype) - _channel_view(mean.to(dtype), x)) * _channel_view(scale.to(dtype), x) \
        + _channel_view(beta.to(dtype), x)
    return y.to(x.dtype)


def _grad_sums(dy: Tensor, x: Tensor, mean: Tensor, own_kernels: bool) -> tuple[Tensor, Tensor]:
    """sum(dy)_c and sum(dy * (x - mean_c))_c over this rank's values, float64 on x's device."""
    if own_kernels:
        sum_dy, sum_dy_xc = kernels.grad_sums(dy, x, mean.numpy())
        return torch.from_numpy(sum_dy), torch.from_numpy(sum_dy_xc)
    dims = _reduce_dims(x)
    dy64 = dy.to(torch.float64)
    return dy64.sum(dims), (dy64 * (x.to(torch.float64) - _channel_view(mean, x))).sum(dims)


def _grad_input(dy: Tensor, x: Tensor, mean: Tensor, k_dy: np.ndarray, k_x: np.ndarray, k_0: np.ndarray,
                own_kernels: bool) -> Tensor:
    """dx = k_dy * dy + k_x * (x - mean) + k_0 per channel."""
    if own_kernels:
        return kernels.grad_input(dy, x, mean.numpy(), k_dy, k_x, k_0)
    dtype = _compute_dtype(x)

    def vec(v):
        return _channel_view(torch.as_tensor(v).to(device=x.device, dtype=dtype), x)

    dx = vec(k_dy) * dy.to(dtype) + vec(k_x) * (x.to(dtype) - vec(mean)) + vec(k_0)
    return dx.to(x.dtype)


# ------------------------------------------------------------------------------------------ autograd
class _SyncBatchNormFunction(torch.autograd.Function):
    """Training forward/backward of SyncBatchNorm; every rank of the group must call it (empty batches too)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group, name):
        own_kernels = _uses_own_kernels(x)
        channels = x.shape[1]
        local_count = x.numel() // channels if channels else 0
        mean, m2 = _local_moments(x, own_kernels)
        count = torch.tensor(float(local_count), dtype=torch.float64, device=mean.device)
        count, mean, m2 = distributed.merge_moments(count, mean, m2, group)
        total = int(round(count.item()))
        if total == 1:
            raise ValueError(f"{name} expected more than 1 value per channel across the process group when "
                             f"training, got {total} in total (this rank's input has shape {tuple(x.shape)}): "
                             f"the batch variance is undefined. Use larger batches, or call model.eval() to "
                             f"normalize with the running statistics")
        var = (m2 / max(total, 1)).clamp_min(0.0)   # an empty global batch: empty output, buffers unchanged
        functional.update_running_stats(running_mean, running_var, mean, var, total, momentum)
        inv_std = 1.0 / torch.sqrt(var + eps)
        if own_kernels:
            mean, inv_std = mean.cpu(), inv_std.cpu()
        y = _transform(x, mean, inv_std, weight, bias, own_kernels)
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.total, ctx.group, ctx.own_kernels = total, group, own_kernels
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "SyncBatchNorm cannot be differentiated twice (backward with create_graph=True): its gradient "
                "reduces sums across processes outside autograd. For double backward on one process use "
                "batchnorm.nn.BatchNorm1d/2d/3d (the same state_dict), whose gradients are differentiable")
        x, weight, mean, inv_std = ctx.saved_tensors
        own_kernels = ctx.own_kernels
        if dy is None:
            dy = torch.zeros_like(x)
        sum_dy, sum_dy_xc = _grad_sums(dy, x, mean, own_kernels)
        dx = None
        if ctx.needs_input_grad[0]:
            global_sums = distributed.all_reduce_sum(torch.stack([sum_dy, sum_dy_xc]), ctx.group)
            gamma = np.ones(x.shape[1]) if weight is None else weight.detach().to(torch.float64).cpu().numpy()
            k_dy, k_x, k_0 = input_grad_coefficients(
                global_sums[0].cpu().numpy(), global_sums[1].cpu().numpy(), inv_std.cpu().numpy(), gamma,
                ctx.total, True)
            dx = _grad_input(dy, x, mean, k_dy, k_x, k_0, own_kernels)
        dweight = dbias = None
        if ctx.has_weight and ctx.needs_input_grad[1]:
            dweight = (sum_dy_xc * inv_std.to(sum_dy_xc.device)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = sum_dy.to(dy.dtype if weight is None else weight.dtype)
        return dx, dweight, dbias, None, None, None, None, None, None


# ------------------------------------------------------------------------------------------- modules
_UNCHECKED = object()   # SyncBatchNorm._checked_group before the channel counts were compared across ranks

class SyncBatchNorm(BatchNormBase, _BatchNorm):
    r"""Batch normalization with statistics over the global batch of a process group; drop-in for torch's.

    .. math:: y = \frac{x - \mathrm{E}_{global}[x]}{\sqrt{\mathrm{Var}_{global}[x] + \epsilon}} \gamma + \beta

    In training, when torch.distributed is initialized and the group has more than one rank, the mean and biased
    variance are those of the concatenation of all ranks' batches, merged exactly from each rank's (count, mean,
    M2) with Chan's formula; ranks may hold different batch sizes, including 0 (when all are empty, the outputs are
    empty and the running statistics unchanged, as for BatchNorm). `running_var` stores the unbiased
    global variance N/(N-1) var. The backward all-reduces sum(dy) and sum(dy (x - mean)) per channel, so input
    gradients are those of single-process batch norm over the global batch; weight and bias gradients are the
    local ones (DistributedDataParallel averages them, as for torch's SyncBatchNorm). Every rank must run the
    forward and the backward (a rank without data passes an empty batch). In eval mode, and when not
    distributed, it is this package's BatchNorm. Unlike torch's SyncBatchNorm it runs on CPU (gloo). It subclasses
    torch's `_BatchNorm` (like this package's BatchNorm) but not `torch.nn.SyncBatchNorm`: DistributedDataParallel
    refuses instances of torch's class on CPU.

    Args:
        num_features: C, the number of channels.
        eps: 1e-5; added to the variance inside the square root.
        momentum: 0.1; weight of the new batch in the running averages (None: cumulative average).
        affine: True; learnable gamma and beta.
        track_running_stats: True; keep running statistics.
        process_group: None (WORLD) or a group from ``torch.distributed.new_group``.
        device: None; factory argument.
        dtype: None; factory argument.
        bias: True (keyword only); False keeps gamma without beta.

    Shape:
        input: (N, C, ``*``) with any number of trailing dimensions; N may be 0 on some ranks.
        output: the same as the input.

    Raises:
        ValueError: an input with fewer than 2 dimensions or another channel count, a single value per channel
            across the process group in training, or eps <= 0 in training.
        RuntimeError: a collective failed (another rank died, timed out or ran a different sequence of
            collectives).

    CPU float32/float64: Numba kernels. Other devices/dtypes (CUDA + NCCL, float16, bfloat16): the same algorithm
    with torch ops; CUDA is untested here (no GPU). State dicts interchange with torch's BatchNorm*/SyncBatchNorm.

    Example:
        In one process it is exactly batch norm; under ``torchrun --nproc_per_node=2`` (after
        ``torch.distributed.init_process_group("gloo")``) wrap the converted model in DistributedDataParallel.

        >>> import torch
        >>> from batchnorm.nn import SyncBatchNorm
        >>> layer, reference = SyncBatchNorm(16), torch.nn.BatchNorm2d(16)
        >>> x = torch.randn(4, 16, 8, 8)
        >>> torch.allclose(layer(x), reference(x), atol=1e-5)
        True

    References:
        Ioffe & Szegedy 2015, arXiv 1502.03167; cross-GPU batch norm: Peng et al. 2018, MegDet, arXiv 1711.07240.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None, *,
                 bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype,
                         bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if isinstance(input, torch.fx.Proxy):
            return
        name = type(self).__name__
        if input.dim() < 2:
            raise ValueError(f"{name} expected input of shape (N, C, *) with at least 2 dimensions, got a "
                             f"{input.dim()}-D input of shape {tuple(input.shape)}")
        if not input.dtype.is_floating_point:
            check_input_dtype(name, input)
        if input.shape[1] != self.num_features:
            raise functional.ArgumentShapeError(f"{name} expected input of shape (N, C={self.num_features}, *), got "
                             f"{tuple(input.shape)}: num_features={self.num_features} does not match the channel "
                             f"dimension {input.shape[1]}; use {name}({input.shape[1]}) or check the layer "
                             f"before it")

    def _syncs(self) -> bool:
        """True when this training forward merges statistics across the process group (not with frozen stats)."""
        return self.training and not self.freeze_stats and distributed.is_active(self.process_group)

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy) or not self._syncs():
            return super().forward(input)
        self._check_input_dim(input)
        check_training_eps(type(self).__name__, self.eps)
        if getattr(self, "_checked_group", _UNCHECKED) is not self.process_group:
            # once per layer: ranks with different channel counts get a ValueError (gloo would abort on them)
            distributed.check_same_channels(self.num_features, self.process_group, type(self).__name__)
            self._checked_group = self.process_group
        factor = self._averaging_factor()
        running_mean, running_var = self._buffers_to_update()
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean, running_var, self.eps,
                                            factor, self.process_group, type(self).__name__)

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group=None) -> torch.nn.Module:
        """See `convert_sync_batchnorm` (this package's converter, also reachable as torch's classmethod name)."""
        return convert_sync_batchnorm(module, process_group)


_CONVERTIBLE = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
                BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm)


_VARIANT_DEFAULTS = (("virtual_batch_size", None), ("freeze_stats", False), ("skip_nonfinite", False))


def _convertible(module: torch.nn.Module) -> bool:
    """A plain batch norm: one of the classes above, with none of this package's variant keywords switched on."""
    return type(module) in _CONVERTIBLE and all(getattr(module, name, default) == default
                                                for name, default in _VARIANT_DEFAULTS)


def _to_sync(bn: torch.nn.Module, process_group) -> SyncBatchNorm:
    sync = SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, process_group,
                         device="meta")
    with torch.no_grad():
        sync.weight, sync.bias = bn.weight, bn.bias           # the same Parameter objects (or None)
    sync.running_mean, sync.running_var = bn.running_mean, bn.running_var
    sync.num_batches_tracked = bn.num_batches_tracked
    sync.training = bn.training
    if hasattr(bn, "qconfig"):
        sync.qconfig = bn.qconfig
    return sync


def convert_sync_batchnorm(module: torch.nn.Module, process_group=None) -> torch.nn.Module:
    """Replace every BatchNorm1d/2d/3d and SyncBatchNorm (torch's or this package's) by this SyncBatchNorm.

    The new layers take over the same parameter and buffer tensors (no copy: values, devices, dtypes and
    `requires_grad` are kept) and the training flag. Other layers, including the other batch-norm variants of
    this package (renorm, fused activation, ...) and BatchNorm layers with a variant keyword switched on
    (`virtual_batch_size`, `freeze_stats`, `skip_nonfinite`), are left as they are because a plain SyncBatchNorm
    would change what they compute; a warning names those that still normalize with each process's own batch
    (frozen ones are left silently). A module that is itself a batch norm is returned converted;
    otherwise its children are converted in place and the module itself is returned.

    Args:
        module: the model (or a single batch-norm layer).
        process_group: None (WORLD) or the group the statistics are synchronized over.

    Returns:
        The converted module (the same object unless ``module`` is itself a batch norm).

    Raises:
        TypeError: ``module`` is not a ``torch.nn.Module``.

    Example:
        >>> import torch
        >>> from batchnorm.nn import convert_sync_batchnorm
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        >>> model = convert_sync_batchnorm(model)
        >>> type(model[1]).__name__
        'SyncBatchNorm'
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"convert_sync_batchnorm expected a torch.nn.Module, got {type(module).__name__}")
    left: list[str] = []
    converted = _convert(module, process_group, "", left)
    if left:
        warnings.warn(f"convert_sync_batchnorm left {len(left)} batch-norm layer(s) that normalize with batch "
                      f"statistics unsynchronized: {', '.join(left)}. They are variants that SyncBatchNorm would "
                      f"change; each process keeps normalizing them with its own batch", stacklevel=2)
    return converted


def _uses_own_batch(module: torch.nn.Module) -> bool:
    """A batch norm left unconverted that still normalizes with each process's batch (not a frozen one)."""
    return isinstance(module, _BatchNorm) and not getattr(module, "freeze_stats", False)


def _convert(module: torch.nn.Module, process_group, name: str, left: list[str]) -> torch.nn.Module:
    if _convertible(module):
        return _to_sync(module, process_group)
    if _uses_own_batch(module):
        left.append(f"'{name or '(the module itself)'}' ({type(module).__name__})")
    for child_name, child in module.named_children():
        converted = _convert(child, process_group, f"{name}.{child_name}" if name else child_name, left)
        if converted is not child:
            module.add_module(child_name, converted)
    return module
