"""The error catalogue: every ValueError/TypeError of the public API, triggered, checked, and written to docs/errors.md.

`CATALOGUE` lists one entry per error: the API, a snippet that triggers it, the exception type, and the pieces
the message must contain (the argument, the expected value or constraint, the actual value or shape). The tests

  * run every snippet and check the type and the pieces (`test_each_catalogued_error`);
  * find, by walking the traceback, the `raise` statement each snippet reached, and check that every
    `raise ValueError/TypeError` in the public modules (batchnorm.nn, batchnorm.functional, batchnorm.tools,
    batchnorm.distributed) is reached by some entry or listed in `NOT_TRIGGERED_HERE` with the test that covers
    it (`test_every_raise_site_is_catalogued`): a new raise without an entry fails;
  * regenerate docs/errors.md from the entries and the messages they produce, and compare it with the file
    (`test_docs_errors_md_is_up_to_date`): the document cannot drift.

Regenerate the document after adding an entry:  .venv/bin/python tests/robustness/test_errors_catalogue.py
"""

from __future__ import annotations

import ast
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchnorm.functional import ArgumentShapeError, BatchNormArgumentError, UnsupportedDtypeError

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "batchnorm"
DOC = ROOT / "docs" / "errors.md"
PUBLIC = ["nn/*.py", "functional/*.py", "tools/*.py", "distributed.py", "kernels/activations.py"]

SETUP = """\
import torch
from torch import nn
import batchnorm.nn as bnn
import batchnorm.functional as F
import batchnorm.tools as tools
import batchnorm.distributed as distributed
torch.manual_seed(0)
x = torch.randn(4, 3, 5, 5)
"""


@dataclass(frozen=True)
class Entry:
    api: str            # the public callable, as a user writes it
    code: str           # triggers the error (runs after SETUP)
    error: type         # ValueError or TypeError
    pieces: tuple       # substrings the message must contain: argument, expected, actual


