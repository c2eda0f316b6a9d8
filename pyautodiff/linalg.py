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

svd and svdvals run LAPACK's gesdd, as numpy.linalg.svd. The derivative of the singular values
alone (svdvals, svd's S, the matrix norms ord 2, -2, 'nuc') is U diag(g) V^T: it exists at
repeated singular values (the identity matrix) and needs nothing else; a loss that treats tied
values alike (a sum, the norms: max and min split among ties) gets a gradient independent of the
basis gesdd picks for them, one that does not (s[0] alone at a tie, a kink) the subgradient of
that basis. At an exactly zero singular value, where s is not differentiable (a kink, as |x| at
0), that value contributes 0.
The derivative of U and Vh, and the second derivative of the singular values, divide by
s_j^2 - s_i^2 (and by s when m != n): they raise LinAlgError at repeated or zero singular values,
naming the batch element, and U, Vh of full_matrices=True with m != n have no derivative (their
extra columns are any orthonormal completion). U and Vh are defined up to the sign of each pair
(u_i, v_i) (gesdd's choice, as NumPy's): as PyTorch says of its svd, differentiate only losses
that do not depend on that choice (U diag(c) Vh, |U|, U U^T, S), whose gradients are then right.
"""
from collections import namedtuple

import numpy as np

from ._capi import ffi, lib, _call, _call_out, address, dtype_of
from .tensor import as_tensor, tensor
from .ops import broadcast_to, reshape

LinAlgError = np.linalg.LinAlgError
SlogdetResult = namedtuple("SlogdetResult", ["sign", "logabsdet"])
SVDResult = namedtuple("SVDResult", ["U", "S", "Vh"])

__all__ = ["inv", "det", "slogdet", "solve", "cholesky", "svd", "svdvals", "LinAlgError", "SlogdetResult",
           "SVDResult"]


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


def _svd(a, jobz):
    out = ffi.new("int64_t[2]")
    return _call_out(lib.ad_svd, 2, address(out), a._h, jobz, out)


def svdvals(a):
    """The singular values of each matrix of a (..., m, n), descending, shape (..., min(m, n)), as
    numpy.linalg.svdvals (gesdd without vectors). Its gradient U diag(g) V^T exists at repeated
    singular values; its second derivative needs them distinct and nonzero (else LinAlgError)."""
    return _svd(as_tensor(a), lib.AD_SVD_VALS)[0]


def svd(a, full_matrices=True, compute_uv=True):
    """The singular value decomposition a = U diag(S) Vh of each matrix of a (..., m, n), as
    numpy.linalg.svd: SVDResult(U, S, Vh) with U (..., m, m) and Vh (..., n, n) (full_matrices) or
    (..., m, k) and (..., k, n), k = min(m, n); compute_uv=False gives S alone (svdvals).
    S's gradient needs nothing; U's and Vh's need distinct nonzero singular values and, for m != n,
    full_matrices=False (else LinAlgError). Each pair (U[:, i], Vh[i]) is defined up to a common
    sign: differentiate only losses that do not depend on it (see the module's doc)."""
    a = as_tensor(a)
    if not compute_uv:
        return svdvals(a)
    s, p = _svd(a, lib.AD_SVD_FULL if full_matrices else lib.AD_SVD_THIN)
    # One node holds U, S and Vh packed along its last axis (the core has one output per node);
    # U and Vh are slices of it, S the singular values' own node (see csrc/kernels/lapack.c)
    m, n = a.shape[-2:]
    k = min(m, n)
    ku, kv = (m, n) if full_matrices else (k, k)
    batch = tuple(a.shape[:-2])
    u = reshape(p[..., :m * ku], batch + (m, ku))
    vh = reshape(p[..., m * ku + k:], batch + (kv, n))
    return SVDResult(u, s, vh)
