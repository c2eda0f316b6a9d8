"""NumPy reference implementation of every pyautodiff op: the oracle the C kernels are tested against.

Imports only NumPy, and is imported only by tests (never by the library's fast path).

Contract. ``REFERENCE[name]`` is a :class:`RefOp` with ``forward``, ``vjp``, ``jvp`` and ``arity``::

    op = REFERENCE["multiply"]
    out = op.forward(a, b, **params)            # ndarray, NumPy semantics (broadcasting)
    ga, gb = op.vjp(g, out, a, b, **params)     # g: cotangent shaped like out
    t_out = op.jvp((ta, tb), out, a, b, **params)

- ``forward`` returns a fresh ndarray (never a view of an input, 0-d results included).
- ``vjp`` always returns a tuple with one gradient per array input, shaped like that input
  (broadcasting undone by :func:`unbroadcast`) and in that input's dtype (a float32 input gets a
  float32 gradient even when the op promoted to float64; non-float inputs get float64).
- ``jvp`` takes one tangent per array input (``None`` means zero) and returns the output's
  tangent, shaped like ``out`` and in ``out``'s dtype.
- Parameters (``axis``, ``keepdims``, ``shape``, ``p``, ``index``, ``cond``, ...) are passed the
  same way to all three. ``arity`` counts array inputs; ``None`` means variadic (concatenate,
  stack), whose parameters must then be keywords.
- Dtypes: float32 in gives float32 out; mixed inputs promote like NumPy.

Rules the C kernels must reproduce exactly:

- Ties split the gradient equally: ``maximum(x, x)`` gives 0.5 to each side, ``max`` over
  ``[3, 3, 1]`` gives ``[0.5, 0.5, 0]``; the same for ``minimum`` and ``min``.
- ``abs'(0) = 0`` and ``relu'(0) = 0``; ``clip`` passes the gradient on the closed interval
  ``[lo, hi]`` (boundaries included) and gives 0 strictly outside.
- ``power``: d/dx is 0 where the exponent is 0; d/dy is 0 where the base is 0.
  ``power_scalar``: d/dx = p x^(p-1), and 0 when p == 0.
- NaN-safety: a zero cotangent (VJP) or zero tangent (JVP) contributes exactly 0 even where the
  local derivative is inf or NaN (:func:`zero_safe`, used by every elementwise rule). A nonzero
  cotangent stays IEEE: the gradient of ``sqrt(x).sum()`` at 0 is +inf.
- logsumexp, softmax, log_softmax and sigmoid are numerically stable (inputs like +-1000 give
  finite values and correct gradients).
- getitem's gradient scatter-adds (``np.add.at``): repeated indices accumulate.

Parameters by op: ``power_scalar(x, p)``; ``sum/mean/max/min/logsumexp(x, axis=None,
keepdims=False)``; ``softmax/log_softmax(x, axis=-1)``; ``reshape(x, shape)``;
``transpose(x, axes=None)``; ``broadcast_to(x, shape)``; ``cast(x, dtype)``;
``getitem(x, index)``; ``concatenate(*xs, axis=0)``; ``stack(*xs, axis=0)``;
``where(a, b, cond=bool_array)``; ``clip(x, lo, hi)``; ``leaky_relu(x, negative_slope=0.01)``;
``elu(x, alpha=1.0)``; ``hardtanh(x, min_val=-1.0, max_val=1.0)``;
``gelu(x, approximate="none")`` (``"none"`` or ``"tanh"``); ``unfold(x, kernel_size, stride, padding,
dilation)`` and ``fold(x, output_size, kernel_size, stride, padding, dilation)`` (pairs of ints).
"""
from . import conv, elementwise, linalg, reduce, shape, shape_ops, reduce_ops, linalg_ops
from . import lapack
from ._core import RefOp, expand_reduced, normalize_axes, ref_op, unbroadcast, zero_safe


def _merge(*families):
    table = {}
    for family in families:
        for name, op in family.OPS.items():
            if name in table:
                raise RuntimeError(f"reference op {name!r} is defined twice")
            table[name] = op
    return table


REFERENCE = _merge(elementwise, reduce, linalg, shape, conv, shape_ops, reduce_ops, linalg_ops,
                   lapack)

__all__ = ["REFERENCE", "RefOp", "ref_op", "unbroadcast", "zero_safe", "normalize_axes",
           "expand_reduced"]
