"""Elementwise reference ops: unary math, broadcasting binary ops, power_scalar, clip, where, cast.

Each block is one op: forward, VJP, JVP. A VJP returns one cotangent per array input, possibly
still shaped like the broadcast output (``ref_op`` sums broadcasting away and casts to the input's
dtype). Every product of a cotangent or tangent with a local derivative goes through
``zero_safe`` so that the NaN-safety rule holds for every elementwise op, not only the ones whose
derivative can be singular (exp overflows to inf too).

NaN inputs: a formula-derived local derivative at NaN is NaN (IEEE), and the kinked ops (abs, relu,
clip) say the same explicitly; maximum/minimum route the gradient to the NaN operand, because
that is the operand the output came from.
"""
import math

import numpy as np

from ._core import grad_dtype, ref_op, zero_safe

OPS = {}


def _unary_rules(local_derivative):
    """VJP and JVP of y = f(x) given f'(x) as a function of (out, x, *params)."""

    def vjp(g, out, x, *args, **params):
        return (zero_safe(g, local_derivative(out, x, *args, **params)),)

    def jvp(tangents, out, x, *args, **params):
        (tx,) = tangents
        return zero_safe(tx, local_derivative(out, x, *args, **params))

    return vjp, jvp


def _nan_where_nan(x, local):
    """Kinked ops define their derivative piecewise; at a NaN input it is NaN, like everywhere else."""
    return np.where(np.isnan(x), np.nan, local).astype(np.result_type(x, np.float32))


# --- negative: d(-x) = -dx --------------------------------------------------------------------
def negative_forward(x):
    return np.negative(x)


def negative_vjp(g, out, x):
    return (np.negative(g),)


def negative_jvp(tangents, out, x):
    return np.negative(tangents[0])


OPS["negative"] = ref_op(negative_forward, negative_vjp, negative_jvp, arity=1)


# --- exp: the derivative is the output itself ------------------------------------------------
def exp_forward(x):
    return np.exp(x)


exp_vjp, exp_jvp = _unary_rules(lambda out, x: out)
OPS["exp"] = ref_op(exp_forward, exp_vjp, exp_jvp, arity=1)


# --- log: 1/x, +inf at 0 (NaN-safe) ----------------------------------------------------------
def log_forward(x):
    return np.log(x)


log_vjp, log_jvp = _unary_rules(lambda out, x: 1 / x)
OPS["log"] = ref_op(log_forward, log_vjp, log_jvp, arity=1)


# --- sqrt: 1/(2 sqrt(x)), +inf at 0 (NaN-safe) -----------------------------------------------
def sqrt_forward(x):
    return np.sqrt(x)


sqrt_vjp, sqrt_jvp = _unary_rules(lambda out, x: 0.5 / out)
OPS["sqrt"] = ref_op(sqrt_forward, sqrt_vjp, sqrt_jvp, arity=1)


# --- abs: sign(x), and abs'(0) = 0 (np.sign(0) == 0, as in PyTorch) ---------------------------
def abs_forward(x):
    return np.abs(x)


abs_vjp, abs_jvp = _unary_rules(lambda out, x: np.sign(x))
OPS["abs"] = ref_op(abs_forward, abs_vjp, abs_jvp, arity=1)


# --- sin / cos ----------------------------------------------------------------------------------
def sin_forward(x):
    return np.sin(x)


sin_vjp, sin_jvp = _unary_rules(lambda out, x: np.cos(x))
OPS["sin"] = ref_op(sin_forward, sin_vjp, sin_jvp, arity=1)


def cos_forward(x):
    return np.cos(x)


cos_vjp, cos_jvp = _unary_rules(lambda out, x: -np.sin(x))
OPS["cos"] = ref_op(cos_forward, cos_vjp, cos_jvp, arity=1)


# --- tanh: 1 - tanh^2, from the output -------------------------------------------------------
def tanh_forward(x):
    return np.tanh(x)


