"""The op table: one row per (op, calling form). It drives every test in test_ops.py.

A row says how to call the op through the public API (`fn`, taking Tensors), which reference op it
must agree with (`ref` + `params`, with `ref_inputs` mapping our inputs to the reference's array
inputs and `grad_of` naming which reference gradients belong to our inputs), the sample inputs
(shapes with broadcasting, 0-d, size-1 and 0-size axes, and edge values), and tolerances per dtype.

Samples are drawn once, in float64, from a generator seeded by the row's name; a test casts them
to the dtype under test (the `dtypes` roles "same"/"other" let a row mix float32 and float64).
A sample marked smooth=False (ties, kinks, infinities, 0-size) is left out of the
finite-difference check, where the function is not differentiable or the difference quotient is
meaningless; it is still compared exactly against the reference, which states the rule there.

Tolerances, as (rtol, atol) for `np.testing.assert_allclose`:
  ELEMENTWISE  float64 (1e-13, 1e-15): C's libm and NumPy's loops are both within ~1 ulp
               (2.2e-16) of the true value; 1e-13 leaves room for a few ulp of difference in
               exp/log/sin/tanh and for products associated differently (g*y*(1-y)).
               float32 (2e-6, 1e-7): NumPy's SIMD float32 exp/sin/cos/tanh are accurate to
               ~1-3 ulp and libm's expf/sinf to ~1 ulp; ulp = 1.2e-7 relative, so 2e-6 is ~16 ulp.
               atol covers results that cancel to ~0 (sin near pi, 1 - y*y near y = 1).
  REDUCTION    float32 (1e-5, 1e-5): NumPy sums float32 pairwise in float32 (error ~ log2(n)
               ulp of the running sum), the C core sums in double and rounds once; for the up to
               ~2,000-element sums here that is a few 1e-7 relative to sum|x|, and results that
               cancel need the absolute term (sum|x| ~ 100 * 1e-7).
  MATMUL       float32 (2e-5, 2e-5): two different sgemm builds (NumPy's OpenBLAS, SciPy's BLAS
               or the C loop) accumulate k products in different orders, error ~ k * ulp * |a||b|;
               with k <= 70 and unit-normal entries that is below 1e-5 absolute.
               float64 (1e-12, 1e-12) for the same reason at 2.2e-16 per operation.
  EXACT        layout ops (reshape, transpose, broadcast_to, astype) move values without
               arithmetic, except broadcast_to's VJP, which sums: (0, 0) forward, REDUCTION-like
               tolerance for gradients (see `grad_tol`).
"""
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import numpy as np

import pyautodiff as ad
from pyautodiff import opdefs

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

ELEMENTWISE = {F64: (1e-13, 1e-15), F32: (2e-6, 1e-7)}
REDUCTION = {F64: (1e-12, 1e-12), F32: (1e-5, 1e-5)}
MATMUL = {F64: (1e-12, 1e-12), F32: (2e-5, 2e-5)}
EXACT = {F64: (0.0, 0.0), F32: (0.0, 0.0)}


@dataclass
class Sample:
    args: Tuple[np.ndarray, ...]
    label: str
    smooth: bool = True        # differentiable at and around the point: finite differences apply
    params: dict = field(default_factory=dict)   # keyword parameters of both the call and the reference


@dataclass
class Row:
    name: str
    fn: Callable                                   # public API call: fn(*tensors, **sample.params)
    ref: str                                       # key of pyautodiff.reference.REFERENCE
    samples: Callable                              # rng -> list of Sample (float64 arrays)
    params: dict = field(default_factory=dict)     # extra reference-only parameters
    ref_inputs: Optional[Callable] = None          # our inputs (cast) -> reference array inputs
    grad_of: Optional[Tuple[int, ...]] = None      # reference gradient index for each of our inputs
    dtypes: Optional[Tuple[str, ...]] = None       # per input: "same" (the dtype under test) / "other"
    tol: Dict = field(default_factory=lambda: ELEMENTWISE)
    grad_tol: Optional[Dict] = None                # defaults to tol
    public: str = ""                               # issue-2 op this row exercises (coverage check)

    def cast(self, sample, dtype):
        """The sample's arrays in the dtypes the row asks for, with dtype under test `dtype`."""
        other = F64 if dtype == F32 else F32
        roles = self.dtypes or ("same",) * len(sample.args)
        with np.errstate(over="ignore"):       # edge values like 1e308 become inf in float32
            return tuple(np.asarray(a, dtype=dtype if r == "same" else other)
                         for a, r in zip(sample.args, roles))

    def reference_inputs(self, xs):
        return tuple(self.ref_inputs(*xs)) if self.ref_inputs else tuple(xs)

    def grad_indices(self, n):
        return self.grad_of if self.grad_of is not None else tuple(range(n))

    def sample_list(self):
        if not hasattr(self, "_samples"):
            rng = np.random.default_rng(zlib.crc32(self.name.encode()))
            self._samples = self.samples(rng)
        return self._samples


# ---------------------------------------------------------------------------------------------
# sample generators
# ---------------------------------------------------------------------------------------------
UNARY_SHAPES = [(), (1,), (7,), (3, 4), (2, 1, 3), (0,), (2, 0, 3)]
BINARY_SHAPES = [
    ((), ()), ((4,), ()), ((), (4,)), ((3, 4), (3, 4)),
    ((3, 1), (1, 4)),            # both sides broadcast
    ((5,), (2, 5)), ((2, 5), (5,)),
    ((2, 1, 3), (4, 1)),         # rank differs and both broadcast
    ((1,), (3,)), ((1, 1), ()),
    ((0,), (1,)), ((2, 0), (2, 1)), ((3, 1), (1, 0)),   # 0-size results
]


def _size_zero(*shapes):
    return any(0 in s for s in shapes)


def unary(draw, edges=()):
    """Random samples over UNARY_SHAPES from draw(rng, shape), plus edge-value samples."""
    def gen(rng):
        out = [Sample((draw(rng, s),), f"{s}", smooth=not _size_zero(s)) for s in UNARY_SHAPES]
        out += [Sample((np.asarray(e, dtype=np.float64),), f"edge{e}", smooth=False) for e in edges]
        return out
    return gen


def binary(draw_a, draw_b, extra=()):
    def gen(rng):
        out = [Sample((draw_a(rng, sa), draw_b(rng, sb)), f"{sa}x{sb}", smooth=not _size_zero(sa, sb))
               for sa, sb in BINARY_SHAPES]
        for a, b, label in extra:
            out.append(Sample((np.asarray(a, np.float64), np.asarray(b, np.float64)), label, smooth=False))
        return out
    return gen


def normal(rng, shape):
    return rng.standard_normal(shape)


def positive(rng, shape):
    return rng.uniform(0.5, 3.0, shape)


def nonzero(rng, shape):
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 2.0, shape)


def wide(rng, shape):
    return rng.uniform(-4.0, 4.0, shape)


def _c(x, value):
    """A Python scalar operand as the reference sees it: a 0-d array of the tensor's dtype (the C
    core computes tensor-with-scalar ops in the tensor's dtype, as NumPy does with weak scalars)."""
    return np.asarray(value, dtype=x.dtype)


ROWS = []


def row(**kw):
    ROWS.append(Row(**kw))


# ---------------------------------------------------------------------------------------------
# the elementwise ops: one row per row of pyautodiff/opdefs.py, with its domain and edge values
# ---------------------------------------------------------------------------------------------
def unit(rng, shape):
    return rng.uniform(-0.9, 0.9, shape)


def above1(rng, shape):
    return rng.uniform(1.1, 4.0, shape)


DOMAINS = {"normal": normal, "wide": wide, "positive": positive, "nonzero": nonzero, "unit": unit,
           "above1": above1}
