"""Fold batch norms into the convolution or linear layer before them, following the data flow with torch.fx."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ._common import activation_of, is_batchnorm, is_frozen, replace_everywhere, traced_graphs

__all__ = ["fold", "FoldReport", "FoldedLayer", "SkippedLayer", "AddActivation"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PLAIN_FORWARDS = {cls.forward for cls in _CONVS + _TRANSPOSED + (nn.Linear,)}


@dataclass
class FoldedLayer:
    """A batch norm folded away: its name, the layer it was folded into, and the activation kept in its place."""

    batchnorm: str
    into: str
    activation: str = ""


@dataclass
class SkippedLayer:
    """A batch norm left in place, and why."""

    batchnorm: str
    reason: str


@dataclass
class FoldReport:
    """What `fold` did: folded layers, layers left (with the reason), parts it could not trace, the check.

    Attributes:
        folded: one `FoldedLayer` per batch norm removed.
        skipped: one `SkippedLayer` per batch norm left in the model.
        untraced: (submodule, error) for every part of the model that torch.fx could not trace whole.
        notes: assumptions made (for instance a Linear output assumed to be (N, C) without example inputs).
        max_abs_error: folded vs original on ``example_inputs`` (None without them).
        max_rel_error: the same, relative to the largest absolute output of the original.

    Example:
        >>> import torch
        >>> from batchnorm.tools import fold
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
        >>> _, report = fold(net)
        >>> report.folded
        [FoldedLayer(batchnorm='1', into='0', activation='')]
        >>> print(report)
        fold: 1 batch norm(s) folded, 0 left
        batch norm  result  detail
        --------------------------
        1           folded  into 0
    """

    folded: list[FoldedLayer] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    untraced: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_abs_error: float | None = None
    max_rel_error: float | None = None

    def table(self) -> str:
        """A plain-text table: one row per batch norm (folded or left, and into what or why)."""
        rows = [("batch norm", "result", "detail")]
        for item in self.folded:
            detail = f"into {item.into}" + (f", keeps activation {item.activation}" if item.activation else "")
            rows.append((item.batchnorm, "folded", detail))
        for item in self.skipped:
            rows.append((item.batchnorm, "left", item.reason))
        width = [max(len(row[i]) for row in rows) for i in range(2)]
        lines = [f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]
        lines.insert(1, "-" * min(100, max(len(line) for line in lines)))
        return "\n".join(lines)

    def __str__(self) -> str:
        parts = [f"fold: {len(self.folded)} batch norm(s) folded, {len(self.skipped)} left", self.table()]
        for path, error in self.untraced:
            parts.append(f"not traced whole: {path}: {error}")
        parts.extend(f"note: {note}" for note in self.notes)
        if self.max_rel_error is not None:
            parts.append(f"check on example inputs: max abs error {self.max_abs_error:.3g}, "
                         f"max relative error {self.max_rel_error:.3g}")
        return "\n".join(parts)


def _describe(node) -> str:
    if not isinstance(node, torch.fx.Node):
        return f"a constant ({node!r})"
    if node.op == "placeholder":
        return f"the input {node.target!r} of its traced (sub)module"
    if node.op == "call_module":
        return f"module {node.target!r}"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    return f"{node.op} {node.target}"


def _spatial_dims(producer: nn.Module) -> int:
    """How many spatial dimensions the producer's output has: 0 after Linear, 1/2/3 after a 1d/2d/3d conv."""
    if isinstance(producer, nn.Linear):
        return 0
    if isinstance(producer, (nn.Conv1d, nn.ConvTranspose1d)):
        return 1
    return 2 if isinstance(producer, (nn.Conv2d, nn.ConvTranspose2d)) else 3


def _probe_input(spatial_dims: int, channels: int, reference: torch.Tensor) -> torch.Tensor:
    """A random input (N, C, *spatial) with `spatial_dims` spatial dimensions, in the reference's dtype."""
    shape = (5, channels) if spatial_dims == 0 else (2, channels) + (3,) * spatial_dims
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * 2 + 0.5).to(reference.dtype)