E = Entry
CATALOGUE = [
    # ------------------------------------------------------------------------------ BatchNorm1d/2d/3d
    E("BatchNorm2d.forward", "bnn.BatchNorm2d(3)(torch.randn(4, 3, 5))", ValueError,
      ("BatchNorm2d", "(N, C, H, W)", "3-D input", "(4, 3, 5)")),
    E("BatchNorm2d.forward", "bnn.BatchNorm2d(64)(x)", ArgumentShapeError,
      ("num_features=64", "C=64", "(4, 3, 5, 5)", "channel dimension 3")),
    E("BatchNorm2d.forward", "bnn.BatchNorm2d(3)(torch.ones(4, 3, 5, 5, dtype=torch.int64))", UnsupportedDtypeError,
      ("floating-point", "float32", "dtype torch.int64")),
    E("BatchNorm2d(eps=)", "bnn.BatchNorm2d(3, eps=float('nan'))", ValueError,
      ("eps", "finite number > 0", "eps=nan")),
    E("BatchNorm2d(momentum=)", "bnn.BatchNorm2d(3, momentum=1.5)", ValueError,
      ("momentum", "[0, 1]", "momentum=1.5")),
    E("F.batch_norm", "F.batch_norm(x, torch.zeros(2), torch.ones(3))", ArgumentShapeError,
      ("running_mean", "3 elements", "not 2")),
    E("F.batch_norm", "F.batch_norm(x, torch.zeros(3, requires_grad=True), torch.ones(3))", BatchNormArgumentError,
      ("running_mean", "requires_grad=True", "not differentiable")),
    E("torch.jit.script(BatchNorm2d)", "torch.jit.script(bnn.BatchNorm2d(3, virtual_batch_size=2))", TypeError,
      ("torch.jit.script", "BatchNorm2d with virtual_batch_size=2", "torch.jit.trace")),
    E("torch.fx.symbolic_trace(BatchNorm2d)", "torch.fx.symbolic_trace(bnn.BatchNorm2d(3, freeze_stats=True))",
      TypeError, ("torch.fx", "BatchNorm2d itself as the root module", "call_module")),
    E("torch.fx.symbolic_trace(BatchRenorm2d)", "torch.fx.symbolic_trace(bnn.BatchRenorm2d(3))", TypeError,
      ("torch.fx", "BatchRenorm2d itself as the root module", "call_module")),
    E("BatchNorm1d(virtual_batch_size=)", "bnn.BatchNorm1d(3, virtual_batch_size=1)", ValueError,
      ("virtual_batch_size", ">= 2", "virtual_batch_size=1")),
    E("BatchNorm1d(virtual_batch_size=)", "bnn.BatchNorm1d(3, virtual_batch_size=2.5)", TypeError,
      ("virtual_batch_size", "integer >= 2", "2.5", "float")),
    E("BatchNorm2d(freeze_stats=)", "bnn.BatchNorm2d(3, freeze_stats='yes')", TypeError,
      ("freeze_stats", "bool", "'yes'", "str")),
    E("BatchNorm2d(freeze_stats=True, track_running_stats=False)",
      "bnn.BatchNorm2d(3, track_running_stats=False, freeze_stats=True)", ValueError,
      ("freeze_stats=True", "running statistics", "track_running_stats=False")),
    E("BatchNorm1d.forward(x, mask)", "bnn.BatchNorm1d(3)(torch.randn(4, 3, 6), [True] * 4)", TypeError,
      ("mask", "boolean torch.Tensor", "list")),
    E("BatchNorm1d.forward(x, mask)", "bnn.BatchNorm1d(3)(torch.randn(4, 3, 6), torch.ones(4, 6))", ValueError,
      ("mask", "torch.bool", "torch.float32")),
    E("BatchNorm1d.forward(x, mask)",
      "bnn.BatchNorm1d(3)(torch.randn(4, 3, 6), torch.ones(4, 5, dtype=torch.bool))", ValueError,
      ("mask", "(N, L) = (4, 6)", "(4, 5)")),
    E("BatchNorm1d.forward(x, mask)",
      "bnn.BatchNorm1d(3)(torch.randn(4, 3, 6), torch.ones(4, 6, dtype=torch.bool, device='meta'))", ValueError,
      ("mask", "device cpu", "meta")),
    E("BatchNorm1d.forward(x, mask)",
      "mask = torch.zeros(4, 6, dtype=torch.bool); mask[0, 0] = True\nbnn.BatchNorm1d(3)(torch.randn(4, 3, 6), mask)",
      ValueError, ("more than 1 valid value per channel", "single valid position")),
    E("BatchNorm2d(freeze_stats=True).forward",
      "bn = bnn.BatchNorm2d(3, freeze_stats=True); bn.running_mean = None\nbn(x)", ValueError,
      ("freeze_stats=True", "running_mean and running_var", "None")),
    E("BatchNorm2d(virtual_batch_size=).forward",
      "layer = bnn.BatchNorm2d(3, virtual_batch_size=2)\nlayer.eps = 0.0   # set after construction\nlayer(x)",
      ValueError, ("eps", "positive", "eps=0.0")),
    # ---------------------------------------------------------------------------- functional
    E("functional.batch_norm", "F.batch_norm(torch.randn(5), None, None, training=True)", ValueError,
      ("(N, C, *spatial)", "at least 2 dimensions", "(5,)")),
    E("functional.batch_norm", "F.batch_norm(torch.randn(1, 3), None, None, training=True)", ValueError,
      ("more than 1 value per channel", "(1, 3)")),
    E("functional.batch_norm", "F.batch_norm(x, None, None, training=True, eps=0.0)", ValueError,
      ("eps", "positive during training", "eps=0.0")),
    E("functional.batch_norm", "F.batch_norm(x, torch.zeros(3), torch.ones(3), training=False, eps=-1.0)",
      ValueError, ("eps", "non-negative", "eps=-1.0")),
    E("functional.batch_norm", "F.batch_norm(x, None, None, training=False)", ValueError,
      ("training=False", "running_mean and running_var", "None")),
    E("functional.batch_norm_add_act", "F.batch_norm_add_act(x, torch.randn(4, 3, 5, 4), None, None, training=True)",
      ValueError, ("residual", "(4, 3, 5, 5)", "(4, 3, 5, 4)")),
    # ------------------------------------------------------------------------ fused layers
    E("BatchNormAct2d(activation=)", "bnn.BatchNormAct2d(3, activation='tanh')", ValueError,
      ("activation='tanh'", "expected one of", "relu")),
    E("BatchNormAct2d(activation_param=)", "bnn.BatchNormAct2d(3, activation='leaky_relu', activation_param='0.1')",
      TypeError, ("activation_param", "float or None", "str '0.1'")),
    E("InPlaceABN2d(activation_param=)", "bnn.InPlaceABN2d(3, activation='leaky_relu', activation_param=0.0)",
      ValueError, ("activation_param", "> 0", "got 0.0")),
    E("InPlaceABN2d(min_abs_weight=)", "bnn.InPlaceABN2d(3, min_abs_weight=0)", ValueError,
      ("min_abs_weight", "> 0", "got 0")),
    E("InPlaceABN2d.forward", "bnn.InPlaceABN2d(3)(torch.randn(4, 3, 5, 5, requires_grad=True))", ValueError,
      ("input", "leaf tensor that requires grad")),
    E("InPlaceABN2d.forward",
      "a = torch.randn(4, 3, 5, 5, requires_grad=True)\nbnn.InPlaceABN2d(3)(torch.sigmoid(a))", ValueError,
      ("input", "SigmoidBackward0", "saved it for its own backward")),
    E("InPlaceABN2d.forward", "bnn.InPlaceABN2d(3)(torch.randn(4, 3, 5, 10)[..., ::2])", ValueError,
      ("dense (contiguous or channels_last)", "(4, 3, 5, 5)", "strides (150, 50, 10, 2)")),
    # ----------------------------------------------------------------------------- Batch Renorm, Frozen
    E("BatchRenorm2d(rmax=)", "bnn.BatchRenorm2d(3, rmax=0.5)", ValueError, ("rmax", ">= 1", "rmax=0.5")),
    E("BatchRenorm2d(dmax=)", "bnn.BatchRenorm2d(3, dmax=-1.0)", ValueError, ("dmax", ">= 0", "dmax=-1.0")),
    E("BatchRenorm2d(rmax_steps=)", "bnn.BatchRenorm2d(3, warmup_steps=100, rmax_steps=50)", ValueError,
      ("rmax_steps", ">= warmup_steps=100", "rmax_steps=50")),
    E("BatchRenorm2d.forward", "layer = bnn.BatchRenorm2d(3)\nlayer.eps = 0.0   # set after construction\nlayer(x)",
      ValueError, ("eps", "positive", "eps=0.0")),
    E("FrozenBatchNorm2d(eps=)", "bnn.FrozenBatchNorm2d(3, eps=-1e-5)", ValueError,
      ("eps", "finite number > 0", "eps=-1e-05")),
    E("FrozenBatchNorm2d(affine_trainable=)", "bnn.FrozenBatchNorm2d(3, affine=False, affine_trainable=True)",
      ValueError, ("affine_trainable=True", "affine=True", "affine=False")),
    E("FrozenBatchNorm2d.from_batchnorm",
      "bnn.FrozenBatchNorm2d.from_batchnorm(nn.BatchNorm2d(3, track_running_stats=False))", ValueError,
      ("running statistics", "BatchNorm2d", "track_running_stats=False")),
    # --------------------------------------------------------------------------------- SyncBatchNorm
    E("SyncBatchNorm.forward", "bnn.SyncBatchNorm(3)(torch.randn(5))", ValueError,
      ("(N, C, *)", "at least 2 dimensions", "(5,)")),
    E("SyncBatchNorm.forward", "bnn.SyncBatchNorm(8)(x)", ArgumentShapeError,
      ("num_features=8", "C=8", "(4, 3, 5, 5)", "channel dimension 3")),
    E("SyncBatchNorm.forward (distributed)",
      "distributed.is_active = lambda group=None: True   # as if 2 ranks were running\n"
      "layer = bnn.SyncBatchNorm(3)\nlayer.eps = 0.0   # set after construction\nlayer(x)", ValueError,
      ("eps", "positive during training", "eps=0.0")),
    E("convert_sync_batchnorm", "bnn.convert_sync_batchnorm({'bn': nn.BatchNorm2d(3)})", TypeError,
      ("torch.nn.Module", "dict")),
    E("distributed.merge_moments", "distributed.merge_moments(8, torch.zeros(3), torch.zeros(3))", TypeError,
      ("count", "torch.Tensor", "int")),
    E("distributed.merge_moments", "distributed.merge_moments(torch.tensor(8.0), torch.zeros(3), torch.zeros(4))",
      ValueError, ("mean and m2", "same shape (C,)", "(3,)", "(4,)")),
    E("distributed.merge_moments", "distributed.merge_moments(torch.ones(2), torch.zeros(3), torch.zeros(3))",
      ValueError, ("count", "() or (C,)=(3,)", "(2,)")),
    E("distributed.all_reduce_sum", "distributed.all_reduce_sum([1.0, 2.0])", TypeError,
      ("torch.Tensor", "list")),
    # ------------------------------------------------------------------------------- BNLSTM / LNLSTM
    E("BNLSTM(hidden_size=)", "bnn.BNLSTM(1, 0)", ValueError, ("hidden_size", "positive integer", "got 0")),
    E("BNLSTM(dropout=)", "bnn.BNLSTM(1, 8, dropout=1.5)", ValueError, ("dropout", "[0, 1]", "1.5")),
    E("LNLSTM(eps=)", "bnn.LNLSTM(1, 8, eps=0.0)", ValueError, ("eps", "positive finite", "0.0")),
    E("BNLSTM(batch_first=)", "bnn.BNLSTM(1, 8, batch_first=1)", ValueError, ("batch_first", "True or False", "1")),
    E("BNLSTM(gamma_init=)", "bnn.BNLSTM(1, 8, gamma_init=float('nan'))", ValueError,
      ("gamma_init", "finite number", "nan")),
    E("BNLSTM(momentum=)", "bnn.BNLSTM(1, 8, momentum=2.0)", ValueError, ("momentum", "[0, 1] or None", "2.0")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.zeros(5, 4, 1, dtype=torch.long))", ValueError,
      ("floating-point input", "torch.int64")),
    E("BNLSTM.forward", "bnn.BNLSTM(2, 8)(torch.randn(5, 4, 3))", ValueError,
      ("input_size=2", "2 features", "(5, 4, 3)")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.randn(5, 4, 1), torch.zeros(1, 4, 8))", ValueError,
      ("hx", "tuple (h_0, c_0)", "(1, 4, 8)", "Tensor")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.randn(5, 4, 1), (torch.zeros(1, 3, 8), torch.zeros(1, 4, 8)))",
      ValueError, ("hx", "h_0", "(1, 4, 8)", "(1, 3, 8)")),
    E("BNLSTM.forward",
      "bnn.BNLSTM(1, 8)(torch.randn(5, 4, 1), (torch.zeros(1, 4, 8, dtype=torch.float64), torch.zeros(1, 4, 8)))",
      ValueError, ("hx", "h_0", "torch.float32", "torch.float64")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.randn(5, 4, 1), lengths=torch.tensor([5.0, 4.0, 3.0, 2.0]))",
      ValueError, ("lengths", "integers", "torch.float32")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.randn(5, 4, 1), lengths=torch.ones(4, 1, dtype=torch.long))",
      ValueError, ("lengths", "1-D", "(4, 1)")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.randn(5, 4, 1), lengths=5)", ValueError,
      ("lengths", "1-D tensor or a sequence of integers", "int")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.randn(5, 4, 1), lengths=[5, 4, 3.5, 2])", ValueError,
      ("lengths", "integers", "[5, 4, 3.5, 2]")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.randn(5, 4, 1), lengths=[5, 4, 3])", ValueError,
      ("lengths", "one entry per sequence (batch=4)", "got 3")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.randn(5, 4, 1), lengths=[5, 4, 3, 9])", ValueError,
      ("lengths", "[1, 5]", "max 9")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.randn(5, 1, 1))", ValueError,
      ("at least 2 sequences", "got 1")),
    E("BNLSTM.forward",
      "packed = nn.utils.rnn.pack_sequence([torch.randn(3, 1), torch.randn(2, 1)])\n"
      "bnn.BNLSTM(1, 8)(packed, lengths=[3, 2])", ValueError, ("lengths", "None for a PackedSequence", "[3, 2]")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)([[0.0]])", TypeError, ("input", "Tensor or a PackedSequence", "list")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.randn(5, 4, 2, 1))", ValueError,
      ("(L, N, input_size)", "(5, 4, 2, 1)")),
    E("BNLSTM.forward", "bnn.BNLSTM(1, 8)(torch.randn(0, 4, 1))", ValueError,
      ("sequence length of at least 1", "(0, 4, 1)")),
    # -------------------------------------------------------------------------------------------- tools
    E("tools.fold", "tools.fold(nn.BatchNorm2d(3).state_dict())", TypeError,
      ("model", "torch.nn.Module", "OrderedDict")),
    E("tools.export_onnx", "tools.export_onnx(None, x, 'model.onnx')", TypeError,
      ("model", "torch.nn.Module", "NoneType")),
    E("tools.export_onnx", "tools.export_onnx(nn.BatchNorm2d(3), x, 42)", TypeError, ("path", "file name", "int")),
    E("tools.export_onnx", "tools.export_onnx(nn.BatchNorm2d(3), [], 'model.onnx')", TypeError,
      ("example_inputs", "tensor or a tuple of tensors", "list")),
    E("tools.recalibrate", "tools.recalibrate('resnet50', [x])", TypeError, ("model", "torch.nn.Module", "str")),
    E("tools.recalibrate", "tools.recalibrate(nn.BatchNorm2d(3), [x], num_batches=0)", ValueError,
      ("num_batches", "positive integer or None", "0")),
    E("tools.recalibrate", "tools.recalibrate(nn.BatchNorm2d(3), [x, x], num_batches=3)", ValueError,
      ("num_batches=3", "ran out after 2 batch(es)")),
    E("tools.recalibrate", "tools.recalibrate(nn.BatchNorm2d(3), [])", ValueError, ("data", "no batches")),
    E("tools.recalibrate", "tools.recalibrate(nn.BatchNorm2d(3), [42])", TypeError,
      ("batch", "a tensor, a (inputs, targets) tuple or list, or a dict", "got int")),
    E("tools.recalibrate", "bad = x.clone(); bad[3, 1, 2, 2] = float('nan')\n"
                           "tools.recalibrate(nn.Sequential(nn.BatchNorm2d(3)), [x[:2], bad[2:]])", ValueError,
      ("batch 1", "layer '0'", "non-finite statistics", "channel(s) 1", "skip_nonfinite=True")),
    E("tools.recalibrate", "big = torch.full((2, 3, 2, 2), 1e200, dtype=torch.float64)\n"
                           "tools.recalibrate(nn.Sequential(nn.BatchNorm2d(3).double()), [big, -big])", ValueError,
      ("layer '0'", "not finite", "overflow float64")),
    E("tools.freeze", "tools.freeze(42)", TypeError, ("model", "torch.nn.Module", "int")),
    E("tools.freeze", "tools.freeze(nn.BatchNorm2d(3), affine_trainable='no')", TypeError,
      ("affine_trainable", "True or False", "'no'")),
    E("tools.unfreeze", "tools.unfreeze(42)", TypeError, ("model", "torch.nn.Module", "int")),
    E("tools.convert", "tools.convert(nn.BatchNorm2d(3), to='layernorm')", ValueError,
      ("to='layernorm'", "expected one of", "groupnorm")),
    E("tools.convert", "tools.convert(42, to='torch')", TypeError, ("model", "torch.nn.Module", "int")),
    E("tools.convert", "tools.convert(nn.BatchNorm2d(6), to='groupnorm')", ValueError,
      ("num_groups", "positive integer", "num_groups=None")),
    E("tools.convert", "tools.convert(nn.BatchNorm2d(6), to='groupnorm', num_groups=4)", ValueError,
      ("num_groups", "divide the channels", "num_groups=4", "6 channels")),
    E("tools.fuse_activations", "tools.fuse_activations(42)", TypeError, ("model", "torch.nn.Module", "int")),
    E("tools.fuse_activations", "class Branchy(nn.Module):\n    def forward(self, x):\n"
                                "        return x if x.sum() > 0 else -x\n"
                                "tools.fuse_activations(Branchy())", ValueError,
      ("torch.fx can trace", "Branchy", "convert(model, to='batchnorm')")),
    E("tools.doctor", "tools.doctor('resnet50')", TypeError, ("model", "torch.nn.Module", "str")),
    E("tools.doctor", "tools.doctor(nn.BatchNorm2d(3), [])", ValueError, ("data", "no batches")),
]

