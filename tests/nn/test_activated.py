"""Fused BN + activation, BN + add + activation, and in-place activated BN against the unfused composition."""

from __future__ import annotations

import pytest
import torch

import batchnorm.nn as bnn
from batchnorm import functional
from helpers.cases import relative_error, random_affine_

ACTIVATIONS = [("identity", None), ("relu", None), ("leaky_relu", 0.2), ("elu", 0.7), ("silu", None),
               ("gelu", None), ("gelu_tanh", None)]


def torch_activation(activation, param):
    """The unfused oracle: torch's own activation module."""
    defaults = {"leaky_relu": 0.01, "elu": 1.0}
    param = defaults.get(activation) if param is None else param
    return {"identity": torch.nn.Identity(), "relu": torch.nn.ReLU(), "leaky_relu": torch.nn.LeakyReLU(param),
            "elu": torch.nn.ELU(param), "silu": torch.nn.SiLU(), "gelu": torch.nn.GELU(),
            "gelu_tanh": torch.nn.GELU(approximate="tanh")}[activation]

LAYOUTS = {
    "NC": (bnn.BatchNorm1d, (12, 5)),
    "NCL": (bnn.BatchNorm1d, (4, 5, 7)),
    "NCHW": (bnn.BatchNorm2d, (3, 5, 4, 6)),
    "NHWC": (bnn.BatchNorm2d, (3, 5, 4, 6)),
    "NCDHW": (bnn.BatchNorm3d, (2, 5, 3, 4, 3)),
}
FUSED = {bnn.BatchNorm1d: (bnn.BatchNormAct1d, bnn.BatchNormAddAct1d, bnn.InPlaceABN1d),
         bnn.BatchNorm2d: (bnn.BatchNormAct2d, bnn.BatchNormAddAct2d, bnn.InPlaceABN2d),
         bnn.BatchNorm3d: (bnn.BatchNormAct3d, bnn.BatchNormAddAct3d, bnn.InPlaceABN3d)}


def _input(layout, generator, dtype=torch.float64):
    _, shape = LAYOUTS[layout]
    x = torch.randn(shape, generator=generator, dtype=dtype) * 2 + 0.5
    if layout == "NHWC":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _layers(layout, kind, activation, param, generator, **kwargs):
    """(fused layer, our plain BatchNorm with the same state) in float64."""
    plain_cls, _ = LAYOUTS[layout]
    fused_cls = FUSED[plain_cls][kind]
    channels = LAYOUTS[layout][1][1]
    fused = fused_cls(channels, dtype=torch.float64, activation=activation, activation_param=param, **kwargs)
    random_affine_(fused, generator)
    plain = plain_cls(channels, dtype=torch.float64, **kwargs)
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def _compare_step(fused, plain, activation, x, residual, generator, inplace=False):
    act = torch_activation(fused.activation, fused.activation_param)
    """Forward+backward through the fused layer and the unfused composition; compare everything."""
    leaf_f, leaf_p = x.clone().requires_grad_(), x.clone().requires_grad_()
    inputs_f = [leaf_f * 1.0 if inplace else leaf_f]  # in-place layers need a non-leaf input
    inputs_p = [leaf_p]
    if residual is not None:
        res_f, res_p = residual.clone().requires_grad_(), residual.clone().requires_grad_()
        inputs_f.append(res_f)
    y_f = fused(*inputs_f)
    z_p = plain(leaf_p)
    y_p = act(z_p + res_p if residual is not None else z_p)
    grad = torch.randn(y_p.shape, generator=generator, dtype=torch.float64)
    y_f.backward(grad)
    y_p.backward(grad)
    pairs = [("output", y_f, y_p), ("input grad", leaf_f.grad, leaf_p.grad)]
    if residual is not None:
        pairs.append(("residual grad", res_f.grad, res_p.grad))
    for name in ("weight", "bias"):
        if getattr(plain, name) is not None:
            pairs.append((f"{name} grad", getattr(fused, name).grad, getattr(plain, name).grad))
            getattr(fused, name).grad = getattr(plain, name).grad = None
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        if getattr(plain, name) is not None:
            pairs.append((name, getattr(fused, name), getattr(plain, name)))
    return y_f, pairs


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("activation, param", ACTIVATIONS, ids=[a for a, _ in ACTIVATIONS])
def test_batchnorm_act_matches_bn_then_torch_activation(activation, param, layout):
    generator = torch.Generator().manual_seed(1)
    fused, plain = _layers(layout, 0, activation, param, generator)
    for mode in ("train", "train", "eval"):
        fused.train(mode == "train")
        plain.train(mode == "train")
        y, pairs = _compare_step(fused, plain, activation, _input(layout, generator), None, generator)
        if layout == "NHWC":
            assert y.is_contiguous(memory_format=torch.channels_last)
        for name, a, b in pairs:
            assert relative_error(a, b) < 1e-12, f"{mode}: {name}"


