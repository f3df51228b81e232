"""NaN and Inf inputs: every layer, in every kernel layout, behaves as torch does (or as `skip_nonfinite` documents),
and never crashes or hangs.

For each layer family, layout (rows (N, C), NCL, NCHW, channels_last, NCDHW, a strided view), dtype (float32,
float64), kernel variant (serial, parallel), value (NaN, +inf, -inf) and placement (one element of one channel,
a whole channel, every element), a training step (output, input/weight/bias gradients, running statistics,
num_batches_tracked) and an eval step run on our layer and on torch's equivalent in float64 on the same values.
Where torch's result is NaN ours must be NaN, where it is +-inf ours must be the same infinity, and finite values
must agree to float32 rounding. Every test is bounded by a timeout (a hang fails).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import batchnorm.nn as bnn
from batchnorm.functional import torch_activation
from batchnorm.kernels import config

pytestmark = pytest.mark.timeout(120)

BAD = {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf")}
LAYOUTS = {  # name: (shape, memory layout)
    "rows": ((6, 4), "contiguous"),
    "ncl": ((4, 4, 5), "contiguous"),
    "nchw": ((3, 4, 3, 4), "contiguous"),
    "nhwc": ((3, 4, 3, 4), "channels_last"),
    "ncdhw": ((2, 4, 2, 3, 2), "contiguous"),
    "strided": ((3, 4, 3, 4), "strided"),
}
PLACEMENTS = ("one", "channel", "all")


@pytest.fixture(params=["serial", "parallel"])
def variant(request, monkeypatch):
    """The serial kernels, and again with every input routed to the parallel ones."""
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0 if request.param == "parallel" else 1 << 62)
    return request.param


def _poisoned(shape, bad: float, placement: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape) * 2.0 + 0.5
    if placement == "one":
        values[(1, 2) + (1,) * (len(shape) - 2)] = bad
    elif placement == "channel":
        values[:, 1] = bad
    else:
        values[...] = bad
    return values


def _layout(values: np.ndarray, dtype, layout: str) -> torch.Tensor:
    x = torch.from_numpy(values).to(dtype)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        big = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=dtype)
        big[..., ::2] = x
        return big[..., ::2]
    return x.clone()


def _same(name: str, ours: torch.Tensor, theirs: torch.Tensor, exact_kind: bool = True) -> None:
    """Non-finite where torch's is (the same kind, NaN or +-inf, when `exact_kind`), finite values close."""
    ours, theirs = ours.detach().to(torch.float64), theirs.detach().to(torch.float64)
    assert ours.shape == theirs.shape, name
    assert torch.equal(ours.isfinite(), theirs.isfinite()), f"{name}: non-finite where torch is finite, or the reverse"
    if exact_kind:
        assert torch.equal(ours.isnan(), theirs.isnan()), f"{name}: NaN where torch has +-inf, or the reverse"
        assert torch.equal(ours.isposinf(), theirs.isposinf()), f"{name}: infinities differ from torch's"
    finite = theirs.isfinite()
    assert torch.allclose(ours[finite], theirs[finite], rtol=1e-4, atol=1e-4), f"{name}: finite values differ"


def _torch_twin(ndim: int, c: int):
    return {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
            5: torch.nn.BatchNorm3d}[ndim](c).double()