# raise statements not reached in this process, with the test that triggers them (multi-process only).
NOT_TRIGGERED_HERE = {
    ("nn/sync.py", "expected more than 1 value per channel across the process group"):
        "needs >= 2 ranks holding one value per channel in total; tests/nn/test_sync.py runs real gloo ranks",
    ("nn/scripting.py", "expected a {self.min_dim}-D"):
        "raised inside TorchScript (as torch.jit.Error): tests/nn/test_compat.py::test_scripted_layer_checks_rank",
    ("distributed.py", "expected the same num_features on every rank"):
        "needs ranks with different channel counts: tests/robustness/test_faults.py::test_a_rank_with_a_different_channel_count",
    ("tools/recalibrate.py", "every rank must pass the same number of batches"):
        "needs ranks with different batch counts: tests/robustness/test_faults.py::test_recalibrate_across_ranks_never_hangs",
}


# ----------------------------------------------------------------------------------------- machinery
def _raise_sites() -> dict[tuple[str, int, int], str]:
    """(file relative to the package, first line, last line) -> source text of each `raise ValueError/TypeError`."""
    sites = {}
    for pattern in PUBLIC:
        for path in sorted(PACKAGE.glob(pattern)):
            source = path.read_text()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                        and isinstance(node.exc.func, ast.Name) and node.exc.func.id in ("ValueError", "TypeError"):
                    rel = path.relative_to(PACKAGE).as_posix()
                    sites[(rel, node.lineno, node.end_lineno)] = ast.get_source_segment(source, node)
    return sites


