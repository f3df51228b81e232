"""Cross-process reductions for batch norm over `torch.distributed`: exact moment merges and gradient-sum reduction.

Everything here is a no-op in a single process (torch.distributed unavailable, not initialized, or a group of one
rank), so callers use the same code path with and without a process group. The transport is torch's own
(gloo on CPU, NCCL on CUDA); this module only decides what to exchange and how to combine it.

Merging per-rank moments (Chan, Golub & LeVeque 1979, "Updating formulae and a pairwise algorithm for computing
sample variances"), for ranks i with count n_i, mean mu_i and M2_i = sum (x - mu_i)^2:

    N  = sum_i n_i
    mu = sum_i n_i mu_i / N
    M2 = sum_i M2_i + sum_i n_i (mu_i - mu)^2

which is the k-way form of Chan's pairwise update delta = mu_b - mu_a, M2 = M2_a + M2_b + delta^2 n_a n_b / N.
A rank with n_i = 0 takes part in the collective and contributes nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["is_active", "world_size", "merge_moments", "check_same_channels", "all_reduce_sum"]


def is_active(group=None) -> bool:
    """True when torch.distributed is available, initialized, and `group` (default: WORLD) has more than one rank.

    Example:
        >>> from batchnorm.distributed import is_active
        >>> is_active()          # a single process without init_process_group
        False
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    return torch.distributed.get_world_size(group) > 1


