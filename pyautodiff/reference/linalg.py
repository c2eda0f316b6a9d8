"""matmul with NumPy semantics: 1-D operands are promoted (a vector on the left becomes a row,
on the right a column) and the added axis is dropped again; N-D operands are stacks of matrices
whose batch axes broadcast.
"""
import numpy as np

from ._core import ref_op

OPS = {}


def _as_matrices(a, b):
    """Promote 1-D operands to the matrices NumPy multiplies internally."""
    a2 = a[np.newaxis, :] if a.ndim == 1 else a
    b2 = b[:, np.newaxis] if b.ndim == 1 else b
    return a2, b2


def _matrix_cotangent(g, a, b):
    """Put back into g the axes that promoting 1-D operands removed from the output.

    The column axis goes back first, so that vector @ vector (a 0-d g) becomes (1, 1).
    """
    if b.ndim == 1:
        g = np.expand_dims(g, -1)
    if a.ndim == 1:
        g = np.expand_dims(g, -2)
    return g


def matmul_forward(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must be at least 1-D, got shapes {a.shape} and {b.shape}")
    return np.matmul(a, b)


def matmul_vjp(g, out, a, b):
    a2, b2 = _as_matrices(a, b)
    g2 = _matrix_cotangent(g, a, b)
    # These carry the broadcast batch axes; ref_op's unbroadcast sums them back to each operand.
    ga = np.matmul(g2, np.swapaxes(b2, -1, -2))
    gb = np.matmul(np.swapaxes(a2, -1, -2), g2)
    if a.ndim == 1:
        ga = ga[..., 0, :]
    if b.ndim == 1:
        gb = gb[..., :, 0]
    return ga, gb


def matmul_jvp(tangents, out, a, b):
    ta, tb = tangents
    return np.matmul(ta, b) + np.matmul(a, tb)


OPS["matmul"] = ref_op(matmul_forward, matmul_vjp, matmul_jvp, arity=2)
