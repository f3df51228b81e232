"""Reuse of large output buffers: every output of the kernels (forward y, backward dx) of at least
`config.POOL_MIN_BYTES` takes the memory of a dead output of the same size when there is one.

A fresh multi-megabyte tensor costs more than the batch-norm pass that fills it: the allocator serves it from
newly mapped pages (a page fault and the kernel's zeroing per 4 KiB on first write) or from memory that has long
left the caches. Measured on a training loop that interleaves other allocations, (4096, 1024) forward+backward
took 12.8 copies of the input with fresh outputs and 3.8 with pooled ones. In a training loop the outputs of one
step die when its backward pass ends (y) or right after the layer below has read them (dx), and the next step
asks for the same sizes again; under `torch.no_grad()` an output dies after the next layer has read it.

Mechanics: a pooled output is a view of a NumPy block whose owner object (`_Block`) returns the block to the
pool when the last tensor or view over it dies (autograd's saved tensors and `.grad` included), so a block is
never handed out while anything still uses it. The pool keeps at most `config.POOL_BLOCKS_PER_SIZE` free blocks
of each size and `config.POOL_MAX_BYTES` in all (0 disables it; the environment variable BATCHNORM_POOL_MB sets
the cap in MiB); when a returned block would pass the cap, the blocks of the sizes least recently used are
released first. A pooled tensor cannot grow with `resize_` (torch raises a RuntimeError), as every output of
this package's kernels: they write through a NumPy view, which makes torch mark the storage non-resizable.
"""

from __future__ import annotations

import numpy as np
import torch

from . import config

_FREE: dict[int, list[np.ndarray]] = {}  # block size in bytes -> free blocks, least recently used size first
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
        _give_back(self.memory)


def _give_back(memory: np.ndarray) -> None:
    """Keep a dead output's block for the next output of its size, within the caps (least recently used sizes
    are released first to make room)."""
    nbytes = memory.nbytes
    free = _FREE.pop(nbytes, [])
    _FREE[nbytes] = free  # now the most recently used size
    if len(free) >= config.POOL_BLOCKS_PER_SIZE or nbytes > config.POOL_MAX_BYTES:
        return
    for size in list(_FREE):
        if _free_bytes[0] + nbytes <= config.POOL_MAX_BYTES or size == nbytes:
            break
        _free_bytes[0] -= size * len(_FREE.pop(size))
    if _free_bytes[0] + nbytes <= config.POOL_MAX_BYTES:
        free.append(memory)
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
    free = _FREE.get(nbytes)
    if free:
        memory = free.pop()
        _free_bytes[0] -= nbytes
    else:
        memory = np.empty(nbytes, np.uint8)
    return np.asarray(_Block(memory, dtype))
