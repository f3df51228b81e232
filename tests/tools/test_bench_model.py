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
    assert set(report["train"]) == {"torch eager", "ours", "ours fused", "no batch norm"}
    assert report["train_ratio"]["torch eager"] == 1.0 and all(v > 0 for v in report["inference"].values())
    assert "| ours fused |" in done.stdout and "ResNet-18 (width 64), input 4x3x8x8" in done.stdout
    low, median, high = report["train_round_ratio"]["ours fused"]
    assert low <= median <= high and report["train_round_ratio"]["torch eager"] == [1.0, 1.0, 1.0]


def test_peers_time_the_modules_torch_compile_and_jax_in_the_same_rounds():
    import importlib.util

    import torch

    from batchnorm.benchmark import Shape, format_table, measure_shape

    row = measure_shape(Shape((8, 4, 5, 5), channels_last=True), torch.float32, repeats=1, warmup=0,
                        min_round_seconds=1e-4, peers=True)
    contenders = {key.split("/")[0] for key in row.seconds}
    expected = {"ours", "torch", "ours module", "torch module", "torch.compile"}
    has_jax = importlib.util.find_spec("jax") is not None
    assert contenders == expected | ({"jax"} if has_jax else set())
    assert has_jax or row.notes == ["jax: not installed (pip install 'batchnorm[bench]'); left out"]
    assert set(row.over_best_peer) == {"train_fwd", "train_fwd_bwd", "eval_fwd"}
    assert all(v > 0 for v in row.module_over_torch.values())
    from dataclasses import asdict
    table = format_table({"header": {"machine": "m", "logical_cpus": 2, "threads": 2, "dtype": "float32",
                                     "python": "3", "torch": "2", "numpy": "2", "numba": "0", "date_utc": "now"},
                          "rows": [asdict(row)], "summary": {}})
    assert "| 8x4x5x5 (channels_last) | train_fwd_bwd |" in table and "ours/best peer" in table


def test_the_floor_variant_has_no_batch_norm_and_the_same_outputs_shape():
    import torch

    from batchnorm.benchmark.model import build_variants, resnet18

    variants = build_variants(resnet18(width=4), compile_torch=False)
    floor = variants["no batch norm"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in floor.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in variants["torch eager"].modules())
    assert floor(torch.randn(2, 3, 8, 8)).shape == (2, 10)