class AddActivation(nn.Module):
    """What a folded BN + add + activation layer leaves behind: forward(x, residual) = activation(x + residual).

    Args:
        activation: the activation module (nn.Identity() for none).

    Shape: x and residual (N, C, *), the same shape; output the same.

    Example:
        >>> AddActivation(torch.nn.ReLU())(torch.randn(2, 3), torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, input: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.activation(input + residual)


def _affine_of(bn: nn.Module):
    """(scale, shift) in float64 with y = x * scale + shift: the eval transform of a batch norm."""
    mean = bn.running_mean.detach().to(torch.float64)
    var = bn.running_var.detach().to(torch.float64)
    weight = getattr(bn, "weight", None)
    bias = getattr(bn, "bias", None)
    gamma = torch.ones_like(mean) if weight is None else weight.detach().to(torch.float64)
    beta = torch.zeros_like(mean) if bias is None else bias.detach().to(torch.float64)
    scale = gamma / torch.sqrt(var + float(bn.eps))
    return scale, beta - mean * scale


def behaves_affine(bn: nn.Module, spatial_dims: int, activation, residual: bool = False) -> tuple[bool, str]:
    """Check numerically that the layer computes act(x * scale + shift [+ residual]) from its running statistics.

    Returns (True, '') or (False, what differed), from a seeded random probe input (N, C, *spatial) (and a
    residual of the same shape when `residual`, for BN + add + activation layers called as bn(x, residual)).
    """
    probe_bn = copy.deepcopy(bn)
    x = _probe_input(spatial_dims, bn.running_mean.numel(), bn.running_mean)
    scale, shift = _affine_of(bn)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    expected = x.to(torch.float64) * scale.view(shape) + shift.view(shape)
    inputs = (x,)
    if residual:
        other = torch.flip(x, dims=(0,)) - 0.7
        inputs = (x, other)
        expected = expected + other.to(torch.float64)
    if activation is not None:
        expected = copy.deepcopy(activation).eval().to(torch.float64)(expected)
    with torch.no_grad():
        try:
            got = probe_bn(*inputs).to(torch.float64)
        except Exception as error:  # noqa: BLE001 - a layer that refuses the probe is not foldable
            return False, f"it fails on a probe input of shape {tuple(x.shape)}: {type(error).__name__}"
    if got.shape != expected.shape:
        return False, f"it changes the shape {tuple(x.shape)} to {tuple(got.shape)}"
    tolerance = 1e-4 if x.dtype == torch.float32 else 1e-9
    if torch.allclose(got, expected, rtol=tolerance, atol=tolerance * (1 + float(expected.abs().max()))):
        return True, ""
    deviation = float((got - expected).abs().max() / (1 + expected.abs().max()))
    return False, f"deviation {deviation:.2g} relative on a probe input"


def _fold_into(producer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """w <- w * scale (per output channel), b <- b * scale + shift, in float64 then back to the layer's dtype."""
    weight = producer.weight.detach().to(torch.float64)
    if isinstance(producer, _TRANSPOSED):
        groups = producer.groups
        in_channels, out_per_group = weight.shape[0], weight.shape[1]
        grouped = weight.reshape(groups, in_channels // groups, out_per_group, *weight.shape[2:])
        factor = scale.view(groups, 1, out_per_group, *([1] * (weight.dim() - 2)))
        new_weight = (grouped * factor).reshape(weight.shape)
    else:
        new_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    old_bias = producer.bias
    bias = torch.zeros_like(scale) if old_bias is None else old_bias.detach().to(torch.float64)
    new_bias = bias * scale + shift
    with torch.no_grad():
        producer.weight.copy_(new_weight.to(producer.weight.dtype))
        if old_bias is None:
            producer.bias = nn.Parameter(new_bias.to(producer.weight.dtype),
                                         requires_grad=producer.weight.requires_grad)
        else:
            old_bias.copy_(new_bias.to(old_bias.dtype))


def _output_dims(model: nn.Module, example_inputs, modules) -> dict[int, int]:
    """id(module) -> number of dimensions of its output on `example_inputs` (hooks on a copy of the model)."""
    dims: dict[int, int] = {}
    handles = []
    for module in modules:
        def hook(mod, inputs, output, key=id(module)):
            if isinstance(output, torch.Tensor):
                dims[key] = output.dim()
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            _run(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return dims


def _run(model: nn.Module, example_inputs):
    if isinstance(example_inputs, torch.Tensor):
        return model(example_inputs)
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    return model(*example_inputs)


def _flat_tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in _flat_tensors(value)]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in _flat_tensors(value)]
    return []


def _owners(model: nn.Module) -> dict[int, int]:
    """id(parameter) -> how many distinct modules hold it (more than one = tied weights)."""
    count: dict[int, int] = {}
    for module in model.modules():
        for parameter in module._parameters.values():
            if parameter is not None:
                count[id(parameter)] = count.get(id(parameter), 0) + 1
    return count


