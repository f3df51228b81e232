"""Small models for the lab, each taking a `norm=` choice: the paper's MLP, a deep MLP, a small 1D/2D CNN, a small
ResNet, LSTM / BN-LSTM / LN-LSTM classifiers and a tiny transformer encoder.

Normalization choices (`NORMS`): 'none', 'batch' (this project's BatchNorm), 'torch_batch' (torch's),
'renorm' (Batch Renorm), 'ghost' (ghost BN, `virtual_batch_size=`), 'group', 'layer', 'instance', 'noisy_batch'
(BN followed by Santurkar et al.'s noise). Every layer comes from `batchnorm.nn` (or torch for the comparisons).

Example:
    >>> model = MLP(64, norm="batch")
    >>> model(torch.randn(60, 1, 8, 8)).shape
    torch.Size([60, 10])
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["NORMS", "norm_layer", "MLP", "CNN", "ResNet", "RecurrentClassifier",
           "TinyTransformer", "NoisyShift", "gaussian_init"]

NORMS = ("none", "batch", "torch_batch", "renorm", "ghost", "group", "layer", "instance", "noisy_batch")


class NoisyShift(nn.Module):
    r"""Santurkar et al.'s "noisy BN" (arXiv 1805.11604, Sec. 2.1): after BN, a <- s * a + m with a new
    distribution at every training step: per unit mu ~ U(-0.5, 0.5), sigma ~ U(1, 1.25); per sample and unit
    m ~ U(mu - 0.1, mu + 0.1), s ~ N(sigma, 0.1). Identity in eval mode.

    Args:
        num_features: C. Shape: (N, C, *) in, same out.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        sample_shape = (x.shape[0], self.num_features) + (1,) * (x.dim() - 2)
        mu = torch.empty(shape).uniform_(-0.5, 0.5)
        sigma = torch.empty(shape).uniform_(1.0, 1.25)
        m = mu + torch.empty(sample_shape).uniform_(-0.1, 0.1)
        s = sigma + 0.1 * torch.randn(sample_shape)
        return s * x + m


class _SequenceNorm(nn.Module):
    """Apply a channels-first norm to (N, T, D) sequences (statistics over N and T for BN)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.transpose(1, 2)).transpose(1, 2)


def norm_layer(norm: str, num_features: int, kind: str = "1d", *, groups: int = 4,
               virtual_batch_size: int = 32, momentum: float | None = 0.1, **renorm_options) -> nn.Module:
    """One normalization layer for `num_features` channels.

    Args:
        norm: one of `NORMS`. kind: '1d' for (N, C) or (N, C, L), '2d' for (N, C, H, W), 'seq' for (N, T, C).
        groups: 4, group count of 'group' (reduced to a divisor of C). virtual_batch_size: 32, for 'ghost'.
        momentum: 0.1, for the BN variants. renorm_options: passed to BatchRenorm (rmax, dmax, warmup_steps, ...).

    'layer' normalizes over all of (C, *spatial) per sample (GroupNorm with one group, as Ba et al.);
    'instance' over the spatial positions per sample and channel (GroupNorm with C groups).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if kind not in ("1d", "2d", "seq"):
        raise ValueError(f"kind must be '1d', '2d' or 'seq', got {kind!r}")
    suffix = "2d" if kind == "2d" else "1d"
    if norm == "none":
        return nn.Identity()
    if norm in ("batch", "noisy_batch"):
        from .. import nn as bnn

        layer = getattr(bnn, "BatchNorm" + suffix)(num_features, momentum=momentum)
        if norm == "noisy_batch":
            layer = nn.Sequential(layer, NoisyShift(num_features))
    elif norm == "torch_batch":
        layer = getattr(nn, "BatchNorm" + suffix)(num_features, momentum=momentum)
    elif norm == "renorm":
        from .. import nn as bnn

        layer = getattr(bnn, "BatchRenorm" + suffix)(num_features, **renorm_options)
    elif norm == "ghost":
        from .. import nn as bnn

        layer = getattr(bnn, "BatchNorm" + suffix)(num_features, momentum=momentum,
                                                   virtual_batch_size=virtual_batch_size)
    elif norm == "layer":
        layer = nn.LayerNorm(num_features) if kind == "seq" else nn.GroupNorm(1, num_features)
        return layer
    elif norm == "group":
        g = math.gcd(groups, num_features)
        layer = nn.GroupNorm(g, num_features)
    else:  # instance
        if kind == "seq":
            raise ValueError("norm='instance' needs spatial positions; it is not defined for (N, T, C) sequences")
        layer = nn.GroupNorm(num_features, num_features)
    return _SequenceNorm(layer) if kind == "seq" else layer


