"""BNLSTM and LNLSTM against their step-by-step float64 NumPy references, gradcheck, lengths, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import batchnorm.nn as bnn
from batchnorm.testing import reference_recurrent as ref
from batchnorm.nn.recurrent import BNLSTM, LNLSTM, StepwiseBatchNorm
from helpers.cases import relative_error

TOLERANCE = 1e-10
NORM_OF = {BNLSTM: "batch", LNLSTM: "layer"}
NORM_NAMES = {"ih": "norm_ih", "hh": "norm_hh", "cell": "norm_cell"}




@pytest.fixture(autouse=True)
def one_thread():
    """These inputs are tiny: run them on one thread (torch's layer_norm otherwise wakes a second thread on
    every call, which costs milliseconds on a busy machine), and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------- helpers
def _numpy(t):
    return None if t is None else t.detach().to(torch.float64).numpy().copy()


def params_of(module) -> list:
    """The module's parameters as reference LayerParams."""
    return [ref.LayerParams(_numpy(layer.weight_ih), _numpy(layer.weight_hh), _numpy(layer.bias),
                            _numpy(layer.norm_ih.weight), _numpy(layer.norm_hh.weight),
                            _numpy(layer.norm_cell.weight), _numpy(layer.norm_cell.bias))
            for layer in module.layers]


def running_of(module):
    """The module's per-step running statistics as reference StepStats (None for LNLSTM)."""
    if isinstance(module, LNLSTM):
        return None
    return [{key: ref.StepStats(_numpy(getattr(layer, name).running_mean), _numpy(getattr(layer, name).running_var),
                                getattr(layer, name).num_batches_tracked.numpy().copy())
             for key, name in NORM_NAMES.items()} for layer in module.layers]


def grads_of(layer) -> dict:
    """A layer's parameter gradients under the reference's names."""
    named = {"weight_ih": layer.weight_ih, "weight_hh": layer.weight_hh, "bias": layer.bias,
             "gamma_ih": layer.norm_ih.weight, "gamma_hh": layer.norm_hh.weight,
             "gamma_cell": layer.norm_cell.weight, "beta_cell": layer.norm_cell.bias}
    return {name: (None if p is None else p.grad) for name, p in named.items()}


