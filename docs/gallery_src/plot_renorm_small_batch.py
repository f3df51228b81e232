"""
Batch Renorm vs BN at batch 2
=============================

With two samples per batch, batch norm's training statistics are noise: the network learns to expect that
noise, and in evaluation, where the running statistics replace it, the outputs shift. Batch Renormalization
(`batchnorm.nn.BatchRenorm1d`) corrects the batch statistics towards the running ones with r and d, so training
and evaluation compute nearly the same function.

A small MLP learns scikit-learn's 8x8 digits with batches of 2, once with `BatchNorm1d` and once with
`BatchRenorm1d` (its limits ramped up over the first few hundred steps instead of the paper's tens of
thousands, since this run is short). The figure shows test accuracy in evaluation mode during training; the
table the final numbers over three seeds.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import batchnorm.nn as bnn

torch.set_num_threads(1)          # tensors this small run fastest on one thread
digits = load_digits()
data = torch.tensor(digits.data / 16.0, dtype=torch.float32)
labels = torch.tensor(digits.target)
order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
train, test = order[:1200], order[1200:]
BATCH, STEPS, EVERY = 2, 1200, 100


def model(kind: str) -> nn.Module:
    if kind == "BatchNorm1d":
        norm = bnn.BatchNorm1d(64)
    else:
        norm = bnn.BatchRenorm1d(64, momentum=0.01, warmup_steps=100, rmax_steps=600, dmax_steps=400)
    return nn.Sequential(nn.Linear(64, 64), norm, nn.ReLU(), nn.Linear(64, 10))


def accuracy(net: nn.Module) -> float:
    net.eval()
    with torch.no_grad():
        value = (net(data[test]).argmax(1) == labels[test]).float().mean().item()
    net.train()
    return value


curves, finals = {}, {}
for kind in ("BatchNorm1d", "BatchRenorm1d"):
    finals[kind] = []
    for seed in range(3):
        torch.manual_seed(seed)
        net = model(kind)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
        points = []
        for step in range(STEPS):
            batch = train[torch.randint(len(train), (BATCH,))]
            loss = nn.functional.cross_entropy(net(data[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if (step + 1) % EVERY == 0:
                points.append(accuracy(net))
        finals[kind].append(points[-1])
        if seed == 0:
            curves[kind] = points

print(f"{'layer':<14} {'test accuracy, mean of 3 seeds':>31} {'per seed':>22}")
for kind, values in finals.items():
    print(f"{kind:<14} {np.mean(values):>31.3f} {', '.join(f'{v:.3f}' for v in values):>22}")

fig, ax = plt.subplots(figsize=(6, 3.5))
steps = np.arange(EVERY, STEPS + 1, EVERY)
for kind, points in curves.items():
    ax.plot(steps, points, marker="o", label=kind)
ax.set_xlabel("training step (batch of 2)")
ax.set_ylabel("test accuracy (eval mode)")
ax.set_title("Digits, batch size 2, seed 0")
ax.legend()
fig.tight_layout()
plt.show()
