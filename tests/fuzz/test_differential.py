"""Differential fuzzing: random programs of public ops checked against the NumPy reference.

A program draws leaves (float32 or float64, 0-d to 5-D, 0-size and 1-size axes, values that
include 0, -0, negatives, huge and tiny magnitudes and, less often, inf and NaN), then applies a
random sequence of ops from the op table, each to earlier values or to new leaves and constants
of broadcast-compatible shapes, and finally runs backward() from the last value with a random
cotangent (zeros included, for the NaN-safety rule). Checked:

- Forward, op by op: each op's C output against the reference applied to the same C inputs,
  evaluated in float64 and rounded to the op's dtype. Comparing per op keeps errors from
  compounding along the program, so the tolerance of every op is its own (below).
- Gradients: every leaf's .grad against the reference VJPs chained backwards over the C forward
  values, in the program's dtypes (so intermediate overflow matches float32 arithmetic).
- NaN exactly where the reference has NaN, infinities of the same sign, and an error from the
  core exactly where the reference raises one (same exception class).

Tolerances, as |c - r| <= rtol * |r| + atol (atol from the magnitudes involved):
  elementwise   float64 rtol 1e-13, float32 2e-6 (a few ulp: libm, libmvec and NumPy's SIMD
                loops differ by 1-4 ulp), atol 1e-15 / 1e-7 for results that cancel to ~0.
  sum, mean     rtol times sum|x| over the slice (the core sums in double, NumPy pairwise in
  matmul        the dtype; k-term products likewise, with scale |a| @ |b|): 1e-12 / 1e-5.
  softmax family  results of order 1 or log-sized: rtol 1e-12 / 1e-5, atol the same.
  selection and layout ops (max, min, reshape, transpose, broadcast_to, getitem, concatenate,
                stack, where, clip, cast): exact.
  gradients     chains of VJPs accumulate rounding in both implementations in different orders:
                float64 rtol 1e-9, float32 2e-4, relative to the magnitude of the terms that
                were summed into the gradient (norm-wise over the leaf), so that a gradient
                which cancels to ~0 is judged at the scale of its terms.
  Where the finite terms of a sum exceed the dtype's range, the dtype's arithmetic overflows
  part-way and the order of additions alone decides between inf and NaN: those elements are not
  compared (and reported as an event in the statistics).

CI runs a bounded number of examples with a fixed seed (reproducible); raise the count with
PYAUTODIFF_FUZZ_EXAMPLES=N and explore new programs with PYAUTODIFF_FUZZ_RANDOM=1. A failure
prints the whole program as a runnable Python reproducer (hypothesis note()), shrunk.
"""
import math
import os
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pyautodiff as ad
from pyautodiff import opdefs
from pyautodiff.reference import REFERENCE, normalize_axes

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
EXAMPLES = int(os.environ.get("PYAUTODIFF_FUZZ_EXAMPLES", "1000"))
MAX_STEPS = 6

ELEMENTWISE = {F64: (1e-13, 1e-15), F32: (2e-6, 1e-7)}
ACCUMULATE = {F64: 1e-12, F32: 1e-5}
GRAD_RTOL = {F64: 1e-9, F32: 2e-4}

# every public elementwise op of pyautodiff/opdefs.py (parameters at their defaults)
UNARY = [op.name for op in opdefs.UNARY if op.public]
BINARY = [op.name for op in opdefs.BINARY if op.public]
REDUCE = ["sum", "mean", "max", "min"]
SOFTMAX = ["logsumexp", "softmax", "log_softmax"]
# the op families a step draws from, weighted
KINDS = (["unary"] * 4 + ["binary"] * 4 + ["scalar"] * 2 + ["reduce"] * 2 + ["softmax", "matmul", "matmul",
         "reshape", "transpose", "broadcast_to", "cast", "clip", "where", "getitem", "concatenate", "stack"])


# ---- values --------------------------------------------------------------------------------