def trigger(entry: Entry) -> tuple[BaseException, tuple[str, int] | None]:
    """Run the entry's snippet in a fresh namespace; (the exception, (file, line) of the package frame that raised)."""
    import batchnorm.distributed as distributed

    namespace: dict = {}
    exec(SETUP, namespace)
    is_active = distributed.is_active
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(entry.code, namespace)
    except Exception as error:  # noqa: BLE001 - that is the point
        site = None
        for frame, line in traceback.walk_tb(error.__traceback__):
            path = Path(frame.f_code.co_filename).resolve()
            if PACKAGE in path.parents:
                site = (path.relative_to(PACKAGE).as_posix(), line)
        return error, site
    finally:
        distributed.is_active = is_active
    raise AssertionError(f"{entry.api}: {entry.code!r} raised nothing")


def render() -> str:
    """docs/errors.md from the catalogue and the messages the code produces now."""
    lines = [
        "# Error catalogue",
        "",
        "Every `ValueError` and `TypeError` that the public API (`batchnorm.nn`, `batchnorm.functional`,",
        "`batchnorm.tools`, `batchnorm.distributed`) raises, with a snippet that triggers it and the message it",
        "gives. Generated by `python tests/robustness/test_errors_catalogue.py` from the table in that file; the tests run every",
        "snippet, check that each message names the argument, the expected and the actual value, check that every",
        "`raise ValueError/TypeError` in those modules has an entry, and fail when this file is out of date.",
        "",
        "The snippets run after:",
        "",
        "```python",
        SETUP.rstrip(),
        "```",
        "",
        "The command-line tools (`batchnorm fold|recalibrate|doctor`) turn bad input into a one-line",
        "`batchnorm <command>: error: ...` message and exit code 2 instead (tests/tools/test_tools_cli.py,",
        "tests/robustness/test_faults.py).",
        "",
    ]
    for number, entry in enumerate(CATALOGUE, 1):
        error, _ = trigger(entry)
        lines += [f"## {number}. `{entry.api}`: {type(error).__name__}", "", "```python", entry.code, "```", "",
                  "```text", f"{type(error).__name__}: {error}", "```", ""]
    lines += ["## Raised only with several processes", ""]
    for (file, text), where in NOT_TRIGGERED_HERE.items():
        lines.append(f"- `batchnorm/{file}`: \"... {text} ...\" ({where}).")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("entry", CATALOGUE, ids=[f"{i + 1}-{e.api}" for i, e in enumerate(CATALOGUE)])