def fold(model: nn.Module, example_inputs=None) -> tuple[nn.Module, FoldReport]:
    r"""Fold every foldable batch norm into the Conv/ConvTranspose/Linear layer that feeds it.

    .. math:: W' = W \cdot \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
              b' = (b - \mu) \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} + \beta

    per output channel, with the running mean mu and variance sigma^2 (inference statistics). The data flow is
    read from a `torch.fx` graph (never from the order of the modules); where the whole model cannot be traced,
    its submodules are traced instead. A batch norm is folded when its input is the output of a Conv1d/2d/3d,
    ConvTranspose1d/2d/3d (any groups, depthwise included) or Linear layer that feeds nothing else, both layers
    are called once, the producer's weights are not tied to another layer, the batch norm uses its running
    statistics (eval mode, or frozen), and its eval forward is checked numerically to be the affine transform
    of those statistics (followed by its activation for batch-norm+activation layers such as timm's
    `BatchNormAct2d` or ours: the activation stays in the batch norm's place; our BN + add + activation layers,
    called as bn(x, residual), leave `AddActivation`). Every other batch norm is left and reported with the
    reason (for instance pre-activation BN -> ReLU -> conv).

    Args:
        model: the model; it is not modified (the tool works on a deep copy).
        example_inputs: None. A tensor, a tuple of positional inputs, or a dict of keyword inputs. When given,
            the folded model is compared with the original on them (`report.max_rel_error`) and Linear outputs
            are checked to be (N, C) before a BatchNorm1d is folded into them.

    Returns:
        (folded model, `FoldReport`). The folded model has the original's class and structure with each folded
        batch norm replaced by `nn.Identity` (or by its activation) and the producer's weight and bias updated.

    Shape: any; the model is called as ``model(*example_inputs)``.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        RuntimeError: folding changed an output's shape on ``example_inputs`` (the model is left unfolded).

    Example:
        >>> import torch
        >>> from batchnorm.tools import fold
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
        >>> folded, report = fold(net, torch.randn(2, 3, 16, 16))
        >>> folded
        Sequential(
          (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))
          (1): Identity()
          (2): ReLU()
        )
        >>> report.max_rel_error < 1e-5
        True

    References:
        Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
        Inference", arXiv 1712.05877, section 3.2 (batch-norm folding).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold expected model to be a torch.nn.Module, got {type(model).__name__}: pass the model "
                        f"itself (not its state_dict)")
    folded_model = copy.deepcopy(model)
    report = FoldReport()
    trace = traced_graphs(folded_model)
    report.untraced = list(trace.untraced)

    calls: dict[int, list] = {}
    for part in trace.parts:
        for node in part.graph.nodes:
            if node.op == "call_module":
                module = part.module.get_submodule(node.target)
                calls.setdefault(id(module), []).append((part, node))
    owners = _owners(folded_model)

    candidates = [(name, module) for name, module in folded_model.named_modules() if is_batchnorm(module)]
    linear_dims: dict[int, int] = {}
    if example_inputs is not None:
        linears = [m for m in folded_model.modules() if isinstance(m, nn.Linear)]
        if linears:  # hooks run on a copy (the folded model must stay untouched); map modules back by position
            copy_model = copy.deepcopy(folded_model)
            copy_linears = [m for m in copy_model.modules() if isinstance(m, nn.Linear)]
            dims = _output_dims(copy_model, example_inputs, copy_linears)
            linear_dims = {id(orig): dims[id(cp)] for orig, cp in zip(linears, copy_linears) if id(cp) in dims}

    plan = []
    for name, bn in candidates:
        reason, producer_name, producer, activation, activation_name, residual = _decide(
            name, bn, calls, owners, linear_dims, example_inputs is not None, report)
        if reason:
            report.skipped.append(SkippedLayer(name, reason))
        else:
            plan.append((name, bn, producer_name, producer, activation, activation_name, residual))

    for name, bn, producer_name, producer, activation, activation_name, residual in plan:
        scale, shift = _affine_of(bn)
        _fold_into(producer, scale, shift)
        replacement = activation if activation is not None else nn.Identity()
        if residual:
            replacement = AddActivation(replacement)
        replace_everywhere(folded_model, bn, replacement)
        report.folded.append(FoldedLayer(name, producer_name, ("add + " if residual else "") + activation_name))

    if example_inputs is not None:
        outputs = []
        for version in (model, folded_model):      # same random stream for both (dropout in training mode)
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                outputs.append(_flat_tensors(_run(copy.deepcopy(version), example_inputs)))
        expected, got = outputs
        abs_error, scale_of_output = 0.0, 0.0
        for a, b in zip(got, expected):
            if a.shape != b.shape:
                raise RuntimeError(f"fold changed an output shape from {tuple(b.shape)} to {tuple(a.shape)}; "
                                   f"please report this model")
            if b.is_floating_point():
                abs_error = max(abs_error, float((a.double() - b.double()).abs().max()) if b.numel() else 0.0)
                scale_of_output = max(scale_of_output, float(b.double().abs().max()) if b.numel() else 0.0)
        report.max_abs_error = abs_error
        report.max_rel_error = abs_error / scale_of_output if scale_of_output > 0 else abs_error
    return folded_model, report


def _decide(name, bn, calls, owners, linear_dims, have_examples, report):
    """(reason to skip or '', producer name, producer module, activation module, activation name, residual)."""
    none = ("", None, None, None, "", False)

    def skip(reason):
        return (reason,) + none[1:]

    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        return skip("no running statistics (track_running_stats=False): it normalizes with batch statistics "
                    "even in eval mode")
    if bn.training and not is_frozen(bn):
        return skip("in training mode (it normalizes with batch statistics); call model.eval() before fold")
    uses = calls.get(id(bn), [])
    if not uses:
        parent = name.rpartition(".")[0] or "(model)"
        if any(path == parent for path, _ in report.untraced):
            return skip(f"called from {parent}, which torch.fx could not trace (see untraced), so its input is "
                        f"unknown")
        return skip("not in a traced graph (never called in forward, or inside a part torch.fx could not trace)")
    if len(uses) > 1:
        return skip(f"called {len(uses)} times in forward (a shared module): folding would need one copy per call")
    if bn._forward_hooks or bn._forward_pre_hooks:
        return skip("has forward hooks, which folding would drop")
    part, node = uses[0]
    residual = len(node.args) == 2 and not node.kwargs     # BN + add + activation: bn(x, residual)
    if not residual and (len(node.args) != 1 or node.kwargs):
        return skip(f"called with {len(node.args) + len(node.kwargs)} inputs: not a batch norm of one input, nor a "
                    f"BN + add + activation layer called as bn(x, residual)")
    source = node.args[0]
    if not isinstance(source, torch.fx.Node) or source.op != "call_module":
        return skip(f"its input comes from {_describe(source)}, not from a Conv/ConvTranspose/Linear layer")
    producer = part.module.get_submodule(source.target)
    producer_name = f"{part.path}.{source.target}" if part.path else str(source.target)
    if not isinstance(producer, _CONVS + _TRANSPOSED + (nn.Linear,)):
        return skip(f"its input comes from {_describe(source)} ({type(producer).__name__}), not from a "
                    f"Conv/ConvTranspose/Linear layer")
    if type(producer).forward not in _PLAIN_FORWARDS:
        return skip(f"{producer_name} is a {type(producer).__name__} with its own forward (its weight may be "
                    f"transformed), so the weight cannot be rescaled safely")
    if torch.nn.utils.parametrize.is_parametrized(producer) or producer._forward_pre_hooks or \
            producer._forward_hooks:
        return skip(f"{producer_name} has parametrizations or hooks (for instance weight norm)")
    if isinstance(producer, nn.modules.lazy.LazyModuleMixin) and producer.has_uninitialized_params():
        return skip(f"{producer_name} is a lazy layer that is not initialized yet: run the model once first")
    out_channels = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
    if out_channels != bn.running_mean.numel():
        return skip(f"{producer_name} has {out_channels} output channels but the batch norm has "
                    f"{bn.running_mean.numel()} features")
    if residual and node.args[1] is source:
        return skip(f"the output of {producer_name} is also its residual input: folding would change that path")
    if len(source.users) != 1:
        others = ", ".join(_describe(user) for user in source.users if user is not node)
        return skip(f"the output of {producer_name} also feeds {others}: folding would change that path")
    if len(calls.get(id(producer), [])) != 1:
        return skip(f"{producer_name} is called {len(calls.get(id(producer), []))} times in forward")
    if any(owners.get(id(p), 0) > 1 for p in producer._parameters.values() if p is not None):
        return skip(f"the weights of {producer_name} are tied to another layer")
    if isinstance(producer, nn.Linear):
        dims = linear_dims.get(id(producer))
        if have_examples and dims is not None and dims != 2:
            return skip(f"{producer_name} outputs a {dims}-D tensor: the batch norm normalizes dimension 1, which "
                        f"is not the Linear layer's feature dimension")
        if not have_examples:
            report.notes.append(f"{name}: assumed that {producer_name} outputs (N, C); pass example_inputs to check")
    activation, activation_name = None, ""
    if hasattr(bn, "act") or hasattr(bn, "activation"):
        activation, activation_name = activation_of(bn)
        if activation is None and activation_name:
            return skip(f"batch norm with an activation that cannot be kept: {activation_name}")
    affine, detail = behaves_affine(bn, _spatial_dims(producer), activation, residual)
    if not affine:
        kind = type(bn).__name__
        return skip(f"its forward ({kind}) is not the affine transform of its running statistics"
                    + (" plus the residual" if residual else "")
                    + (" followed by its activation" if activation is not None else "") + f" ({detail})")
    return "", producer_name, producer, activation, activation_name, residual