def _elements(dtype, mode):
    width = 32 if dtype == F32 else 64
    # Huge and tiny, but so that a product of three stays in the dtype's normal range: past it,
    # which of 0, inf or NaN a formula's intermediates produce depends only on the order of its
    # operations (g * (a / b) vs (g * a) / b), every order loses somewhere, and no oracle can
    # arbitrate. Infinities and NaN themselves come in as "special" values.
    big, tiny = (1e12, 1e-12) if dtype == F32 else (1e100, 1e-100)
    # floats() also draws subnormal and 1e-300-sized values; tiny values are chosen below
    normal = st.floats(-4, 4, width=width).map(lambda v: v if abs(v) >= 1e-6 else 0.0)
    simple = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, -2.0, 3.0])
    if mode == "normal":
        return st.one_of(normal, simple)
    if mode == "extreme":
        return st.one_of(normal, simple, st.sampled_from([big, -big, tiny, -tiny]))
    return st.one_of(normal, simple, st.sampled_from([big, -tiny, np.inf, -np.inf, np.nan]))


def draw_array(data, shape, dtype):
    mode = data.draw(st.sampled_from(["normal"] * 5 + ["extreme"] * 2 + ["special"]), label="values")
    return data.draw(hnp.arrays(dtype, shape, elements=_elements(dtype, mode)), label="array")


DIM = st.sampled_from([1, 2, 3, 1, 2, 3, 4, 0])


def draw_shape(data, min_ndim=0, max_ndim=5):
    ndim = data.draw(st.integers(min_ndim, max_ndim), label="ndim")
    return tuple(data.draw(DIM, label="dim") for _ in range(ndim))


def draw_compatible(data, shape):
    """A shape that broadcasts with `shape`: a suffix of it with some axes set to 1 (and 1-axes
    stretched), perhaps with new leading axes, never past 5 + 1 dimensions."""
    keep = data.draw(st.integers(0, len(shape)), label="kept axes")
    out = []
    for d in shape[len(shape) - keep:]:
        choice = data.draw(st.sampled_from(["same", "same", "one", "any"]), label="axis")
        out.append(d if choice == "same" else 1 if choice == "one" else (data.draw(DIM) if d == 1 else d))
    # new leading axes only in front of all of x's axes, where they cannot clash
    lead = data.draw(st.integers(0, 1 if keep == len(shape) and len(shape) < 5 else 0), label="new axes")
    return tuple(data.draw(DIM) for _ in range(lead)) + tuple(out)


def src_array(a):
    if a.size == 0:
        return f"np.zeros({a.shape}, dtype=np.{a.dtype})"
    body = repr(a.ravel().tolist()).replace("nan", "float('nan')").replace("inf", "float('inf')")
    return f"np.array({body}, dtype=np.{a.dtype}).reshape({a.shape})"


# ---- the program ---------------------------------------------------------------------------

@dataclass
class Value:
    name: str
    tensor: object           # what the op is called with: a Tensor, or an ndarray constant
    array: np.ndarray        # the C value (a copy), or the constant itself
    leaf: bool
    requires_grad: bool


@dataclass
class Step:
    op: str                  # reference op name
    inputs: tuple            # indices of the reference's array inputs in Program.values
    params: dict             # reference parameters
    out: int