# opdefs rows reached through another public function, and the reference op they check against
VIA = {"gelu_erf": (lambda x, **kw: ad.gelu(x, **kw), "gelu", {"approximate": "none"}),
       "gelu_tanh": (lambda x, **kw: ad.gelu(x, **kw), "gelu", {"approximate": "tanh"}),
       "round": (lambda x: ad.round(x), "round", {}),
       "mul_zero_safe": (ad.ops.ROWS["mul_zero_safe"], "mul_zero_safe", {})}


def _with_params(gen, params):
    def out(rng):
        return [Sample(smp.args, f"{smp.label}-{params}", smp.smooth, dict(params)) for smp in gen(rng)]
    return out


for _op in opdefs.ALL:
    if not _op.public and _op.name not in VIA:
        continue                      # x op c: the scalar rows below
    _fn, _ref, _call_params = VIA[_op.name] if _op.name in VIA else (getattr(ad, _op.name), _op.name, {})
    if _op.kind == "unary":
        _gen = unary(DOMAINS[_op.domain[0]], _op.edges)
    else:
        _gen = binary(DOMAINS[_op.domain[0]], DOMAINS[_op.domain[-1]],
                      [(a, b, f"edge{i}") for i, (a, b) in enumerate(_op.edges)])
    if _call_params:
        _gen = _with_params(_gen, _call_params)
    row(name=_op.name, fn=_fn, ref=_ref, public=_op.name, samples=_gen)
    for _k, _p in enumerate(_op.test_params):
        row(name=f"{_op.name}_params{_k}", fn=_fn, ref=_ref, public=_op.name, samples=_with_params(_gen, _p))

# the same ops through operators and methods
row(name="neg_operator", fn=lambda x: -x, ref="negative", public="negative", samples=unary(normal))
row(name="abs_operator", fn=lambda x: abs(x), ref="abs", public="abs", samples=unary(normal))
row(name="round_method", fn=lambda x: x.round(), ref="round", public="round", samples=unary(wide, [[0.5, 1.5]]))
row(name="add_operator", fn=lambda a, b: a + b, ref="add", public="add", samples=binary(normal, normal))
row(name="sub_operator", fn=lambda a, b: a - b, ref="subtract", public="subtract", samples=binary(normal, normal))
row(name="mul_operator", fn=lambda a, b: a * b, ref="multiply", public="multiply", samples=binary(normal, normal))
row(name="div_operator", fn=lambda a, b: a / b, ref="divide", public="divide", samples=binary(normal, nonzero))
row(name="pow_operator", fn=lambda a, b: a ** b, ref="power", public="power", samples=binary(positive, normal))
row(name="floordiv_operator", fn=lambda a, b: a // b, ref="floor_divide", public="floor_divide",
    samples=binary(wide, nonzero))
row(name="mod_operator", fn=lambda a, b: a % b, ref="mod", public="mod", samples=binary(wide, nonzero))
row(name="mod_rscalar", fn=lambda x: 5.5 % x, ref="mod", public="mod", ref_inputs=lambda x: (_c(x, 5.5), x),
    grad_of=(1,), samples=unary(nonzero))


def _ties(rng, shape):
    """Pairs with some exactly equal elements (both directions of broadcasting are in BINARY_SHAPES)."""
    return rng.integers(-2, 3, shape).astype(np.float64)


for _name, _fn in (("maximum", ad.maximum), ("minimum", ad.minimum)):
    row(name=_name + "_ties", fn=_fn, ref=_name, public=_name,
        samples=lambda rng: [Sample((_ties(rng, sa), _ties(rng, sb)), f"{sa}x{sb}", smooth=False)
                             for sa, sb in BINARY_SHAPES])

# ---------------------------------------------------------------------------------------------
# tensor with a Python scalar, and NumPy arrays on either side of an operator
# ---------------------------------------------------------------------------------------------
def _scalar_row(name, fn, ref, ref_inputs, grad_of, draw=normal, edges=(), params=None, public=""):
    row(name=name, fn=fn, ref=ref, ref_inputs=ref_inputs, grad_of=grad_of, params=params or {},
        samples=unary(draw, edges), public=public)


_scalar_row("add_scalar", lambda x: x + 2.5, "add", lambda x: (x, _c(x, 2.5)), (0,), public="add")
_scalar_row("radd_scalar", lambda x: 2.5 + x, "add", lambda x: (_c(x, 2.5), x), (1,), public="add")
_scalar_row("add_int", lambda x: ad.add(x, 3), "add", lambda x: (x, _c(x, 3)), (0,), public="add")
_scalar_row("sub_scalar", lambda x: x - 1.25, "subtract", lambda x: (x, _c(x, 1.25)), (0,), public="subtract")
_scalar_row("rsub_scalar", lambda x: 2.0 - x, "subtract", lambda x: (_c(x, 2.0), x), (1,), public="subtract")
_scalar_row("mul_scalar", lambda x: x * -3.0, "multiply", lambda x: (x, _c(x, -3.0)), (0,), public="multiply")
_scalar_row("rmul_scalar", lambda x: 0.5 * x, "multiply", lambda x: (_c(x, 0.5), x), (1,), public="multiply")
_scalar_row("div_scalar", lambda x: x / 4.0, "divide", lambda x: (x, _c(x, 4.0)), (0,), public="divide")
_scalar_row("rdiv_scalar", lambda x: 3.0 / x, "divide", lambda x: (_c(x, 3.0), x), (1,), draw=nonzero,
            edges=[0.0], public="divide")
_scalar_row("pow_scalar_3", lambda x: x ** 3.0, "power_scalar", None, None, params={"p": 3.0},
            edges=[0.0], public="power")
_scalar_row("pow_scalar_2", lambda x: x ** 2, "power_scalar", None, None, params={"p": 2.0},
            edges=[[0.0, -1.5]], public="power")
_scalar_row("pow_scalar_0", lambda x: x ** 0.0, "power_scalar", None, None, params={"p": 0.0},
            edges=[[0.0, 2.0]], public="power")                      # constant 1: gradient 0, even at 0
_scalar_row("pow_scalar_half", lambda x: ad.power(x, 0.5), "power_scalar", None, None, params={"p": 0.5},
            draw=positive, edges=[0.0], public="power")              # grad +inf at 0
_scalar_row("pow_scalar_neg", lambda x: x ** -1.5, "power_scalar", None, None, params={"p": -1.5},
            draw=positive, public="power")
_scalar_row("rpow_scalar", lambda x: 2.0 ** x, "power", lambda x: (_c(x, 2.0), x), (1,), draw=wide,
            public="power")
_scalar_row("rpow_scalar_0", lambda x: ad.power(0.0, x), "power", lambda x: (_c(x, 0.0), x), (1,),
            draw=positive, public="power")                           # 0**x: d/dx taken as 0
_scalar_row("maximum_scalar", lambda x: ad.maximum(x, 0.0), "maximum", lambda x: (x, _c(x, 0.0)), (0,),
            edges=[[0.0, 1.0, -1.0]], public="maximum")
_scalar_row("minimum_rscalar", lambda x: ad.minimum(0.5, x), "minimum", lambda x: (_c(x, 0.5), x), (1,),
            edges=[[0.5, 1.0, -1.0]], public="minimum")

# NumPy arrays on either side: the array becomes a constant leaf, the result a Tensor; a float64
# array promotes a float32 tensor to float64, as in NumPy
_CONST = np.array([[0.5], [-1.0], [2.0]])     # (3, 1): broadcasts against every (.., k) sample
row(name="add_ndarray_rhs", fn=lambda x: x + _CONST, ref="add", public="add",
    ref_inputs=lambda x: (x, _CONST), grad_of=(0,),
    samples=lambda rng: [Sample((rng.standard_normal(s),), f"{s}") for s in [(4,), (3, 4), (2, 1, 4)]])
row(name="mul_ndarray_lhs", fn=lambda x: _CONST * x, ref="multiply", public="multiply",
    ref_inputs=lambda x: (_CONST, x), grad_of=(1,),
    samples=lambda rng: [Sample((rng.standard_normal(s),), f"{s}") for s in [(4,), (3, 4), (2, 1, 4)]])
