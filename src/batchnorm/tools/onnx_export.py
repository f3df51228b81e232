"""Export a model to ONNX with its batch norms folded away (the ones that can be), for inference runtimes."""

from __future__ import annotations

import copy
import inspect
import io
import os
import warnings

import torch
from torch import nn

from .._atomic import atomic_path
from ._common import activation_of, is_batchnorm, is_ours, replace_everywhere
from .convert import _as_batchnorm, convert
from .fold import FoldReport, behaves_affine, fold

__all__ = ["export_onnx"]


def export_onnx(model: nn.Module, example_inputs, path, *, fold_batchnorm: bool = True, opset_version: int = 18,
                dynamic_batch: bool = True) -> FoldReport | None:
    r"""Export `model` in eval mode to an ONNX file, folding its batch norms into the layers before them first.

    Folding (`fold`) removes every foldable batch norm,
    W' = W gamma / sqrt(var + eps), b' = (b - mean) gamma / sqrt(var + eps) + beta, so the graph has no
    `BatchNormalization` node for them; the batch norms that cannot be folded (listed in the returned report)
    are exported as ONNX `BatchNormalization` (this package's layers are converted to torch's for the export,
    same numbers). Uses torch's TorchScript-based exporter (`dynamo=False`), which needs no extra packages.

    Args:
        model: the model; not modified (the export runs on an eval-mode copy).
        example_inputs: a tensor or a tuple of positional input tensors, used to trace the export.
        path: the output file (str or os.PathLike, written atomically: a failed export leaves it untouched;
            or a binary file object).
        fold_batchnorm: True; False exports the batch norms as they are.
        opset_version: 18.
        dynamic_batch: True: the first dimension of every input and output is symbolic ("batch").

    Returns:
        The `FoldReport` of the folding (None when `fold_batchnorm=False`).

    Shape: as the model's.

    Example:
        >>> import os, tempfile
        >>> import onnxruntime, torch
        >>> from batchnorm.tools import export_onnx
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
        >>> x = torch.randn(2, 3, 16, 16)
        >>> path = os.path.join(tempfile.mkdtemp(), "model.onnx")
        >>> report = export_onnx(net, x, path)
        >>> len(report.folded)                    # no BatchNormalization node left
        1
        >>> session = onnxruntime.InferenceSession(path)
        >>> (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        >>> bool(abs(out - net(x).detach().numpy()).max() < 1e-4)
        True

    References:
        Jacob et al. 2018, arXiv 1712.05877: batch-norm folding for inference.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx expected model to be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike, io.IOBase)):
        raise TypeError(f"export_onnx expected path to be a file name, got {type(path).__name__}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("export_onnx expected example_inputs to be a tensor or a tuple of tensors, got "
                        f"{type(example_inputs).__name__}: pass e.g. torch.randn(1, 3, 224, 224)")
    work = copy.deepcopy(model).eval()
    report = None
    if fold_batchnorm:
        work, report = fold(work, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the convert warnings list variants left as they are
        work = convert(work, to="torch").eval()   # our remaining layers: torch's (exportable) equivalents
    _replace_remaining_variants(work)
    input_names = [f"input{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    with torch.no_grad():
        outputs = work(*inputs)
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    output_names = [f"output{i}" if count > 1 else "output" for i in range(count)]
    dynamic_axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        options = dict(input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                       opset_version=opset_version, dynamo=False, do_constant_folding=True)
        if isinstance(path, io.IOBase):
            torch.onnx.export(work, inputs, path, **options)
        else:
            with atomic_path(path) as temporary:       # a failed export leaves an existing file untouched
                torch.onnx.export(work, inputs, temporary, **options)
    return report


def _replace_remaining_variants(model: nn.Module) -> None:
    """Our batch-norm variants left after `convert`: torch's BatchNorm (+ activation) when that is what they
    compute in eval mode (checked numerically), so that the exporter sees standard operators."""
    for name, module in list(model.named_modules()):
        if not (is_batchnorm(module) and is_ours(module)) or getattr(module, "running_mean", None) is None:
            continue
        dims = 1 if isinstance(module, nn.BatchNorm1d) else 2 if isinstance(module, nn.BatchNorm2d) else \
            3 if isinstance(module, nn.BatchNorm3d) else None
        if dims is None:
            continue
        activation, description = activation_of(module)
        if activation is None and description:
            continue
        required = [p for p in inspect.signature(module.forward).parameters.values() if p.default is p.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        residual = len(required) == 2                       # BN + add + activation: forward(x, residual)
        if not behaves_affine(module, 0 if dims == 1 else dims, activation, residual)[0]:
            continue
        plain = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        replacement = _as_batchnorm(module, plain, False).eval()
        if residual:
            replacement = _NormAddActivation(replacement, activation if activation is not None else nn.Identity())
        elif activation is not None:
            replacement = nn.Sequential(replacement, activation)
        replace_everywhere(model, module, replacement)


class _NormAddActivation(nn.Module):
    """activation(norm(x) + residual) with standard operators (the export form of our BN + add + activation)."""

    def __init__(self, norm: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.norm, self.activation = norm, activation

    def forward(self, input: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(input) + residual)
