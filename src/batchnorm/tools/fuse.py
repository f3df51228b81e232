"""Fuse each batch norm with the activation (and residual add) that follows it: BN -> act becomes
`BatchNormAct`, BN -> add -> act (ResNet's `out = relu(bn(x) + identity)`) becomes `BatchNormAddAct`.

The model's data flow is read with `torch.fx` (`_common.LeafTracer`: batch norms and torch.nn layers stay
leaves), so the patterns are found whether they are written as modules (`nn.ReLU`), functions (`F.relu`,
`torch.relu`, `x.relu()`) or operators (`out += identity`). A batch norm is fused only when its output has no
other use, so nothing else sees the un-activated values; every other layer is kept as it is.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    >>> fused, report = fuse_activations(model)
    >>> type(fused.get_submodule("1")).__name__, report.fused
    ('BatchNormAct2d', ['1 + 2'])
    >>> x = torch.randn(4, 3, 10, 10)
    >>> torch.allclose(fused(x), model(x), atol=1e-5)
    True
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._common import LeafTracer

__all__ = ["fuse_activations", "FuseReport"]

# Activation modules the fused layers compute, as (activation name, parameter or None).
_MODULE_ACTIVATIONS = {
    nn.ReLU: lambda m: ("relu", None),
    nn.LeakyReLU: lambda m: ("leaky_relu", float(m.negative_slope)),
    nn.ELU: lambda m: ("elu", float(m.alpha)),
    nn.SiLU: lambda m: ("silu", None),
    nn.GELU: lambda m: ("gelu_tanh" if m.approximate == "tanh" else "gelu", None),
}
_DIMS = {nn.BatchNorm1d: "1d", nn.BatchNorm2d: "2d", nn.BatchNorm3d: "3d"}
_RELU_FUNCTIONS = (torch.relu, torch.relu_, nn.functional.relu)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


@dataclass
class FuseReport:
    """What `fuse_activations` did: the fused groups (node names joined by ' + ') and the batch norms left.

    Attributes:
        fused: one entry per fused group, e.g. '1 + 2' (the batch norm and the activation).
        left: one entry per batch norm left unfused, 'name (reason)'.

    Example:
        >>> import torch
        >>> from batchnorm.tools import fuse_activations
        >>> _, report = fuse_activations(torch.nn.Sequential(torch.nn.BatchNorm1d(8), torch.nn.ReLU()))
        >>> report.fused, report.left
        (['0 + 1'], [])
    """

    fused: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # "name (reason)"

    def __str__(self) -> str:
        lines = [f"fused {len(self.fused)} batch norm(s) with what follows them"]
        lines += [f"  fused: {group}" for group in self.fused]
        lines += [f"  left:  {entry}" for entry in self.left]
        return "\n".join(lines)


def _activation_of(node: torch.fx.Node, modules: dict) -> tuple[str, float | None] | None:
    """(activation name, parameter) if `node` applies an activation the fused layers compute, else None."""
    if node.op == "call_module":
        make = _MODULE_ACTIVATIONS.get(type(modules[node.target]))
        return make(modules[node.target]) if make else None
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return "relu", None
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu", None
    return None


def _label(node: torch.fx.Node) -> str:
    """A node as the user knows it: the module's name, or the operation's."""
    return node.target if node.op == "call_module" else node.name


def _is_add(node: torch.fx.Node) -> bool:
    plain_args = len(node.args) == 2 and not node.kwargs
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return plain_args
    return node.op == "call_method" and node.target in ("add", "add_") and plain_args


def _fused_layer(bn: _BatchNorm, with_add: bool, activation: str, param: float | None) -> nn.Module:
    """Our BatchNormAct / BatchNormAddAct with the settings, parameters, buffers and flags of `bn`."""
    import batchnorm.nn as ours

    dims = next(suffix for base, suffix in _DIMS.items() if isinstance(bn, base))  # _plain made sure it is one
    cls = getattr(ours, ("BatchNormAddAct" if with_add else "BatchNormAct") + dims)
    state = [t for t in (*bn.parameters(recurse=False), *bn.buffers(recurse=False)) if t.is_floating_point()]
    factory = {"device": state[0].device, "dtype": state[0].dtype} if state else {}
    layer = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                track_running_stats=bn.track_running_stats, activation=activation, activation_param=param, **factory)
    layer.load_state_dict(bn.state_dict())
    for name, parameter in layer.named_parameters(recurse=False):
        parameter.requires_grad_(getattr(bn, name).requires_grad)
    layer.train(bn.training)
    return layer


def _plain(module: nn.Module) -> bool:
    """A batch norm with nothing of its own on top of the normalization (torch's or our plain layer)."""
    import batchnorm.nn as ours

    return type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, ours.BatchNorm1d, ours.BatchNorm2d,
                            ours.BatchNorm3d) and not getattr(module, "virtual_batch_size", None)