FAMILIES = {
    # name: (constructor(ndim, c), activation applied after torch's BN, needs a residual, in place)
    "BatchNorm": (lambda ndim, c: _pick(ndim, bnn.BatchNorm1d, bnn.BatchNorm2d, bnn.BatchNorm3d)(c),
                  "identity", False, False),
    "BatchNormAct(silu)": (lambda ndim, c: _pick(ndim, bnn.BatchNormAct1d, bnn.BatchNormAct2d,
                                                 bnn.BatchNormAct3d)(c, activation="silu"), "silu", False, False),
    "BatchNormAct(relu)": (lambda ndim, c: _pick(ndim, bnn.BatchNormAct1d, bnn.BatchNormAct2d,
                                                 bnn.BatchNormAct3d)(c, activation="relu"), "relu", False, False),
    "BatchNormAddAct(relu)": (lambda ndim, c: _pick(ndim, bnn.BatchNormAddAct1d, bnn.BatchNormAddAct2d,
                                                    bnn.BatchNormAddAct3d)(c), "relu", True, False),
    "InPlaceABN(leaky_relu)": (lambda ndim, c: _pick(ndim, bnn.InPlaceABN1d, bnn.InPlaceABN2d, bnn.InPlaceABN3d)(c),
                               "leaky_relu", False, True),
    "InPlaceABN(elu)": (lambda ndim, c: _pick(ndim, bnn.InPlaceABN1d, bnn.InPlaceABN2d,
                                              bnn.InPlaceABN3d)(c, activation="elu"), "elu", False, True),
    "SyncBatchNorm": (lambda ndim, c: bnn.SyncBatchNorm(c), "identity", False, False),
    "BatchRenorm(warm-up)": (lambda ndim, c: _pick(ndim, bnn.BatchRenorm1d, bnn.BatchRenorm2d,
                                                   bnn.BatchRenorm3d)(c, momentum=0.1), "identity", False, False),
}
ACTIVATION_PARAM = {"identity": 0.0, "relu": 0.0, "silu": 0.0, "leaky_relu": 0.01, "elu": 1.0}


def _pick(ndim, one, two, three):
    return {2: one, 3: one, 4: two, 5: three}[ndim]


def _step(layer, x: torch.Tensor, dy: torch.Tensor, residual, in_place: bool, activation=None):
    """One forward and backward; (y, dx, dweight, dbias)."""
    leaf = x.detach().clone().requires_grad_(True)
    source = leaf * 1.0 if in_place else leaf
    if in_place and x.dim() >= 4 and not x.is_contiguous():
        source = source.contiguous(memory_format=torch.channels_last)
    y = layer(source, residual) if (residual is not None and activation is None) else layer(source)
    if activation is not None:    # torch's twin: BN, (+ residual), activation
        y = torch_activation(y + residual if residual is not None else y, activation, ACTIVATION_PARAM[activation])
    y.backward(dy)
    grads = (layer.weight.grad.clone(), layer.bias.grad.clone())
    layer.weight.grad = layer.bias.grad = None
    return y.detach(), leaf.grad, *grads


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("bad", list(BAD))
def test_nonfinite_input_behaves_like_torch(family, layout, bad, variant):
    build, activation, needs_residual, in_place = FAMILIES[family]
    if in_place and layout == "strided":
        layout = "nhwc"        # InPlaceABN refuses non-dense input (see docs/errors.md); test a dense layout
    shape, memory = LAYOUTS[layout]
    for dtype in (torch.float32, torch.float64):
        for placement in PLACEMENTS:
            values = _poisoned(shape, BAD[bad], placement, seed=len(family) + len(layout))
            rng = np.random.default_rng(3)
            dy = torch.from_numpy(rng.standard_normal(shape))
            residual = torch.from_numpy(rng.standard_normal(shape)) if needs_residual else None
            ours = build(len(shape), shape[1]).to(dtype)
            theirs = _torch_twin(len(shape), shape[1])
            with torch.no_grad():
                weight, bias = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
                for layer in (ours, theirs):
                    layer.weight.copy_(weight)
                    layer.bias.copy_(bias)
            where = f"{family} {layout} {dtype} {bad} {placement}"
            for training in (True, False):
                ours.train(training)
                theirs.train(training)
                got = _step(ours, _layout(values, dtype, memory), dy.to(dtype),
                            None if residual is None else residual.to(dtype), in_place)
                want = _step(theirs, _layout(values, torch.float64, memory), dy, residual, False, activation)
                if activation in ("relu", "elu"):
                    # In a channel where the pre-activations hold NaN, what ReLU's and ELU's backward give at the
                    # NaN is not defined by torch: sum(dy) or NaN depending on the layout (scalar vs vectorized
                    # loop), so dbias (and dweight) of that channel may be NaN or finite. Compare the others.
                    poisoned = want[0].isnan().transpose(0, 1).reshape(shape[1], -1).any(1)
                    got = (*got[:2], *(torch.where(poisoned, 0.0, g) for g in got[2:]))
                    want = (*want[:2], *(torch.where(poisoned, 0.0, g) for g in want[2:]))
                for name, a, b in zip(("y", "dx", "dweight", "dbias"), got, want):
                    _same(f"{where} train={training} {name}", a, b, exact_kind=name in ("y", "dx"))
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    # a +-inf input: torch's running_mean becomes +-inf, ours NaN (the statistics kernels sum
                    # around a shift taken from the data, inf - inf); both non-finite (see skip_nonfinite)
                    _same(f"{where} {name}", getattr(ours, name), getattr(theirs, name), exact_kind=False)


