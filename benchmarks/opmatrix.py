"""The op-level benchmark matrix (issue 15): every op family x the shapes real code uses.

``python -m benchmarks.opmatrix`` (full: sizes 10^2 to 10^7 elements, a few minutes on 2 cores),
``python -m benchmarks.opmatrix --quick`` (every case at its smallest size and a few at 10^4:
seconds; also run by ``python -m benchmarks --quick``), ``--only sum,softmax`` (cases whose
family or name contains a word), ``--list``.

Each cell is one op at one shape: forward + backward of pyautodiff (leaves made once,
``out.backward(W)`` with a fixed random cotangent W of the output's shape, so every input's VJP
is nontrivial; grads cleared before every call), against the forward and analytic VJP written by
hand in NumPy, and PyTorch eager doing what pyautodiff does. Each cell is one workload for
``harness.run_workload``: gradients (and <out, W>) are checked against the NumPy ones first,
then the contestants are timed in interleaved rounds.

Rules for the hand-written NumPy: what an expert writes, no wasted temporaries (in-place
updates, ``einsum`` for row/column dot products). A forward output may be a view (NumPy's
slices, transposes and reshapes are free); a gradient is a real array of the leaf's shape,
never a zero-stride broadcast view (an AD library must hold a gradient it can accumulate into),
but it may be a view of the cotangent (``g.T``, a block of ``g``), as NumPy gives for free.

Only the standard library is imported at module level (thread counts are pinned before NumPy
loads; see ``benchmarks.run``).
"""

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import shlex
import sys
import types
import zlib

from benchmarks import run as runner

TARGET_MIN_ELEMENTS = 10_000
NUMPY_BOUND, TORCH_BOUND = 1.2, 1.1
GRAD_RTOL = {"float64": 1e-6, "float32": 1e-4}
FULL_SIZES = (100, 10_000, 1_000_000)
BIG = 10_000_000  # full run only, on the rows marked big
WANTED = {"pyautodiff", "numpy", "torch"}
# Ops real code uses that pyautodiff has no public function for (issue 15's matrix needs them);
# issue 17 added the ones listed here before (scatter_add, einsum, outer, take_along_axis,
# squeeze/expand_dims/swapaxes/moveaxis, prod/var/std/cumsum/argmax), which have no cells yet
MISSING = []


@dataclasses.dataclass
class Case:
    """One op family member: how to make its inputs at a size, and each contestant's version.

    shapes(n) -> leaf shapes, about n elements in the largest. consts(n, shapes, rng) -> dict
    of non-differentiable inputs (index arrays, masks). ad(L, c, *leaves) and torch(L, c,
    *leaves) -> output (L: the library under NumPy's names, c: consts in its form);
    forward(c, *x) -> output and vjp(c, g, out, *x) -> [gradient per leaf] in NumPy by hand."""

    family: str
    name: str
    shapes: object
    forward: object
    vjp: object
    ad: object
    torch: object = None  # None: same as ad (operators and NumPy names only)
    consts: object = None
    sizes: tuple = FULL_SIZES
    big: bool = False
    dtype: str = "float64"
    positive: bool = False
    quick: tuple = ()  # sizes run in --quick besides the smallest
    note: str = ""
    # NumPy and PyTorch do no work at all (views both ways): the ratios are shown, but no
    # target applies until pyautodiff has views too (issue 15 leaves copies or views open)
    views: bool = False

    @property
    def label(self):
        tag = f" [{self.dtype}]" if self.dtype != "float64" else ""
        return f"{self.family}: {self.name}{tag}"


# ---- shapes from an element count ----

def _side(n, dims):
    return max(2, round(n ** (1.0 / dims)))


def vec(n):
    return [(n,)]


def mat(n):
    s = _side(n, 2)
    return [(s, s)]


