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
from ..kernels.activations import ACTIVATIONS, INVERTIBLE
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["BatchNormAct1d", "BatchNormAct2d", "BatchNormAct3d", "BatchNormAddAct1d", "BatchNormAddAct2d",
           "BatchNormAddAct3d", "InPlaceABN1d", "InPlaceABN2d", "InPlaceABN3d", "check_activation"]

_DEFAULT_PARAM = {"leaky_relu": 0.01, "elu": 1.0}


def check_activation(owner: str, activation: str, activation_param: Optional[float],
                     invertible: bool = False) -> float:
    """Validate an activation name and parameter; returns the parameter with its default filled in."""
    allowed = INVERTIBLE if invertible else tuple(ACTIVATIONS)
    if not isinstance(activation, str) or activation not in allowed:
        why = (" (the in-place backward recovers the activation's input from its output, so the activation must "
               "be invertible; relu, silu and gelu lose information)" if invertible and activation in ACTIVATIONS
               else "")
        raise ValueError(f"{owner} got activation={activation!r}; expected one of {', '.join(allowed)}{why}")
    param = _DEFAULT_PARAM.get(activation, 0.0) if activation_param is None else activation_param
    if isinstance(param, bool) or not isinstance(param, (int, float)):
        raise TypeError(f"{owner} expected activation_param to be a float or None, got "
                        f"{type(param).__name__} {param!r}")
    param = float(param)
    if invertible and activation in ("leaky_relu", "elu") and not param > 0.0:
        what = "slope" if activation == "leaky_relu" else "alpha"
        raise ValueError(f"{owner} needs activation_param ({activation}'s {what}) > 0 to invert the activation, "
                         f"got {param}; use a positive value such as {_DEFAULT_PARAM[activation]}")
    return param


class _ActivationMixin:
    """Keeps the activation and hands it to the shared transform; everything else is our BatchNorm's."""

    _invertible_only = False
    _default_activation = "relu"

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

    def forward(self, input: Tensor, residual: Tensor) -> Tensor:
        self._check_input_dim(input)
        if self._variant_in_use():
            normalized = self._forward_identity(input)
            return functional.torch_activation(normalized + residual, self.activation, self.activation_param)
        factor = self._averaging_factor()
        running_mean, running_var = self._buffers_to_update()
        return functional.batch_norm_add_act(input, residual, running_mean, running_var, self.weight, self.bias,
                                             self._uses_batch_stats(), factor, self.eps, **self._activation_kwargs())

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

    def __init__(self, num_features: int, *args, min_abs_weight: float = 1e-5, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        if isinstance(min_abs_weight, bool) or not isinstance(min_abs_weight, (int, float)) or min_abs_weight <= 0:
            raise ValueError(f"{type(self).__name__} expected min_abs_weight > 0 (the smallest |gamma| used, so "
                             f"that the normalization can be inverted), got {min_abs_weight!r}")
        self.min_abs_weight = float(min_abs_weight)

    def forward(self, input: Tensor) -> Tensor:
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


_ACT_DOC = """Batch norm followed by an activation, fused into one kernel, forward and backward ({shape}).

    y = act((x - mean) / sqrt(var + eps) * gamma + beta), statistics exactly as in our BatchNorm{dims} (batch
    in training, running in eval, and its variant keywords). The backward recomputes the pre-activation from x,
    so only x is saved, as for a plain BatchNorm, and the activation costs no extra pass over memory.

    Args: those of BatchNorm{dims} (num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
        device=None, dtype=None, bias=True, virtual_batch_size=None, freeze_stats=False, skip_nonfinite=False),
        activation: "relu" (default), "identity", "leaky_relu", "elu", "silu", "gelu" (exact), "gelu_tanh".
        activation_param: slope of leaky_relu (0.01), alpha of elu (1.0); None = the default.

    Shape: {shape}. A `state_dict` of a plain BatchNorm{dims} (ours or torch's) loads unchanged.

    Example:
        >>> layer = BatchNormAct{dims}(16, activation="leaky_relu", activation_param=0.1)
    """

_ADD_DOC = """y = act(BN(x) + residual), ResNet's BN + add + ReLU in one pass, forward and backward ({shape}).

    forward(x, residual) with residual of x's shape. The residual's gradient is g = dy * act'(z) and x's is
    BatchNorm's backward of g; x and residual are saved (no intermediate tensor). Arguments as BatchNormAct{dims}
    (default activation "relu"). With a statistics variant keyword (e.g. virtual_batch_size) in use, the same
    values are computed unfused.

    Example:
        >>> block_out = BatchNormAddAct{dims}(64)(conv_out, shortcut)
    """

_INPLACE_DOC = """In-place activated batch norm (Rota Bulo et al. 2018, arXiv 1712.02616) ({shape}).

    forward(x) overwrites x with y = act(BN(x)) and returns it; only y is saved, and the backward inverts the
    activation (z = act^-1(y)) and the affine map (x_hat = (z - beta) / gamma) to recover what BN's backward
    needs. In a conv-BN-act stack this stores one tensor per block instead of two.

    Args: those of BatchNormAct{dims}, with activation "leaky_relu" (default, slope 0.01), "elu" or "identity"
    (invertible ones only), and min_abs_weight=1e-5: gamma is used as ``sign(gamma) * max(|gamma|, min_abs_weight)``
    (identical for ``|gamma| >= 1e-5``; a gamma of exactly 0 would make x_hat unrecoverable), with gamma's gradient
    passed straight through.

    Refuses (ValueError) an input it must not overwrite: a leaf tensor that requires grad, a tensor that the
    operation producing it saved for its backward (e.g. the output of sigmoid), a non-dense view. If some later
    operation saved the input before this layer overwrote it, torch's version check raises at backward time.
    Under torch.compile, with a variant keyword, or on other devices/dtypes it computes the same values out of
    place.

    Example:
        >>> layer = InPlaceABN{dims}(64)
        >>> y = layer(conv(x))   # conv's output is overwritten
    """


class BatchNormAct1d(_ActivationMixin, BatchNorm1d):
    __doc__ = _ACT_DOC.format(shape="(N, C) or (N, C, L)", dims="1d")


class BatchNormAct2d(_ActivationMixin, BatchNorm2d):
    __doc__ = _ACT_DOC.format(shape="(N, C, H, W)", dims="2d")


class BatchNormAct3d(_ActivationMixin, BatchNorm3d):
    __doc__ = _ACT_DOC.format(shape="(N, C, D, H, W)", dims="3d")


class BatchNormAddAct1d(_AddActMixin, BatchNorm1d):
    __doc__ = _ADD_DOC.format(shape="(N, C) or (N, C, L)", dims="1d")


class BatchNormAddAct2d(_AddActMixin, BatchNorm2d):
    __doc__ = _ADD_DOC.format(shape="(N, C, H, W)", dims="2d")


class BatchNormAddAct3d(_AddActMixin, BatchNorm3d):
    __doc__ = _ADD_DOC.format(shape="(N, C, D, H, W)", dims="3d")


class InPlaceABN1d(_InPlaceMixin, BatchNorm1d):
    __doc__ = _INPLACE_DOC.format(shape="(N, C) or (N, C, L)", dims="1d")


class InPlaceABN2d(_InPlaceMixin, BatchNorm2d):
    __doc__ = _INPLACE_DOC.format(shape="(N, C, H, W)", dims="2d")


class InPlaceABN3d(_InPlaceMixin, BatchNorm3d):
    __doc__ = _INPLACE_DOC.format(shape="(N, C, D, H, W)", dims="3d")