@pytest.mark.parametrize("layout", ["rows", "nchw", "nhwc", "strided"])
@pytest.mark.parametrize("bad", list(BAD))
def test_ghost_batchnorm_poisons_only_the_chunk_that_holds_the_bad_value(layout, bad):
    """Ghost BN (virtual_batch_size=2) with NaN/inf in sample 1: torch's BatchNorm on each chunk of 2 samples."""
    shape, memory = LAYOUTS[layout]
    shape = (4,) + shape[1:]
    for dtype in (torch.float32, torch.float64):
        values = _poisoned(shape, BAD[bad], "one", seed=5)
        ours = _pick(len(shape), bnn.BatchNorm1d, bnn.BatchNorm2d, bnn.BatchNorm3d)(shape[1], virtual_batch_size=2)
        ours = ours.to(dtype)
        x = _layout(values, dtype, memory).requires_grad_(True)
        y = ours(x)
        y.sum().backward()
        for start in (0, 2):
            twin = _torch_twin(len(shape), shape[1])
            chunk = _layout(values[start:start + 2], torch.float64, memory).requires_grad_(True)
            expected = twin(chunk)
            expected.sum().backward()
            _same(f"{layout} {dtype} chunk {start} y", y[start:start + 2], expected)
            _same(f"{layout} {dtype} chunk {start} dx", x.grad[start:start + 2], chunk.grad)
        assert torch.isfinite(y[2:]).all(), "the clean chunk stays finite"


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("bad", list(BAD))
def test_frozen_batchnorm_poisons_only_the_bad_elements(layout, bad):
    """Frozen statistics: each output depends on its own input only, as in torch's eval-mode BatchNorm."""
    shape, memory = LAYOUTS[layout]
    for dtype in (torch.float32, torch.float64):
        values = _poisoned(shape, BAD[bad], "one", seed=6)
        ours = _pick(len(shape), bnn.FrozenBatchNorm1d, bnn.FrozenBatchNorm2d, bnn.FrozenBatchNorm3d)(
            shape[1], affine_trainable=True).to(dtype).train()
        twin = _torch_twin(len(shape), shape[1]).eval()
        with torch.no_grad():
            for layer in (ours, twin):
                layer.running_mean.copy_(torch.linspace(-1, 1, shape[1]))
                layer.running_var.copy_(torch.linspace(0.5, 2, shape[1]))
        got = _step(ours, _layout(values, dtype, memory), torch.ones(shape, dtype=dtype), None, False)
        want = _step(twin, _layout(values, torch.float64, memory), torch.ones(shape, dtype=torch.float64), None,
                     False)
        for name, a, b in zip(("y", "dx", "dweight", "dbias"), got, want):
            _same(f"{layout} {dtype} {name}", a, b, exact_kind=name in ("y", "dx"))
        assert int(ours.num_batches_tracked) == 0


