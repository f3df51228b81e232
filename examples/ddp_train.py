"""Train a small CNN with SyncBatchNorm under DistributedDataParallel on CPU (gloo): the torchrun example.

    torchrun --nproc_per_node=2 examples/ddp_train.py                 # 2 CPU processes, 8 samples each per step
    torchrun --nproc_per_node=2 examples/ddp_train.py --no-sync       # the same with per-process BatchNorm
    python examples/ddp_train.py                                      # one process (SyncBatchNorm = BatchNorm)

Each process sees only its slice of every batch (here 8 of 16 images). With plain BatchNorm every process would
normalize with the statistics of its own 8 images; `convert_sync_batchnorm` swaps the BatchNorm layers for
`batchnorm.nn.SyncBatchNorm`, which normalizes with the statistics of all 16, exactly as one process on the whole
batch would (see the README, section SyncBatchNorm). The data are scikit-learn's 8x8 handwritten digits (bundled
with scikit-learn, nothing is downloaded); rank 0 prints the test accuracy after each epoch.
"""

from __future__ import annotations

import argparse
import os

# Each process gets its share of the cores. Numba reads NUMBA_NUM_THREADS when batchnorm first imports it; a Numba
# pool larger than the process's share (idle OpenMP workers of several processes competing for the same cores)
# slowed training steps ~100x in our measurements. torchrun sets LOCAL_WORLD_SIZE.
_THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
os.environ.setdefault("NUMBA_NUM_THREADS", str(_THREADS))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import batchnorm.nn as bnn  # noqa: E402


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train/test split of scikit-learn's digits as (N, 1, 8, 8) float32 images in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels = images[order], labels[order]
    return images[:1400], labels[:1400], images[1400:], labels[1400:]


def small_cnn() -> torch.nn.Module:
    """Conv-BN-ReLU x2, global pooling, linear classifier: written with torch's layers, converted below."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-per-process", type=int, default=8, help="samples per process and step (8)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--no-sync", action="store_true", help="keep per-process BatchNorm (for comparison)")
    args = parser.parse_args()

    distributed = "RANK" in os.environ            # set by torchrun
    if distributed:
        dist.init_process_group("gloo")           # CPU transport; "nccl" with CUDA tensors
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    torch.set_num_threads(_THREADS)

    torch.manual_seed(0)                          # the same initial model on every rank
    model = small_cnn()
    if not args.no_sync:
        model = bnn.convert_sync_batchnorm(model)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    train_x, train_y, test_x, test_y = digits()
    global_batch = args.batch_per_process * world

    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(order) - global_batch + 1, global_batch):
            mine = order[start + rank * args.batch_per_process: start + (rank + 1) * args.batch_per_process]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(train_x[mine]), train_y[mine])
            loss.backward()                       # DDP averages the gradients over the ranks
            optimizer.step()
        shown = loss.detach().clone()
        if distributed:                           # the loss of the whole last batch, for display
            dist.all_reduce(shown)
            shown /= world
        model.eval()                              # eval: running statistics, no communication
        with torch.no_grad():
            accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
        if rank == 0:
            layer = "BatchNorm" if args.no_sync else "SyncBatchNorm"
            print(f"epoch {epoch + 1}: {world} process(es) x {args.batch_per_process} samples, {layer}, "
                  f"last batch loss {shown.item():.3f}, test accuracy {accuracy:.3f}", flush=True)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
