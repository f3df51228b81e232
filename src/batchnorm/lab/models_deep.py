"""Deep fully connected networks for the lab's depth experiments: a plain or residual deep MLP with or without BN
(gradients at initialization), and deep residual MLPs trained without normalization by Fixup or SkipInit.

Example:
    >>> model = DeepMLP(64, depth=20, norm="batch", residual=False)
    >>> model(torch.randn(32, 1, 8, 8)).shape
    torch.Size([32, 10])
    >>> ResidualMLP(64, blocks=8, scheme="fixup")(torch.randn(32, 64)).shape
    torch.Size([32, 10])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .models import norm_layer

__all__ = ["DeepMLP", "ResidualMLP", "RESIDUAL_SCHEMES"]


class DeepMLP(nn.Module):
    r"""`depth` hidden layers of `width` ReLU units, with or without BN and with or without identity shortcuts.

    Plain layer: x <- relu(norm(W x)). Residual layer: x <- x + relu(norm(W x)) (one linear layer per block, so a
    plain and a residual network of the same depth have the same weights). The input is flattened and mapped to
    `width` by the first hidden layer (a plain layer, also in residual networks); a linear classifier follows.
    Weights are drawn from N(0, 2 / fan_in) (He), biases are zero (no bias before BN).

    Args:
        num_inputs: values per sample. depth: hidden layers (>= 1). width: 64. num_classes: 10.
        norm: 'batch' (this project's BN) or 'none' (or any of `models.NORMS`). residual: False.

    Shape: (N, *) -> (N, num_classes). `hidden` lists the hidden linear layers, input side first.

    Paper: Yang et al. 2019, "A mean field theory of batch normalization" (arXiv 1902.08129).
    """

    def __init__(self, num_inputs: int, depth: int, width: int = 64, num_classes: int = 10, norm: str = "batch",
                 residual: bool = False):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1 hidden layer, got {depth}")
        self.residual = residual
        self.hidden = nn.ModuleList()
        self.norms = nn.ModuleList()
        width_in = num_inputs
        for _ in range(depth):
            linear = nn.Linear(width_in, width, bias=norm == "none")
            nn.init.normal_(linear.weight, std=math.sqrt(2.0 / width_in))
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
            self.hidden.append(linear)
            self.norms.append(norm_layer(norm, width, "1d"))
            width_in = width
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, (linear, norm) in enumerate(zip(self.hidden, self.norms)):
            out = torch.relu(norm(linear(x)))
            x = x + out if self.residual and i > 0 else out
        return self.head(x)


RESIDUAL_SCHEMES = ("batch", "fixup", "skipinit", "none")


class _Scalar(nn.Module):
    """x * a or x + a with one learnable scalar a."""

    def __init__(self, value: float, multiply: bool):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))
        self.multiply = multiply

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value if self.multiply else x + self.value


class _Block(nn.Module):
    """x + branch(x), branch = Linear -> [norm] -> ReLU -> Linear -> [norm], set up by `scheme`."""

    def __init__(self, width: int, blocks: int, scheme: str):
        super().__init__()
        first, second = nn.Linear(width, width, bias=False), nn.Linear(width, width, bias=False)
        nn.init.normal_(first.weight, std=math.sqrt(2.0 / width))
        nn.init.normal_(second.weight, std=math.sqrt(2.0 / width))
        if scheme == "batch":
            layers = [first, norm_layer("batch", width), nn.ReLU(), second, norm_layer("batch", width)]
        elif scheme == "fixup":
            # Fixup (m = 2 layers per branch): first layer scaled by blocks^(-1/(2m-2)) = blocks^(-1/2), the last
            # at zero; scalar biases before each linear layer and the activation, a scalar multiplier.
            with torch.no_grad():
                first.weight.mul_(blocks ** -0.5)
                second.weight.zero_()
            layers = [_Scalar(0.0, False), first, _Scalar(0.0, False), nn.ReLU(), _Scalar(0.0, False), second,
                      _Scalar(1.0, True), _Scalar(0.0, False)]
        elif scheme == "skipinit":
            layers = [first, _Scalar(0.0, False), nn.ReLU(), second, _Scalar(0.0, True)]  # alpha = 0 at start
        else:  # none: He init, no normalization, no rescaling
            layers = [first, nn.ReLU(), second]
        self.branch = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class ResidualMLP(nn.Module):
    r"""A deep residual MLP: Linear stem to `width`, `blocks` residual blocks x <- x + branch(x), ReLU, classifier.

    The branch is Linear -> norm -> ReLU -> Linear -> norm, and `scheme` says how it is kept trainable:
    - 'batch': BN after each linear layer of the branch;
    - 'fixup': no normalization; the branch's last layer starts at zero, its first is scaled by blocks^-1/2,
      scalar biases and a scalar multiplier are learned, the classifier starts at zero (Zhang et al. 2019);
    - 'skipinit': no normalization; the branch is multiplied by a learnable scalar that starts at 0 (De & Smith
      2020);
    - 'none': no normalization and plain He initialization (the control: the signal grows with depth).

    Args:
        num_inputs: values per sample. blocks: residual blocks (>= 1). width: 64. num_classes: 10.
        scheme: 'batch' (see `RESIDUAL_SCHEMES`).

    Shape: (N, *) -> (N, num_classes).

    Papers: Fixup (arXiv 1901.09321), SkipInit (arXiv 2002.10444).
    """

    def __init__(self, num_inputs: int, blocks: int, width: int = 64, num_classes: int = 10, scheme: str = "batch"):
        super().__init__()
        if scheme not in RESIDUAL_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(RESIDUAL_SCHEMES)}, got {scheme!r}")
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        self.stem = nn.Linear(num_inputs, width)
        self.blocks = nn.Sequential(*[_Block(width, blocks, scheme) for _ in range(blocks)])
        self.head = nn.Linear(width, num_classes)
        if scheme == "fixup":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.blocks(self.stem(x.flatten(1)))))
