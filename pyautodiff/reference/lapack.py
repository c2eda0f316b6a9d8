"""Linear algebra of issue 17 (ad.linalg): solve, inv, det, logdet (slogdet's logabsdet),
cholesky, with numpy.linalg as the forward and the textbook rules:
    solve   x = a^-1 b:   gb = a^-T g, ga = -gb x^T;             dx = a^-1 (db - da x)
    inv     x = a^-1:     ga = -x^T g x^T;                       dx = -x da x
    det     y:            ga = g y a^-T;                         dy = y tr(a^-1 da)
    logdet  y = log|det|: ga = g a^-T;                           dy = tr(a^-1 da)
    cholesky a = l l^T from a's lower triangle (as NumPy reads it): with Phi the lower triangle,
            diagonal halved, s = l^-T Phi(l^T g) l^-1, ga = Phi(s + s^T) (zero above the
            diagonal: the upper triangle is never read); dl = l Phi(l^-1 (q + q^T) l^-T), q = Phi(da).
    svdvals s of a = u diag(s) vh (thin, k = min(m, n)): ga = u diag(g) vh; ds = diag(u^T da v)
            (a zero singular value, where s has a kink, contributes 0).
    svd     (u, s, vh), each pair (u_i, v_i) signed by svd_signs so that the output is a function
            of a: with dS = u^T da v, F_ij = 1 / (s_j^2 - s_i^2) (0 on the diagonal),
            du = u (F o (dS S + S dS^T)) + (da v - u dS) S^-1 [m > n],
            dv = v (F o (S dS + dS^T S)) + (da^T u - v dS^T) S^-1 [m < n]; ga is their transpose,
            with J = u^T gu, K = vh gvh^T: u (diag(gs) + (F o (J - J^T)) S + S (F o (K - K^T))) vh
            + (gu - u J) S^-1 vh [m > n] + u S^-1 (gvh - K^T vh) [m < n]. The output packs u, s
            and vh (each flattened) along one last axis.
b in solve is a vector when it is 1-D (numpy.linalg.solve's rule); batch axes broadcast.
"""
import numpy as np

from ._core import ref_op

OPS = {}


def _t(x):
    return np.swapaxes(x, -1, -2)


def _phi(x):
    return np.tril(x) - 0.5 * np.eye(x.shape[-1]) * x


def _as_matrix(b):
    return b[:, None] if b.ndim == 1 else b


def solve_forward(a, b):
    return np.linalg.solve(a, b)


def solve_vjp(g, out, a, b):
    vec = b.ndim == 1
    gb = np.linalg.solve(_t(a), g[..., None] if vec else g)
    ga = -gb @ _t(out[..., None] if vec else out)
    return ga, gb[..., 0] if vec else gb


def solve_jvp(tangents, out, a, b):
    ta, tb = tangents
    vec = b.ndim == 1
    x = out[..., None] if vec else out
    r = np.linalg.solve(a, (tb[..., None] if vec else tb) - ta @ x)
    return r[..., 0] if vec else r


def inv_forward(a):
    return np.linalg.inv(a)


def inv_vjp(g, out, a):
    return (-_t(out) @ g @ _t(out),)


def inv_jvp(tangents, out, a):
    return -out @ tangents[0] @ out


def _det_rules(scaled):
    def vjp(g, out, a):
        w = g * out if scaled else g
        return (np.asarray(w)[..., None, None] * _t(np.linalg.inv(a)),)

    def jvp(tangents, out, a):
        d = np.sum(_t(np.linalg.inv(a)) * tangents[0], axis=(-2, -1))
        return out * d if scaled else d
    return vjp, jvp


def det_forward(a):
    return np.linalg.det(a)


def logdet_forward(a):
    return np.linalg.slogdet(a)[1]


def cholesky_forward(a):
    return np.linalg.cholesky(a)


def cholesky_vjp(g, out, a):
    lt = _t(out)
    p = _phi(lt @ g)
    s = _t(np.linalg.solve(lt, _t(np.linalg.solve(lt, p))))
    return (_phi(s + _t(s)),)


