"""
Recalibrate the statistics after a domain shift (AdaBN)
=======================================================

A network trained on one domain keeps, in its batch norms, the mean and variance of that domain's features. On
a shifted domain (here: the same digits with lower contrast, a brightness offset and noise, as from another
scanner) those running
statistics are wrong and accuracy drops. `batchnorm.tools.recalibrate` replaces them with the exact statistics
of unlabeled target-domain batches (AdaBN, Li et al. 2016) without touching a single weight. The table and the
figure compare test accuracy on both domains before and after.
"""

import copy

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import batchnorm.nn as bnn
from batchnorm.tools import recalibrate

torch.set_num_threads(1)          # tensors this small run fastest on one thread
torch.manual_seed(0)
digits = load_digits()
images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)      # (N, 1, 8, 8)
labels = torch.tensor(digits.target)
order = torch.randperm(len(images))
train, test = order[:1200], order[1200:]


def shifted(x: torch.Tensor) -> torch.Tensor:
    """The target domain: half the contrast, brighter, noisier."""
    generator = torch.Generator().manual_seed(1)
    return 0.5 * x + 0.8 + 0.1 * torch.randn(x.shape, generator=generator)


net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, padding_mode="replicate"), bnn.BatchNorm2d(16), nn.ReLU(),
                    nn.Conv2d(16, 32, 3, padding=1, padding_mode="replicate"), bnn.BatchNorm2d(32), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
for epoch in range(10):
    for batch in train[torch.randperm(len(train))].split(32):
        loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def accuracy(model: nn.Module, x: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == labels[test]).float().mean().item()


source, target = images[test], shifted(images[test])
unlabeled_target = shifted(images[train]).split(64)       # target-domain inputs only, no labels
adapted, report = recalibrate(copy.deepcopy(net), unlabeled_target)
print(report)

rows = {"trained on source": net, "recalibrated on target (AdaBN)": adapted}
table = {name: (accuracy(model, source), accuracy(model, target)) for name, model in rows.items()}
print(f"\n{'model':<32} {'source test acc.':>17} {'target test acc.':>17}")
for name, (on_source, on_target) in table.items():
    print(f"{name:<32} {on_source:>17.3f} {on_target:>17.3f}")

fig, ax = plt.subplots(figsize=(6, 3.2))
positions = np.arange(2)
for offset, (name, values) in zip((-0.2, 0.2), table.items()):
    ax.bar(positions + offset, values, width=0.4, label=name)
ax.set_xticks(positions, ["source domain", "target domain"])
ax.set_ylabel("test accuracy")
ax.set_ylim(0, 1)
ax.legend(loc="lower left")
fig.tight_layout()
plt.show()
