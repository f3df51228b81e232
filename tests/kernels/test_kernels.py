"""The Numba kernels and their dispatcher against the float64 NumPy reference and torch: every primitive and
fused entry point in both layouts, both dtypes, serial and parallel, stability, edge sizes and non-finite input."""

from __future__ import annotations

import importlib
import os
import time

import numba
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchnorm import functional, kernels
from batchnorm.testing import reference as ref
from batchnorm.functional.batch_norm import eager_eligible
from batchnorm.kernels import config, dispatch

# relative to the largest magnitude of the reference result
TOLERANCE = {torch.float64: 1e-11, torch.float32: 2e-5}
DTYPES = [torch.float64, torch.float32]
EPS = 1e-5


def _rel(ours, oracle) -> float:
    ours = np.asarray(ours.detach().numpy() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
    oracle = np.asarray(oracle, dtype=np.float64)
    assert ours.shape == oracle.shape
    return float(np.max(np.abs(ours - oracle), initial=0.0) / max(np.max(np.abs(oracle), initial=0.0), 1e-30))


def _input(shape, dtype, channels_last=False, seed=0, offset=0.0, scale=1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


def _per_channel(channels, dtype, seed, low=0.5):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(channels, generator=generator, dtype=dtype) + low,
            torch.randn(channels, generator=generator, dtype=dtype))


def _running(channels, dtype, seed):
    """Running buffers (mean, var) with a positive variance."""
    weight, bias = _per_channel(channels, dtype, seed, low=0.5)
    return bias, weight


def _np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy().copy()


def _bcast(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


@pytest.fixture(params=["serial", "parallel"])
def variant(request, monkeypatch):
    """Run a test on the serial kernels, and again with every input routed to the parallel ones."""
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0 if request.param == "parallel" else 1 << 62)
    return request.param


# ------------------------------------------------------------------------------------------ shapes
LAYOUTS = [  # (shape, channels_last)
    ((7, 5), False),            # rows (N, C)
    ((4, 6, 9), False),         # NCL
    ((3, 10, 5, 4), False),     # NCHW, enough channels for the per-channel fused sweep
    ((3, 2, 5, 7), False),      # NCHW with fewer channels than the fused sweep wants (split path)
    ((2, 3, 2, 3, 4), False),   # NCDHW
    ((3, 6, 5, 4), True),       # NHWC (rows)
    ((2, 3, 2, 3, 4), True),    # NDHWC (rows)
]
LAYOUT_IDS = [("x".join(map(str, s)) + ("-cl" if cl else "")) for s, cl in LAYOUTS]


@st.composite
def cases(draw):
    """A random (shape, channels_last, dtype, seed, offset, scale)."""
    rank = draw(st.sampled_from([2, 3, 4, 5]))
    n = draw(st.integers(2, 6))
    c = draw(st.integers(1, 9))
    spatial = [draw(st.integers(1, 5)) for _ in range(rank - 2)]
    channels_last = rank >= 4 and draw(st.booleans())
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    offset = draw(st.sampled_from([0.0, 3.0, -50.0, 1e3]))
    scale = draw(st.sampled_from([1.0, 1e-2, 40.0]))
    return (n, c, *spatial), channels_last, dtype, seed, offset, scale


HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------------- primitives (hypothesis)
@HYPOTHESIS
@given(case=cases())
def test_primitives_match_reference(case, variant):
    """batch_stats, affine, grad_sums, grad_input vs float64 NumPy on random shapes, layouts and dtypes."""
    shape, channels_last, dtype, seed, offset, scale = case
    x = _input(shape, dtype, channels_last, seed, offset, scale)
    dy = _input(shape, dtype, channels_last, seed + 1)
    x64, dy64 = _np64(x), _np64(dy)
    tol = TOLERANCE[dtype]
    axes = (0,) + tuple(range(2, x.dim()))
    mean_ref, var_ref, _ = ref.batch_statistics(x64)
    mean, var = kernels.batch_stats(x)
    assert np.max(np.abs(mean - mean_ref)) <= tol * (np.max(np.abs(x64)) + 1e-30)
    assert _rel(var, var_ref) <= tol * 10

    center = mean_ref + np.random.default_rng(seed).normal(size=shape[1])
    k_scale, shift = np.random.default_rng(seed + 2).normal(size=(2, shape[1]))
    out = kernels.affine(x, center, k_scale, shift)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert kernels.is_channels_last(out) == kernels.is_channels_last(x)
    oracle = (x64 - _bcast(center, x.dim())) * _bcast(k_scale, x.dim()) + _bcast(shift, x.dim())
    assert _rel(out, oracle) <= tol * 10

    sum_dy, sum_dy_xc = kernels.grad_sums(dy, x, center)
    assert _rel(sum_dy, dy64.sum(axis=axes)) <= tol * 10 or np.allclose(sum_dy, dy64.sum(axis=axes), atol=tol)
    oracle_xc = (dy64 * (x64 - _bcast(center, x.dim()))).sum(axis=axes)
    assert np.max(np.abs(sum_dy_xc - oracle_xc)) <= tol * 10 * np.abs(dy64 * (x64 - _bcast(center, x.dim()))).sum()

    k_dy, k_x, k_0 = np.random.default_rng(seed + 3).normal(size=(3, shape[1]))
    dx = kernels.grad_input(dy, x, center, k_dy, k_x, k_0)
    oracle = (_bcast(k_dy, x.dim()) * dy64 + _bcast(k_x, x.dim()) * (x64 - _bcast(center, x.dim()))
              + _bcast(k_0, x.dim()))
    assert _rel(dx, oracle) <= tol * 10


# ---------------------------------------------------------------------------- fused kernels (hypothesis)
def _check_fused(shape, channels_last, dtype, seed, offset, scale, affine=True, momentum=0.1):
    x = _input(shape, dtype, channels_last, seed, offset, scale)
    dy = _input(shape, dtype, channels_last, seed + 1)
    x64, dy64 = _np64(x), _np64(dy)
    channels = shape[1]
    tol = TOLERANCE[dtype]
    weight, bias = _per_channel(channels, dtype, seed + 2) if affine else (None, None)
    w64 = None if weight is None else _np64(weight)
    b64 = None if bias is None else _np64(bias)
    running_mean, running_var = _running(channels, dtype, seed + 3)
    rm0, rv0 = _np64(running_mean), _np64(running_var)

    y, mean, var = kernels.train_forward(x, weight, bias, EPS, momentum, running_mean, running_var)
    y_ref, cache = ref.batch_norm_train_forward(x64, w64, b64, EPS)
    mean_ref, var_ref, count = ref.batch_statistics(x64)
    assert y.dtype == x.dtype and kernels.is_channels_last(y) == kernels.is_channels_last(x)
    assert _rel(y, y_ref) <= tol * 10
    assert np.max(np.abs(mean - mean_ref)) <= tol * (np.max(np.abs(x64)) + 1e-30)
    assert _rel(var, var_ref) <= tol * 10
    running_ref = ref.update_running_stats(rm0, rv0, 0, mean_ref, var_ref, count, momentum)
    assert _rel(running_mean, running_ref.running_mean) <= tol * 10
    assert _rel(running_var, running_ref.running_var) <= tol * 10

    dx_ref, dw_ref, db_ref = ref.batch_norm_backward(dy64, cache, w64)
    dx, dweight, dbias = kernels.train_backward(dy, x, mean, var, weight, EPS, True)
    assert dx.dtype == x.dtype and kernels.is_channels_last(dx) == kernels.is_channels_last(x)
    # dx is a difference of terms of the size of dy * weight / std: measure the error against that scale
    dx_scale = np.max(np.abs(dy64)) * np.max(np.abs(w64) if w64 is not None else 1.0) / np.sqrt(var_ref.min() + EPS)
    assert np.max(np.abs(dx.numpy() - dx_ref)) <= tol * 100 * dx_scale
    assert np.max(np.abs(_np64(dbias) - db_ref)) <= tol * 10 * np.abs(dy64).sum()
    assert np.max(np.abs(_np64(dweight) - dw_ref)) <= tol * 100 * np.abs(dy64).sum()

    # inference: normalize with the (now updated) running statistics, and its backward
    y_eval = kernels.normalize(x, running_mean, running_var, weight, bias, EPS)
    y_eval_ref = ref.batch_norm_eval_forward(x64, _np64(running_mean), _np64(running_var), w64, b64, EPS)
    assert _rel(y_eval, y_eval_ref) <= tol * 10
    dx_eval, dw_eval, db_eval = kernels.train_backward(dy, x, _np64(running_mean), _np64(running_var), weight,
                                                       EPS, False)
    dx_eval_ref = ref.batch_norm_eval_backward(dy64, x64, _np64(running_mean), _np64(running_var), w64, EPS)
    assert _rel(dx_eval, dx_eval_ref[0]) <= tol * 10
    assert np.max(np.abs(_np64(dw_eval) - dx_eval_ref[1])) <= tol * 100 * np.abs(dy64).sum()
    assert np.max(np.abs(_np64(db_eval) - dx_eval_ref[2])) <= tol * 10 * np.abs(dy64).sum()


@HYPOTHESIS
@given(case=cases(), affine=st.booleans())
def test_fused_kernels_match_reference(case, affine, variant):
    """train_forward (+ running update), train_backward, normalize and its backward vs the float64 reference."""
    _check_fused(*case, affine=affine)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape, channels_last", LAYOUTS, ids=LAYOUT_IDS)
def test_fused_kernels_every_layout(shape, channels_last, dtype, variant):
    """Every layout class (rows, NCL, NCHW fused and split, NCDHW, NHWC, NDHWC), both dtypes and variants."""
    _check_fused(shape, channels_last, dtype, seed=11, offset=2.0, scale=3.0)


@pytest.mark.parametrize("shape", [(64, 3, 40, 40), (4, 16, 30, 30), (4096, 24), (8, 16, 20, 20, 1)],
                         ids=["split-C3", "fused-C16", "rows", "ncdhw"])
def test_fused_kernels_large_inputs_use_parallel_route(shape):
    """Inputs above the parallel threshold (the default route) also match the reference."""
    assert int(np.prod(shape)) >= config.PARALLEL_MIN_ELEMENTS
    _check_fused(shape, False, torch.float32, seed=5, offset=-1.0, scale=2.0)


# ------------------------------------------------------------------------------------------- stability
def _naive_float32_variance(x: torch.Tensor) -> np.ndarray:
    """E[x^2] - E[x]^2 accumulated in float32: the textbook one-pass formula that cancels catastrophically."""
    axes = (0,) + tuple(range(2, x.dim()))
    x32 = x.to(torch.float32)
    return (x32 * x32).mean(dim=axes).numpy() - x32.mean(dim=axes).numpy() ** 2


@pytest.mark.parametrize("shape, channels_last", [((64, 4, 32, 32), False), ((64, 4, 32, 32), True),
                                                  ((8192, 4), False)], ids=["nchw", "nhwc", "rows"])
def test_offset_1e4_and_constant_channel_are_exact(shape, channels_last, variant):
    """Data shifted by +1e4 (and one constant channel) gives the float64 reference's statistics (variance to 1e-5
    relative, the constant channel's exactly 0); the naive float32 E[x^2]-E[x]^2 is off by more than 1e-2."""
    x = _input(shape, torch.float32, False, seed=3, offset=1e4)
    x[:, 1] = 1e4 + 0.25           # constant channel: variance exactly 0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mean_ref, var_ref, _ = ref.batch_statistics(_np64(x))
    mean, var = kernels.batch_stats(x)
    y, mean_f, var_f = kernels.train_forward(x, None, None, EPS)
    for m, v in ((mean, var), (mean_f, var_f)):
        assert np.max(np.abs(m - mean_ref)) <= 1e-6
        assert np.max(np.abs(v - var_ref) / np.maximum(var_ref, 1e-3)) <= 1e-5
        assert v[1] == 0.0 and m[1] == np.float64(np.float32(1e4 + 0.25))
    y_ref, _ = ref.batch_norm_train_forward(_np64(x), None, None, EPS)
    assert _rel(y, y_ref) <= 1e-5
    assert np.all(y.numpy()[:, 1] == 0.0) if not channels_last else np.all(y[:, 1].numpy() == 0.0)
    naive = _naive_float32_variance(x)
    naive_error = np.max(np.abs(naive - var_ref) / np.maximum(var_ref, 1e-3))
    assert naive_error > 1e-2, "the naive formula should fail here (otherwise this test shows nothing)"


def test_tiny_variance_far_from_zero_uses_float64_sums():
    """Standard deviation 1e-3 at offset 1e3: the relative variance error stays at float64 rounding."""
    x = _input((16, 3, 50, 50), torch.float64, seed=4, offset=1e3, scale=1e-3)
    _, var_ref, _ = ref.batch_statistics(x.numpy())
    _, var = kernels.batch_stats(x)
    _, _, var_f = kernels.train_forward(x, None, None, EPS)
    assert _rel(var, var_ref) <= 1e-8 and _rel(var_f, var_ref) <= 1e-8


# ------------------------------------------------------------------------------------------ edge sizes
EDGE_SHAPES = [(2, 1), (2, 1, 1), (2, 1, 1, 1), (2, 3, 1, 1), (2, 7), (3, 1, 17), (5, 3, 1, 7), (2, 9, 3, 5, 1),
               (1, 4, 3), (2, 13, 3, 3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_edge_sizes(shape, dtype, variant):
    """C=1, spatial size 1, N=2, N=1 with spatial, odd sizes: fused kernels vs reference."""
    _check_fused(shape, False, dtype, seed=21, offset=0.5, scale=2.0)
    if len(shape) == 4:
        _check_fused(shape, True, dtype, seed=22, offset=0.5, scale=2.0)


@pytest.mark.parametrize("shape, channels_last", [((0, 5), False), ((0, 4, 3, 3), False), ((0, 4, 3, 3), True),
                                                  ((3, 4, 0), False)], ids=["rows", "nchw", "nhwc", "spatial0"])
def test_empty_batch(shape, channels_last):
    """An empty batch: empty outputs, mean 0 / var 1, zero parameter gradients, running buffers untouched."""
    x = torch.empty(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    running_mean, running_var = _per_channel(shape[1], torch.float32, 1)
    rm0, rv0 = running_mean.clone(), running_var.clone()
    weight, bias = _per_channel(shape[1], torch.float32, 2)
    y, mean, var = kernels.train_forward(x, weight, bias, EPS, 0.1, running_mean, running_var)
    assert y.shape == x.shape and np.all(mean == 0) and np.all(var == 1)
    assert torch.equal(running_mean, rm0) and torch.equal(running_var, rv0)
    dx, dweight, dbias = kernels.train_backward(torch.empty(shape), x, mean, var, weight, EPS, True)
    assert dx.shape == x.shape and torch.all(dweight == 0) and torch.all(dbias == 0)
    assert kernels.normalize(x, running_mean, running_var, weight, bias, EPS).shape == x.shape
    # and through the public function (the eager path), with gradients
    xg = x.clone().requires_grad_()
    wg, bg = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    out = functional.batch_norm(xg, running_mean, running_var, wg, bg, True)
    out.sum().backward()
    assert out.shape == x.shape and xg.grad.shape == x.shape and torch.all(wg.grad == 0)
    assert torch.equal(running_mean, rm0)


# --------------------------------------------------------------------------------------- NaN and Inf
def _same_nonfinite_pattern(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = torch.isfinite(theirs)
    assert torch.allclose(ours[finite], theirs[finite], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("shape, channels_last", [((4, 5, 3, 3), False), ((4, 5, 3, 3), True), ((6, 5), False),
                                                  ((64, 16, 8, 8), False)],
                         ids=["nchw", "nhwc", "rows", "nchw-parallel"])
@pytest.mark.parametrize("position", ["first", "middle"])
def test_nonfinite_input_propagates_like_torch(shape, channels_last, bad, position):
    """A NaN/Inf in a channel poisons that channel (output and gradients) exactly where torch's does."""
    x = _input(shape, torch.float32, seed=6)
    index = (0, 2) + (0,) * (x.dim() - 2) if position == "first" else (1, 2) + (1,) * (x.dim() - 2)
    x[index] = bad
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = _input(shape, torch.float32, seed=7)
    results = []
    for bn in (functional.batch_norm, torch.nn.functional.batch_norm):
        weight, bias = (t.requires_grad_() for t in _per_channel(shape[1], torch.float32, 8))
        running_mean, running_var = _running(shape[1], torch.float32, 9)
        xg = x.clone().requires_grad_()
        y = bn(xg, running_mean, running_var, weight, bias, True, 0.1, EPS)
        y.backward(dy)
        with torch.no_grad():
            y_eval = bn(x, running_mean, running_var, weight, bias, False, 0.1, EPS)
        results.append((y, xg.grad, weight.grad, bias.grad, y_eval, running_mean, running_var))
    for ours, theirs in zip(*results):
        _same_nonfinite_pattern(torch.isfinite(ours).float(), torch.isfinite(theirs).float())
    for ours, theirs in zip(results[0][:4], results[1][:4]):
        _same_nonfinite_pattern(ours.detach(), theirs.detach())


# ------------------------------------------------------------------------------ variants and threads
@pytest.mark.parametrize("shape, channels_last", [((16, 8, 12, 12), False), ((16, 8, 12, 12), True),
                                                  ((300, 33), False), ((16, 2, 12, 12), False)],
                         ids=["nchw", "nhwc", "rows", "nchw-split"])
def test_serial_and_parallel_twins_agree(shape, channels_last, monkeypatch):
    """The serial and the parallel kernels give the same results (up to float32 rounding of the summation order)."""
    x = _input(shape, torch.float32, channels_last, seed=12, offset=1.0)
    dy = _input(shape, torch.float32, channels_last, seed=13)
    weight, bias = _per_channel(shape[1], torch.float32, 14)
    outputs = []
    for threshold in (1 << 62, 0):
        monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", threshold)
        y, mean, var = kernels.train_forward(x, weight, bias, EPS)
        dx, dweight, dbias = kernels.train_backward(dy, x, mean, var, weight, EPS, True)
        outputs.append((y, torch.from_numpy(mean), torch.from_numpy(var), dx, dweight, dbias,
                        torch.from_numpy(kernels.batch_stats(x)[1])))
    for serial, parallel in zip(*outputs):
        assert torch.allclose(serial, parallel, rtol=1e-5, atol=1e-5)


def test_thread_count_follows_torch(monkeypatch):
    """Kernels run on torch.get_num_threads() Numba threads (capped by Numba's maximum); with one torch thread
    they run serially and never start Numba's thread pool (whose idle workers would compete with torch's)."""
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0)
    previous = torch.get_num_threads()
    x = _input((8, 4, 6, 6), torch.float32, seed=15)
    try:
        torch.set_num_threads(1)
        assert dispatch.threads_for(x.numel()) == 1
        torch.set_num_threads(2)
        expected = min(2, numba.config.NUMBA_NUM_THREADS)
        assert dispatch.threads_for(x.numel()) == expected
        kernels.train_forward(x, None, None, EPS)
        assert numba.get_num_threads() == expected
        kernels.batch_stats(x)
        assert numba.get_num_threads() == expected
    finally:
        torch.set_num_threads(previous)


def test_concurrent_calls_from_two_threads(monkeypatch):
    """Two Python threads running parallel kernels at once get correct results (one runs the serial twin)."""
    import threading

    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0)
    inputs = [_input((16, 8, 20, 20), torch.float32, seed=30 + i, offset=i) for i in range(4)]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(5):
            results[i] = kernels.train_forward(inputs[i], None, None, EPS)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, y in zip(inputs, results):
        y_ref, _ = ref.batch_norm_train_forward(_np64(x), None, None, EPS)
        assert _rel(y, y_ref) <= 1e-5
    if not os.environ.get("NUMBA_THREADING_LAYER"):
        assert numba.threading_layer() == _first_loadable_layer()


def _first_loadable_layer() -> str:
    """The first of config.THREADING_LAYERS whose Numba extension imports on this machine."""
    modules = {"omp": "numba.np.ufunc.omppool", "workqueue": "numba.np.ufunc.workqueue",
               "tbb": "numba.np.ufunc.tbbpool"}
    for name in config.THREADING_LAYERS:
        try:
            importlib.import_module(modules[name])
            return name
        except ImportError:
            continue
    raise AssertionError("no Numba threading layer loads")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_serial_kernels_after_parent_used_the_pool():
    """GNU OpenMP cannot run in a child forked from a process that uses it (Numba would terminate the child):
    the dispatcher must run the serial kernels there, with the same results."""
    x = torch.randn(64, 32, 8, 8, generator=torch.Generator().manual_seed(3))
    assert x.numel() >= config.PARALLEL_MIN_ELEMENTS
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert dispatch.threads_for(x.numel()) == 2
        y_parent = kernels.train_forward(x, None, None, EPS)[0]  # runs in parallel: the pool is started
        _check_forked_child(x, y_parent)
    finally:
        torch.set_num_threads(threads)


def _check_forked_child(x: torch.Tensor, y_parent: torch.Tensor) -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run the same kernel, report the result's max deviation from the parent's (in
        try:         # NumPy: torch's own parallel ops are not usable after fork either)
            y_child = kernels.train_forward(x, None, None, EPS)[0]
            os.write(write, repr(float(np.abs(y_child.numpy() - y_parent.numpy()).max())).encode())
        finally:
            os._exit(0)
    os.close(write)
    for _ in range(600):  # a child stuck in a parallel runtime is killed after 60 s, and the test fails
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child did not finish within 60 s")
    message = os.read(read, 100).decode()
    os.close(read)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child ended with status {status}"
    assert message and float(message) <= 1e-6


def test_routing_thresholds():
    """Small inputs stay serial; the fused channels-first sweep needs enough channels per thread."""
    assert dispatch.threads_for(config.PARALLEL_MIN_ELEMENTS - 1) == 1
    assert dispatch.threads_for(config.PARALLEL_MIN_ELEMENTS) == min(torch.get_num_threads(),
                                                                 numba.config.NUMBA_NUM_THREADS)
    assert dispatch.fused_channels_first(1, 1)
    assert dispatch.fused_channels_first(2, 2 * config.FUSED_MIN_CHANNELS_PER_THREAD)
    assert not dispatch.fused_channels_first(2, 2 * config.FUSED_MIN_CHANNELS_PER_THREAD - 1)


# -------------------------------------------------------------------------------- eager path (functional)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape, channels_last", [((6, 5, 4, 3), False), ((6, 5, 4, 3), True), ((9, 4), False)],
                         ids=["nchw", "nhwc", "rows"])
def test_eager_path_matches_custom_ops(shape, channels_last, training):
    """batch_norm's fused eager path computes what the custom ops (the torch.compile path) compute."""
    x = _input(shape, torch.float64, channels_last, seed=16, offset=1.0)
    dy = _input(shape, torch.float64, channels_last, seed=17)
    results = []
    for eager in (True, False):
        weight, bias = (t.requires_grad_() for t in _per_channel(shape[1], torch.float64, 18))
        running_mean, running_var = _running(shape[1], torch.float64, 19)
        xg = x.clone().requires_grad_()
        if eager:
            assert eager_eligible(xg, weight, bias, running_mean, running_var)
            y = functional.batch_norm(xg, running_mean, running_var, weight, bias, training, 0.1, EPS)
        else:
            if training:
                mean, var = torch.ops.batchnorm.batch_stats(xg.detach())
                functional.update_running_stats(running_mean, running_var, mean, var, x.numel() // shape[1], 0.1)
            else:
                mean, var = running_mean, running_var
            y = torch.ops.batchnorm.normalize(xg, mean, var, weight, bias, EPS, training)
        y.backward(dy)
        results.append((y, xg.grad, weight.grad, bias.grad, running_mean, running_var))
    for ours, ops in zip(*results):
        assert torch.allclose(ours, ops, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, channels_last", [((6, 5, 4, 3), False), ((6, 5, 4, 3), True), ((9, 4), False)],
                         ids=["nchw", "nhwc", "rows"])
@pytest.mark.parametrize("wanted", ["weight only", "input only"])
def test_eager_path_partial_gradients(shape, channels_last, wanted):
    """Only the gradients asked for are computed (an input that needs no gradient, a frozen weight), and they
    match torch's."""
    x = _input(shape, torch.float32, channels_last, seed=24, offset=1.0)
    dy = _input(shape, torch.float32, channels_last, seed=25)
    grads = []
    for bn in (functional.batch_norm, torch.nn.functional.batch_norm):
        weight, bias = _per_channel(shape[1], torch.float32, 26)
        xg = x.clone()
        if wanted == "weight only":
            weight.requires_grad_()
        else:
            xg.requires_grad_()
        bn(xg, None, None, weight, bias, True, 0.1, EPS).backward(dy)
        grads.append(weight.grad if wanted == "weight only" else xg.grad)
        assert bias.grad is None and (xg.grad is None if wanted == "weight only" else weight.grad is None)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_per_channel_views_follow_their_tensors():
    """The cached NumPy views of weights follow in-place updates, `.data` reassignment and resizing."""
    x = _input((6, 4, 3, 3), torch.float32, seed=27)
    layer = torch.nn.BatchNorm2d(4)
    torch.nn.init.uniform_(layer.weight, 0.5, 1.5)

    def check():
        ours = functional.batch_norm(x, None, None, layer.weight, layer.bias, True)
        theirs = torch.nn.functional.batch_norm(x, None, None, layer.weight, layer.bias, True)
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)

    check()
    with torch.no_grad():
        layer.weight.mul_(3.0)
    check()
    layer.weight.data = torch.rand(4) + 2.0
    check()
    layer.bias.data = torch.randn(4)
    check()
    weight = torch.rand(4)
    assert np.array_equal(dispatch.vector(weight, np.dtype(np.float32)), weight.numpy())
    weight.resize_(2)
    assert dispatch.vector(weight, np.dtype(np.float32)).shape == (2,)


def test_eager_path_bumps_running_buffer_versions_and_double_backward_is_torchs():
    """Running buffers are marked modified (as torch's in-place update does); double backward (the create_graph
    backward runs in torch ops) gives torch's second-order gradient."""
    x = _input((8, 3, 4, 4), torch.float64, seed=20).requires_grad_()
    running_mean, running_var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    versions = running_mean._version, running_var._version
    y = functional.batch_norm(x, running_mean, running_var, None, None, True)
    assert running_mean._version > versions[0] and running_var._version > versions[1]
    (grad,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.square().sum(), x)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = torch.nn.functional.batch_norm(x_ref, None, None, None, None, True)
    (grad_ref,) = torch.autograd.grad(y_ref.pow(3).sum(), x_ref, create_graph=True)
    (second_ref,) = torch.autograd.grad(grad_ref.square().sum(), x_ref)
    assert _rel(grad, grad_ref.detach().numpy()) <= 1e-10
    assert _rel(second, second_ref.numpy()) <= 1e-10


def test_eager_path_declines_what_it_cannot_take():
    """Mismatched dtypes or non-contiguous per-channel tensors go to the custom ops, with the same result."""
    x = _input((4, 6, 3, 3), torch.float32, seed=23)
    weight64 = torch.rand(6, dtype=torch.float64)
    strided = torch.rand(12)[::2]
    assert not eager_eligible(x, weight64, None, None, None)
    assert not eager_eligible(x, strided, None, None, None)
    assert not eager_eligible(x, torch.rand(5), None, None, None)
    y = functional.batch_norm(x, None, None, strided, None, True)
    y_ref, _ = ref.batch_norm_train_forward(_np64(x), _np64(strided), None, EPS)
    assert _rel(y, y_ref) <= 1e-5


@pytest.mark.parametrize("variant", [0, 1], ids=["serial", "parallel"])
@pytest.mark.parametrize("activation", ["identity", "relu", "elu"])
def test_channel_and_sample_blocks_do_not_change_results(variant, activation):
    """The channels-first kernels split the channels into blocks (fused kernels) or walk (sample, channel
    block) pairs (eval, primitives); every block count, even uneven ones, gives the float64 reference's
    results."""
    from batchnorm.kernels.numba import batch_norm as nk
    from batchnorm.kernels.activations import ACTIVATIONS

    generator = torch.Generator().manual_seed(21)
    x = (torch.randn(5, 13, 7, 3, dtype=torch.float64, generator=generator) * 3 + 1).numpy().reshape(5, 13, 21)
    dy = torch.randn(5, 13, 21, dtype=torch.float64, generator=generator).numpy()
    weight = torch.rand(13, dtype=torch.float64, generator=generator).numpy() + 0.5
    bias = torch.randn(13, dtype=torch.float64, generator=generator).numpy()
    code, absent = ACTIVATIONS[activation], np.empty(0)
    xt = torch.from_numpy(x)
    z_ref = torch.nn.functional.batch_norm(xt.requires_grad_(), None, None, torch.from_numpy(weight),
                                           torch.from_numpy(bias), True, 0.0, EPS)
    y_ref = functional.torch_activation(z_ref, activation, 1.0)
    dx_ref, = torch.autograd.grad(y_ref, xt, torch.from_numpy(dy))
    for n_blocks in (1, 2, 5, 13):
        y, mean, var = np.empty_like(x), np.empty(13), np.empty(13)
        nk.train_forward_cf[variant](n_blocks, x, weight, bias, EPS, 0.0, absent, absent, code, 1.0, y, mean, var)
        assert np.max(np.abs(y - y_ref.detach().numpy())) <= 1e-12, n_blocks
        dx, dweight, dbias = np.empty_like(x), np.empty(13), np.empty(13)
        nk.train_backward_cf[variant](n_blocks, dy, x, mean, var, weight, bias, EPS, True, code, 1.0, dx, dweight,
                                      dbias)
        assert np.max(np.abs(dx - dx_ref.numpy())) <= 1e-11, n_blocks
        y_eval = np.empty_like(x)
        nk.normalize_cf[variant](n_blocks, x, mean, var, weight, bias, EPS, code, 1.0, y_eval)
        assert np.max(np.abs(y_eval - y_ref.detach().numpy())) <= 1e-12, n_blocks
        stats_mean, stats_var = np.empty(13), np.empty(13)
        nk.stats_cf[variant](n_blocks, x, stats_mean, stats_var)
        assert np.max(np.abs(stats_mean - mean)) <= 1e-12 and np.max(np.abs(stats_var - var)) <= 1e-11


@pytest.mark.parametrize("variant", [0, 1], ids=["serial", "parallel"])
@pytest.mark.parametrize("activation", ["identity", "leaky_relu", "elu"])
@pytest.mark.parametrize("rows", [37, config.ROW_TILE_MAX_ROWS + 3], ids=["tiled", "untiled"])
def test_row_blocks_and_channel_tiles_do_not_change_results(variant, activation, rows):
    """The rows kernels split the rows into blocks and, with few rows, walk the channels in tiles of ROW_TILE;
    with channels over two tiles and an uneven last tile, tiled or not, every block count gives the float64
    reference's results (training forward and backward, inference forward and its backward, the primitives)."""
    from batchnorm.kernels.numba import batch_norm as nk
    from batchnorm.kernels.activations import ACTIVATIONS

    channels = 2 * config.ROW_TILE + 5
    generator = torch.Generator().manual_seed(22)
    x = (torch.randn(rows, channels, dtype=torch.float64, generator=generator) * 3 + 1).numpy()
    dy = torch.randn(rows, channels, dtype=torch.float64, generator=generator).numpy()
    weight = torch.rand(channels, dtype=torch.float64, generator=generator).numpy() + 0.5
    bias = torch.randn(channels, dtype=torch.float64, generator=generator).numpy()
    code, absent = ACTIVATIONS[activation], np.empty(0)
    xt, w_t, b_t = torch.from_numpy(x).requires_grad_(), torch.from_numpy(weight), torch.from_numpy(bias)
    y_ref = functional.torch_activation(torch.nn.functional.batch_norm(xt, None, None, w_t, b_t, True, 0.0, EPS),
                                        activation, 0.1)
    dx_ref, = torch.autograd.grad(y_ref, xt, torch.from_numpy(dy))
    for n_blocks in (1, 3):
        y, mean, var = np.empty_like(x), np.empty(channels), np.empty(channels)
        nk.train_forward_rows[variant](n_blocks, x, weight, bias, EPS, 0.0, absent, absent, code, 0.1, y, mean, var)
        assert np.max(np.abs(y - y_ref.detach().numpy())) <= 1e-12, n_blocks
        dx, dweight, dbias = np.empty_like(x), np.empty(channels), np.empty(channels)
        nk.train_backward_rows[variant](n_blocks, dy, x, mean, var, weight, bias, EPS, True, code, 0.1, dx, dweight,
                                        dbias)
        assert np.max(np.abs(dx - dx_ref.numpy())) <= 1e-11, n_blocks
        stats_mean, stats_var = np.empty(channels), np.empty(channels)
        nk.stats_rows[variant](n_blocks, x, stats_mean, stats_var)
        assert np.max(np.abs(stats_mean - mean)) <= 1e-12 and np.max(np.abs(stats_var - var)) <= 1e-11

        xe = torch.from_numpy(x).requires_grad_()
        y_eval_ref = functional.torch_activation(
            torch.nn.functional.batch_norm(xe, torch.from_numpy(mean), torch.from_numpy(var), w_t, b_t, False, 0.0,
                                           EPS), activation, 0.1)
        dx_eval_ref, = torch.autograd.grad(y_eval_ref, xe, torch.from_numpy(dy))
        y_eval = np.empty_like(x)
        nk.normalize_rows[variant](n_blocks, x, mean, var, weight, bias, EPS, code, 0.1, y_eval)
        assert np.max(np.abs(y_eval - y_eval_ref.detach().numpy())) <= 1e-12, n_blocks
        dx_eval = np.empty_like(x)
        nk.train_backward_rows[variant](n_blocks, dy, x, mean, var, weight, bias, EPS, False, code, 0.1, dx_eval,
                                        dweight, dbias)
        assert np.max(np.abs(dx_eval - dx_eval_ref.numpy())) <= 1e-11, n_blocks


@pytest.mark.parametrize("shape, channels_last", [((7, 5), False), ((3, 4, 9), False), ((2, 3, 4, 5), False),
                                                  ((2, 3, 4, 5), True), ((2, 3, 2, 4, 5), True), ((0, 3, 4, 5), False),
                                                  ((0, 3, 4, 5), True)])
def test_new_outputs_have_the_kernel_layout_and_their_own_memory(shape, channels_last):
    """NumPy-allocated outputs: x's shape and layout (as `empty_output_like`), and the kernels' view writes them."""
    x = _input(shape, torch.float32, channels_last, seed=30)
    rows = x.dim() == 2 or kernels.is_channels_last(x)
    y, view = dispatch.new_like(x, rows)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.stride() == kernels.empty_output_like(x).stride()
    if x.numel():
        assert view.shape == dispatch.array(x, rows).shape
        view[...] = dispatch.array(x, rows)
        assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    else:
        assert view is None
