"""MNIST IDX files that are damaged give a ValueError naming the file, and the lab exits 2 with one line."""

import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest

from batchnorm.lab.data import read_mnist_idx


def _write_mnist(directory, images=None):
    rng = np.random.default_rng()
    for prefix, count in (("train", 6), ("t10k", 4)):
        pixels = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, count, 28, 28)
                                                                + pixels.tobytes())
        (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, count)
                                                                + labels.tobytes())


def test_complete_files_load(tmp_path):
    _write_mnist(tmp_path)
    data = read_mnist_idx(str(tmp_path))
    assert data.x_train.shape == (6, 1, 28, 28) and float(data.x_train.max()) <= 1.0


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:9], "is truncated: its header declares 3 dimensions"),
    (lambda raw: raw[:-1], "declares shape"),
])
def test_truncated_files_are_refused_naming_the_file(tmp_path, damage, message):
    _write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message) as caught:
        read_mnist_idx(str(tmp_path))
    assert "train-images-idx3-ubyte" in str(caught.value)


def test_a_gz_that_is_not_gzip_is_refused_and_the_lab_exits_2(tmp_path):
    _write_mnist(tmp_path)
    plain = tmp_path / "train-labels-idx1-ubyte"
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    plain.unlink()
    with pytest.raises(ValueError, match="could not be read as a gzip-compressed IDX file"):
        read_mnist_idx(str(tmp_path))
    truncated = gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 6) + bytes(6))[:-12]
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(truncated)
    with pytest.raises(ValueError, match="gzip-compressed IDX"):
        read_mnist_idx(str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "batchnorm", "lab", "E4", "--quick", "--jobs", "1", "--data",
                           f"mnist:{tmp_path}", "--out", str(tmp_path / "report")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "gzip-compressed IDX" in done.stderr
