"""Lab robustness: a run killed mid-experiment resumes without losing or corrupting finished results, and a
corrupt cache entry is detected and recomputed (batchnorm.lab.runner).

Two fake experiments (E97 fast, E98 slow when told to stall) are registered by a small driver script that a
subprocess runs; the test kills that process with SIGKILL while E98 runs (so no cleanup code runs), then
resumes. Each experiment appends a line to a call log, so the test knows exactly what ran again.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from batchnorm.lab import protocol, runner

DRIVER = textwrap.dedent('''
    """Registers fake experiments E97/E98 and runs the lab's runner on them (for tests/lab/test_lab_robustness.py)."""
    import os
    import sys
    import time
    import types
    from dataclasses import dataclass

    from batchnorm.lab import experiments, protocol, runner

    LOG = os.environ["LAB_TEST_LOG"]


    @dataclass
    class Config:
        data: str = "digits"  # dataset
        seeds: int = 2  # seeds
        value: float = 1.5  # the number the fake experiment reports


    def make(eid, stall):
        module = types.ModuleType(f"batchnorm.lab.experiments._fake_{eid}")
        module.__file__ = __file__
        module.ID, module.TITLE, module.Config = eid, f"fake {eid}", Config

        def run(cfg):
            with open(LOG, "a") as f:
                f.write(f"start {eid}\\n")
            if stall and os.environ.get("LAB_TEST_STALL") == "1":
                time.sleep(600)          # killed here by the test
            with open(LOG, "a") as f:
                f.write(f"end {eid}\\n")
            values = [cfg.value * (i + 1) for i in range(cfg.seeds)]
            estimate, ci = protocol.mean_ci(values)
            return protocol.Result(eid, f"fake {eid}", [protocol.Finding(
                "fake claim", "anchor", "holds if the interval lies above 0", protocol.fmt_ci(estimate, ci),
                protocol.Effect("mean", estimate, ci, threshold=-100.0), list(range(cfg.seeds)))],
                numbers={"mean": estimate})

        module.run = run
        sys.modules[module.__name__] = module
        experiments.EXPERIMENTS[eid] = module.__name__.rsplit(".", 1)[1]


    make("E97", stall=False)
    make("E98", stall=True)
    if __name__ == "__main__":
        runner.run_all(["E97", "E98"], out=sys.argv[1], stream=sys.stderr)
