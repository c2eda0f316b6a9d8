"""Products of issue 17: dot, vdot, outer, inner, tensordot, einsum, trace, composed of matmul,
multiply, transpose, reshape, sum and diagonal, so every order of derivative comes with them and
contractions run on BLAS (matmul's gemm).

einsum plans once per (subscripts, shapes): NumPy's own einsum_path (optimize="greedy", what
np.einsum(optimize=True) uses) gives the pairwise order; each pair becomes one batched matmul
(batch, free, contracted axes transposed into place only when they are not already) or, with
nothing contracted, one broadcast multiply; repeated labels in one operand take a diagonal, and
labels no later step needs are summed away first.
"""
import functools
import math

import numpy as np

from ._capi import ffi, lib, int_arg, int_tuple, _call
from .tensor import as_tensor
from .ops import matmul, multiply, reshape, transpose, sum as _sum, broadcast_to
from .shape_ops import _axis, diagonal, diagonal_view


def _prod(shape):
    return math.prod(shape)


def _permuted(x, perm):
    return x if tuple(perm) == tuple(range(len(perm))) else transpose(x, tuple(perm))


def _reshaped(x, shape):
    return x if tuple(x.shape) == tuple(shape) else reshape(x, tuple(shape))


# ---- dot, vdot, outer, inner, tensordot, trace ----

def tensordot(a, b, axes=2):
    """Sum of products over a's axes axes[0] and b's axes[1] (an int N: a's last N with b's first
    N), as numpy.tensordot: the result has a's free axes then b's. One matmul."""
    a, b = as_tensor(a), as_tensor(b)
    if isinstance(axes, (int, np.integer)) and not isinstance(axes, bool):
        n = int_arg(axes, "tensordot: axes")
        if n < 0 or n > a.ndim or n > b.ndim:
            raise ValueError(f"tensordot: axes={n} is out of range for shapes {a.shape} and {b.shape}")
        ax_a, ax_b = tuple(range(a.ndim - n, a.ndim)), tuple(range(n))
    else:
        try:
            ax_a, ax_b = axes
        except (TypeError, ValueError):
            raise TypeError(f"tensordot: axes must be an int or a pair of axis sequences, got {axes!r}") from None
        ax_a = tuple(_axis(x, a.ndim, "tensordot") for x in int_tuple(ax_a, "tensordot: axes"))
        ax_b = tuple(_axis(x, b.ndim, "tensordot") for x in int_tuple(ax_b, "tensordot: axes"))
        if len(ax_a) != len(ax_b):
            raise ValueError(f"tensordot: {len(ax_a)} axes of a against {len(ax_b)} of b")
        if len(set(ax_a)) != len(ax_a) or len(set(ax_b)) != len(ax_b):
            raise ValueError(f"tensordot: repeated axis in {axes!r}")
    for i, j in zip(ax_a, ax_b):
        if a.shape[i] != b.shape[j]:
            raise ValueError(f"tensordot: shape mismatch for sum: axis {i} of a {a.shape} has length {a.shape[i]}, "
                             f"axis {j} of b {b.shape} has {b.shape[j]}")
    free_a = [i for i in range(a.ndim) if i not in ax_a]
    free_b = [j for j in range(b.ndim) if j not in ax_b]
    sa, sb = [a.shape[i] for i in free_a], [b.shape[j] for j in free_b]
    k = _prod([a.shape[i] for i in ax_a])
    a2 = _reshaped(_permuted(a, free_a + list(ax_a)), (_prod(sa), k))
    b2 = _reshaped(_permuted(b, list(ax_b) + free_b), (k, _prod(sb)))
    return _reshaped(matmul(a2, b2), sa + sb)


def dot(a, b):
    """numpy.dot: a product with a 0-d operand, the inner product of vectors, matmul of matrices,
    and for N-D a sum over a's last axis and b's second-to-last (b's last when b is 1-D)."""
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim == 0 or b.ndim == 0:
        return multiply(a, b)
    if b.ndim <= 2 and a.ndim <= 2:
        return _checked_matmul(a, b, "dot")
    if a.shape[-1] != b.shape[-1 if b.ndim == 1 else -2]:
        raise ValueError(f"dot: shapes {a.shape} and {b.shape} not aligned: {a.shape[-1]} (last axis of a) != "
                         f"{b.shape[-1 if b.ndim == 1 else -2]}")
    return tensordot(a, b, ((a.ndim - 1,), (max(b.ndim - 2, 0),)))