@pytest.mark.parametrize("layout", ["NC", "NCHW", "NHWC", "NCDHW"])
@pytest.mark.parametrize("activation, param", [("relu", None), ("leaky_relu", 0.2), ("silu", None)],
                         ids=["relu", "leaky_relu", "silu"])
def test_batchnorm_add_act_matches_bn_add_then_activation(activation, param, layout):
    generator = torch.Generator().manual_seed(2)
    fused, plain = _layers(layout, 1, activation, param, generator)
    for mode in ("train", "eval"):
        fused.train(mode == "train")
        plain.train(mode == "train")
        x = _input(layout, generator)
        residual = _input(layout, generator)
        _, pairs = _compare_step(fused, plain, activation, x, residual, generator)
        for name, a, b in pairs:
            assert relative_error(a, b) < 1e-12, f"{mode}: {name}"


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("activation, param", [("leaky_relu", 0.01), ("leaky_relu", 0.3), ("elu", 1.0),
                                               ("identity", None)], ids=["leaky-0.01", "leaky-0.3", "elu", "identity"])
def test_inplace_abn_gradients_match_the_standard_computation(activation, param, layout):
    generator = torch.Generator().manual_seed(3)
    fused, plain = _layers(layout, 2, activation, param, generator)
    for mode in ("train", "train", "eval"):
        fused.train(mode == "train")
        plain.train(mode == "train")
        _, pairs = _compare_step(fused, plain, activation, _input(layout, generator), None, generator, inplace=True)
        for name, a, b in pairs:
            assert relative_error(a, b) < 1e-10, f"{mode}: {name}"


def test_inplace_abn_overwrites_its_input_and_saves_only_the_output():
    generator = torch.Generator().manual_seed(4)
    layer = bnn.InPlaceABN2d(4, dtype=torch.float64)
    leaf = torch.randn(3, 4, 5, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    x = leaf * 2.0
    y = layer(x)
    assert y.data_ptr() == x.data_ptr() and y is x
    expected = torch.nn.functional.leaky_relu(torch.nn.functional.batch_norm(leaf.detach() * 2.0, None, None,
                                                                             training=True), 0.01)
    assert relative_error(y, expected) < 1e-12
    saved = [t for t in y.grad_fn.saved_tensors] if hasattr(y.grad_fn, "saved_tensors") else []
    assert len(saved) == 1 and saved[0].data_ptr() == x.data_ptr()


def test_inplace_abn_with_gamma_near_zero_is_exactly_batchnorm_act_with_the_clamped_gamma():
    generator = torch.Generator().manual_seed(5)
    layer = bnn.InPlaceABN1d(3, dtype=torch.float64, activation="elu")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.0, -1e-9, 0.5], dtype=torch.float64))
    reference = bnn.BatchNormAct1d(3, dtype=torch.float64, activation="elu")
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([1e-5, -1e-5, 0.5], dtype=torch.float64))
    x = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    leaf = x.clone().requires_grad_()
    y = layer(leaf * 1.0)
    leaf_ref = x.clone().requires_grad_()
    y_ref = reference(leaf_ref)
    assert relative_error(y, y_ref) < 1e-12
    grad = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    y.backward(grad)
    y_ref.backward(grad)
    assert torch.isfinite(leaf.grad).all() and torch.isfinite(layer.weight.grad).all()
    assert relative_error(leaf.grad, leaf_ref.grad) < 1e-8
    assert relative_error(layer.weight.grad, reference.weight.grad) < 1e-8  # straight through the clamp