tanh_vjp, tanh_jvp = _unary_rules(lambda out, x: 1 - out * out)
OPS["tanh"] = ref_op(tanh_forward, tanh_vjp, tanh_jvp, arity=1)


# --- sigmoid: s (1 - s), from the output -----------------------------------------------------
def sigmoid_forward(x):
    # exp of a non-positive number only, so +-1000 neither overflows nor loses the small side.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


sigmoid_vjp, sigmoid_jvp = _unary_rules(lambda out, x: out * (1 - out))
OPS["sigmoid"] = ref_op(sigmoid_forward, sigmoid_vjp, sigmoid_jvp, arity=1)


# --- relu: 1 for x > 0, 0 for x <= 0 (relu'(0) = 0, as in PyTorch) ----------------------------
def relu_forward(x):
    # np.maximum propagates NaN, so relu(NaN) is NaN rather than silently 0.
    return np.maximum(x, np.zeros((), dtype=np.result_type(x, np.float32)))


relu_vjp, relu_jvp = _unary_rules(lambda out, x: _nan_where_nan(x, x > 0))
OPS["relu"] = ref_op(relu_forward, relu_vjp, relu_jvp, arity=1)


# --- log1p / expm1: accurate near 0 ---------------------------------------------------------
def log1p_forward(x):
    return np.log1p(x)


log1p_vjp, log1p_jvp = _unary_rules(lambda out, x: 1 / (1 + x))
OPS["log1p"] = ref_op(log1p_forward, log1p_vjp, log1p_jvp, arity=1)


def expm1_forward(x):
    return np.expm1(x)


# From the output, as exp does (and as PyTorch's expm1 backward does): y + 1 = exp(x).
expm1_vjp, expm1_jvp = _unary_rules(lambda out, x: out + 1)
OPS["expm1"] = ref_op(expm1_forward, expm1_vjp, expm1_jvp, arity=1)


# --- log2 / log10 / exp2: the natural log and exp up to a constant factor ----------------------
# The constants are Python floats (weak scalars), so a float32 x stays float32.
_LN2, _LN10 = math.log(2.0), math.log(10.0)


def log2_forward(x):
    return np.log2(x)


log2_vjp, log2_jvp = _unary_rules(lambda out, x: 1 / (x * _LN2))
OPS["log2"] = ref_op(log2_forward, log2_vjp, log2_jvp, arity=1)


def log10_forward(x):
    return np.log10(x)


log10_vjp, log10_jvp = _unary_rules(lambda out, x: 1 / (x * _LN10))
OPS["log10"] = ref_op(log10_forward, log10_vjp, log10_jvp, arity=1)


def exp2_forward(x):
    return np.exp2(x)


exp2_vjp, exp2_jvp = _unary_rules(lambda out, x: out * _LN2)
OPS["exp2"] = ref_op(exp2_forward, exp2_vjp, exp2_jvp, arity=1)


# --- square / reciprocal ------------------------------------------------------------------------
def square_forward(x):
    return np.square(x)


square_vjp, square_jvp = _unary_rules(lambda out, x: 2 * x)
OPS["square"] = ref_op(square_forward, square_vjp, square_jvp, arity=1)


def reciprocal_forward(x):
    # 1 / x rather than np.reciprocal, which truncates integer input (reciprocal(2) == 0).
    return 1 / x


# -1/x^2 from the output: at x = 0, y = inf and the derivative is -inf (NaN-safe).
reciprocal_vjp, reciprocal_jvp = _unary_rules(lambda out, x: -(out * out))
OPS["reciprocal"] = ref_op(reciprocal_forward, reciprocal_vjp, reciprocal_jvp, arity=1)


# --- tan and the inverse trigonometric functions -------------------------------------------------
# 1 - x^2 is written (1 - x)(1 + x): no cancellation near |x| = 1, where the derivative is largest.
def tan_forward(x):
    return np.tan(x)


