"""TorchScript: the torch module that `torch.jit.script` compiles in place of one of this package's layers.

`torch.jit.script` calls a module's `__prepare_scriptable__` before compiling it. Our layers run on NumPy views
and Numba kernels, which TorchScript cannot compile, so they hand it an equivalent module built from torch ops
that shares their parameters and buffers (the same tensor objects: training the scripted model trains the
original, and `state_dict` keys are unchanged):

  * BatchNorm1d/2d/3d -> torch.nn.BatchNorm1d/2d/3d;
  * BatchNormAct1d/2d/3d -> `ScriptableBatchNormAct` (torch's BatchNorm forward, then the activation).

Layers with a statistics variant keyword in use, and the other layers (BatchNormAddAct, InPlaceABN,
BatchRenorm, Frozen, Sync, BNLSTM), raise a TypeError naming the alternatives (`torch.jit.trace`,
`torch.compile`, `torch.export`), which record torch's ops for them.
"""


import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ScriptableBatchNormAct", "scriptable_equivalent"]


def _activation(y: Tensor, activation: str, param: float) -> Tensor:
    if activation == "relu":
        return F.relu(y)
    if activation == "leaky_relu":
        return F.leaky_relu(y, param)
    if activation == "elu":
        return F.elu(y, param)
    if activation == "silu":
        return F.silu(y)
    if activation == "gelu":
        return F.gelu(y)
    if activation == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    return y


class ScriptableBatchNormAct(torch.nn.modules.batchnorm._BatchNorm):
    """y = act(BatchNorm(x)) with torch's BatchNorm forward: the TorchScript form of BatchNormAct1d/2d/3d.

    Built by `scriptable_equivalent` over the parameters and buffers of a BatchNormAct layer.
    """

    activation: str
    activation_param: float
    min_dim: int
    max_dim: int

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < self.min_dim or input.dim() > self.max_dim:
            raise ValueError(f"expected a {self.min_dim}-D to {self.max_dim}-D input, got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked)
                else:
                    factor = self.momentum
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)
        y = F.batch_norm(input, self.running_mean if not self.training or self.track_running_stats else None,
                         self.running_var if not self.training or self.track_running_stats else None,
                         self.weight, self.bias, bn_training, factor, self.eps)
        return _activation(y, self.activation, self.activation_param)


_DIMS = {"1d": (2, 3), "2d": (4, 4), "3d": (5, 5)}


def _share_state(target: torch.nn.Module, source: torch.nn.Module) -> torch.nn.Module:
    """target's parameters and buffers become source's (the same tensors); training flag copied."""
    for name in ("weight", "bias"):
        setattr(target, name, getattr(source, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        target._buffers[name] = getattr(source, name)
    target.train(source.training)
    return target


def scriptable_equivalent(module: torch.nn.Module) -> torch.nn.Module:
    """The torch module `torch.jit.script` compiles for `module` (see the module docstring)."""
    name = type(module).__name__
    variants = [f"{key}={getattr(module, key)!r}" for key, default in
                (("virtual_batch_size", None), ("freeze_stats", False), ("skip_nonfinite", False))
                if getattr(module, key, default) != default]
    torch_class = vars(type(module)).get("_scripted_as")  # set by BatchNorm1d/2d/3d themselves, not subclasses
    fused = getattr(module, "_scriptable_activation", False)  # BatchNormAct (not BatchNormAddAct, InPlaceABN)
    if variants or not (torch_class is not None or fused):
        what = f"with {', '.join(variants)}" if variants else "(it runs on this package's kernels)"
        raise TypeError(f"torch.jit.script cannot compile {name} {what}: script-compatible are BatchNorm1d/2d/3d "
                        f"and BatchNormAct1d/2d/3d without variant keywords. Use torch.jit.trace, torch.export or "
                        f"torch.compile (they record torch's ops for this layer)")
    factory = {"device": "meta"}
    args = (module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    if torch_class is not None:
        return _share_state(torch_class(*args, **factory), module)
    equivalent = ScriptableBatchNormAct(*args, **factory)
    equivalent.activation, equivalent.activation_param = module.activation, float(module.activation_param)
    equivalent.min_dim, equivalent.max_dim = _DIMS[name[-2:]]
    return _share_state(equivalent, module)