def test_state_dicts_of_plain_batchnorm_load_unchanged():
    theirs = torch.nn.BatchNorm2d(6)
    random_affine_(theirs, torch.Generator().manual_seed(6))
    for cls in (bnn.BatchNormAct2d, bnn.BatchNormAddAct2d, bnn.InPlaceABN2d):
        layer = cls(6)
        layer.load_state_dict(theirs.state_dict())
        assert layer.state_dict().keys() == theirs.state_dict().keys()
        assert isinstance(layer, torch.nn.BatchNorm2d) and isinstance(layer, bnn.BatchNorm2d)
        back = torch.nn.BatchNorm2d(6)
        back.load_state_dict(layer.state_dict())
        assert torch.equal(back.running_var, theirs.running_var)


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["BatchNormAct", "BatchNormAddAct", "InPlaceABN"])
def test_gradcheck(kind):
    generator = torch.Generator().manual_seed(7)
    activation = "elu" if kind == 2 else "silu"
    layer = FUSED[bnn.BatchNorm2d][kind](3, dtype=torch.float64, activation=activation)
    random_affine_(layer, generator)
    x = torch.randn(2, 3, 3, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(2, 3, 3, 2, generator=generator, dtype=torch.float64, requires_grad=True)

    def fn(x, residual):
        if kind == 1:
            return layer(x, residual)
        return layer(x * 1.0) + residual

    assert torch.autograd.gradcheck(fn, (x, residual))


def test_float32_matches_the_composition():
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(4, 6, 5, 5, generator=generator) * 3 + 1
    fused = bnn.BatchNormAct2d(6, activation="gelu")
    y = fused(x)
    expected = torch.nn.functional.gelu(torch.nn.functional.batch_norm(x.double(), None, None, training=True))
    assert relative_error(y, expected) < 1e-5


# ----------------------------------------------------------------------------------------------- errors
def test_unknown_activation_and_bad_parameter_are_clear_errors():
    with pytest.raises(ValueError, match=r"BatchNormAct2d got activation='tanh'; expected one of identity, relu, "
                                         r"leaky_relu, elu, silu, gelu, gelu_tanh"):
        bnn.BatchNormAct2d(4, activation="tanh")
    with pytest.raises(TypeError, match=r"BatchNormAct1d expected activation_param to be a float or None, got str"):
        bnn.BatchNormAct1d(4, activation="leaky_relu", activation_param="0.1")
    with pytest.raises(ValueError, match=r"InPlaceABN2d got activation='relu'; expected one of identity, "
                                         r"leaky_relu, elu \(the in-place backward recovers .* must be invertible"):
        bnn.InPlaceABN2d(4, activation="relu")
    with pytest.raises(ValueError, match=r"InPlaceABN2d needs activation_param \(leaky_relu's slope\) > 0 .* got "
                                         r"0.0"):
        bnn.InPlaceABN2d(4, activation="leaky_relu", activation_param=0.0)
    with pytest.raises(ValueError, match=r"InPlaceABN1d expected min_abs_weight > 0"):
        bnn.InPlaceABN1d(4, min_abs_weight=0.0)


def test_inplace_abn_refuses_inputs_it_must_not_overwrite():
    layer = bnn.InPlaceABN2d(3)
    leaf = torch.randn(2, 3, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"InPlaceABN2d overwrites its input, but the input is a leaf tensor that "
                                         r"requires grad"):
        layer(leaf)
    with pytest.raises(ValueError, match=r"SigmoidBackward0 \(the operation that produced it\) saved it"):
        layer(leaf.sigmoid())
    with pytest.raises(ValueError, match=r"needs it dense \(contiguous or channels_last\)"):
        layer((leaf * 1.0)[:, :, ::2])
    assert layer.num_batches_tracked.item() == 0  # refused before anything changed
    with torch.no_grad():  # inference on a plain tensor is fine
        x = torch.randn(2, 3, 4, 4)
        assert layer(x) is x


def test_add_act_residual_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expected residual of the input's shape \(2, 3, 4, 4\), got \(2, 3, 4, 5\)"):
        bnn.BatchNormAddAct2d(3)(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5))


