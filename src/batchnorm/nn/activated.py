"""Batch norm fused with its activation: BatchNormAct, BatchNormAddAct (ResNet's BN + add + ReLU) and InPlaceABN.

All three subclass our BatchNorm (and so torch's), keep its parameters, buffers and `state_dict`, and differ from
it only in the activation handed to the shared transform.

Activations (`activation`, `activation_param`):
    "identity", "relu", "leaky_relu" (param = negative slope, default 0.01), "elu" (param = alpha, default 1.0),
    "silu", "gelu" (the exact erf form, torch's default `nn.GELU()`), "gelu_tanh" (the tanh approximation,
    `nn.GELU(approximate="tanh")`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import functional
from ..kernels.activations import check_activation
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["BatchNormAct1d", "BatchNormAct2d", "BatchNormAct3d", "BatchNormAddAct1d", "BatchNormAddAct2d",
           "BatchNormAddAct3d", "InPlaceABN1d", "InPlaceABN2d", "InPlaceABN3d", "check_activation"]


class _ActivationMixin:
    """Keeps the activation and hands it to the shared transform; everything else is our BatchNorm's."""

    _invertible_only = False
    _default_activation = "relu"
    _scriptable_activation = True  # `torch.jit.script` compiles BN + activation (scripting.py)

    def __init__(self, num_features: int, *args, activation: Optional[str] = None,
                 activation_param: Optional[float] = None, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self.activation = self._default_activation if activation is None else activation
        self.activation_param = check_activation(type(self).__name__, self.activation, activation_param,
                                                 self._invertible_only)

    def _activation_kwargs(self) -> dict:
        return {"activation": self.activation, "activation_param": self.activation_param}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}, activation_param={self.activation_param}"


