"""From torch tensors to the kernels' arrays: memory layout, outputs, per-channel views and thread decisions.

  * layout: a 2-D input (N, C) and a channels_last 4-D/5-D input run on the rows kernels (R, C) with
    R = N * spatial; a contiguous (N, C, *spatial) input on the channels-first kernels (N, C, S); anything
    else (sliced or permuted views) is first copied to contiguous memory (torch does the same);
  * threads: inputs with fewer than `config.PARALLEL_MIN_ELEMENTS` elements run single-threaded, larger
    ones on `torch.get_num_threads()` Numba threads (`threads_for`); one parallel kernel at a time (`call`);
    Numba's OpenMP layer is preferred (`config.THREADING_LAYERS`); in a process forked from one whose pool
    runs, the serial kernels run;
  * outputs: the memory of a dead output of the same size (`pool`), else allocated by NumPy (`new_like`:
    transparent huge pages for large blocks);
  * per-channel tensors (weight, bias, running buffers): NumPy views sharing their memory (`vector`).
"""

from __future__ import annotations

import os
import threading
import weakref

import numba
import numpy as np
import torch

from . import config, pool

# The helpers below are on the per-call path of every eager batch-norm layer, so they avoid needless Python work.
NUMPY_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
ABSENT = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}  # no tensor
_NUMBA_MAX_THREADS = numba.config.NUMBA_NUM_THREADS


def is_channels_last(x: torch.Tensor) -> bool:
    """True if x is a 4-D/5-D tensor stored channels_last (and not also plain contiguous)."""
    if x.dim() == 4:
        fmt = torch.channels_last
    elif x.dim() == 5:
        fmt = torch.channels_last_3d
    else:
        return False
    return x.is_contiguous(memory_format=fmt) and not x.is_contiguous()


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format a kernel reads and writes for x: channels_last(_3d) for such an x, else contiguous."""
    if is_channels_last(x):
        return torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return torch.contiguous_format


def empty_output_like(x: torch.Tensor) -> torch.Tensor:
    """The layout of the output a kernel writes for input x (channels_last stays channels_last, all else
    contiguous), allocated by torch: for fake tensors (`register_fake`). Real outputs use `new_output_like`."""
    return torch.empty_like(x, memory_format=memory_format(x))


_CHANNELS_FIRST = {4: (0, 3, 1, 2), 5: (0, 4, 1, 2, 3)}  # (N, *spatial, C) memory seen as (N, C, *spatial)


def new_like(x: torch.Tensor, rows: bool) -> tuple[torch.Tensor, np.ndarray | None]:
    """(a new tensor with x's shape, dtype and layout, its NumPy view in the kernels' layout) for a dense x,
    taken from `pool` when the pool takes it, else allocated by NumPy. NumPy asks the kernel for
    transparent huge pages on large blocks (madvise), so a fresh multi-megabyte output takes one page fault per
    2 MiB instead of one per 4 KiB page (measured on 64x64x112x112: training forward+backward 10.2 -> 7.0
    copies, page faults per call 100354 -> 768)."""
    if not x.numel():  # torch's strides for an empty tensor (NumPy's would be 0); no kernel writes it
        return torch.empty_like(x, memory_format=memory_format(x)), None
    n, c = x.shape[0], x.shape[1]
    space = x.numel() // (n * c)
    # channels_last(_3d) is (N, *spatial, C) in memory
    shape = (n, *x.shape[2:], c) if rows and x.dim() > 2 else tuple(x.shape)
    flat = pool.take(x)
    memory = np.empty(shape, NUMPY_DTYPE[x.dtype]) if flat is None else flat.reshape(shape)
    if not rows:
        return torch.from_numpy(memory), memory.reshape(n, c, space)
    # a tensor over the transposed array (not a `movedim` view of one): autograd lets in-place ops such as
    # ReLU(inplace=True) or a residual `+=` modify it, as they modify torch's own channels_last outputs
    layout = memory.transpose(_CHANNELS_FIRST[x.dim()]) if x.dim() > 2 else memory
    return torch.from_numpy(layout), memory.reshape(n * space, c)


def new_output_like(x: torch.Tensor) -> torch.Tensor:
    """A new output for input x in the layout of `empty_output_like(x)`, allocated by NumPy (`new_like`)."""
    return new_like(x, x.dim() == 2 or is_channels_last(x))[0]


def dense(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t in the memory layout the kernels use for `like` (a no-op when it already is)."""
    return t.contiguous(memory_format=memory_format(like))