tan_vjp, tan_jvp = _unary_rules(lambda out, x: 1 + out * out)
OPS["tan"] = ref_op(tan_forward, tan_vjp, tan_jvp, arity=1)


def arcsin_forward(x):
    return np.arcsin(x)


arcsin_vjp, arcsin_jvp = _unary_rules(lambda out, x: 1 / np.sqrt((1 - x) * (1 + x)))
OPS["arcsin"] = ref_op(arcsin_forward, arcsin_vjp, arcsin_jvp, arity=1)


def arccos_forward(x):
    return np.arccos(x)


arccos_vjp, arccos_jvp = _unary_rules(lambda out, x: -1 / np.sqrt((1 - x) * (1 + x)))
OPS["arccos"] = ref_op(arccos_forward, arccos_vjp, arccos_jvp, arity=1)


def arctan_forward(x):
    return np.arctan(x)


arctan_vjp, arctan_jvp = _unary_rules(lambda out, x: 1 / (1 + x * x))
OPS["arctan"] = ref_op(arctan_forward, arctan_vjp, arctan_jvp, arity=1)


# --- hyperbolic functions and their inverses ------------------------------------------------------
def sinh_forward(x):
    return np.sinh(x)


sinh_vjp, sinh_jvp = _unary_rules(lambda out, x: np.cosh(x))
OPS["sinh"] = ref_op(sinh_forward, sinh_vjp, sinh_jvp, arity=1)


def cosh_forward(x):
    return np.cosh(x)


cosh_vjp, cosh_jvp = _unary_rules(lambda out, x: np.sinh(x))
OPS["cosh"] = ref_op(cosh_forward, cosh_vjp, cosh_jvp, arity=1)


def arcsinh_forward(x):
    return np.arcsinh(x)


arcsinh_vjp, arcsinh_jvp = _unary_rules(lambda out, x: 1 / np.sqrt(x * x + 1))
OPS["arcsinh"] = ref_op(arcsinh_forward, arcsinh_vjp, arcsinh_jvp, arity=1)


# Domain x >= 1: +inf at x = 1 (NaN-safe), NaN below (sqrt of a negative number).
def arccosh_forward(x):
    return np.arccosh(x)


arccosh_vjp, arccosh_jvp = _unary_rules(lambda out, x: 1 / np.sqrt((x - 1) * (x + 1)))
OPS["arccosh"] = ref_op(arccosh_forward, arccosh_vjp, arccosh_jvp, arity=1)


def arctanh_forward(x):
    return np.arctanh(x)


arctanh_vjp, arctanh_jvp = _unary_rules(lambda out, x: 1 / ((1 - x) * (1 + x)))
OPS["arctanh"] = ref_op(arctanh_forward, arctanh_vjp, arctanh_jvp, arity=1)


# --- erf: 2/sqrt(pi) exp(-x^2) --------------------------------------------------------------------
# NumPy has no erf: the standard library's, elementwise in float64 (math.erf is correctly rounded to
# within an ulp or so), then cast back so that a float32 x gives a float32 result. erfc likewise,
# for gelu's lower tail.
_math_erf = np.vectorize(math.erf, otypes=[np.float64])
_math_erfc = np.vectorize(math.erfc, otypes=[np.float64])
_TWO_OVER_SQRT_PI = 2 / math.sqrt(math.pi)


def _float_dtype(x):
    """The dtype a transcendental op returns for x: x's own float dtype, float64 for integers."""
    return np.result_type(x, np.float32)


def _erf(x):
    return _math_erf(x).astype(_float_dtype(x))


def _erfc(x):
    return _math_erfc(x).astype(_float_dtype(x))


def erf_forward(x):
    return _erf(x)


erf_vjp, erf_jvp = _unary_rules(lambda out, x: _TWO_OVER_SQRT_PI * np.exp(-(x * x)))
OPS["erf"] = ref_op(erf_forward, erf_vjp, erf_jvp, arity=1)


