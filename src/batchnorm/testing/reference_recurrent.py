"""Float64 NumPy reference of BN-LSTM and LN-LSTM, step by step: the oracle of `batchnorm.nn.recurrent`.

No torch import. Time-major arrays, sequences in their original order (no sorting, no packing): at step t
the active sequences are those with length > t, selected by index, so this is an independent path from the
module's sorted/packed one. One layer, gates in torch's order (i, f, g, o):

    (i, f, g, o) = N_hh(W_hh h_{t-1}; gamma_hh) + N_ih(W_ih x_t; gamma_ih) + b
    c_t = sigma(f) c_{t-1} + sigma(i) tanh(g)
    h_t = sigma(o) tanh(N_cell(c_t; gamma_cell, beta_cell))

N = "batch" (Cooijmans et al. 2016, arXiv 1603.09025): per-feature statistics over the active sequences;
step t uses slot s = min(t, max_length - 1) of the running statistics (max_length = their first dimension).
Training: batch statistics, and the slot is updated as in `reference.update_running_stats`; a step
with a single active sequence is normalized with its slot's running statistics and updates nothing.
Eval: every step uses its slot's running statistics.
N = "layer" (Ba et al. 2016, arXiv 1607.06450): statistics over the features of each sequence.

Backward through time (g = dL/d output of the step, carried dh, dc):
    dh_t = g_t + dh_carry,   d(pre_o) = dh_t tanh(n_t) sigma'(o),   dn_t = dh_t sigma(o) (1 - tanh(n_t)^2)
    dc_t = dc_carry + N_cell'(dn_t),   d(pre_f) = dc_t c_{t-1} sigma'(f),   d(pre_i) = dc_t tanh(g) sigma'(i),
    d(pre_g) = dc_t sigma(i) (1 - tanh(g)^2),   dc_{t-1} = dc_t sigma(f),
    dh_{t-1} = N_hh'(d pre) W_hh,   dx_t = N_ih'(d pre) W_ih
with the batch-norm backward of `reference` and the layer-norm backward
    dz = inv_std / F * (F dxhat - sum(dxhat) - xhat sum(dxhat xhat)),  dxhat = dy gamma, F features.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from . import reference

__all__ = ["LayerParams", "StepStats", "Gradients", "lstm_forward", "lstm_backward", "initial_step_stats",
           "random_lstm"]

NORMS = ("ih", "hh", "cell")


class LayerParams(NamedTuple):
    """One layer's parameters (float64 arrays); bias and beta_cell may be None.

    Attributes:
        weight_ih: (4H, I).
        weight_hh: (4H, H).
        bias: (4H,) gate bias b, or None.
        gamma_ih: (4H,).
        gamma_hh: (4H,).
        gamma_cell: (H,).
        beta_cell: (H,), or None.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference_recurrent as rr
        >>> rng = np.random.default_rng(0)
        >>> H, I, T = 4, 3, 6                  # hidden size, input size, time steps
        >>> params = [rr.LayerParams(0.3 * rng.standard_normal((4 * H, I)), 0.3 * rng.standard_normal((4 * H, H)),
        ...                          np.zeros(4 * H), np.full(4 * H, 0.1), np.full(4 * H, 0.1), np.full(H, 0.1),
        ...                          np.zeros(H))]
        >>> running = [{"ih": rr.initial_step_stats(T, 4 * H), "hh": rr.initial_step_stats(T, 4 * H),
        ...             "cell": rr.initial_step_stats(T, H)}]
        >>> x = rng.standard_normal((T, 5, I))  # (T, N, I), time-major
        >>> params[0].weight_hh.shape
        (16, 4)
    """

    weight_ih: np.ndarray  # (4H, I)
    weight_hh: np.ndarray  # (4H, H)
    bias: Optional[np.ndarray]  # (4H,) gate bias b
    gamma_ih: np.ndarray  # (4H,)
    gamma_hh: np.ndarray  # (4H,)
    gamma_cell: np.ndarray  # (H,)
    beta_cell: Optional[np.ndarray]  # (H,)


class StepStats(NamedTuple):
    """Running statistics of one normalization, one row per time-step slot.

    Attributes:
        running_mean: (max_length, C).
        running_var: (max_length, C), unbiased.
        num_batches_tracked: (max_length,) int.

    Example:
        >>> from batchnorm.testing import reference_recurrent as rr
        >>> rr.initial_step_stats(3, 2).num_batches_tracked
        array([0, 0, 0])
    """

    running_mean: np.ndarray  # (max_length, C)
    running_var: np.ndarray  # (max_length, C), unbiased
    num_batches_tracked: np.ndarray  # (max_length,) int


class Gradients(NamedTuple):
    """Gradients of the loss with respect to the input, the initial state and every parameter.

    Attributes:
        input: (T, N, I).
        h0: (L, N, H).
        c0: (L, N, H).
        layers: per layer a dict named like `LayerParams`' fields.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference_recurrent as rr
        >>> x, params, running = rr.random_lstm()   # T=6 steps, N=5, I=3 inputs, H=4 hidden
        >>> *_, cache = rr.lstm_forward(x, params, "batch", running=running)
        >>> grads = rr.lstm_backward(cache, np.ones((6, 5, 4)))
        >>> grads.input.shape, grads.layers[0]["gamma_cell"].shape
        ((6, 5, 3), (4,))
    """

    input: np.ndarray
    h0: np.ndarray
    c0: np.ndarray
    layers: list


def initial_step_stats(max_length: int, features: int) -> StepStats:
    """Fresh running statistics: mean 0, variance 1, no batches tracked, in every slot.

    Args:
        max_length: the number of time-step slots.
        features: C, the number of normalized features.

    Example:
        >>> from batchnorm.testing import reference_recurrent as rr
        >>> stats = rr.initial_step_stats(3, 2)
        >>> stats.running_mean.shape, float(stats.running_var.min())
        ((3, 2), 1.0)
    """
    return StepStats(np.zeros((max_length, features)), np.ones((max_length, features)),
                     np.zeros(max_length, dtype=np.int64))


def random_lstm(hidden_size: int = 4, input_size: int = 3, steps: int = 6, batch: int = 5, seed: int = 0):
    """(x, params, running) of a one-layer BN-LSTM with random weights: an input to try the functions on.

    x is (steps, batch, input_size), time-major; the weights are 0.3 * N(0, 1), the gate bias 0, every gamma 0.1,
    beta_cell 0; `running` holds fresh step statistics for the "batch" norm.

    Example:
        >>> from batchnorm.testing import reference_recurrent as rr
        >>> x, params, running = rr.random_lstm()
        >>> x.shape, params[0].weight_ih.shape, running[0]["cell"].running_mean.shape
        ((6, 5, 3), (16, 3), (6, 4))
    """
    rng = np.random.default_rng(seed)
    hidden, four = hidden_size, 4 * hidden_size
    params = [LayerParams(0.3 * rng.standard_normal((four, input_size)), 0.3 * rng.standard_normal((four, hidden)),
                          np.zeros(four), np.full(four, 0.1), np.full(four, 0.1), np.full(hidden, 0.1),
                          np.zeros(hidden))]
    running = [{"ih": initial_step_stats(steps, four), "hh": initial_step_stats(steps, four),
                "cell": initial_step_stats(steps, hidden)}]
    return rng.standard_normal((steps, batch, input_size)), params, running


def _copy_stats(stats: StepStats) -> StepStats:
    return StepStats(*(np.array(a, copy=True) for a in stats))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# ------------------------------------------------------------------------------------- normalizations
def _norm_forward(kind: str, z, gamma, beta, stats: Optional[StepStats], step: int, training: bool,
                  momentum, eps: float):
    """(y, cache) of one normalization at one step; updates `stats` in place (training BN)."""
    if kind == "layer":
        mean = z.mean(axis=1, keepdims=True)
        var = ((z - mean) ** 2).mean(axis=1, keepdims=True)
        inv_std = 1.0 / np.sqrt(var + eps)
        x_hat = (z - mean) * inv_std
        y = x_hat * gamma + (0.0 if beta is None else beta)
        return y, ("layer", x_hat, inv_std, gamma)
    if kind != "batch":
        raise ValueError(f"norm must be 'batch' or 'layer', got {kind!r}")
    slot = min(step, stats.running_mean.shape[0] - 1)
    if training and z.shape[0] > 1:
        y, cache = reference.batch_norm_train_forward(z, gamma, beta, eps)
        updated = reference.update_running_stats(stats.running_mean[slot], stats.running_var[slot],
                                                 stats.num_batches_tracked[slot], cache.mean, cache.var,
                                                 cache.count, momentum)
        stats.running_mean[slot] = updated.running_mean
        stats.running_var[slot] = updated.running_var
        stats.num_batches_tracked[slot] = updated.num_batches_tracked
        return y, ("batch", cache, gamma)
    mean, var = stats.running_mean[slot].copy(), stats.running_var[slot].copy()
    y = reference.batch_norm_eval_forward(z, mean, var, gamma, beta, eps)
    return y, ("batch-eval", z, mean, var, gamma, eps)


def _norm_backward(dy, cache):
    """(dz, dgamma, dbeta) of one normalization at one step."""
    kind = cache[0]
    if kind == "layer":
        _, x_hat, inv_std, gamma = cache
        dx_hat = dy * gamma
        features = x_hat.shape[1]
        dz = inv_std / features * (features * dx_hat - dx_hat.sum(axis=1, keepdims=True)
                                   - x_hat * (dx_hat * x_hat).sum(axis=1, keepdims=True))
        return dz, (dy * x_hat).sum(axis=0), dy.sum(axis=0)
    if kind == "batch":
        _, bn_cache, gamma = cache
        return reference.batch_norm_backward(dy, bn_cache, gamma)
    _, z, mean, var, gamma, eps = cache
    return reference.batch_norm_eval_backward(dy, z, mean, var, gamma, eps)


# ------------------------------------------------------------------------------------------- forward
def lstm_forward(x, params: list, norm: str = "batch", h0=None, c0=None, lengths=None, running=None,
                 training: bool = True, momentum: Optional[float] = 0.1, eps: float = 1e-5, dropout_masks=None):
    """Forward pass of the stacked BN-LSTM (norm="batch") or LN-LSTM (norm="layer").

    Args:
        x: (T, N, I) time-major input.
        params: a list of `LayerParams`, one per layer.
        norm: "batch"; or "layer".
        h0: None (zeros); (L, N, H) initial hidden state.
        c0: None (zeros); (L, N, H) initial cell state.
        lengths: None (all T); (N,) ints in [1, T].
        running: None; per layer a dict {"ih", "hh", "cell"} -> `StepStats` (needed by batch norm; not
            modified, the updated copies are returned).
        training: True; batch statistics (True) or running ones (False).
        momentum: 0.1; or None (cumulative average).
        eps: 1e-5; added to the variance inside the square root.
        dropout_masks: None; L-1 arrays (T, N, H) multiplied into the output of layer l before layer l+1.

    Returns:
        (output (T, N, H) zero past each length, h_n (L, N, H), c_n (L, N, H), running after, cache).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference_recurrent as rr
        >>> x, params, running = rr.random_lstm()   # T=6 steps, N=5, I=3 inputs, H=4 hidden
        >>> out, h_n, c_n, after, cache = rr.lstm_forward(x, params, "batch", lengths=np.array([6, 6, 4, 3, 6]),
        ...                                               running=running)
        >>> out.shape, h_n.shape, float(abs(out[3:, 3]).max())     # zero past the length 3
        ((6, 5, 4), (1, 5, 4), 0.0)
        >>> after[0]["ih"].num_batches_tracked                  # one update per step slot
        array([1, 1, 1, 1, 1, 1])
    """
    x = np.asarray(x, dtype=np.float64)
    steps, batch = x.shape[0], x.shape[1]
    layers = len(params)
    hidden = params[0].weight_hh.shape[1]
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths, dtype=np.int64)
    h0 = np.zeros((layers, batch, hidden)) if h0 is None else np.asarray(h0, dtype=np.float64)
    c0 = np.zeros((layers, batch, hidden)) if c0 is None else np.asarray(c0, dtype=np.float64)
    stats_after = None if running is None else [{k: _copy_stats(v) for k, v in layer.items()} for layer in running]
    layer_input = x
    h_n, c_n, caches = np.zeros_like(h0), np.zeros_like(c0), []
    for index, p in enumerate(params):
        if index > 0 and dropout_masks is not None:
            layer_input = layer_input * dropout_masks[index - 1]
        stats = None if stats_after is None else stats_after[index]

        def normalize(z, gamma, beta, which, step):
            return _norm_forward(norm, z, gamma, beta, None if stats is None else stats[which], step, training,
                                 momentum, eps)

        h, c = h0[index].copy(), c0[index].copy()
        output = np.zeros((steps, batch, hidden))
        records = []
        for step in range(steps):
            active = np.nonzero(lengths > step)[0]
            x_t, h_prev, c_prev = layer_input[step, active], h[active], c[active]
            n_hh, cache_hh = normalize(h_prev @ p.weight_hh.T, p.gamma_hh, None, "hh", step)
            n_ih, cache_ih = normalize(x_t @ p.weight_ih.T, p.gamma_ih, None, "ih", step)
            pre = n_hh + n_ih + (0.0 if p.bias is None else p.bias)
            s_i, s_f = _sigmoid(pre[:, :hidden]), _sigmoid(pre[:, hidden:2 * hidden])
            t_g, s_o = np.tanh(pre[:, 2 * hidden:3 * hidden]), _sigmoid(pre[:, 3 * hidden:])
            c_new = s_f * c_prev + s_i * t_g
            n_cell, cache_cell = normalize(c_new, p.gamma_cell, p.beta_cell, "cell", step)
            t_c = np.tanh(n_cell)
            h_new = s_o * t_c
            h[active], c[active], output[step, active] = h_new, c_new, h_new
            records.append((active, x_t, h_prev, c_prev, s_i, s_f, t_g, s_o, t_c,
                            cache_hh, cache_ih, cache_cell))
        h_n[index], c_n[index] = h, c
        caches.append(records)
        layer_input = output
    cache = {"params": params, "records": caches, "lengths": lengths, "shape": x.shape,
             "dropout_masks": dropout_masks, "hidden": hidden}
    return layer_input, h_n, c_n, stats_after, cache


# ------------------------------------------------------------------------------------------ backward
def lstm_backward(cache, grad_output, grad_h_n=None, grad_c_n=None) -> Gradients:
    """Backward through time of `lstm_forward`: gradients of sum(grad_output * output) + sum(grad_h_n * h_n)
    + sum(grad_c_n * c_n) with respect to the input, h0, c0 and every parameter.

    Args:
        cache: from `lstm_forward`.
        grad_output: (T, N, H); values past a length do not matter (those outputs are constants).
        grad_h_n: None (zero); (L, N, H).
        grad_c_n: None (zero); (L, N, H).

    Returns:
        The `Gradients`.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference_recurrent as rr
        >>> x, params, running = rr.random_lstm()   # T=6 steps, N=5, I=3 inputs, H=4 hidden
        >>> out, h_n, c_n, _, cache = rr.lstm_forward(x, params, "layer")
        >>> grads = rr.lstm_backward(cache, np.ones_like(out))
        >>> grads.h0.shape, sorted(grads.layers[0])[:3]
        ((1, 5, 4), ['beta_cell', 'bias', 'gamma_cell'])
    """
    params, records, hidden = cache["params"], cache["records"], cache["hidden"]
    steps, batch, _ = cache["shape"]
    layers = len(params)
    grad_h_n = np.zeros((layers, batch, hidden)) if grad_h_n is None else np.asarray(grad_h_n, dtype=np.float64)
    grad_c_n = np.zeros((layers, batch, hidden)) if grad_c_n is None else np.asarray(grad_c_n, dtype=np.float64)
    d_output = np.asarray(grad_output, dtype=np.float64)
    d_h0, d_c0 = np.zeros_like(grad_h_n), np.zeros_like(grad_c_n)
    layer_grads = [None] * layers
    d_input = None
    for index in reversed(range(layers)):
        p = params[index]
        grads = {name: (None if value is None else np.zeros_like(value)) for name, value in p._asdict().items()}
        dh_carry, dc_carry = grad_h_n[index].copy(), grad_c_n[index].copy()
        d_input = np.zeros((steps, batch, p.weight_ih.shape[1]))
        for step in reversed(range(steps)):
            (active, x_t, h_prev, c_prev, s_i, s_f, t_g, s_o, t_c,
             cache_hh, cache_ih, cache_cell) = records[index][step]
            dh = dh_carry[active] + d_output[step, active]
            dc = dc_carry[active]
            d_pre_o = dh * t_c * s_o * (1.0 - s_o)
            d_n_cell = dh * s_o * (1.0 - t_c ** 2)
            d_c_from_norm, d_gamma_cell, d_beta_cell = _norm_backward(d_n_cell, cache_cell)
            grads["gamma_cell"] += d_gamma_cell
            if grads["beta_cell"] is not None:
                grads["beta_cell"] += d_beta_cell
            dc = dc + d_c_from_norm
            d_pre = np.concatenate([dc * t_g * s_i * (1.0 - s_i), dc * c_prev * s_f * (1.0 - s_f),
                                    dc * s_i * (1.0 - t_g ** 2), d_pre_o], axis=1)
            if grads["bias"] is not None:
                grads["bias"] += d_pre.sum(axis=0)
            d_z_hh, d_gamma_hh, _ = _norm_backward(d_pre, cache_hh)
            d_z_ih, d_gamma_ih, _ = _norm_backward(d_pre, cache_ih)
            grads["gamma_hh"] += d_gamma_hh
            grads["gamma_ih"] += d_gamma_ih
            grads["weight_hh"] += d_z_hh.T @ h_prev
            grads["weight_ih"] += d_z_ih.T @ x_t
            dh_carry[active] = d_z_hh @ p.weight_hh
            dc_carry[active] = dc * s_f
            d_input[step, active] = d_z_ih @ p.weight_ih
        d_h0[index], d_c0[index] = dh_carry, dc_carry
        layer_grads[index] = grads
        if index > 0:
            masks = cache["dropout_masks"]
            d_output = d_input if masks is None else d_input * masks[index - 1]
    return Gradients(d_input, d_h0, d_c0, layer_grads)
