"""Tests of SyncBatchNorm, convert_sync_batchnorm and distributed.merge_moments (in-process and on gloo ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import batchnorm.nn as bnn
from batchnorm import distributed
from batchnorm.nn import sync

from helpers import sync_worker as worker
from helpers.cases import relative_error
from helpers.ranks import free_port, launch_ranks

LAUNCH_TIMEOUT = 120.0   # seconds for a whole multi-process scenario (start-up included) before it is killed


# ------------------------------------------------------------------------------ merge_moments in-process
def _fake_group(monkeypatch, per_rank: list[torch.Tensor]) -> None:
    """Make merge_moments believe it runs in a group whose ranks hold the given (3, C) local tensors."""
    monkeypatch.setattr(distributed, "is_active", lambda group=None: True)
    monkeypatch.setattr(distributed, "world_size", lambda group=None: len(per_rank))

    def all_gather(out, local, group=None):
        for slot, tensor in zip(out, per_rank):
            slot.copy_(tensor)

    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)


def _moments(a: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    if a.shape[0] == 0:
        return 0.0, np.full(a.shape[1], np.nan), np.full(a.shape[1], np.nan)  # an empty rank may send garbage
    mean = a.mean(0)
    return float(a.shape[0]), mean, ((a - mean) ** 2).sum(0)


@pytest.mark.parametrize("sizes", [(8, 5, 0), (1, 1), (0, 17, 3, 0), (6,)])
def test_merge_moments_equals_moments_of_concatenation(monkeypatch, sizes):
    rng = np.random.default_rng(sum(sizes))
    chunks = [rng.normal(3.0, 2.0, size=(n, 4)) * np.array([1.0, 10.0, 1e-3, 1e4]) for n in sizes]
    per_rank = [torch.from_numpy(np.stack([np.full(4, c), m, s])) for c, m, s in map(_moments, chunks)]
    _fake_group(monkeypatch, per_rank)
    count, mean, m2 = per_rank[0]
    merged_count, merged_mean, merged_m2 = distributed.merge_moments(count[0].clone(), mean, m2)
    everything = np.concatenate(chunks)
    assert merged_count.shape == ()
    assert merged_count.item() == everything.shape[0]
    np.testing.assert_allclose(merged_mean.numpy(), everything.mean(0), rtol=1e-13, atol=1e-13 * 1e4)
    np.testing.assert_allclose(merged_m2.numpy(), ((everything - everything.mean(0)) ** 2).sum(0), rtol=1e-12)


def test_merge_moments_per_channel_counts_and_all_empty(monkeypatch):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(4, 2)), rng.normal(size=(7, 2))
    ranks = []
    for chunk, counts in ((a, [4.0, 0.0]), (b, [7.0, 7.0])):
        mean = chunk.mean(0)
        m2 = ((chunk - mean) ** 2).sum(0)
        ranks.append(torch.from_numpy(np.stack([np.array(counts), np.where(np.array(counts) > 0, mean, 0), m2 *
                                                (np.array(counts) > 0)])))
    _fake_group(monkeypatch, ranks)
    count, mean, m2 = distributed.merge_moments(ranks[0][0].clone(), ranks[0][1], ranks[0][2])
    assert count.tolist() == [11.0, 7.0]
    both = np.concatenate([a, b])[:, 0]
    np.testing.assert_allclose([mean[0].item(), m2[0].item()], [both.mean(), ((both - both.mean()) ** 2).sum()],
                               rtol=1e-13)
    np.testing.assert_allclose([mean[1].item(), m2[1].item()], [b[:, 1].mean(), ((b[:, 1] - b[:, 1].mean()) ** 2)
                                                                .sum()], rtol=1e-13)
    zeros = torch.zeros(3, 2, dtype=torch.float64)
    _fake_group(monkeypatch, [zeros, zeros])
    count, mean, m2 = distributed.merge_moments(torch.tensor(0.0, dtype=torch.float64), zeros[1], zeros[2])
    assert count.item() == 0 and mean.tolist() == [0.0, 0.0] and m2.tolist() == [0.0, 0.0]


def test_merge_moments_without_process_group_returns_inputs():
    assert not torch.distributed.is_initialized()
    count = torch.tensor(5.0, dtype=torch.float64)
    mean, m2 = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    out = distributed.merge_moments(count, mean, m2)
    assert out[0] is count and out[1] is mean and out[2] is m2
    total = torch.randn(2, 3)
    assert distributed.all_reduce_sum(total) is total


def test_merge_moments_validates_arguments():
    c, v = torch.tensor(2.0, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"mean and m2 of the same shape \(C,\), got mean \(3,\) and m2 \(2,\)"):
        distributed.merge_moments(c, v, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"count of shape \(\) or \(C,\)=\(3,\), got \(4,\)"):
        distributed.merge_moments(torch.zeros(4, dtype=torch.float64), v, v)
    with pytest.raises(TypeError, match="count to be a torch.Tensor, got float"):
        distributed.merge_moments(2.0, v, v)


# ----------------------------------------------------------------------- single process: BatchNorm again
@pytest.mark.parametrize("shape,reference", [((6, 5), torch.nn.BatchNorm1d), ((4, 5, 3, 3), torch.nn.BatchNorm2d),
                                             ((2, 5, 2, 3, 2), torch.nn.BatchNorm3d)])
def test_single_process_is_batchnorm(shape, reference):
    torch.manual_seed(len(shape))
    ours, theirs = bnn.SyncBatchNorm(5, momentum=0.2).double(), reference(5, momentum=0.2).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    for _ in range(2):
        x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        dy = torch.randn(shape, dtype=torch.float64)
        y, y_ref = ours(x), theirs(x_ref)
        (y * dy).sum().backward()
        (y_ref * dy).sum().backward()
        assert relative_error(y, y_ref) < 1e-12
        assert relative_error(x.grad, x_ref.grad) < 1e-12
    for name, value in theirs.state_dict().items():
        assert relative_error(ours.state_dict()[name], value) < 1e-12, name
    assert relative_error(ours.weight.grad, theirs.weight.grad) < 1e-12
    ours.eval(), theirs.eval()
    x = torch.randn(shape, dtype=torch.float64)
    assert relative_error(ours(x), theirs(x)) < 1e-12


def test_one_rank_group_is_batchnorm(tmp_path, monkeypatch):
    """An initialized process group of one rank: no communication, exactly this package's BatchNorm."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert not distributed.is_active() and distributed.world_size() == 1
        torch.manual_seed(11)
        ours, plain = bnn.SyncBatchNorm(3).double(), bnn.BatchNorm2d(3).double()
        x = torch.randn(4, 3, 2, 5, dtype=torch.float64)
        assert torch.equal(ours(x), plain(x))
        assert torch.equal(ours.running_var, plain.running_var)
        count = torch.tensor(4.0, dtype=torch.float64)
        assert distributed.merge_moments(count, x[0, :, 0, 0], x[1, :, 0, 0])[0] is count
    finally:
        torch.distributed.destroy_process_group()


