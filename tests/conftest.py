"""Shared test set-up: deterministic thread count for reproducible kernels runs, and every batch-norm call on this
package's kernels (`BATCHNORM_BACKEND=numba`): the tests check the kernels' own results, also on the small inputs
that the default "auto" backend hands to torch's native batch norm (tests/functional/test_crossover.py covers that switch)."""

import os

os.environ.setdefault("BATCHNORM_BACKEND", "numba")

import torch  # noqa: E402

torch.set_num_threads(2)
