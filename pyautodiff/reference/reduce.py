"""Reductions and the normalisations built on them: sum, mean, max, min, logsumexp, softmax,
log_softmax.

Reductions follow NumPy: ``axis=None`` reduces every axis, an int or a tuple picks axes (negative
ones count from the end), ``axis=()`` reduces nothing. A reduction's VJP first gives the cotangent
its reduced axes back (``expand_reduced``) and then broadcasts: sum and broadcast are duals.
"""
import numpy as np

from ._core import expand_reduced, normalize_axes, ref_op, zero_safe

OPS = {}


def _reduced_count(x, axes):
    return int(np.prod([x.shape[a] for a in axes], dtype=np.int64))


# --- sum: the gradient distributor, over the reduced axes ----------------------------------------
def sum_forward(x, axis=None, keepdims=False):
    return np.sum(x, axis=normalize_axes(axis, x.ndim), keepdims=keepdims)


def sum_vjp(g, out, x, axis=None, keepdims=False):
    axes = normalize_axes(axis, x.ndim)
    return (np.broadcast_to(expand_reduced(g, axes, keepdims), x.shape),)


def sum_jvp(tangents, out, x, axis=None, keepdims=False):
    return np.sum(tangents[0], axis=normalize_axes(axis, x.ndim), keepdims=keepdims)


OPS["sum"] = ref_op(sum_forward, sum_vjp, sum_jvp, arity=1)


# --- mean: sum scaled by 1/count -------------------------------------------------------------------
def mean_forward(x, axis=None, keepdims=False):
    return np.mean(x, axis=normalize_axes(axis, x.ndim), keepdims=keepdims)


def mean_vjp(g, out, x, axis=None, keepdims=False):
    axes = normalize_axes(axis, x.ndim)
    g = expand_reduced(g, axes, keepdims) / _reduced_count(x, axes)
    return (np.broadcast_to(g, x.shape),)


def mean_jvp(tangents, out, x, axis=None, keepdims=False):
    return np.mean(tangents[0], axis=normalize_axes(axis, x.ndim), keepdims=keepdims)


OPS["mean"] = ref_op(mean_forward, mean_vjp, mean_jvp, arity=1)


# --- max / min: the gradient router ------------------------------------------------------------------
# The cotangent goes to the arg-max; tied elements split it equally (max over [3, 3, 1] gives
# [0.5, 0.5, 0]), as PyTorch's amax, JAX and HIPS autograd do. A NaN in a slice makes the result
# NaN, and the NaN elements are then the "winners" that share the cotangent. The JVP is the
# adjoint: the mean of the winners' tangents.
def _winners(x, out_kept):
    return (x == out_kept) | (np.isnan(x) & np.isnan(out_kept))


def _extremum_vjp(g, out, x, axis, keepdims):
    axes = normalize_axes(axis, x.ndim)
    winners = _winners(x, expand_reduced(out, axes, keepdims))
    share = expand_reduced(g, axes, keepdims) / np.sum(winners, axis=axes, keepdims=True)
    return (np.where(winners, share, np.zeros((), dtype=share.dtype)),)


def _extremum_jvp(tangents, out, x, axis, keepdims):
    axes = normalize_axes(axis, x.ndim)
    winners = _winners(x, expand_reduced(out, axes, keepdims))
    total = np.sum(np.where(winners, tangents[0], 0), axis=axes, keepdims=keepdims)
    return total / np.sum(winners, axis=axes, keepdims=keepdims)


def max_forward(x, axis=None, keepdims=False):
    return np.max(x, axis=normalize_axes(axis, x.ndim), keepdims=keepdims)


def max_vjp(g, out, x, axis=None, keepdims=False):
    return _extremum_vjp(g, out, x, axis, keepdims)


def max_jvp(tangents, out, x, axis=None, keepdims=False):
    return _extremum_jvp(tangents, out, x, axis, keepdims)


OPS["max"] = ref_op(max_forward, max_vjp, max_jvp, arity=1)


def min_forward(x, axis=None, keepdims=False):
    return np.min(x, axis=normalize_axes(axis, x.ndim), keepdims=keepdims)


def min_vjp(g, out, x, axis=None, keepdims=False):
    return _extremum_vjp(g, out, x, axis, keepdims)


