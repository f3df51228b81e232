"""The Numba CPU kernels behind every layer, and their torch-facing entry points (this module re-exports them).

  dispatch      layout, outputs, per-channel views and thread decisions (torch tensors -> kernel arrays)
  batch_norm    entry points of BN and BN + activation: the four primitives and the whole-pass kernels
  add_act       entry points of BN + add + activation
  inplace_abn   entry points of the in-place activated BN backward (from the output)
  numba/        the jitted code, one module per family
  activations   the activation codes and their elementwise functions, fused into every kernel
  config        compilation flags, routing thresholds and every environment variable of the package
  pool          the output pool: dead outputs of the kernels serve the next ones of the same size
  _cache        clears stale cached machine code before the kernels compile

Only CPU float32/float64 tensors reach these functions; `batchnorm.functional` routes everything else to torch.
"""

from __future__ import annotations

from ._cache import clear_stale_kernel_cache

clear_stale_kernel_cache()  # before any kernel module compiles or loads from the cache

from . import config, pool  # noqa: E402
from .add_act import affine_add_act, grad_add_act  # noqa: E402
from .batch_norm import (affine, batch_stats, grad_input, grad_sums, normalize, train_backward,  # noqa: E402
                         train_forward)
from .dispatch import empty_output_like, is_channels_last, new_output_like, numpy_dtype  # noqa: E402
from .inplace_abn import grad_input_from_output, grad_sums_from_output  # noqa: E402

__all__ = ["is_channels_last", "empty_output_like", "new_output_like", "numpy_dtype", "batch_stats", "affine",
           "grad_sums", "grad_input", "train_forward", "normalize", "train_backward", "affine_add_act",
           "grad_add_act", "grad_sums_from_output", "grad_input_from_output", "config", "pool"]