''')


@pytest.fixture
def driver(tmp_path):
    path = tmp_path / "lab_driver.py"
    path.write_text(DRIVER)
    return path


def _env(tmp_path: Path, stall: bool) -> dict:
    return dict(os.environ, LAB_TEST_LOG=str(tmp_path / "calls.log"), LAB_TEST_STALL="1" if stall else "0",
                OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().split("\n")[:-1] if log.exists() else []


def _cache_files(out: Path) -> dict[str, dict]:
    """Every cache entry by experiment id; each must be complete JSON that loads as a Result."""
    entries = {}
    for name in sorted(os.listdir(out / "cache")):
        if name.startswith(".") or name == "rejected":
            continue
        data = json.loads((out / "cache" / name).read_text())
        result = protocol.Result.from_json(data)
        entries[result.experiment] = data
    return entries


@pytest.mark.timeout(120)
def test_a_run_killed_mid_experiment_resumes_without_losing_finished_results(tmp_path, driver):
    out = tmp_path / "report"
    proc = subprocess.Popen([sys.executable, str(driver), str(out)], env=_env(tmp_path, stall=True),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while "start E98" not in _calls(tmp_path):
            assert proc.poll() is None, f"the driver exited early:\n{proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "E98 never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)         # no cleanup code runs
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc.stderr.close()
    assert _calls(tmp_path) == ["start E97", "end E97", "start E98"]
    finished = _cache_files(out)
    assert set(finished) == {"E97"}, "only the finished experiment is cached, and it is complete"
    assert finished["E97"]["numbers"]["mean"] == pytest.approx((1.5 + 3.0) / 2)
    e97_bytes = next(p for p in (out / "cache").iterdir() if p.name.startswith("E97")).read_bytes()

    resumed = subprocess.run([sys.executable, str(driver), str(out)], env=_env(tmp_path, stall=False),
                             capture_output=True, text=True, timeout=90)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _calls(tmp_path)[3:] == ["start E98", "end E98"], "E97 must come from the cache, E98 must run"
    assert "E97 fake E97: cached result" in resumed.stderr
    entries = _cache_files(out)
    assert set(entries) == {"E97", "E98"}
    assert next(p for p in (out / "cache").iterdir() if p.name.startswith("E97")).read_bytes() == e97_bytes
    assert (out / "index.html").is_file() and "fake E98" in (out / "index.html").read_text()


CORRUPTIONS = {
    "truncated JSON": lambda text: text[: len(text) // 2],
    "empty file": lambda text: "",
    "binary garbage": None,
    "valid JSON, not a result": lambda text: json.dumps([1, 2, 3]),
    "a result missing its findings": lambda text: json.dumps({k: v for k, v in json.loads(text).items()
                                                               if k != "findings"}),
    "a result with no findings": lambda text: json.dumps(dict(json.loads(text), findings=[])),
    "another experiment's result": lambda text: json.dumps(dict(json.loads(text), experiment="E1")),
    "seconds not a number": lambda text: json.dumps(dict(json.loads(text), seconds="abc")),
    "a verdict its effect does not give": lambda text: json.dumps(dict(json.loads(text), findings=[
        dict(json.loads(text)["findings"][0], verdict="does not hold")])),
    "an effect without numbers": lambda text: json.dumps(dict(json.loads(text), findings=[
        dict(json.loads(text)["findings"][0], effect={"name": "x", "estimate": "big"})])),
    "JSON nested 100k deep": lambda text: "[" * 100_000 + "]" * 100_000,
    "the entry replaced by a directory": None,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_cache_entry_is_detected_and_recomputed(tmp_path, driver, monkeypatch, corruption):
    monkeypatch.setenv("LAB_TEST_LOG", str(tmp_path / "calls.log"))
    monkeypatch.setenv("LAB_TEST_STALL", "0")
    from batchnorm.lab import experiments

    for eid in ("E97", "E98"):      # removed again after the test; the driver sets the real values
        monkeypatch.setitem(experiments.EXPERIMENTS, eid, "")
    driver_module = types.ModuleType("lab_driver")
    driver_module.__file__ = str(driver)
    monkeypatch.setitem(sys.modules, "lab_driver", driver_module)
    saved_modules = dict(sys.modules)
    try:
        exec(compile(DRIVER, str(driver), "exec"), driver_module.__dict__)
        out = tmp_path / "report"
        first = runner.run_all(["E97"], out=str(out), stream=io.StringIO())
        (entry,) = [p for p in (out / "cache").iterdir() if p.is_file() and not p.name.startswith(".")]
        good = entry.read_text()
        if corruption == "binary garbage":
            entry.write_bytes(b"\x00\xff\xfe" * 10)
        elif corruption == "the entry replaced by a directory":
            entry.unlink()
            entry.mkdir()
            (entry / "inside").write_text("x")
        else:
            entry.write_text(CORRUPTIONS[corruption](good))
        stream = io.StringIO()
        second = runner.run_all(["E97"], out=str(out), stream=stream)
        third_stream = io.StringIO()
        third = runner.run_all(["E97"], out=str(out), stream=third_stream)
    finally:
        for name in set(sys.modules) - set(saved_modules):
            if name.startswith("batchnorm.lab.experiments._fake_"):   # only the driver's fake experiments
                del sys.modules[name]
    assert _calls(tmp_path) == ["start E97", "end E97"] * 2, "the corrupt entry must be recomputed, once"
    messages = [line for line in stream.getvalue().splitlines() if "rejected the cache entry" in line]
    assert len(messages) == 1 and "moved it to" in messages[0], stream.getvalue()
    assert "cached result" in third_stream.getvalue() and third[0].numbers == first[0].numbers
    assert second[0].findings == first[0].findings and second[0].numbers == first[0].numbers
    assert entry.is_file() and json.loads(entry.read_text())["numbers"] == json.loads(good)["numbers"], \
        "the entry is rewritten"
    rejected = list((out / "cache" / "rejected").iterdir())
    assert len(rejected) == 1 and rejected[0].name.startswith(entry.name), "the bad entry is kept aside"