def test_sync_batchnorm_validates_input():
    layer = bnn.SyncBatchNorm(4)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, \*\) with at least 2 dimensions, got a "
                                         r"1-D input of shape \(4,\)"):
        layer(torch.randn(4))
    with pytest.raises(ValueError, match=r"\(N, C=4, \*\), got \(2, 3, 5\): num_features=4 does not match the "
                                         r"channel dimension 3"):
        layer(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 4))


# ------------------------------------------------------------------------------- convert_sync_batchnorm
def test_convert_keeps_parameters_buffers_and_flags():
    torch.manual_seed(3)
    ours_plain = bnn.BatchNorm2d(6, bias=False, momentum=None)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.BatchNorm2d(6, eps=1e-3),
                                torch.nn.Sequential(ours_plain, torch.nn.ReLU()),
                                torch.nn.SyncBatchNorm(6, affine=False, track_running_stats=False),
                                torch.nn.Flatten(), torch.nn.LazyLinear(4), torch.nn.BatchNorm1d(4))
    model(torch.randn(3, 3, 6, 6))                          # non-trivial running statistics, materialize lazy
    model[1].eval()
    model[1].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = {id(t) for t in list(model.parameters()) + list(model.buffers())}
    conv, linear = model[0], model[5]
    converted = bnn.convert_sync_batchnorm(model, process_group=None)
    assert converted is model
    assert model[0] is conv and model[5] is linear
    for layer in (model[1], model[2][0], model[3], model[6]):
        assert type(layer) is bnn.SyncBatchNorm
    assert not model[1].training and model[2][0].training
    assert model[1].eps == 1e-3 and model[2][0].momentum is None and model[2][0].bias is None
    assert not model[1].weight.requires_grad
    assert model[3].running_mean is None and model[3].weight is None
    assert {id(t) for t in list(model.parameters()) + list(model.buffers())} == tensors
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    single = bnn.convert_sync_batchnorm(torch.nn.BatchNorm1d(3).double())
    assert type(single) is bnn.SyncBatchNorm and single.weight.dtype == torch.float64
    assert single.running_var.dtype == torch.float64
    assert type(bnn.SyncBatchNorm.convert_sync_batchnorm(torch.nn.BatchNorm3d(2))) is bnn.SyncBatchNorm
    frozen = torch.nn.BatchNorm2d(3)
    frozen.freeze_stats = True      # this package's variant keyword (as set by BatchNorm2d(..., freeze_stats=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bnn.convert_sync_batchnorm(frozen) is frozen       # frozen: left without a warning
    ghost = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3))
    ghost[1].virtual_batch_size = 4  # ghost batch norm: still the process's own (chunked) batch statistics
    with pytest.warns(UserWarning, match=r"left 1 batch-norm layer\(s\) .* unsynchronized: '1' \(BatchNorm2d\)"):
        assert bnn.convert_sync_batchnorm(ghost)[1] is ghost[1]
    with pytest.raises(TypeError, match="expected a torch.nn.Module, got list"):
        bnn.convert_sync_batchnorm([torch.nn.BatchNorm1d(3)])


