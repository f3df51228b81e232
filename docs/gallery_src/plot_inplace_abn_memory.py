"""
InPlaceABN memory against torch for a deep conv stack
=====================================================

A training step keeps, for the backward pass, the tensors each layer saves. In a stack of conv -> BN ->
LeakyReLU blocks, torch's layers save three activation-sized tensors per block: the conv's input, the BN's input
and the activation's input. `batchnorm.nn.BatchNormAct2d` recomputes the activation's input in its backward, so
it saves two (the conv's input and its own); `batchnorm.nn.InPlaceABN2d` overwrites its input with its output
and recovers what the backward needs from that output, which is also the next conv's input: one per block.

Here the saved tensors are counted with `torch.autograd.graph.saved_tensors_hooks` during one forward pass
(each storage counted once, parameters excluded): an exact count of what autograd keeps, independent of the
allocator. The gradients of the three stacks are compared too.
"""

import matplotlib.pyplot as plt
import torch
from torch import nn

import batchnorm.nn as bnn

BLOCKS, CHANNELS, SHAPE = 12, 32, (8, 32, 32, 32)


def stack(kind: str) -> nn.Sequential:
    blocks = []
    for _ in range(BLOCKS):
        conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False)
        if kind == "torch BN + LeakyReLU":
            blocks.append(nn.Sequential(conv, nn.BatchNorm2d(CHANNELS), nn.LeakyReLU(0.01)))
        elif kind == "ours BatchNormAct":
            blocks.append(nn.Sequential(conv, bnn.BatchNormAct2d(CHANNELS, activation="leaky_relu",
                                                                 activation_param=0.01)))
        else:
            blocks.append(nn.Sequential(conv, bnn.InPlaceABN2d(CHANNELS, activation="leaky_relu",
                                                               activation_param=0.01)))
    return nn.Sequential(*blocks)


def saved_megabytes(model: nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """MB of distinct storages that autograd saves during the forward (parameters excluded), and the loss."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(x).square().mean()
    return sum(storages.values()) / 1e6, loss


torch.manual_seed(0)
x = torch.randn(SHAPE)
reference = stack("torch BN + LeakyReLU")
results, grads = {}, {}
for kind in ("torch BN + LeakyReLU", "ours BatchNormAct", "ours InPlaceABN"):
    model = stack(kind)
    model.load_state_dict(reference.state_dict())
    megabytes, loss = saved_megabytes(model, x.clone())
    loss.backward()
    results[kind] = megabytes
    grads[kind] = model[0][0].weight.grad

activation_mb = x.numel() * 4 / 1e6
print(f"one activation tensor: {activation_mb:.1f} MB, {BLOCKS} blocks")
print(f"{'layers':<22} {'saved MB':>9} {'/ torch':>8} {'per block':>10} {'max grad diff':>14}")
for kind, megabytes in results.items():
    diff = (grads[kind] - grads["torch BN + LeakyReLU"]).abs().max().item()
    print(f"{kind:<22} {megabytes:>9.1f} {megabytes / results['torch BN + LeakyReLU']:>8.2f} "
          f"{megabytes / BLOCKS / activation_mb:>9.2f}x {diff:>14.1e}")

fig, ax = plt.subplots(figsize=(6, 3))
ax.barh(list(results), list(results.values()), color=["#888888", "#4477aa", "#228833"])
ax.set_xlabel("tensors saved for the backward (MB)")
ax.invert_yaxis()
ax.set_title(f"{BLOCKS} conv-BN-activation blocks, input {tuple(SHAPE)}")
fig.tight_layout()
plt.show()