def world_size(group=None) -> int:
    """Number of ranks in `group` (1 when torch.distributed is not available or not initialized).

    Example:
        >>> from batchnorm.distributed import world_size
        >>> world_size()
        1
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    return torch.distributed.get_world_size(group)


def _collective(name: str, what: str, call, group) -> None:
    """Run one collective; turn a transport failure into an error that says what was being exchanged."""
    try:
        call()
    except RuntimeError as error:   # torch.distributed.DistBackendError and gloo/NCCL errors derive from it
        rank = torch.distributed.get_rank(group)
        raise RuntimeError(
            f"{name}: the {what} across {world_size(group)} ranks failed on rank {rank}: another rank has died, "
            f"timed out, or ran a different sequence of collectives (every rank must run each SyncBatchNorm "
            f"forward and backward, with an empty batch if it has no data). Cause: {error}") from error


def _check_moments(count: Tensor, mean: Tensor, m2: Tensor) -> None:
    for name, t in (("count", count), ("mean", mean), ("m2", m2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"merge_moments expected {name} to be a torch.Tensor, got {type(t).__name__}: "
                            f"wrap it with torch.as_tensor(..., dtype=torch.float64)")
    if mean.dim() != 1 or m2.shape != mean.shape:
        raise ValueError(f"merge_moments expected mean and m2 of the same shape (C,), got mean "
                         f"{tuple(mean.shape)} and m2 {tuple(m2.shape)}: pass one value per channel")
    if count.dim() > 1 or (count.dim() == 1 and count.shape != mean.shape):
        raise ValueError(f"merge_moments expected count of shape () or (C,)={tuple(mean.shape)}, got "
                         f"{tuple(count.shape)}: pass one count for all channels or one per channel")


def merge_moments(count: Tensor, mean: Tensor, m2: Tensor, group=None) -> tuple[Tensor, Tensor, Tensor]:
    """Merge per-rank (count, mean, M2) over a process group exactly (Chan's parallel formula).

        N = sum_i n_i,   mu = sum_i n_i mu_i / N,   M2 = sum_i M2_i + sum_i n_i (mu_i - mu)^2

    One all_gather of a (3, C) float64 tensor per call. When torch.distributed is not available or not
    initialized, or the group has a single rank, the inputs are returned unchanged. Every rank of the group must
    call it (ranks with an empty batch pass count 0; their mean and M2 are ignored). Channels with N = 0 get
    mean 0 and M2 0. The variance is M2 / N (biased) or M2 / (N - 1) (unbiased).

    Args:
        count: float64 tensor of shape () or (C,): the number of values behind each mean on this rank.
        mean: float64 (C,) per-channel mean on this rank.
        m2: float64 (C,) per-channel sum of squared deviations from `mean` on this rank.
        group: the process group (default None: torch.distributed's WORLD group).

    Returns:
        (count, mean, m2) over all ranks, count in the shape it was given, float64, on the inputs' device.

    Shape:
        count: () or (C,).
        mean: (C,).
        m2: (C,).

    Raises:
        TypeError: an input that is not a tensor.
        ValueError: mean and m2 of different shapes, or count of another shape than () or (C,).
        RuntimeError: the collective failed (another rank died, timed out or ran other collectives).

    Example:
        >>> import torch
        >>> from batchnorm.distributed import merge_moments
        >>> x = torch.randn(8, 3, dtype=torch.float64)
        >>> mean = x.mean(0)
        >>> count, mean, m2 = merge_moments(torch.tensor(8.0, dtype=torch.float64), mean, ((x - mean) ** 2).sum(0))
        >>> torch.allclose(m2 / count, x.var(0, unbiased=False))     # one process: unchanged
        True

    References:
        Chan, Golub & LeVeque 1979, "Updating Formulae and a Pairwise Algorithm for Computing Sample Variances";
        used by SyncBatchNorm as in Peng et al. 2018, MegDet, arXiv 1711.07240.
    """
    _check_moments(count, mean, m2)
    if not is_active(group):
        return count, mean, m2
    channels, device = mean.shape[0], mean.device
    local = torch.empty((3, channels), dtype=torch.float64, device=device)
    local[0], local[1], local[2] = count, mean, m2
    gathered = torch.empty((world_size(group), 3, channels), dtype=torch.float64, device=device)
    _collective("merge_moments", "all_gather of per-channel (count, mean, M2)",
                lambda: torch.distributed.all_gather(list(gathered.unbind(0)), local, group=group), group)
    if device.type == "cpu":   # a few (ranks, C) operations: NumPy has less per-call overhead than torch
        total, merged_mean, merged_m2 = (torch.from_numpy(v) for v in _chan_merge(gathered.numpy(), np.where))
    else:
        total, merged_mean, merged_m2 = _chan_merge(gathered, torch.where)
    return (total if count.dim() == 1 else total[0]), merged_mean, merged_m2


def _chan_merge(gathered, where):
    """(N, mu, M2) per channel from the stacked (ranks, 3, C) per-rank (count, mean, M2); NumPy or torch."""
    counts, means, m2s = gathered[:, 0], gathered[:, 1], gathered[:, 2]
    present = counts > 0
    means = where(present, means, 0.0)      # an empty rank may send anything as its mean and M2
    m2s = where(present, m2s, 0.0)
    total = counts.sum(0)
    mean = (counts * means).sum(0) / where(total > 0, total, 1.0)
    return total, mean, m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)


def check_same_channels(channels: int, group=None, where: str = "SyncBatchNorm") -> None:
    """Raise ValueError on every rank when the ranks of `group` disagree on the channel count.

    One all_gather of a single int64 per rank (a fixed size, so it is safe even when the counts differ; gloo
    aborts the process when the per-channel tensors of a later collective have different sizes). Every rank of
    the group must call it at the same point; nothing happens when not distributed.

    Args:
        channels: this rank's channel count.
        group: None (WORLD); the process group.
        where: "SyncBatchNorm"; the name the message starts with.

    Raises:
        ValueError: the ranks disagree (on every rank, naming each rank's count).

    Example:
        >>> from batchnorm.distributed import check_same_channels
        >>> check_same_channels(64)       # nothing to compare in a single process
    """
    if not is_active(group):
        return
    local = torch.tensor([int(channels)], dtype=torch.int64)
    gathered = torch.empty((world_size(group), 1), dtype=torch.int64)
    _collective(where, "all_gather of the channel count",
                lambda: torch.distributed.all_gather(list(gathered.unbind(0)), local, group=group), group)
    counts = gathered[:, 0].tolist()
    if any(c != counts[0] for c in counts):
        raise ValueError(f"{where} expected the same num_features on every rank of the process group, got "
                         f"channel counts {counts} (rank i at position i; this rank: {int(channels)}): every rank "
                         f"must build the same model; check the per-rank configuration")


def all_reduce_sum(tensor: Tensor, group=None) -> Tensor:
    """Sum of `tensor` over the ranks of `group` (a new tensor; the input itself when not distributed).

    Used for the backward of SyncBatchNorm (the two per-channel gradient sums and the count) and by tools that
    reduce population sums across ranks.

    Args:
        tensor: any tensor with the same shape and dtype on every rank.
        group: the process group (default None: WORLD).

    Returns:
        The element-wise sum over the ranks.

    Raises:
        TypeError: ``tensor`` is not a tensor.
        RuntimeError: the collective failed (another rank died, timed out or ran other collectives).

    Example:
        >>> import torch
        >>> from batchnorm.distributed import all_reduce_sum
        >>> all_reduce_sum(torch.tensor([1.0, 2.0]))    # a single process: the input itself
        tensor([1., 2.])
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"all_reduce_sum expected a torch.Tensor, got {type(tensor).__name__}")
    if not is_active(group):
        return tensor
    total = tensor.clone().contiguous()
    _collective("all_reduce_sum", f"all_reduce of a tensor of shape {tuple(total.shape)}",
                lambda: torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM, group=group), group)
    return total
