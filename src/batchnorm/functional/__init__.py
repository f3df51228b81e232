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

Modules: `batch_norm` (the function, its eager path and the transform's custom ops), `add_act`,
`inplace_abn`, and the shared `_transform` (through the kernels), `_checks` (routing and argument checks),
`_autograd` (higher-order derivatives in torch ops); the per-channel algebra is `batchnorm.kernels.algebra`.
"""

from __future__ import annotations

from ._autograd import backward_needs_torch, differentiable_grads, torch_activation, torch_transform
from ._checks import (ArgumentShapeError, BatchNormArgumentError, UnsupportedDtypeError, check_batch_size,
                      check_per_channel_sizes, check_running_not_differentiable, needs_torch_math, uses_own_kernels)
from .add_act import batch_norm_add_act
from .batch_norm import batch_norm, update_running_stats
from .inplace_abn import check_overwritable, effective_weight, inplace_abn

__all__ = ["batch_norm", "uses_own_kernels", "needs_torch_math", "check_batch_size", "update_running_stats",
           "BatchNormArgumentError", "ArgumentShapeError", "UnsupportedDtypeError", "check_per_channel_sizes",
           "check_running_not_differentiable", "torch_transform"]
