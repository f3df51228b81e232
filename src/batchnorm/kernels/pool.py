"""Reuse of large output buffers for outputs computed without autograd (inference, statistics recalibration).

A fresh multi-megabyte tensor costs more than the batch-norm pass that fills it: glibc serves it from newly
mapped pages (one page fault per 4 KiB on first write) or from memory that has long left the caches. Under
`torch.no_grad()` an output usually dies right after the next layer has read it, so its memory can be handed to
the next output of the same size, still mapped and warm. (With autograd the next layer saves its input for the
backward pass, and nothing would come back in time; those outputs are allocated fresh, `kernels._new_like`.)

Mechanics: a pooled output is a view of a NumPy block whose owner object (`_Block`) returns the block to the
pool when the last tensor or view over it dies, so a block is never handed out while any tensor still uses it.
The pool keeps at most `config.POOL_BLOCKS_PER_SIZE` free blocks of each size and `config.POOL_MAX_BYTES` in all
(0 disables it; the environment variable BATCHNORM_POOL_MB sets the cap in MiB); only outputs of at least
`config.POOL_MIN_BYTES` take part. A pooled tensor cannot grow with `resize_` (torch raises a RuntimeError), as
every output of this package's kernels: they write through a NumPy view, which makes torch mark the storage
non-resizable.
"""

from __future__ import annotations

import numpy as np
import torch

from . import config

_FREE: dict[int, list[np.ndarray]] = {}  # block size in bytes -> free blocks
_free_bytes = [0]  # bytes in free blocks (updated under the GIL; approximate if threads race)
_NUMPY = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


class _Block:
    """Owner of one block: NumPy sees the elements through `__array_interface__`, and the block goes back to
    the pool when this object dies (after the last array, tensor and view over it)."""

    __slots__ = ("memory", "__array_interface__")

    def __init__(self, memory: np.ndarray, dtype: np.dtype):
        self.memory = memory
        self.__array_interface__ = {"shape": (memory.nbytes // dtype.itemsize,), "typestr": dtype.str,
                                    "data": (memory.ctypes.data, False), "version": 3}

    def __del__(self):
        nbytes = self.memory.nbytes
        free = _FREE.setdefault(nbytes, [])
        if len(free) < config.POOL_BLOCKS_PER_SIZE and _free_bytes[0] + nbytes <= config.POOL_MAX_BYTES:
            free.append(self.memory)
            _free_bytes[0] += nbytes


def free_bytes() -> int:
    """Bytes held in free blocks."""
    return _free_bytes[0]


def clear() -> None:
    """Drop every free block (their memory goes back to the allocator)."""
    _FREE.clear()
    _free_bytes[0] = 0


def take(x: torch.Tensor) -> np.ndarray | None:
    """A flat uninitialized NumPy array with x's dtype and number of elements over a pooled block (a free block of
    that size when there is one), or None when the pool does not take outputs like x (not float32/float64,
    smaller than POOL_MIN_BYTES, or the pool disabled)."""
    dtype = _NUMPY.get(x.dtype)
    nbytes = x.numel() * x.element_size()
    if dtype is None or config.POOL_MAX_BYTES <= 0 or nbytes < max(config.POOL_MIN_BYTES, 1):
        return None
    try:
        memory = _FREE[nbytes].pop()
        _free_bytes[0] -= nbytes
    except (KeyError, IndexError):
        memory = np.empty(nbytes, np.uint8)
    return np.asarray(_Block(memory, dtype))