class Program:
    def __init__(self, data, dtype):
        self.data = data
        self.dtype = dtype
        self.values = []
        self.steps = []
        self.source = ["import numpy as np", "import pyautodiff as ad"]

    def line(self, text):
        self.source.append(text)

    def draw(self, strategy, label=None):
        return self.data.draw(strategy, label=label)

    def leaf(self, shape, dtype=None, constant=None):
        """A new input: a leaf requiring grad, a leaf without, or a plain ndarray operand."""
        dtype = dtype or self.dtype
        arr = draw_array(self.data, shape, dtype)
        kind = constant or self.draw(st.sampled_from(["grad", "grad", "grad", "leaf", "array"]), "input kind")
        name = f"x{len(self.values)}"
        if kind == "array":
            self.line(f"{name} = {src_array(arr)}")
            self.values.append(Value(name, arr, arr, True, False))
        else:
            rg = kind == "grad"
            self.line(f"{name} = ad.tensor({src_array(arr)}, requires_grad={rg})")
            self.values.append(Value(name, ad.tensor(arr, requires_grad=rg), arr, True, rg))
        return len(self.values) - 1

    def pick(self, predicate=lambda v: True):
        """An existing value satisfying predicate, or None."""
        choices = [i for i, v in enumerate(self.values) if predicate(v)]
        if not choices:
            return None
        return self.draw(st.sampled_from(choices), "operand")

    def pick_or_new(self, shape_ok, make_shape):
        i = self.pick(lambda v: shape_ok(v.array.shape)) if self.draw(st.booleans(), "reuse") else None
        return i if i is not None else self.leaf(make_shape())

    def record(self, op, inputs, params, call, src):
        """Run the op on the C side; check it raises exactly where the reference does."""
        args = [self.values[i].array for i in inputs]
        expected = None
        try:
            with np.errstate(all="ignore"):
                REFERENCE[op].forward(*args, **params)
        except (ValueError, TypeError, IndexError) as e:
            expected = e
        name = f"v{len(self.values)}"
        self.line(f"{name} = {src}")
        if expected is not None:
            exc = type(expected) if not isinstance(expected, np.exceptions.AxisError) else ValueError
            with pytest.raises(exc):
                call(*[self.values[i].tensor for i in inputs])
            self.line(f"# raises {type(expected).__name__}, as NumPy does")
            event(f"error {op}")
            return None
        out = call(*[self.values[i].tensor for i in inputs])
        event(f"op {op}")
        self.values.append(Value(name, out, out.numpy(), False, out.requires_grad))
        self.steps.append(Step(op, tuple(inputs), params, len(self.values) - 1))
        check_forward(op, args, params, self.values[-1].array, name)
        return len(self.values) - 1

    # -- one random op -----------------------------------------------------------------------
    def step(self, x=None, kind=None):
        """One op of a random kind (or of `kind`) on a random earlier value (or on value `x`)."""
        kind = kind or self.draw(st.sampled_from(KINDS), "op kind")
        if x is None:
            x = self.pick() if self.values and self.draw(st.integers(0, 3), "reuse x") else None
        if x is None:
            x = self.leaf(draw_shape(self.data))
        xv = self.values[x]
        xs = xv.array.shape
        nd = len(xs)
        X = xv.name
        if kind == "unary":
            op = self.draw(st.sampled_from(UNARY), "op")
            return self.record(op, (x,), {}, getattr(ad, op), f"ad.{op}({X})")
        if kind == "binary":
            op = self.draw(st.sampled_from(BINARY), "op")
            y = self.pick_or_new(lambda s: _broadcasts(s, xs), lambda: draw_compatible(self.data, xs))
            a, b = (x, y) if self.draw(st.booleans(), "order") else (y, x)
            if not (isinstance(self.values[a].tensor, ad.Tensor) or isinstance(self.values[b].tensor, ad.Tensor)):
                a = x   # two plain arrays would be NumPy's business, not ours
            sym = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/", "power": "**"}.get(op)
            A, B = self.values[a].name, self.values[b].name
            if sym and isinstance(self.values[a].tensor, ad.Tensor) and self.draw(st.booleans(), "operator"):
                call = {"+": lambda p, q: p + q, "-": lambda p, q: p - q, "*": lambda p, q: p * q,
                        "/": lambda p, q: p / q, "**": lambda p, q: p ** q}[sym]
                return self.record(op, (a, b), {}, call, f"{A} {sym} {B}")
            return self.record(op, (a, b), {}, getattr(ad, op), f"ad.{op}({A}, {B})")
        if kind == "scalar":
            return self.scalar_step(x)
        if kind == "reduce":
            op = self.draw(st.sampled_from(REDUCE), "op")
            axis, keepdims = self.draw_axes(nd), self.draw(st.booleans(), "keepdims")
            return self.record(op, (x,), {"axis": axis, "keepdims": keepdims},
                               lambda t: getattr(ad, op)(t, axis=axis, keepdims=keepdims),
                               f"ad.{op}({X}, axis={axis!r}, keepdims={keepdims})")
        if kind == "softmax":
            op = self.draw(st.sampled_from(SOFTMAX), "op")
            if op == "logsumexp":
                axis, keepdims = self.draw_axes(nd), self.draw(st.booleans(), "keepdims")
                return self.record(op, (x,), {"axis": axis, "keepdims": keepdims},
                                   lambda t: ad.logsumexp(t, axis=axis, keepdims=keepdims),
                                   f"ad.logsumexp({X}, axis={axis!r}, keepdims={keepdims})")
            axis = self.draw_axes(nd, allow_none=False, allow_tuple=False) if nd else -1
            return self.record(op, (x,), {"axis": axis}, lambda t: getattr(ad, op)(t, axis=axis),
                               f"ad.{op}({X}, axis={axis!r})")
        if kind == "matmul":
            return self.matmul_step(x)
        if kind == "reshape":
            shape = self.draw_reshape(xs)
            return self.record("reshape", (x,), {"shape": shape}, lambda t: ad.reshape(t, shape),
                               f"ad.reshape({X}, {shape!r})")
        if kind == "transpose":
            axes = self.draw(st.one_of(st.none(), st.permutations(range(nd)).map(tuple)), "axes")
            return self.record("transpose", (x,), {"axes": axes}, lambda t: ad.transpose(t, axes),
                               f"ad.transpose({X}, {axes!r})")
        if kind == "broadcast_to":
            # at most 8 dimensions, the library's documented limit (NumPy allows 32)
            lead = tuple(self.draw(DIM) for _ in range(self.draw(st.integers(0, min(2, 8 - nd)), "new axes")))
            shape = lead + tuple(self.draw(DIM) if d == 1 and self.draw(st.booleans()) else d for d in xs)
            return self.record("broadcast_to", (x,), {"shape": shape}, lambda t: ad.broadcast_to(t, shape),
                               f"ad.broadcast_to({X}, {shape!r})")
        if kind == "cast":
            to = F32 if xv.array.dtype == F64 else F64
            return self.record("cast", (x,), {"dtype": to}, lambda t: ad.astype(t, to),
                               f"ad.astype({X}, np.{to})")
        if kind == "clip":
            bound = st.one_of(st.none(), st.sampled_from([-1.0, 0.0, 0.5, 2.0]), st.floats(-3, 3))
            lo, hi = self.draw(bound, "lo"), self.draw(bound, "hi")
            return self.record("clip", (x,), {"lo": lo, "hi": hi}, lambda t: ad.clip(t, lo, hi),
                               f"ad.clip({X}, {lo!r}, {hi!r})")
        if kind == "where":
            y = self.pick_or_new(lambda s: _broadcasts(s, xs), lambda: draw_compatible(self.data, xs))
            out_shape = np.broadcast_shapes(xs, self.values[y].array.shape)
            cond = self.draw(hnp.arrays(np.bool_, draw_compatible(self.data, out_shape)), "cond")
            self.line(f"cond = {src_array(cond.astype(np.uint8))}.astype(bool)")
            return self.record("where", (x, y), {"cond": cond}, lambda p, q: ad.where(cond, p, q),
                               f"ad.where(cond, {X}, {self.values[y].name})")
        if kind == "getitem":
            return self.getitem_step(x)
        if kind in ("concatenate", "stack"):
            if (kind == "concatenate" and nd == 0) or (kind == "stack" and nd >= 8):
                return None
            axis = self.draw(st.integers(-nd, nd - 1) if kind == "concatenate" else st.integers(-nd - 1, nd), "axis")
            if kind == "concatenate":
                shape = tuple(self.draw(DIM) if i == axis % nd else d for i, d in enumerate(xs))
            else:
                shape = xs
            y = self.pick_or_new(lambda s: s == shape, lambda: shape)
            fn = getattr(ad, kind)
            return self.record(kind, (x, y), {"axis": axis}, lambda p, q: fn([p, q], axis=axis),
                               f"ad.{kind}([{X}, {self.values[y].name}], axis={axis})")
        raise AssertionError(kind)

    def scalar_step(self, x):
        X = self.values[x].name
        if not isinstance(self.values[x].tensor, ad.Tensor):
            return None
        form = self.draw(st.sampled_from(["x+c", "c-x", "x*c", "x/c", "c/x", "x**p", "c**x"]), "scalar form")
        c = self.draw(st.sampled_from([2.5, -1.0, 0.0, 0.5, 3.0, 1e-3]) if form != "x**p"
                      else st.sampled_from([2.0, 3.0, 0.5, -1.5, 0.0, 1.0, -2.0]), "scalar")
        if form == "x**p":
            return self.record("power_scalar", (x,), {"p": c}, lambda t: t ** c, f"{X} ** {c!r}")
        # the reference sees the scalar as a 0-d constant of the tensor's dtype (a weak scalar)
        k = len(self.values)
        self.values.append(Value(f"c{k}", np.asarray(c, self.values[x].array.dtype),
                                 np.asarray(c, self.values[x].array.dtype), True, False))
        op, order, call = {
            "x+c": ("add", (x, k), lambda t, _: t + c), "c-x": ("subtract", (k, x), lambda _, t: c - t),
            "x*c": ("multiply", (x, k), lambda t, _: t * c), "x/c": ("divide", (x, k), lambda t, _: t / c),
            "c/x": ("divide", (k, x), lambda _, t: c / t), "c**x": ("power", (k, x), lambda _, t: c ** t),
        }[form]
        return self.record(op, order, {}, call, form.replace("x", X).replace("c", repr(c)))

    def matmul_step(self, x):
        xs = self.values[x].array.shape
        if not xs:
            # a 0-d operand is an error in both; check that once in a while
            y = self.leaf((self.draw(DIM),))
            return self.record("matmul", (x, y), {}, ad.matmul, f"ad.matmul({self.values[x].name}, x{y})")
        k = xs[-1]
        if self.draw(st.booleans(), "x on the left"):
            rhs = self.draw(st.sampled_from(["vector", "matrix", "batched"]), "rhs")
            shape = (k,) if rhs == "vector" else (k, self.draw(DIM)) if rhs == "matrix" else \
                (self.draw(st.sampled_from([1, 2])), k, self.draw(DIM))
            y = self.pick_or_new(lambda s: s == shape, lambda: shape)
            a, b = x, y
        else:
            m = xs[-2] if len(xs) >= 2 else xs[0]
            shape = (m,) if self.draw(st.booleans(), "vector lhs") else (self.draw(DIM), m)
            y = self.pick_or_new(lambda s: s == shape, lambda: shape)
            a, b = y, x
        A, B = self.values[a].name, self.values[b].name
        use_op = isinstance(self.values[a].tensor, ad.Tensor) and self.draw(st.booleans(), "operator")
        return self.record("matmul", (a, b), {}, (lambda p, q: p @ q) if use_op else ad.matmul,
                           f"{A} @ {B}" if use_op else f"ad.matmul({A}, {B})")

    def getitem_step(self, x):
        xs = self.values[x].array.shape
        if not isinstance(self.values[x].tensor, ad.Tensor) or not xs:
            return None
        n = xs[0]
        form = self.draw(st.sampled_from(["int", "slice", "array"]), "index form")
        if form == "int":
            index = self.draw(st.integers(-n - 1, n), "index")       # out of range now and then
        elif form == "slice":
            index = slice(self.draw(st.integers(-4, 4)), self.draw(st.one_of(st.none(), st.integers(-4, 4))),
                          self.draw(st.sampled_from([1, 2, -1])))
        else:
            index = np.array(self.draw(st.lists(st.integers(-n, max(n - 1, 0)), max_size=5), "indices"), dtype=np.int64)
            if n == 0:
                index = index[:0]
        return self.record("getitem", (x,), {"index": index}, lambda t: t[index],
                           f"{self.values[x].name}[{index!r}]")

    def draw_axes(self, nd, allow_none=True, allow_tuple=True):
        forms = (["none"] if allow_none else []) + (["int"] if nd else []) + (["tuple"] if allow_tuple else [])
        form = self.draw(st.sampled_from(forms), "axis form")
        if form == "none":
            return None
        if form == "int":
            return self.draw(st.integers(-nd, nd - 1), "axis")
        axes = self.draw(st.lists(st.integers(0, max(nd - 1, 0)), unique=True, max_size=nd), "axes") if nd else []
        return tuple(a - nd if self.draw(st.booleans(), "negative") else a for a in axes)

    def draw_reshape(self, shape):
        size = math.prod(shape)
        form = self.draw(st.sampled_from(["flat", "reversed", "unit", "infer"]), "reshape form")
        if form == "flat":
            return (size,)
        if form == "reversed":
            return tuple(reversed(shape))
        if form == "unit":
            return (1,) + tuple(shape) + (1,) if len(shape) < 6 else tuple(shape)
        if size == 0:
            return (0, -1) if len(shape) else (-1,)
        return (-1,) + tuple(shape[1:]) if shape else (-1,)


