"""Plumbing shared by every reference op: the RefOp record, broadcasting undone in one place,
the NaN-safety rule in one place, and reduction-axis normalisation.

Imports only NumPy (the reference must stay an independent oracle of the C core).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
import operator
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

__all__ = [
    "RefOp",
    "ref_op",
    "unbroadcast",
    "zero_safe",
    "normalize_axes",
    "expand_reduced",
    "grad_dtype",
]


@dataclass(frozen=True)
class RefOp:
    """One reference op: forward, VJP and JVP of the same function, plus its arity.

    ``arity`` is the number of array (differentiable) positional inputs; ``None`` means variadic
    (concatenate, stack), in which case every positional argument is an array input and all
    parameters must be passed by keyword.
    """

    forward: Callable
    vjp: Callable
    jvp: Callable
    arity: Optional[int]


def grad_dtype(x: np.ndarray) -> np.dtype:
    """The dtype a gradient with respect to ``x`` is returned in.

    A float input keeps its own dtype (a float32 leaf gets a float32 gradient even when the op
    promoted to float64, as in PyTorch); non-float data becomes float64, the library's default.
    """
    if np.issubdtype(x.dtype, np.floating):
        return x.dtype
    return np.dtype(np.float64)


def unbroadcast(grad, shape) -> np.ndarray:
    """Sum ``grad`` (shaped like a broadcast result) back down to ``shape``.

    Sum and broadcast are duals: every axis that broadcasting prepended, and every size-1 axis of
    ``shape`` that was stretched, is summed over. This is the only place in the reference where
    broadcasting is undone; VJPs may return cotangents shaped like the op's output and leave this
    step to ``ref_op``.
    """
    grad = np.asarray(grad)
    shape = tuple(shape)
    n_prepended = grad.ndim - len(shape)
    if n_prepended < 0:
        raise ValueError(f"unbroadcast: gradient of shape {grad.shape} has fewer axes than "
                         f"target shape {shape}")
    if n_prepended:
        grad = grad.sum(axis=tuple(range(n_prepended)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    if grad.shape != shape:
        # A rule may legitimately return something that is constant along an input axis and
        # smaller than the input (never larger once the sums above are done).
        grad = np.broadcast_to(grad, shape)
    return grad


def zero_safe(cotangent, local):
    """``cotangent * local``, except exactly 0 wherever the cotangent is 0 (the NaN-safety rule).

    A zero cotangent (or zero tangent, in a JVP) contributes exactly zero even where the local
    derivative is inf or NaN, so ``where(x > 0, sqrt(x), 0)`` and masked logs get finite
    gradients. A nonzero cotangent stays IEEE: 1 * inf is inf, 1 * NaN is NaN. Every elementwise
    rule that multiplies by a local derivative goes through here, so the rule is stated once.
    """
    cotangent = np.asarray(cotangent)
    with np.errstate(invalid="ignore", over="ignore"):  # 0 * inf is computed, then discarded
        product = np.asarray(cotangent * local)
    return np.where(cotangent == 0, np.zeros((), dtype=product.dtype), product)


def normalize_axes(axis, ndim: int) -> tuple:
    """NumPy's reduction-axis convention as a sorted tuple of non-negative axes.

    ``None`` means every axis, an int or a tuple of ints picks axes (negative ones count from the
    end), and ``()`` means no axis at all. Out-of-range and duplicate axes are errors, as in NumPy.
    """
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (axis,)
    axes = []
    for a in axis:
        a = operator.index(a)
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(a, ndim)
        axes.append(a % ndim)
    if len(set(axes)) != len(axes):
        raise ValueError(f"duplicate value in axis {tuple(axis)}")
    return tuple(sorted(axes))


def expand_reduced(g, axes: tuple, keepdims: bool) -> np.ndarray:
    """Give a reduction's cotangent back the reduced axes (as size 1) so it broadcasts to x."""
    g = np.asarray(g)
    if keepdims:
        return g
    return np.expand_dims(g, axes) if axes else g


def _array_inputs(args, arity):
    """Split positional arguments into the array inputs and the positional parameters after them."""
    n = len(args) if arity is None else arity
    if len(args) < n:
        raise TypeError(f"expected {n} array inputs, got {len(args)}")
    return [np.asarray(a) for a in args[:n]], list(args[n:])


@contextlib.contextmanager
def _ieee_quietly():
    """The oracle computes IEEE values on purpose (log(0) = -inf, the mean of an empty slice is
    NaN); the tests check those values, so neither floating-point warnings nor NumPy's
    RuntimeWarnings about them are wanted."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def ref_op(forward: Callable, vjp: Callable, jvp: Callable, arity: Optional[int]) -> RefOp:
    """Wrap a family file's raw rules so that every op honours the same contract.

    The raw rules stay plain NumPy and may return cotangents shaped like the output; the wrapper:
      - turns the outputs into fresh ndarrays (NumPy returns scalars for 0-d results, and views
        from reshape/broadcast_to/getitem that would alias the inputs),
      - undoes broadcasting with ``unbroadcast`` and casts each gradient to its input's dtype,
      - replaces ``None`` tangents by zeros and gives the JVP result the output's shape and dtype,
      - silences floating-point warnings: the oracle computes IEEE values (log(0) = -inf, 1/0 =
        inf) on purpose, and the tests check those values rather than warnings.
    """

    @functools.wraps(forward)
    def checked_forward(*args, **params):
        inputs, rest = _array_inputs(args, arity)
        with _ieee_quietly():
            return np.array(forward(*inputs, *rest, **params))

    @functools.wraps(vjp)
    def checked_vjp(g, out, *args, **params):
        inputs, rest = _array_inputs(args, arity)
        with _ieee_quietly():
            grads = vjp(np.asarray(g), np.asarray(out), *inputs, *rest, **params)
        if len(grads) != len(inputs):
            raise AssertionError(f"{vjp.__name__} returned {len(grads)} gradients for "
                                 f"{len(inputs)} inputs")
        return tuple(np.array(unbroadcast(gr, x.shape), dtype=grad_dtype(x))
                     for gr, x in zip(grads, inputs))

    @functools.wraps(jvp)
    def checked_jvp(tangents, out, *args, **params):
        inputs, rest = _array_inputs(args, arity)
        tangents = list(tangents)
        if len(tangents) != len(inputs):
            raise ValueError(f"expected {len(inputs)} tangents, got {len(tangents)}")
        tangents = [np.zeros(x.shape, grad_dtype(x)) if t is None else np.asarray(t)
                    for t, x in zip(tangents, inputs)]
        out = np.asarray(out)
        with _ieee_quietly():
            tangent_out = jvp(tangents, out, *inputs, *rest, **params)
        return np.array(np.broadcast_to(tangent_out, out.shape), dtype=out.dtype)

    return RefOp(forward=checked_forward, vjp=checked_vjp, jvp=checked_jvp, arity=arity)
