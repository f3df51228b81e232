"""Clears the in-tree Numba cache when any kernel source changed; `batchnorm.kernels` runs it before compiling.

Numba keys a cached kernel on the timestamp of its own file only, so an edit of a helper module the kernels
call (activations.py, config.py) would leave stale machine code in the cache. A digest of all kernel sources
(every .py file of `numba/` plus activations.py and config.py), kept next to the cache, clears the cache
whenever any of them changed. (A read-only install uses Numba's user-wide cache; upgrades replace every file
there, which invalidates it.)
"""

from __future__ import annotations

import glob
import hashlib
import os

from .._atomic import atomic_write

_HERE = os.path.dirname(os.path.abspath(__file__))


def kernel_sources() -> list[str]:
    """The files whose machine code Numba caches or inlines into the cached kernels, in a stable order."""
    jitted = sorted(glob.glob(os.path.join(_HERE, "numba", "*.py")))
    return jitted + [os.path.join(_HERE, "activations.py"), os.path.join(_HERE, "config.py")]


def clear_stale_kernel_cache() -> None:
    """Remove the cached kernels (.nbi/.nbc) of this package when the digest of `kernel_sources()` changed."""
    digest = hashlib.sha256()
    for path in kernel_sources():
        with open(path, "rb") as source:
            digest.update(source.read())
    stamp = os.path.join(_HERE, "__pycache__", "kernel-sources.sha256")
    try:
        with open(stamp) as f:
            if f.read() == digest.hexdigest():
                return
    except OSError:
        pass
    try:
        for folder in (os.path.join(_HERE, "__pycache__"), os.path.join(_HERE, "numba", "__pycache__")):
            os.makedirs(folder, exist_ok=True)
            for name in os.listdir(folder):
                if name.endswith((".nbi", ".nbc")):
                    os.remove(os.path.join(folder, name))
        atomic_write(stamp, digest.hexdigest())
    except OSError:
        pass