def cholesky_jvp(tangents, out, a):
    q = _phi(tangents[0])
    z = np.linalg.solve(out, _t(np.linalg.solve(out, q + _t(q))))
    return out @ _phi(z)


def svdvals_forward(a):
    return np.linalg.svd(a, compute_uv=False)


def _positive(s):
    return (s > 0).astype(s.dtype)


def svdvals_vjp(g, out, a):
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    return ((u * (g * _positive(s))[..., None, :]) @ vh,)


def svdvals_jvp(tangents, out, a):
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    return np.einsum("...ik,...ij,...kj->...k", u, tangents[0], vh) * _positive(s)


def svd_signs(u):
    """+-1 per column of u (..., 1, k): the sign of its product with fixed weights 1..2, which the
    test rows (tests/op_table.py) apply to ad.linalg.svd's U and Vh as well, so that both sides
    return the same pairs (u_i, v_i), whatever signs gesdd chose."""
    return np.sign(np.sum(u * np.linspace(1.0, 2.0, u.shape[-2], dtype=u.dtype)[:, None], axis=-2, keepdims=True))


def _svd_signed(a):
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    sg = svd_signs(u)
    return u * sg, s, vh * _t(sg)


def _pack(u, s, vh):
    batch = s.shape[:-1]
    return np.concatenate([u.reshape(batch + (-1,)), s, vh.reshape(batch + (-1,))], -1)


def _f_matrix(s):
    d = s[..., None, :] ** 2 - s[..., :, None] ** 2
    eye = np.eye(s.shape[-1])
    return 1 / (d + eye) - eye


def svd_forward(a, full_matrices=False):
    return _pack(*_svd_signed(a))


def svd_vjp(g, out, a, full_matrices=False):
    u, s, vh = _svd_signed(a)
    m, n = a.shape[-2:]
    k = s.shape[-1]
    gu = g[..., :m * k].reshape(u.shape)
    gs = g[..., m * k:m * k + k]
    gvh = g[..., m * k + k:].reshape(vh.shape)
    f = _f_matrix(s)
    j, kk = _t(u) @ gu, vh @ _t(gvh)
    srow, scol = s[..., None, :], s[..., :, None]
    inner = gs[..., None, :] * np.eye(k) + f * (j - _t(j)) * srow + scol * (f * (kk - _t(kk)))
    ga = u @ inner @ vh
    if m > n:
        ga = ga + ((gu - u @ j) / srow) @ vh
    if m < n:
        ga = ga + u @ ((gvh - _t(kk) @ vh) / scol)
    return (ga,)


def svd_jvp(tangents, out, a, full_matrices=False):
    u, s, vh = _svd_signed(a)
    da = tangents[0]
    m, n = a.shape[-2:]
    v = _t(vh)
    f = _f_matrix(s)
    srow, scol = s[..., None, :], s[..., :, None]
    ds = _t(u) @ da @ v
    du = u @ (f * (ds * srow + _t(ds * srow)))
    dv = v @ (f * (scol * ds + _t(scol * ds)))
    if m > n:
        du = du + (da @ v - u @ ds) / srow
    if m < n:
        dv = dv + (_t(da) @ u - v @ _t(ds)) / srow
    return _pack(du, np.diagonal(ds, axis1=-2, axis2=-1), _t(dv))


OPS["svdvals"] = ref_op(svdvals_forward, svdvals_vjp, svdvals_jvp, arity=1)
OPS["svd"] = ref_op(svd_forward, svd_vjp, svd_jvp, arity=1)
OPS["solve"] = ref_op(solve_forward, solve_vjp, solve_jvp, arity=2)
OPS["inv"] = ref_op(inv_forward, inv_vjp, inv_jvp, arity=1)
OPS["det"] = ref_op(det_forward, *_det_rules(True), arity=1)
OPS["logdet"] = ref_op(logdet_forward, *_det_rules(False), arity=1)
OPS["cholesky"] = ref_op(cholesky_forward, cholesky_vjp, cholesky_jvp, arity=1)