row(name="rsub_ndarray_lhs", fn=lambda x: _CONST - x, ref="subtract", public="subtract",
    ref_inputs=lambda x: (_CONST, x), grad_of=(1,),
    samples=lambda rng: [Sample((rng.standard_normal(s),), f"{s}") for s in [(4,), (3, 4)]])
row(name="rdiv_ndarray_lhs", fn=lambda x: _CONST / x, ref="divide", public="divide",
    ref_inputs=lambda x: (_CONST, x), grad_of=(1,),
    samples=lambda rng: [Sample((nonzero(rng, s),), f"{s}") for s in [(4,), (3, 4)]])

# ---------------------------------------------------------------------------------------------
# float32 with float64: promotes to float64; each leaf's grad comes back in its own dtype
# ---------------------------------------------------------------------------------------------
for _name, _fn, _draw_b in (("add", ad.add, normal), ("multiply", ad.multiply, normal),
                            ("divide", ad.divide, nonzero), ("maximum", ad.maximum, normal),
                            ("power", ad.power, normal)):
    row(name=_name + "_mixed", fn=_fn, ref=_name, public=_name, dtypes=("same", "other"),
        # the result is float64 whichever side is float32, so float64 tolerances apply, except
        # that a float32 leaf's gradient is rounded to float32 (grad_tol)
        tol=ELEMENTWISE, grad_tol={F64: (2e-7, 1e-7), F32: (2e-7, 1e-7)},
        samples=binary(positive if _name == "power" else normal, _draw_b))

# ---------------------------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------------------------
REDUCE_CASES = [
    ((), None, False), ((), (), True),
    ((7,), None, False), ((7,), 0, True), ((7,), -1, False),
    ((3, 4), None, True), ((3, 4), 0, False), ((3, 4), 1, True), ((3, 4), (), False), ((3, 4), (0, 1), False),
    ((2, 3, 4), (0, 2), False), ((2, 3, 4), (-1, 0), True), ((2, 3, 4), -2, False), ((2, 3, 4), (1,), True),
    ((1, 5, 1), None, False), ((1, 5, 1), (0, 2), True),
    ((40, 50), None, False), ((40, 50), 0, False),                  # 2,000 elements: accumulation error
]
EMPTY_CASES = [((2, 0, 3), 1, False), ((2, 0, 3), None, True), ((0,), None, False)]
NONEMPTY_AXIS_OF_EMPTY = [((2, 0, 3), (0, 2), False), ((0, 4), 1, True)]   # reduce size>0 axes of an empty array


def reduction(draw, cases, smooth=True, empty=()):
    def gen(rng):
        return [Sample((draw(rng, s),), f"{s}-axis{ax}-keep{int(k)}",
                       smooth=smooth and not _size_zero(s) and (s, ax, k) not in empty,
                       params={"axis": ax, "keepdims": k})
                for s, ax, k in list(cases) + list(empty)]
    return gen


def _reduce_row(name, fn, draw, cases, smooth=True, empty=(), method=False):
    call = ((lambda x, axis, keepdims: getattr(x, name)(axis=axis, keepdims=keepdims)) if method
            else fn)
    row(name=(name + "_method" if method else name) + ("" if smooth else "_ties"), fn=call, ref=name,
        public=name, samples=reduction(draw, cases, smooth, empty), tol=REDUCTION, grad_tol=ELEMENTWISE)


_reduce_row("sum", ad.sum, normal, REDUCE_CASES, empty=EMPTY_CASES + NONEMPTY_AXIS_OF_EMPTY)
_reduce_row("mean", ad.mean, normal, REDUCE_CASES, empty=EMPTY_CASES + NONEMPTY_AXIS_OF_EMPTY)  # mean of nothing is NaN
_reduce_row("max", ad.max, normal, REDUCE_CASES, empty=NONEMPTY_AXIS_OF_EMPTY)
_reduce_row("min", ad.min, normal, REDUCE_CASES, empty=NONEMPTY_AXIS_OF_EMPTY)
# integer-valued data in [-1, 1]: most slices have tied extremes, which split the cotangent equally
_reduce_row("max", ad.max, lambda rng, s: rng.integers(-1, 2, s).astype(float), REDUCE_CASES, smooth=False)
_reduce_row("min", ad.min, lambda rng, s: rng.integers(-1, 2, s).astype(float), REDUCE_CASES, smooth=False)
# a NaN in a slice makes its max/min NaN, and the NaN elements share the cotangent
_NAN_CASES = [((3, 4), 1, False), ((3, 4), None, True), ((3, 4), 0, False)]


def _with_nans(rng, s):
    x = rng.standard_normal(s)
    x[0, 1] = np.nan
    x[2, 1] = x[2, 3] = np.nan
    return x


for _m in ("sum", "max", "min"):
    row(name=_m + "_nan", fn=getattr(ad, _m), ref=_m, public=_m, tol=REDUCTION, grad_tol=ELEMENTWISE,
        samples=reduction(_with_nans, _NAN_CASES, smooth=False))

for _m in ("sum", "mean", "max", "min"):
    _reduce_row(_m, None, normal, [((3, 4), 1, False), ((2, 3, 4), (0, 2), True), ((5,), None, False)], method=True)

# ---------------------------------------------------------------------------------------------
# matmul (NumPy semantics)
# ---------------------------------------------------------------------------------------------
MATMUL_SHAPES = [
    ((4,), (4,)),                  # 1-D @ 1-D: 0-d result
    ((4,), (4, 3)), ((3, 4), (4,)),
    ((3, 4), (4, 5)), ((1, 1), (1, 1)),
    ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)),     # batch axes (2, 1) and (5,) broadcast to (2, 5)
    ((1, 3, 4), (2, 4, 5)),
    ((2, 3, 4), (4,)), ((4,), (2, 4, 3)),     # 3-D @ 1-D and 1-D @ 3-D
    ((0, 4), (4, 3)), ((3, 0), (0, 4)), ((2, 3, 4), (4, 0)),   # empty rows, k = 0, empty columns
    ((33, 70), (70, 41)),          # large enough for the BLAS path, odd sizes
]


def _matmul_samples(rng):
    return [Sample((rng.standard_normal(sa), rng.standard_normal(sb)), f"{sa}@{sb}", smooth=not _size_zero(sa, sb))
            for sa, sb in MATMUL_SHAPES]


row(name="matmul", fn=ad.matmul, ref="matmul", public="matmul", samples=_matmul_samples, tol=MATMUL)
row(name="matmul_operator", fn=lambda a, b: a @ b, ref="matmul", public="matmul", samples=_matmul_samples, tol=MATMUL)
row(name="matmul_mixed", fn=ad.matmul, ref="matmul", public="matmul", dtypes=("other", "same"),
    samples=_matmul_samples, tol=MATMUL, grad_tol={F64: (1e-6, 1e-6), F32: (1e-6, 1e-6)})
row(name="rmatmul_ndarray", fn=lambda b: _CONST.T @ b, ref="matmul", public="matmul",
    ref_inputs=lambda b: (_CONST.T, b), grad_of=(1,), tol=MATMUL,
    samples=lambda rng: [Sample((rng.standard_normal(s),), f"{s}") for s in [(3,), (3, 2), (2, 3, 4)]])

# ---------------------------------------------------------------------------------------------
# layout: reshape, transpose, .T, broadcast_to, astype
# ---------------------------------------------------------------------------------------------
def _param_samples(key, cases, draw=normal):
    def gen(rng):
        return [Sample((draw(rng, shape),), f"{shape}-{value}", smooth=not _size_zero(shape),
                       params={key: value}) for shape, value in cases]
    return gen


