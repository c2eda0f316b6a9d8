"""Linear algebra of issue 17 (ad.linalg): solve, inv, det, logdet (slogdet's logabsdet),
cholesky, with numpy.linalg as the forward and the textbook rules:
    solve   x = a^-1 b:   gb = a^-T g, ga = -gb x^T;             dx = a^-1 (db - da x)
    inv     x = a^-1:     ga = -x^T g x^T;                       dx = -x da x
    det     y:            ga = g y a^-T;                         dy = y tr(a^-1 da)
    logdet  y = log|det|: ga = g a^-T;                           dy = tr(a^-1 da)
    cholesky a = l l^T from a's lower triangle (as NumPy reads it): with Phi the lower triangle,
            diagonal halved, s = l^-T Phi(l^T g) l^-1, ga = Phi(s + s^T) (zero above the
            diagonal: the upper triangle is never read); dl = l Phi(l^-1 (q + q^T) l^-T), q = Phi(da).
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


OPS["solve"] = ref_op(solve_forward, solve_vjp, solve_jvp, arity=2)
OPS["inv"] = ref_op(inv_forward, inv_vjp, inv_jvp, arity=1)
OPS["det"] = ref_op(det_forward, *_det_rules(True), arity=1)
OPS["logdet"] = ref_op(logdet_forward, *_det_rules(False), arity=1)
OPS["cholesky"] = ref_op(cholesky_forward, cholesky_vjp, cholesky_jvp, arity=1)
