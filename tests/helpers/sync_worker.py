"""Worker process for tests/nn/test_sync.py: one rank of a gloo process group on 127.0.0.1 running one scenario.

Usage (the test launches one process per rank, with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the env):
    python tests/helpers/sync_worker.py SCENARIO OUTDIR
Scenarios:
    job     3 ranks, two parts in one launch (each process start with torch, DDP and Numba costs seconds):
            exact: local batches 8, 5, 0 of a global 13-sample batch: SyncBatchNorm under DDP, several layer
              configurations; saves local outputs, input gradients, parameter gradients and buffers;
            empty: every rank passes an empty batch;
            recalibrate: batchnorm.tools.recalibrate on the same 8, 5, 0 split (cross-rank merge_moments);
            ddp: ranks 0 and 1 in their own process group (rank 2 waits): a small CNN converted with
              convert_sync_batchnorm(process_group=...), trained 5 SGD steps under DDP on 8 + 8 samples of a global
              batch of 16; saves the final state_dict.
    ddp     the ddp part alone on 2 ranks in the default group.
    die     2 ranks: rank 1 exits in the middle of the second training step; rank 0 must fail with a clear error.
The inputs are drawn from fixed seeds, so the test process regenerates the same global data for its oracle.
"""

from __future__ import annotations

import datetime
import os
import sys

import torch

torch.set_num_threads(1)

import batchnorm.nn as bnn  # noqa: E402
from batchnorm.nn import sync  # noqa: E402

# the per-rank batch sizes and configurations of the `exact` scenario (the test imports these)
EXACT_SIZES = (8, 5, 0)
EXACT_CASES = {
    # name: (input shape without N, constructor kwargs, memory format, force the torch-ops path, dtype)
    "2d": ((4, 3, 3), {}, "contiguous", False, torch.float64),
    "2d-channels_last": ((4, 3, 3), {"momentum": None}, "channels_last", False, torch.float64),
    "1d-NC-affine-False": ((5,), {"affine": False, "eps": 1e-3}, "contiguous", False, torch.float64),
    "3d-bias-False": ((3, 2, 2, 3), {"bias": False}, "contiguous", False, torch.float64),
    "2d-torch-ops-path": ((4, 3, 3), {"momentum": 0.3}, "contiguous", True, torch.float64),
    "2d-bfloat16": ((4, 3, 3), {}, "contiguous", False, torch.bfloat16),
    "1d-NCL-no-running-stats": ((3, 4), {"track_running_stats": False}, "contiguous", False, torch.float64),
}
EXACT_STEPS = 2
DDP_SIZES = (8, 8)
DDP_STEPS = 5
DDP_LR = 0.1


def exact_data(name: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global (13, C, ...) input and upstream gradient of one case and step, float64."""
    shape, _, _, _, _ = EXACT_CASES[name]
    generator = torch.Generator().manual_seed(1000 * step + sorted(EXACT_CASES).index(name))
    n = sum(EXACT_SIZES)
    x = torch.randn((n,) + shape, generator=generator, dtype=torch.float64) * 3.0 + 1.5
    dy = torch.randn((n,) + shape, generator=generator, dtype=torch.float64)
    return x, dy


def exact_layer_init(layer: torch.nn.Module, name: str) -> None:
    """Deterministic non-trivial parameters and buffers (identical on every rank and in the oracle)."""
    generator = torch.Generator().manual_seed(7 + sorted(EXACT_CASES).index(name))
    with torch.no_grad():
        for tensor in list(layer.parameters()) + [layer.running_mean, layer.running_var]:
            if tensor is not None:
                tensor.copy_(torch.rand(tensor.shape, generator=generator, dtype=torch.float64) + 0.5)


def _slice(rank: int, sizes) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def run_exact(rank: int) -> dict:
    results = {}
    for name, (shape, kwargs, memory_format, force_torch, dtype) in EXACT_CASES.items():
        sync._uses_own_kernels = (lambda x: False) if force_torch else _default_uses_own_kernels
        layer = bnn.SyncBatchNorm(shape[0], **kwargs).to(dtype)
        exact_layer_init(layer, name)
        has_params = any(p.requires_grad for p in layer.parameters())
        model = torch.nn.parallel.DistributedDataParallel(layer) if has_params else layer
        out = {"y": [], "dx": [], "grads": []}
        for step in range(EXACT_STEPS):
            x, dy = exact_data(name, step)
            x = x[_slice(rank, EXACT_SIZES)].to(dtype)
            dy = dy[_slice(rank, EXACT_SIZES)].to(dtype)
            if memory_format == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)
            layer.zero_grad()
            y = model(x)
            (y * dy).sum().backward()
            out["y"].append(y.detach())
            out["dx"].append(x.grad)
            out["grads"].append({n: p.grad.clone() for n, p in layer.named_parameters()})
        out["state"] = {k: v.clone() for k, v in layer.state_dict().items()}
        layer.eval()
        x, _ = exact_data(name, EXACT_STEPS)
        out["eval_y"] = layer(x[_slice(rank, EXACT_SIZES)].to(dtype)).detach()
        results[name] = out
    sync._uses_own_kernels = _default_uses_own_kernels
    return results


def ddp_model() -> torch.nn.Module:
    """A small CNN with torch's BatchNorm2d (the oracle trains it as is; the ranks convert it)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, stride=2, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10, bias=False),
        torch.nn.BatchNorm1d(10))