def gaussian_init(model: nn.Module, std: float | None = None, gain: float | None = None) -> nn.Module:
    """Re-initialize every Linear/Conv weight with N(0, std^2) (or N(0, gain^2 / fan_in)) and zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            nn.init.normal_(module.weight, std=std if std is not None else gain / math.sqrt(fan_in))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """A fully connected classifier: [Linear -> norm -> activation (-> dropout)] per hidden layer, then Linear.

    The paper's MNIST network (Ioffe & Szegedy 2015, Sec. 4.1) is the default: 3 hidden layers of 100 sigmoid
    units. With norm_position='after' the norm follows the activation. The linear layer's bias is dropped when
    a BN-type norm directly follows it (its beta replaces the bias).

    Args:
        num_inputs: input values per sample (inputs are flattened). hidden: (100, 100, 100). num_classes: 10.
        activation: 'sigmoid' ('relu', 'tanh'). norm: 'none' (see `NORMS`). norm_position: 'before' ('after').
        dropout: 0.0, dropout probability after each hidden activation. init_std: None (torch's default
        init) or the std of a Gaussian init. norm_options: passed to `norm_layer`.

    Shape: (N, *) -> (N, num_classes).
    """

    def __init__(self, num_inputs: int, hidden: tuple[int, ...] = (100, 100, 100), num_classes: int = 10,
                 activation: str = "sigmoid", norm: str = "none", norm_position: str = "before",
                 dropout: float = 0.0, init_std: float | None = None, **norm_options):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        if norm_position not in ("before", "after"):
            raise ValueError(f"norm_position must be 'before' or 'after' the activation, got {norm_position!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = num_inputs
        self.hidden_layers: list[nn.Module] = []
        for size in hidden:
            bias = norm == "none" or norm_position == "after"
            linear = nn.Linear(width, size, bias=bias)
            block = [linear, norm_layer(norm, size, "1d", **norm_options), _ACTIVATIONS[activation]()]
            if norm_position == "after":
                block = [linear, block[2], block[1]]
            if dropout:
                block.append(nn.Dropout(dropout))
            layers += block
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        if init_std is not None:
            gaussian_init(self, std=init_std)

    def activation_inputs(self) -> list[nn.Module]:
        """The module whose output is the input of each hidden activation (norm, or linear without norm)."""
        modules = list(self.net)
        return [modules[i - 1] for i, m in enumerate(modules) if isinstance(m, tuple(_ACTIVATIONS.values()))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """A small CNN: [Conv(3) -> norm -> ReLU] per entry of `channels` (stride 2 from the second on), global
    average pooling, Linear. Conv1d for (C, L) samples, Conv2d for (C, H, W).

    Args:
        sample_shape: (C, L) or (C, H, W). channels: (16, 32). num_classes: 10. norm: 'batch' (see `NORMS`).
        norm_position: 'before' ('after' the ReLU). norm_options: passed to `norm_layer`.

    Shape: (N, *sample_shape) -> (N, num_classes).
    """

    def __init__(self, sample_shape: tuple[int, ...], channels: tuple[int, ...] = (16, 32), num_classes: int = 10,
                 norm: str = "batch", norm_position: str = "before", **norm_options):
        super().__init__()
        if len(sample_shape) not in (2, 3):
            raise ValueError(f"CNN expects sample_shape (C, L) or (C, H, W), got {sample_shape}")
        kind = "2d" if len(sample_shape) == 3 else "1d"
        conv = nn.Conv2d if kind == "2d" else nn.Conv1d
        layers: list[nn.Module] = []
        width = sample_shape[0]
        for i, c in enumerate(channels):
            layers.append(conv(width, c, 3, stride=1 if i == 0 else 2, padding=1, bias=norm == "none"))
            pair = [norm_layer(norm, c, kind, **norm_options), nn.ReLU()]
            layers += pair if norm_position == "before" else pair[::-1]
            width = c
        pool = nn.AdaptiveAvgPool2d(1) if kind == "2d" else nn.AdaptiveAvgPool1d(1)
        self.net = nn.Sequential(*layers, pool, nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str, kind: str, **norm_options):
        super().__init__()
        conv = nn.Conv2d if kind == "2d" else nn.Conv1d
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = norm_layer(norm, cout, kind, **norm_options)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(norm, cout, kind, **norm_options)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            conv(cin, cout, 1, stride, bias=False), norm_layer(norm, cout, kind, **norm_options))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: stem Conv -> norm -> ReLU, one basic block per entry of `channels` (stride 2 from the
    second on), global average pooling, Linear.

    Args:
        sample_shape: (C, L) or (C, H, W). channels: (16, 32). num_classes: 10. norm: 'batch'.

    Shape: (N, *sample_shape) -> (N, num_classes).
    """

    def __init__(self, sample_shape: tuple[int, ...], channels: tuple[int, ...] = (16, 32), num_classes: int = 10,
                 norm: str = "batch", **norm_options):
        super().__init__()
        kind = "2d" if len(sample_shape) == 3 else "1d"
        conv = nn.Conv2d if kind == "2d" else nn.Conv1d
        blocks: list[nn.Module] = [conv(sample_shape[0], channels[0], 3, 1, 1, bias=False),
                                   norm_layer(norm, channels[0], kind, **norm_options), nn.ReLU()]
        width = channels[0]
        for i, c in enumerate(channels):
            blocks.append(_BasicBlock(width, c, 1 if i == 0 else 2, norm, kind, **norm_options))
            width = c
        pool = nn.AdaptiveAvgPool2d(1) if kind == "2d" else nn.AdaptiveAvgPool1d(1)
        self.net = nn.Sequential(*blocks, pool, nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


RECURRENT_KINDS = ("lstm", "bnlstm", "lnlstm")


class RecurrentClassifier(nn.Module):
    """Read a sequence (image rows or signal values as time steps) with an LSTM, BN-LSTM or LN-LSTM and classify
    from the last hidden state.

    Args:
        input_size: features per step. hidden_size: 64. num_classes: 10. kind: 'lstm', 'bnlstm', 'lnlstm'.
        max_length: 100 (BN-LSTM keeps statistics per time step up to this length).

    Shape: (N, C, H, W) or (N, C, L) -> (N, num_classes) (see `data.as_sequence`).
    """

    def __init__(self, input_size: int, hidden_size: int = 64, num_classes: int = 10, kind: str = "lstm",
                 max_length: int = 100):
        super().__init__()
        if kind not in RECURRENT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(RECURRENT_KINDS)}, got {kind!r}")
        from .. import nn as bnn

        if kind == "lstm":
            self.rnn = nn.LSTM(input_size, hidden_size, batch_first=True)
        elif kind == "bnlstm":
            self.rnn = bnn.BNLSTM(input_size, hidden_size, batch_first=True, max_length=max_length)
        else:
            self.rnn = bnn.LNLSTM(input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .data import as_sequence

        output, _ = self.rnn(as_sequence(x))
        return self.head(output[:, -1])


class _EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer as in BERT: x = norm1(x + attn(x)); x = norm2(x + ffn(x))."""

    def __init__(self, d_model: int, heads: int, norm: str):
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm1 = norm_layer(norm, d_model, "seq")
        self.ffn = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))
        self.norm2 = norm_layer(norm, d_model, "seq")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, x, x, need_weights=False)[0])
        return self.norm2(x + self.ffn(x))


class TinyTransformer(nn.Module):
    """A tiny transformer encoder classifier over a sequence (image rows or signal values as tokens): linear token
    embedding + learned positions, post-norm encoder layers (BERT's layout), mean pooling, Linear.

    Args:
        token_size: features per token. seq_len: tokens. d_model: 32. heads: 2. layers: 2. num_classes: 10.
        norm: 'layer' (BERT's) or 'batch' (statistics over batch and tokens) or 'none'.

    Shape: (N, C, H, W) or (N, C, L) -> (N, num_classes).
    """

    def __init__(self, token_size: int, seq_len: int, d_model: int = 32, heads: int = 2, layers: int = 2,
                 num_classes: int = 10, norm: str = "layer"):
        super().__init__()
        self.embed = nn.Linear(token_size, d_model)
        self.position = nn.Parameter(0.02 * torch.randn(1, seq_len, d_model))
        self.layers = nn.Sequential(*[_EncoderLayer(d_model, heads, norm) for _ in range(layers)])
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .data import as_sequence

        tokens = self.embed(as_sequence(x)) + self.position
        return self.head(self.layers(tokens).mean(1))
