"""
Swap a model's batch norm and compare
=====================================

`batchnorm.tools.convert` replaces every `torch.nn.BatchNorm*d` of a model with this package's layer, keeping
the parameters and running statistics. The converted model gives the same outputs as the original, in training
and in evaluation, to float rounding; the table shows the largest difference per mode and the figure the
outputs of one channel against each other.
"""

import copy

import matplotlib.pyplot as plt
import torch
from torch import nn

import batchnorm.nn as bnn
from batchnorm.tools import convert

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
ours = convert(copy.deepcopy(model), to="batchnorm")
print(sum(isinstance(m, bnn.BatchNorm2d) for m in ours.modules()), "layers converted")

x = torch.randn(32, 3, 24, 24)
rows = []
for mode in ("train", "eval"):
    model.train(mode == "train")
    ours.train(mode == "train")
    with torch.no_grad():
        a, b = model(x), ours(x)
    rows.append((mode, (a - b).abs().max().item()))
# Both models saw the same training batch, so their running statistics agree too.
stats = (model[1].running_var - ours[1].running_var).abs().max().item()

print(f"{'mode':<6} {'max |torch - ours|':>20}")
for mode, diff in rows:
    print(f"{mode:<6} {diff:>20.2e}")
print(f"running_var difference after one training batch: {stats:.2e}")

fig, ax = plt.subplots(figsize=(4, 4))
ax.scatter(a[:, 0].numpy(), b[:, 0].numpy(), s=8)
ax.set_xlabel("torch.nn.BatchNorm2d model (logit 0)")
ax.set_ylabel("batchnorm.nn.BatchNorm2d model (logit 0)")
ax.set_title("Evaluation outputs agree")
fig.tight_layout()
plt.show()