RESHAPE_CASES = [((2, 3, 4), (6, 4)), ((2, 3, 4), (-1,)), ((2, 3, 4), (4, -1, 2)), ((6,), (1, 6, 1)),
                 ((1,), ()), ((), (1, 1)), ((), (-1,)), ((0, 3), (3, -1)), ((0, 3), (3, 0, 1)), ((12,), 12),
                 ((2, 6), (-1, 3))]
TRANSPOSE_CASES = [((2, 3, 4), (1, 0, 2)), ((2, 3, 4), (2, 0, 1)), ((2, 3, 4), (-1, 0, 1)), ((2, 3, 4), None),
                   ((3, 4), None), ((5,), None), ((), None), ((3, 1, 2), (1, 2, 0)), ((2, 0, 3), (2, 1, 0))]
BROADCAST_CASES = [((3, 1), (2, 3, 4)), ((4,), (3, 4)), ((), (2, 3)), ((1,), (0,)), ((2, 1), (2, 5)),
                   ((1, 3), (1, 3)), ((5,), (5,)), ((), ())]

row(name="reshape", fn=lambda x, shape: ad.reshape(x, shape), ref="reshape", public="reshape",
    samples=_param_samples("shape", RESHAPE_CASES), tol=EXACT)
row(name="reshape_method", fn=lambda x, shape: x.reshape(shape), ref="reshape", public="reshape",
    samples=_param_samples("shape", RESHAPE_CASES[:4]), tol=EXACT)
row(name="reshape_method_varargs", fn=lambda x, shape: x.reshape(*shape), ref="reshape", public="reshape",
    samples=_param_samples("shape", [((2, 3, 4), (4, -1)), ((6,), (3, 2))]), tol=EXACT)
row(name="transpose", fn=lambda x, axes: ad.transpose(x, axes), ref="transpose", public="transpose",
    samples=_param_samples("axes", TRANSPOSE_CASES), tol=EXACT)
row(name="transpose_method", fn=lambda x, axes: x.transpose(axes) if axes is not None else x.transpose(),
    ref="transpose", public="transpose", samples=_param_samples("axes", TRANSPOSE_CASES[:4]), tol=EXACT)
row(name="T", fn=lambda x, axes: x.T, ref="transpose", public=".T",
    samples=_param_samples("axes", [((2, 3, 4), None), ((3, 4), None), ((5,), None), ((), None)]), tol=EXACT)
row(name="broadcast_to", fn=lambda x, shape: ad.broadcast_to(x, shape), ref="broadcast_to", public="broadcast_to",
    samples=_param_samples("shape", BROADCAST_CASES), tol=EXACT, grad_tol=REDUCTION)
# float64 -> float32 rounds each value once, exactly as NumPy's astype does; the VJP converts the
# cotangent back to the input's dtype, also exactly as the reference does: EXACT both ways
for _target in ("float32", "float64"):
    row(name="astype_" + _target, fn=lambda x, dtype: ad.astype(x, dtype), ref="cast", public="astype",
        samples=_param_samples("dtype", [((3, 4), _target), ((), _target), ((0, 2), _target)]), tol=EXACT)
    row(name="astype_method_" + _target, fn=lambda x, dtype: x.astype(np.dtype(dtype)), ref="cast",
        public="astype", samples=_param_samples("dtype", [((2, 3), _target)]), tol=EXACT)

# ---------------------------------------------------------------------------------------------
# convolution windows: unfold (im2col) and its adjoint fold (col2im), csrc/kernels/conv.c
# ---------------------------------------------------------------------------------------------
# (image shape, kernel_size, stride, padding, dilation): odd sizes, stride > 1, padding, dilation,
# non-square kernels, a kernel as large as the padded image, an empty batch
CONV_CASES = [((2, 3, 7, 6), (3, 2), (2, 1), (1, 2), (1, 2)), ((1, 2, 5, 5), (1, 1), (1, 1), (0, 0), (1, 1)),
              ((2, 1, 6, 9), (2, 3), (3, 2), (0, 1), (2, 1)), ((1, 2, 4, 3), (4, 5), (1, 1), (0, 1), (1, 1)),
              ((3, 2, 5, 4), (3, 3), (1, 1), (1, 1), (1, 1)), ((0, 2, 5, 4), (2, 2), (1, 1), (0, 0), (1, 1))]


def _conv_params(k, s, p, d):
    return {"kernel_size": k, "stride": s, "padding": p, "dilation": d}


def _unfold_samples(rng):
    return [Sample((rng.standard_normal(shape),), f"{shape}-{k}-{s}-{p}-{d}", smooth=not _size_zero(shape),
                   params=_conv_params(k, s, p, d)) for shape, k, s, p, d in CONV_CASES]