def _checked_matmul(a, b, op):
    if a.shape[-1] != b.shape[0 if b.ndim == 1 else -2]:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} not aligned: {a.shape[-1]} != "
                         f"{b.shape[0 if b.ndim == 1 else -2]}")
    return matmul(a, b)


def vdot(a, b):
    """numpy.vdot for real tensors: the inner product of the flattened operands (same size)."""
    a, b = as_tensor(a), as_tensor(b)
    if a.size != b.size:
        raise ValueError(f"vdot: operands of {a.size} and {b.size} elements (shapes {a.shape}, {b.shape}) "
                         f"must have the same size")
    return matmul(reshape(a, -1), reshape(b, -1))


def outer(a, b):
    """numpy.outer: out[i, j] = a.flat[i] * b.flat[j], one broadcast multiply."""
    a, b = as_tensor(a), as_tensor(b)
    return multiply(reshape(a, (-1, 1)), reshape(b, (1, -1)))


def inner(a, b):
    """numpy.inner: a sum over the last axes of both (a product with a 0-d operand); the result
    has a's other axes then b's."""
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim == 0 or b.ndim == 0:
        return multiply(a, b)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"inner: the last axes of shapes {a.shape} and {b.shape} differ")
    return tensordot(a, b, ((a.ndim - 1,), (b.ndim - 1,)))


def trace(x, offset=0, axis1=0, axis2=1):
    """Sum along the offset diagonal of axes axis1, axis2, as numpy.trace (the other axes remain)."""
    x = as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"trace: needs at least 2 axes, got a tensor of shape {x.shape}")
    return _sum(diagonal(x, offset, axis1, axis2), -1)


# ---- einsum ----

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _parse(subscripts, shapes):
    """(terms, output): label lists per operand and for the output, '...' expanded into labels of
    its own (integers, aligned to the right across operands, as NumPy broadcasts them), with
    NumPy's rules for the implicit output (the ellipsis axes, then the labels used once, sorted)."""
    if not isinstance(subscripts, str):
        raise TypeError(f"einsum: subscripts must be a string, got {type(subscripts).__name__}")
    s = subscripts.replace(" ", "")
    lhs, arrow, rhs = s.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"einsum: {len(terms)} operand subscripts in {subscripts!r} for {len(shapes)} operands")
    ell = 0
    parsed = []
    for term, shape in zip(terms, shapes):
        if term.count("...") > 1 or term.replace("...", "").count(".") or \
                any(c not in _LETTERS for c in term.replace("...", "")):
            raise ValueError(f"einsum: invalid subscript {term!r} in {subscripts!r} (letters and one '...' only)")
        letters = term.replace("...", "")
        if "..." in term:
            n = len(shape) - len(letters)
            if n < 0:
                raise ValueError(f"einsum: subscript {term!r} has more labels than the {len(shape)} axes of its operand")
            ell = max(ell, n)
            head, _, tail = term.partition("...")
            parsed.append(list(head) + [("...", n, i) for i in range(n)] + list(tail))
        else:
            if len(letters) != len(shape):
                raise ValueError(f"einsum: subscript {term!r} has {len(letters)} labels for an operand with "
                                 f"{len(shape)} axes (shape {shape})")
            parsed.append(list(letters))
    # ellipsis axis i of an operand with n of them is global ellipsis axis ell - n + i
    ell_labels = list(range(ell))
    parsed = [[ell - lab[1] + lab[2] if isinstance(lab, tuple) else lab for lab in t] for t in parsed]
    if arrow:
        if rhs.count("...") > 1 or any(c not in _LETTERS for c in rhs.replace("...", "")):
            raise ValueError(f"einsum: invalid output subscript {rhs!r} in {subscripts!r}")
        letters = rhs.replace("...", "")
        if len(set(letters)) != len(letters):
            raise ValueError(f"einsum: output subscript {rhs!r} repeats a label")
        used = {lab for t in parsed for lab in t}
        for c in letters:
            if c not in used:
                raise ValueError(f"einsum: output label {c!r} does not appear in the operands of {subscripts!r}")
        if "..." in rhs:
            head, _, tail = rhs.partition("...")
            out = list(head) + ell_labels + list(tail)
        elif ell:
            raise ValueError(f"einsum: the operands of {subscripts!r} have '...' axes but the output has no '...'")
        else:
            out = list(letters)
    else:
        counts = {}
        for t in parsed:
            for lab in t:
                if isinstance(lab, str):
                    counts[lab] = counts.get(lab, 0) + 1
        out = ell_labels + sorted(lab for lab, c in counts.items() if c == 1)
    return parsed, out