def randomize_(module, generator) -> None:
    """Random parameters (gamma away from its init, nonzero biases) so that every term is exercised."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * (0.5 if "weight_" in name else 0.3))
            if name.endswith("norm_ih.weight") or name.endswith("norm_hh.weight") or name.endswith("cell.weight"):
                p.add_(1.0)


def compare(name, actual, expected, tol=TOLERANCE):
    error = relative_error(torch.as_tensor(actual), torch.as_tensor(expected))
    assert error < tol, f"{name}: relative error {error:.3g} >= {tol}"


def step_both(module, x_time_major, generator, h0=None, c0=None, lengths=None, momentum=0.1, packed=False):
    """One forward + backward of the module and of the reference on the same input; compare everything."""
    cls = type(module)
    params, running = params_of(module), running_of(module)
    steps, batch, _ = x_time_major.shape
    x_in = x_time_major.transpose(0, 1) if module.batch_first else x_time_major
    x_in = x_in.clone().requires_grad_()
    hx = None
    if h0 is not None:
        hx = (h0.clone().requires_grad_(), c0.clone().requires_grad_())
    module.zero_grad()
    if packed:
        pack = pack_padded_sequence(x_in, torch.as_tensor(lengths), batch_first=module.batch_first,
                                    enforce_sorted=False)
        packed_out, (h_n, c_n) = module(pack, hx)
        assert isinstance(packed_out, torch.nn.utils.rnn.PackedSequence)
        output = pad_packed_sequence(packed_out, batch_first=module.batch_first, total_length=steps)[0]
    else:
        output, (h_n, c_n) = module(x_in, hx, lengths=lengths)
    out_time_major = output.transpose(0, 1) if module.batch_first else output
    grad_out = torch.randn(out_time_major.shape, generator=generator, dtype=torch.float64)
    grad_h = torch.randn(h_n.shape, generator=generator, dtype=torch.float64)
    grad_c = torch.randn(c_n.shape, generator=generator, dtype=torch.float64)
    loss = (out_time_major * grad_out).sum() + (h_n * grad_h).sum() + (c_n * grad_c).sum()
    loss.backward()

    expected_out, expected_h, expected_c, expected_running, cache = ref.lstm_forward(
        x_time_major.numpy(), params, NORM_OF[cls], _numpy(h0), _numpy(c0), lengths, running, module.training,
        momentum, module.eps)
    grads = ref.lstm_backward(cache, grad_out.numpy(), grad_h.numpy(), grad_c.numpy())

    compare("output", out_time_major, expected_out)
    compare("h_n", h_n, expected_h)
    compare("c_n", c_n, expected_c)
    x_grad = x_in.grad.transpose(0, 1) if module.batch_first else x_in.grad
    compare("input grad", x_grad, grads.input)
    if h0 is not None:
        compare("h0 grad", hx[0].grad, grads.h0)
        compare("c0 grad", hx[1].grad, grads.c0)
    for index, layer in enumerate(module.layers):
        for name, grad in grads_of(layer).items():
            expected = grads.layers[index][name]
            assert (grad is None) == (expected is None), name
            if grad is not None:
                compare(f"layer {index} {name} grad", grad, expected)
    if expected_running is not None:
        for index, layer in enumerate(module.layers):
            for key, name in NORM_NAMES.items():
                norm = getattr(layer, name)
                stats = expected_running[index][key]
                compare(f"layer {index} {name} running_mean", norm.running_mean, stats.running_mean)
                compare(f"layer {index} {name} running_var", norm.running_var, stats.running_var)
                assert np.array_equal(norm.num_batches_tracked.numpy(), stats.num_batches_tracked), name
    return output, h_n, c_n


CONFIGS = {
    # name: (constructor kwargs, steps, batch, lengths or None, hx given, packed input)
    "one-layer": (dict(input_size=3, hidden_size=4, max_length=10), 5, 4, None, False, False),
    "two-layers-batch-first-hx": (dict(input_size=3, hidden_size=4, num_layers=2, batch_first=True, max_length=10),
                                  4, 5, None, True, False),
    "longer-than-max-length": (dict(input_size=2, hidden_size=3, max_length=3), 7, 4, None, True, False),
    "lengths-past-max-length": (dict(input_size=3, hidden_size=3, num_layers=2, max_length=4), 7, 5,
                                [7, 2, 5, 4, 5], True, False),
    "lengths-two-longest": (dict(input_size=2, hidden_size=3, batch_first=True, max_length=10), 6, 4,
                            [3, 6, 1, 6], False, False),
    "packed": (dict(input_size=3, hidden_size=3, num_layers=2, max_length=4), 6, 4, [2, 6, 5, 3], True, True),
    "no-bias": (dict(input_size=3, hidden_size=4, bias=False, max_length=5), 5, 4, [5, 3, 4, 5], True, False),
    "momentum-None": (dict(input_size=2, hidden_size=3, max_length=3, momentum=None), 5, 4, [5, 4, 2, 5], True,
                      False),
}


def _build(cls, kwargs, seed):
    kwargs = dict(kwargs)
    if cls is LNLSTM:
        kwargs.pop("momentum", None)
    module = cls(dtype=torch.float64, **kwargs)
    randomize_(module, torch.Generator().manual_seed(seed))
    return module


@pytest.mark.parametrize("cls", [BNLSTM, LNLSTM])
@pytest.mark.parametrize("config", list(CONFIGS), ids=str)
def test_matches_reference_over_training_then_eval(cls, config):
    """3 training steps on fresh inputs, then eval: outputs, final states, every gradient, per-step statistics."""
    kwargs, steps, batch, lengths, with_hx, packed = CONFIGS[config]
    module = _build(cls, kwargs, seed=11)
    generator = torch.Generator().manual_seed(12)
    momentum = kwargs.get("momentum", 0.1)
    layers, hidden = module.num_layers, module.hidden_size
    for mode in ("train", "train", "train", "eval"):
        module.train(mode == "train")
        x = torch.randn(steps, batch, module.input_size, generator=generator, dtype=torch.float64) * 1.5 + 0.3
        h0 = c0 = None
        if with_hx:
            h0 = torch.randn(layers, batch, hidden, generator=generator, dtype=torch.float64)
            c0 = torch.randn(layers, batch, hidden, generator=generator, dtype=torch.float64)
        step_both(module, x, generator, h0, c0, lengths, momentum, packed)
    if cls is BNLSTM:  # the statistics really moved away from their initial values, per step
        stats = module.layers[0].norm_hh
        assert stats.num_batches_tracked.sum() > 0
        assert not torch.allclose(stats.running_var, torch.ones_like(stats.running_var))


@pytest.mark.parametrize("cls", [BNLSTM, LNLSTM])
def test_zero_initial_state_matches_reference(cls):
    """hx=None: W_hh h_0 = 0 has zero batch variance at step 0; still exact, gradients finite."""
    module = _build(cls, dict(input_size=3, hidden_size=4, num_layers=2, max_length=3), seed=5)
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(5, 4, 3, generator=generator, dtype=torch.float64)
    output, _, _ = step_both(module, x, generator)
    assert torch.isfinite(output).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_dropout_between_layers_matches_reference_with_the_same_masks():
    """Dropout masks regenerated from the same seed (dropout is the only random draw in forward): outputs,
    final states, every gradient and the per-step statistics match the reference given those masks."""
    module = _build(BNLSTM, dict(input_size=3, hidden_size=4, num_layers=3, dropout=0.4, max_length=5), seed=3)
    lengths = [5, 3, 5, 2]
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(5, 4, 3, dtype=torch.float64, generator=generator)
    running_before = running_of(module)
    x_in = x.clone().requires_grad_()
    torch.manual_seed(123)
    output, (h_n, c_n) = module(x_in, lengths=lengths)
    grad_out = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    grad_h = torch.randn(h_n.shape, generator=generator, dtype=torch.float64)
    ((output * grad_out).sum() + (h_n * grad_h).sum()).backward()
    # the same draws, in packed layout, then padded back to (T, N, H)
    torch.manual_seed(123)
    pack = pack_padded_sequence(x, torch.as_tensor(lengths), enforce_sorted=False)
    masks = []
    for _ in range(2):
        drawn = torch.nn.functional.dropout(torch.ones(pack.data.shape[0], 4, dtype=torch.float64), 0.4, True)
        padded = pad_packed_sequence(pack._replace(data=drawn), total_length=5)[0]
        masks.append(padded.numpy())
    assert any((m == 0).any() for m in masks)
    expected_out, expected_h, expected_c, expected_running, cache = ref.lstm_forward(
        x.numpy(), params_of(module), "batch", lengths=lengths, running=running_before, dropout_masks=masks)
    grads = ref.lstm_backward(cache, grad_out.numpy(), grad_h.numpy())
    compare("output", output, expected_out)
    compare("h_n", h_n, expected_h)
    compare("c_n", c_n, expected_c)
    compare("input grad", x_in.grad, grads.input)
    for index, layer in enumerate(module.layers):
        for name, grad in grads_of(layer).items():
            compare(f"layer {index} {name} grad", grad, grads.layers[index][name])
        for key, norm_name in NORM_NAMES.items():
            compare(f"layer {index} {norm_name} running_var", getattr(layer, norm_name).running_var,
                    expected_running[index][key].running_var)
    # eval ignores dropout: equal to the same network without it
    module.eval()
    twin = _build(BNLSTM, dict(input_size=3, hidden_size=4, num_layers=3, max_length=5), seed=0)
    twin.load_state_dict(module.state_dict())
    twin.eval()
    compare("eval output", module(x, lengths=lengths)[0], twin(x, lengths=lengths)[0], 1e-15)


# ------------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("cls", [BNLSTM, LNLSTM])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck(cls, training):
    """Finite differences vs autograd for input, h0, c0 and every parameter, with variable lengths."""
    module = _build(cls, dict(input_size=2, hidden_size=2, num_layers=2, max_length=3), seed=7)
    module.train(training)
    names = [name for name, _ in module.named_parameters()]
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(4, 3, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 3, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_() for p in module.parameters())
    lengths = [4, 2, 4]

    def function(x, h0, c0, *values):
        output, (h_n, c_n) = torch.func.functional_call(module, dict(zip(names, values)), (x, (h0, c0)),
                                                        {"lengths": lengths})
        return output, h_n, c_n

    assert torch.autograd.gradcheck(function, (x, h0, c0) + params, eps=1e-6, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------- lengths, max_length
@pytest.mark.parametrize("cls", [BNLSTM, LNLSTM])
def test_outputs_past_length_are_zero_and_final_state_is_last_valid_step(cls):
    module = _build(cls, dict(input_size=3, hidden_size=4, num_layers=2, batch_first=True, max_length=4), seed=1)
    lengths = torch.tensor([6, 1, 4, 6, 3])
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    output, (h_n, c_n) = module(x, lengths=lengths)
    for i, length in enumerate(lengths.tolist()):
        assert torch.equal(output[i, length:], torch.zeros_like(output[i, length:]))
        assert output[i, :length].abs().min() > 0
        assert torch.equal(h_n[-1, i], output[i, length - 1])


@pytest.mark.parametrize("cls", [BNLSTM, LNLSTM])
def test_padding_does_not_leak_into_outputs_or_statistics(cls):
    """Garbage past each length changes nothing: statistics are over the active sequences only."""
    lengths = [5, 2, 4, 5]
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    garbage = x.clone()
    for i, length in enumerate(lengths):
        garbage[length:, i] = 1e3 * torch.randn(5 - length, 3, dtype=torch.float64)
    first, second = _build(cls, dict(input_size=3, hidden_size=3, max_length=3), 2), \
        _build(cls, dict(input_size=3, hidden_size=3, max_length=3), 2)
    out_first, (h_first, _) = first(x, lengths=lengths)
    out_second, (h_second, _) = second(garbage, lengths=lengths)
    assert torch.equal(out_first, out_second) and torch.equal(h_first, h_second)
    for a, b in zip(first.buffers(), second.buffers()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [BNLSTM, LNLSTM])
def test_eval_variable_lengths_equal_one_sequence_at_a_time(cls):
    """Independent of the reference: in eval (fixed statistics) each sequence alone gives the same result."""
    module = _build(cls, dict(input_size=3, hidden_size=4, num_layers=2, max_length=3), seed=9)
    module.train()
    for _ in range(3):  # fill the per-step running statistics
        module(torch.randn(6, 8, 3, dtype=torch.float64) + 0.5)
    module.eval()
    lengths = [6, 2, 5, 1]
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    h0 = torch.randn(2, 4, 4, dtype=torch.float64)
    c0 = torch.randn(2, 4, 4, dtype=torch.float64)
    output, (h_n, c_n) = module(x, (h0, c0), lengths=lengths)
    for i, length in enumerate(lengths):
        alone, (h_alone, c_alone) = module(x[:length, i], (h0[:, i], c0[:, i]))  # unbatched input
        compare(f"sequence {i} output", output[:length, i], alone, 1e-13)
        compare(f"sequence {i} h_n", h_n[:, i], h_alone, 1e-13)
        compare(f"sequence {i} c_n", c_n[:, i], c_alone, 1e-13)


def test_steps_past_max_length_share_the_last_slot():
    module = BNLSTM(2, 3, max_length=3, dtype=torch.float64)
    module(torch.randn(7, 4, 2, dtype=torch.float64))
    counts = module.layers[0].norm_cell.num_batches_tracked.tolist()
    assert counts == [1, 1, 5]  # steps 2..6 all update slot 2
    module.eval()
    x = torch.randn(7, 3, 2, dtype=torch.float64)
    long_output = module(x)[0]
    # a module with max_length=7 whose slots 3..6 hold slot 2's statistics gives the same eval output
    twin = BNLSTM(2, 3, max_length=7, dtype=torch.float64)
    state = module.state_dict()
    for key, value in state.items():
        if value.dim() >= 1 and "norm_" in key and ("running" in key or "num_batches" in key):
            state[key] = torch.cat([value, value[-1:].expand(4, *value.shape[1:])])
    twin.load_state_dict(state)
    twin.eval()
    compare("eval output", long_output, twin(x)[0], 1e-15)


def test_per_step_statistics_differ_between_steps():
    """The point of the method: statistics are kept per step (a drifting input gives drifting statistics)."""
    module = BNLSTM(1, 3, max_length=4, momentum=1.0, dtype=torch.float64)
    x = torch.arange(4, dtype=torch.float64).reshape(4, 1, 1) * 10.0 + torch.randn(4, 6, 1, dtype=torch.float64)
    module(x)
    running_mean = module.layers[0].norm_ih.running_mean
    expected = x.squeeze(-1).mean(1, keepdim=True) * module.layers[0].weight_ih.detach().reshape(1, -1)
    compare("per-step mean of W_ih x_t", running_mean, expected, 1e-12)


# -------------------------------------------------------------------------------------- torch parity
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("unbatched", [False, True])
def test_shapes_match_torch_lstm(batch_first, unbatched):
    kwargs = dict(input_size=3, hidden_size=5, num_layers=2, batch_first=batch_first)
    shape = (6, 3) if unbatched else ((4, 6, 3) if batch_first else (6, 4, 3))
    x = torch.randn(shape)
    theirs = torch.nn.LSTM(**kwargs)
    out_theirs, (h_theirs, c_theirs) = theirs(x)
    for cls in (BNLSTM, LNLSTM):
        ours = cls(**kwargs).eval()
        out, (h, c) = ours(x)
        assert out.shape == out_theirs.shape and h.shape == h_theirs.shape and c.shape == c_theirs.shape
        assert out.dtype == torch.float32


def test_packed_input_equals_lengths_input():
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([3, 6, 2, 5])
    first = _build(BNLSTM, dict(input_size=3, hidden_size=4, num_layers=2), 1)
    second = _build(BNLSTM, dict(input_size=3, hidden_size=4, num_layers=2), 1)
    out_padded, (h_padded, c_padded) = first(x, lengths=lengths)
    packed_out, (h_packed, c_packed) = second(pack_padded_sequence(x, lengths, enforce_sorted=False))
    out_packed = pad_packed_sequence(packed_out, total_length=6)[0]
    assert torch.equal(out_padded, out_packed) and torch.equal(h_padded, h_packed) and torch.equal(c_padded, c_packed)


def test_batch_norm_is_this_packages(monkeypatch):
    """BNLSTM never calls torch's batch norm; it calls batchnorm.functional.batch_norm per step and norm."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.nn.functional.batch_norm was called")

    import batchnorm.functional as functional
    calls = []
    original = functional.batch_norm
    monkeypatch.setattr(torch.nn.functional, "batch_norm", refuse)
    monkeypatch.setattr(functional, "batch_norm", lambda *a, **k: calls.append(1) or original(*a, **k))
    BNLSTM(2, 3, num_layers=2)(torch.randn(5, 4, 2))
    assert len(calls) == 2 * 5 * 3