# --- erfc: 1 - erf(x), keeping its relative accuracy where erf(x) is near 1 -----------------------
def erfc_forward(x):
    return _erfc(x)


erfc_vjp, erfc_jvp = _unary_rules(lambda out, x: -_TWO_OVER_SQRT_PI * np.exp(-(x * x)))
OPS["erfc"] = ref_op(erfc_forward, erfc_vjp, erfc_jvp, arity=1)


# --- softplus: log(1 + exp(x)), stably; the derivative is sigmoid(x) ------------------------------
def softplus_forward(x):
    # exp of a non-positive number only: softplus(1000) = 1000 and softplus(-1000) = 0, both finite.
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


softplus_vjp, softplus_jvp = _unary_rules(lambda out, x: sigmoid_forward(x))
OPS["softplus"] = ref_op(softplus_forward, softplus_vjp, softplus_jvp, arity=1)


# --- gelu(x, approximate="none" | "tanh") ---------------------------------------------------------
# none: y = x Phi(x), y' = Phi(x) + x phi(x), with the standard normal cdf Phi and density phi.
# Phi is taken as 0.5 erfc(-x/sqrt 2), which equals 0.5 (1 + erf(x/sqrt 2)) but keeps its relative
# accuracy in the lower tail (1 + erf cancels to 0 below x ~ -8).
# tanh: y = 0.5 x (1 + t), t = tanh(sqrt(2/pi) (x + 0.044715 x^3)), and
#       y' = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2), computed through
#       s = sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) = 0.5 (1 + t).
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