@pytest.mark.parametrize("layer", ["FrozenBatchNorm1d", "BatchNorm1d.eval"])
def test_eval_input_gradient_at_nonfinite_inputs(layer):
    """With running (fixed) statistics dx = gamma * inv_std * dy does not depend on x: finite even at a NaN input,
    as torch's (the kernels used to compute k_x * (x - mean) with k_x = 0, and 0 * NaN = NaN)."""
    ours = bnn.FrozenBatchNorm1d(3) if layer == "FrozenBatchNorm1d" else bnn.BatchNorm1d(3).eval()
    twin = torch.nn.BatchNorm1d(3).eval()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    x[1, 2] = float("nan")
    grads = []
    for module in (ours, twin):
        leaf = x.clone().requires_grad_(True)
        module(leaf).sum().backward()
        grads.append(leaf.grad)
    _same(layer, grads[0], grads[1])


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("momentum", [0.1, None])
def test_skip_nonfinite_keeps_the_running_statistics_and_warns_once(layout, bad, momentum, variant):
    """skip_nonfinite=True: the output is torch's, the buffers and the counter do not move, one warning."""
    shape, memory = LAYOUTS[layout]
    for dtype in (torch.float32, torch.float64):
        ours = _pick(len(shape), bnn.BatchNorm1d, bnn.BatchNorm2d, bnn.BatchNorm3d)(
            shape[1], momentum=momentum, skip_nonfinite=True).to(dtype)
        twin = _torch_twin(len(shape), shape[1])
        twin.momentum = momentum
        clean = np.random.default_rng(7).standard_normal(shape)
        for layer in (ours, twin):
            layer(_layout(clean, layer.running_mean.dtype, memory))          # one clean batch first
        before = {k: v.clone() for k, v in ours.state_dict().items()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                values = _poisoned(shape, BAD[bad], "one", seed=8)
                y = ours(_layout(values, dtype, memory))
                _same(f"{layout} {dtype} y", y, twin(_layout(values, torch.float64, memory)))
        messages = [w for w in caught if "non-finite statistics" in str(w.message)]
        assert len(messages) == 1 and messages[0].category is RuntimeWarning
        for key, value in ours.state_dict().items():
            assert torch.equal(value, before[key]), f"{key} changed on a non-finite batch"
        y = ours(_layout(clean * 2.0, dtype, memory))          # training goes on normally afterwards
        assert torch.isfinite(y).all() and int(ours.num_batches_tracked) == 2


@pytest.mark.parametrize("bad", list(BAD))
def test_masked_batchnorm_ignores_nonfinite_values_at_padded_positions(bad):
    """A NaN/inf at a padded (mask False) position changes nothing: output 0 there, statistics of valid values."""
    values = np.random.default_rng(9).standard_normal((3, 4, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    poisoned = values.copy()
    poisoned[1, :, 4:] = BAD[bad]
    for dtype in (torch.float32, torch.float64):
        results = []
        for data in (values, poisoned):
            layer = bnn.BatchNorm1d(4).to(dtype)
            x = torch.from_numpy(data).to(dtype).requires_grad_(True)
            y = layer(x, mask)
            y.sum().backward()
            results.append((y.detach(), x.grad, layer.running_mean.clone(), layer.running_var.clone()))
        for a, b in zip(*results):
            assert torch.isfinite(b).all() and torch.equal(a, b)
        assert torch.equal(results[1][0][1, :, 4:], torch.zeros(4, 2, dtype=dtype))


@pytest.mark.parametrize("bad", list(BAD))
def test_bnlstm_eval_keeps_nonfinite_inside_the_sequence_that_has_it(bad):
    """In eval (running statistics), a NaN/inf in one sequence leaves the others finite and as when run alone.

    Batched and alone run matrix products of different shapes, which may round differently (BLAS picks its
    kernels by shape and CPU): compare at 1e-12 in float64, far below what a leaked NaN/inf would do."""
    torch.manual_seed(0)
    lstm = bnn.BNLSTM(2, 5, max_length=4).double()
    lstm(torch.randn(4, 6, 2, dtype=torch.float64))      # a training step sets the running statistics
    lstm.eval()
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    poisoned = x.clone()
    poisoned[1, 0, 0] = BAD[bad]
    output, (h_n, c_n) = lstm(poisoned)
    alone, _ = lstm(x[:, 1:])
    assert torch.isfinite(output[:, 1:]).all() and torch.isfinite(alone).all()
    torch.testing.assert_close(output[:, 1:], alone, rtol=1e-12, atol=1e-12)
    if bad == "nan":          # (an infinity can saturate the gates and vanish; a NaN cannot)
        assert torch.isnan(output[1:, 0]).all()


@pytest.mark.parametrize("bad", list(BAD))
def test_bnlstm_training_with_nonfinite_input_does_not_crash(bad):
    torch.manual_seed(0)
    lstm = bnn.BNLSTM(2, 5, max_length=4).double()
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        x[2, 1, 1] = BAD[bad]
    output, (h_n, c_n) = lstm(x)
    output.sum().backward()
    assert output.shape == (4, 3, 5) and x.grad.shape == x.shape
    assert torch.isfinite(output[:2]).all(), "steps before the bad value are untouched"
