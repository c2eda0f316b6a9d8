"""Reductions and scans of issue 17: prod, cumsum, cumprod, var, std, norm, sort (topk's values are
sort's first k).

Every derivative here is written without dividing by x, from the definition: the derivative of a
product by one factor is the product of the others (`_others`, built by putting 1 in that factor's
place), so the rules hold at zeros, where y / x would be 0/0.
"""
import numpy as np

from ._core import expand_reduced, normalize_axes, ref_op

OPS = {}


def _to_last(x, axes):
    """x with the axes in `axes` moved to the end and merged into one."""
    keep = [a for a in range(x.ndim) if a not in axes]
    y = np.transpose(x, keep + list(axes))
    return y.reshape(y.shape[:len(keep)] + (int(np.prod([x.shape[a] for a in axes], dtype=np.int64)),))


def _from_last(y, x, axes):
    keep = [a for a in range(x.ndim) if a not in axes]
    y = y.reshape([x.shape[a] for a in keep] + [x.shape[a] for a in axes])
    return np.transpose(y, np.argsort(keep + list(axes)))


def _eye_one(v):
    """(..., n, n): row i is v with its i-th entry replaced by 1."""
    n = v.shape[-1]
    return np.where(np.eye(n, dtype=bool), np.ones((), v.dtype), v[..., None, :])


# --- prod(x, axis=None, keepdims=False): d/dx_i = the product of the others -------------------------
def prod_forward(x, axis=None, keepdims=False):
    return np.prod(x, axis=normalize_axes(axis, x.ndim), keepdims=keepdims)


def _prod_others(x, axes):
    v = _to_last(x, axes)
    return _from_last(np.prod(_eye_one(v), axis=-1), x, axes)


def prod_vjp(g, out, x, axis=None, keepdims=False):
    axes = normalize_axes(axis, x.ndim)
    return (expand_reduced(g, axes, keepdims) * _prod_others(x, axes),)


def prod_jvp(tangents, out, x, axis=None, keepdims=False):
    axes = normalize_axes(axis, x.ndim)
    return np.sum(tangents[0] * _prod_others(x, axes), axis=axes, keepdims=keepdims)


OPS["prod"] = ref_op(prod_forward, prod_vjp, prod_jvp, arity=1)


# --- cumsum / cumprod(x, axis=None): axis None scans the flattened x ---------------------------------
def _scan_axis(x, axis):
    return (x.reshape(-1), 0) if axis is None else (x, axis % x.ndim)


def cumsum_forward(x, axis=None):
    return np.cumsum(x, axis=axis)


def cumsum_vjp(g, out, x, axis=None):
    _, ax = _scan_axis(x, axis)
    return (np.flip(np.cumsum(np.flip(g, ax), ax), ax).reshape(x.shape),)


def cumsum_jvp(tangents, out, x, axis=None):
    return np.cumsum(tangents[0], axis=axis)


OPS["cumsum"] = ref_op(cumsum_forward, cumsum_vjp, cumsum_jvp, arity=1)


def _cumprod_partials(x, axis):
    """(x along the scan axis moved last, P) with P[..., i, k] = d y_k / d x_i =
    prod_{j <= k, j != i} x_j for k >= i, and 0 for k < i."""
    v, ax = _scan_axis(x, axis)
    v = np.moveaxis(v, ax, -1)
    n = v.shape[-1]
    p = np.cumprod(_eye_one(v), axis=-1)
    return v, ax, np.where(np.triu(np.ones((n, n), dtype=bool)), p, np.zeros((), v.dtype))


def cumprod_forward(x, axis=None):
    return np.cumprod(x, axis=axis)


def cumprod_vjp(g, out, x, axis=None):
    v, ax, p = _cumprod_partials(x, axis)
    gk = np.moveaxis(g, ax, -1)
    gi = np.sum(p * gk[..., None, :], axis=-1)
    return (np.moveaxis(gi, -1, ax).reshape(x.shape),)


def cumprod_jvp(tangents, out, x, axis=None):
    v, ax, p = _cumprod_partials(x, axis)
    t = np.moveaxis(tangents[0] if axis is not None else tangents[0].reshape(-1), ax, -1)
    return np.moveaxis(np.sum(p * t[..., :, None], axis=-2), -1, ax)


OPS["cumprod"] = ref_op(cumprod_forward, cumprod_vjp, cumprod_jvp, arity=1)


# --- var / std(x, axis=None, ddof=0, keepdims=False) -------------------------------------------------
def var_forward(x, axis=None, ddof=0, keepdims=False):
    return np.var(x, axis=normalize_axes(axis, x.ndim), ddof=ddof, keepdims=keepdims)