def _fold_samples(rng):
    out = []
    for (n, c, h, w), k, s, p, d in CONV_CASES:
        windows = (((h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1) *
                   ((w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1))
        shape = (n, c * k[0] * k[1], windows)
        out.append(Sample((rng.standard_normal(shape),), f"{shape}-{(h, w)}-{k}-{s}-{p}-{d}",
                          smooth=not _size_zero(shape), params=dict(_conv_params(k, s, p, d), output_size=(h, w))))
    return out


# unfold copies values (EXACT); fold and unfold's VJP (a fold) add up to kh*kw overlapping entries
# per pixel, kernel by kernel in the reference's order too, so float64 agrees to the last bits and
# REDUCTION's float32 tolerance covers a different association of those few sums
row(name="unfold", fn=lambda x, **kw: ad.nn.functional.unfold(x, **kw), ref="unfold", public="unfold",
    samples=_unfold_samples, tol=EXACT, grad_tol=REDUCTION)
row(name="fold", fn=lambda x, **kw: ad.nn.functional.fold(x, **kw), ref="fold", public="fold",
    samples=_fold_samples, tol=REDUCTION, grad_tol=EXACT)


def _conv2d_samples(rng):
    """CONV_CASES' windows with 3 filters (kernel_size is the weight's), and one with no filters."""
    out = []
    for shape, k, s, p, d in CONV_CASES + [((2, 3, 5, 4), (2, 2), (1, 1), (0, 0), (1, 1))]:
        filters = 0 if shape == (2, 3, 5, 4) else 3
        w = rng.standard_normal((filters, shape[1]) + k)
        out.append(Sample((rng.standard_normal(shape), w), f"{shape}-{w.shape}-{s}-{p}-{d}",
                          smooth=not (_size_zero(shape) or _size_zero(w.shape)),
                          params={"stride": s, "padding": p, "dilation": d}))
    return out


# conv2d (csrc/kernels/conv2d.c): sums of C*kh*kw products per output and of N*L per weight
# gradient, in gemm's order, hence MATMUL's tolerance
row(name="conv2d", fn=lambda x, w, **kw: ad.nn.functional.conv2d(x, w, **kw), ref="conv2d", public="conv2d",
    samples=_conv2d_samples, tol=MATMUL)

# every op of issue 2 must have at least one row (test_table_covers_every_issue2_op); composite
# graphs that cross op families are in test_ops.py
ISSUE2_OPS = ["add", "subtract", "multiply", "divide", "negative", "power", "exp", "log", "sqrt", "abs",
              "sin", "cos", "tanh", "sigmoid", "relu", "maximum", "minimum", "sum", "mean", "max", "min",
              "matmul", "reshape", "transpose", ".T", "broadcast_to", "astype"]


def samples_for(row_):
    """(index, Sample) pairs of a row, for parametrisation."""
    return list(enumerate(row_.sample_list()))


# ---------------------------------------------------------------------------------------------
# issue 17, shape ops (pyautodiff/shape_ops.py; references in reference/shape_ops.py). They only
# move elements: forward EXACT; a gradient that sums several cotangents (tile, repeat, roll of a
# repeated index, diagonal...) may add in another order than np.add.at, so REDUCTION for those
# ---------------------------------------------------------------------------------------------
def _cases(cases, draw=normal):
    """Samples from (shape, params) pairs; a 0-size shape is left out of finite differences."""
    def gen(rng):
        return [Sample((draw(rng, shape),), f"{shape}-{params}", smooth=not _size_zero(shape), params=dict(params))
                for shape, params in cases]
    return gen


def _shape_row(name, fn, ref, cases, public=None, **kw):
    row(name=name, fn=fn, ref=ref, public=public or name, samples=_cases(cases), tol=EXACT,
        grad_tol=kw.pop("grad_tol", REDUCTION), **kw)


_shape_row("squeeze", lambda x, axis=None: ad.squeeze(x, axis), "squeeze",
           [((1, 3, 1), {}), ((1, 3, 1), {"axis": -1}), ((1, 3, 1), {"axis": (0, 2)}), ((1,), {}), ((), {}),
            ((2, 1, 0), {"axis": 1}), ((1, 1), {"axis": ()})])
_shape_row("squeeze_method", lambda x, axis=None: x.squeeze(axis), "squeeze", [((4, 1), {"axis": 1})],
           public="squeeze")
_shape_row("expand_dims", lambda x, axis: ad.expand_dims(x, axis), "expand_dims",
           [((3, 4), {"axis": 0}), ((3, 4), {"axis": -1}), ((3, 4), {"axis": (0, 3)}), ((), {"axis": 0}),
            ((0, 2), {"axis": (1, -1)})])
_shape_row("unsqueeze", lambda x, axis: ad.unsqueeze(x, axis), "expand_dims",
           [((3, 4), {"axis": 1}), ((3,), {"axis": -1})])
_shape_row("unsqueeze_method", lambda x, axis: x.unsqueeze(axis), "expand_dims", [((2, 3), {"axis": -2})],
           public="unsqueeze")
_shape_row("flatten", lambda x, **p: ad.flatten(x, **p), "flatten",
           [((2, 3, 4), {}), ((2, 3, 4), {"start_dim": 1}), ((2, 3, 4), {"start_dim": 0, "end_dim": -2}),
            ((), {}), ((5,), {}), ((2, 0, 3), {"start_dim": 1})])
_shape_row("flatten_method", lambda x, **p: x.flatten(**p), "flatten", [((2, 3, 4), {"start_dim": -2})],
           public="flatten")
_shape_row("permute", lambda x, axes: ad.permute(x, *axes), "transpose",
           [((2, 3, 4), {"axes": (2, 0, 1)}), ((2, 3, 4), {"axes": (-1, 1, 0)}), ((3,), {"axes": (0,)}),
            ((), {"axes": ()}), ((2, 0, 1), {"axes": (1, 2, 0)})])
_shape_row("permute_method", lambda x, axes: x.permute(axes), "transpose", [((2, 3), {"axes": (1, 0)})],
           public="permute")
_shape_row("moveaxis", lambda x, source, destination: ad.moveaxis(x, source, destination), "moveaxis",
           [((2, 3, 4), {"source": 0, "destination": -1}), ((2, 3, 4), {"source": (0, 1), "destination": (-1, 0)}),
            ((2, 3, 4), {"source": -1, "destination": 1}), ((1, 0, 2), {"source": 1, "destination": 0})])
_shape_row("swapaxes", lambda x, axis1, axis2: ad.swapaxes(x, axis1, axis2), "swapaxes",
           [((2, 3, 4), {"axis1": 0, "axis2": 2}), ((2, 3, 4), {"axis1": -1, "axis2": 1}),
            ((3,), {"axis1": 0, "axis2": 0}), ((0, 3), {"axis1": 0, "axis2": 1})])
_shape_row("flip", lambda x, axis=None: ad.flip(x, axis), "flip",
           [((2, 3, 4), {}), ((2, 3, 4), {"axis": 1}), ((2, 3, 4), {"axis": (0, -1)}), ((5,), {"axis": -1}),
            ((), {}), ((2, 0), {"axis": 1}), ((1, 3), {"axis": 0})])
_shape_row("flip_method", lambda x, axis=None: x.flip(axis), "flip", [((3, 4), {"axis": 0})], public="flip")
_shape_row("roll", lambda x, shift, axis=None: ad.roll(x, shift, axis), "roll",
           [((2, 3, 4), {"shift": 1, "axis": 1}), ((2, 3, 4), {"shift": -5, "axis": -1}),
            ((2, 3, 4), {"shift": 7}), ((2, 3, 4), {"shift": (1, -2), "axis": (0, 2)}),
            ((2, 3, 4), {"shift": 2, "axis": (0, 1)}), ((2, 3), {"shift": (1, 1), "axis": (1, 1)}),
            ((), {"shift": 3}), ((2, 0), {"shift": 1, "axis": 1}), ((1,), {"shift": 1, "axis": 0})])
_shape_row("roll_method", lambda x, shift, axis=None: x.roll(shift, axis), "roll",
           [((3, 4), {"shift": 1, "axis": 0})], public="roll")
_shape_row("tile", lambda x, reps: ad.tile(x, reps), "tile",
           [((2, 3), {"reps": 2}), ((2, 3), {"reps": (2, 1)}), ((2, 3), {"reps": (2, 1, 3)}), ((3,), {"reps": (2, 2)}),
            ((), {"reps": 3}), ((2, 3), {"reps": (0, 2)}), ((1, 0), {"reps": 2}), ((2, 3), {"reps": ()})])
_shape_row("tile_method", lambda x, reps: x.tile(reps), "tile", [((2, 3), {"reps": (1, 2)})], public="tile")
_shape_row("repeat", lambda x, repeats, axis=None: ad.repeat(x, repeats, axis), "repeat",
           [((2, 3), {"repeats": 2}), ((2, 3), {"repeats": 3, "axis": 0}), ((2, 3), {"repeats": 2, "axis": -1}),
            ((2, 3), {"repeats": [1, 0, 2], "axis": 1}), ((2, 3, 2), {"repeats": [2, 1], "axis": 0}),
            ((2, 3), {"repeats": [2], "axis": 1}), ((), {"repeats": 2}), ((2, 0), {"repeats": 2, "axis": 1}),
            ((2, 3), {"repeats": 0, "axis": 0})])
_shape_row("repeat_method", lambda x, repeats, axis=None: x.repeat(repeats, axis), "repeat",
           [((2, 3), {"repeats": 2, "axis": 0})], public="repeat")
_shape_row("pad", lambda x, pad_width, **p: ad.pad(x, pad_width, **p), "pad_constant",
           [((2, 3), {"pad_width": 1}), ((2, 3), {"pad_width": ((0, 2), (1, 0))}), ((2, 3, 4), {"pad_width": ((0, 0), (1, 1), (0, 0))}),
            ((2, 3), {"pad_width": (2, 1), "constant_values": 1.5}), ((2, 3), {"pad_width": ((1, 0), (0, 2)), "constant_values": ((1, 2), (3, 4))}),
            ((3,), {"pad_width": 0}), ((2, 0), {"pad_width": 1}), ((), {"pad_width": 0})])
for _mode in ("reflect", "edge", "wrap"):
    _shape_row("pad_" + _mode, lambda x, pad_width, mode: ad.pad(x, pad_width, mode=mode), "pad_moves",
               [((3, 4), {"pad_width": 2, "mode": _mode}), ((3, 4), {"pad_width": ((0, 5), (1, 0)), "mode": _mode}),
                ((2, 3, 4), {"pad_width": ((0, 0), (2, 1), (0, 0)), "mode": _mode}), ((1, 3), {"pad_width": 1, "mode": _mode}),
                ((4,), {"pad_width": (3, 0), "mode": _mode})], public="pad")
_shape_row("take_along_axis", lambda x, indices, axis=-1: ad.take_along_axis(x, indices, axis), "take_along_axis",
           [((2, 3, 4), {"indices": np.arange(40).reshape(2, 5, 4) * 7 % 3, "axis": 1}),
            ((2, 3, 4), {"indices": np.array([[[0, 3, -1]], [[2, 2, 1]]]), "axis": -1}),
            ((2, 3), {"indices": np.array([[0], [1]]), "axis": 0}),
            ((5,), {"indices": np.array([4, 0, 0, -2]), "axis": None}),
            ((2, 3), {"indices": np.zeros((2, 0), int), "axis": 1})])
row(name="put_along_axis", fn=lambda x, v, indices, axis: ad.put_along_axis(x, indices, v, axis), ref="put_along_axis",
    public="put_along_axis", tol=EXACT, grad_tol=REDUCTION,
    samples=lambda rng: [Sample((rng.standard_normal(xs), rng.standard_normal(vs)), f"{xs}-{vs}-{p['axis']}",
                                params=p)
                         for xs, vs, p in [((3, 4), (1, 4), {"indices": np.array([[2, 0, 0, 1]]), "axis": 0}),
                                           ((3, 4), (3, 2), {"indices": np.array([[1, 1], [0, 3], [2, 2]]), "axis": 1}),
                                           ((3, 4), (), {"indices": np.array([[0], [2], [1]]), "axis": -1}),
                                           ((6,), (2,), {"indices": np.array([5, 0]), "axis": None})]])
row(name="scatter_add", fn=lambda x, src, dim, index: ad.scatter_add(x, dim, index, src), ref="scatter_add_along",
    public="scatter_add", tol=REDUCTION, grad_tol=REDUCTION,
    samples=lambda rng: [Sample((rng.standard_normal(xs), rng.standard_normal(ss)), f"{xs}-{ss}-{p['dim']}", params=p)
                         for xs, ss, p in [((3, 4), (2, 4), {"dim": 0, "index": np.array([[2, 0, 0, 1], [2, 2, 0, 1]])}),
                                           ((3, 4), (3, 5), {"dim": 1, "index": np.array([[1, 1], [0, 3], [3, 3]])}),
                                           ((3, 4), (2, 2), {"dim": -1, "index": np.zeros((0, 2), int)}),
                                           ((5,), (3,), {"dim": 0, "index": np.array([4, 4, 0])})]])
for _name in ("tril", "triu"):
    _shape_row(_name, lambda x, k=0, _f=getattr(ad, _name): _f(x, k), _name,
               [((3, 4), {}), ((4, 3), {"k": 1}), ((2, 3, 3), {"k": -1}), ((4,), {}), ((0, 3), {}), ((3, 3), {"k": 5})])
    _shape_row(_name + "_method", lambda x, k=0, _n=_name: getattr(x, _n)(k), _name, [((3, 3), {"k": 1})], public=_name)
_shape_row("diagonal", lambda x, **p: ad.diagonal(x, **p), "diagonal",
           [((3, 4), {}), ((3, 4), {"offset": 1}), ((3, 4), {"offset": -2}), ((2, 3, 4), {"axis1": 2, "axis2": 0}),
            ((2, 3, 4), {"offset": 1, "axis1": -1, "axis2": 1}), ((3, 4), {"offset": 9}), ((0, 2), {})])
_shape_row("diagonal_method", lambda x, **p: x.diagonal(**p), "diagonal", [((3, 3), {"offset": -1})], public="diagonal")


# ---------------------------------------------------------------------------------------------
# issue 17, reductions and scans (pyautodiff/reduce_ops.py; references in reference/reduce_ops.py):
# sums and products associated differently from NumPy's loops (trees, doubling scans): REDUCTION
# ---------------------------------------------------------------------------------------------
def _with_zeros(count):
    """Normal samples with `count` exact zeros in the first slice along axis 0 (prod and cumprod
    must differentiate through them without 0/0)."""
    def draw(rng, shape):
        x = rng.standard_normal(shape)
        if x.size:
            x.reshape(-1)[:count] = 0.0
        return x
    return draw


_PROD_CASES = [((), None, False), ((7,), None, False), ((3, 4), 0, False), ((3, 4), -1, True), ((2, 3, 5), (0, 2), False),
               ((2, 3, 4), None, True), ((1, 5, 1), 1, False), ((2, 0, 3), 1, False), ((2, 0, 3), 0, True),
               ((33,), 0, False)]
for _z in (0, 1, 2):
    row(name=f"prod_zeros{_z}", fn=ad.prod, ref="prod", public="prod", tol=REDUCTION, grad_tol=REDUCTION,
        samples=reduction(_with_zeros(_z), _PROD_CASES))
_reduce_row("prod", None, normal, [((3, 4), 1, False)], method=True)
for _name in ("var", "std"):
    for _ddof in (0, 1):
        row(name=f"{_name}_ddof{_ddof}", fn=lambda x, _f=getattr(ad, _name), **p: _f(x, **p), ref=_name, public=_name,
            tol=REDUCTION, grad_tol=REDUCTION,
            samples=_with_params(reduction(normal, [((7,), None, False), ((3, 4), 0, False), ((3, 4), -1, True),
                                                     ((2, 3, 4), (0, 2), False), ((2, 3, 4), None, True),
                                                     ((5, 2), (1,), False)]), {"ddof": _ddof}))
    _reduce_row(_name, None, normal, [((3, 4), 1, False)], method=True)

_NORM_CASES = [((5,), {}), ((3, 4), {}), ((2, 3, 4), {}), ((5,), {"ord": 1}), ((5,), {"ord": np.inf}),
               ((5,), {"ord": -np.inf}), ((5,), {"ord": 3}), ((5,), {"ord": 0.5}), ((3, 4), {"ord": 2, "axis": 1}),
               ((3, 4), {"ord": 1, "axis": 0, "keepdims": True}), ((3, 4), {"ord": np.inf, "axis": -1}),
               ((3, 4), {"ord": "fro"}), ((3, 4), {"ord": 1}), ((3, 4), {"ord": -1}), ((3, 4), {"ord": np.inf}),
               ((3, 4), {"ord": -np.inf}), ((2, 3, 4), {"ord": "fro", "axis": (2, 0)}),
               ((2, 3, 4), {"ord": 1, "axis": (0, 2), "keepdims": True}), ((2, 3, 4), {"axis": 1}),
               ((2, 3, 4), {"ord": np.inf, "axis": (-1, 1)}), ((0, 3), {"axis": 0}), ((3, 4), {"ord": 2}),
               ((4, 3), {"ord": -2}), ((3, 4), {"ord": "nuc"}), ((2, 3, 4), {"ord": 2, "axis": (2, 0), "keepdims": True}),
               ((2, 3, 4), {"ord": "nuc", "axis": (-1, 1)}), ((2, 3, 4), {"ord": -2, "axis": (0, 1)})]
row(name="norm", fn=lambda x, **p: ad.norm(x, **p), ref="norm", public="norm", tol=REDUCTION, grad_tol=REDUCTION,
    samples=_cases(_NORM_CASES))
row(name="norm_at_zero", fn=lambda x, **p: ad.norm(x, **p), ref="norm", public="norm", tol=REDUCTION,
    grad_tol=REDUCTION, samples=lambda rng: [Sample((np.zeros((2, 3)),), "zeros", smooth=False, params={}),
                                             Sample((np.array([[0.0, 0], [1, 2]]),), "zero-row", smooth=False,
                                                    params={"axis": 1}),
                                             # singular values 0: each contributes 0 (the kink's smallest subgradient)
                                             Sample((np.zeros((2, 3)),), "zeros-nuc", smooth=False, params={"ord": "nuc"}),
                                             Sample((np.zeros((3, 2)),), "zeros-2", smooth=False, params={"ord": 2}),
                                             Sample((np.diag([2.0, 0.0]),), "rank-1-nuc", smooth=False,
                                                    params={"ord": "nuc"})])

_SCAN_CASES = [((7,), {}), ((7,), {"axis": 0}), ((3, 4), {"axis": 0}), ((3, 4), {"axis": -1}), ((2, 3, 4), {}),
               ((2, 3, 5), {"axis": 1}), ((1,), {"axis": 0}), ((), {}), ((2, 0), {"axis": 1}), ((0, 3), {"axis": 1}),
               ((37,), {"axis": 0})]
row(name="cumsum", fn=lambda x, **p: ad.cumsum(x, **p), ref="cumsum", public="cumsum", tol=REDUCTION,
    grad_tol=REDUCTION, samples=_cases(_SCAN_CASES))
for _z in (0, 1, 2):
    row(name=f"cumprod_zeros{_z}", fn=lambda x, **p: ad.cumprod(x, **p), ref="cumprod", public="cumprod",
        tol=REDUCTION, grad_tol=REDUCTION, samples=_cases(_SCAN_CASES, _with_zeros(_z)))

_SORT_CASES = [((7,), {}), ((3, 4), {"axis": 0}), ((3, 4), {"axis": -1, "descending": True}), ((2, 3, 4), {"axis": 1}),
               ((5,), {"axis": None}), ((0, 3), {}), ((1,), {})]
row(name="sort", fn=lambda x, **p: ad.sort(x, **p), ref="sort", public="sort", tol=EXACT, grad_tol=EXACT,
    samples=_cases(_SORT_CASES))
row(name="sort_ties", fn=lambda x, **p: ad.sort(x, **p), ref="sort", public="sort", tol=EXACT, grad_tol=EXACT,
    samples=lambda rng: [Sample((np.array([[1.0, 0, 1, 0, 1], [2, 2, 2, 1, 1]]),), "ties", smooth=False,
                                params={"axis": 1, "descending": d}) for d in (False, True)])
row(name="topk", fn=lambda x, k, descending, axis=-1: ad.topk(x, k, axis, largest=descending)[0], ref="sort",
    public="topk", tol=EXACT, grad_tol=EXACT,
    samples=_cases([((7,), {"k": 3, "descending": True}), ((3, 4), {"k": 2, "axis": 0, "descending": True}),
                    ((3, 4), {"k": 4, "descending": False}), ((2, 3, 4), {"k": 1, "axis": 1, "descending": True}),
                    ((3, 4), {"k": 0, "descending": True})]))


# ---------------------------------------------------------------------------------------------
# issue 17, products (pyautodiff/linalg_ops.py; references in reference/linalg_ops.py): on matmul,
# so MATMUL tolerances
# ---------------------------------------------------------------------------------------------
def _operands(cases):
    """Samples from (label, shapes, params) triples."""
    def gen(rng):
        return [Sample(tuple(rng.standard_normal(s) for s in shapes), label, smooth=not _size_zero(*shapes),
                       params=dict(params)) for label, shapes, params in cases]
    return gen


def _product_row(name, fn, cases, public=None):
    row(name=name, fn=fn, ref=name if public is None else public, public=public or name, samples=_operands(cases),
        tol=MATMUL, grad_tol=MATMUL)


_product_row("dot", ad.dot, [(l, s, {}) for l, s in [
    ("vv", [(4,), (4,)]), ("mm", [(3, 4), (4, 2)]), ("mv", [(3, 4), (4,)]), ("vm", [(4,), (4, 3)]), ("s", [(), (2, 3)]),
    ("3d2d", [(2, 3, 4), (4, 5)]), ("3d3d", [(2, 3, 4), (2, 4, 3)]), ("3d1d", [(2, 3, 4), (4,)]), ("empty", [(0, 3), (3, 2)])]])
_product_row("vdot", ad.vdot, [("mm", [(2, 3), (3, 2)], {}), ("vv", [(5,), (5,)], {}), ("ss", [(), ()], {})])
_product_row("outer", ad.outer, [("vv", [(3,), (4,)], {}), ("mv", [(2, 2), (3,)], {}), ("s", [(), (2,)], {}),
                                 ("empty", [(0,), (3,)], {})])
_product_row("inner", ad.inner, [("vv", [(4,), (4,)], {}), ("mm", [(3, 4), (2, 4)], {}), ("3d", [(2, 3, 4), (5, 4)], {}),
                                 ("s", [(), (3,)], {})])
_product_row("tensordot", lambda a, b, axes: ad.tensordot(a, b, axes),
             [("2", [(2, 3, 4), (3, 4, 5)], {"axes": 2}), ("0", [(2, 3), (4,)], {"axes": 0}),
              ("1", [(2, 3), (3, 4)], {"axes": 1}), ("pairs", [(2, 3, 4), (4, 2, 5)], {"axes": ((0, 2), (1, 0))}),
              ("neg", [(2, 3, 4), (3, 5)], {"axes": ([-2], [0])}), ("empty", [(0, 3), (3, 2)], {"axes": 1})])
_product_row("trace", lambda x, **p: ad.trace(x, **p),
             [("m", [(3, 3)], {}), ("rect", [(3, 5)], {"offset": 1}), ("neg", [(4, 3)], {"offset": -1}),
              ("3d", [(2, 3, 4)], {"axis1": 1, "axis2": -1}), ("far", [(3, 3)], {"offset": 4})])
_product_row("trace_method", lambda x, **p: x.trace(**p), [("m", [(3, 3)], {"offset": 1})], public="trace")
EINSUM_CASES = [
    ("ij,jk->ik", [(3, 4), (4, 2)]), ("ij,jk", [(3, 4), (4, 2)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)]),
    ("i,j->ij", [(3,), (4,)]), ("ii->i", [(3, 3)]), ("ii", [(3, 3)]), ("ij->ji", [(2, 3)]), ("ij->", [(2, 3)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (3, 4, 2)]), ("i,ij,j->", [(3,), (3, 4), (4,)]), ("ijk,jil->kl", [(2, 3, 4), (3, 2, 2)]),
    ("ij,ij->i", [(2, 3), (2, 3)]), ("bn,anm,bm->ba", [(3, 3), (2, 3, 2), (3, 2)]), ("iij->j", [(2, 2, 3)]),
    ("i,i", [(1,), (3,)]), ("Ba,ab", [(2, 3), (3, 2)]), ("i...->...", [(3, 2)]), ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
    ("ab,cd->abcd", [(2, 3), (1, 2)]), ("iji->j", [(2, 3, 2)]), ("ij,kj->ik", [(0, 3), (2, 3)]), ("", [()]),
    ("bhqd,bhkd->bhqk", [(2, 1, 3, 2), (2, 2, 3, 2)]), ("i,i->i", [(3,), (3,)])]
row(name="einsum", fn=lambda *ts, subscripts: ad.einsum(subscripts, *ts), ref="einsum", public="einsum",
    samples=_operands([(spec, shapes, {"subscripts": spec}) for spec, shapes in EINSUM_CASES]), tol=MATMUL,
    grad_tol=MATMUL)

# the scan op itself (csrc/kernels/scan.c) in both directions, the reverse one being what the
# forward one's rules record
_SCAN_OP_CASES = [((5,), 0), ((3, 4), 0), ((3, 4), 1), ((2, 3, 4), 1), ((2, 3, 4), -1), ((1,), 0), ((2, 0), 1),
                  ((0, 3), 1)]
for _rev, _unit in ((False, False), (True, False), (False, True)):
    row(name=f"scan_reverse{int(_rev)}_unit{int(_unit)}", ref="scan", public="cumsum", tol=REDUCTION, grad_tol=REDUCTION,
        fn=lambda a, b, axis, reverse, unit: ad.reduce_ops._scan(a, b, axis % a.ndim, reverse, unit),
        samples=lambda rng, _rev=_rev, _unit=_unit: [
            Sample((rng.uniform(-1.5, 1.5, s), rng.standard_normal(s)), f"{s}-{ax}", smooth=not _size_zero(s),
                   params={"axis": ax % len(s), "reverse": _rev, "unit": _unit}) for s, ax in _SCAN_OP_CASES])
row(name="topk_method", fn=lambda x, k, descending, axis=-1: x.topk(k, axis, largest=descending)[0], ref="sort",
    public="topk", tol=EXACT, grad_tol=EXACT, samples=_cases([((3, 4), {"k": 2, "axis": 1, "descending": True})]))
row(name="scatter_add_method", fn=lambda x, src, dim, index: x.scatter_add(dim, index, src), ref="scatter_add_along",
    public="scatter_add", tol=REDUCTION, grad_tol=REDUCTION,
    samples=lambda rng: [Sample((rng.standard_normal((3, 4)), rng.standard_normal((2, 4))), "(3, 4)-(2, 4)-0",
                                params={"dim": 0, "index": np.array([[2, 0, 0, 1], [2, 2, 0, 1]])})])


# ---------------------------------------------------------------------------------------------
# issue 17, ad.linalg on LAPACK (pyautodiff/linalg.py; references in reference/lapack.py). The
# matrices are well conditioned (cond ~ 10: diagonally dominant, or R R^T + n I for cholesky),
# so that the values are about the data and not about conditioning. LINALG: float64 values are
# NumPy's own LAPACK calls, but the rules chain two or three solves that NumPy's reference forms
# differently (inv then products): each loses ~cond * eps, so 1e-10 relative leaves a wide margin
# over the ~1e-14 seen; float32 (2e-4, 2e-5): the same chains at eps = 1.2e-7 (errors seen ~1e-5
# on the largest gradients, whose entries reach ~10).
# ---------------------------------------------------------------------------------------------
LINALG = {F64: (1e-10, 1e-12), F32: (2e-4, 2e-5)}


def well_conditioned(rng, shape):
    """A diagonally weighted random matrix (cond ~ 10), rows of some batch elements negated so
    that det takes both signs."""
    m = rng.standard_normal(shape) + shape[-1] * np.eye(shape[-1]) if shape[-1] else np.zeros(shape)
    if m.size:
        m.reshape(-1, *shape[-2:])[::2, 0] *= -1
    return m


def spd(rng, shape):
    """R R^T + n I: symmetric positive definite, cond ~ 10."""
    r = rng.standard_normal(shape)
    return r @ np.swapaxes(r, -1, -2) + shape[-1] * np.eye(shape[-1])


_SQUARE = [(3, 3), (1, 1), (2, 4, 4), (2, 1, 3, 3), (0, 0), (0, 2, 2)]


def _square_row(name, fn, ref, draw=well_conditioned):
    row(name=name, fn=fn, ref=ref, public=name, tol=LINALG, grad_tol=LINALG,
        samples=lambda rng: [Sample((draw(rng, s),), f"{s}", smooth=not _size_zero(s)) for s in _SQUARE])


_square_row("linalg.inv", lambda a: ad.linalg.inv(a), "inv")
_square_row("linalg.det", lambda a: ad.linalg.det(a), "det")
_square_row("linalg.slogdet", lambda a: ad.linalg.slogdet(a).logabsdet, "logdet")
_square_row("linalg.cholesky", lambda a: ad.linalg.cholesky(a), "cholesky", spd)
# b a vector when 1-D, else (..., n, k); the batch axes of a and b broadcast
_SOLVE = [((3, 3), (3,)), ((3, 3), (3, 2)), ((2, 3, 3), (3,)), ((2, 3, 3), (1, 3, 2)), ((3, 3), (2, 3, 1)),
          ((2, 1, 4, 4), (3, 4, 2)), ((1, 1), (1,)), ((0, 0), (0,)), ((3, 3), (3, 0))]
row(name="linalg.solve", fn=lambda a, b: ad.linalg.solve(a, b), ref="solve", public="linalg.solve", tol=LINALG,
    grad_tol=LINALG,
    samples=lambda rng: [Sample((well_conditioned(rng, sa), rng.standard_normal(sb)), f"{sa}x{sb}",
                                smooth=not _size_zero(sa, sb)) for sa, sb in _SOLVE])


# svd and svdvals (gesdd; reference/lapack.py) on matrices with well-separated singular values
# (Q1 diag(s) Q2^T, s at least 0.5 apart and from 0), so that F = 1 / (s_j^2 - s_i^2) stays below
# ~1 and the values are about the data (a repeated singular value is an error for svd's U and Vh,
# tests/test_svd.py). svd's row returns U, S, Vh packed along the last axis, each pair (u_i, v_i)
# signed by reference.lapack.svd_signs, a function of a (ad.sign's gradient is 0), so that the
# reference and finite differences apply whatever signs gesdd picks. LINALG: gesdd is NumPy's own
# call (bit for bit in float64); the rules chain ~6 products and F, errors seen ~1e-14 (float64)
# and ~1e-6 (float32) against values of order 1-10.
def separated(rng, shape):
    m, n = shape[-2:]
    k, batch = min(m, n), tuple(shape[:-2])
    if not k or 0 in batch:
        return np.zeros(shape)
    q1 = np.linalg.qr(rng.standard_normal(batch + (m, m)))[0][..., :k]
    q2 = np.linalg.qr(rng.standard_normal(batch + (n, n)))[0][..., :k]
    s = 0.5 + 0.6 * np.arange(k)[::-1] + rng.uniform(0, 0.1, batch + (k,))
    return (q1 * s[..., None, :]) @ np.swapaxes(q2, -1, -2)


def _svd_packed(a, full_matrices=False):
    u, s, vh = ad.linalg.svd(a, full_matrices=full_matrices)
    sign = ad.sign(ad.sum(u * np.linspace(1.0, 2.0, u.shape[-2], dtype=u.dtype)[:, None], axis=-2, keepdims=True))
    batch = tuple(s.shape[:-1])
    return ad.concatenate([ad.reshape(u * sign, batch + (u.shape[-2] * u.shape[-1],)), s,
                           ad.reshape(vh * ad.swapaxes(sign, -1, -2), batch + (vh.shape[-2] * vh.shape[-1],))], -1)


_SVD = [(3, 3), (4, 3), (3, 5), (2, 4, 3), (2, 1, 3, 2), (1, 1), (1, 4), (0, 3), (2, 0, 0)]
_SVD_EDGES = [(np.eye(3), "identity"), (np.diag([3.0, 0.0, 1.0]), "zero-singular-value"),
              (np.ones((3, 2)), "rank-1")]


def _svd_samples(shapes, edges=()):
    def gen(rng):
        return ([Sample((separated(rng, s),), f"{s}", smooth=not _size_zero(s)) for s in shapes]
                + [Sample((a,), label, smooth=False) for a, label in edges])
    return gen


# svdvals' derivative holds at repeated singular values (identity); a zero one contributes 0
row(name="linalg.svdvals", fn=lambda a: ad.linalg.svdvals(a), ref="svdvals", public="linalg.svdvals", tol=LINALG,
    grad_tol=LINALG, samples=_svd_samples(_SVD, _SVD_EDGES[:2]))
row(name="linalg.svd_S", fn=lambda a: ad.linalg.svd(a).S, ref="svdvals", public="linalg.svd", tol=LINALG,
    grad_tol=LINALG, samples=_svd_samples(_SVD, _SVD_EDGES[:2]))
row(name="linalg.svd_compute_uv_false", fn=lambda a: ad.linalg.svd(a, compute_uv=False), ref="svdvals",
    public="linalg.svd", tol=LINALG, grad_tol=LINALG, samples=_svd_samples([(3, 4), (2, 3, 2)]))
row(name="linalg.svd", fn=_svd_packed, ref="svd", public="linalg.svd", tol=LINALG, grad_tol=LINALG,
    samples=_svd_samples(_SVD))
# full_matrices=True of a square matrix is the thin SVD (not square: no derivative, tests/test_svd.py)
row(name="linalg.svd_full_square", fn=lambda a: _svd_packed(a, full_matrices=True), ref="svd", public="linalg.svd",
    tol=LINALG, grad_tol=LINALG, samples=_svd_samples([(3, 3), (2, 2, 2)]))
