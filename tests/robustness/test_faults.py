"""Fault injection: unsafe or damaged files fed to every CLI path that reads one, and distributed faults.

Safe loading: `batchnorm fold|recalibrate|doctor --weights FILE` and `recalibrate|doctor --data FILE` (.pt, .npy,
.npz), and the lab's `cifar10:DIR` data reader, are fed (a) a pickle whose unpickling would create a marker
file (`os.system("touch MARKER")` through `__reduce__`), (b) a truncated copy of a valid file, (c) random bytes.
Each must end with exit code 2 (ValueError for the library reader), a one-line message naming the file, and
the marker must never exist.

Distributed faults (tests/helpers/fault_worker.py, gloo on 127.0.0.1, every launch killed after LAUNCH_TIMEOUT s): a
rank that dies before the forward's collective, a rank whose layer has a different channel count, and a rank
that stalls past the process group's timeout. The surviving ranks must raise an error that says what failed,
well before the launch timeout (never a hang).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from batchnorm.cli import main
from helpers.ranks import launch_ranks

FACTORY = textwrap.dedent('''
    """Model factory for the fault tests."""
    import torch
    from torch import nn


    def make_net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
''')

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")   # the raw-pickle payloads



class Exploit:
    """Unpickling this object runs `os.system('touch MARKER')`: the classic malicious pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_pt(path: Path, marker: Path) -> None:
    """A torch.save file whose payload executes a command when loaded with weights_only=False."""
    torch.save({"conv.weight": torch.zeros(1), "evil": Exploit(marker)}, path)


def _malicious_raw_pickle(path: Path, marker: Path) -> None:
    """A plain pickle (not a torch zip) with the same payload: torch.load falls back to the legacy format."""
    path.write_bytes(pickle.dumps(Exploit(marker)))


def _malicious_npy(path: Path, marker: Path) -> None:
    """A .npy of dtype object: NumPy pickles its items, so loading with allow_pickle=True would execute them."""
    array = np.empty(1, dtype=object)
    array[0] = Exploit(marker)
    np.save(path, array, allow_pickle=True)


def _malicious_npz(path: Path, marker: Path) -> None:
    array = np.empty(1, dtype=object)
    array[0] = Exploit(marker)
    np.savez(path, inputs=array)


