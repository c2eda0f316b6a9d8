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
import numpy as np

from ._core import ref_op, zero_safe

OPS = {}


def _unary_rules(local_derivative):
    """VJP and JVP of y = f(x) given f'(x) as a function of (out, x)."""

    def vjp(g, out, x):
        return (zero_safe(g, local_derivative(out, x)),)

    def jvp(tangents, out, x):
        (tx,) = tangents
        return zero_safe(tx, local_derivative(out, x))

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