def test_float32_close_to_float64():
    module64 = _build(BNLSTM, dict(input_size=3, hidden_size=4, num_layers=2), 4)
    module32 = BNLSTM(3, 4, num_layers=2)
    module32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in module64.state_dict().items()})
    x = torch.randn(8, 6, 3, dtype=torch.float64)
    compare("float32 output", module32(x.float())[0], module64(x)[0], 1e-4)


def test_state_dict_buffers_and_parameters():
    module = BNLSTM(3, 4, num_layers=2, max_length=7)
    state = module.state_dict()
    assert state["layers.1.norm_hh.running_mean"].shape == (7, 16)
    assert state["layers.0.norm_cell.running_var"].shape == (7, 4)
    assert state["layers.0.norm_ih.num_batches_tracked"].shape == (7,)
    assert "layers.0.norm_ih.bias" not in state and "layers.0.norm_cell.bias" in state
    assert torch.all(module.layers[0].norm_hh.weight == 0.1) and torch.all(module.layers[0].norm_cell.weight == 0.1)
    assert torch.all(LNLSTM(3, 4).layers[0].norm_ih.weight == 1.0)
    assert torch.all(BNLSTM(3, 4, gamma_init=0.5).layers[0].norm_cell.weight == 0.5)
    assert isinstance(module.layers[0].norm_hh, StepwiseBatchNorm)
    assert bnn.BNLSTM is BNLSTM and bnn.LNLSTM is LNLSTM