def _var_dx(x, axis, ddof):
    """d var / d x_i = 2 (x_i - mean) / (N - ddof) (the mean's own derivative sums to 0)."""
    axes = normalize_axes(axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    return axes, 2 * (x - np.mean(x, axis=axes, keepdims=True)) / max(count - ddof, 0)


def var_vjp(g, out, x, axis=None, ddof=0, keepdims=False):
    axes, d = _var_dx(x, axis, ddof)
    return (expand_reduced(g, axes, keepdims) * d,)


def var_jvp(tangents, out, x, axis=None, ddof=0, keepdims=False):
    axes, d = _var_dx(x, axis, ddof)
    return np.sum(tangents[0] * d, axis=axes, keepdims=keepdims)


OPS["var"] = ref_op(var_forward, var_vjp, var_jvp, arity=1)


def std_forward(x, axis=None, ddof=0, keepdims=False):
    return np.std(x, axis=normalize_axes(axis, x.ndim), ddof=ddof, keepdims=keepdims)


def std_vjp(g, out, x, axis=None, ddof=0, keepdims=False):
    axes, d = _var_dx(x, axis, ddof)
    return (expand_reduced(g / (2 * out), axes, keepdims) * d,)


def std_jvp(tangents, out, x, axis=None, ddof=0, keepdims=False):
    axes, d = _var_dx(x, axis, ddof)
    return np.sum(tangents[0] * d, axis=axes, keepdims=keepdims) / (2 * out)


OPS["std"] = ref_op(std_forward, std_vjp, std_jvp, arity=1)


# --- norm(x, ord=None, axis=None, keepdims=False): numpy.linalg.norm --------------------------------
# The derivative by x, shaped like x, with the reduced axes' cotangent broadcast: the 2-norm's is
# x / |x| (0 at 0), the 1-norm's sign(x), inf / -inf route to the elements of largest / smallest
# |x| (ties share equally, as max and min do), a p-norm's |x|^(p-1) sign(x) / |x|_p^(p-1); the
# matrix 2, -2 and 'nuc' norms' U diag(w) V^T (the weights of the singular values they take).
def norm_forward(x, ord=None, axis=None, keepdims=False):
    return np.linalg.norm(x, ord=ord, axis=axis, keepdims=keepdims)


def _share(sel, axes):
    return sel / np.sum(sel, axis=axes, keepdims=True)


def _norm_dx(x, ord, axis):
    if axis is None and (ord is None or x.ndim == 1):
        axis = tuple(range(x.ndim))
    elif axis is None:
        axis = (0, 1)
    axes = tuple(a % x.ndim for a in ((axis,) if np.ndim(axis) == 0 else axis))
    if ord in (None, "fro") or (ord == 2 and len(axes) == 1):
        n = np.sqrt(np.sum(x * x, axis=axes, keepdims=True))
        return axes, np.where(n == 0, 0.0, x / np.where(n == 0, 1.0, n))
    n = np.linalg.norm(x, ord=ord, axis=axes if len(axes) == 2 else axes[0], keepdims=True)
    if len(axes) == 1 and ord in (np.inf, -np.inf):
        return axes, np.sign(x) * _share(np.abs(x) == n, axes)
    if len(axes) == 1 and ord == 1:
        return axes, np.sign(x)
    if len(axes) == 1 and ord == 0:
        return axes, np.zeros_like(x)
    if len(axes) == 1:
        p = float(ord)
        return axes, np.abs(x) ** (p - 1) * np.sign(x) / n ** (p - 1)
    r, c = axes
    if ord in (2, -2, "nuc"):
        # U diag(w) V^T over the matrices on (r, c): w = 1 for 'nuc', and for 2 / -2 the largest /
        # smallest singular values' share (ties split equally, as max and min); a zero singular
        # value gets 0 (s is not differentiable there)
        y = np.moveaxis(x, (r, c), (-2, -1))
        u, s, vh = np.linalg.svd(y, full_matrices=False)
        w = np.ones_like(s) if ord == "nuc" else _share(s == (s.max if ord == 2 else s.min)(-1, keepdims=True), (-1,))
        return axes, np.moveaxis((u * np.where(s > 0, w, 0.0)[..., None, :]) @ vh, (-2, -1), (r, c))
    inner, outer = (r, c) if ord in (1, -1) else (c, r)
    s = np.sum(np.abs(x), axis=inner, keepdims=True)
    return axes, np.sign(x) * _share(s == n, (outer,))


def norm_vjp(g, out, x, ord=None, axis=None, keepdims=False):
    axes, d = _norm_dx(x, ord, axis)
    return (expand_reduced(g, axes, keepdims) * d,)


def norm_jvp(tangents, out, x, ord=None, axis=None, keepdims=False):
    axes, d = _norm_dx(x, ord, axis)
    return np.sum(tangents[0] * d, axis=axes, keepdims=keepdims)


OPS["norm"] = ref_op(norm_forward, norm_vjp, norm_jvp, arity=1)


# --- sort(x, axis=-1, descending=False): values at a stable argsort; ties keep their order ----------
def _sort_index(x, axis, descending):
    return np.argsort(-x if descending else x, axis=axis, kind="stable")


def sort_forward(x, axis=-1, descending=False, k=None):
    idx = _sort_index(x, axis, descending)
    if k is not None:
        idx = np.take(idx, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis)


def sort_vjp(g, out, x, axis=-1, descending=False, k=None):
    idx = _sort_index(x, axis, descending)
    if k is not None:
        idx = np.take(idx, np.arange(k), axis=axis)
    gx = np.zeros(x.shape, g.dtype)
    np.put_along_axis(gx, idx, g, axis)      # the sorted positions are distinct: no accumulation
    return (gx,)


def sort_jvp(tangents, out, x, axis=-1, descending=False, k=None):
    idx = _sort_index(x, axis, descending)
    if k is not None:
        idx = np.take(idx, np.arange(k), axis=axis)
    return np.take_along_axis(tangents[0], idx, axis)


OPS["sort"] = ref_op(sort_forward, sort_vjp, sort_jvp, arity=1)


# --- scan(a, b, axis, reverse): the linear recurrence under cumsum, cumprod and prod -----------------
# forward s_k = a_k s_{k-1} + b_k, reverse r_k = a_{k+1} r_{k+1} + b_k. Its Jacobians along the axis,
# from the definition: forward ds_k/db_m = P(m, k) = prod_{m<j<=k} a_j (m <= k) and
# ds_k/da_j = s_{j-1} P(j, k) (1 <= j <= k); reverse dr_k/db_m = P(k, m) (m >= k) and
# dr_k/da_j = P(k, j - 1) r_j (k < j). unit: a forward scan from s_{-1} = 1, so ds_k/da_0 = P(0, k).
def _scan_loop(a, b, reverse, unit=False):
    s = np.zeros_like(b)
    n = b.shape[-1]
    for i in (range(n - 1, -1, -1) if reverse else range(n)):
        if reverse:
            s[..., i] = b[..., i] + (a[..., i + 1] * s[..., i + 1] if i + 1 < n else 0)
        else:
            s[..., i] = b[..., i] + (a[..., i] * s[..., i - 1] if i > 0 else a[..., 0] if unit else 0)
    return s


def _scan_jacobians(a, b, reverse, unit=False):
    """(s, Jb, Ja): the scan along the last axis and its Jacobians, shaped (..., n, n) as
    [output k, input m]."""
    s = _scan_loop(a, b, reverse, unit)
    n = b.shape[-1]
    jb = np.zeros(b.shape + (n,), b.dtype)
    ja = np.zeros(b.shape + (n,), b.dtype)

    def p(lo, hi):      # prod of a over (lo, hi]
        return np.prod(a[..., lo + 1:hi + 1], axis=-1)

    for k in range(n):
        for m in range(n):
            if not reverse and m <= k:
                jb[..., k, m] = p(m, k)
                if 1 <= m:
                    ja[..., k, m] = s[..., m - 1] * p(m, k)
                elif unit:
                    ja[..., k, m] = p(m, k)
            if reverse and m >= k:
                jb[..., k, m] = p(k, m)
                if k < m:
                    ja[..., k, m] = p(k, m - 1) * s[..., m]
    return s, jb, ja


def scan_forward(a, b, axis, reverse=False, unit=False):
    return np.moveaxis(_scan_loop(np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1), reverse, unit), -1, axis)


def scan_vjp(g, out, a, b, axis, reverse=False, unit=False):
    _, jb, ja = _scan_jacobians(np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1), reverse, unit)
    gk = np.moveaxis(g, axis, -1)[..., :, None]
    return (np.moveaxis(np.sum(gk * ja, axis=-2), -1, axis), np.moveaxis(np.sum(gk * jb, axis=-2), -1, axis))


def scan_jvp(tangents, out, a, b, axis, reverse=False, unit=False):
    _, jb, ja = _scan_jacobians(np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1), reverse, unit)
    ta, tb = (np.moveaxis(t, axis, -1)[..., None, :] for t in tangents)
    return np.moveaxis(np.sum(ja * ta + jb * tb, axis=-1), -1, axis)


OPS["scan"] = ref_op(scan_forward, scan_vjp, scan_jvp, arity=2)