def _truncated(path: Path, source: bytes) -> None:
    path.write_bytes(source[: len(source) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    (root / "fault_factories.py").write_text(FACTORY)
    namespace = {}
    exec(FACTORY, namespace)
    torch.save(namespace["make_net"]().state_dict(), root / "good_weights.pt")
    torch.save(torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(0)), root / "good_data.pt")
    np.save(root / "good_data.npy", np.random.default_rng(1).standard_normal((16, 3, 6, 6)).astype(np.float32))
    np.savez(root / "good_data.npz", inputs=np.random.default_rng(2).standard_normal((16, 3, 6, 6)))
    return root


def _bad_files(good: Path, root: Path, kind: str, marker: Path) -> dict[str, Path]:
    """Every damaged or malicious variant (in `root`) of the intact file of `kind` in `good` ('weights',
    'data.pt', 'data.npy', 'data.npz')."""
    suffix = {"weights": ".pt", "data.pt": ".pt", "data.npy": ".npy", "data.npz": ".npz"}[kind]
    source = (good / {"weights": "good_weights.pt", "data.pt": "good_data.pt", "data.npy": "good_data.npy",
                      "data.npz": "good_data.npz"}[kind]).read_bytes()
    stem = kind.replace(".", "_")
    files = {}
    if suffix == ".pt":
        files["malicious-torch-save"] = root / f"{stem}_malicious{suffix}"
        _malicious_pt(files["malicious-torch-save"], marker)
        files["malicious-raw-pickle"] = root / f"{stem}_rawpickle{suffix}"
        _malicious_raw_pickle(files["malicious-raw-pickle"], marker)
    elif suffix == ".npy":
        files["malicious-object-array"] = root / f"{stem}_malicious{suffix}"
        _malicious_npy(files["malicious-object-array"], marker)
    else:
        files["malicious-object-array"] = root / f"{stem}_malicious{suffix}"
        _malicious_npz(files["malicious-object-array"], marker)
    files["truncated"] = root / f"{stem}_truncated{suffix}"
    _truncated(files["truncated"], source)
    files["garbage"] = root / f"{stem}_garbage{suffix}"
    _garbage(files["garbage"])
    return files


def _cli(args: list[str], cwd: Path, capsys) -> tuple[int, str]:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(args)
    finally:
        os.chdir(old)
    captured = capsys.readouterr()
    return code, captured.err


COMMANDS = {
    # command -> the arguments besides MODEL and the file under test
    "fold": [],
    "recalibrate": ["--out", "out.pt"],
    "doctor": [],
}


def _check_refused(code: int, err: str, option: str, path: Path, marker: Path) -> None:
    assert code == 2, err
    assert not marker.exists(), "the malicious payload was executed"
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, f"expected a one-line message, got:\n{err}"
    assert "error:" in lines[0] and option in lines[0] and path.name in lines[0], lines[0]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_weights_files_malicious_truncated_or_garbage_are_refused(workdir, tmp_path, capsys, command):
    marker = tmp_path / "PWNED"
    files = _bad_files(workdir, tmp_path, "weights", marker)
    data = ["--data", str(workdir / "good_data.pt")] if command != "fold" else []
    for name, path in files.items():
        code, err = _cli([command, "fault_factories:make_net", "--weights", str(path), *COMMANDS[command], *data],
                         workdir, capsys)
        _check_refused(code, err, "--weights", path, marker)
    assert not (workdir / "out.pt").exists()


@pytest.mark.parametrize("command", ["recalibrate", "doctor"])
@pytest.mark.parametrize("kind", ["data.pt", "data.npy", "data.npz"])
def test_data_files_malicious_truncated_or_garbage_are_refused(workdir, tmp_path, capsys, command, kind):
    marker = tmp_path / "PWNED"
    files = _bad_files(workdir, tmp_path, kind, marker)
    for name, path in files.items():
        code, err = _cli([command, "fault_factories:make_net", "--data", str(path), *COMMANDS[command]], workdir,
                         capsys)
        _check_refused(code, err, "--data", path, marker)
    assert not (workdir / "out.pt").exists()


def test_good_files_still_work(workdir, capsys, tmp_path):
    """The oracle side: the same commands accept the intact files (so a refusal above is about the damage)."""
    out = tmp_path / "recalibrated.pt"
    for kind in ("good_data.pt", "good_data.npy", "good_data.npz"):
        code, err = _cli(["recalibrate", "fault_factories:make_net", "--weights", str(workdir / "good_weights.pt"),
                          "--data", str(workdir / kind), "--out", str(out)], workdir, capsys)
        assert code == 0, err
        state = torch.load(out, weights_only=True)
        assert set(state) == set(torch.load(workdir / "good_weights.pt", weights_only=True))


def test_exit_code_of_the_installed_command_is_2(workdir, tmp_path):
    """The real process exit status (not just main()'s return value), for a malicious weights file."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    _malicious_pt(path, marker)
    proc = subprocess.run([sys.executable, "-m", "batchnorm", "fold", "fault_factories:make_net", "--weights",
                           str(path)], cwd=workdir, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr
    assert "weights_only" in proc.stderr and "evil.pt" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------ the lab's file readers
def _cifar_dir(root: Path, payload: bytes | None) -> Path:
    """A cifar-10-batches-py folder: valid tiny batches, test_batch replaced by `payload` when given."""
    directory = root / "cifar"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "test_batch"):
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(range(4))}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    if payload is not None:
        (directory / "test_batch").write_bytes(payload)
    return directory


def test_lab_cifar_reader_reads_real_batches_and_refuses_malicious_or_corrupt_ones(tmp_path):
    from batchnorm.lab.data import load

    good = load(f"cifar10:{_cifar_dir(tmp_path / 'good', None)}")
    assert good.x_train.shape == (4, 3, 32, 32) and good.y_test.tolist() == [0, 1, 2, 3]
    marker = tmp_path / "PWNED"
    valid = (tmp_path / "good" / "cifar" / "test_batch").read_bytes()
    for name, payload in (("malicious", pickle.dumps(Exploit(marker))), ("truncated", valid[: len(valid) // 2]),
                          ("garbage", bytes(range(256)) * 8)):
        directory = _cifar_dir(tmp_path / name, payload)
        with pytest.raises(ValueError, match=r"test_batch.*(CIFAR-10|could not be read)"):
            load(f"cifar10:{directory}")
        assert not marker.exists()


# ------------------------------------------------------------------------------------ distributed faults
LAUNCH_TIMEOUT = 60.0


def _launch(scenario: str, world: int, pg_timeout: float) -> tuple[list[tuple[int, str]], float]:
    """Run the fault worker on `world` ranks; ([(returncode, stderr)], seconds). Kills everything on timeout."""
    return launch_ranks("fault_worker.py", [scenario], world, LAUNCH_TIMEOUT, {"FAULT_PG_TIMEOUT": str(pg_timeout)})


@pytest.mark.timeout(90)
def test_a_rank_that_dies_before_the_forward_collective(tmp_path):
    results, seconds = _launch("die_forward", 2, pg_timeout=20.0)
    (code0, err0), (code1, _) = results
    assert code1 == 3
    assert code0 == 17, err0[-2000:]        # the worker's code for "raised RuntimeError with our message"
    assert "merge_moments: the all_gather of per-channel (count, mean, M2) across 2 ranks failed on rank 0" in err0
    assert seconds < LAUNCH_TIMEOUT


@pytest.mark.timeout(90)
def test_a_rank_with_a_different_channel_count(tmp_path):
    results, seconds = _launch("mismatch", 2, pg_timeout=20.0)
    for rank, (code, err) in enumerate(results):
        assert code == 17, f"rank {rank}: exit {code}\n{err[-2000:]}"
        assert "ValueError: SyncBatchNorm expected the same num_features on every rank" in err, err[-2000:]
        assert "channel counts [4, 5]" in err, err[-2000:]
    assert seconds < LAUNCH_TIMEOUT


@pytest.mark.timeout(90)
def test_a_rank_that_stalls_past_the_timeout(tmp_path):
    results, seconds = _launch("stall", 2, pg_timeout=3.0)
    (code0, err0), _ = results
    assert code0 == 17, err0[-2000:]
    assert "merge_moments" in err0 and "failed on rank 0" in err0
    assert seconds < LAUNCH_TIMEOUT


@pytest.mark.timeout(90)
def test_recalibrate_across_ranks_never_hangs(tmp_path):
    """tools.recalibrate on 2 gloo ranks (one launch, four cases; the worker checks statistics against NumPy):
    a rank without batches contributes zero counts; NaN on one rank fails every rank at once with the same
    message; a SyncBatchNorm model (a collective in every forward) works with equal batch counts and fails on
    every rank before any forward with unequal ones. All well before the process group's 20 s timeout."""
    results, seconds = _launch("recalibrate", 2, pg_timeout=20.0)
    outcomes = []
    for rank, (code, err) in enumerate(results):
        assert code == 0, f"rank {rank}: exit {code}\n{err[-2000:]}"
        outcomes.append(dict(line.split(": ", 1) for line in err.splitlines()
                             if line.split(": ", 1)[0] in ("no_batches", "nan", "sync_even", "sync_uneven")))
    for rank, outcome in enumerate(outcomes):
        assert outcome["no_batches"] == "ok", (rank, outcome)
        assert outcome["sync_even"] == "ok", (rank, outcome)
        assert outcome["nan"].startswith("raised ValueError: ") and \
            "batch 0 (counting from 0) gives non-finite statistics at layer '0'" in outcome["nan"], (rank, outcome)
        assert outcome["sync_uneven"].startswith("raised ValueError: ") and \
            "every rank must pass the same number of batches; got [2, 1]" in outcome["sync_uneven"], (rank, outcome)
    assert "rank 1 failed, so no rank changes its statistics" in outcomes[0]["nan"]
    assert seconds < 20.0


def test_lab_command_with_a_malicious_cifar_batch_exits_2(tmp_path, capsys):
    """`batchnorm lab E1 --data cifar10:DIR` with a malicious test_batch: exit code 2, nothing executed."""
    marker = tmp_path / "PWNED"
    directory = _cifar_dir(tmp_path, pickle.dumps(Exploit(marker)))
    code = main(["lab", "E1", "--quick", "--data", f"cifar10:{directory}", "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "test_batch could not be read as a CIFAR-10 python batch" in err
    assert not marker.exists()
