"""Thin dispatcher from torch tensors to the Numba kernels: layout, variant and thread-count decisions.

Routing (documented here and tested):
  * layout: a 2-D input (N, C) and a channels_last 4-D/5-D input run on the rows kernels (R, C) with
    R = N * spatial; a contiguous (N, C, *spatial) input on the channels-first kernels (N, C, S); anything
    else (sliced or permuted views) is first copied to contiguous memory (torch does the same);
  * variant: inputs with fewer than `config.PARALLEL_MIN_ELEMENTS` elements run single-threaded, larger
    ones on `torch.get_num_threads()` Numba threads;
  * a gradient `dy` is brought into the layout of its `x` before the kernels read both.

Fused entry points (`train_forward`, `normalize`, `train_backward`) do a whole layer pass in one kernel call:
  * channels-first with at least `config.FUSED_MIN_CHANNELS_PER_THREAD` channels per thread: one block of
    channels at a time per thread (`config.channel_blocks`: statistics, then the normalize/dx sweep while the
    block is still in the cache);
  * channels-first with fewer channels (e.g. C=1 with a large image): statistics parallel over (sample,
    channel block) pairs, then the transform, through the four primitives;
  * rows: row blocks in parallel, partial sums per block, then the transform over the same blocks.
Optional per-channel tensors (weight, bias, running buffers) must be contiguous 1-D CPU tensors or None;
running buffers are updated in place by the kernel. Outputs are allocated by NumPy (`_new_like`: transparent
huge pages for large blocks), or taken from `pool` when the caller passes `pooled=True` (outputs computed
without autograd).

Every entry point takes an activation name and its parameter (`activations.ACTIVATIONS`, "identity" by
default), applied where the output is written; the backward entry points recompute the pre-activation.
The eager `batchnorm.functional.batch_norm` calls the fused entry points (one kernel call per pass); the custom
ops (`torch.compile` path) and the variants call the four primitives. Threads: Numba's OpenMP layer is
preferred (`config.THREADING_LAYERS`); in a process forked from one whose pool runs, the serial kernels run.

Only CPU float32/float64 tensors reach this module; `batchnorm.functional` routes everything else to torch.
Per-channel vectors returned or taken by the primitives are float64 NumPy arrays of length C.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref

import numba
import numpy as np
import torch

from .._atomic import atomic_write
from . import config, pool


def _clear_stale_kernel_cache() -> None:
    """Numba keys a cached kernel on the timestamp of its own file only, so an edit of a helper module the
    kernels call (activations.py, config.py) would leave stale machine code in the cache. A digest of all kernel
    sources, kept next to the in-tree cache, clears that cache whenever any of them changed. (A read-only
    install uses Numba's user-wide cache; upgrades replace every file there, which invalidates it.)"""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for name in ("numba_kernels.py", "fused_kernels.py", "activations.py", "config.py"):
        with open(os.path.join(here, name), "rb") as source:
            digest.update(source.read())
    cache = os.path.join(here, "__pycache__")
    stamp = os.path.join(cache, "kernel-sources.sha256")
    try:
        with open(stamp) as f:
            if f.read() == digest.hexdigest():
                return
    except OSError:
        pass
    try:
        os.makedirs(cache, exist_ok=True)
        for name in os.listdir(cache):
            if name.endswith((".nbi", ".nbc")):
                os.remove(os.path.join(cache, name))
        atomic_write(stamp, digest.hexdigest())
    except OSError:
        pass


_clear_stale_kernel_cache()

from . import numba_kernels as nk  # noqa: E402  (after the cache check)
from .activations import code  # noqa: E402

__all__ = ["is_channels_last", "empty_output_like", "new_output_like", "batch_stats", "affine", "grad_sums",
           "grad_input", "train_forward", "normalize", "train_backward"]


def is_channels_last(x: torch.Tensor) -> bool:
    """True if x is a 4-D/5-D tensor stored channels_last (and not also plain contiguous)."""
    if x.dim() == 4:
        fmt = torch.channels_last
    elif x.dim() == 5:
        fmt = torch.channels_last_3d
    else:
        return False
    return x.is_contiguous(memory_format=fmt) and not x.is_contiguous()


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if is_channels_last(x):
        return torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return torch.contiguous_format


def empty_output_like(x: torch.Tensor) -> torch.Tensor:
    """The layout of the output a kernel writes for input x (channels_last stays channels_last, all else
    contiguous), allocated by torch: for fake tensors (`register_fake`). Real outputs use `new_output_like`."""
    return torch.empty_like(x, memory_format=_memory_format(x))


_CHANNELS_FIRST = {4: (0, 3, 1, 2), 5: (0, 4, 1, 2, 3)}  # (N, *spatial, C) memory seen as (N, C, *spatial)


def _new_like(x: torch.Tensor, rows: bool, pooled: bool = False) -> tuple[torch.Tensor, np.ndarray | None]:
    """(a new tensor with x's shape, dtype and layout, its NumPy view in the kernels' layout) for a dense x,
    allocated by NumPy, or taken from `pool` when `pooled` and the pool takes it. NumPy asks the kernel for
    transparent huge pages on large blocks (madvise), so a fresh multi-megabyte output takes one page fault per
    2 MiB instead of one per 4 KiB page (measured on 64x64x112x112: training forward+backward 10.2 -> 7.0
    copies, page faults per call 100354 -> 768)."""
    if not x.numel():  # torch's strides for an empty tensor (NumPy's would be 0); no kernel writes it
        return torch.empty_like(x, memory_format=_memory_format(x)), None
    n, c = x.shape[0], x.shape[1]
    space = x.numel() // (n * c)
    # channels_last(_3d) is (N, *spatial, C) in memory
    shape = (n, *x.shape[2:], c) if rows and x.dim() > 2 else tuple(x.shape)
    flat = pool.take(x) if pooled else None
    memory = np.empty(shape, _NUMPY_DTYPE[x.dtype]) if flat is None else flat.reshape(shape)
    if not rows:
        return torch.from_numpy(memory), memory.reshape(n, c, space)
    # a tensor over the transposed array (not a `movedim` view of one): autograd lets in-place ops such as
    # ReLU(inplace=True) or a residual `+=` modify it, as they modify torch's own channels_last outputs
    layout = memory.transpose(_CHANNELS_FIRST[x.dim()]) if x.dim() > 2 else memory
    return torch.from_numpy(layout), memory.reshape(n * space, c)


def new_output_like(x: torch.Tensor) -> torch.Tensor:
    """A new output for input x in the layout of `empty_output_like(x)`, allocated by NumPy (`_new_like`)."""
    return _new_like(x, x.dim() == 2 or is_channels_last(x))[0]


def _dense(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t in the memory layout the kernels use for `like` (a no-op when it already is)."""
    return t.contiguous(memory_format=_memory_format(like))


def _view(t: torch.Tensor) -> np.ndarray:
    """NumPy view of a dense tensor: (R, C) for 2-D and channels_last, (N, C, S) otherwise."""
    a = t.detach().numpy()
    if t.dim() == 2:
        return a
    if is_channels_last(t):
        return a.transpose((0,) + tuple(range(2, t.dim())) + (1,)).reshape(-1, t.shape[1])
    return a.reshape(t.shape[0], t.shape[1], -1)


# Numba's threading layer: the first of `config.THREADING_LAYERS` that loads, unless the user chose one
# (NUMBA_THREADING_LAYER) or Numba has already started one.
if not config.NUMBA_LAYER_CHOSEN_BY_USER and numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER_PRIORITY = list(config.THREADING_LAYERS)

# One parallel kernel at a time: a call that finds another thread inside a parallel kernel runs the serial
# twin instead (the workqueue layer must not be entered concurrently, and two teams on the same cores would
# only slow each other down).
_PARALLEL = threading.Lock()


def _call(kernel, threads: int, *args):
    """Run kernel = (serial, parallel) compiled twins: the parallel one when threads > 1 and no other thread is
    in a parallel kernel, else the serial one."""
    if threads > 1 and _PARALLEL.acquire(blocking=False):
        try:
            return kernel[1](*args)
        finally:
            _PARALLEL.release()
    return kernel[0](*args)


def _launch(channels_first, rows, x: torch.Tensor, xv: np.ndarray, *args) -> None:
    """Run the channels-first or the rows kernel (serial or parallel) for x, whose NumPy view is xv; both take
    their number of parallel blocks first."""
    threads = _threads(x.numel())
    if xv.ndim == 3:
        _call(channels_first, threads, config.sample_blocks(xv.shape[0], xv.shape[1], threads), *args)
        return
    _call(rows, threads, 1 if threads == 1 else config.row_blocks(xv.shape[0], threads), *args)


def batch_stats(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of x (float64 arrays of length C); x must be non-empty."""
    x = _dense(x, x)
    xv = _view(x)
    mean = np.empty(x.shape[1])
    var = np.empty(x.shape[1])
    _launch(nk.stats_cf, nk.stats_rows, x, xv, xv, mean, var)
    return mean, var


def affine(x: torch.Tensor, center: np.ndarray, scale: np.ndarray, shift: np.ndarray, activation: str = "identity",
           param: float = 0.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """out = act((x - center_c) * scale_c + shift_c), by default in the layout `empty_output_like(x)` gives;
    `out` may be x itself (dense) for an in-place update."""
    x = _dense(x, x)
    out = new_output_like(x) if out is None else out
    if x.numel():
        xv = _view(x)
        _launch(nk.affine_cf, nk.affine_rows, x, xv, xv, center, scale, shift, code(activation), float(param),
                _view(out))
    return out


def _identity_affine(scale, shift, channels: int):
    """(scale, shift) for the kernels' z; only an activation reads them (ones and zeros when absent)."""
    return (np.ones(channels) if scale is None else scale), (np.zeros(channels) if shift is None else shift)


def grad_sums(dy: torch.Tensor, x: torch.Tensor, center: np.ndarray, scale: np.ndarray | None = None,
              shift: np.ndarray | None = None, activation: str = "identity",
              param: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """sum(g)_c and sum(g * (x - center_c))_c as float64 arrays of length C, with g = dy * act'(z) and
    z = (x - center_c) * scale_c + shift_c (g = dy for the identity, which needs no scale/shift)."""
    x = _dense(x, x)
    dy = _dense(dy, x)
    sum_dy = np.zeros(x.shape[1])
    sum_dy_xc = np.zeros(x.shape[1])
    if x.numel():
        xv = _view(x)
        scale, shift = _identity_affine(scale, shift, x.shape[1])
        _launch(nk.grad_sums_cf, nk.grad_sums_rows, x, xv, _view(dy), xv, center, scale, shift, code(activation),
                float(param), sum_dy, sum_dy_xc)
    return sum_dy, sum_dy_xc


def grad_input(dy: torch.Tensor, x: torch.Tensor, center: np.ndarray, k_dy: np.ndarray, k_x: np.ndarray,
               k_0: np.ndarray, scale: np.ndarray | None = None, shift: np.ndarray | None = None,
               activation: str = "identity", param: float = 0.0) -> torch.Tensor:
    """out = k_dy_c * g + k_x_c * (x - center_c) + k_0_c (g as in `grad_sums`), in the layout of
    `empty_output_like(x)`. With k_x = k_0 = 0 (fixed statistics) out = k_dy_c * g, never 0 * a NaN/inf input."""
    x = _dense(x, x)
    dy = _dense(dy, x)
    out = new_output_like(x)
    if x.numel():
        xv = _view(x)
        scale, shift = _identity_affine(scale, shift, x.shape[1])
        batch_stats = bool(np.any(k_x) or np.any(k_0))
        _launch(nk.grad_input_cf, nk.grad_input_rows, x, xv, _view(dy), xv, center, scale, shift, k_dy, k_x, k_0,
                batch_stats, code(activation), float(param), _view(out))
    return out


# -------------------------------------------------------------------------------------- fused entry points
# These are on the per-call path of every eager batch-norm layer, so they avoid needless Python work.
_ABSENT = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}
_NUMBA_MAX_THREADS = numba.config.NUMBA_NUM_THREADS
_NUMPY_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _dense_rows(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(x in a layout the kernels read, True for the rows layout): 2-D and channels_last are rows."""
    if x.is_contiguous():
        return x, x.dim() == 2
    if is_channels_last(x):
        return x, True
    return x.contiguous(), x.dim() == 2


def _array(t: torch.Tensor, rows: bool) -> np.ndarray:
    """NumPy view of a dense tensor in the kernels' layout: (R, C) rows, or (N, C, S) channels-first."""
    a = (t.detach() if t.requires_grad else t).numpy()
    if t.dim() == 2:
        return a
    if rows:
        return a.transpose((0,) + tuple(range(2, t.dim())) + (1,)).reshape(-1, t.shape[1])
    return a.reshape(t.shape[0], t.shape[1], -1)


# NumPy views of the per-channel tensors (weights, biases, running buffers) that layers pass on every call:
# id(tensor) -> (weak reference, data pointer, length, view). An entry is used only while it is the same live
# tensor over the same memory and length, and it disappears with its tensor; this saves a detach + numpy (about
# 1 us) per tensor and call, which matters for small inputs.
_VIEWS: dict[int, tuple] = {}


def _forget(key: int):
    return lambda _ref: _VIEWS.pop(key, None)


def _vector(t, dtype: np.dtype) -> np.ndarray:
    """A per-channel tensor as a NumPy view sharing its memory, or a length-0 array (of `dtype`) for None."""
    if t is None:
        return _ABSENT[dtype]
    if isinstance(t, np.ndarray):
        return t
    key = id(t)
    entry = _VIEWS.get(key)
    if entry is not None and entry[0]() is t and entry[1] == t.data_ptr() and entry[2] == t.shape[0]:
        return entry[3]
    view = t.detach().numpy()
    if t.dim() == 1 and t.is_contiguous():
        _VIEWS[key] = (weakref.ref(t, _forget(key)), t.data_ptr(), t.shape[0], view)
    return view


_POOL_PID: list[int] = []  # the process that started Numba's thread pool through this module


def _threads(numel: int) -> int:
    """Threads for a kernel over `numel` elements: 1 below the parallel threshold, else torch's thread count
    (Numba's is set to match). 1 as well in a process forked from one whose pool is running: GNU OpenMP cannot
    be used after fork (Numba would terminate the process)."""
    if numel < config.PARALLEL_MIN_ELEMENTS:
        return 1
    threads = min(torch.get_num_threads(), _NUMBA_MAX_THREADS)
    if threads == 1:  # never start Numba's thread pool for a single thread (it would compete with torch's)
        return 1
    if not _POOL_PID:
        _POOL_PID.append(os.getpid())
    elif _POOL_PID[0] != os.getpid():
        return 1
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return threads


def _channel_blocks(xv: np.ndarray, threads: int) -> int:
    """Channel blocks of a fused channels-first kernel over the (N, C, S) view xv."""
    return config.channel_blocks(xv.shape[0], xv.shape[1], xv.shape[2], xv.itemsize, threads)


def _fused_channels_first(threads: int, channels: int) -> bool:
    """Whether the per-channel fused sweep keeps every thread busy (the serial kernel always is fused)."""
    return threads == 1 or channels >= config.FUSED_MIN_CHANNELS_PER_THREAD * threads


def _float64_vector(t, channels: int, fill: float) -> np.ndarray:
    """A per-channel tensor or array as float64 NumPy (`fill` when None)."""
    if t is None:
        return np.full(channels, fill)
    return np.asarray(t.detach().numpy() if isinstance(t, torch.Tensor) else t, dtype=np.float64)


def _scale_shift(weight, bias, var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel weight / sqrt(var + eps) and bias as float64: the same IEEE operations as the fused kernels'
    `_scale_value`, so that every path computes the same z."""
    channels = var.shape[0]
    return _float64_vector(weight, channels, 1.0) / np.sqrt(var + eps), _float64_vector(bias, channels, 0.0)


def numpy_dtype(x: torch.Tensor) -> np.dtype:
    """The NumPy dtype of a float32/float64 tensor."""
    return _NUMPY_DTYPE[x.dtype]


def _output(x: torch.Tensor, out, pooled: bool, rows: bool) -> tuple[torch.Tensor, np.ndarray | None]:
    """(the tensor a fused entry point writes, its NumPy view in the kernels' layout or None for an empty x):
    `out` (x itself for an in-place layer; it must have x's layout), else a new tensor like x (`_new_like`)."""
    if out is None:
        return _new_like(x, rows, pooled)
    if out.stride() != x.stride() or out.shape != x.shape:
        raise ValueError(f"out must have the input's shape and memory layout, got shape {tuple(out.shape)} "
                         f"strides {out.stride()} for an input of shape {tuple(x.shape)} strides {x.stride()}")
    return out, (_array(out, rows) if x.numel() else None)


def train_forward(x: torch.Tensor, weight, bias, eps: float, momentum: float = 0.0, running_mean=None,
                  running_var=None, activation: str = "identity", param: float = 0.0,
                  out: torch.Tensor | None = None,
                  pooled: bool = False) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(y, mean, var): batch statistics (float64 NumPy, biased variance), running update, normalized output.

    y = act((x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c), written to `out` if given (x itself is
    allowed: every block's statistics are complete before it is overwritten), else to a new tensor (from `pool`
    when `pooled`: for outputs computed without autograd). The running buffers (if given) are
    updated in place: running <- (1 - momentum) * running + momentum * batch, with the unbiased variance. An
    empty batch gives an empty y, mean 0 and var 1, and leaves the running buffers alone.
    """
    x, rows = _dense_rows(x)
    channels = x.shape[1]
    y, yv = _output(x, out, pooled, rows)
    numel = x.numel()
    if numel == 0:
        return y, np.zeros(channels), np.ones(channels)
    xv = _array(x, rows)
    mean = np.empty(channels)
    var = np.empty(channels)
    dtype = xv.dtype
    w, b = _vector(weight, dtype), _vector(bias, dtype)
    rm, rv = _vector(running_mean, dtype), _vector(running_var, dtype)
    threads = _threads(numel)
    act = code(activation)
    if rows:
        n_blocks = 1 if threads == 1 else config.row_blocks(xv.shape[0], threads)
        _call(nk.train_forward_rows, threads, n_blocks, xv, w, b, float(eps), float(momentum), rm, rv, act,
              float(param), yv, mean, var)
        return y, mean, var
    if _fused_channels_first(threads, channels):
        _call(nk.train_forward_cf, threads, _channel_blocks(xv, threads), xv, w, b, float(eps), float(momentum), rm,
              rv, act, float(param), yv, mean, var)
        return y, mean, var
    mean, var = batch_stats(x)
    count = numel // channels
    if running_mean is not None:
        rm *= 1.0 - momentum
        rm += (momentum * mean).astype(rm.dtype)
    if running_var is not None:
        unbiased = var * (count / (count - 1)) if count > 1 else np.full(channels, np.inf)
        rv *= 1.0 - momentum
        rv += (momentum * unbiased).astype(rv.dtype)
    scale, shift = _scale_shift(w if w.size else None, b if b.size else None, var, eps)
    return affine(x, mean, scale, shift, activation, param, out=y), mean, var


def normalize(x: torch.Tensor, mean, var, weight, bias, eps: float, activation: str = "identity",
              param: float = 0.0, out: torch.Tensor | None = None, pooled: bool = False) -> torch.Tensor:
    """y = act((x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c) with given statistics (tensors or arrays),
    written to `out` if given (x itself is allowed), else to a new tensor (from `pool` when `pooled`)."""
    x, rows = _dense_rows(x)
    y, yv = _output(x, out, pooled, rows)
    numel = x.numel()
    if numel == 0:
        return y
    xv = _array(x, rows)
    dtype = xv.dtype
    args = (_vector(mean, dtype), _vector(var, dtype), _vector(weight, dtype), _vector(bias, dtype), float(eps),
            code(activation), float(param), yv)
    threads = _threads(numel)
    if rows:
        _call(nk.normalize_rows, threads, 1 if threads == 1 else config.row_blocks(xv.shape[0], threads), xv, *args)
    else:
        _call(nk.normalize_cf, threads, config.sample_blocks(xv.shape[0], xv.shape[1], threads), xv, *args)
    return y


def train_backward(dy: torch.Tensor, x: torch.Tensor, mean: np.ndarray, var: np.ndarray, weight, eps: float,
                   batch_stats: bool, need_dx: bool = True, need_dweight: bool = True, bias=None,
                   activation: str = "identity", param: float = 0.0):
    """(dx or None, dweight or None, dbias) of y = act(z), z = (x - mean) / sqrt(var + eps) * weight + bias.

    With g = dy * act'(z) (z recomputed from x, weight and bias; g = dy for the identity), inv_std =
    1 / sqrt(var + eps), m values per channel: dbias = sum g, dweight = inv_std * sum g (x - mean), and
    dx = k_dy g + k_x (x - mean) + k_0 where k_dy = weight * inv_std and, when `batch_stats` (mean, var are
    x's own statistics), k_x = -k_dy inv_std^2 sum g (x - mean) / m, k_0 = -k_dy sum g / m; otherwise
    dx = k_dy g (a NaN/inf input element never turns its gradient into 0 * NaN, as torch). `mean`, `var` are
    float64 arrays. dweight and dbias have weight's dtype (x's when weight is None).
    """
    x, rows = _dense_rows(x)
    channels = x.shape[1]
    param_dtype = _NUMPY_DTYPE[x.dtype if weight is None else weight.dtype]
    numel = x.numel()
    if numel == 0:
        dweight = torch.zeros(channels, dtype=weight.dtype if weight is not None else x.dtype)
        return (_new_like(x, rows)[0] if need_dx else None), (dweight if need_dweight else None), \
            torch.zeros_like(dweight)
    threads = _threads(numel)
    fused = rows or _fused_channels_first(threads, channels)  # else dx comes from `grad_input` below
    dx, dxv = _new_like(x, rows) if need_dx and fused else (None, None)
    dbias_np = np.empty(channels, param_dtype)
    dweight_np = np.empty(channels, param_dtype) if need_dweight else _ABSENT[param_dtype]
    if dy.stride() != x.stride():
        dy = dy.contiguous(memory_format=torch.channels_last if rows and x.dim() == 4 else
                           torch.channels_last_3d if rows and x.dim() == 5 else torch.contiguous_format)
    xv = _array(x, rows)
    np_dtype = xv.dtype
    args = (_array(dy, rows), xv, mean, var, _vector(weight, np_dtype), _vector(bias, np_dtype), float(eps),
            bool(batch_stats), code(activation), float(param),
            dxv if dx is not None else np.empty((0,) * xv.ndim, np_dtype), dweight_np, dbias_np)
    dbias = torch.from_numpy(dbias_np)
    dweight = torch.from_numpy(dweight_np) if need_dweight else None
    if rows:
        _call(nk.train_backward_rows, threads, 1 if threads == 1 else config.row_blocks(xv.shape[0], threads),
              *args)
        return dx, dweight, dbias
    if fused:
        _call(nk.train_backward_cf, threads, _channel_blocks(xv, threads), *args)
        return dx, dweight, dbias
    scale, shift = _scale_shift(weight, bias, var, eps)
    sum_dy, sum_dy_xc = grad_sums(dy, x, mean, scale, shift, activation, param)
    inv_std = 1.0 / np.sqrt(var + eps)
    dbias.copy_(torch.from_numpy(sum_dy))
    if dweight is not None:
        dweight.copy_(torch.from_numpy(sum_dy_xc * inv_std))
    if need_dx:
        k_dy = _float64_vector(weight, channels, 1.0) * inv_std
        count = numel // channels
        k_x = -k_dy * inv_std * inv_std * sum_dy_xc / count if batch_stats else np.zeros(channels)
        k_0 = -k_dy * sum_dy / count if batch_stats else np.zeros(channels)
        dx = grad_input(dy, x, mean, k_dy, k_x, k_0, scale, shift, activation, param)
    return dx, dweight, dbias