def _order(terms, out, sizes, n):
    """The pairwise contraction order: NumPy's greedy einsum_path (what np.einsum(optimize=True)
    takes), on zero-stride stand-ins of the operands; left to right past 52 distinct labels."""
    if n < 2:
        return []
    labels = sorted({lab for t in terms for lab in t}, key=str)
    if len(labels) > len(_LETTERS):
        return [(0, 1)] * (n - 1)
    name = {lab: _LETTERS[i] for i, lab in enumerate(labels)}
    spec = ",".join("".join(name[lab] for lab in t) for t in terms) + "->" + "".join(name[lab] for lab in out)
    dummies = [np.broadcast_to(np.zeros(()), tuple(sizes[lab] for lab in t)) for t in terms]
    return [tuple(p) for p in np.einsum_path(spec, *dummies, optimize="greedy")[0][1:]]


class _Planner:
    """Builds einsum's program on symbolic operands (labels and shape), so that running it is
    only the ops' C calls: each step is (op, operand slots, argument)."""

    def __init__(self, sizes):
        self.sizes = sizes
        self.steps = []
        self.count = 0

    def emit(self, op, args, arg, labels):
        self.steps.append((op, args, arg))
        self.count += 1
        return (self.count - 1, list(labels))

    def shape(self, labels):
        return tuple(self.sizes[lab] for lab in labels)

    def diagonals(self, v, shape):
        slot, labels = v
        shape = list(shape)
        while len(set(labels)) != len(labels):
            lab = next(l for l in labels if labels.count(l) > 1)
            i = labels.index(lab)
            j = labels.index(lab, i + 1)
            view = diagonal_view(shape, 0, i, j)
            shape = view[0]
            # the view's arrays made once, with the plan
            arg = (len(view[0]), ffi.new("int64_t[]", view[0] or [0]), view[1], ffi.new("int64_t[]", view[2] or [0]))
            slot, labels = self.emit("strided", (slot,), arg, [l for k, l in enumerate(labels) if k not in (i, j)] + [lab])
        return (slot, labels), shape

    def sum_unneeded(self, v, shape, needed):
        slot, labels = v
        axes = tuple(i for i, lab in enumerate(labels) if lab not in needed)
        if not axes:
            return v, shape
        return (self.emit("sum", (slot,), axes, [l for l in labels if l in needed]),
                [n for i, n in enumerate(shape) if i not in axes])

    def broadcast(self, v, shape, shared):
        want = [self.sizes[lab] if lab in shared else n for lab, n in zip(v[1], shape)]
        if want == list(shape):
            return v, shape
        return self.emit("broadcast", (v[0],), tuple(want), v[1]), want

    def layout(self, v, shape, order, new_shape):
        slot, labels = v
        perm = [labels.index(l) for l in order]
        if perm != list(range(len(perm))):
            slot, _ = self.emit("transpose", (slot,), tuple(perm), order)
        if list(new_shape) != [shape[p] for p in perm]:
            slot, _ = self.emit("reshape", (slot,), tuple(new_shape), order)
        return slot

    def contract(self, a, sa, b, sb, keep):
        """One pairwise step: labels in both that `keep` needs are batch axes (matmul's, kept
        unmerged: it broadcasts them), those it does not are summed by the matmul."""
        a, sa = self.sum_unneeded(a, sa, set(keep) | set(b[1]))
        b, sb = self.sum_unneeded(b, sb, set(keep) | set(a[1]))
        shared = set(a[1]) & set(b[1])
        a, sa = self.broadcast(a, sa, shared)
        b, sb = self.broadcast(b, sb, shared)
        la, lb = a[1], b[1]
        batch = [l for l in la if l in shared and l in keep]
        contr = [l for l in la if l in shared and l not in keep]
        fa = [l for l in la if l not in shared]
        fb = [l for l in lb if l not in shared]
        nb, na_, nf = list(self.shape(batch)), list(self.shape(fa)), list(self.shape(fb))
        labels = batch + fa + fb
        if not contr:      # an outer product (over the batch): one broadcast multiply
            x = self.layout(a, sa, batch + fa, nb + na_ + [1] * len(fb))
            y = self.layout(b, sb, batch + fb, nb + [1] * len(fa) + nf)
            return self.emit("multiply", (x, y), None, labels), nb + na_ + nf
        k = _prod(self.shape(contr))
        x = self.layout(a, sa, batch + fa + contr, nb + [_prod(na_), k])
        y = self.layout(b, sb, batch + contr + fb, nb + [k, _prod(nf)])
        v = self.emit("matmul", (x, y), None, labels)
        if nb + [_prod(na_), _prod(nf)] != nb + na_ + nf:
            v = self.emit("reshape", (v[0],), tuple(nb + na_ + nf), labels)
        return v, nb + na_ + nf