class _AddActMixin(_ActivationMixin):
    """forward(x, residual) = act(BN(x) + residual), fused unless a statistics variant is in use."""

    _scriptable_activation = False

    def forward(self, input: Tensor, residual: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return self._traced_forward(input, residual)
        self._check_input_dim(input)
        if self._variant_in_use():
            normalized = self._forward_identity(input)
            return functional.torch_activation(normalized + residual, self.activation, self.activation_param)
        factor = self._averaging_factor()
        running_mean, running_var = self._buffers_to_update()
        return functional.batch_norm_add_act(input, residual, running_mean, running_var, self._own("weight"),
                                             self._own("bias"), self._uses_batch_stats(), factor, self.eps,
                                             **self._activation_kwargs())

    def _forward_identity(self, input: Tensor) -> Tensor:
        activation = self.activation
        try:
            self.activation = "identity"
            return self._forward(input, None)
        finally:
            self.activation = activation


class _InPlaceMixin(_ActivationMixin):
    """forward(x) overwrites x with act(BN(x)) and returns it (out of place with a statistics variant)."""

    _invertible_only = True
    _default_activation = "leaky_relu"
    _scriptable_activation = False

    def __init__(self, num_features: int, *args, min_abs_weight: float = 1e-5, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        if isinstance(min_abs_weight, bool) or not isinstance(min_abs_weight, (int, float)) or min_abs_weight <= 0:
            raise ValueError(f"{type(self).__name__} expected min_abs_weight > 0 (the smallest |gamma| used, so "
                             f"that the normalization can be inverted), got {min_abs_weight!r}")
        self.min_abs_weight = float(min_abs_weight)

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return self._traced_forward(input)
        self._check_input_dim(input)
        if self._variant_in_use():
            return self._forward(input, None)
        if torch.is_grad_enabled() and functional.uses_own_kernels(input):
            functional.check_overwritable(input, type(self).__name__)  # before the batch is counted
        factor = self._averaging_factor()
        running_mean, running_var = self._buffers_to_update()
        return functional.inplace_abn(input, running_mean, running_var, self.weight, self.bias,
                                      self._uses_batch_stats(), factor, self.eps, min_abs_weight=self.min_abs_weight,
                                      owner=type(self).__name__, **self._activation_kwargs())


class BatchNormAct1d(_ActivationMixin, BatchNorm1d):
    r"""Batch norm followed by an activation, fused into one pass forward and backward, over (N, C) or (N, C, L).

    As `BatchNormAct2d` for (N, C) and (N, C, L) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchNormAct1d
        >>> layer = BatchNormAct1d(16, activation="leaky_relu", activation_param=0.1)
        >>> x = torch.randn(8, 16)
        >>> unfused = torch.nn.functional.batch_norm(x, None, None, training=True)
        >>> torch.allclose(layer(x), torch.nn.functional.leaky_relu(unfused, 0.1), atol=1e-5)
        True
    """


class BatchNormAct2d(_ActivationMixin, BatchNorm2d):
    r"""Batch norm followed by an activation, fused into one pass forward and backward, over (N, C, H, W).

    .. math::
        y = \mathrm{act}\left(\frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta\right)

    Statistics exactly as in `BatchNorm2d` (batch in training, running in evaluation, and its variant keywords).
    The backward recomputes the pre-activation from x, so only x is saved, as for a plain batch norm, and the
    activation costs no extra pass over memory. A ``state_dict`` of a plain BatchNorm2d (ours or torch's) loads
    unchanged.

    Args:
        num_features: C, the number of channels. The other arguments of `BatchNorm2d` (eps, momentum, affine,
            track_running_stats, device, dtype; keyword only bias, virtual_batch_size, freeze_stats,
            skip_nonfinite) are taken as there, with the same defaults.
        activation: "relu" (keyword only); one of "identity", "relu", "leaky_relu", "elu", "silu", "gelu" (exact
            erf form) or "gelu_tanh".
        activation_param: None (keyword only); the slope of leaky_relu (default 0.01) or the alpha of elu
            (default 1.0).

    Shape:
        input: (N, C, H, W).
        output: the same as the input.

    Raises:
        ValueError: an unknown activation or a bad activation_param; see also `BatchNorm2d`.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchNormAct2d
        >>> layer = BatchNormAct2d(16, activation="leaky_relu", activation_param=0.1)
        >>> x = torch.randn(4, 16, 8, 8)
        >>> unfused = torch.nn.functional.batch_norm(x, None, None, training=True)
        >>> torch.allclose(layer(x), torch.nn.functional.leaky_relu(unfused, 0.1), atol=1e-5)
        True
    """


class BatchNormAct3d(_ActivationMixin, BatchNorm3d):
    r"""Batch norm followed by an activation, fused into one pass forward and backward, over (N, C, D, H, W).

    As `BatchNormAct2d` for (N, C, D, H, W) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchNormAct3d
        >>> layer = BatchNormAct3d(16, activation="leaky_relu", activation_param=0.1)
        >>> x = torch.randn(2, 16, 4, 6, 6)
        >>> unfused = torch.nn.functional.batch_norm(x, None, None, training=True)
        >>> torch.allclose(layer(x), torch.nn.functional.leaky_relu(unfused, 0.1), atol=1e-5)
        True
    """


class BatchNormAddAct1d(_AddActMixin, BatchNorm1d):
    r"""Batch norm, residual add and activation in one pass (ResNet\'s BN + add + ReLU), over (N, C) or (N, C, L).

    As `BatchNormAddAct2d` for (N, C) and (N, C, L) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchNormAddAct1d
        >>> layer = BatchNormAddAct1d(16)
        >>> x, shortcut = torch.randn(8, 16), torch.randn(8, 16)
        >>> unfused = torch.nn.functional.batch_norm(x, None, None, training=True)
        >>> torch.allclose(layer(x, shortcut), torch.relu(unfused + shortcut), atol=1e-5)
        True
    """


class BatchNormAddAct2d(_AddActMixin, BatchNorm2d):
    r"""Batch norm, residual add and activation in one pass (ResNet\'s BN + add + ReLU), over (N, C, H, W).

    .. math:: y = \mathrm{act}(\mathrm{BN}(x) + \mathrm{residual})

    ``forward(x, residual)`` with ``residual`` of x's shape. The residual's gradient is g = dy * act'(z) and x's
    is batch norm's backward of g; x and residual are saved (no intermediate tensor). With a statistics variant
    keyword in use (e.g. ``virtual_batch_size``), the same values are computed unfused.

    Args:
        num_features: C, the number of channels; the other arguments, the activation's included, are those of
            `BatchNormAct2d` with the same defaults.

    Shape:
        input: (N, C, H, W).
        residual: the same as the input.
        output: the same as the input.

    Raises:
        ValueError: an unknown activation or a bad activation_param; see also `BatchNorm2d`.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchNormAddAct2d
        >>> layer = BatchNormAddAct2d(16)
        >>> x, shortcut = torch.randn(4, 16, 8, 8), torch.randn(4, 16, 8, 8)
        >>> unfused = torch.nn.functional.batch_norm(x, None, None, training=True)
        >>> torch.allclose(layer(x, shortcut), torch.relu(unfused + shortcut), atol=1e-5)
        True
    """


class BatchNormAddAct3d(_AddActMixin, BatchNorm3d):
    r"""Batch norm, residual add and activation in one pass (ResNet\'s BN + add + ReLU), over (N, C, D, H, W).

    As `BatchNormAddAct2d` for (N, C, D, H, W) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BatchNormAddAct3d
        >>> layer = BatchNormAddAct3d(16)
        >>> x, shortcut = torch.randn(2, 16, 4, 6, 6), torch.randn(2, 16, 4, 6, 6)
        >>> unfused = torch.nn.functional.batch_norm(x, None, None, training=True)
        >>> torch.allclose(layer(x, shortcut), torch.relu(unfused + shortcut), atol=1e-5)
        True
    """


class InPlaceABN1d(_InPlaceMixin, BatchNorm1d):
    r"""In-place activated batch norm over (N, C) or (N, C, L): one saved tensor per block instead of two.

    As `InPlaceABN2d` for (N, C) and (N, C, L) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import InPlaceABN1d
        >>> layer, before = InPlaceABN1d(16), torch.nn.Linear(4, 16)
        >>> h = before(torch.randn(8, 4))
        >>> y = layer(h)                  # h is overwritten with the output
        >>> y.data_ptr() == h.data_ptr()
        True
        >>> y.sum().backward()            # the backward recovers what it needs from y
        >>> before.weight.grad.shape
        torch.Size([16, 4])
    """


class InPlaceABN2d(_InPlaceMixin, BatchNorm2d):
    r"""In-place activated batch norm over (N, C, H, W): one saved tensor per block instead of two.

    .. math::
        y = \mathrm{act}\left(\frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta\right)

    ``forward(x)`` overwrites x with y and returns it; only y is saved, and the backward inverts the activation
    (z = act^-1(y)) and the affine map (x_hat = (z - beta) / gamma) to recover what batch norm's backward needs.
    gamma is used as ``sign(gamma) * max(|gamma|, min_abs_weight)`` (a gamma of exactly 0 would make x_hat
    unrecoverable), with gamma's gradient passed straight through. Under ``torch.compile``, with a variant
    keyword, or on other devices and dtypes it computes the same values out of place.

    Args:
        num_features: C, the number of channels. The other arguments of `BatchNorm2d` (eps, momentum, affine,
            track_running_stats, device, dtype; keyword only bias, virtual_batch_size, freeze_stats,
            skip_nonfinite) are taken as there, with the same defaults.
        activation: "leaky_relu" (keyword only); one of the invertible "leaky_relu", "elu" or "identity".
        activation_param: None (keyword only); the slope of leaky_relu (default 0.01) or the alpha of elu
            (default 1.0); must be > 0.
        min_abs_weight: 1e-5 (keyword only); the smallest ``|gamma|`` used.

    Shape:
        input: (N, C, H, W).
        output: the input tensor itself, overwritten.

    Raises:
        ValueError: an activation that cannot be inverted (relu, silu, gelu), ``min_abs_weight <= 0``, or an input
            it must not overwrite: a leaf tensor that requires grad, a tensor that the operation producing it
            saved for its backward (e.g. the output of sigmoid), a non-dense view. If a later operation saved the
            input before this layer overwrote it, torch's version check raises at backward time.

    Example:
        >>> import torch
        >>> from batchnorm.nn import InPlaceABN2d
        >>> layer, before = InPlaceABN2d(16), torch.nn.Conv2d(3, 16, 3, padding=1)
        >>> h = before(torch.randn(4, 3, 8, 8))
        >>> y = layer(h)                  # h is overwritten with the output
        >>> y.data_ptr() == h.data_ptr()
        True
        >>> y.sum().backward()            # the backward recovers what it needs from y
        >>> before.weight.grad.shape
        torch.Size([16, 3, 3, 3])

    References:
        Rota Bulo, Porzi & Kontschieder 2018, "In-Place Activated BatchNorm for Memory-Optimized Training of
        DNNs", arXiv 1712.02616.
    """


class InPlaceABN3d(_InPlaceMixin, BatchNorm3d):
    r"""In-place activated batch norm over (N, C, D, H, W): one saved tensor per block instead of two.

    As `InPlaceABN2d` for (N, C, D, H, W) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import InPlaceABN3d
        >>> layer, before = InPlaceABN3d(16), torch.nn.Conv3d(3, 16, 3, padding=1)
        >>> h = before(torch.randn(2, 3, 4, 6, 6))
        >>> y = layer(h)                  # h is overwritten with the output
        >>> y.data_ptr() == h.data_ptr()
        True
        >>> y.sum().backward()            # the backward recovers what it needs from y
        >>> before.weight.grad.shape
        torch.Size([16, 3, 3, 3, 3])
    """
