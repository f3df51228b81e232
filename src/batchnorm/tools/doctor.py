"""Find the batch-norm mistakes that silently hurt accuracy: a table of findings per layer, each with a fix."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ._common import batches, call_model, is_batchnorm, is_frozen, traced_graphs
from .recalibrate import precise_statistics

__all__ = ["doctor", "DoctorReport", "Finding", "CHECKS", "SEVERITIES"]

SEVERITIES = ("error", "warning", "info")
CHECKS = {
    "small-batch": "effective normalization batch (N x spatial values per channel) too small",
    "stale-statistics": "running statistics disagree with precise statistics of the data",
    "train-eval-mismatch": "outputs (or accuracy) differ between training and eval mode",
    "dead-channels": "channels with |gamma| ~ 0 (constant output)",
    "redundant-bias": "bias of the layer feeding BN is cancelled by the mean subtraction",
    "after-activation": "BN placed right after an activation (the paper places it before)",
    "momentum-convention": "momentum typical of another framework's convention",
    "batch-statistics-in-eval": "no running statistics: eval output depends on the batch",
    "nonfinite-statistics": "running_mean or running_var holds NaN or inf: every eval output is NaN/inf",
    "degenerate-variance": "running_var <= 0 in some channels: eval outputs scaled by up to 1/sqrt(eps)",
    "dropout-before-batchnorm": "dropout feeds the batch norm: its variance differs between train and eval",
    "nonfinite-input": "the data give the layer NaN or inf values",
}
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                       nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Hardtanh)
_ACTIVATION_NAMES = {"relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "selu", "celu", "gelu", "silu",
                     "mish", "sigmoid", "tanh", "hardswish", "hardsigmoid", "softplus", "hardtanh", "prelu"}
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_DROPOUT_NAMES = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}
# layers and functions a dropout's effect passes through on its way to a batch norm (one tensor in, one out)
_PASS_THROUGH_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                         nn.Linear, nn.Flatten, nn.Unflatten, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                         nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                         nn.AdaptiveAvgPool3d) + _ACTIVATION_MODULES


@dataclass
class Finding:
    """One problem found: the layer ('(model)' for the whole model), the check, severity, what and how to fix.

    Attributes:
        layer: the batch-norm layer's name in the model, or '(model)'.
        check: the check's name, e.g. 'momentum-convention', 'stale-statistics', 'small-batch'.
        severity: 'error', 'warning' or 'info'.
        message: what was found, with the numbers.
        fix: what to do about it.

    Example:
        >>> import torch
        >>> from batchnorm.tools import doctor
        >>> finding = doctor(torch.nn.BatchNorm1d(8, momentum=0.9)).findings[0]
        >>> finding.check, finding.severity
        ('momentum-convention', 'warning')
        >>> finding.fix
        'use momentum=0.1 (= 1 - 0.9), or momentum=None with recalibrate()'
    """

    layer: str
    check: str
    severity: str
    message: str
    fix: str


@dataclass
class DoctorReport:
    """The findings of `doctor`, per batch-norm layer.

    Attributes:
        layers: (name, class name) of every batch-norm layer examined, in model order.
        findings: every `Finding`, most severe first within each layer.
        measured: per layer, the numbers behind the data checks (values per channel, worst shift in standard
            deviations, variance ratio) and, under '(model)', the train/eval output difference.

    Example:
        >>> import torch
        >>> from batchnorm.tools import doctor
        >>> report = doctor(torch.nn.Sequential(torch.nn.Linear(4, 8, bias=False), torch.nn.BatchNorm1d(8)))
        >>> report.layers
        [('1', 'BatchNorm1d')]
        >>> print(report)
        doctor: 1 batch-norm layer(s); 0 error(s), 0 warning(s), 0 note(s)
        layer  type         severity  check  finding  -> fix
        ----------------------------------------------------
        1      BatchNorm1d  ok
    """

    layers: list[tuple[str, str]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    measured: dict[str, dict] = field(default_factory=dict)

    def of(self, layer: str) -> list[Finding]:
        """The findings about one layer."""
        return [f for f in self.findings if f.layer == layer]

    def checks(self) -> set[tuple[str, str]]:
        """{(layer, check)} of all findings."""
        return {(f.layer, f.check) for f in self.findings}

    @property
    def worst(self) -> str | None:
        """The most severe severity found ('error', 'warning', 'info'), None when nothing was found."""
        found = {f.severity for f in self.findings}
        return next((s for s in SEVERITIES if s in found), None)

    def table(self) -> str:
        """One row per finding (and 'ok' for layers without any), grouped by layer."""
        rows = [("layer", "type", "severity", "check", "finding", "fix")]
        order = {s: i for i, s in enumerate(SEVERITIES)}
        for name, kind in self.layers + [("(model)", "")]:
            found = sorted(self.of(name), key=lambda f: order[f.severity])
            if not found and name != "(model)":
                rows.append((name, kind, "ok", "", "", ""))
            for f in found:
                rows.append((name, kind, f.severity, f.check, f.message, f.fix))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(row[:4])) + f"  {row[4]}"
                 + (f"  -> {row[5]}" if row[5] else "") for row in rows]
        lines.insert(1, "-" * min(110, max(len(line) for line in lines)))
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self) -> str:
        counts = {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}
        head = (f"doctor: {len(self.layers)} batch-norm layer(s); {counts['error']} error(s), {counts['warning']} "
                f"warning(s), {counts['info']} note(s)")
        return head + "\n" + self.table()


def _is_activation(node, owner: nn.Module) -> bool:
    if not isinstance(node, torch.fx.Node):
        return False
    if node.op == "call_module":
        return isinstance(owner.get_submodule(node.target), _ACTIVATION_MODULES)
    if node.op in ("call_function", "call_method"):
        return getattr(node.target, "__name__", str(node.target)) in _ACTIVATION_NAMES
    return False


def _dropout_upstream(node, owner: nn.Module, steps: int = 8):
    """The dropout whose output reaches `node` through single-input layers (conv, linear, pooling, activation,
    reshape), or None. Stops at the first node with several tensor inputs or any other layer."""
    for _ in range(steps):
        if not isinstance(node, torch.fx.Node):
            return None
        if node.op == "call_module":
            module = owner.get_submodule(node.target)
            if isinstance(module, _DROPOUT_MODULES):
                return node.target
            if not isinstance(module, _PASS_THROUGH_MODULES):
                return None
        elif node.op in ("call_function", "call_method"):
            name = getattr(node.target, "__name__", str(node.target))
            if name in _DROPOUT_NAMES:
                return name
            if name not in _ACTIVATION_NAMES | {"flatten", "view", "reshape", "contiguous", "relu", "mean"}:
                return None
        else:
            return None
        inputs = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if len(inputs) != 1:
            return None
        node = inputs[0]
    return None


def _graph_findings(model: nn.Module, names: dict[int, str], report: DoctorReport) -> None:
    """Redundant bias before BN, BN right after an activation, and dropout before BN, read from the fx data
    flow."""
    trace = traced_graphs(model)
    for part in trace.parts:
        for node in part.graph.nodes:
            if node.op != "call_module":
                continue
            bn = part.module.get_submodule(node.target)
            if not is_batchnorm(bn) or not node.args:
                continue
            name = names.get(id(bn), str(node.target))
            source = node.args[0]
            dropout = _dropout_upstream(source, part.module)
            if dropout is not None:
                report.findings.append(Finding(
                    name, "dropout-before-batchnorm", "warning",
                    f"dropout {dropout} feeds it: in training dropout scales the variance of what this layer "
                    f"normalizes, in eval it does not, so the running variance does not fit eval inputs (the "
                    f"variance shift of Li et al. 2019)",
                    "move the dropout after the last batch norm (before the classifier), or recalibrate() the "
                    "statistics with dropout off"))
            if _is_activation(source, part.module):
                what = source.target if source.op == "call_module" else getattr(source.target, "__name__",
                                                                                  source.target)
                report.findings.append(Finding(
                    name, "after-activation", "info",
                    f"its input is the output of the activation {what}; the paper normalizes before the "
                    f"nonlinearity (conv-BN-act), and only then can BN be folded into the conv",
                    "fine if intended (both orders train); move BN before the activation to fold it for inference"))
            if isinstance(source, torch.fx.Node) and source.op == "call_module":
                producer = part.module.get_submodule(source.target)
                if isinstance(producer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                         nn.ConvTranspose3d, nn.Linear)) and producer.bias is not None \
                        and len(source.users) == 1:
                    producer_name = f"{part.path}.{source.target}" if part.path else str(source.target)
                    report.findings.append(Finding(
                        name, "redundant-bias", "info",
                        f"{producer_name} has a bias, which the batch norm's mean subtraction cancels (a wasted "
                        f"parameter; beta already plays its role)",
                        f"construct {producer_name} with bias=False"))


def _static_findings(name: str, bn: nn.Module, report: DoctorReport, dead_gamma: float, max_momentum: float):
    momentum = getattr(bn, "momentum", None)
    if isinstance(momentum, (int, float)) and momentum > max_momentum:
        report.findings.append(Finding(
            name, "momentum-convention", "warning",
            f"momentum={momentum:g} is the weight of the NEW batch in PyTorch, so the running statistics are "
            f"almost only the last batch's (noisy); {momentum:g} looks like Keras/TensorFlow/Flax's decay convention",
            f"use momentum={1 - momentum:.3g} (= 1 - {momentum:g}), or momentum=None with recalibrate()"))
    weight = getattr(bn, "weight", None)
    if weight is not None:
        gamma = weight.detach().abs()
        dead = int((gamma < dead_gamma).sum())
        if dead:
            report.findings.append(Finding(
                name, "dead-channels", "warning",
                f"{dead} of {gamma.numel()} channel(s) have |gamma| < {dead_gamma:g}: they output the constant beta",
                "prune them (move beta into the next layer's bias) or re-initialize them; zero-initialized gamma "
                "(residual trick) is expected only before training"))
    running_mean, running_var = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
    if isinstance(running_mean, torch.Tensor) and isinstance(running_var, torch.Tensor):
        bad = ~(torch.isfinite(running_mean.detach()) & torch.isfinite(running_var.detach()))
        if bool(bad.any()):
            report.findings.append(Finding(
                name, "nonfinite-statistics", "error",
                f"{int(bad.sum())} of {bad.numel()} channel(s) have a NaN or inf running_mean/running_var "
                f"(channels {_first_channels(bad)}): every eval output of those channels is NaN or inf",
                "recalibrate(model, data) on finite data, or reload a checkpoint saved before the statistics broke"))
        degenerate = torch.isfinite(running_var.detach()) & (running_var.detach() <= 0)
        if bool(degenerate.any()):
            report.findings.append(Finding(
                name, "degenerate-variance", "error",
                f"{int(degenerate.sum())} of {degenerate.numel()} channel(s) have running_var <= 0 (channels "
                f"{_first_channels(degenerate)}): eval divides by sqrt(eps) = {math.sqrt(float(bn.eps)):.3g} there",
                "recalibrate(model, data); a running_var <= 0 never comes from training (variances are >= 0 and "
                "the default is 1): check code that writes the buffers"))
    if running_mean is None:
        report.findings.append(Finding(
            name, "batch-statistics-in-eval", "info",
            "track_running_stats=False: in eval mode it normalizes with the batch's own statistics, so an output "
            "depends on the other samples of its batch",
            "track_running_stats=True (and recalibrate) if inference must be per-sample"))


def _first_channels(flags: torch.Tensor) -> str:
    indices = flags.nonzero().flatten().tolist()
    return ", ".join(map(str, indices[:5])) + (f" (+{len(indices) - 5} more)" if len(indices) > 5 else "")


def _train_mode_copy(model: nn.Module) -> nn.Module:
    """A copy with batch norms in training mode and everything else in eval (dropout off)."""
    twin = copy.deepcopy(model).eval()
    for module in twin.modules():
        if is_batchnorm(module) and not is_frozen(module):
            module.train()
    return twin


def _labels(batch):
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
        labels = batch[1]
        if labels.dim() == 1 and not labels.is_floating_point():
            return labels
    return None


def doctor(model: nn.Module, data=None, *, num_batches: int | None = 20, forward: Callable | None = None,
           min_batch: int = 8, min_values: int = 32, max_shift: float = 0.5, max_var_ratio: float = 2.0,
           max_output_mismatch: float = 0.3, max_accuracy_drop: float = 0.05, dead_gamma: float = 1e-4,
           max_momentum: float = 0.5) -> DoctorReport:
    r"""Examine every batch-norm layer and report the mistakes that silently hurt accuracy.

    Checks without data: running statistics that are NaN/inf or a `running_var` <= 0 (errors: eval output is
    NaN or scaled by up to 1/sqrt(eps)), momentum in another framework's convention (> `max_momentum`), dead
    channels (``|gamma| < dead_gamma``), a dropout that feeds the batch norm through single-input layers (warning:
    the train/eval variance shift of Li et al. 2019), a redundant bias in the Conv/Linear feeding BN, BN right
    after an activation (informational), layers without running statistics (informational). The dropout, bias
    and activation checks read the fx data flow.
    With data (batches like those used in training): batches that give a layer NaN/inf values (error; the other
    checks leave them out); the effective normalization batch
    m = N x spatial values per channel of the largest batch (warning when N < `min_batch` or m < `min_values`,
    error when m < 4 or when any batch gives a single value per channel);
    running statistics against the precise statistics of the data, as the shift

    .. math:: z = \max_c \frac{|\mu^{running}_c - \mu^{data}_c|}{\sqrt{\sigma^{2,data}_c + \epsilon}}, \qquad
              r = \max_c \left|\log \frac{\sigma^{2,running}_c + \epsilon}{\sigma^{2,data}_c + \epsilon}\right|

    (warning when z > `max_shift` or e^r > `max_var_ratio`); and train vs eval mode outputs on the data, as
    ``||y_train - y_eval|| / ||y_eval||`` (warning above `max_output_mismatch`), plus the accuracy drop when the
    batches are (inputs, integer labels) and the model outputs (N, classes) (warning above
    `max_accuracy_drop` and above sampling noise, 3 binomial standard errors). The model is not modified
    (every check runs on a copy).

    Args:
        model: the model.
        data: None, or an iterable of batches (tensor, (inputs, labels) tuple/list, dict) or one tensor.
        num_batches: 20; the number of batches used (None = all).
        forward: None, or `forward(model, batch)` to call the model on a batch of another form.
        min_batch: 8; warn when the largest batch has fewer samples.
        min_values: 32; warn when a channel sees fewer values (N x spatial) per batch.
        max_shift: 0.5; warn when the running mean is further from the data's mean (in data standard deviations).
        max_var_ratio: 2.0; warn when running and data variances differ by a larger factor.
        max_output_mismatch: 0.3; warn when train- and eval-mode outputs differ by more (relative norm).
        max_accuracy_drop: 0.05; warn when eval-mode accuracy is lower by more (and above sampling noise).
        dead_gamma: 1e-4; channels with a smaller ``|gamma|`` are reported dead.
        max_momentum: 0.5; a larger momentum is reported as another framework's convention.

    Returns:
        A `DoctorReport` (print it for the table).

    Shape: any.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``data`` yields no batches.

    Example:
        >>> import torch
        >>> from batchnorm.tools import doctor
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8, momentum=0.9))
        >>> report = doctor(model, torch.randn(16, 3, 8, 8))
        >>> [(finding.check, finding.severity) for finding in report.findings][:3]
        [('momentum-convention', 'warning'), ('stale-statistics', 'warning'), ('redundant-bias', 'info')]

    References:
        Wu & Johnson 2021, arXiv 2105.07576 (batch size and population statistics); Ioffe & Szegedy 2015,
        arXiv 1502.03167; Li et al. 2019, "Understanding the Disharmony between Dropout and Batch Normalization
        by Variance Shift", arXiv 1801.05134.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"doctor expected model to be a torch.nn.Module, got {type(model).__name__}")
    report = DoctorReport()
    work = copy.deepcopy(model)
    named = [(name, module) for name, module in work.named_modules() if is_batchnorm(module)]
    names = {id(module): name for name, module in named}
    report.layers = [(name, type(module).__name__) for name, module in named]
    for name, module in named:
        _static_findings(name, module, report, dead_gamma, max_momentum)
    _graph_findings(work, names, report)
    if data is not None and named:
        _data_findings(model, data, num_batches, forward, report, min_batch, min_values, max_shift, max_var_ratio,
                       max_output_mismatch, max_accuracy_drop)
    order = {name: i for i, (name, _) in enumerate(report.layers + [("(model)", "")])}
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    report.findings.sort(key=lambda f: (order.get(f.layer, len(order)), rank[f.severity]))
    return report