def _broadcasts(a, b):
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return len(np.broadcast_shapes(a, b)) <= 6


# ---- checks --------------------------------------------------------------------------------

def _finite_abs(a):
    a = np.abs(_wider(a))
    return np.where(np.isfinite(a), a, 0)


def _scale(op, args, params, dtype):
    """The magnitude an op's rounding error is proportional to, elementwise over its output: for
    sums and products the sum of the absolute (finite) terms."""
    with np.errstate(all="ignore"):
        if op in ("sum", "mean"):
            return REFERENCE[op].forward(_finite_abs(args[0]), **params)
        if op == "matmul":
            return REFERENCE[op].forward(_finite_abs(args[0]), _finite_abs(args[1]))
        out = REFERENCE[op].forward(*[_wider(a) for a in args], **params)
        return 1.0 + np.abs(out)


def _overflows(scale, dtype):
    """Where the finite terms an accumulation adds up exceed the dtype's range, the dtype's own
    arithmetic overflows part-way (1e30 * 1e30 in float32) and the order of the additions decides
    whether inf, -inf or inf - inf = NaN comes out; the exact (wider) value says nothing there.
    Infinities that are really there (inputs, sqrt'(0)) are not in the scale: they stay checked."""
    return np.asarray(scale) > np.finfo(dtype).max