def _gelu_check(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def _normal_cdf(x):
    return 0.5 * _erfc(-x * _SQRT_HALF)


def _gelu_tanh_sigmoid(x):
    return sigmoid_forward(2 * _SQRT_2_OVER_PI * (x + _GELU_CUBIC * (x * x * x)))


def gelu_forward(x, approximate="none"):
    _gelu_check(approximate)
    if approximate == "none":
        return x * _normal_cdf(x)
    # 0.5 (1 + tanh u) = sigmoid(2u), which does not cancel for negative x
    return x * _gelu_tanh_sigmoid(x)


def _gelu_local(out, x, approximate="none"):
    _gelu_check(approximate)
    if approximate == "none":
        return _normal_cdf(x) + x * (_INV_SQRT_2PI * np.exp(-0.5 * (x * x)))
    # with s = sigmoid(2u): 0.5 (1 + t) = s and 0.5 (1 - t^2) = 2 s (1 - s)
    s = _gelu_tanh_sigmoid(x)
    return s + x * s * (1 - s) * (2 * _SQRT_2_OVER_PI) * (1 + 3 * _GELU_CUBIC * (x * x))


gelu_vjp, gelu_jvp = _unary_rules(_gelu_local)
OPS["gelu"] = ref_op(gelu_forward, gelu_vjp, gelu_jvp, arity=1)


# --- silu: x sigmoid(x); the derivative is s (1 + x (1 - s)) ------------------------------------
def silu_forward(x):
    return x * sigmoid_forward(x)


def _silu_local(out, x):
    s = sigmoid_forward(x)
    return s * (1 + x * (1 - s))


silu_vjp, silu_jvp = _unary_rules(_silu_local)
OPS["silu"] = ref_op(silu_forward, silu_vjp, silu_jvp, arity=1)


# --- leaky_relu(x, negative_slope=0.01): slope 1 for x > 0, negative_slope for x <= 0 ------------
# At 0 the derivative is negative_slope (PyTorch's rule). Parameters become Python floats (weak
# scalars) so that a float32 x stays float32.
def leaky_relu_forward(x, negative_slope=0.01):
    return np.where(x > 0, x, float(negative_slope) * x)


def _leaky_relu_local(out, x, negative_slope=0.01):
    return _nan_where_nan(x, np.where(x > 0, 1.0, float(negative_slope)))


leaky_relu_vjp, leaky_relu_jvp = _unary_rules(_leaky_relu_local)
OPS["leaky_relu"] = ref_op(leaky_relu_forward, leaky_relu_vjp, leaky_relu_jvp, arity=1)


# --- elu(x, alpha=1.0): x for x > 0, alpha (exp(x) - 1) for x <= 0 -------------------------------
def elu_forward(x, alpha=1.0):
    return np.where(x > 0, x, float(alpha) * np.expm1(x))


def _elu_local(out, x, alpha=1.0):
    return _nan_where_nan(x, np.where(x > 0, 1.0, float(alpha) * np.exp(x)))


elu_vjp, elu_jvp = _unary_rules(_elu_local)
OPS["elu"] = ref_op(elu_forward, elu_vjp, elu_jvp, arity=1)


# --- hardtanh(x, min_val=-1.0, max_val=1.0): clip with PyTorch's boundary rule -------------------
# Unlike clip (whose gradient passes on the closed interval), hardtanh's derivative is 1 only
# strictly inside (min_val, max_val) and 0 at the bounds, as torch.nn.functional.hardtanh.
def hardtanh_forward(x, min_val=-1.0, max_val=1.0):
    return np.clip(x, float(min_val), float(max_val))


def _hardtanh_local(out, x, min_val=-1.0, max_val=1.0):
    return _nan_where_nan(x, (x > float(min_val)) & (x < float(max_val)))


hardtanh_vjp, hardtanh_jvp = _unary_rules(_hardtanh_local)
OPS["hardtanh"] = ref_op(hardtanh_forward, hardtanh_vjp, hardtanh_jvp, arity=1)


# --- sign, floor, ceil, round, trunc: piecewise constant, gradient exactly zero ------------------
# The gradient is exact zeros of the right shape and dtype, whatever the cotangent or tangent holds
# (inf and NaN included) and whatever x is (NaN included): PyTorch's zeros_like(grad), not g * 0.
def _zero_gradient_rules():
    def vjp(g, out, *inputs):
        return tuple(np.zeros(x.shape, grad_dtype(x)) for x in inputs)

    def jvp(tangents, out, *inputs):
        return np.zeros(out.shape, out.dtype)

    return vjp, jvp


_zero_vjp, _zero_jvp = _zero_gradient_rules()

OPS["sign"] = ref_op(np.sign, _zero_vjp, _zero_jvp, arity=1)    # sign(NaN) = NaN, sign(0) = 0
OPS["floor"] = ref_op(np.floor, _zero_vjp, _zero_jvp, arity=1)
OPS["ceil"] = ref_op(np.ceil, _zero_vjp, _zero_jvp, arity=1)
OPS["round"] = ref_op(np.round, _zero_vjp, _zero_jvp, arity=1)  # halves to even: 2.5 -> 2
OPS["trunc"] = ref_op(np.trunc, _zero_vjp, _zero_jvp, arity=1)


# --- add: the gradient distributor -------------------------------------------------------------
def add_forward(a, b):
    return np.add(a, b)


def add_vjp(g, out, a, b):
    return g, g


def add_jvp(tangents, out, a, b):
    ta, tb = tangents
    return ta + tb


OPS["add"] = ref_op(add_forward, add_vjp, add_jvp, arity=2)


# --- subtract ---------------------------------------------------------------------------------
def subtract_forward(a, b):
    return np.subtract(a, b)


def subtract_vjp(g, out, a, b):
    return g, np.negative(g)


def subtract_jvp(tangents, out, a, b):
    ta, tb = tangents
    return ta - tb


OPS["subtract"] = ref_op(subtract_forward, subtract_vjp, subtract_jvp, arity=2)


# --- multiply: the gradient swapper ------------------------------------------------------------
def multiply_forward(a, b):
    return np.multiply(a, b)


def multiply_vjp(g, out, a, b):
    return zero_safe(g, b), zero_safe(g, a)


def multiply_jvp(tangents, out, a, b):
    ta, tb = tangents
    return zero_safe(ta, b) + zero_safe(tb, a)


OPS["multiply"] = ref_op(multiply_forward, multiply_vjp, multiply_jvp, arity=2)


# --- divide: d(a/b) = da/b - (a/b) db/b; singular at b = 0 (NaN-safe) --------------------------
def divide_forward(a, b):
    return np.divide(a, b)


def divide_vjp(g, out, a, b):
    return zero_safe(g, 1 / b), zero_safe(g, -out / b)


def divide_jvp(tangents, out, a, b):
    ta, tb = tangents
    return zero_safe(ta, 1 / b) + zero_safe(tb, -out / b)


OPS["divide"] = ref_op(divide_forward, divide_vjp, divide_jvp, arity=2)


# --- power (tensor ** tensor) --------------------------------------------------------------------
# d/dx = y x^(y-1), taken as 0 where y == 0 (the constant x^0 = 1 has no slope, even at x = 0
# where the formula gives 0 * inf). d/dy = x^y log(x), taken as 0 where x == 0 (PyTorch zeroes it
# there; for y > 0, 0^y is 0 on a whole neighbourhood of y, so 0 is the true derivative).
def power_forward(x, y):
    return np.power(x, y)


def _power_local_x(out, x, y):
    return np.where(y == 0, 0, y * np.power(x, y - 1))


def _power_local_y(out, x, y):
    return np.where(x == 0, 0, out * np.log(x))


def power_vjp(g, out, x, y):
    return zero_safe(g, _power_local_x(out, x, y)), zero_safe(g, _power_local_y(out, x, y))


def power_jvp(tangents, out, x, y):
    tx, ty = tangents
    return zero_safe(tx, _power_local_x(out, x, y)) + zero_safe(ty, _power_local_y(out, x, y))


OPS["power"] = ref_op(power_forward, power_vjp, power_jvp, arity=2)


# --- power_scalar (tensor ** python float): d/dx = p x^(p-1), and 0 when p == 0 -------------------
# p is turned into a Python float so that NumPy treats it as a weak scalar: float32 x stays float32
# even when p arrives as an np.float64.
def power_scalar_forward(x, p):
    return np.power(x, float(p))


def _power_scalar_local(x, p):
    p = float(p)
    if p == 0:
        return np.zeros_like(x)
    return p * np.power(x, p - 1)


def power_scalar_vjp(g, out, x, p):
    return (zero_safe(g, _power_scalar_local(x, p)),)


def power_scalar_jvp(tangents, out, x, p):
    return zero_safe(tangents[0], _power_scalar_local(x, p))


OPS["power_scalar"] = ref_op(power_scalar_forward, power_scalar_vjp, power_scalar_jvp, arity=1)


# --- maximum / minimum: the gradient router ------------------------------------------------------
# The winner gets the whole cotangent; on a tie (a == b) each side gets half, as in PyTorch's
# amax, JAX and HIPS autograd. A NaN operand counts as the winner (np.maximum returns it); if both
# are NaN both get the full cotangent. The JVP is the adjoint of that: the tied tangents average.
# Selection (np.select) rather than multiplication by 0/0.5/1 weights keeps the losing side at
# exactly 0 even for an infinite cotangent, which is what a branchy C kernel naturally does.
def _route(g, a_wins, b_wins, tie):
    half = 0.5 * g
    zero = np.zeros((), dtype=g.dtype)
    return (np.select([a_wins, tie], [g, half], zero),
            np.select([b_wins, tie], [g, half], zero))


def _routed_tangent(ta, tb, a_wins, b_wins, tie):
    zero = np.zeros((), dtype=np.result_type(ta, tb))
    return np.select([a_wins & b_wins, a_wins, b_wins, tie],
                     [ta + tb, ta, tb, 0.5 * (ta + tb)], zero)


def _maximum_winners(a, b):
    return (a > b) | np.isnan(a), (b > a) | np.isnan(b), a == b


def _minimum_winners(a, b):
    return (a < b) | np.isnan(a), (b < a) | np.isnan(b), a == b


def maximum_forward(a, b):
    return np.maximum(a, b)


def maximum_vjp(g, out, a, b):
    return _route(np.broadcast_to(g, out.shape), *_maximum_winners(a, b))


def maximum_jvp(tangents, out, a, b):
    ta, tb = tangents
    return _routed_tangent(ta, tb, *_maximum_winners(a, b))


OPS["maximum"] = ref_op(maximum_forward, maximum_vjp, maximum_jvp, arity=2)


def minimum_forward(a, b):
    return np.minimum(a, b)


def minimum_vjp(g, out, a, b):
    return _route(np.broadcast_to(g, out.shape), *_minimum_winners(a, b))


def minimum_jvp(tangents, out, a, b):
    ta, tb = tangents
    return _routed_tangent(ta, tb, *_minimum_winners(a, b))


OPS["minimum"] = ref_op(minimum_forward, minimum_vjp, minimum_jvp, arity=2)


# --- logaddexp: log(exp(a) + exp(b)); d/da = sigmoid(a - b), d/db = sigmoid(b - a) -------------
# The stable sigmoid: finite gradients at +-1000. Where a = b = +-inf, a - b is NaN and so are
# both derivatives (IEEE; NaN-safe for a zero cotangent).
def logaddexp_forward(a, b):
    return np.logaddexp(a, b)


def _logaddexp_locals(a, b):
    return sigmoid_forward(a - b), sigmoid_forward(b - a)


def logaddexp_vjp(g, out, a, b):
    da, db = _logaddexp_locals(a, b)
    return zero_safe(g, da), zero_safe(g, db)


def logaddexp_jvp(tangents, out, a, b):
    ta, tb = tangents
    da, db = _logaddexp_locals(a, b)
    return zero_safe(ta, da) + zero_safe(tb, db)


OPS["logaddexp"] = ref_op(logaddexp_forward, logaddexp_vjp, logaddexp_jvp, arity=2)


# --- arctan2(a, b): the angle of the point (x=b, y=a) -------------------------------------------
# d/da = b / (a^2 + b^2), d/db = -a / (a^2 + b^2): 0/0 = NaN at the origin (NaN-safe).
def arctan2_forward(a, b):
    return np.arctan2(a, b)


def _arctan2_locals(a, b):
    r2 = a * a + b * b
    return b / r2, -a / r2


def arctan2_vjp(g, out, a, b):
    da, db = _arctan2_locals(a, b)
    return zero_safe(g, da), zero_safe(g, db)


def arctan2_jvp(tangents, out, a, b):
    ta, tb = tangents
    da, db = _arctan2_locals(a, b)
    return zero_safe(ta, da) + zero_safe(tb, db)


OPS["arctan2"] = ref_op(arctan2_forward, arctan2_vjp, arctan2_jvp, arity=2)


# --- hypot(a, b) = sqrt(a^2 + b^2); d/da = a / y, d/db = b / y (0/0 = NaN at the origin) --------
def hypot_forward(a, b):
    return np.hypot(a, b)


def hypot_vjp(g, out, a, b):
    return zero_safe(g, a / out), zero_safe(g, b / out)


def hypot_jvp(tangents, out, a, b):
    ta, tb = tangents
    return zero_safe(ta, a / out) + zero_safe(tb, b / out)


OPS["hypot"] = ref_op(hypot_forward, hypot_vjp, hypot_jvp, arity=2)


# --- floor_divide: piecewise constant in both inputs, gradient exactly zero (as floor) -----------
OPS["floor_divide"] = ref_op(np.floor_divide, _zero_vjp, _zero_jvp, arity=2)


# --- mod(a, b) = a - b floor(a / b), the sign of the divisor (Python's %) ------------------------
# d/da = 1 (the cotangent passes, as in add), d/db = -floor_divide(a, b).
def mod_forward(a, b):
    return np.mod(a, b)


def mod_vjp(g, out, a, b):
    return g, zero_safe(g, -np.floor_divide(a, b))


def mod_jvp(tangents, out, a, b):
    ta, tb = tangents
    return ta + zero_safe(tb, -np.floor_divide(a, b))


OPS["mod"] = ref_op(mod_forward, mod_vjp, mod_jvp, arity=2)


# --- clip(x, lo, hi) ------------------------------------------------------------------------------
# Boundary rule: the gradient is 1 on the closed interval lo <= x <= hi, boundaries included (as
# PyTorch's clamp passes the gradient at the boundaries), and 0 strictly outside. lo or hi may be
# None (one-sided, as np.clip). They are parameters, not differentiable inputs.
def _bound(v):
    # Scalar bounds become Python floats (weak scalars), so they do not promote a float32 x.
    if v is None or np.ndim(v) > 0:
        return v
    return float(v)


def clip_forward(x, lo, hi):
    return np.clip(x, _bound(lo), _bound(hi))


def _clip_local(x, lo, hi):
    lo, hi = _bound(lo), _bound(hi)
    inside = np.ones(x.shape, dtype=bool)
    if lo is not None:
        inside &= x >= lo
    if hi is not None:
        inside &= x <= hi
    return _nan_where_nan(x, inside)


def clip_vjp(g, out, x, lo, hi):
    return (zero_safe(g, _clip_local(x, lo, hi)),)


def clip_jvp(tangents, out, x, lo, hi):
    return zero_safe(tangents[0], _clip_local(x, lo, hi))


OPS["clip"] = ref_op(clip_forward, clip_vjp, clip_jvp, arity=1)


# --- where(a, b, cond=...): cond is a bool array parameter; a and b are differentiable -----------
def where_forward(a, b, *, cond):
    return np.where(cond, a, b)


def where_vjp(g, out, a, b, *, cond):
    # Selection, not g * cond: the unselected side gets exactly 0 whatever g holds.
    zero = np.zeros((), dtype=g.dtype)
    return np.where(cond, g, zero), np.where(cond, zero, g)


def where_jvp(tangents, out, a, b, *, cond):
    ta, tb = tangents
    return np.where(cond, ta, tb)


OPS["where"] = ref_op(where_forward, where_vjp, where_jvp, arity=2)


# --- cast(x, dtype): the gradient comes back in x's dtype (ref_op casts it) -----------------------
def cast_forward(x, dtype):
    return x.astype(dtype)


def cast_vjp(g, out, x, dtype):
    return (g,)


def cast_jvp(tangents, out, x, dtype):
    return tangents[0].astype(dtype)


OPS["cast"] = ref_op(cast_forward, cast_vjp, cast_jvp, arity=1)


# --- mul_zero_safe: a * b, exactly 0 where a is 0 (the NaN-safety rule's product) ----------------
# The differentiable rules record a cotangent or tangent times a derivative with it, so that a
# recorded gradient keeps the rule: a zero cotangent contributes 0 even where the derivative is inf.
def mul_zero_safe_forward(a, b):
    return zero_safe(a, b)


def mul_zero_safe_vjp(g, out, a, b):
    return zero_safe(g, b), zero_safe(g, a)


def mul_zero_safe_jvp(tangents, out, a, b):
    ta, tb = tangents
    return zero_safe(ta, b) + zero_safe(tb, a)


OPS["mul_zero_safe"] = ref_op(mul_zero_safe_forward, mul_zero_safe_vjp, mul_zero_safe_jvp, arity=2)
