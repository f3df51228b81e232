"""`batchnorm bench --model resnet18`: the whole-network benchmark runs and reports every variant."""

import json
import subprocess
import sys


def test_resnet18_benchmark_reports_every_variant(tmp_path):
    out = tmp_path / "model.json"
    done = subprocess.run([sys.executable, "-m", "batchnorm", "bench", "--model", "resnet18", "--size", "8",
                           "--batch", "4", "--repeats", "1", "--threads", "1", "--no-compile", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["train"]) == {"torch eager", "ours", "ours fused"}
    assert report["train_ratio"]["torch eager"] == 1.0 and all(v > 0 for v in report["inference"].values())
    assert "| ours fused |" in done.stdout and "ResNet-18 (width 64), input 4x3x8x8" in done.stdout