def assert_close(c, r, rtol, atol, what, skip=None):
    c = np.asarray(c)
    r = np.asarray(r, dtype=c.dtype) if r.dtype != c.dtype and r.dtype.kind == "f" else np.asarray(r)
    assert c.shape == r.shape, f"{what}: shape {c.shape}, reference {r.shape}"
    assert c.dtype == r.dtype, f"{what}: dtype {c.dtype}, reference {r.dtype}"
    if skip is not None and skip.any():
        # elements where rounding order alone decides between inf and NaN (see _overflows)
        event("elements past the dtype's range not compared")
        keep = ~skip
        c, r = c[keep], r[keep]
        atol = np.broadcast_to(atol, skip.shape)[keep] if np.ndim(atol) else atol
    nan_c, nan_r = np.isnan(c), np.isnan(r)
    assert np.array_equal(nan_c, nan_r), f"{what}: NaN at {np.argwhere(nan_c != nan_r)[:5].tolist()}:\n{c}\nreference\n{r}"
    inf_r = np.isinf(r)
    assert np.array_equal(c[inf_r], r[inf_r]) and not np.isinf(c[~inf_r]).any(), \
        f"{what}: infinities differ:\n{c}\nreference\n{r}"
    fin = np.isfinite(r)
    c64, r64 = c[fin].astype(np.float64), r[fin].astype(np.float64)
    # below the smallest normal number there is no relative precision left (subnormals are
    # spaced evenly), so differences under it are not judged
    bound = rtol * np.abs(r64) + (np.broadcast_to(atol, r.shape)[fin] if np.ndim(atol) else atol)
    bound = bound + (np.finfo(c.dtype).tiny if c.dtype.kind == "f" and rtol else 0.0)
    bad = np.abs(c64 - r64) > bound
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} values differ beyond rtol={rtol}; worst "
                           f"{np.max(np.abs(c64 - r64) - bound):.3g} over the bound\n{c}\nreference\n{r}")