def test_each_catalogued_error(entry):
    error, site = trigger(entry)
    assert type(error) is entry.error, f"{entry.code!r} raised {type(error).__name__}: {error}"
    message = str(error)
    for piece in entry.pieces:
        assert piece in message, f"{piece!r} missing from the message: {message}"
    assert site is not None, "the error must come from the package's own validation"


def test_every_raise_site_is_catalogued():
    sites = _raise_sites()
    reached = set()
    for entry in CATALOGUE:
        _, site = trigger(entry)
        for (file, first, last) in sites:
            if site is not None and site[0] == file and first <= site[1] <= last:
                reached.add((file, first, last))
    exempt = {key for key, text in sites.items()
              if any(key[0] == file and fragment in text for (file, fragment) in NOT_TRIGGERED_HERE)}
    assert len(exempt) == len(NOT_TRIGGERED_HERE), "every NOT_TRIGGERED_HERE entry must match one raise"
    missing = sorted(set(sites) - reached - exempt)
    assert not missing, "raise statements without a catalogue entry:\n" + "\n".join(
        f"  batchnorm/{f}:{a}: {sites[(f, a, b)].splitlines()[0].strip()}" for f, a, b in missing)


def test_docs_errors_md_is_up_to_date():
    assert DOC.is_file(), "docs/errors.md is missing: run python tests/robustness/test_errors_catalogue.py"
    assert DOC.read_text() == render(), "docs/errors.md is out of date: run python tests/robustness/test_errors_catalogue.py"


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC} ({len(CATALOGUE)} errors)", file=sys.stderr)