def test_state_dict_interchanges_with_torch():
    ours = bnn.SyncBatchNorm(5)
    ours(torch.randn(8, 5, 2))
    for theirs in (torch.nn.SyncBatchNorm(5), torch.nn.BatchNorm1d(5)):
        theirs.load_state_dict(ours.state_dict())
        ours.load_state_dict(theirs.state_dict())
    assert isinstance(ours, torch.nn.modules.batchnorm._BatchNorm)
    assert not isinstance(ours, torch.nn.SyncBatchNorm)    # DDP refuses torch's SyncBatchNorm class on CPU


# --------------------------------------------------------------------------- spawned gloo ranks (the real thing)
def _launch(scenario: str, world: int, outdir: Path, pg_timeout: float = 30.0):
    """Run the worker on `world` ranks; returns ([(returncode, stderr)], seconds). Kills everything on timeout."""
    return launch_ranks("sync_worker.py", [scenario, str(outdir)], world, LAUNCH_TIMEOUT,
                        {"SYNC_TEST_PG_TIMEOUT": str(pg_timeout)})


def _run_ok(scenario: str, world: int, outdir: Path) -> list[dict]:
    results, _ = _launch(scenario, world, outdir)
    for rank, (code, stderr) in enumerate(results):
        if code != 0:
            pytest.fail(f"rank {rank} of scenario {scenario!r} exited with {code}:\n{stderr[-3000:]}")
    return [torch.load(outdir / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def _oracle_exact(name: str) -> dict:
    """Single-process torch BatchNorm over the concatenated 13 samples, in float64."""
    shape, kwargs, _, _, dtype = worker.EXACT_CASES[name]
    reference = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm2d,
                 4: torch.nn.BatchNorm3d}[len(shape)]
    layer = reference(shape[0], **kwargs).double()
    worker.exact_layer_init(layer, name)
    if dtype != torch.float64:   # the ranks start from the rounded parameters and buffers
        with torch.no_grad():
            for t in list(layer.parameters()) + list(layer.buffers()):
                if t.is_floating_point():
                    t.copy_(t.to(dtype).double())
    out = {"y": [], "dx": [], "grads": []}
    for step in range(worker.EXACT_STEPS):
        x, dy = worker.exact_data(name, step)
        x, dy = x.to(dtype).double().requires_grad_(True), dy.to(dtype).double()
        layer.zero_grad()
        y = layer(x)
        (y * dy).sum().backward()
        out["y"].append(y.detach())
        out["dx"].append(x.grad)
        out["grads"].append({n: p.grad.clone() for n, p in layer.named_parameters()})
    out["state"] = layer.state_dict()
    layer.eval()
    x, _ = worker.exact_data(name, worker.EXACT_STEPS)
    x = x.to(dtype).double()
    if layer.track_running_stats:
        out["eval_y"] = layer(x).detach()
    else:   # eval without running statistics: each rank normalizes with its own batch, without communication
        slices = [worker._slice(rank, worker.EXACT_SIZES) for rank in range(len(worker.EXACT_SIZES))]
        out["eval_y"] = torch.cat([layer(x[part]).detach() if part.stop > part.start else x[part]
                                   for part in slices])
    return out


@pytest.fixture(scope="module")
def gloo_job(tmp_path_factory) -> list[dict]:
    """One 3-rank launch shared by the exactness and the DDP tests (process start-up dominates their cost)."""
    return _run_ok("job", len(worker.EXACT_SIZES), tmp_path_factory.mktemp("sync_job"))


def test_three_ranks_uneven_and_empty_batches_equal_single_process(gloo_job):
    ranks = [r["exact"] for r in gloo_job]
    world = len(ranks)
    for name, (_, _, _, _, dtype) in worker.EXACT_CASES.items():
        tol = 1e-10 if dtype == torch.float64 else 2e-2      # bfloat16 has an 8-bit mantissa
        expected = _oracle_exact(name)
        got = [r[name] for r in ranks]
        assert [g["y"][0].shape[0] for g in got] == list(worker.EXACT_SIZES)
        for step in range(worker.EXACT_STEPS):
            for key in ("y", "dx"):
                err = relative_error(torch.cat([g[key][step] for g in got]).double(), expected[key][step])
                assert err < tol, (name, step, key, err)
            for pname, grad in expected["grads"][step].items():
                for rank, g in enumerate(got):    # DDP's average over the ranks, undone
                    err = relative_error(g["grads"][step][pname].double() * world, grad)
                    assert err < tol, (name, step, pname, rank, err)
        for rank, g in enumerate(got):
            assert g["state"].keys() == expected["state"].keys()
            for key, value in expected["state"].items():
                err = relative_error(g["state"][key].double(), value.double())
                assert err < (tol if key != "running_var" or dtype == torch.float64 else 4e-2), \
                    (name, rank, key, err)
        err = relative_error(torch.cat([g["eval_y"] for g in got]).double(), expected["eval_y"])
        assert err < (tol if dtype == torch.float64 else 5e-2), (name, "eval", err)
        if dtype == torch.bfloat16:
            assert all(g["y"][0].dtype == torch.bfloat16 for g in got)


def test_all_ranks_empty_is_an_empty_batch(gloo_job):
    """As BatchNorm on an empty batch: empty output, running statistics unchanged, num_batches_tracked counts."""
    for r in gloo_job:
        empty = r["empty"]
        assert empty["y"].shape == (0, 4, 2, 2) and empty["dx"].shape == (0, 4, 2, 2)
        assert torch.equal(empty["state"]["running_mean"], torch.full((4,), 0.25, dtype=torch.float64))
        assert torch.equal(empty["state"]["running_var"], torch.full((4,), 2.0, dtype=torch.float64))
        assert empty["state"]["num_batches_tracked"].item() == 1
        assert torch.equal(empty["weight_grad"], torch.zeros(4, dtype=torch.float64))


def test_recalibrate_across_ranks_equals_one_process(gloo_job):
    """tools.recalibrate with a process group: ranks holding 8, 5 and 0 samples get the statistics of all 13."""
    from batchnorm.tools import recalibrate

    for rank, r in enumerate(gloo_job):
        if isinstance(r["recalibrate"], Exception):
            pytest.fail(f"recalibrate failed on rank {rank}: {r['recalibrate']!r}")
    x = worker.recalibration_data()
    model, _ = recalibrate(worker.recalibration_model(), [x])
    initial = worker.recalibration_model().state_dict()
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            assert relative_error(value, initial[key]) > 1e-2, key        # recalibration changed it
        for rank, r in enumerate(gloo_job):
            assert relative_error(r["recalibrate"][key], value) < 1e-10, (key, rank)


def test_ddp_training_on_two_ranks_equals_single_process(gloo_job):
    """DDP on ranks 0 and 1 (their own process group inside the 3-rank job) vs one process on the 16 samples."""
    ranks = [r["ddp"] for r in gloo_job[:2]]
    assert "ddp" not in gloo_job[2]
    assert "SyncBatchNorm" in ranks[0]["types"] and "BatchNorm2d" not in ranks[0]["types"]
    model = worker.ddp_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=worker.DDP_LR)
    for step in range(worker.DDP_STEPS):
        x, labels = worker.ddp_data(step)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()
    initial = worker.ddp_model().state_dict()
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert relative_error(value, initial[key]) > 1e-3, key       # training moved it
        for rank, r in enumerate(ranks):
            got = r["state"][key]
            if value.is_floating_point():
                assert (got - value).abs().max().item() < 1e-6, (key, rank)
            else:
                assert torch.equal(got, value), (key, rank)