def test_single_active_sequence_step_uses_running_statistics():
    """Training, one sequence left at a step: normalized with that step's running statistics, no update."""
    module = BNLSTM(2, 3, max_length=10, dtype=torch.float64)
    module(torch.randn(4, 3, 2, dtype=torch.float64), lengths=[4, 2, 2])
    counts = module.layers[0].norm_ih.num_batches_tracked.tolist()
    assert counts[:4] == [1, 1, 0, 0]


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(input_size=0, hidden_size=4), "input_size must be a positive integer"),
    (dict(input_size=3, hidden_size=-1), "hidden_size must be a positive integer"),
    (dict(input_size=3, hidden_size=2.5), "hidden_size must be a positive integer"),
    (dict(input_size=3, hidden_size=4, num_layers=0), "num_layers must be a positive integer"),
    (dict(input_size=3, hidden_size=4, max_length=0), "max_length must be a positive integer"),
    (dict(input_size=3, hidden_size=4, dropout=1.5), r"dropout must be a number in \[0, 1\]"),
    (dict(input_size=3, hidden_size=4, batch_first="yes"), "batch_first must be True or False"),
    (dict(input_size=3, hidden_size=4, bias=1), "bias must be True or False"),
    (dict(input_size=3, hidden_size=4, eps=0.0), "eps must be a positive finite number"),
])
@pytest.mark.parametrize("cls", [BNLSTM, LNLSTM])
def test_bad_constructor_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=f"{cls.__name__} argument {match}"):
        cls(**kwargs)


