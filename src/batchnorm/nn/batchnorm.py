"""Drop-in `BatchNorm1d/2d/3d`: torch's modules with this package's forward and backward passes."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._base import BatchNormBase, BatchNormMixin

__all__ = ["BatchNormBase", "BatchNormMixin", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class BatchNorm1d(BatchNormBase, torch.nn.BatchNorm1d):
    r"""Batch normalization over a 2-D or 3-D input (N, C) or (N, C, L); a drop-in for `torch.nn.BatchNorm1d`.

    ``forward(input, mask=None)`` also takes a padding mask, (N,) or (N, L), bool, True at valid positions: the
    statistics (and running updates) then use the valid positions only, and padded positions output 0.

    As `BatchNorm2d` for (N, C) and (N, C, L) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchNorm1d
        >>> x = torch.randn(8, 16)
        >>> ours, theirs = BatchNorm1d(16), torch.nn.BatchNorm1d(16)
        >>> torch.allclose(ours(x), theirs(x), atol=1e-5)
        True
        >>> torch.allclose(ours.running_var, theirs.running_var, atol=1e-6)
        True
    """

    _input_shapes = {2: "(N, C)", 3: "(N, C, L)"}
    _scripted_as = torch.nn.BatchNorm1d  # what `torch.jit.script` compiles (not for subclasses)

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Normalize input (N, C) or (N, C, L); `mask` (N,) or (N, L), bool, True at valid positions.

        With a mask, the statistics (and the running updates) use the valid positions only; padded positions
        output 0 and pass no gradient back to the input. In inference (running statistics) padded positions
        output 0 as well.
        """
        return self._forward(input, mask)


class BatchNorm2d(BatchNormBase, torch.nn.BatchNorm2d):
    r"""Batch normalization over a 4-D input (N, C, H, W); a drop-in for `torch.nn.BatchNorm2d`.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics per channel over N, H, W. Training normalizes with the biased batch variance and stores the
    unbiased one in ``running_var``: running <- (1 - momentum) running + momentum batch. Evaluation uses the
    running statistics. Same constructor, parameters, buffers and ``state_dict`` as torch's, so checkpoints
    interchange. CPU float32/float64 inputs run on this package's kernels; other devices and dtypes on torch's.
    A channels_last input gives a channels_last output.

    Args:
        num_features: C, the number of channels.
        eps: 1e-5; added to the variance inside the square root.
        momentum: 0.1; weight of the new batch in the running averages (None: cumulative average).
        affine: True; learnable per-channel gamma (``weight``) and beta (``bias``).
        track_running_stats: True; keep ``running_mean``, ``running_var`` and ``num_batches_tracked`` (False:
            batch statistics in evaluation too).
        device: None; factory argument.
        dtype: None; factory argument.
        bias: True (keyword only); False keeps gamma without beta.
        virtual_batch_size: None (keyword only); ghost batch norm: in training each chunk of that many samples
            (>= 2) is normalized with its own statistics (Hoffer et al. 2017, arXiv 1705.08741).
        freeze_stats: False (keyword only); True normalizes with the running statistics in training too and never
            updates them (an attribute, so it survives ``model.train()``).
        skip_nonfinite: False (keyword only); True leaves the running statistics unchanged, with one warning,
            after a training batch whose statistics are not all finite.

    Shape:
        input: (N, C, H, W).
        output: the same as the input.

    Raises:
        ValueError: an invalid variant keyword (at construction); an input of another rank or channel count, or a
            training batch with a single value per channel (in forward).

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchNorm2d
        >>> x = torch.randn(4, 16, 8, 8)
        >>> ours, theirs = BatchNorm2d(16), torch.nn.BatchNorm2d(16)
        >>> torch.allclose(ours(x), theirs(x), atol=1e-5)
        True
        >>> torch.allclose(ours.running_var, theirs.running_var, atol=1e-6)
        True

    References:
        Ioffe & Szegedy 2015, "Batch Normalization", arXiv 1502.03167.
    """

    _input_shapes = {4: "(N, C, H, W)"}
    _scripted_as = torch.nn.BatchNorm2d  # what `torch.jit.script` compiles (not for subclasses)


class BatchNorm3d(BatchNormBase, torch.nn.BatchNorm3d):
    r"""Batch normalization over a 5-D input (N, C, D, H, W); a drop-in for `torch.nn.BatchNorm3d`.

    As `BatchNorm2d` for (N, C, D, H, W) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchNorm3d
        >>> x = torch.randn(2, 16, 4, 6, 6)
        >>> ours, theirs = BatchNorm3d(16), torch.nn.BatchNorm3d(16)
        >>> torch.allclose(ours(x), theirs(x), atol=1e-5)
        True
        >>> torch.allclose(ours.running_var, theirs.running_var, atol=1e-6)
        True
    """

    _input_shapes = {5: "(N, C, D, H, W)"}
    _scripted_as = torch.nn.BatchNorm3d  # what `torch.jit.script` compiles (not for subclasses)


def _register_with_torch_fuser() -> None:
    """Make `torch.ao.quantization.fuse_modules` fuse (Conv, BN[, ReLU]) and (Linear, BN) with our BatchNorm as it
    does with torch's: the same fuser methods, keyed by our classes (in eval mode they fold the statistics into
    the convolution through `fuse_conv_bn_eval`). (BN, ReLU) pairs are left out: torch's fused BNReLU modules
    accept only torch's own BatchNorm class; QAT fusion in training mode refuses our class the same way."""
    try:
        from torch.ao.quantization import fuser_method_mappings as mappings
        table = mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD
    except (ImportError, AttributeError):  # a torch without the quantization fuser: nothing to register
        return
    ours = {torch.nn.BatchNorm1d: BatchNorm1d, torch.nn.BatchNorm2d: BatchNorm2d, torch.nn.BatchNorm3d: BatchNorm3d}
    for key, method in list(table.items()):
        if len(key) >= 2 and key[0] not in ours and key[1] in ours:
            table.setdefault((key[0], ours[key[1]]) + key[2:], method)


_register_with_torch_fuser()