def ddp_data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch (16, 3, 8, 8) and its class labels for one step."""
    generator = torch.Generator().manual_seed(100 + step)
    n = sum(DDP_SIZES)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def run_ddp(rank: int, group=None) -> dict:
    model = torch.nn.parallel.DistributedDataParallel(bnn.convert_sync_batchnorm(ddp_model(), group),
                                                      process_group=group)
    optimizer = torch.optim.SGD(model.parameters(), lr=DDP_LR)
    for step in range(DDP_STEPS):
        x, labels = ddp_data(step)
        part = _slice(rank, DDP_SIZES)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[part]), labels[part])
        loss.backward()
        optimizer.step()
    return {"state": {k: v.clone() for k, v in model.module.state_dict().items()},
            "types": sorted({type(m).__name__ for m in model.module.modules()})}


def run_die(rank: int) -> dict:
    layer = bnn.SyncBatchNorm(4).double()
    for step in range(2):
        x = torch.randn(6, 4, 5, 5, dtype=torch.float64, requires_grad=True)
        y = layer(x)
        if rank == 1 and step == 1:
            os._exit(3)  # dies mid-step: after the forward, before the backward
        y.sum().backward()
    return {}


class TwoBranches(torch.nn.Module):
    """Conv -> BatchNorm2d and Linear -> BatchNorm1d side by side on the same input.

    No batch norm feeds another, so what each one sees does not depend on how the data are split into batches
    (recalibrate runs the batch norms in training mode): the statistics over the ranks' slices must equal those
    over all the data in one process.
    """

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5))
        self.linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 6), torch.nn.BatchNorm1d(6))

    def forward(self, x):
        return self.conv(x).flatten(1).sum(1, keepdim=True) + self.linear(x)


def recalibration_model() -> torch.nn.Module:
    """Two batch norms with default running statistics, the same on every rank and in the oracle."""
    torch.manual_seed(1)
    return TwoBranches().double()


def recalibration_data() -> torch.Tensor:
    """The global 13-sample input of the recalibration part (split 8, 5, 0 like the exact part)."""
    return torch.randn(sum(EXACT_SIZES), 3, 6, 6, generator=torch.Generator().manual_seed(42),
                       dtype=torch.float64) * 2.0 + 0.5


def run_recalibrate(rank: int) -> dict:
    """batchnorm.tools.recalibrate across the 3 ranks: each rank passes its slice (rank 2 an empty batch)."""
    from batchnorm.tools import recalibrate

    x = recalibration_data()[_slice(rank, EXACT_SIZES)]
    model, _ = recalibrate(recalibration_model(), [x[:3], x[3:]] if x.shape[0] else [x])
    return {k: v.clone() for k, v in model.state_dict().items()}


def run_empty(rank: int) -> dict:
    """Every rank passes an empty batch: empty output and gradient, buffers unchanged, the batch counted."""
    layer = bnn.SyncBatchNorm(4).double()
    with torch.no_grad():
        layer.running_mean.fill_(0.25)
        layer.running_var.fill_(2.0)
    x = torch.empty(0, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    return {"y": y.detach(), "dx": x.grad, "state": layer.state_dict(), "weight_grad": layer.weight.grad}


def run_job(rank: int) -> dict:
    result = {"exact": run_exact(rank), "empty": run_empty(rank)}
    try:
        result["recalibrate"] = run_recalibrate(rank)
    except Exception as error:  # reported by its own test; the other parts still run
        result["recalibrate"] = error
    pair = torch.distributed.new_group([0, 1])     # every rank must call new_group
    if rank in (0, 1):
        result["ddp"] = run_ddp(rank, pair)
    return result


_default_uses_own_kernels = sync._uses_own_kernels


def main() -> None:
    scenario, outdir = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    timeout = datetime.timedelta(seconds=float(os.environ.get("SYNC_TEST_PG_TIMEOUT", "30")))
    torch.distributed.init_process_group("gloo", timeout=timeout)
    try:
        result = {"job": run_job, "ddp": run_ddp, "die": run_die}[scenario](rank)
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