def cube(n):
    s = _side(n, 3)
    return [(s, s, s + s // 4)]


def two(shapes):
    return lambda n: shapes(n) * 2


# ---- the cases ----

def _kd(np, g, x, axis):
    """g with the reduced axes put back as length 1, ready to broadcast against x."""
    axes = range(x.ndim) if axis is None else (axis,) if isinstance(axis, int) else axis
    return np.expand_dims(g, tuple(a % x.ndim for a in axes))


def _count(x, axis):
    if axis is None:
        return x.size
    axes = (axis,) if isinstance(axis, int) else axis
    return math.prod(x.shape[a] for a in axes)


def cases(np):
    """Every case of the matrix, in report order."""
    out = []

    def add(*args, **kwargs):
        out.append(Case(*args, **kwargs))

    # elementwise unary, contiguous
    def tanh_vjp(c, g, y, x):
        d = y * y
        np.subtract(1.0, d, out=d)
        d *= g
        return [d]

    def sigmoid_fwd(c, x):
        y = np.negative(x)
        np.exp(y, out=y)
        y += 1.0
        return np.reciprocal(y, out=y)

    def sigmoid_vjp(c, g, y, x):
        d = np.subtract(1.0, y)
        d *= y
        d *= g
        return [d]

    add("unary", "tanh(x)", vec, lambda c, x: np.tanh(x), tanh_vjp,
        lambda L, c, x: L.tanh(x), big=True, quick=(10_000,))
    add("unary", "exp(x)", vec, lambda c, x: np.exp(x), lambda c, g, y, x: [g * y],
        lambda L, c, x: L.exp(x), big=True)
    add("unary", "log(x)", vec, lambda c, x: np.log(x), lambda c, g, y, x: [g / x],
        lambda L, c, x: L.log(x), positive=True)
    add("unary", "sigmoid(x)", vec, sigmoid_fwd, sigmoid_vjp, lambda L, c, x: L.sigmoid(x))
    add("unary", "relu(x)", vec, lambda c, x: np.maximum(x, 0.0),
        lambda c, g, y, x: [np.where(x > 0, g, 0.0)], lambda L, c, x: L.relu(x))
    add("unary", "tanh(x)", vec, lambda c, x: np.tanh(x), tanh_vjp,
        lambda L, c, x: L.tanh(x), sizes=(10_000, 1_000_000), dtype="float32")

    # elementwise binary, contiguous
    def div_vjp(c, g, out, x, y):
        gx = g / y
        gy = gx * out
        return [gx, np.negative(gy, out=gy)]

    def maximum_vjp(c, g, out, x, y):
        first = x > y
        return [np.where(first, g, 0.0), np.where(first, 0.0, g)]

    add("binary", "x + y", two(vec), lambda c, x, y: x + y, lambda c, g, o, x, y: [g, g],
        lambda L, c, x, y: x + y, big=True)
    add("binary", "x * y", two(vec), lambda c, x, y: x * y,
        lambda c, g, o, x, y: [g * y, g * x], lambda L, c, x, y: x * y, big=True,
        quick=(10_000,))
    add("binary", "x / y", two(vec), lambda c, x, y: x / y, div_vjp,
        lambda L, c, x, y: x / y, positive=True)
    add("binary", "maximum(x, y)", two(vec), lambda c, x, y: np.maximum(x, y), maximum_vjp,
        lambda L, c, x, y: L.maximum(x, y))
    add("binary", "x * y", two(vec), lambda c, x, y: x * y,
        lambda c, g, o, x, y: [g * y, g * x], lambda L, c, x, y: x * y,
        sizes=(10_000, 1_000_000), dtype="float32")

    # broadcasting on either side
    def col_row(n):
        s = _side(n, 2)
        return [(s, 1), (1, s)]

    def col_row_vjp(c, g, y, a, b):
        d = y * y
        np.subtract(1.0, d, out=d)
        d *= g
        return [d.sum(axis=1, keepdims=True), d.sum(axis=0, keepdims=True)]

    add("broadcast", "tanh(col + row), (n,1)+(1,n)", col_row, lambda c, a, b: np.tanh(a + b),
        col_row_vjp, lambda L, c, a, b: L.tanh(a + b), big=True, quick=(10_000,))

    def col_mat(n):
        s = _side(n, 2)
        return [(s, 1), (s, s)]

    add("broadcast", "(n,1) * (n,m)", col_mat, lambda c, a, b: a * b,
        lambda c, g, o, a, b: [np.einsum("ij,ij->i", g, b)[:, None], g * a],
        lambda L, c, a, b: a * b, big=True)

    def row_mat(n):
        s = _side(n, 2)
        return [(s,), (s, s)]

    add("broadcast", "(m,) * (n,m)", row_mat, lambda c, a, b: a * b,
        lambda c, g, o, a, b: [np.einsum("ij,ij->j", g, b), g * a],
        lambda L, c, a, b: a * b, big=True)

    def scalar_mat(n):
        return [()] + mat(n)

    add("broadcast", "scalar leaf * (n,m)", scalar_mat, lambda c, a, b: a * b,
        lambda c, g, o, a, b: [np.vdot(g, b), g * a], lambda L, c, a, b: a * b)

    # transposed and sliced inputs
    def xt_x_vjp(c, g, o, x):
        d = g + g.T
        d *= x.T
        return [d]

    add("layout", "x.T * x", mat, lambda c, x: x.T * x, xt_x_vjp, lambda L, c, x: x.T * x,
        big=True, quick=(10_000,))
    add("layout", "x.T * y", two(mat), lambda c, x, y: x.T * y,
        lambda c, g, o, x, y: [(g * y).T, g * x.T], lambda L, c, x, y: x.T * y)

    def step_slice_vjp(c, g, o, x):
        d = np.zeros_like(x)
        d[:, ::2] = g
        return [d]

    add("layout", "x[:, ::2]", mat, lambda c, x: x[:, ::2], step_slice_vjp,
        lambda L, c, x: x[:, ::2], big=True, quick=(10_000,),
        note="NumPy's forward is a view")

    def rows_slice_vjp(c, g, o, x):
        d = np.zeros_like(x)
        d[::2] = g
        return [d]

    add("layout", "x[::2]", mat, lambda c, x: x[::2], rows_slice_vjp, lambda L, c, x: x[::2],
        note="NumPy's forward is a view")

    def inner_slice_vjp(c, g, o, x):
        d = np.zeros_like(x)
        d[1:-1, 1:-1] = g
        return [d]

    add("layout", "x[1:-1, 1:-1]", mat, lambda c, x: x[1:-1, 1:-1], inner_slice_vjp,
        lambda L, c, x: x[1:-1, 1:-1], note="NumPy's forward is a view")
    add("layout", "transpose(x) (2-D)", mat, lambda c, x: x.T, lambda c, g, o, x: [g.T],
        lambda L, c, x: L.transpose(x), views=True)
    add("layout", "transpose(x, (2,0,1))", cube, lambda c, x: x.transpose(2, 0, 1),
        lambda c, g, o, x: [g.transpose(1, 2, 0)], lambda L, c, x: L.transpose(x, (2, 0, 1)),
        views=True)
    add("layout", "reshape(x, (m, n))", mat, lambda c, x: x.reshape(x.shape[::-1]),
        lambda c, g, o, x: [g.reshape(x.shape)], lambda L, c, x: L.reshape(x, x.shape[::-1]),
        views=True)

    # reductions over the first, a middle and the last axis, several axes, all (3-D)
    def reduce_vjp(kind):
        def vjp(c, g, out, x, axis):
            g = _kd(np, g, x, axis)
            d = np.empty_like(x)
            if kind == "sum":
                d[...] = g
            elif kind == "mean":
                np.multiply(g, 1.0 / _count(x, axis), out=d)
            else:  # max/min: the input has no ties, so the arg-extremum gets all of g
                np.multiply(x == _kd(np, out, x, axis), g, out=d)
            return [d]
        return vjp

    for kind in ("sum", "mean", "max", "min"):
        for axis in (0, 1, 2, (0, 2), (1, 2), None):
            big = kind == "sum" and axis in (0, 2)
            reduce = getattr(np, {"max": "amax", "min": "amin"}.get(kind, kind))
            vjp = reduce_vjp(kind)
            add("reduce", f"{kind}(x, axis={axis}), 3-D", cube,
                lambda c, x, r=reduce, a=axis: r(x, axis=a),
                lambda c, g, o, x, v=vjp, a=axis: v(c, g, o, x, a),
                lambda L, c, x, k=kind, a=axis: getattr(L, k)(x, a), big=big,
                quick=(10_000,) if kind in ("sum", "max") and axis == 0 else ())
    add("reduce", "sum(x, axis=0), 3-D", cube, lambda c, x: x.sum(axis=0),
        lambda c, g, o, x: reduce_vjp("sum")(c, g, o, x, 0), lambda L, c, x: L.sum(x, 0),
        sizes=(10_000, 1_000_000), dtype="float32")
    add("reduce", "max(Q, axis=0), Q (4096,512)", lambda n: [(4096, 512)],
        lambda c, x: x.max(axis=0), lambda c, g, o, x: reduce_vjp("max")(c, g, o, x, 0),
        lambda L, c, x: L.max(x, 0), sizes=(4096 * 512,))

    # matrix-vector, vector-matrix, outer, matmul, batched matmul
    def matvec_shapes(n):
        return [(n // 128, 128), (128,)]

    add("matmul", "A @ v, A (n,128)", matvec_shapes, lambda c, a, v: a @ v,
        lambda c, g, o, a, v: [np.outer(g, v), g @ a], lambda L, c, a, v: a @ v,
        sizes=(1_280, 16_392 * 128, 10_000_000 // 128 * 128), quick=(16_392 * 128,))

    def vecmat_shapes(n):
        return [(128,), (128, n // 128)]

    add("matmul", "v @ A, A (128,n)", vecmat_shapes, lambda c, v, a: v @ a,
        lambda c, g, o, v, a: [a @ g, np.outer(v, g)], lambda L, c, v, a: v @ a,
        sizes=(1_280, 12_800, 2_048_000))

    def square_mv(n):
        s = _side(n, 2)
        return [(s, s), (s,)]

    add("matmul", "A @ v, A square", square_mv, lambda c, a, v: a @ v,
        lambda c, g, o, a, v: [np.outer(g, v), g @ a], lambda L, c, a, v: a @ v,
        sizes=(100, 10_000, 4_000_000))

    def outer_shapes(n):
        s = _side(n, 2)
        return [(s, 1), (1, s)]

    add("matmul", "outer (n,1) @ (1,n)", outer_shapes, lambda c, u, w: u @ w,
        lambda c, g, o, u, w: [g @ w.T, u.T @ g], lambda L, c, u, w: u @ w,
        sizes=(100, 10_000, 1_000_000))

    def square_shapes(n):
        return mat(n) * 2

    add("matmul", "A @ B square", square_shapes, lambda c, a, b: a @ b,
        lambda c, g, o, a, b: [g @ b.T, a.T @ g], lambda L, c, a, b: a @ b,
        sizes=(100, 10_000, 250_000), dtype="float64")
    add("matmul", "A @ v, A (n,128)", matvec_shapes, lambda c, a, v: a @ v,
        lambda c, g, o, a, v: [np.outer(g, v), g @ a], lambda L, c, a, v: a @ v,
        sizes=(16_392 * 128,), dtype="float32")

    def bmm_shapes(n):
        return [(25, n // 250, 10), (25, 10, 10)]

    def bmm_vjp(c, g, o, a, b):
        return [g @ b.transpose(0, 2, 1), a.transpose(0, 2, 1) @ g]

    add("matmul", "batched (25,n,10) @ (25,10,10)", bmm_shapes, lambda c, a, b: a @ b,
        bmm_vjp, lambda L, c, a, b: a @ b, sizes=(2_500, 250_000, 2_500_000),
        quick=(2_500,))

    def bcast_batch_shapes(n):
        return [(8, n // 256, 32), (32, 32)]

    def bcast_batch_vjp(c, g, o, a, b):
        k, m = b.shape
        return [g @ b.T, a.reshape(-1, k).T @ g.reshape(-1, m)]

    add("matmul", "broadcast batch (8,n,32) @ (32,32)", bcast_batch_shapes,
        lambda c, a, b: a @ b, bcast_batch_vjp, lambda L, c, a, b: a @ b,
        sizes=(2_560, 256_000, 2_560_000))

    def bcast_both_shapes(n):
        return [(4, 1, n // 64, 16), (1, 3, 16, 16)]

    def bcast_both_vjp(c, g, o, a, b):
        return [(g @ b.transpose(0, 1, 3, 2)).sum(axis=1, keepdims=True),
                (a.transpose(0, 1, 3, 2) @ g).sum(axis=0, keepdims=True)]

    add("matmul", "broadcast batch (4,1,n,16) @ (1,3,16,16)", bcast_both_shapes,
        lambda c, a, b: a @ b, bcast_both_vjp, lambda L, c, a, b: a @ b,
        sizes=(1_024, 102_400, 1_024_000))

    # gather / scatter by integer arrays, boolean masks
    def rows64(n):
        return [(max(n // 64, 2), 64)]

    def row_index(n, shapes, rng):
        rows = shapes[0][0]
        return {"idx": rng.integers(0, rows, size=rows * 10)}

    def gather_rows_vjp(c, g, o, x):
        d = np.zeros_like(x)
        np.add.at(d, c["idx"], g)
        return [d]

    add("index", "x[idx] rows, 10x as many rows as x", rows64, lambda c, x: x[c["idx"]],
        gather_rows_vjp, lambda L, c, x: x[c["idx"]], consts=row_index,
        sizes=(640, 64_000, 640_000), quick=(64_000,),
        note="NumPy's backward: np.add.at")

    def col_index(n, shapes, rng):
        cols = shapes[0][1]
        return {"idx": rng.integers(0, cols, size=cols // 2)}

    def gather_cols_vjp(c, g, o, x):
        d = np.zeros_like(x)
        np.add.at(d, (slice(None), c["idx"]), g)
        return [d]

    add("index", "x[:, idx] columns", mat, lambda c, x: x[:, c["idx"]], gather_cols_vjp,
        lambda L, c, x: x[:, c["idx"]], consts=col_index, note="NumPy's backward: np.add.at")

    def mask_of(n, shapes, rng):
        return {"mask": rng.random(shapes[0]) < 0.5}

    def mask_vjp(c, g, o, x):
        d = np.zeros_like(x)
        d[c["mask"]] = g
        return [d]

    add("index", "x[mask], half true", mat, lambda c, x: x[c["mask"]], mask_vjp,
        lambda L, c, x: x[c["mask"]], consts=mask_of)

    # softmax, log_softmax, logsumexp on every axis
    def softmax_fwd(x, axis):
        y = x - x.max(axis=axis, keepdims=True)
        np.exp(y, out=y)
        y /= y.sum(axis=axis, keepdims=True)
        return y

    def softmax_vjp(c, g, y, x, axis):
        d = g * y
        s = d.sum(axis=axis, keepdims=True)
        np.subtract(g, s, out=d)
        d *= y
        return [d]

    def log_softmax_fwd(x, axis):
        y = x - x.max(axis=axis, keepdims=True)
        y -= np.log(np.exp(y).sum(axis=axis, keepdims=True))
        return y

    def log_softmax_vjp(c, g, y, x, axis):
        d = np.exp(y)
        d *= g.sum(axis=axis, keepdims=True)
        np.subtract(g, d, out=d)
        return [d]

    def logsumexp_fwd(x, axis):
        m = x.max(axis=axis, keepdims=True)
        e = np.exp(x - m)
        return np.squeeze(m + np.log(e.sum(axis=axis, keepdims=True)), axis=axis)

    def logsumexp_vjp(c, g, out, x, axis):
        d = x - np.expand_dims(out, axis)
        np.exp(d, out=d)
        d *= np.expand_dims(g, axis)
        return [d]

    norm_shapes = {"2-D": mat, "3-D": cube}
    for op, fwd, vjp in (("softmax", softmax_fwd, softmax_vjp),
                         ("log_softmax", log_softmax_fwd, log_softmax_vjp),
                         ("logsumexp", logsumexp_fwd, logsumexp_vjp)):
        for dims, axes in (("2-D", (0, 1)), ("3-D", (1,))):
            for axis in axes:
                add("softmax", f"{op}(x, axis={axis}), {dims}", norm_shapes[dims],
                    lambda c, x, f=fwd, a=axis: f(x, a),
                    lambda c, g, o, x, v=vjp, a=axis: v(c, g, o, x, a),
                    lambda L, c, x, name=op, a=axis: getattr(L, name)(x, a),
                    big=(op == "softmax" and dims == "2-D"),
                    quick=(10_000,) if (op, axis, dims) == ("logsumexp", 0, "2-D") else ())
    add("softmax", "logsumexp(Z, axis=0), Z (25,10000)", lambda n: [(25, 10_000)],
        lambda c, x: logsumexp_fwd(x, 0), lambda c, g, o, x: logsumexp_vjp(c, g, o, x, 0),
        lambda L, c, x: L.logsumexp(x, 0), sizes=(250_000,))
    add("softmax", "logsumexp(Z, axis=1), Z (25,10000)", lambda n: [(25, 10_000)],
        lambda c, x: logsumexp_fwd(x, 1), lambda c, g, o, x: logsumexp_vjp(c, g, o, x, 1),
        lambda L, c, x: L.logsumexp(x, 1), sizes=(250_000,))
    add("softmax", "softmax(S, axis=0), S (512,1000)", lambda n: [(512, 1000)],
        lambda c, x: softmax_fwd(x, 0), lambda c, g, o, x: softmax_vjp(c, g, o, x, 0),
        lambda L, c, x: L.softmax(x, 0), sizes=(512_000,))
    for op, fwd, vjp in (("softmax", softmax_fwd, softmax_vjp),
                         ("log_softmax", log_softmax_fwd, log_softmax_vjp),
                         ("logsumexp", logsumexp_fwd, logsumexp_vjp)):
        add("softmax", f"{op}(x, axis=1), 2-D", mat, lambda c, x, f=fwd: f(x, 1),
            lambda c, g, o, x, v=vjp: v(c, g, o, x, 1),
            lambda L, c, x, name=op: getattr(L, name)(x, 1),
            sizes=(10_000, 1_000_000), dtype="float32")

    # concatenate / split on every axis
    def quarters(n):
        s = _side(n // 4, 2)
        return [(s, s)] * 4

    for axis in (0, 1):
        add("concat", f"concatenate(4 x (n,n), axis={axis})", quarters,
            lambda c, *xs, a=axis: np.concatenate(xs, axis=a),
            lambda c, g, o, *xs, a=axis: np.split(g, 4, axis=a),
            lambda L, c, *xs, a=axis: L.concatenate(list(xs), a),
            big=True, quick=(10_000,) if axis == 1 else (),
            note="NumPy's backward: views of the cotangent")
    add("concat", "concatenate(4 x (2048,256), axis=1)", lambda n: [(2048, 256)] * 4,
        lambda c, *xs: np.concatenate(xs, axis=1),
        lambda c, g, o, *xs: np.split(g, 4, axis=1),
        lambda L, c, *xs: L.concatenate(list(xs), 1), sizes=(4 * 2048 * 256,))
    for axis in (0, 2):
        add("concat", f"stack(4 x (n,n), axis={axis})", quarters,
            lambda c, *xs, a=axis: np.stack(xs, axis=a),
            lambda c, g, o, *xs, a=axis: [g[(slice(None),) * a + (i,)] for i in range(4)],
            lambda L, c, *xs, a=axis: L.stack(list(xs), a),
            note="NumPy's backward: views of the cotangent")
    for axis in (0, 1, 2):
        add("concat", f"split(x, 4, axis={axis}), 3-D", lambda n: [
            tuple(4 * max(1, s // 4) for s in cube(n)[0])],
            lambda c, x, a=axis: np.split(x, 4, axis=a),
            lambda c, g, o, x, a=axis: [np.concatenate(g, axis=a)],
            lambda L, c, x, a=axis: L.split(x, 4, a), quick=(10_000,) if axis == 1 else (),
            note="a list of outputs: gradients by autograd.grad; NumPy's forward is views")
    return out


# ---- a cell as a harness workload ----

def _elements(shapes, out_shapes):
    return max(math.prod(s) for s in list(shapes) + list(out_shapes))


def _out_shapes(out):
    return [o.shape for o in out] if isinstance(out, list) else [out.shape]


def _make_data(case, n, np):
    rng = np.random.default_rng(zlib.crc32(f"{case.label} {n}".encode()))
    shapes = case.shapes(n)
    dtype = np.dtype(case.dtype)
    leaves = [(rng.uniform(0.5, 2.0, size=s) if case.positive else rng.normal(size=s))
              .astype(dtype) for s in shapes]
    consts = case.consts(n, shapes, rng) if case.consts else {}
    out = case.forward(consts, *leaves)
    outs = out if isinstance(out, list) else [out]
    cotangents = [rng.normal(size=o.shape).astype(dtype) for o in outs]
    return {"leaves": leaves, "consts": consts, "shapes": shapes,
            "out_shapes": _out_shapes(out), "multi": isinstance(out, list),
            "cotangent": cotangents if isinstance(out, list) else cotangents[0]}


def _vdot(outs, cotangents, np):
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    cotangents = cotangents if isinstance(cotangents, list) else [cotangents]
    return float(sum(np.vdot(np.asarray(o, dtype=np.float64), w)
                     for o, w in zip(outs, cotangents)))


def _builders(case, np):
    from benchmarks import peers
    from benchmarks.harness import Cell
    from benchmarks.workloads import common

    def numpy_cell(data, size):
        c, x, g = data["consts"], data["leaves"], data["cotangent"]

        def step():
            out = case.forward(c, *x)
            return out, case.vjp(c, g, out, *x)

        return Cell(step, lambda res: (_vdot(res[0], g, np), list(res[1])))

    def multi_cell(lib, leaves, fn, cotangents, to_numpy):
        # several outputs: gradients by lib's autograd.grad (one sweep), as torch.autograd.grad
        def step():
            outs = fn(*leaves)
            return outs, lib.autograd.grad(outs, leaves, grad_outputs=cotangents)

        def grads(res):
            return (_vdot([to_numpy(o) for o in res[0]], [to_numpy(w) for w in cotangents], np),
                    [to_numpy(t) for t in res[1]])

        return Cell(step, grads)

    def pyautodiff_cell(data, size):
        ad = peers.load("pyautodiff")
        c = data["consts"]
        fn = lambda *xs: case.ad(ad, c, *xs)  # noqa: E731
        if data["multi"]:
            leaves = [ad.tensor(v, requires_grad=True) for v in data["leaves"]]
            return multi_cell(ad, leaves, fn, [ad.tensor(w) for w in data["cotangent"]],
                              lambda t: t.numpy())
        return common.pyautodiff_cell(data["leaves"], fn, cotangent=data["cotangent"])

    def torch_cell(data, size):
        torch = peers.load("torch")
        names = common.TorchNames(torch)
        c = {k: torch.from_numpy(v) for k, v in data["consts"].items()}
        fn = lambda *xs: (case.torch or case.ad)(names, c, *xs)  # noqa: E731
        if data["multi"]:
            leaves = [torch.tensor(v, requires_grad=True) for v in data["leaves"]]
            return multi_cell(torch, leaves, fn, [torch.from_numpy(w) for w in data["cotangent"]],
                              lambda t: t.detach().numpy())
        return common.torch_cell(data["leaves"], fn, cotangent=data["cotangent"])

    return {"numpy": numpy_cell, "pyautodiff": pyautodiff_cell, "torch": torch_cell}


def workload(case, n, np):
    """One cell of the matrix as a workload module for harness.run_workload."""
    data = _make_data(case, n, np)
    elements = _elements(data["shapes"], data["out_shapes"])
    shape_text = " ".join(str(tuple(s)) for s in data["shapes"])
    targets = {}
    if elements >= TARGET_MIN_ELEMENTS and not case.views:
        targets = {"numpy": {"max_ratio": NUMPY_BOUND,
                             "text": f"within {NUMPY_BOUND:g}x of hand-written NumPy"},
                   "torch": {"max_ratio": TORCH_BOUND,
                             "text": f"within {TORCH_BOUND:g}x of PyTorch eager"}}
    return types.SimpleNamespace(
        NAME=f"{case.label} @ {shape_text}",
        TITLE=case.label,
        PER_OP=False,
        HAND_LABEL="hand-written NumPy (forward + analytic VJP)",
        LEAVES=[str(tuple(s)) for s in data["shapes"]],
        ISOLATED=set(),
        NOT_APPLICABLE={},
        TARGETS=targets,
        NOTES=[case.note] if case.note else [],
        BUILDERS=_builders(case, np),
        size=lambda quick: {"n": n},
        n_ops=lambda size: None,
        make_data=lambda size: data,
        # for the report
        case=case, elements=elements, shape_text=shape_text, nominal=n,
    )


def plan(quick, only=""):
    """(case, n) pairs of this run, in report order."""
    import numpy as np

    words = [w.strip().lower() for w in only.split(",") if w.strip()]
    chosen = []
    for case in cases(np):
        if words and not any(w in case.label.lower() for w in words):
            continue
        sizes = list(case.sizes) + ([BIG] if case.big and not quick else [])
        if quick:  # the smallest size when small, and the sizes the case asks for
            small = [min(case.sizes)] if min(case.sizes) <= 100_000 else []
            sizes = sorted({*small, *case.quick})
        chosen += [(case, n) for n in sizes]
    return chosen


# ---- the run ----

CONFIG = dict(budget_s=0.5, min_samples=5, max_samples=30, min_sample_s=0.02,
              call_cap_s=40.0, slow_call_s=2.0, reuse_first_call_s=8.0, child_timeout_s=150.0)
QUICK_CONFIG = dict(budget_s=0.02, min_samples=3, max_samples=3, min_sample_s=0.002,
                    call_cap_s=10.0, slow_call_s=0.5, reuse_first_call_s=2.0,
                    child_timeout_s=40.0)


def run(quick, only="", keep_openblas_env=False, log=sys.stderr):
    """Measure the matrix; returns (results, cfg). Thread settings must already be pinned."""
    import numpy as np

    from benchmarks import harness, peers

    base = harness.Config(quick=quick, keep_openblas_env=keep_openblas_env,
                          **(QUICK_CONFIG if quick else CONFIG))
    for key in WANTED:  # imported before the freeze (a missing peer is reported per cell)
        try:
            peers.load(key)
        except peers.Unavailable:
            pass
    # Frozen around all the cells, not per cell: each small workload would otherwise pay two
    # full collections over torch's objects. Frozen again after each cell, as torch and
    # pyautodiff create long-lived objects (op overloads, caches) on first use.
    gc.collect()
    results = []
    try:
        for case, n in plan(quick, only):
            gc.freeze()
            w = workload(case, n, np)
            cfg = dataclasses.replace(base, grad_rtol=GRAD_RTOL[case.dtype])
            result = harness.run_workload(w, cfg, WANTED, _no_isolation, freeze=False)
            result.update(family=case.family, case=case.label, shape=w.shape_text,
                          dtype=case.dtype, elements=w.elements, nominal=n,
                          targets_apply=bool(w.TARGETS), views=case.views)
            results.append(result)
            if log is not None:
                print(f"  {_row_text(result)}", file=log, flush=True)
    finally:
        gc.unfreeze()
    return results, base


def _no_isolation(name, key, timeout_s, memory_only=False):
    raise AssertionError("no cell of the op matrix runs isolated")


# ---- report ----

def _cells(result):
    return {c["contestant"]: c for c in result["cells"]}


def ratio(result, key):
    cells = _cells(result)
    mine, other = cells.get("pyautodiff"), cells.get(key)
    if not mine or not other or mine["status"] != "ok" or other["status"] != "ok":
        return None
    return mine["median_s"] / other["median_s"]


def verdict(result, key, bound):
    r = ratio(result, key)
    if result.get("views"):
        return "— (views)"
    if not result["targets_apply"]:
        return "—"
    if r is None:
        return "not measured"
    return "met" if r <= bound else "**NOT met**"


def _t(result, key):
    from benchmarks import report

    cell = _cells(result).get(key)
    if cell is None:
        return "—"
    if cell["status"] != "ok":
        return report._short(f"{cell['status']}: {cell.get('reason', '')}", 50)
    return report.format_time(result, cell["median_s"])


def _r(value):
    return "—" if value is None else f"{value:.2f}"


def _row_text(result):
    return (f"{result['case']:52s} {result['shape']:28s} pyautodiff {_t(result, 'pyautodiff'):>9s}"
            f"  /numpy {_r(ratio(result, 'numpy')):>6s}  /torch {_r(ratio(result, 'torch')):>6s}")


def _worst(results, key, count):
    rows = [(ratio(r, key), r) for r in results if r["targets_apply"]]
    rows = [(v, r) for v, r in rows if v is not None]
    return sorted(rows, key=lambda pair: -pair[0])[:count]


def _table(results):
    lines = ["| family | case | shapes | elements | pyautodiff | NumPy | PyTorch | / NumPy "
             "| / PyTorch | ≤ 1.2x NumPy | ≤ 1.1x PyTorch |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        lines.append(
            f"| {r['family']} | {r['case'].split(': ', 1)[1]} | {r['shape']} | {r['elements']:,} "
            f"| {_t(r, 'pyautodiff')} | {_t(r, 'numpy')} | {_t(r, 'torch')} "
            f"| {_r(ratio(r, 'numpy'))} | {_r(ratio(r, 'torch'))} "
            f"| {verdict(r, 'numpy', NUMPY_BOUND)} | {verdict(r, 'torch', TORCH_BOUND)} |")
    return lines


def _worst_table(results, key, count):
    other = {"numpy": "NumPy", "torch": "PyTorch"}[key]
    lines = [f"| # | case | shapes | elements | pyautodiff / {other} |", "|---:|---|---|---:|---:|"]
    for index, (value, r) in enumerate(_worst(results, key, count), 1):
        lines.append(f"| {index} | {r['case']} | {r['shape']} | {r['elements']:,} | {value:.2f} |")
    return lines


def summary(results):
    counts = {}
    for key, bound in (("numpy", NUMPY_BOUND), ("torch", TORCH_BOUND)):
        judged = [ratio(r, key) for r in results if r["targets_apply"]]
        judged = [v for v in judged if v is not None]
        counts[key] = {"judged": len(judged), "met": sum(v <= bound for v in judged)}
    return counts


def render(meta, results, plot_note):
    from benchmarks import report

    counts = summary(results)
    lines = ["# pyautodiff op matrix", ""] + report.header(meta) + [""]
    if meta["mode"] == "quick":
        lines += ["**Quick mode**: every case at its smallest size and a few at 10^4, few "
                  "repeats. It shows the matrix works (gradients agree); its ratios are not "
                  "the issue's targets.", ""]
    lines += [
        "Each cell: one op, forward + backward (`out.backward(W)`, W a fixed random cotangent "
        "of the output's shape), against the forward and analytic VJP written by hand in NumPy "
        "and PyTorch eager doing the same; every contestant's <out, W> and gradients are checked "
        "against NumPy's first (normwise relative error ≤ 1e-6 in float64, 1e-4 in float32). "
        "Ratio = pyautodiff's median time / the other's in the same interleaved rounds "
        "(below 1: pyautodiff faster). Targets (issue 15), for cells of ≥ 10^4 elements (the "
        "largest input or output): ≤ 1.2x hand-written NumPy and ≤ 1.1x PyTorch eager.",
        "",
        f"Targets met: vs NumPy {counts['numpy']['met']} of {counts['numpy']['judged']} cells, "
        f"vs PyTorch {counts['torch']['met']} of {counts['torch']['judged']}.",
        "",
        "## Worst ten cells at ≥ 10^4 elements, against hand-written NumPy", ""]
    lines += _worst_table(results, "numpy", 10)
    lines += ["", "## Worst ten cells at ≥ 10^4 elements, against PyTorch eager", ""]
    lines += _worst_table(results, "torch", 10)
    views = [r for r in results if r.get("views")]
    if views:
        lines += ["", "## Layout ops NumPy and PyTorch do as views (no work; no target applies)",
                  "", "| case | shapes | pyautodiff | / NumPy | / PyTorch |", "|---|---|---:|---:|---:|"]
        lines += [f"| {r['case']} | {r['shape']} | {_t(r, 'pyautodiff')} | {_r(ratio(r, 'numpy'))} "
                  f"| {_r(ratio(r, 'torch'))} |" for r in views]
    lines += ["", "## Every cell", ""] + _table(results)
    notes = sorted({n for r in results for n in r["notes"]})
    lines += ["", "Notes on the NumPy baselines: a forward output may be a view (NumPy's slices, "
              "transposes, reshapes and splits are free); a gradient is a real array of the "
              "leaf's shape, never a zero-stride broadcast view, but may be a view of the "
              "cotangent (`g.T`, a block of `g`). max/min inputs have no ties. Per-case: "
              + "; ".join(f"{n}" for n in notes) + ".", "",
              f"Plot: {plot_note}", ""]
    if MISSING:
        lines += ["Not in the library, so not in the matrix: " + "; ".join(MISSING) + ".", ""]
    return "\n".join(lines)


def heatmap(results, path):
    from benchmarks import report

    plt = report.pyplot()
    if plt is None:
        return None, report.NO_MATPLOTLIB
    import numpy as np
    from matplotlib.colors import LogNorm

    labels = list(dict.fromkeys(r["case"] for r in results))
    magnitudes = sorted({int(round(math.log10(r["elements"]))) for r in results})
    figure, axes = plt.subplots(1, 2, figsize=(15, 0.9 + 0.24 * len(labels)), sharey=True)
    for axis, key, title in ((axes[0], "numpy", "pyautodiff / hand-written NumPy"),
                             (axes[1], "torch", "pyautodiff / PyTorch eager")):
        grid = np.full((len(labels), len(magnitudes)), np.nan)
        for r in results:
            value = ratio(r, key)
            if value is not None:
                i = labels.index(r["case"])
                j = magnitudes.index(int(round(math.log10(r["elements"]))))
                grid[i, j] = value if np.isnan(grid[i, j]) else max(grid[i, j], value)
        image = axis.imshow(grid, cmap="RdYlGn_r", norm=LogNorm(vmin=0.25, vmax=4.0),
                            aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
        axis.set_xticks(range(len(magnitudes)), [f"~1e{m}" for m in magnitudes], fontsize=7)
        axis.set_yticks(range(len(labels)), labels, fontsize=6)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("elements (largest input or output)", fontsize=7)
        figure.colorbar(image, ax=axis, fraction=0.04)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path, f"`{os.path.basename(path)}` (ratio heat map, log colour scale; green: faster)"


def write(meta, results, directory, stem):
    os.makedirs(directory, exist_ok=True)
    written = []
    png, plot_note = heatmap(results, os.path.join(directory, f"{stem}.png"))
    if png:
        written.append(png)
    document = {"meta": meta, "summary": summary(results), "cells": results,
                "worst_vs_numpy": [{"case": r["case"], "shape": r["shape"], "ratio": v}
                                   for v, r in _worst(results, "numpy", 10)],
                "worst_vs_torch": [{"case": r["case"], "shape": r["shape"], "ratio": v}
                                   for v, r in _worst(results, "torch", 10)],
                "plot": plot_note}
    for suffix, text in (("json", json.dumps(document, indent=1, default=float) + "\n"),
                         ("md", render(meta, results, plot_note))):
        path = os.path.join(directory, f"{stem}.{suffix}")
        with open(path, "w") as handle:
            handle.write(text)
        written.append(path)
    return written


def measure_and_write(quick, only="", keep_openblas_env=False, command="", removed=None,
                      kept=None, stem=None):
    """Run the matrix and write its report; returns the failures (wrong gradients, pyautodiff
    broken) as strings."""
    from benchmarks import peers, report

    started = datetime.datetime.now().astimezone()
    loadavg_start = os.getloadavg()
    results, cfg = run(quick, only, keep_openblas_env)
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "mode": "quick" if quick else "full",
        "loadavg_start": loadavg_start,
        "environment": {"set": {v: os.environ.get(v) for v in runner.THREAD_VARIABLES},
                        "removed_for_this_run": removed or {}, "kept": kept or {}},
        "config": dict(vars(cfg), grad_rtol=GRAD_RTOL["float64"]),
    }
    meta.update(runner.machine_info(), versions=runner.versions(peers),
                threads=peers.thread_settings(), loadavg_end=os.getloadavg(),
                elapsed_s=(datetime.datetime.now().astimezone() - started).total_seconds())
    stem = stem or ("opmatrix_partial" if only else "opmatrix_quick" if quick else "opmatrix")
    for path in write(meta, results, os.path.join(runner.ROOT, "benchmarks", "results"), stem):
        print(f"wrote {os.path.relpath(path, os.getcwd())}", file=sys.stderr)
    counts = summary(results)
    print(f"op matrix: {len(results)} cells in {meta['elapsed_s']:.0f} s; targets met: vs NumPy "
          f"{counts['numpy']['met']}/{counts['numpy']['judged']}, vs PyTorch "
          f"{counts['torch']['met']}/{counts['torch']['judged']}", file=sys.stderr)
    return report.failures(results, None)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.opmatrix",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="every case at its smallest size, a few at 10^4; seconds")
    parser.add_argument("--only", default="",
                        help="comma-separated words; cases whose 'family: name' contains one")
    parser.add_argument("--output", default="", help="file stem under benchmarks/results/")
    parser.add_argument("--keep-openblas-env", action="store_true")
    parser.add_argument("--list", action="store_true", help="list the cells and exit")
    args = parser.parse_args(argv)
    removed, kept = runner.pin_before_numpy("benchmarks.opmatrix", argv, args.keep_openblas_env)
    if args.list:
        for case, n in plan(args.quick, args.only):
            print(f"{case.label:60s} {' '.join(map(str, case.shapes(n)))}")
        return 0
    command = " ".join(["python -m benchmarks.opmatrix", *map(shlex.quote, argv)])
    failures = measure_and_write(args.quick, args.only, args.keep_openblas_env, command,
                                 removed, kept, args.output or None)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
