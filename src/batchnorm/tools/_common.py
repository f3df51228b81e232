"""Shared helpers of the model tools: which modules are batch norms, module paths, and data-flow graphs.

The graph side follows the data flow with `torch.fx`: a tracer that keeps every normalization layer, every
torch.nn layer and every layer of this package as a leaf (their forwards have control flow that symbolic
tracing cannot follow), and a fallback that traces the largest submodules that can be traced when the whole
model cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["is_batchnorm", "is_frozen", "is_ours", "module_paths", "set_module", "replace_everywhere",
           "traced_graphs", "TracedPart", "TraceResult", "LeafTracer", "activation_of", "batches", "call_model"]


def is_batchnorm(module: nn.Module) -> bool:
    """True for every batch-norm layer: torch's and ours (`_BatchNorm` subclasses), and frozen batch norms.

    Frozen batch norms (ours from `batchnorm.nn`, torchvision's `FrozenBatchNorm2d`) need not subclass
    `_BatchNorm`; they are recognised by their class name and their `running_mean`/`running_var` buffers.
    """
    if isinstance(module, _BatchNorm):
        return True
    return is_frozen(module)


def is_frozen(module: nn.Module) -> bool:
    """True when the module always normalizes with its running statistics (frozen class or `freeze_stats`)."""
    if getattr(module, "freeze_stats", False) is True:
        return True
    return (type(module).__name__.startswith("FrozenBatchNorm") and hasattr(module, "running_mean")
            and hasattr(module, "running_var"))


def is_ours(module: nn.Module) -> bool:
    """True for a module defined in this package (tell ours from torch's: ours subclass torch's classes)."""
    return type(module).__module__.startswith("batchnorm.")


def module_paths(model: nn.Module, target: nn.Module) -> list[str]:
    """Every qualified name under which `target` is registered in `model` (a module can be shared)."""
    return [name for name, module in model.named_modules(remove_duplicate=False) if module is target]


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at the dotted `path` (a child of a Sequential/ModuleList/ModuleDict or attribute)."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module) -> list[str]:
    """Replace `old` by `new` under every name it is registered with; returns those names."""
    paths = module_paths(model, old)
    # deepest first, so that replacing does not change the parents of names still to replace
    for path in sorted(paths, key=lambda p: p.count("."), reverse=True):
        set_module(model, path, new)
    return paths


class LeafTracer(torch.fx.Tracer):
    """An fx tracer that keeps normalization layers and this package's layers as leaves.

    torch.nn layers are leaves already; this package's layers (defined in `batchnorm.nn`), batch-norm
    subclasses defined anywhere (for instance timm's `BatchNormAct2d`) and frozen batch norms are leaves too, so
    the graph has one `call_module` node per batch norm. Models built from layers (the lab's included) are
    traced through.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if is_batchnorm(m) or type(m).__module__.startswith("batchnorm.nn"):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass
class TracedPart:
    """One traced piece of a model: the submodule at `path` ('' = the whole model) and its fx graph."""

    path: str
    module: nn.Module
    graph: torch.fx.Graph


@dataclass
class TraceResult:
    """The traced parts of a model, and the submodules that could not be traced (with the error)."""

    parts: list[TracedPart] = field(default_factory=list)
    untraced: list[tuple[str, str]] = field(default_factory=list)


def traced_graphs(model: nn.Module) -> TraceResult:
    """Trace `model` with `LeafTracer`; where that fails, trace its children instead (recursively).

    A submodule that cannot be traced and has no children of its own is reported in `untraced`.
    """
    result = TraceResult()

    def visit(path: str, module: nn.Module) -> None:
        if is_batchnorm(module) or (path and LeafTracer().is_leaf_module(module, path)):
            return
        try:
            graph = LeafTracer().trace(module)
        except Exception as error:  # noqa: BLE001 - any tracing failure means: trace the children instead
            children = list(module.named_children())
            if not children:
                result.untraced.append((path or "(model)", f"{type(error).__name__}: {error}".splitlines()[0]))
                return
            result.untraced.append((path or "(model)", f"traced its children instead ({type(error).__name__}: "
                                                       f"{str(error).splitlines()[0] if str(error) else ''})"))
            for name, child in children:
                visit(f"{path}.{name}" if path else name, child)
            return
        result.parts.append(TracedPart(path, module, graph))

    visit("", model)
    return result


# Activations by name, for batch-norm+activation layers that store a name instead of a module.
_ACTIVATIONS_BY_NAME = {
    "relu": lambda m: nn.ReLU(),
    "relu6": lambda m: nn.ReLU6(),
    "leaky_relu": lambda m: nn.LeakyReLU(float(_first_attr(m, ("negative_slope", "activation_param", "slope"),
                                                            0.01))),
    "elu": lambda m: nn.ELU(float(_first_attr(m, ("alpha", "activation_param"), 1.0))),
    "gelu": lambda m: nn.GELU(),
    "gelu_tanh": lambda m: nn.GELU(approximate="tanh"),
    "silu": lambda m: nn.SiLU(),
    "swish": lambda m: nn.SiLU(),
    "sigmoid": lambda m: nn.Sigmoid(),
    "tanh": lambda m: nn.Tanh(),
    "hardswish": lambda m: nn.Hardswish(),
    "identity": lambda m: nn.Identity(),
    "none": lambda m: nn.Identity(),
}


def _first_attr(module: nn.Module, names, default):
    for name in names:
        value = getattr(module, name, None)
        if value is not None:
            return value
    return default


def activation_of(bn: nn.Module):
    """The activation a batch-norm+activation layer applies after the affine transform, as a module.

    Returns (module, its name) for a layer with an activation; (None, reason) when the activation cannot be
    expressed as a module; (None, '') when the layer has none. Conventions: timm's `BatchNormAct2d` (`.drop`
    then `.act`, modules), this package's `BatchNormAct*` (`.activation`: a name such as "leaky_relu", with
    `.activation_param`, or a module).
    """
    act = getattr(bn, "act", None)
    if act is None:
        act = getattr(bn, "activation", None)
    if act is None:
        return None, ""
    if isinstance(act, str):
        make = _ACTIVATIONS_BY_NAME.get(act.lower())
        if make is None:
            return None, f"unknown activation name {act!r}"
        act = make(bn)
    elif not isinstance(act, nn.Module):
        return None, f"activation {act!r} is not a module"
    drop = getattr(bn, "drop", None)
    if isinstance(drop, nn.Module) and not isinstance(drop, nn.Identity):
        return nn.Sequential(drop, act), "drop+act"
    return act, type(act).__name__


def batches(data) -> Iterator:
    """Iterate over `data`: an iterable of batches, or a single tensor (one batch)."""
    if isinstance(data, torch.Tensor):
        yield data
        return
    yield from data


def call_model(model: nn.Module, batch):
    """Run `model` on one batch: a tensor, a (inputs, targets...) tuple/list (inputs first), or a dict."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)) and batch:
        return model(batch[0])
    raise TypeError(f"a batch must be a tensor, a (inputs, targets) tuple or list, or a dict of keyword inputs; "
                    f"got {type(batch).__name__}: pass batches of that form or a `forward(model, batch)` callable")
