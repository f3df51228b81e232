"""Worker process for tests/robustness/test_faults.py: one rank of a gloo group on 127.0.0.1 running one distributed fault.

Usage (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, FAULT_PG_TIMEOUT in the environment):
    python tests/helpers/fault_worker.py SCENARIO
Scenarios (2 ranks):
    die_forward  after one training step, rank 1 exits (code 3) before the second forward; rank 0's forward must
                 fail with a clear error.
    mismatch     rank 0 has SyncBatchNorm(4), rank 1 SyncBatchNorm(5): both must fail with a clear error.
    stall        after one training step, rank 1 sleeps past the process group's timeout; rank 0 must fail once
                 the timeout expires.
    recalibrate  tools.recalibrate cases in one process group, one stderr line '<case>: <outcome>' each:
                 no_batches (rank 1 has no batches: both ranks get rank 0's statistics), nan (rank 1's first batch
                 holds a NaN: both raise ValueError), sync_even (SyncBatchNorm, 2 batches per rank: statistics of
                 both ranks' data), sync_uneven (SyncBatchNorm, 2 and 1 batches: both raise before any forward).
Exit codes: 17 when the forward raised the expected kind of error (RuntimeError or ValueError; its message is
printed on stderr), 0 when it did not fail (a test failure, except for recalibrate), 3 for the rank that dies on
purpose.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import torch

torch.set_num_threads(1)

import batchnorm.nn as bnn  # noqa: E402


def _rank_data(rank: int) -> list:
    generator = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(n, 3, 2, 2, generator=generator, dtype=torch.float64) * (1 + n) + n for n in (5, 3)]


RECALIBRATE_CASES = ("no_batches", "nan", "sync_even", "sync_uneven")


def recalibrate_case(case: str, rank: int) -> str:
    """One tools.recalibrate case on this rank: 'ok', 'raised <type>: <message>' or 'wrong statistics ...'."""
    import numpy as np

    from batchnorm.tools import recalibrate

    data = _rank_data(rank)
    if case == "no_batches" and rank == 1:
        data = []
    if case == "nan" and rank == 1:
        data[0][1, 2, 0, 1] = float("nan")
    if case == "sync_uneven" and rank == 1:
        data = data[:1]
    sync = case.startswith("sync")
    model = torch.nn.Sequential(bnn.SyncBatchNorm(3).double() if sync else torch.nn.BatchNorm2d(3).double())
    try:
        recalibrate(model, data)
    except (RuntimeError, ValueError) as error:
        return f"raised {type(error).__name__}: {error}"
    expected = _rank_data(0) + (_rank_data(1) if sync else [])
    values = np.concatenate([np.moveaxis(x.numpy(), 1, 0).reshape(3, -1) for x in expected], axis=1)
    mean_error = np.abs(model[0].running_mean.numpy() - values.mean(1)).max()
    var_error = np.abs(model[0].running_var.numpy() / values.var(1, ddof=1) - 1).max()
    if mean_error > 1e-12 or var_error > 1e-12:
        return f"wrong statistics: mean error {mean_error}, variance error {var_error}"
    return "ok"


def main() -> None:
    scenario = sys.argv[1]
    rank = int(os.environ["RANK"])
    timeout = float(os.environ.get("FAULT_PG_TIMEOUT", "20"))
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
    if scenario == "recalibrate":
        for case in RECALIBRATE_CASES:
            print(f"{case}: {recalibrate_case(case, rank)}", file=sys.stderr, flush=True)
        os._exit(0)
    channels = 5 if (scenario == "mismatch" and rank == 1) else 4
    layer = bnn.SyncBatchNorm(channels).double()
    x = torch.randn(6, channels, 3, 3, dtype=torch.float64, requires_grad=True)
    try:
        if scenario != "mismatch":
            layer(x).sum().backward()      # one healthy step first: the fault hits the statistics' collective
        if scenario == "die_forward" and rank == 1:
            os._exit(3)
        if scenario == "stall" and rank == 1:
            time.sleep(timeout * 2)         # past rank 0's timeout, then leave without a collective
            os._exit(0)
        layer(x).sum().backward()
    except (RuntimeError, ValueError) as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
        os._exit(17)    # no destroy_process_group: the peer may be gone
    print("the forward and backward did not fail", file=sys.stderr, flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
