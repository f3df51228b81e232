"""Shared test set-up: deterministic thread count for reproducible kernels runs."""

import torch

torch.set_num_threads(2)