def _data_findings(model, data, num_batches, forward, report, min_batch, min_values, max_shift, max_var_ratio,
                   max_output_mismatch, max_accuracy_drop) -> None:
    used = []
    for batch in batches(data):
        if num_batches is not None and len(used) >= num_batches:
            break
        used.append(batch)
    if not used:
        raise ValueError("doctor got data that yielded no batches: pass an iterable of input batches")
    run = forward or call_model

    # 1. shapes seen by each layer and precise statistics, in one training-mode pass on a copy
    twin = _train_mode_copy(model)
    shapes: dict[str, list[tuple[int, int]]] = {}
    handles = []
    for name, module in twin.named_modules():
        if is_batchnorm(module):
            def hook(mod, inputs, key=name):
                x = inputs[0]
                shapes.setdefault(key, []).append((int(x.shape[0]), int(x.numel() // max(1, x.shape[1]))))
            handles.append(module.register_forward_pre_hook(hook))
    with_stats = {name for name, module in twin.named_modules()
                  if is_batchnorm(module) and getattr(module, "running_mean", None) is not None}
    try:
        moments, _, _, skipped = precise_statistics(twin, used, forward=run, layers=with_stats, skip_nonfinite=True,
                                                    where="doctor")
    finally:
        for handle in handles:
            handle.remove()

    if skipped:
        first_batch, first_layer = skipped[0]
        report.findings.append(Finding(
            first_layer, "nonfinite-input", "error",
            f"{len(skipped)} of {len(used)} batch(es) give NaN or inf values to this layer or a later one (first: "
            f"batch {first_batch}, counting from 0); the checks below leave them out",
            "remove the NaN/inf from the data (or find the layer that produces them); recalibrate refuses such "
            "batches"))
        bad = {index for index, _ in skipped}
        used = [batch for index, batch in enumerate(used) if index not in bad]

    for name, _ in report.layers:
        seen = shapes.get(name)
        if not seen:
            continue
        largest_n = max(n for n, _ in seen)
        values = max(v for _, v in seen)
        smallest = min(v for _, v in seen)
        report.measured.setdefault(name, {}).update(batch=largest_n, values_per_channel=values)
        if smallest < 2:
            report.findings.append(Finding(
                name, "small-batch", "error",
                f"a batch gives it {smallest} value per channel: training-mode batch norm is undefined there",
                "drop the last incomplete batch (DataLoader(drop_last=True)) or use a larger batch"))
        elif values < 4 or largest_n < min_batch or values < min_values:
            severity = "error" if values < 4 else "warning"
            report.findings.append(Finding(
                name, "small-batch", severity,
                f"normalizes over N={largest_n} sample(s) x spatial = {values} value(s) per channel: batch "
                f"statistics this small are noisy and differ from the population statistics used in eval",
                "a larger batch, SyncBatchNorm across processes, FrozenBatchNorm for fine-tuning, or GroupNorm "
                "(convert(model, to='groupnorm', num_groups=...))"))

    # 2. running statistics vs precise statistics of the data
    originals = dict(model.named_modules())
    for name in sorted(with_stats):
        module = originals[name]
        stats = moments[name]
        if float(stats.count) < 2:
            continue
        eps = float(module.eps)
        precise_var = stats.m2 / (stats.count - 1)
        running_mean = module.running_mean.detach().to(torch.float64)
        running_var = module.running_var.detach().to(torch.float64)
        if not bool(torch.isfinite(running_mean).all() and torch.isfinite(running_var).all()):
            continue                                    # reported as nonfinite-statistics
        shift = ((running_mean - stats.mean).abs() / torch.sqrt(precise_var + eps))
        log_ratio = torch.log((running_var.clamp_min(0) + eps) / (precise_var + eps)).abs()
        worst_shift, worst_ratio = float(shift.max()), math.exp(float(log_ratio.max()))
        report.measured.setdefault(name, {}).update(shift_std=worst_shift, var_ratio=worst_ratio)
        if worst_shift > max_shift or worst_ratio > max_var_ratio:
            channel = int(torch.argmax(shift)) if worst_shift > max_shift else int(torch.argmax(log_ratio))
            severity = "error" if worst_shift > 3 * max_shift or worst_ratio > max_var_ratio ** 3 else "warning"
            report.findings.append(Finding(
                name, "stale-statistics", severity,
                f"running statistics are off the data's by up to {worst_shift:.2f} standard deviations in the mean "
                f"and a factor {worst_ratio:.2f} in the variance (worst channel {channel})",
                "recalibrate(model, data) (precise statistics; on target-domain data this is AdaBN)"))

    # 3. train vs eval mode on the same batches
    eval_model = copy.deepcopy(model).eval()
    train_model = _train_mode_copy(model)
    difference, norm, correct_train, correct_eval, labelled = 0.0, 0.0, 0, 0, 0
    with torch.no_grad():
        for batch in used:
            y_eval, y_train = run(eval_model, batch), run(train_model, batch)
            if not (isinstance(y_eval, torch.Tensor) and isinstance(y_train, torch.Tensor)):
                return
            difference += float(((y_train.double() - y_eval.double()) ** 2).sum())
            norm += float((y_eval.double() ** 2).sum())
            labels = _labels(batch)
            if labels is not None and y_eval.dim() == 2 and y_eval.shape[0] == labels.shape[0]:
                correct_eval += int((y_eval.argmax(1) == labels).sum())
                correct_train += int((y_train.argmax(1) == labels).sum())
                labelled += labels.shape[0]
    mismatch = math.sqrt(difference / norm) if norm > 0 else math.sqrt(difference)
    report.measured["(model)"] = {"output_mismatch": mismatch}
    if labelled:
        report.measured["(model)"].update(train_accuracy=correct_train / labelled,
                                          eval_accuracy=correct_eval / labelled)
    drop = (correct_train - correct_eval) / labelled if labelled else 0.0
    # an accuracy drop counts only beyond sampling noise: 3 binomial standard errors of the training accuracy
    if labelled:
        accuracy = correct_train / labelled
        noise = 3.0 * math.sqrt(max(accuracy * (1.0 - accuracy), 1.0 / labelled) / labelled)
        drop = drop if drop > noise else 0.0
    if mismatch > max_output_mismatch or drop > max_accuracy_drop:
        detail = f"||y_train - y_eval|| / ||y_eval|| = {mismatch:.3f}"
        if labelled:
            detail += (f"; accuracy {correct_train / labelled:.3f} with batch statistics vs "
                       f"{correct_eval / labelled:.3f} in eval")
        report.findings.append(Finding(
            "(model)", "train-eval-mismatch", "warning",
            f"the model computes something else in eval than in training on this data: {detail}",
            "recalibrate the running statistics on training-like data; if it persists, the batches are too small or "
            "not i.i.d. (see small-batch)"))