def dense_rows(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(x in a layout the kernels read, True for the rows layout): 2-D and channels_last are rows."""
    if x.is_contiguous():
        return x, x.dim() == 2
    if is_channels_last(x):
        return x, True
    return x.contiguous(), x.dim() == 2


def array(t: torch.Tensor, rows: bool) -> np.ndarray:
    """NumPy view of a dense tensor in the kernels' layout: (R, C) rows, or (N, C, S) channels-first."""
    a = (t.detach() if t.requires_grad else t).numpy()
    if t.dim() == 2:
        return a
    if rows:
        return a.transpose((0,) + tuple(range(2, t.dim())) + (1,)).reshape(-1, t.shape[1])
    return a.reshape(t.shape[0], t.shape[1], -1)


def view(t: torch.Tensor) -> np.ndarray:
    """NumPy view of a dense tensor in its own layout: (R, C) for 2-D and channels_last, (N, C, S) otherwise."""
    return array(t, is_channels_last(t))


# NumPy views of the per-channel tensors (weights, biases, running buffers) that layers pass on every call:
# id(tensor) -> (weak reference, data pointer, length, view). An entry is used only while it is the same live
# tensor over the same memory and length, and it disappears with its tensor; this saves a detach + numpy (about
# 1 us) per tensor and call, which matters for small inputs.
_VIEWS: dict[int, tuple] = {}


def _forget(key: int):
    return lambda _ref: _VIEWS.pop(key, None)


def vector(t, dtype: np.dtype) -> np.ndarray:
    """A per-channel tensor as a NumPy view sharing its memory, or a length-0 array (of `dtype`) for None."""
    if t is None:
        return ABSENT[dtype]
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


def numpy_dtype(x: torch.Tensor) -> np.dtype:
    """The NumPy dtype of a float32/float64 tensor."""
    return NUMPY_DTYPE[x.dtype]


def output_for(x: torch.Tensor, out, rows: bool) -> tuple[torch.Tensor, np.ndarray | None]:
    """(the tensor a fused entry point writes, its NumPy view in the kernels' layout or None for an empty x):
    `out` (x itself for an in-place layer; it must have x's layout), else a new tensor like x (`new_like`)."""
    if out is None:
        return new_like(x, rows)
    if out.stride() != x.stride() or out.shape != x.shape:
        raise ValueError(f"out must have the input's shape and memory layout, got shape {tuple(out.shape)} "
                         f"strides {out.stride()} for an input of shape {tuple(x.shape)} strides {x.stride()}")
    return out, (array(out, rows) if x.numel() else None)


# Numba's threading layer: the first of `config.THREADING_LAYERS` that loads, unless the user chose one
# (NUMBA_THREADING_LAYER) or Numba has already started one.
if not config.NUMBA_LAYER_CHOSEN_BY_USER and numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER_PRIORITY = list(config.THREADING_LAYERS)


# One parallel kernel at a time: a call that finds another thread inside a parallel kernel runs the serial
# twin instead (the workqueue layer must not be entered concurrently, and two teams on the same cores would
# only slow each other down).
_PARALLEL = threading.Lock()


def call(kernel, threads: int, *args):
    """Run kernel = (serial, parallel) compiled twins: the parallel one when threads > 1 and no other thread is
    in a parallel kernel, else the serial one."""
    if threads > 1 and _PARALLEL.acquire(blocking=False):
        try:
            return kernel[1](*args)
        finally:
            _PARALLEL.release()
    return kernel[0](*args)


_POOL_PID: list[int] = []  # the process that started Numba's thread pool through this module


def threads_for(numel: int) -> int:
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


def launch(channels_first, rows, x: torch.Tensor, xv: np.ndarray, *args) -> None:
    """Run the channels-first or the rows kernel (serial or parallel) for x, whose NumPy view is xv; both take
    their number of parallel blocks first."""
    threads = threads_for(x.numel())
    if xv.ndim == 3:
        call(channels_first, threads, config.sample_blocks(xv.shape[0], xv.shape[1], threads), *args)
        return
    call(rows, threads, 1 if threads == 1 else config.row_blocks(xv.shape[0], threads), *args)


def channel_blocks(xv: np.ndarray, threads: int) -> int:
    """Channel blocks of a fused channels-first kernel over the (N, C, S) view xv."""
    return config.channel_blocks(xv.shape[0], xv.shape[1], xv.shape[2], xv.itemsize, threads)


def fused_channels_first(threads: int, channels: int) -> bool:
    """Whether the per-channel fused sweep keeps every thread busy (the serial kernel always is fused)."""
    return threads == 1 or channels >= config.FUSED_MIN_CHANNELS_PER_THREAD * threads
