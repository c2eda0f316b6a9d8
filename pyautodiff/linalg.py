"""ad.linalg: inv, det, slogdet, solve, cholesky with numpy.linalg's semantics (leading batch
axes, broadcast between a and b in solve; float32 and float64; integer data becomes float64).

Three C ops on LAPACK (csrc/kernels/lapack.c) carry them: solve (inv is solve(a, I), as NumPy
computes it), log|det| / det, and cholesky. Their rules are recorded ops, so every order of
derivative comes with them. A singular matrix (solve, inv) or one that is not positive definite
(cholesky) raises numpy.linalg.LinAlgError naming the op, the batch element, the shape and the
dtype. det of a singular matrix is 0 and slogdet's is (0, -inf), as NumPy's; their derivative
there (the adjugate) is not implemented and raises LinAlgError rather than return a wrong number.
cholesky reads a's lower triangle only, as NumPy; its gradient is the derivative of that function
(zero on the strict upper triangle), which agrees with the symmetric gradient along symmetric
directions.
"""
from collections import namedtuple

import numpy as np

from ._capi import ffi, lib, _call, dtype_of
from .tensor import as_tensor, tensor
from .ops import broadcast_to, reshape

LinAlgError = np.linalg.LinAlgError
SlogdetResult = namedtuple("SlogdetResult", ["sign", "logabsdet"])

__all__ = ["inv", "det", "slogdet", "solve", "cholesky", "LinAlgError", "SlogdetResult"]


def _same_dtype(a, b):
    """a and b in one dtype, promoted as NumPy (float32 with float64 is float64)."""
    if a.dtype == b.dtype:
        return a, b
    dt = np.promote_types(a.dtype, b.dtype)
    return (a if a.dtype == dt else a.astype(dt)), (b if b.dtype == dt else b.astype(dt))


def _batched(x, batch):
    shape = tuple(batch) + tuple(x.shape[-2:])
    return x if tuple(x.shape) == shape else broadcast_to(x, shape)


def solve(a, b):
    """x with a @ x = b, as numpy.linalg.solve: a is (..., n, n); b is (n,) (a vector, solved
    against every matrix of a) or (..., n, k), batch axes broadcast. LinAlgError when a matrix is
    singular."""
    a, b = _same_dtype(as_tensor(a), as_tensor(b))
    if a.ndim < 2:
        return _call(lib.ad_solve, a._h, b._h, 0)   # the core's error: not a matrix
    vector = b.ndim == 1
    if vector:
        if b.shape[0] != a.shape[-1]:   # said here: the core would name the (n, 1) column made below
            raise ValueError(f"solve: b of shape {b.shape} does not match a of shape {a.shape} "
                             f"(a vector b needs {a.shape[-1]} elements)")
        b = reshape(b, (b.shape[0], 1))
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"solve: batch axes of a {a.shape} and b {b.shape} do not broadcast") from None
    a, b = _batched(a, batch), _batched(b, batch)   # held: a handle alone keeps no tensor alive
    x = _call(lib.ad_solve, a._h, b._h, 0)
    return reshape(x, x.shape[:-1]) if vector else x


def inv(a):
    """The inverse of each matrix of a (..., n, n), as numpy.linalg.inv (which solves a x = I, as
    this does). LinAlgError when a matrix is singular."""
    a = as_tensor(a)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        return _call(lib.ad_solve, a._h, a._h, 1)   # the core's error: not square matrices
    eye = tensor(np.broadcast_to(np.eye(a.shape[-1], dtype=a.dtype), a.shape), dtype=a.dtype)
    return _call(lib.ad_solve, a._h, eye._h, 1)


def _logdet(a, det):
    a = as_tensor(a)
    sign = np.empty(a.shape[:-2] if a.ndim >= 2 else (), dtype=a.dtype)
    out = _call(lib.ad_logdet, a._h, det, ffi.from_buffer(sign) if sign.size else ffi.NULL)
    return out, sign


def det(a):
    """The determinant of each matrix of a (..., n, n), as numpy.linalg.det (sign * exp(log|det|)
    from an LU factorization): 0 for a singular matrix, whose derivative raises LinAlgError."""
    return _logdet(a, 1)[0]


def slogdet(a):
    """(sign, logabsdet) of each matrix of a (..., n, n), as numpy.linalg.slogdet: sign is a NumPy
    array (it has no derivative), logabsdet a Tensor; a singular matrix gives (0, -inf), whose
    derivative raises LinAlgError."""
    out, sign = _logdet(a, 0)
    return SlogdetResult(sign if sign.ndim else sign[()], out)


def cholesky(a):
    """The lower-triangular L with a = L L^T for each matrix of a (..., n, n), from a's lower
    triangle, as numpy.linalg.cholesky. LinAlgError when a matrix is not positive definite."""
    a = as_tensor(a)
    return _call(lib.ad_cholesky, a._h)