def min_jvp(tangents, out, x, axis=None, keepdims=False):
    return _extremum_jvp(tangents, out, x, axis, keepdims)


OPS["min"] = ref_op(min_forward, min_vjp, min_jvp, arity=1)


# --- logsumexp: log(sum(exp(x - m))) + m, with m the max, so +-1000 neither overflows nor
# underflows to log(0). The gradient is the softmax exp(x - out). --------------------------------
def _stable_shift(x, axes):
    # An all -inf (or empty) slice has max -inf; shifting by it would give inf - inf = NaN, so
    # those slices are not shifted (their logsumexp is then log(0) = -inf, as in SciPy).
    m = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
    return np.where(np.isfinite(m), m, np.zeros((), dtype=m.dtype))


def logsumexp_forward(x, axis=None, keepdims=False):
    axes = normalize_axes(axis, x.ndim)
    m = _stable_shift(x, axes)
    out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axes)


# The weights are the softmax of x over the reduced axes, computed from x with the max shift:
# exp(x - out) is the same quantity, but out's rounding is magnified by |x| (a float32 out at 1e30
# has lost the log 2 of two equal terms entirely), in any precision NumPy has.
def _softmax_weights(x, axes):
    e = np.exp(x - _stable_shift(x, axes))
    return e / np.sum(e, axis=axes, keepdims=True)


def logsumexp_vjp(g, out, x, axis=None, keepdims=False):
    axes = normalize_axes(axis, x.ndim)
    return (zero_safe(expand_reduced(g, axes, keepdims), _softmax_weights(x, axes)),)


def logsumexp_jvp(tangents, out, x, axis=None, keepdims=False):
    axes = normalize_axes(axis, x.ndim)
    return np.sum(zero_safe(tangents[0], _softmax_weights(x, axes)), axis=axes, keepdims=keepdims)


OPS["logsumexp"] = ref_op(logsumexp_forward, logsumexp_vjp, logsumexp_jvp, arity=1)


# --- softmax(x, axis=-1): exp(x - max) / sum, so +-1000 is exact. VJP: s * (g - <g, s>). ---------
def softmax_forward(x, axis=-1):
    axes = normalize_axes(axis, x.ndim)
    e = np.exp(x - _stable_shift(x, axes))
    return e / np.sum(e, axis=axes, keepdims=True)


# Every cotangent (tangent) times Jacobian product goes through zero_safe, the contracted ones
# included, so an all-zero cotangent contributes exactly 0 even where out is NaN (softmax of inf).
def softmax_vjp(g, out, x, axis=-1):
    axes = normalize_axes(axis, x.ndim)
    return (zero_safe(g - np.sum(zero_safe(g, out), axis=axes, keepdims=True), out),)


def softmax_jvp(tangents, out, x, axis=-1):
    axes = normalize_axes(axis, x.ndim)
    t = tangents[0]
    return zero_safe(t - np.sum(zero_safe(t, out), axis=axes, keepdims=True), out)


OPS["softmax"] = ref_op(softmax_forward, softmax_vjp, softmax_jvp, arity=1)


# --- log_softmax(x, axis=-1) = (x - m) - log(sum(exp(x - m))), m the max. Subtracting m first
# keeps full relative precision (x - logsumexp(x) would lose ~|x| * eps at x = 1000).
# VJP: g - softmax * sum(g). ---------------------------------------------------------------------
def log_softmax_forward(x, axis=-1):
    axes = normalize_axes(axis, x.ndim)
    shifted = x - _stable_shift(x, axes)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axes, keepdims=True))


def log_softmax_vjp(g, out, x, axis=-1):
    axes = normalize_axes(axis, x.ndim)
    return (g - zero_safe(np.sum(g, axis=axes, keepdims=True), np.exp(out)),)


def log_softmax_jvp(tangents, out, x, axis=-1):
    axes = normalize_axes(axis, x.ndim)
    t = tangents[0]
    return t - np.sum(zero_safe(t, np.exp(out)), axis=axes, keepdims=True)


OPS["log_softmax"] = ref_op(log_softmax_forward, log_softmax_vjp, log_softmax_jvp, arity=1)