def test_a_rank_that_dies_mid_step_makes_the_others_fail_clearly(tmp_path):
    results, seconds = _launch("die", 2, tmp_path, pg_timeout=20.0)
    (code0, stderr0), (code1, _) = results
    assert code1 == 3
    assert code0 != 0
    assert "all_reduce_sum: the all_reduce of a tensor of shape (2, 4) across 2 ranks failed on rank 0" in stderr0
    assert "another rank has died" in stderr0
    assert seconds < LAUNCH_TIMEOUT


@pytest.mark.slow
def test_torchrun_example_matches_one_process():
    """examples/ddp_train.py: 2 processes x 8 samples (torchrun) print what 1 process x 16 samples prints."""
    example = Path(__file__).resolve().parents[2] / "examples" / "ddp_train.py"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run([str(torchrun), "--nproc_per_node=2", f"--master_port={free_port()}", str(example),
                          "--epochs", "1"], env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    one = subprocess.run([sys.executable, str(example), "--epochs", "1", "--batch-per-process", "16"], env=env,
                         capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert two.returncode == 0, two.stderr[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]
    # the two runs reduce over different batch shapes, so their floats may round differently: compare the
    # printed loss and accuracy to within their last digit (one test sample is 1/397 = 0.0025 of accuracy)
    last_two, last_one = two.stdout.strip().splitlines()[-1], one.stdout.strip().splitlines()[-1]
    assert "2 process(es) x 8 samples, SyncBatchNorm" in two.stdout
    for field in ("last batch loss ", "test accuracy "):
        value_two = float(last_two.split(field)[1].split(",")[0])
        value_one = float(last_one.split(field)[1].split(",")[0])
        assert abs(value_two - value_one) <= 0.003, (field, last_two, last_one)
