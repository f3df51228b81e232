"""Compatibility suite: every case of `compat_cases.CASES` on torch's layers (the control) and on ours.

Ours must give torch's outcome: values within the drop-in tolerance, or an exception that is an instance of the
type torch raised. Cases without a control assert their documented outcome. The generated docs page must match
the case list.
"""

from __future__ import annotations

import os

import pytest
import torch

import batchnorm.nn as bnn
from helpers.cases import relative_error
from helpers.compat_cases import CASES, render_markdown

DROP_IN_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 2e-2}


def _outcome(probe, nn, seed: int):
    torch.manual_seed(seed)
    try:
        return probe(nn), None
    except Exception as error:  # the outcome under test
        return None, error


def _flatten(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for key in sorted(value) for t in _flatten(value[key])]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _flatten(item)]
    return [torch.tensor(float(value))]


def _assert_close(ours, theirs, name: str) -> None:
    ours, theirs = _flatten(ours), _flatten(theirs)
    assert len(ours) == len(theirs), f"{name}: {len(ours)} results vs torch's {len(theirs)}"
    for i, (a, b) in enumerate(zip(ours, theirs)):
        a, b = a.detach(), b.detach()
        assert a.shape == b.shape, f"{name} result {i}: shape {tuple(a.shape)} vs torch's {tuple(b.shape)}"
        finite = torch.isfinite(b)
        assert torch.equal(finite, torch.isfinite(a)), f"{name} result {i}: non-finite positions differ"
        assert torch.equal(a[~finite].nan_to_num(), b[~finite].nan_to_num()), f"{name} result {i}: inf/NaN differ"
        tolerance = DROP_IN_TOLERANCE.get(b.dtype, 1e-4) if b.is_floating_point() else 0.0
        error = relative_error(a[finite], b[finite]) if finite.any() else 0.0
        assert error <= tolerance, f"{name} result {i}: relative error {error:.3g} > {tolerance}"


@pytest.mark.parametrize("case", [c for c in CASES if c.control], ids=str)
def test_same_outcome_as_torch(case):
    theirs, their_error = _outcome(case.probe, torch.nn, 0)
    ours, our_error = _outcome(case.probe, bnn, 0)
    if their_error is not None:
        assert our_error is not None, f"{case.name}: torch raises {their_error!r}, ours returned a result"
        assert isinstance(our_error, type(their_error)), (
            f"{case.name}: torch raises {type(their_error).__name__}, ours {type(our_error).__name__}: {our_error}")
        return
    assert our_error is None, f"{case.name}: torch succeeds, ours raises {our_error!r}"
    _assert_close(ours, theirs, case.name)


@pytest.mark.parametrize("case", [c for c in CASES if not c.control], ids=str)
def test_own_outcome(case):
    result, error = _outcome(case.probe, bnn, 0)
    if case.expect == "passes":
        assert error is None, f"{case.name}: {error!r}"
        return
    expected = {"RuntimeError": RuntimeError, "ValueError": ValueError}[case.expect]
    assert isinstance(error, expected), f"{case.name}: expected {case.expect}, got {error!r}"
    assert str(error), f"{case.name}: the error needs a message"

def test_docs_page_matches_cases():
    path = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "docs", "compatibility.md")
    with open(path) as f:
        assert f.read() == render_markdown(), ("docs/compatibility.md is stale: regenerate it with "
                                               "`python tests/helpers/compat_cases.py > docs/compatibility.md`")


def test_scripted_layer_checks_rank():
    scripted = torch.jit.script(bnn.BatchNormAct2d(3))
    with pytest.raises(torch.jit.Error, match="expected a 4-D to 4-D input, got 3-D"):
        scripted(torch.randn(4, 3, 5))


def test_scripting_shares_parameters_and_buffers():
    layer = bnn.BatchNormAct1d(3, activation="silu")
    scripted = torch.jit.script(layer)
    scripted(torch.randn(8, 3, 2)).sum().backward()
    assert layer.weight.grad is not None and int(layer.num_batches_tracked) == 1
    assert list(scripted.state_dict()) == list(layer.state_dict())


# (masked BatchNorm1d selects the valid positions by boolean indexing, a data-dependent shape that fake and meta
# tensors cannot propagate: documented as not supported there)
_EVERY_LAYER = {
    "BatchNorm1d": (lambda: bnn.BatchNorm1d(3), (4, 3, 5), False),
    "BatchNorm2d-ghost": (lambda: bnn.BatchNorm2d(3, virtual_batch_size=2), (4, 3, 2, 2), False),
    "BatchNorm3d": (lambda: bnn.BatchNorm3d(3), (2, 3, 2, 2, 2), False),
    "BatchNormAct2d": (lambda: bnn.BatchNormAct2d(3, activation="gelu"), (4, 3, 2, 2), False),
    "BatchNormAddAct2d": (lambda: bnn.BatchNormAddAct2d(3), (4, 3, 2, 2), False),
    "InPlaceABN2d": (lambda: bnn.InPlaceABN2d(3), (4, 3, 2, 2), False),
    "BatchRenorm2d": (lambda: bnn.BatchRenorm2d(3, warmup_steps=0, rmax_steps=0, dmax_steps=0), (4, 3, 2, 2),
                      False),
    "FrozenBatchNorm2d": (lambda: bnn.FrozenBatchNorm2d(3), (4, 3, 2, 2), False),
    "SyncBatchNorm": (lambda: bnn.SyncBatchNorm(3), (4, 3, 2), False),
}


@pytest.mark.parametrize("name", sorted(_EVERY_LAYER))
@pytest.mark.parametrize("mode", ["fake", "meta"])
def test_every_layer_propagates_shapes_on_fake_and_meta_tensors(name, mode):
    from torch._subclasses.fake_tensor import FakeTensorMode

    make, shape, masked = _EVERY_LAYER[name]
    torch.manual_seed(0)
    x_real = torch.randn(shape)
    extra = ((torch.rand(shape[0], shape[2]) > 0.3,) if masked else
             (torch.randn(shape),) if name.startswith("BatchNormAddAct") else ())
    expected = make()(x_real.clone(), *extra)
    if mode == "meta":
        layer = make().to("meta")
        y = layer(x_real.to("meta"), *[t.to("meta") for t in extra])
        assert y.device.type == "meta"
    else:
        with FakeTensorMode(allow_non_fake_inputs=True) as fake_mode:
            layer = make()
            y = layer(fake_mode.from_tensor(x_real), *[fake_mode.from_tensor(t) for t in extra])
    assert y.shape == expected.shape and y.dtype == expected.dtype


@pytest.mark.parametrize("make, extra", [
    (lambda: bnn.BatchNorm2d(3, virtual_batch_size=2), {}),
    (lambda: bnn.BatchRenorm2d(3), {}),
    (lambda: bnn.BatchNorm1d(3), {"mask": True}),
])
def test_variants_refuse_running_buffers_that_require_grad_as_torch_does(make, extra):
    layer = make()
    layer.running_var.requires_grad_(True)
    x = torch.randn(4, 3, 5) if extra else torch.randn(4, 3, 2, 2)
    before = [b.detach().clone() for b in layer.buffers()]
    kwargs = {"mask": torch.rand(4, 5) > 0.3} if extra else {}
    with pytest.raises(RuntimeError, match="not differentiable with respect to running_var.*requires_grad_\\(False\\)"):
        layer(x, **kwargs)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, layer.buffers()))   # nothing updated