def test_bad_momentum_and_dropout_warning():
    with pytest.raises(ValueError, match=r"BNLSTM argument momentum must be a number in \[0, 1\] or None"):
        BNLSTM(3, 4, momentum=2.0)
    with pytest.warns(UserWarning, match="dropout=0.5 is applied between layers only"):
        BNLSTM(3, 4, dropout=0.5)


@pytest.mark.parametrize("call, error, match", [
    (lambda m: m(torch.randn(5, 4, 2)), ValueError, r"3 features in the last dimension \(input_size=3\)"),
    (lambda m: m(torch.randn(5, 4, 3, 1)), ValueError, "expected input of shape"),
    (lambda m: m([1, 2, 3]), TypeError, "expected input to be a Tensor or a PackedSequence"),
    (lambda m: m(torch.randn(5, 4, 3), lengths=[5, 4, 6, 1]), ValueError, r"lengths must be in \[1, 5\]"),
    (lambda m: m(torch.randn(5, 4, 3), lengths=[5, 4, 0, 1]), ValueError, r"lengths must be in \[1, 5\]"),
    (lambda m: m(torch.randn(5, 4, 3), lengths=[5, 4]), ValueError, "lengths must have one entry per sequence"),
    (lambda m: m(torch.randn(5, 4, 3), lengths=torch.tensor([5.0, 4, 3, 2])), ValueError,
     "lengths must hold integers"),
    (lambda m: m(torch.randn(5, 4, 3), hx=torch.zeros(2, 4, 4)), ValueError, r"hx must be a tuple \(h_0, c_0\)"),
    (lambda m: m(torch.randn(5, 4, 3), hx=(torch.zeros(1, 4, 4), torch.zeros(2, 4, 4))), ValueError,
     r"h_0 must have shape \(num_layers, batch, hidden_size\) = \(2, 4, 4\)"),
    (lambda m: m(pack_padded_sequence(torch.randn(5, 4, 3), [5, 4, 3, 2]), lengths=[5, 4, 3, 2]), ValueError,
     "lengths must be None for a PackedSequence"),
    (lambda m: m(torch.randn(5, 1, 3)), ValueError, "at least 2 sequences when training"),
])
def test_bad_call_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(BNLSTM(3, 4, num_layers=2))


