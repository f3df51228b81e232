"""Drop-in `BatchNorm1d/2d/3d`: torch's modules with this package's forward and backward passes."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import functional

__all__ = ["BatchNormMixin", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class BatchNormMixin:
    """The forward pass shared by this package's batch-norm modules (mixed into torch's `_BatchNorm`).

    Subclasses set `_input_shapes` (accepted input ranks and their shape names). Everything torch's module
    owns stays torch's: constructor, parameters, buffers, `state_dict` keys, `_version`, `reset_*`, repr.

    Variant keywords (keyword-only, after torch's signature; plain attributes, not in the `state_dict`; at their
    defaults the layer is exactly torch's; the logic is `batchnorm.nn.variants.batch_norm_forward`):
        virtual_batch_size: None. Ghost batch norm (Hoffer et al. 2017, arXiv 1705.08741): in training, each
            consecutive chunk of that many samples (>= 2) is normalized with its own statistics; the last chunk
            holds the remainder (merged into the one before if it would hold a single value per channel). The
            running statistics are updated once per forward with the mean of all values and the pooled
            within-chunk unbiased variance sum_k n_k var_k / (n - K). Inference is unchanged.
        freeze_stats: False. True normalizes with the running statistics in training too and never updates
            them (nor `num_batches_tracked`); it is an attribute, so it survives `model.train()`. Gradients
            still reach gamma and beta unless their `requires_grad` is off.
        skip_nonfinite: False. True: a training batch whose statistics are not all finite leaves
            `running_mean`, `running_var` and `num_batches_tracked` unchanged, with one warning per layer
            (the output is still computed from that batch).
    """

    _input_shapes: dict[int, str] = {}

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 virtual_batch_size=None, freeze_stats: bool = False, skip_nonfinite: bool = False,
                 **kwargs) -> None:
        if not bias:  # torch's keyword, passed only when used (older torch versions lack it)
            kwargs["bias"] = bias
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **kwargs)
        from .variants import check_variant_options

        self.virtual_batch_size = check_variant_options(type(self).__name__, virtual_batch_size, freeze_stats,
                                                        skip_nonfinite, track_running_stats)
        self.freeze_stats = freeze_stats
        self.skip_nonfinite = skip_nonfinite

    def extra_repr(self) -> str:
        text = super().extra_repr()
        for name, default in (("virtual_batch_size", None), ("freeze_stats", False), ("skip_nonfinite", False)):
            value = getattr(self, name, default)
            if value != default:
                text += f", {name}={value}"
        return text

    def _check_input_dim(self, input: Tensor) -> None:
        name = type(self).__name__
        if input.dim() not in self._input_shapes:
            expected = " or ".join(self._input_shapes.values())
            raise ValueError(f"{name} expected input of shape {expected}, got a {input.dim()}-D input of shape "
                             f"{tuple(input.shape)}")
        if input.shape[1] != self.num_features:
            shape = self._input_shapes[input.dim()].replace("C", f"C={self.num_features}", 1)
            raise ValueError(f"{name} expected input of shape {shape}, got {tuple(input.shape)}: num_features="
                             f"{self.num_features} does not match the channel dimension {input.shape[1]}; "
                             f"use {name}({input.shape[1]}) or check the layer before it")

    def _averaging_factor(self) -> float:
        """The weight of the current batch in the running average; counts the batch as torch does."""
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                return 1.0 / float(self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def _uses_batch_stats(self) -> bool:
        """Batch statistics in training, and in eval when there are no running buffers (as in torch)."""
        return self.training or (self.running_mean is None and self.running_var is None)

    def _buffers_to_update(self):
        """Running buffers that this forward reads or updates (None when they must be left alone)."""
        if not self.training or self.track_running_stats:
            return self.running_mean, self.running_var
        return None, None

    def _variant_in_use(self) -> bool:
        """True when a variant keyword changes this training forward (they never change inference)."""
        return self.training and (getattr(self, "virtual_batch_size", None) is not None
                                  or getattr(self, "freeze_stats", False) or getattr(self, "skip_nonfinite", False))

    def forward(self, input: Tensor) -> Tensor:
        return self._forward(input, None)

    def _forward(self, input: Tensor, mask) -> Tensor:
        self._check_input_dim(input)
        if mask is not None or self._variant_in_use():
            from .variants import batch_norm_forward

            return batch_norm_forward(self, input, mask)
        factor = self._averaging_factor()
        running_mean, running_var = self._buffers_to_update()
        return functional.batch_norm(input, running_mean, running_var, self.weight, self.bias,
                                     self._uses_batch_stats(), factor, self.eps, **self._activation_kwargs())

    def _activation_kwargs(self) -> dict:
        """Keyword arguments naming the activation fused into the transform (none for plain batch norm)."""
        return {}


class BatchNorm1d(BatchNormMixin, torch.nn.BatchNorm1d):
    r"""Batch normalization over a 2-D or 3-D input (N, C) or (N, C, L); a drop-in for `torch.nn.BatchNorm1d`.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics per channel over N (and L). Training normalizes with the biased batch variance and stores the
    unbiased one in ``running_var``: running <- (1 - momentum) running + momentum batch. Evaluation uses the
    running statistics. Same constructor, parameters, buffers and ``state_dict`` as torch's, so checkpoints
    interchange. CPU float32/float64 inputs run on this package's kernels; other devices and dtypes on torch's.
    ``forward(input, mask=None)`` also takes a padding mask, (N,) or (N, L), bool, True at valid positions: the
    statistics (and running updates) then use the valid positions only, and padded positions output 0.

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
        input: (N, C) or (N, C, L).
        output: the same as the input.

    Raises:
        ValueError: an invalid variant keyword (at construction); an input of another rank or channel count, or a
            training batch with a single value per channel (in forward).

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchNorm1d
        >>> x = torch.randn(8, 16)
        >>> ours, theirs = BatchNorm1d(16), torch.nn.BatchNorm1d(16)
        >>> torch.allclose(ours(x), theirs(x), atol=1e-5)
        True
        >>> torch.allclose(ours.running_var, theirs.running_var, atol=1e-6)
        True

    References:
        Ioffe & Szegedy 2015, "Batch Normalization", arXiv 1502.03167.
    """

    _input_shapes = {2: "(N, C)", 3: "(N, C, L)"}

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Normalize input (N, C) or (N, C, L); `mask` (N,) or (N, L), bool, True at valid positions.

        With a mask, the statistics (and the running updates) use the valid positions only; padded positions
        output 0 and pass no gradient back to the input. In inference (running statistics) padded positions
        output 0 as well.
        """
        return self._forward(input, mask)


class BatchNorm2d(BatchNormMixin, torch.nn.BatchNorm2d):
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


class BatchNorm3d(BatchNormMixin, torch.nn.BatchNorm3d):
    r"""Batch normalization over a 5-D input (N, C, D, H, W); a drop-in for `torch.nn.BatchNorm3d`.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics per channel over N, D, H, W. Training normalizes with the biased batch variance and stores the
    unbiased one in ``running_var``: running <- (1 - momentum) running + momentum batch. Evaluation uses the
    running statistics. Same constructor, parameters, buffers and ``state_dict`` as torch's, so checkpoints
    interchange. CPU float32/float64 inputs run on this package's kernels; other devices and dtypes on torch's.

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
        input: (N, C, D, H, W).
        output: the same as the input.

    Raises:
        ValueError: an invalid variant keyword (at construction); an input of another rank or channel count, or a
            training batch with a single value per channel (in forward).

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchNorm3d
        >>> x = torch.randn(2, 16, 4, 6, 6)
        >>> ours, theirs = BatchNorm3d(16), torch.nn.BatchNorm3d(16)
        >>> torch.allclose(ours(x), theirs(x), atol=1e-5)
        True
        >>> torch.allclose(ours.running_var, theirs.running_var, atol=1e-6)
        True

    References:
        Ioffe & Szegedy 2015, "Batch Normalization", arXiv 1502.03167.
    """

    _input_shapes = {5: "(N, C, D, H, W)"}
