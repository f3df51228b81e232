"""Tests of the atomic writer: a write that fails partway (a real file-size limit, an exception in the writer)
leaves the target byte-identical and no temporary file; permissions follow the umask or the replaced file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from batchnorm._atomic import atomic_open, atomic_path, atomic_write


def _listing(directory):
    return sorted(os.listdir(directory))


def test_atomic_write_bytes_and_text(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write(target, "héllo\n")
    assert target.read_bytes() == "héllo\n".encode()
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _listing(tmp_path) == ["out.txt"]
    with pytest.raises(TypeError, match="bytes or str, got int"):
        atomic_write(target, 3)


@pytest.mark.parametrize("opener", ["atomic_open", "atomic_path"])
def test_exception_in_the_writer_leaves_the_target_untouched(tmp_path, opener):
    target = tmp_path / "model.pt"
    torch.save({"w": torch.randn(50)}, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        if opener == "atomic_open":
            with atomic_open(target, "wb") as handle:
                handle.write(b"partial content")
                raise RuntimeError("disk full")
        else:
            with atomic_path(target) as temporary:
                with open(temporary, "wb") as handle:
                    handle.write(b"partial content")
                raise RuntimeError("disk full")
    assert target.read_bytes() == before
    assert _listing(tmp_path) == ["model.pt"]


def test_a_write_cut_by_the_file_size_limit_leaves_the_original_byte_identical(tmp_path):
    """A real partial write: RLIMIT_FSIZE makes write() fail with EFBIG halfway through torch.save."""
    target = tmp_path / "precious.pt"
    torch.save({"w": torch.randn(1000)}, target)
    before = target.read_bytes()
    script = textwrap.dedent(f"""
        import resource, sys, torch
        from batchnorm._atomic import atomic_open, atomic_path
        resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) // 2}, {len(before) // 2}))
        failures = 0
        try:
            with atomic_open({str(target)!r}, "wb") as handle:
                torch.save({{"w": torch.randn(1000)}}, handle)
        except Exception as error:
            failures += 1
        try:
            with atomic_path({str(target)!r}) as temporary:
                torch.save({{"w": torch.randn(1000)}}, temporary)
        except Exception as error:
            failures += 1
        sys.exit(10 + failures)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 12, done.stderr
    assert target.read_bytes() == before
    assert _listing(tmp_path) == ["precious.pt"]
    assert torch.load(target, weights_only=True)["w"].shape == (1000,)


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new.json", "{}")
        with atomic_path(tmp_path / "new.onnx") as temporary:
            with open(temporary, "wb") as handle:
                handle.write(b"onnx")
    finally:
        os.umask(old)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "new.onnx").stat().st_mode & 0o777 == 0o640
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o604)
    atomic_write(kept, "new")
    assert kept.read_text() == "new" and kept.stat().st_mode & 0o777 == 0o604


def test_directory_and_missing_parent_fail_before_writing(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic_write(tmp_path / "adir", "x")
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no" / "such" / "file.txt", "x")
    assert _listing(tmp_path) == ["adir"] and _listing(tmp_path / "adir") == []


def test_a_symbolic_link_is_followed(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    atomic_write(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