def test_layer_norm_lstm_trains_on_a_single_sequence():
    output, _ = LNLSTM(3, 4)(torch.randn(5, 1, 3))
    assert output.shape == (5, 1, 4)


@pytest.mark.parametrize("cls", [BNLSTM, LNLSTM])
def test_learns_a_small_sequence_task(cls):
    """Quick-scale training: are most of a sequence's values positive? The loss must fall by half. (A task
    on signs: with input_size=1 the layer norm of W_ih x_t keeps only the sign of x_t, see the next test.)"""
    torch.manual_seed(0)
    model = cls(1, 8, max_length=12)
    head = torch.nn.Linear(8, 1)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=0.02)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(120):
        x = torch.randn(12, 32, 1, generator=generator) * 0.5
        target = ((x > 0).sum(0) > 6).float()
        _, (h_n, _) = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(h_n[-1]), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, losses


def test_layer_norm_of_a_scalar_input_keeps_only_its_sign():
    """A property of LN-LSTM, not a bug: with input_size=1, LN(W_ih x_t) over the 4H features is
    sign(x_t) * LN(w) (up to eps), so |x_t| is lost; BN (over the batch) keeps it. The lab must know this."""
    model = LNLSTM(1, 4, dtype=torch.float64)
    x = torch.rand(6, 5, 1, dtype=torch.float64) + 0.5
    output = model(x)[0]
    compare("LNLSTM, x and 3x", model(3.0 * x)[0], output, 1e-3)  # eps only
    bn_model = BNLSTM(1, 4, dtype=torch.float64).eval()
    bn_model.layers[0].norm_ih.running_var.fill_(0.04)
    assert relative_error(bn_model(3.0 * x)[0], bn_model(x)[0]) > 0.1