@functools.lru_cache(maxsize=512)
def _plan(subscripts, shapes):
    """einsum's program for these subscripts and operand shapes (cached: a training loop plans
    once). Slots 0..n-1 are the operands; each step appends one slot."""
    terms, out = _parse(subscripts, shapes)
    sizes = {}
    for lab in {lab for t in terms for lab in t}:
        seen = {shape[i] for t, shape in zip(terms, shapes) for i, l in enumerate(t) if l == lab}
        if len(seen - {1}) > 1:
            name = lab if isinstance(lab, str) else "..."
            raise ValueError(f"einsum: label {name!r} has sizes {sorted(seen)} in {subscripts!r} "
                             f"(operand shapes {list(shapes)}); sizes must agree or be 1")
        sizes[lab] = max(seen)
    p = _Planner(sizes)
    p.count = len(shapes)
    ops = [p.diagonals((i, list(t)), shape) for i, (t, shape) in enumerate(zip(terms, shapes))]
    for step in _order(terms, out, sizes, len(shapes)):
        picked = [ops[i] for i in step]
        ops = [o for i, o in enumerate(ops) if i not in step]
        (x, sx) = picked[0]
        for j in range(1, len(picked)):
            (y, sy) = picked[j]
            keep = set(out) | {lab for (_, lo), _ in ops + picked[j + 1:] for lab in lo}
            x, sx = p.contract(x, sx, y, sy, keep)
        ops.append((x, sx))
    (x, sx), = ops
    x, sx = p.sum_unneeded(x, sx, set(out))
    x, sx = p.broadcast(x, sx, set(x[1]))
    perm = [x[1].index(lab) for lab in out]
    if perm != list(range(len(perm))):
        x = p.emit("transpose", (x[0],), tuple(perm), out)
    return tuple(p.steps), x[0]


_RUN = {"strided": lambda v, a: _call(lib.ad_slice, v[0]._h, *a), "sum": lambda v, a: _sum(v[0], a),
        "broadcast": lambda v, a: broadcast_to(v[0], a), "transpose": lambda v, a: transpose(v[0], a),
        "reshape": lambda v, a: reshape(v[0], a), "multiply": lambda v, a: multiply(v[0], v[1]),
        "matmul": lambda v, a: matmul(v[0], v[1])}


def einsum(subscripts, *operands):
    """numpy.einsum on tensors: explicit ('ij,jk->ik') and implicit ('ij,jk') output, '...'
    broadcasting, repeated labels for diagonals and traces ('ii->i', 'ii'), size-1 axes broadcast.
    Contractions go pairwise in NumPy's optimize=True order, each one matmul (BLAS); the plan is
    made once per subscripts and shapes."""
    slots = [as_tensor(t) for t in operands]
    if not slots:
        raise ValueError("einsum: no operands")
    steps, result = _plan(subscripts, tuple(t.shape for t in slots))
    for op, args, arg in steps:
        slots.append(_RUN[op]([slots[i] for i in args], arg))
    x = slots[result]
    return x if result >= len(operands) else x * 1.0     # a fresh tensor, never the operand itself
