"""Atomic file writes: the target holds either its old content or the complete new one, never a partial file.

Every file the package writes (checkpoints, ONNX models, reports, caches, benchmark JSON) goes through here.
The new content is written to a temporary file in the target's directory (same file system, so the final
rename is atomic), flushed and fsync'ed, then moved over the target with `os.replace`; the directory is fsync'ed
afterwards so the rename survives a crash. If anything fails (a full disk, a file-size limit, an exception in
the writer, Ctrl-C), the temporary file is removed and the target is untouched.

Permissions: a new file gets 0o666 minus the process umask, as `open(path, "w")` would; a file that is
replaced keeps its permission bits. A target that is a symbolic link is followed (the file it points to is
replaced, the link stays).

This module imports nothing else from the package, so every layer may use it.

Example:
    >>> import json, os, tempfile
    >>> import torch
    >>> from batchnorm._atomic import atomic_open, atomic_path, atomic_write
    >>> folder = tempfile.mkdtemp()
    >>> atomic_write(os.path.join(folder, "report.json"), json.dumps({"ok": True}))
    >>> with atomic_open(os.path.join(folder, "table.csv"), "w") as f:
    ...     _ = f.write("a,b\\n")
    >>> with atomic_path(os.path.join(folder, "model.pt")) as tmp:   # for writers that want a path
    ...     torch.save({"w": torch.ones(2)}, tmp)
    >>> sorted(os.listdir(folder))
    ['model.pt', 'report.json', 'table.csv']
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from typing import IO, Iterator

__all__ = ["atomic_write", "atomic_open", "atomic_path", "write_problem"]


def write_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be written atomically (a directory; a missing or read-only parent directory; a read-only
    file), as a phrase; None when it can. Lets a command refuse a bad output path before doing any work."""
    target = os.path.realpath(os.fspath(path))
    if os.path.isdir(target):
        return "is a directory: give a file name"
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        return f"cannot be created: the directory {parent!r} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be written: the directory {parent!r} is not writable"
    if os.path.exists(target) and not os.access(target, os.W_OK):
        return "is read-only: make it writable or choose another file"
    return None


def _resolve(path: str | os.PathLike) -> str:
    target = os.path.realpath(os.fspath(path))
    if os.path.isdir(target):
        raise IsADirectoryError(f"cannot write {os.fspath(path)!r}: it is a directory; give a file name")
    return target


def _create_temporary(target: str) -> tuple[int, str]:
    """A new empty file next to `target`, mode 0o666 & ~umask: (fd, path)."""
    directory, name = os.path.split(target)
    for _ in range(100):
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        return fd, temporary
    raise FileExistsError(f"could not create a temporary file next to {target!r}")


def _sync_directory(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                          # some file systems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _discard(temporary: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(temporary)


def _commit(temporary: str, target: str) -> None:
    try:
        os.chmod(temporary, stat.S_IMODE(os.stat(target).st_mode))       # replacing a file: keep its mode
    except FileNotFoundError:
        pass
    os.replace(temporary, target)
    _sync_directory(os.path.dirname(target))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it atomically replaces `path`.

    Args:
        path: the target file.
        mode: "w" (text, default) or "wb" (bytes).
        encoding: "utf-8" (text mode only).
        newline: None (text mode only, as in `open`).

    Example:
        >>> import os, tempfile
        >>> import torch
        >>> from batchnorm._atomic import atomic_open
        >>> path = os.path.join(tempfile.mkdtemp(), "out.pt")
        >>> with atomic_open(path, "wb") as f:
        ...     torch.save(torch.nn.BatchNorm1d(4).state_dict(), f)
        >>> sorted(torch.load(path))
        ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    target = _resolve(path)
    fd, temporary = _create_temporary(target)
    try:
        if mode == "wb":
            handle = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _commit(temporary, target)
    except BaseException:
        _discard(temporary)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path for writers that open the file themselves (`torch.onnx.export`, `torch.save(obj, path)`);
    on a clean exit its content is fsync'ed and atomically replaces `path`.

    Example:
        >>> import os, tempfile
        >>> from batchnorm._atomic import atomic_path
        >>> path = os.path.join(tempfile.mkdtemp(), "data.bin")
        >>> with atomic_path(path) as tmp:
        ...     with open(tmp, "wb") as f:
        ...         _ = f.write(b"payload")
        >>> open(path, "rb").read()
        b'payload'
    """
    target = _resolve(path)
    fd, temporary = _create_temporary(target)
    os.close(fd)
    try:
        yield temporary
        fd = os.open(temporary, os.O_RDONLY)     # the writer may have replaced the file: sync what is there now
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(temporary, target)
    except BaseException:
        _discard(temporary)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, *, encoding: str = "utf-8") -> None:
    """Write `data` (bytes, or text encoded with `encoding`, default "utf-8") to `path` atomically."""
    if isinstance(data, str):
        data = data.encode(encoding)
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write expected data to be bytes or str, got {type(data).__name__}")
    with atomic_open(path, "wb") as handle:
        handle.write(data)
