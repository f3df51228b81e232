"""Activations fused into the batch-norm kernels, selected by an integer code with one float parameter.

  identity  y = z                                              code 0
  relu      y = max(z, 0)                                      code 1
  leaky     y = z if z > 0 else slope * z                      code 2 (param = slope)
  elu       y = z if z > 0 else alpha * (exp(z) - 1)           code 3 (param = alpha)
  silu      y = z * sigmoid(z)                                 code 4
  gelu      y = z * Phi(z)          (exact, erf form: torch's default)          code 5
  gelu_tanh y = z/2 * (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))                 code 6

The first three are one piecewise-linear family that the kernels evaluate in the input's dtype, branch-free
(`linear_act`, `linear_grad`); the others are evaluated in float64 (`act`, `act_grad`). Derivatives at z = 0
are torch's: relu 0, leaky_relu the slope. `act_inverse` inverts identity, leaky_relu and elu from the output
(in-place activated batch norm).
"""

import math

import numba

from .config import NJIT_ELEMENTWISE, NJIT_SERIAL

ACTIVATIONS = {"identity": 0, "relu": 1, "leaky_relu": 2, "elu": 3, "silu": 4, "gelu": 5, "gelu_tanh": 6}
INVERTIBLE = ("identity", "leaky_relu", "elu")
LINEAR_MAX_CODE = 2  # codes 0..2: the piecewise-linear family

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_K = math.sqrt(2.0 / math.pi)
_DEFAULT_PARAM = {"leaky_relu": 0.01, "elu": 1.0}


def check_activation(owner: str, activation: str, activation_param: float | None,
                     invertible: bool = False) -> float:
    """Validate an activation name and parameter; returns the parameter with its default filled in."""
    allowed = INVERTIBLE if invertible else tuple(ACTIVATIONS)
    if not isinstance(activation, str) or activation not in allowed:
        why = (" (the in-place backward recovers the activation's input from its output, so the activation must "
               "be invertible; relu, silu and gelu lose information)" if invertible and activation in ACTIVATIONS
               else "")
        raise ValueError(f"{owner} got activation={activation!r}; expected one of {', '.join(allowed)}{why}")
    param = _DEFAULT_PARAM.get(activation, 0.0) if activation_param is None else activation_param
    if isinstance(param, bool) or not isinstance(param, (int, float)):
        raise TypeError(f"{owner} expected activation_param to be a float or None, got "
                        f"{type(param).__name__} {param!r}")
    param = float(param)
    if invertible and activation in ("leaky_relu", "elu") and not param > 0.0:
        what = "slope" if activation == "leaky_relu" else "alpha"
        raise ValueError(f"{owner} needs activation_param ({activation}'s {what}) > 0 to invert the activation, "
                         f"got {param}; use a positive value such as {_DEFAULT_PARAM[activation]}")
    return param


def code(activation: str) -> int:
    """The kernels' code of an activation name (names are checked by the layers)."""
    return ACTIVATIONS[activation]


@numba.njit(inline="always", **NJIT_SERIAL)
def slope(code, param):
    """The negative-side slope of the piecewise-linear family: identity 1, relu 0, leaky_relu param."""
    if code == 0:
        return 1.0
    if code == 1:
        return 0.0
    return param


@numba.njit(**NJIT_ELEMENTWISE)
def linear_act(z, code, slope, zero):
    """act(z) for codes 0..2 in z's dtype; relu(NaN) = NaN and relu(-inf) = 0, as torch."""
    if code == 0:
        return z
    if code == 1:
        return zero if z <= zero else z
    return z if z > zero else slope * z


@numba.njit(**NJIT_ELEMENTWISE)
def linear_grad(g, z, code, slope, zero):
    """g * act'(z) for codes 0..2 in g's dtype, as torch's selects: relu 0 where z <= 0 (g passes at a NaN z),
    leaky_relu g where z > 0 (slope * g at a NaN z)."""
    if code == 0:
        return g
    if code == 1:
        return zero if z <= zero else g
    return g if z > zero else slope * g


@numba.njit(inline="always", **NJIT_SERIAL)
def act(z, code, param):
    """act(z) in float64, every code."""
    if code == 0:
        return z
    if code == 1:
        return z if not z <= 0.0 else 0.0
    if code == 2:
        return z if z > 0.0 else param * z
    if code == 3:
        return z if z > 0.0 else param * (math.exp(z) - 1.0)
    if code == 4:
        return z / (1.0 + math.exp(-z))
    if code == 5:
        return 0.5 * z * (1.0 + math.erf(z * _SQRT_HALF))
    inner = _TANH_K * (z + 0.044715 * z * z * z)
    return 0.5 * z * (1.0 + math.tanh(inner))


@numba.njit(inline="always", **NJIT_SERIAL)
def act_grad(z, code, param):
    """d act / d z at z in float64 (at z = 0: relu 0, leaky slope, elu alpha, as torch's backward)."""
    if code == 0:
        return 1.0
    if code == 1:
        return 1.0 if z > 0.0 else 0.0
    if code == 2:
        return 1.0 if z > 0.0 else param
    if code == 3:  # a NaN z passes the gradient through, as torch's elu_backward (it tests z <= 0)
        return param * math.exp(z) if z <= 0.0 else 1.0
    if code == 4:
        s = 1.0 / (1.0 + math.exp(-z))
        return s * (1.0 + z * (1.0 - s))
    if code == 5:
        return 0.5 * (1.0 + math.erf(z * _SQRT_HALF)) + z * _INV_SQRT_2PI * math.exp(-0.5 * z * z)
    inner = _TANH_K * (z + 0.044715 * z * z * z)
    t = math.tanh(inner)
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _TANH_K * (1.0 + 3.0 * 0.044715 * z * z)


@numba.njit(inline="always", **NJIT_SERIAL)
def act_inverse(y, code, param):
    """(z, act'(z)) from the output y of an invertible activation (identity, leaky_relu, elu), in float64."""
    if code == 0:
        return y, 1.0
    if code == 2:
        return (y, 1.0) if y > 0.0 else (y / param, param)
    if not y <= 0.0:  # elu; a NaN y passes the gradient through, as torch's elu_backward
        return y, 1.0
    # a saturated output (y = -alpha, z below about -37 in float64) cannot be inverted: log1p(-1) = -inf would
    # make 0 * inf = NaN gradients. Clamp z to the most negative value y can resolve; act'(z) = y + alpha = 0 there
    return math.log1p(max(y / param, -1.0 + 1.1102230246251565e-16)), max(y + param, 0.0)

