"""Recurrent normalization: BN-LSTM with per-time-step statistics (Cooijmans et al. 2016) and LN-LSTM.

Both are drop-ins for `torch.nn.LSTM` (unidirectional): same call `forward(input, hx=None) -> (output,
(h_n, c_n))`, same shapes, `num_layers`, `batch_first`, `dropout` between layers, PackedSequence input, plus
`lengths=` for padded variable-length batches. The batch norm inside BNLSTM is this package's
(`batchnorm.functional.batch_norm`, on the Numba kernels for CPU float32/float64).

One layer, gates in torch's order (i, f, g, o), sigma the logistic function:

    (i, f, g, o) = N_hh(W_hh h_{t-1}; gamma_hh) + N_ih(W_ih x_t; gamma_ih) + b
    c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g)
    h_t = sigma(o) * tanh(N_cell(c_t; gamma_cell, beta_cell))

N is batch norm (BNLSTM) or layer norm (LNLSTM). The two input normalizations have no shift of their own: the
gate bias b carries it (Cooijmans et al.: beta_h = beta_x = 0 "to avoid unnecessary redundancy").
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import functional
from ._checks import check_eps_momentum

__all__ = ["BNLSTM", "LNLSTM", "StepwiseBatchNorm"]


# --------------------------------------------------------------------------------------- argument checks
def _positive_int(name: str, value, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner} argument {name} must be a positive integer (>= 1), got {value!r}")
    return int(value)


def _check_probability(name: str, value, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{owner} argument {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_positive_float(name: str, value, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0.0 \
            or not math.isfinite(float(value)):
        raise ValueError(f"{owner} argument {name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_bool(name: str, value, owner: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner} argument {name} must be True or False, got {value!r}")
    return value


# ------------------------------------------------------------------------------------ the normalizations
class StepwiseBatchNorm(torch.nn.Module):
    r"""Batch norm with one affine transform shared over time and separate running statistics per time step.

    .. math:: y = \frac{z - \mathrm{E}_B[z]}{\sqrt{\mathrm{Var}_B[z] + \epsilon}} \gamma + \beta

    statistics per feature over the rows of z (the sequences active at step t). Step t uses slot
    ``min(t, max_length - 1)`` of `running_mean`/`running_var`/`num_batches_tracked`: steps past the last slot
    share its statistics (Cooijmans et al. use the population statistics of T_max for every later step). In
    training a step is normalized with its batch statistics and updates its slot (PyTorch's conventions:
    `momentum` is the weight of the new batch, None is the cumulative average; the unbiased variance is
    stored); a step with a single active row has no batch variance, so it is normalized with its slot's
    running statistics and does not update them. In eval every step uses its slot's running statistics.

    Args:
        num_features: C. max_length: number of statistics slots (steps 0..max_length-1).
        eps: 1e-5, inside the square root. momentum: 0.1 or None. gamma_init: 0.1 (initial gamma).
        shift: True (learnable beta; False: no beta). device, dtype: factory arguments.

    Shape: input (B, C) for the B sequences active at the step; output the same.

    Example:
        >>> norm = StepwiseBatchNorm(8, max_length=20)
        >>> y = norm(torch.randn(5, 8), step=3)

    Cooijmans et al. 2016, "Recurrent Batch Normalization", arXiv 1603.09025; this package's `batch_norm`.
    """

    def __init__(self, num_features: int, max_length: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 gamma_init: float = 0.1, shift: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        check_eps_momentum(type(self).__name__, eps, momentum)
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.max_length, self.eps, self.momentum = num_features, max_length, eps, momentum
        self.gamma_init = gamma_init
        self.weight = torch.nn.Parameter(torch.empty(num_features, **factory))
        if shift:
            self.bias = torch.nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(max_length, num_features, **factory))
        self.register_buffer("running_var", torch.ones(max_length, num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.zeros(max_length, dtype=torch.long, device=device))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Every slot back to mean 0, variance 1, no batches tracked."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """gamma = gamma_init, beta = 0, and fresh running statistics."""
        self.reset_running_stats()
        with torch.no_grad():
            self.weight.fill_(self.gamma_init)
            if self.bias is not None:
                self.bias.zero_()

    def extra_repr(self) -> str:
        return (f"{self.num_features}, max_length={self.max_length}, eps={self.eps}, momentum={self.momentum}, "
                f"shift={self.bias is not None}")

    def forward(self, input: Tensor, step: int = 0, shift: Optional[Tensor] = None) -> Tensor:
        """Normalize the rows active at `step`; `shift` (C,) replaces beta when given (the LSTM's gate bias)."""
        slot = min(step, self.max_length - 1)
        bias = self.bias if shift is None else shift
        if self.training and input.shape[0] > 1:
            counter = self.num_batches_tracked[slot]
            counter.add_(1)
            factor = 1.0 / float(counter) if self.momentum is None else self.momentum
            return functional.batch_norm(input, self.running_mean[slot], self.running_var[slot], self.weight,
                                         bias, True, factor, self.eps)
        running_mean, running_var = self.running_mean[slot], self.running_var[slot]
        if self.training:  # a single active row: its slot's statistics, copied so later updates do not clash
            running_mean, running_var = running_mean.clone(), running_var.clone()
        return functional.batch_norm(input, running_mean, running_var, self.weight, bias, False, 0.0, self.eps)


class FeatureLayerNorm(torch.nn.Module):
    r"""Layer norm over the features of each row, with the same call as `StepwiseBatchNorm` (step ignored).

    .. math:: y = \frac{z - \mathrm{E}_{features}[z]}{\sqrt{\mathrm{Var}_{features}[z] + \epsilon}} \gamma + \beta

    Args:
        num_features: C. eps: 1e-5. gamma_init: 1.0. shift: True (learnable beta). device, dtype.

    Shape: input (B, C); output the same.

    Example:
        >>> y = FeatureLayerNorm(8)(torch.randn(5, 8))

    Ba, Kiros & Hinton 2016, "Layer Normalization", arXiv 1607.06450.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, gamma_init: float = 1.0, shift: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.gamma_init = num_features, eps, gamma_init
        self.normalized_shape = (num_features,)
        self.weight = torch.nn.Parameter(torch.empty(num_features, **factory))
        if shift:
            self.bias = torch.nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """gamma = gamma_init, beta = 0."""
        with torch.no_grad():
            self.weight.fill_(self.gamma_init)
            if self.bias is not None:
                self.bias.zero_()

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, shift={self.bias is not None}"

    def forward(self, input: Tensor, step: int = 0, shift: Optional[Tensor] = None) -> Tensor:
        """Normalize each row; `shift` (C,) replaces beta when given (the LSTM's gate bias)."""
        bias = self.bias if shift is None else shift
        return torch.nn.functional.layer_norm(input, self.normalized_shape, self.weight, bias, self.eps)


# ------------------------------------------------------------------------------------------ the LSTMs
class _NormalizedLSTMLayer(torch.nn.Module):
    """One layer's weights (W_ih, W_hh, gate bias b) and its three normalizations (ih, hh, cell)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, make_norm, factory: dict) -> None:
        super().__init__()
        gates = 4 * hidden_size
        self.weight_ih = torch.nn.Parameter(torch.empty(gates, input_size, **factory))
        self.weight_hh = torch.nn.Parameter(torch.empty(gates, hidden_size, **factory))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(gates, **factory))
        else:
            self.register_parameter("bias", None)
        self.norm_ih = make_norm(gates, False)
        self.norm_hh = make_norm(gates, False)
        self.norm_cell = make_norm(hidden_size, bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W uniform in +-1/sqrt(hidden_size) as torch.nn.LSTM, b = 0, the normalizations re-initialized."""
        bound = 1.0 / math.sqrt(self.weight_hh.shape[1])
        with torch.no_grad():
            self.weight_ih.uniform_(-bound, bound)
            self.weight_hh.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.zero_()
        for norm in (self.norm_ih, self.norm_hh, self.norm_cell):
            norm.reset_parameters()

    def forward(self, data: Tensor, batch_sizes: list[int], h: Tensor, c: Tensor):
        """Run over packed data (sum of batch_sizes, input_size); rows sorted by decreasing length.

        Returns the packed output (same rows, hidden_size) and the final (h, c) of every sequence.
        """
        # W_ih x_t for every step in one product, split (not sliced: one gradient buffer, not one per step)
        input_terms = torch.mm(data, self.weight_ih.t()).split(batch_sizes)
        weight_hh_t = self.weight_hh.t()
        outputs: list[Tensor] = []
        finished_h: list[Tensor] = []
        finished_c: list[Tensor] = []
        for step, active in enumerate(batch_sizes):
            if active < h.shape[0]:  # the shortest sequences ended at the previous step: keep their state
                rest = h.shape[0] - active
                h, h_done = h.split([active, rest])
                c, c_done = c.split([active, rest])
                finished_h.append(h_done)
                finished_c.append(c_done)
            # the gate bias b is added by the input normalization's affine step (one pass fewer per step)
            gates = self.norm_hh(torch.mm(h, weight_hh_t), step) + self.norm_ih(input_terms[step], step, self.bias)
            in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, 1)
            c = torch.sigmoid(forget_gate) * c + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
            h = torch.sigmoid(out_gate) * torch.tanh(self.norm_cell(c, step))
            outputs.append(h)
        finished_h.append(h)
        finished_c.append(c)
        return torch.cat(outputs), torch.cat(finished_h[::-1]), torch.cat(finished_c[::-1])


class _NormalizedLSTM(torch.nn.Module):
    """The LSTM stack shared by BNLSTM and LNLSTM: argument checks, layouts, variable lengths, layers."""

    _batch_statistics = False  # True when the normalizations need >= 2 sequences in training

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 max_length: int = 100, bias: bool = True, dropout: float = 0.0, *, eps: float = 1e-5,
                 gamma_init: float = 0.1, device=None, dtype=None) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = _positive_int("input_size", input_size, owner)
        self.hidden_size = _positive_int("hidden_size", hidden_size, owner)
        self.num_layers = _positive_int("num_layers", num_layers, owner)
        self.batch_first = _check_bool("batch_first", batch_first, owner)
        self.max_length = _positive_int("max_length", max_length, owner)
        self.bias = _check_bool("bias", bias, owner)
        self.dropout = _check_probability("dropout", dropout, owner)
        self.eps = _check_positive_float("eps", eps, owner)
        if isinstance(gamma_init, bool) or not isinstance(gamma_init, numbers.Real) \
                or not math.isfinite(float(gamma_init)):
            raise ValueError(f"{owner} argument gamma_init must be a finite number, got {gamma_init!r}")
        self.gamma_init = float(gamma_init)
        self.bidirectional = False
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"{owner}: dropout={self.dropout} is applied between layers only, so it has no effect "
                          f"with num_layers=1", UserWarning, stacklevel=3)
        factory = {"device": device, "dtype": dtype}
        self.layers = torch.nn.ModuleList(
            _NormalizedLSTMLayer(self.input_size if index == 0 else self.hidden_size, self.hidden_size, self.bias,
                                 lambda features, shift: self._make_norm(features, shift, factory), factory)
            for index in range(self.num_layers))

    def _make_norm(self, num_features: int, shift: bool, factory: dict) -> torch.nn.Module:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Re-initialize every layer (weights, biases, normalizations and their running statistics)."""
        for layer in self.layers:
            layer.reset_parameters()

    def flatten_parameters(self) -> None:
        """No-op, for code written for torch.nn.LSTM (there is no cuDNN weight buffer here)."""

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.batch_first:
            text += ", batch_first=True"
        if not self.bias:
            text += ", bias=False"
        if self.dropout:
            text += f", dropout={self.dropout}"
        return text

    # ------------------------------------------------------------------------------------ input handling
    def _check_data(self, data: Tensor) -> None:
        owner = type(self).__name__
        if not data.is_floating_point():
            raise ValueError(f"{owner} expected a floating-point input, got dtype {data.dtype}")
        if data.shape[-1] != self.input_size:
            raise ValueError(f"{owner} expected input with {self.input_size} features in the last dimension "
                             f"(input_size={self.input_size}), got shape {tuple(data.shape)}: check input_size "
                             f"or the layer before it")

    def _check_hx(self, hx, batch: int, like: Tensor, unbatched: bool):
        owner = type(self).__name__
        shape = (self.num_layers, self.hidden_size) if unbatched else (self.num_layers, batch, self.hidden_size)
        if hx is None:
            zeros = torch.zeros(self.num_layers, batch, self.hidden_size, dtype=like.dtype, device=like.device)
            return zeros, zeros
        if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, Tensor) for t in hx):
            raise ValueError(f"{owner} argument hx must be a tuple (h_0, c_0) of two tensors of shape {shape}, "
                             f"got {type(hx).__name__}")
        h0, c0 = hx
        for name, state in (("h_0", h0), ("c_0", c0)):
            if tuple(state.shape) != shape:
                raise ValueError(f"{owner} argument hx: {name} must have shape (num_layers, batch, hidden_size) = "
                                 f"{shape}, got {tuple(state.shape)}")
            if state.dtype != like.dtype:
                raise ValueError(f"{owner} argument hx: {name} must have the input's dtype {like.dtype}, got "
                                 f"{state.dtype}")
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        return h0, c0

    def _check_lengths(self, lengths, batch: int, steps: int) -> Tensor:
        owner = type(self).__name__
        if isinstance(lengths, Tensor):
            if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
                raise ValueError(f"{owner} argument lengths must hold integers, got dtype {lengths.dtype}")
            values = lengths.detach().to("cpu", torch.int64).reshape(-1)
            if lengths.dim() != 1:
                raise ValueError(f"{owner} argument lengths must be 1-D with one length per sequence, got shape "
                                 f"{tuple(lengths.shape)}")
        else:
            try:
                items = list(lengths)
            except TypeError:
                raise ValueError(f"{owner} argument lengths must be a 1-D tensor or a sequence of integers, got "
                                 f"{type(lengths).__name__}") from None
            if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
                raise ValueError(f"{owner} argument lengths must hold integers, got {items!r}")
            values = torch.tensor(items, dtype=torch.int64)
        if values.numel() != batch:
            raise ValueError(f"{owner} argument lengths must have one entry per sequence (batch={batch}), got "
                             f"{values.numel()}")
        if batch and (int(values.min()) < 1 or int(values.max()) > steps):
            raise ValueError(f"{owner} argument lengths must be in [1, {steps}] (the padded sequence length), got "
                             f"min {int(values.min())}, max {int(values.max())}")
        return values

    def _check_batch(self, batch: int) -> None:
        if self.training and batch < 2 and self._batch_statistics:
            raise ValueError(f"{type(self).__name__} expected a batch of at least 2 sequences when training, got "
                             f"{batch}: the batch variance of a single sequence is undefined. Use a larger batch, "
                             f"or call model.eval() to normalize with the running statistics")

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, input, hx=None, lengths=None):
        """Run the stack over `input`; see the class docstring for shapes."""
        owner = type(self).__name__
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError(f"{owner} argument lengths must be None for a PackedSequence input (its lengths "
                                 f"are in batch_sizes), got {lengths!r}")
            self._check_data(input.data)
            batch = int(input.batch_sizes[0])
            h0, c0 = self._check_hx(hx, batch, input.data, False)
            if input.sorted_indices is not None:
                h0 = h0.index_select(1, input.sorted_indices)
                c0 = c0.index_select(1, input.sorted_indices)
            self._check_batch(batch)
            data, h_n, c_n = self._run(input.data, input.batch_sizes.tolist(), h0, c0)
            if input.unsorted_indices is not None:
                h_n = h_n.index_select(1, input.unsorted_indices)
                c_n = c_n.index_select(1, input.unsorted_indices)
            output = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            return output, (h_n, c_n)
        if not isinstance(input, Tensor):
            raise TypeError(f"{owner} expected input to be a Tensor or a PackedSequence, got "
                            f"{type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{owner} expected input of shape (L, N, input_size), (N, L, input_size) with "
                             f"batch_first=True, or unbatched (L, input_size), got shape {tuple(input.shape)}")
        self._check_data(input)
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(1 if not self.batch_first else 0)
        time_major = input.transpose(0, 1) if self.batch_first else input
        steps, batch = time_major.shape[0], time_major.shape[1]
        if steps == 0:
            raise ValueError(f"{owner} expected a sequence length of at least 1, got shape {tuple(input.shape)}")
        h0, c0 = self._check_hx(hx, batch, input, unbatched)
        if lengths is not None:
            lengths = self._check_lengths(lengths, batch, steps)
        self._check_batch(batch)
        if lengths is None or bool((lengths == steps).all()):
            data = time_major.contiguous().reshape(steps * batch, self.input_size)
            packed, h_n, c_n = self._run(data, [batch] * steps, h0, c0)
            output = packed.reshape(steps, batch, self.hidden_size)
            if self.batch_first:
                output = output.transpose(0, 1)
        else:
            packed_input = pack_padded_sequence(time_major, lengths, batch_first=False, enforce_sorted=False)
            h0 = h0.index_select(1, packed_input.sorted_indices)
            c0 = c0.index_select(1, packed_input.sorted_indices)
            data, h_n, c_n = self._run(packed_input.data, packed_input.batch_sizes.tolist(), h0, c0)
            h_n = h_n.index_select(1, packed_input.unsorted_indices)
            c_n = c_n.index_select(1, packed_input.unsorted_indices)
            packed_output = PackedSequence(data, packed_input.batch_sizes, packed_input.sorted_indices,
                                           packed_input.unsorted_indices)
            output = pad_packed_sequence(packed_output, batch_first=self.batch_first, total_length=steps)[0]
        if unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)

    def _run(self, data: Tensor, batch_sizes: list[int], h0: Tensor, c0: Tensor):
        """Every layer over packed data; dropout between layers. Returns (packed output, h_n, c_n)."""
        final_h, final_c = [], []
        for index, layer in enumerate(self.layers):
            if index > 0 and self.dropout > 0:
                data = torch.nn.functional.dropout(data, self.dropout, self.training)
            data, h, c = layer(data, batch_sizes, h0[index], c0[index])
            final_h.append(h)
            final_c.append(c)
        return data, torch.stack(final_h), torch.stack(final_c)


class BNLSTM(_NormalizedLSTM):
    r"""LSTM with recurrent batch normalization and per-time-step statistics (BN-LSTM).

    .. math::
        (i, f, g, o) = BN_{hh}(W_{hh} h_{t-1}; \gamma_{hh}) + BN_{ih}(W_{ih} x_t; \gamma_{ih}) + b \\
        c_t = \sigma(f) c_{t-1} + \sigma(i) \tanh(g), \quad
        h_t = \sigma(o) \tanh(BN_{cell}(c_t; \gamma_{cell}, \beta_{cell}))

    Each BN normalizes over the batch with this package's `batchnorm.functional.batch_norm`. gamma is shared over
    time, the statistics are not: step t keeps its own running statistics for t < max_length, and every later
    step uses (and in training updates) those of step max_length - 1. In training each step uses the mean and
    variance of the sequences still active at that step (a step with one active sequence left uses its running
    statistics); evaluation uses the per-step running statistics. gamma starts at 0.1 (gamma = 1 saturates the
    gates and makes the gradients vanish); the input normalizations have no beta, the gate bias b plays that
    role. Weights start as in ``torch.nn.LSTM``, b at 0. Training needs >= 2 sequences. Buffers per layer ``k``
    and normalization ``ih``/``hh``/``cell``: ``layers.k.norm_*.running_mean`` and ``running_var`` of shape
    (max_length, features), ``num_batches_tracked`` of shape (max_length,).

    Args:
        input_size: features of x_t.
        hidden_size: features of h_t and c_t.
        num_layers: 1; stacked layers.
        batch_first: False; the (L, N, features) layout (True: (N, L, features)).
        max_length: 100; slots of per-step statistics; steps >= max_length share the last slot.
        bias: True; the gate bias b and the cell normalization's beta (False: neither).
        dropout: 0.0; dropout on the outputs of every layer but the last, in training, as in ``torch.nn.LSTM``.
        momentum: 0.1 (keyword only); weight of the new batch in the running averages (None: cumulative
            average).
        eps: 1e-5 (keyword only); added to the variance inside the square root.
        gamma_init: 0.1 (keyword only); the initial gamma of all three normalizations.
        device: None (keyword only); factory argument.
        dtype: None (keyword only); factory argument.

    ``forward(input, hx=None, lengths=None)`` returns ``(output, (h_n, c_n))``: ``hx`` is an optional
    ``(h_0, c_0)`` (zeros by default) and ``lengths`` the optional valid length of each sequence of a padded input
    (1 <= length <= L).

    Shape:
        input: (L, N, input_size), (N, L, input_size) with batch_first, unbatched (L, input_size), or a
            PackedSequence.
        h_0, c_0: (num_layers, N, hidden_size) each.
        output: (L, N, hidden_size) (or (N, L, hidden_size) with batch_first; a PackedSequence for a
            PackedSequence input), zero past each sequence's length.
        h_n, c_n: (num_layers, N, hidden_size) each, the state at each sequence's last valid step.

    Raises:
        ValueError: a momentum outside [0, 1], invalid sizes, lengths outside [1, L], or a training batch of a
            single sequence.
        TypeError: an input that is neither a Tensor nor a PackedSequence.

    Example:
        >>> import torch
        >>> from batchnorm.nn import BNLSTM
        >>> lstm = BNLSTM(8, 16, num_layers=2, batch_first=True, max_length=12)
        >>> output, (h_n, c_n) = lstm(torch.randn(4, 12, 8))
        >>> output.shape, h_n.shape
        (torch.Size([4, 12, 16]), torch.Size([2, 4, 16]))
        >>> output, _ = lstm(torch.randn(4, 12, 8), lengths=torch.tensor([12, 9, 5, 3]))
        >>> output[3, 3:].abs().max().item()     # zero past the sequence's length
        0.0

    References:
        Cooijmans, Ballas, Laurent, Gulcehre & Courville 2016, "Recurrent Batch Normalization", arXiv 1603.09025.
    """

    _batch_statistics = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 max_length: int = 100, bias: bool = True, dropout: float = 0.0, *, momentum: Optional[float] = 0.1,
                 eps: float = 1e-5, gamma_init: float = 0.1, device=None, dtype=None) -> None:
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
                                     or not 0.0 <= float(momentum) <= 1.0):
            raise ValueError(f"BNLSTM argument momentum must be a number in [0, 1] or None (cumulative average), "
                             f"got {momentum!r}")
        self._momentum = None if momentum is None else float(momentum)
        super().__init__(input_size, hidden_size, num_layers, batch_first, max_length, bias, dropout, eps=eps,
                         gamma_init=gamma_init, device=device, dtype=dtype)

    @property
    def momentum(self) -> Optional[float]:
        return self._momentum

    def _make_norm(self, num_features: int, shift: bool, factory: dict) -> torch.nn.Module:
        return StepwiseBatchNorm(num_features, self.max_length, self.eps, self._momentum, self.gamma_init, shift,
                                 **factory)

    def reset_running_stats(self) -> None:
        """Every per-step running statistic back to mean 0, variance 1, no batches tracked."""
        for module in self.modules():
            if isinstance(module, StepwiseBatchNorm):
                module.reset_running_stats()


class LNLSTM(_NormalizedLSTM):
    r"""LSTM with layer normalization in the places where BNLSTM has batch norm (LN-LSTM).

    .. math::
        (i, f, g, o) = LN_{hh}(W_{hh} h_{t-1}; \gamma_{hh}) + LN_{ih}(W_{ih} x_t; \gamma_{ih}) + b \\
        c_t = \sigma(f) c_{t-1} + \sigma(i) \tanh(g), \quad
        h_t = \sigma(o) \tanh(LN_{cell}(c_t; \gamma_{cell}, \beta_{cell}))

    Each LN normalizes one sequence's features (4 * hidden_size for the gate terms, hidden_size for the cell),
    so there are no batch or running statistics, training and evaluation agree, and a batch of 1 is fine. gamma
    starts at 1 (Ba et al.); same constructor and call as `BNLSTM`, so the two swap in an experiment.

    With input_size=1 (a signal fed one value per step), W_ih x_t = x_t w and its layer norm over the 4H
    features is sign(x_t) * LN(w) up to eps: the magnitude of the input is lost (batch norm keeps it). That is
    what "layer norm in the same places" means for a scalar input; embed the input first if it matters.

    Args:
        input_size: features of x_t.
        hidden_size: features of h_t and c_t.
        num_layers: 1; stacked layers.
        batch_first: False; the (L, N, features) layout (True: (N, L, features)).
        max_length: 100; accepted so that LNLSTM and BNLSTM take the same arguments; unused (layer norm has no per-step
            statistics).
        bias: True; the gate bias b and the cell normalization's beta (False: neither).
        dropout: 0.0; dropout on the outputs of every layer but the last, in training, as in ``torch.nn.LSTM``.
        eps: 1e-5 (keyword only); added to the variance inside the square root.
        gamma_init: 1.0 (keyword only); the initial gamma of all three normalizations.
        device: None (keyword only); factory argument.
        dtype: None (keyword only); factory argument.

    ``forward(input, hx=None, lengths=None)`` and the shapes are those of `BNLSTM`.

    Raises:
        ValueError: invalid sizes or lengths outside [1, L].
        TypeError: an input that is neither a Tensor nor a PackedSequence.

    Example:
        >>> import torch
        >>> from batchnorm.nn import LNLSTM
        >>> lstm = LNLSTM(8, 16, batch_first=True)
        >>> output, (h_n, c_n) = lstm(torch.randn(1, 12, 8))   # a batch of one sequence is fine
        >>> output.shape
        torch.Size([1, 12, 16])

    References:
        Ba, Kiros & Hinton 2016, "Layer Normalization", arXiv 1607.06450.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 max_length: int = 100, bias: bool = True, dropout: float = 0.0, *, eps: float = 1e-5,
                 gamma_init: float = 1.0, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first, max_length, bias, dropout, eps=eps,
                         gamma_init=gamma_init, device=device, dtype=dtype)

    def _make_norm(self, num_features: int, shift: bool, factory: dict) -> torch.nn.Module:
        return FeatureLayerNorm(num_features, self.eps, self.gamma_init, shift, **factory)