def check_forward(op, args, params, c_out, name):
    dtype = c_out.dtype
    with np.errstate(all="ignore"):
        exact = REFERENCE[op].forward(*[_wider(a) for a in args], **params)
    if op == "cast":
        exact = REFERENCE[op].forward(*args, **params)
    r = np.asarray(exact).astype(dtype) if np.asarray(exact).dtype != dtype else np.asarray(exact)
    if op in UNARY + BINARY + ["power_scalar"]:
        rtol, atol = ELEMENTWISE[dtype]
    elif op in ("sum", "mean", "matmul"):
        rtol = ACCUMULATE[dtype]
        with np.errstate(all="ignore"):
            scale = _scale(op, args, params, dtype)
            atol = (rtol * scale).astype(np.float64)
        assert_close(c_out, r, rtol, atol, f"forward of {name} = {op}", skip=_overflows(scale, dtype))
        return
    elif op in SOFTMAX:
        rtol = ACCUMULATE[dtype]
        with np.errstate(all="ignore"):
            atol = rtol * _scale(op, args, params, dtype)
    else:
        rtol, atol = 0.0, 0.0
    assert_close(c_out, r, rtol, atol, f"forward of {name} = {op}")


def _wider(a):
    """a in more precision and range than float32 and float64: long double (80-bit on x86: a
    64-bit mantissa, exponents to 1e4932). Also for float32: NumPy's float32/float64 power takes
    a sqrt shortcut for an exponent of 0.5 that gives NaN at -inf, where IEEE 754 pow (C's, the
    core's, and NumPy's own long double power) gives +inf."""
    a = np.asarray(a)
    return a.astype(np.longdouble) if a.dtype.kind == "f" else a


