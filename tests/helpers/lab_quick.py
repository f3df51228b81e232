"""The lab experiments at the quick scale, each run once per test session and shared by the lab's test files."""

from __future__ import annotations

import torch

from batchnorm.lab import runner
from batchnorm.lab.protocol import Result

_results: dict[str, Result] = {}


def quick(experiment: str) -> Result:
    """`experiment` at the quick scale, run in this process with one thread (as the lab's workers run)."""
    if experiment not in _results:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _results[experiment], _ = runner.run_one(experiment, "quick", out=None, jobs=1)
        finally:
            torch.set_num_threads(threads)
    return _results[experiment]