@pytest.mark.parametrize("layout", ["NC", "NCHW", "NHWC"])
@pytest.mark.parametrize("kind", [0, 1, 2], ids=["BatchNormAct", "BatchNormAddAct", "InPlaceABN"])
def test_float32_with_a_large_offset_keeps_its_digits(kind, layout):
    """x ~ 1e4 + N(0, 1) in float32: x - mean must not lose the digits that the normalized output needs."""
    generator = torch.Generator().manual_seed(9)
    x = _input(layout, generator, torch.float32) + 1e4
    residual = torch.randn(x.shape, generator=generator)
    layer = FUSED[LAYOUTS[layout][0]][kind](x.shape[1], activation="leaky_relu", activation_param=0.1)
    expected = torch.nn.functional.batch_norm(x.double(), None, None, training=True)
    if kind == 1:
        expected = expected + residual.double()
    expected = torch.nn.functional.leaky_relu(expected, 0.1)
    with torch.no_grad():
        y = layer(x, residual) if kind == 1 else layer(x.clone())
    assert (y.double() - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("activation, param", [("relu", None), ("leaky_relu", 0.2)])
@pytest.mark.parametrize("size", ["small", "parallel"])
def test_nonfinite_eval_input_as_torch(layout, activation, param, size):
    """Eval with NaN, +inf and -inf inputs: relu(-inf) = 0 (not 0 * -inf = NaN), leaky_relu(-inf) = -inf,
    NaN stays NaN; outputs and input gradients equal torch's BN followed by its activation."""
    plain_cls, shape = LAYOUTS[layout]
    if size == "parallel":  # enough elements for the parallel kernels
        shape = (shape[0] * 64,) + shape[1:] if len(shape) == 2 else (shape[0] * 16,) + shape[1:]
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=generator)
    x.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x.view(-1)[-1] = -float("inf")
    if layout == "NHWC":
        x = x.contiguous(memory_format=torch.channels_last)
    channels = shape[1]
    fused = FUSED[plain_cls][0](channels, activation=activation, activation_param=param).eval()
    random_affine_(fused, generator)
    reference = torch.nn.Sequential(getattr(torch.nn, plain_cls.__name__)(channels),
                                    torch_activation(activation, param)).eval()
    reference[0].load_state_dict(fused.state_dict())
    dy = torch.randn(x.shape, generator=generator)
    ours_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = fused(ours_x), reference(theirs_x)
    ours.backward(dy)
    theirs.backward(dy)
    assert torch.equal(ours.isnan(), theirs.isnan()) and torch.equal(ours.isinf(), theirs.isinf())
    finite = theirs.isfinite()
    torch.testing.assert_close(ours[finite], theirs[finite], rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[theirs.isinf()], theirs[theirs.isinf()])
    torch.testing.assert_close(ours_x.grad, theirs_x.grad, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("call", [
    lambda x: functional.batch_norm(x, None, None, training=True, activation="tanh"),
    lambda x: functional.batch_norm_add_act(x, x.clone(), None, None, training=True, activation="tanh"),
    lambda x: functional.inplace_abn(x * 1.0, None, None, training=True, activation="relu"),
], ids=["batch_norm", "batch_norm_add_act", "inplace_abn"])
def test_functional_forms_reject_unknown_or_non_invertible_activation(call):
    """The functional forms check the activation like the layers: a ValueError naming it and the choices."""
    with pytest.raises(ValueError, match=r"activation='(tanh|relu)'; expected one of .*leaky_relu"):
        call(torch.randn(6, 3))


def test_functional_activation_param_defaults_are_torchs():
    """activation_param=None: leaky_relu's slope 0.01 and elu's alpha 1.0, as torch's functions."""
    x = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    z = torch.nn.functional.batch_norm(x, None, None, training=True)
    for activation, expected in (("leaky_relu", torch.nn.functional.leaky_relu(z)),
                                 ("elu", torch.nn.functional.elu(z))):
        ours = functional.batch_norm(x, None, None, training=True, activation=activation)
        assert (ours - expected).abs().max() <= 1e-12
