"""
Fold, export to ONNX, check in onnxruntime
==========================================

For inference a batch norm after a convolution is an affine map with fixed numbers, so it can be folded into the
convolution's weights: W' = W gamma / sqrt(var + eps), b' = (b - mean) gamma / sqrt(var + eps) + beta.
`batchnorm.tools.fold` does that on a copy of the model, reading the data flow with `torch.fx`, and reports
every batch norm it folded or left (here the pre-activation one, which has no convolution right before it).
`batchnorm.tools.export_onnx` folds, then exports; onnxruntime runs the file and its outputs are compared with
the PyTorch model's. torch's exporter itself folds a batch norm that directly follows a convolution; the
``Linear -> BatchNorm1d`` pair at the end is folded only by `fold`. The figure counts the ONNX graph's operators.
"""

import collections
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from batchnorm.tools import convert, export_onnx, fold

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
    nn.BatchNorm2d(32), nn.Conv2d(32, 32, 1),          # a pre-activation BN: nothing to fold it into
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10), nn.BatchNorm1d(10))
model = convert(model, to="batchnorm")                # this package's layers, as in training
with torch.no_grad():                                 # some running statistics, as after training
    model.train()
    for _ in range(5):
        model(torch.randn(16, 3, 32, 32) * 2 + 1)
model.eval()

x = torch.randn(4, 3, 32, 32)
folded, report = fold(model, x)
print(report)

folder = tempfile.mkdtemp()
paths = {"exported as is": os.path.join(folder, "plain.onnx"), "folded": os.path.join(folder, "folded.onnx")}
export_onnx(model, x, paths["exported as is"], fold_batchnorm=False)
export_onnx(model, x, paths["folded"])

expected = model(x).detach().numpy()
counts = {}
print(f"\n{'ONNX file':<16} {'BatchNormalization nodes':>25} {'max |onnxruntime - torch|':>27}")
for name, path in paths.items():
    session = onnxruntime.InferenceSession(path)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    ops = collections.Counter(node.op_type for node in onnx.load(path).graph.node)
    counts[name] = ops
    print(f"{name:<16} {ops['BatchNormalization']:>25} {np.abs(out - expected).max():>27.2e}")

kinds = sorted(set(counts["exported as is"]) | set(counts["folded"]))
positions = np.arange(len(kinds))
fig, ax = plt.subplots(figsize=(6.5, 3.2))
for offset, name in ((-0.2, "exported as is"), (0.2, "folded")):
    ax.bar(positions + offset, [counts[name][k] for k in kinds], width=0.4, label=name)
ax.set_xticks(positions, kinds, rotation=30, ha="right")
ax.set_ylabel("nodes in the ONNX graph")
ax.legend()
fig.tight_layout()
plt.show()