def _magnitude_vjp(step, gmag, out, args):
    """The terms a step's VJP adds up, in absolute value, for a cotangent of magnitude gmag. For
    most ops the VJP applied to gmag; matmul sums products (|g| @ |b|^T); the softmax pair
    subtracts two terms of similar size (g - softmax * sum(g)), so both count."""
    if step.op == "matmul":
        return REFERENCE["matmul"].vjp(gmag, out, *[_finite_abs(a) for a in args])
    if step.op in ("softmax", "log_softmax"):
        axes = normalize_axes(step.params["axis"], args[0].ndim)
        w = np.abs(out) if step.op == "softmax" else np.exp(out)
        inner = np.sum(gmag * (w if step.op == "softmax" else 1), axis=axes, keepdims=True)
        return ((w * (gmag + inner)) if step.op == "softmax" else (gmag + w * inner),)
    return REFERENCE[step.op].vjp(gmag, out, *args, **step.params)


def reference_gradients(prog, root, cotangent):
    """The reference VJPs chained backwards from root, over the C forward values. Each step is
    evaluated in more precision than its dtype, so that an intermediate of the reference's own
    formula (b**2 in the VJP of a / b) cannot overflow or underflow where the exact gradient does
    not, and rounded to the value's dtype between steps, as the core stores adjoints.
    Returns {value index: gradient} for the values reached."""
    cot = {root: cotangent}
    # Alongside, the magnitude of what was added up: each step's VJP applied to the magnitude of
    # its cotangent (with |a|, |b| for matmul, whose VJP sums products), plus the absolute value
    # of its actual contribution, summed in absolute value where branches merge. A gradient that
    # cancels to ~0 is then compared at the scale of its terms, not at 0.
    mag = {root: _finite_abs(cotangent)}
    # the coarsest dtype each gradient passed through: a float64 leaf reached through a float32 op
    # carries float32 rounding
    coarse = {root: prog.values[root].array.dtype}
    for step in reversed(prog.steps):
        g = cot.get(step.out)
        if g is None:
            continue
        # Two VJPs hinge on rounding in the dtype itself and are evaluated there, as the core does:
        # power's y * x^(y - 1), where for a negative base whether y - 1 rounds to an (odd)
        # integer decides between a number, +-inf and NaN (1e-12 - 1 is exactly -1 in float32;
        # the reference groups g * (y * x^(y - 1)) as the core does), and clip's boundary test
        # x <= hi, whose bound is rounded to the tensor's dtype (-4e-218 is -0.0 in float32).
        wide = (lambda a: np.asarray(a)) if step.op in ("power", "power_scalar", "clip") else _wider
        args = [wide(prog.values[i].array) for i in step.inputs]
        out = wide(prog.values[step.out].array)
        with np.errstate(all="ignore"):
            grads = REFERENCE[step.op].vjp(wide(g), out, *args, **step.params)
            mags = _magnitude_vjp(step, mag[step.out], out, args)
        for i, gr, mg in zip(step.inputs, grads, mags):
            if not prog.values[i].requires_grad:
                continue   # the core does not propagate into constants
            with np.errstate(all="ignore"):
                m = np.maximum(_finite_abs(mg), _finite_abs(gr))
                gr = np.asarray(gr).astype(prog.values[i].array.dtype)
                cot[i] = gr if i not in cot else cot[i] + gr
                mag[i] = m if i not in mag else mag[i] + m
            via = F32 if F32 in (coarse[step.out], prog.values[i].array.dtype) else F64
            coarse[i] = F32 if coarse.get(i) == F32 else via
    return cot, mag, coarse


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("PYAUTODIFF_FUZZ_RANDOM"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
          print_blob=True)