def fuse_activations(model: nn.Module) -> tuple[torch.fx.GraphModule, FuseReport]:
    """A copy of `model` in which each batch norm followed by an activation (and optionally a residual add
    before it) is one fused layer of this package.

    Patterns (the batch norm's output must have no other user; `act` is ReLU, LeakyReLU, ELU, SiLU or GELU as
    a module, or relu as a function or method):

        act(bn(x))             -> BatchNormAct(act)(x)
        act(bn(x) + residual)  -> BatchNormAddAct(act)(x, residual)     (either operand order, `+=` too)

    The fused layers compute the same function (the shared transform with the activation applied where the
    output is written) and keep the batch norm's parameters, buffers, `requires_grad` and training flags, so
    `state_dict` keys and values carry over (activation modules hold no state).

    Args:
        model: any module `torch.fx` can trace with batch norms as leaves (no data-dependent control flow in
            the forwards between the layers); it is not modified.

    Returns:
        (the fused model as a `torch.fx.GraphModule` with the same submodule names, a `FuseReport`).

    Raises:
        TypeError: `model` is not a module.
        ValueError: the model cannot be traced (the message says why and what to use instead).

    Example:
        >>> import torch
        >>> from batchnorm.tools import fuse_activations
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        >>> fused, report = fuse_activations(model)
        >>> type(fused.get_submodule("1")).__name__, report.fused
        ('BatchNormAct2d', ['1 + 2'])
        >>> x = torch.randn(4, 3, 8, 8)
        >>> torch.allclose(fused(x), model(x), atol=1e-5)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_activations expected model to be a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)
    try:
        graph = LeafTracer().trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure gets the same explanation
        raise ValueError(f"fuse_activations needs a model torch.fx can trace, and tracing "
                         f"{type(model).__name__} failed: {type(error).__name__}: {str(error).splitlines()[0]}; "
                         f"fuse such a model's blocks one by one, or use convert(model, to='batchnorm')") from None
    modules = dict(model.named_modules())
    report = FuseReport()
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        bn = modules[node.target]
        if not _plain(bn):
            report.left.append(f"{node.target} ({type(bn).__name__} is not a plain batch norm)")
            continue
        users = list(node.users)
        if len(users) != 1:
            report.left.append(f"{node.target} (its output has {len(users)} users)")
            continue
        follower, residual, add_node = users[0], None, None
        if _is_add(follower) and len(follower.users) == 1:
            others = [a for a in follower.args if a is not node]
            if len(others) != 1 or not isinstance(others[0], torch.fx.Node):
                report.left.append(f"{node.target} (the add's other operand is not another tensor of the graph)")
                continue
            add_node, residual, follower = follower, others[0], next(iter(follower.users))
        activation = _activation_of(follower, modules)
        if activation is None:
            report.left.append(f"{node.target} (no supported activation follows it)")
            continue
        fused = _fused_layer(bn, add_node is not None, *activation)
        parent_path, _, child = node.target.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, fused)
        with graph.inserting_before(follower):
            args = (node.args[0],) if add_node is None else (node.args[0], residual)
            new_node = graph.call_module(node.target, args)
        follower.replace_all_uses_with(new_node)
        names = [_label(n) for n in (node, add_node, follower) if n is not None]
        for dead in (follower, add_node, node):
            if dead is not None:
                graph.erase_node(dead)
        report.fused.append(" + ".join(names))
    graph.lint()
    fused_model = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    fused_model.train(model.training)
    return fused_model, report
