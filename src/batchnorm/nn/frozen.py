"""Batch norm with fixed statistics: `FrozenBatchNorm1d/2d/3d` (the running buffers in training and inference)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import functional
from ._base import traced_as_leaf
from ._checks import check_eps_momentum, check_input_shape, check_integer
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d"]


class _FrozenBatchNorm(torch.nn.Module):
    """Batch norm with fixed statistics; the public layers are `FrozenBatchNorm1d/2d/3d`."""

    _input_shapes: dict[int, str] = {}
    _version = 2  # torch's BatchNorm state-dict version (the counter is saved), so the metadata matches too

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, affine_trainable: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        name = type(self).__name__
        num_features = check_integer(num_features, "num_features", name, 1, "pass the number of channels C")
        check_eps_momentum(name, eps, None)
        if affine_trainable and not affine:
            raise ValueError(f"{name} affine_trainable=True needs affine=True (there is no gamma or beta to train), "
                             f"got affine=False: pass affine=True or affine_trainable=False")
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps = num_features, float(eps)
        self.affine, self.affine_trainable = bool(affine), bool(affine_trainable)
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(num_features, **factory), requires_grad=affine_trainable)
            self.bias = torch.nn.Parameter(torch.zeros(num_features, **factory), requires_grad=affine_trainable)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    @classmethod
    def from_batchnorm(cls, module: torch.nn.Module, affine_trainable: bool = False) -> "_FrozenBatchNorm":
        """A frozen copy of a batch-norm module (its eps, affine parameters and running statistics)."""
        if getattr(module, "running_mean", None) is None or getattr(module, "running_var", None) is None:
            raise ValueError(f"{cls.__name__}.from_batchnorm needs a module with running statistics, got "
                             f"{type(module).__name__} without running_mean/running_var "
                             f"(track_running_stats=False): there are no statistics to freeze")
        weight = getattr(module, "weight", None)
        frozen = cls(module.running_mean.shape[0], module.eps, weight is not None,
                     affine_trainable and weight is not None, device=module.running_mean.device,
                     dtype=module.running_mean.dtype)
        with torch.no_grad():
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                frozen.num_batches_tracked.copy_(module.num_batches_tracked)
            if weight is not None:
                frozen.weight.copy_(weight)
                bias = getattr(module, "bias", None)
                if bias is not None:
                    frozen.bias.copy_(bias)
                else:
                    frozen.bias.zero_()
        return frozen

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "num_batches_tracked"
        if key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long, device=self.num_batches_tracked.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, affine={self.affine}, "
                f"affine_trainable={self.affine_trainable}")

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            leaf = traced_as_leaf(self, (input,))
            if leaf is not None:
                return leaf
            return torch.nn.functional.batch_norm(input, self.running_mean, self.running_var, self.weight,
                                                  self.bias, False, 0.0, self.eps)
        check_input_shape(self, input)
        return functional.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False,
                                     0.0, self.eps)


class FrozenBatchNorm1d(_FrozenBatchNorm):
    r"""Batch norm with fixed running statistics, in training and in inference, over (N, C) or (N, C, L).

    As `FrozenBatchNorm2d` for (N, C) and (N, C, L) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import FrozenBatchNorm1d
        >>> bn = torch.nn.BatchNorm1d(16)
        >>> _ = bn(torch.randn(8, 16))                              # some running statistics
        >>> frozen = FrozenBatchNorm1d.from_batchnorm(bn).train()
        >>> x = torch.randn(8, 16)
        >>> torch.allclose(frozen(x), bn.eval()(x), atol=1e-6)
        True
    """
    _input_shapes = BatchNorm1d._input_shapes


class FrozenBatchNorm2d(_FrozenBatchNorm):
    r"""Batch norm with fixed running statistics, in training and in inference, over (N, C, H, W).

    .. math:: y = \frac{x - \mathrm{running\_mean}}{\sqrt{\mathrm{running\_var} + \epsilon}} \gamma + \beta

    The statistics never move (``model.train()`` changes nothing); gamma and beta are trainable only with
    ``affine_trainable=True``. Parameters and buffers carry torch's names, so a BatchNorm2d state dict loads as is
    (and back); a state dict without ``num_batches_tracked`` (torchvision's FrozenBatchNorm2d) loads too. Not a
    subclass of torch's ``_BatchNorm``, so converters such as ``SyncBatchNorm.convert_sync_batchnorm`` leave it
    alone. `from_batchnorm` makes one from an existing layer.

    Args:
        num_features: C, the number of channels.
        eps: 1e-5; added to the variance inside the square root.
        affine: True; gamma and beta exist.
        affine_trainable: False; True lets gamma and beta receive gradients (needs affine=True).
        device: None; factory argument.
        dtype: None; factory argument.

    Shape:
        input: (N, C, H, W).
        output: the same as the input.

    Raises:
        ValueError: num_features < 1, eps < 0, affine_trainable without affine, or an input of another rank or
            channel count.

    Example:
        >>> import torch
        >>> from batchnorm.nn import FrozenBatchNorm2d
        >>> bn = torch.nn.BatchNorm2d(16)
        >>> _ = bn(torch.randn(4, 16, 8, 8))                              # some running statistics
        >>> frozen = FrozenBatchNorm2d.from_batchnorm(bn).train()
        >>> x = torch.randn(4, 16, 8, 8)
        >>> torch.allclose(frozen(x), bn.eval()(x), atol=1e-6)
        True
    """
    _input_shapes = BatchNorm2d._input_shapes


class FrozenBatchNorm3d(_FrozenBatchNorm):
    r"""Batch norm with fixed running statistics, in training and in inference, over (N, C, D, H, W).

    As `FrozenBatchNorm2d` for (N, C, D, H, W) inputs: see there for the formula and the arguments.

    Example:
        >>> import torch
        >>> from batchnorm.nn import FrozenBatchNorm3d
        >>> bn = torch.nn.BatchNorm3d(16)
        >>> _ = bn(torch.randn(2, 16, 4, 6, 6))                              # some running statistics
        >>> frozen = FrozenBatchNorm3d.from_batchnorm(bn).train()
        >>> x = torch.randn(2, 16, 4, 6, 6)
        >>> torch.allclose(frozen(x), bn.eval()(x), atol=1e-6)
        True
    """
    _input_shapes = BatchNorm3d._input_shapes