@given(data=st.data())
def test_random_programs_match_the_reference(data):
    dtype = data.draw(st.sampled_from([F32, F64]), label="dtype")
    prog = Program(data, dtype)
    try:
        run_program(data, prog)
    except BaseException:
        note("Reproducer:\n" + "\n".join(prog.source))
        raise


def run_program(data, prog):
    prog.leaf(draw_shape(data), constant="grad")
    n_steps = data.draw(st.integers(1, MAX_STEPS), label="steps")
    for _ in range(n_steps):
        prog.step()
    check_backward(data, prog, len(prog.values) - 1)


def check_backward(data, prog, root):
    """backward() from value root with a random cotangent; every leaf's .grad against the
    reference VJPs chained over the program."""
    rv = prog.values[root]
    if rv.leaf or not rv.requires_grad:
        return
    zeros_share = data.draw(st.sampled_from([0.0, 0.3, 1.0]), label="zero cotangents")
    g = data.draw(hnp.arrays(rv.array.dtype, rv.array.shape,
                             elements=st.floats(-2, 2, width=32 if rv.array.dtype == F32 else 64)
                             .map(lambda v: v if abs(v) >= 1e-6 else 0.0)), label="cotangent")
    g = np.where(np.random.default_rng(g.size).random(g.shape) < zeros_share, 0, g).astype(rv.array.dtype)
    prog.line(f"{rv.name}.backward({src_array(g)})")
    rv.tensor.backward(g)
    expected, magnitude, coarse = reference_gradients(prog, root, g)
    for i, v in enumerate(prog.values):
        if not (v.leaf and v.requires_grad):
            continue
        c = v.tensor.grad
        if i not in expected:
            assert c is None, f"{v.name}.grad is set but no path leads to it"
            continue
        assert c is not None, f"{v.name}.grad is None but the reference has a gradient"
        r = expected[i].astype(v.array.dtype)
        m = np.broadcast_to(magnitude[i], r.shape)
        scale = float(m.max()) if m.size else 0.0
        rtol = GRAD_RTOL[coarse[i]]
        assert_close(c.numpy(), r, rtol, rtol * scale,
                     f"gradient of {v.name}", skip=_overflows(m, v.array.dtype))
        event("gradient checked" + (" (with NaN/inf)" if not np.isfinite(r).all() else "")
              + (" (empty)" if r.size == 0 else ""))
