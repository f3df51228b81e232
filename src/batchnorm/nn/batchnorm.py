"""Drop-in `BatchNorm1d/2d/3d`: torch's modules with this package's forward and backward passes."""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from .. import functional

__all__ = ["BatchNormMixin", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "check_eps_momentum", "check_input_dtype",
           "traced_as_leaf"]


def check_eps_momentum(where: str, eps, momentum, momentum_allowed: bool = True) -> None:
    """Raise ValueError for an eps that is not a finite number > 0, or a momentum outside [0, 1] (None allowed:
    the cumulative average). torch accepts both silently and then normalizes with NaN or drifting statistics."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0.0 < eps < math.inf):
        raise ValueError(f"{where} eps must be a finite number > 0 (it is added to the variance inside the square "
                         f"root), got eps={eps!r}: use eps=1e-5 (torch's default)")
    if not momentum_allowed or momentum is None:
        return
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not (0.0 <= momentum <= 1.0):
        raise ValueError(f"{where} momentum must be a number in [0, 1] (the weight of the new batch in the running "
                         f"average) or None (cumulative average), got momentum={momentum!r}: use momentum=0.1 "
                         f"(torch's default); a Keras/Flax decay of 0.99 is momentum=0.01")


def check_input_dtype(where: str, input: Tensor) -> None:
    """Raise UnsupportedDtypeError (a TypeError, and torch's NotImplementedError) for an integer, bool or complex
    input."""
    if not input.dtype.is_floating_point:
        raise functional.UnsupportedDtypeError(
            f"{where} expected a floating-point input (float32 or float64 on this package's kernels; float16 and "
            f"bfloat16 on torch's), got dtype {input.dtype}: convert it with input.float()")


def traced_as_leaf(module: torch.nn.Module, args: tuple):
    """Under `torch.fx` symbolic tracing (args[0] a Proxy): the Proxy of a `call_module` node for this layer, as
    torch's own BatchNorm modules appear in a traced graph (leaves); the GraphModule then calls this layer, so it
    keeps running on this package's kernels. None when not tracing, or when the layer is the traced root itself
    (its forward is then traced through torch's math)."""
    proxy = args[0]
    if not isinstance(proxy, torch.fx.Proxy):
        return None
    tracer = proxy.tracer
    if getattr(tracer, "root", None) is module:
        return None
    while args and args[-1] is None:  # optional trailing arguments left at their default
        args = args[:-1]
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})


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
        check_eps_momentum(type(self).__name__, eps, momentum)
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
        if isinstance(input, torch.fx.Proxy):  # symbolic tracing of torch's forward (the layer is the root)
            return
        name = type(self).__name__
        if input.dim() not in self._input_shapes:
            expected = " or ".join(self._input_shapes.values())
            raise ValueError(f"{name} expected input of shape {expected}, got a {input.dim()}-D input of shape "
                             f"{tuple(input.shape)}")
        if not input.dtype.is_floating_point:
            check_input_dtype(name, input)
        if input.shape[1] != self.num_features:
            shape = self._input_shapes[input.dim()].replace("C", f"C={self.num_features}", 1)
            raise functional.ArgumentShapeError(f"{name} expected input of shape {shape}, got {tuple(input.shape)}: num_features="
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
        if isinstance(input, torch.fx.Proxy):
            return self._traced_forward(input, mask)
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

    def _traced_forward(self, input, *extra):
        """The forward under torch.fx symbolic tracing: a leaf `call_module` node, or (the layer traced as the
        root) torch's own BatchNorm forward followed by the activation, traced op by op."""
        leaf = traced_as_leaf(self, (input,) + extra)
        if leaf is not None:
            return leaf
        if any(t is not None for t in extra) or self._variant_in_use():
            raise TypeError(f"torch.fx cannot trace {type(self).__name__} itself as the root module with a mask or a "
                            f"statistics variant keyword (its training statistics depend on the data): trace a "
                            f"model that contains it (it becomes a leaf call_module node), or use torch.compile")
        y = torch.nn.modules.batchnorm._BatchNorm.forward(self, input)
        kwargs = self._activation_kwargs()
        if kwargs:
            y = functional.torch_activation(y, kwargs["activation"], kwargs["activation_param"])
        return y

    def __prepare_scriptable__(self):
        """`torch.jit.script` compiles an equivalent torch module over the same parameters and buffers (no copy):
        torch's BatchNorm, or a scriptable BatchNorm + activation for the fused-activation layers."""
        from .scripting import scriptable_equivalent

        return scriptable_equivalent(self)


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
