"""Every elementwise op, one row each: the single description from which the rest is made.

A row gives the op's forward formula and the derivative of the output with respect to each input,
side by side. From it `pyautodiff/_genops.py` (run by the build; `python -m pyautodiff._genops`
by hand) writes the C enum, the op-table rows, the numeric kernels of both dtypes (forward, VJP,
JVP), the second-order terms (by differentiating the derivative formulas symbolically), which
values the rules read, and the differentiable rules (each derivative emitted as recorded ops, so a
gradient can be differentiated again). `ops.py` makes the public functions from the rows, and the
tests iterate over them. Adding an op is one row here plus its NumPy reference in
`reference/elementwise.py`; see CONTRIBUTING.md.

Formulas are Python expressions over
  x            the input of a unary op;  a, b  the inputs of a binary op (broadcast against each other)
  y            the op's output (a derivative may reuse it: exp's is `y`)
  parameters   the row's `params` by name (leaky_relu's negative_slope), or c for `x op c`
  other ops    by name, e.g. `cos(x)`, `sigmoid(a - b)`; a derivative is built only from ops,
               arithmetic (+ - * / **, unary -), constants (numbers, pi, nan, inf), and
               `where(cond, p, q)` with comparisons, `isnan(u)`, `and`, `or`, `not` in cond.
A forward formula may also call the C functions in `C_FUNCTIONS` (it is never differentiated).

The NaN-safety rule holds for every op: a zero cotangent or tangent contributes exactly zero, even
where the derivative is inf or NaN. `route=True` ops (maximum, minimum) go further: where the
derivative is 0 the input gets exactly 0, even from an infinite or NaN cotangent, since the value
did not come from that input. A derivative that is the constant 0 (floor, sign, ...) gives exact
zeros, as PyTorch does.

Test fields: `domain` draws smooth random samples ("normal", "wide", "positive", "unit", "above1",
"nonzero"; per input for binary ops), `edges` adds edge values checked against the
reference exactly (not by finite differences), `test_params` lists parameter sets to test besides
the defaults.
"""
from dataclasses import dataclass, field
from typing import Optional

# C functions a forward formula may call, by formula name -> C name (tgmath picks the float
# version for float32). Op names that are not here are inlined from their own forward formula.
C_FUNCTIONS = {
    "exp": "exp", "log": "log", "sqrt": "sqrt", "abs": "fabs", "sin": "sin", "cos": "cos",
    "tanh": "tanh", "log1p": "log1p", "expm1": "expm1", "log2": "log2", "log10": "log10",
    "exp2": "exp2", "tan": "tan", "arcsin": "asin", "arccos": "acos", "arctan": "atan",
    "sinh": "sinh", "cosh": "cosh", "arcsinh": "asinh", "arccosh": "acosh", "arctanh": "atanh",
    "erf": "erf", "erfc": "erfc", "floor": "floor", "ceil": "ceil", "trunc": "trunc", "round": "nearbyint",
    "power": "pow", "arctan2": "atan2", "hypot": "hypot",
    # NumPy's floor_divide and mod (divmod semantics, csrc/kernels/ewmath.h)
    "np_floor_divide": "ad_floor_divide", "np_mod": "ad_mod",
}


@dataclass
class Op:
    name: str                       # public and op-table name (NumPy's where NumPy has the op)
    kind: str                       # "unary" (incl. parameters) or "binary"
    forward: str
    d: tuple                        # derivative formula per input
    doc: str
    enum: str = ""                  # C enum suffix, AD_OP_<enum> (default: NAME)
    params: dict = field(default_factory=dict)   # unary only, at most 2: name -> default
    route: bool = False
    public: bool = True             # False: reached through another function (x + c, gelu's variants)
    method: bool = False            # also a Tensor method (NumPy's ndarray has one)
    ref: str = ""                   # key of its NumPy reference (default: name)
    domain: tuple = ("normal",)
    edges: tuple = ()
    test_params: tuple = ()

    @property
    def reference(self):
        return self.ref or self.name

    @property
    def code(self):
        return "AD_OP_" + (self.enum or self.name.upper())


UNARY, BINARY = [], []


def unary(name, forward, dx, doc, **kw):
    UNARY.append(Op(name, "unary", forward, (dx,), doc, **kw))


def binary(name, forward, da, db, doc, **kw):
    BINARY.append(Op(name, "binary", forward, (da, db), doc, **kw))


nan, inf = float("nan"), float("inf")

# ---- unary ------------------------------------------------------------------------------------
unary("negative", "-x", "-1", "-x elementwise.", enum="NEG",
      edges=(0.0, [1e308, -1e-308]))
unary("exp", "exp(x)", "y", "e**x elementwise.", domain=("wide",),
      edges=([-1000.0, 0.0, 700.0], 800.0, [nan, -inf, inf]))
unary("log", "log(x)", "1 / x", "Natural logarithm elementwise.", domain=("positive",),
      edges=(0.0, [0.0, 1.0, 1e-300], -1.0))
unary("sqrt", "sqrt(x)", "0.5 / y", "Square root elementwise (gradient +inf at 0).",
      domain=("positive",), edges=(0.0, [0.0, 4.0, 1e-300], [nan, inf, -1.0]))
# kinks: derivative 0 at 0, NaN at NaN
unary("abs", "abs(x)", "where(x > 0, 1, where(x < 0, -1, where(isnan(x), nan, 0)))",
      "|x| elementwise; its gradient at 0 is 0.", edges=(0.0, [-2.0, 0.0, 3.0, -0.0], [nan, 1.0]))
unary("sin", "sin(x)", "cos(x)", "Sine elementwise.", domain=("wide",), edges=([0.0, 3.141592653589793, -1.5707963267948966],))
unary("cos", "cos(x)", "-sin(x)", "Cosine elementwise.", domain=("wide",), edges=([0.0, 3.141592653589793, 1.5707963267948966],))
unary("tanh", "tanh(x)", "1 - y * y", "Hyperbolic tangent elementwise.", domain=("wide",),
      edges=([-50.0, 0.0, 50.0, 1e-10],))
# exp of a non-positive number only: +-1000 neither overflows nor loses the small side
# one exp and one division: 1 / (1 + e) for x >= 0, e / (1 + e) below, with e = exp(-|x|) <= 1
unary("sigmoid", "where(x >= 0, 1, exp(-abs(x))) / (1 + exp(-abs(x)))",
      "y * (1 - y)", "1 / (1 + exp(-x)), computed without overflow.", domain=("wide",),
      edges=([-1000.0, -40.0, 0.0, 40.0, 1000.0],))
unary("relu", "where(x > 0 or isnan(x), x, 0)", "where(x > 0, 1, where(isnan(x), nan, 0))",
      "max(x, 0) elementwise; its gradient at 0 is 0.", edges=(0.0, [-1.0, 0.0, 2.0, -0.0], [nan, -1.0]))
unary("log1p", "log1p(x)", "1 / (1 + x)", "log(1 + x), accurate for small x.", domain=("positive",),
      edges=([-1.0, 0.0, 1e-20], -2.0))
# exp(x), not y + 1, which is 0 below x = -40
unary("expm1", "expm1(x)", "exp(x)", "exp(x) - 1, accurate for small x.", domain=("wide",),
      edges=([-1000.0, 0.0, 1e-20, 800.0],))
unary("log2", "log2(x)", "1 / (x * 0.6931471805599453)", "Base-2 logarithm.", domain=("positive",),
      edges=([0.0, 1.0, 8.0],))
unary("log10", "log10(x)", "1 / (x * 2.302585092994046)", "Base-10 logarithm.", domain=("positive",),
      edges=([0.0, 1.0, 100.0],))
unary("exp2", "exp2(x)", "y * 0.6931471805599453", "2**x elementwise.", domain=("wide",),
      edges=([-2000.0, 0.0, 3.0, 2000.0],))
unary("square", "x * x", "2 * x", "x * x elementwise.", edges=([0.0, 1e200, -3.0],))
unary("reciprocal", "1 / x", "-(y * y)", "1 / x elementwise.", domain=("nonzero",),
      edges=([0.0, -0.0, inf],))
unary("tan", "tan(x)", "1 + y * y", "Tangent elementwise.", domain=("unit",), edges=([0.0, 1.5],))
# (1 - x)(1 + x) rather than 1 - x*x: no cancellation near |x| = 1
unary("arcsin", "arcsin(x)", "1 / sqrt((1 - x) * (1 + x))", "Inverse sine (NumPy's name).", domain=("unit",),
      edges=([-1.0, 0.0, 1.0], 2.0))
unary("arccos", "arccos(x)", "-1 / sqrt((1 - x) * (1 + x))", "Inverse cosine (NumPy's name).", domain=("unit",),
      edges=([-1.0, 0.0, 1.0], 2.0))
unary("arctan", "arctan(x)", "1 / (1 + x * x)", "Inverse tangent (NumPy's name).", domain=("wide",),
      edges=([-1e200, 0.0, inf],))
unary("sinh", "sinh(x)", "cosh(x)", "Hyperbolic sine.", domain=("wide",), edges=([0.0, 800.0],))
unary("cosh", "cosh(x)", "sinh(x)", "Hyperbolic cosine.", domain=("wide",), edges=([0.0, -800.0],))
unary("arcsinh", "arcsinh(x)", "1 / sqrt(x * x + 1)", "Inverse hyperbolic sine.", domain=("wide",),
      edges=([0.0, 1e200],))
unary("arccosh", "arccosh(x)", "1 / sqrt((x - 1) * (x + 1))", "Inverse hyperbolic cosine (x >= 1).",
      domain=("above1",), edges=([1.0, 2.0], 0.5))
unary("arctanh", "arctanh(x)", "1 / ((1 - x) * (1 + x))", "Inverse hyperbolic tangent (|x| < 1).",
      domain=("unit",), edges=([-1.0, 0.0, 1.0], 2.0))
unary("erf", "erf(x)", "1.1283791670955126 * exp(-(x * x))", "The error function.", domain=("wide",),
      edges=([0.0, 30.0, -30.0],))
unary("erfc", "erfc(x)", "-1.1283791670955126 * exp(-(x * x))",
      "1 - erf(x), accurate where erf(x) is near 1.", domain=("wide",), edges=([0.0, 30.0, -30.0],))
# max(x, 0) + log1p(exp(-|x|)): finite at +-1000
unary("softplus", "where(x > 0, x, 0) + log1p(exp(-abs(x)))", "sigmoid(x)",
      "log(1 + exp(x)), computed without overflow.", domain=("wide",), edges=([-1000.0, 0.0, 1000.0],))
# gelu(x, approximate=...) in ops.py picks one of the two. Phi(x) = 0.5 erfc(-x / sqrt 2) and
# 0.5 (1 + tanh u) = sigmoid(2u): the forms with 1 + erf or 1 + tanh cancel for negative x
unary("gelu_erf", "0.5 * x * erfc(x * -0.7071067811865476)",
      "0.5 * erfc(x * -0.7071067811865476) + x * 0.3989422804014327 * exp(-0.5 * (x * x))",
      "Gaussian error linear unit x * Phi(x).", enum="GELU", public=False, ref="gelu", domain=("wide",),
      edges=([-40.0, 0.0, 40.0],))
unary("gelu_tanh", "x * sigmoid(1.5957691216057308 * (x + 0.044715 * (x * x * x)))",
      "sigmoid(1.5957691216057308 * (x + 0.044715 * (x * x * x)))"
      " + x * sigmoid(1.5957691216057308 * (x + 0.044715 * (x * x * x)))"
      " * (1 - sigmoid(1.5957691216057308 * (x + 0.044715 * (x * x * x))))"
      " * 1.5957691216057308 * (1 + 0.134145 * (x * x))",
      "GELU with the tanh approximation.", enum="GELU_TANH", public=False, ref="gelu", domain=("wide",),
      edges=([-40.0, 0.0, 40.0],))
unary("silu", "x * sigmoid(x)", "sigmoid(x) * (1 + x * (1 - sigmoid(x)))", "x * sigmoid(x) (swish).",
      domain=("wide",), edges=([-1000.0, 0.0, 1000.0],))
unary("leaky_relu", "where(x > 0 or isnan(x), x, negative_slope * x)",
      "where(x > 0, 1, where(isnan(x), nan, negative_slope))",
      "x for x > 0, negative_slope * x otherwise; the gradient at 0 is negative_slope (as PyTorch).",
      params={"negative_slope": 0.01}, test_params=({"negative_slope": 0.2},), edges=([-1.0, 0.0, 2.0], [nan]))
unary("elu", "where(x > 0 or isnan(x), x, alpha * expm1(x))", "where(x > 0, 1, alpha * exp(x))",
      "x for x > 0, alpha * (exp(x) - 1) otherwise.", params={"alpha": 1.0},
      test_params=({"alpha": 0.5},), domain=("wide",), edges=([-1000.0, 0.0, 2.0], [nan]))
unary("hardtanh", "where(x < min_val, min_val, where(x > max_val, max_val, x))",
      "where(x > min_val and x < max_val, 1, where(isnan(x), nan, 0))",
      "x clipped to [min_val, max_val]; the gradient is 1 strictly inside, 0 at and beyond the "
      "bounds (as PyTorch).", params={"min_val": -1.0, "max_val": 1.0},
      test_params=({"min_val": -0.5, "max_val": 2.0},), domain=("wide",), edges=([-1.0, 0.0, 1.0, 3.0], [nan]))
unary("sign", "where(x > 0, 1, where(x < 0, -1, x))", "0", "-1, 0 or 1 (NaN stays NaN); gradient 0.",
      edges=([-2.0, -0.0, 0.0, 3.0], [nan]))
unary("floor", "floor(x)", "0", "Largest integer <= x; gradient 0.", domain=("wide",), edges=([-1.5, 0.0, 2.0],))
unary("ceil", "ceil(x)", "0", "Smallest integer >= x; gradient 0.", domain=("wide",), edges=([-1.5, 0.0, 2.0],))
unary("round", "round(x)", "0", "Nearest integer, halves to even (as NumPy); gradient 0.",
      method=True, public=False, domain=("wide",), edges=([-2.5, -0.5, 0.5, 1.5, 2.5],))
unary("trunc", "trunc(x)", "0", "Integer part, toward zero; gradient 0.", domain=("wide",),
      edges=([-1.5, 0.0, 2.7],))

# tensor with a Python scalar c (operators and add/subtract/... with a number): never public by
# themselves, and they keep the tensor's dtype as NumPy's weak scalars do
S = dict(public=False, params={"c": 0.0})
unary("add_scalar", "x + c", "1", "x + c", enum="ADD_S", ref="add", **S)
unary("mul_scalar", "x * c", "c", "x * c", enum="MUL_S", ref="multiply", **S)
unary("rsub_scalar", "c - x", "-1", "c - x", enum="RSUB_S", ref="subtract", **S)
unary("div_scalar", "x / c", "1 / c", "x / c", enum="DIV_S", ref="divide", **S)
unary("rdiv_scalar", "c / x", "-y / x", "c / x", enum="RDIV_S", ref="divide", **S)
# squaring is common and pow() is slow; d/dx is 0 for c == 0, even at x == 0
unary("pow_scalar", "where(c == 2, x * x, power(x, c))",
      "where(c == 0, 0, where(c == 2, 2 * x, c * x ** (c - 1)))", "x ** c", enum="POW_S", ref="power_scalar", **S)
unary("rpow_scalar", "power(c, x)", "where(c == 0, 0, y * log(c))", "c ** x", enum="RPOW_S", ref="power", **S)

# ---- binary (NumPy broadcasting) --------------------------------------------------------------
binary("add", "a + b", "1", "1", "a + b with NumPy broadcasting; the gradient is distributed to both.")
binary("subtract", "a - b", "1", "-1", "a - b with NumPy broadcasting.", enum="SUB")
binary("multiply", "a * b", "b", "a", "a * b with NumPy broadcasting; the gradient swaps the operands.",
       enum="MUL", edges=(([0.0, 1.0, inf], [inf, 0.0, 2.0]),))
binary("divide", "a / b", "1 / b", "-y / b", "a / b with NumPy broadcasting.", enum="DIV",
       domain=("normal", "nonzero"), edges=(([1.0, 0.0, -1.0], [0.0, 0.0, 0.0]),))
# d/da is exactly 0 where the exponent is 0 (even at a = 0, where a**(b - 1) is inf: the zero-safe
# product, which stays differentiable in b there) and d/db is 0 where the base is 0
binary("power", "power(a, b)", "mul_zero_safe(b, a ** (b - 1))", "where(a == 0, 0, y * log(a))",
       "a ** b with NumPy broadcasting; d/db is taken as 0 where a == 0.", enum="POW",
       domain=("positive", "normal"),
       edges=(([0.0, 0.0, 2.0, 0.0], [2.0, 0.5, 0.0, 0.0]), ([-2.0, -1.5], [3.0, 2.0])))
# ties split the gradient equally; a NaN operand is the one the output came from
binary("maximum", "where(a > b or isnan(a), a, b)",
       "where(a > b or isnan(a), 1, where(a == b, 0.5, 0))", "where(b > a or isnan(b), 1, where(a == b, 0.5, 0))",
       "Elementwise max (NaN propagates); ties split the gradient equally.", route=True,
       edges=(([1.0, 2.0, -3.0, 0.0], [1.0, 1.0, -3.0, -0.0]), ([[2.0], [1.0]], [2.0, 2.0, 0.0]),
              ([nan, 1.0, nan, 2.0], [0.0, nan, nan, 1.0])))
binary("minimum", "where(a < b or isnan(a), a, b)",
       "where(a < b or isnan(a), 1, where(a == b, 0.5, 0))", "where(b < a or isnan(b), 1, where(a == b, 0.5, 0))",
       "Elementwise min (NaN propagates); ties split the gradient equally.", route=True,
       edges=(([1.0, 2.0, -3.0, 0.0], [1.0, 1.0, -3.0, -0.0]), ([[2.0], [1.0]], [2.0, 2.0, 0.0]),
              ([nan, 1.0, nan, 2.0], [0.0, nan, nan, 1.0])))
# a == b first: at a = b = +-inf, a - b is NaN, and the result is a (+ log 2, which inf absorbs)
binary("logaddexp", "where(a == b, a + 0.6931471805599453, where(a > b, a, b) + log1p(exp(-abs(a - b))))",
       "sigmoid(a - b)", "sigmoid(b - a)",
       "log(exp(a) + exp(b)) without overflow.", domain=("wide", "wide"),
       edges=(([1000.0, -1000.0, 0.0, inf, -inf, inf], [1000.0, 0.0, 0.0, inf, -inf, -inf]),))
binary("arctan2", "arctan2(a, b)", "b / (a * a + b * b)", "-a / (a * a + b * b)",
       "The angle of the point (b, a): arctan(a / b) in the right quadrant (NumPy's arctan2(y, x)).",
       domain=("nonzero", "nonzero"), edges=(([0.0, 1.0, -1.0], [0.0, 0.0, -0.0]),))
binary("hypot", "hypot(a, b)", "a / y", "b / y", "sqrt(a**2 + b**2) without overflow.",
       domain=("nonzero", "nonzero"), edges=(([0.0, 3.0, 1e200], [0.0, 4.0, 1e200]),))
binary("floor_divide", "np_floor_divide(a, b)", "0", "0",
       "floor(a / b) as NumPy computes it (operator //); gradient 0.", domain=("wide", "nonzero"),
       edges=(([7.0, -7.0, 7.0, 1.0, 0.0], [2.0, 2.0, -2.0, 0.0, 0.0]),))
binary("mod", "np_mod(a, b)", "1", "-floor_divide(a, b)",
       "a - b * floor(a / b), with the sign of b (NumPy's mod, the operator %); its gradient is 1 "
       "in a and -floor_divide(a, b) in b, as PyTorch.", domain=("wide", "nonzero"),
       edges=(([7.0, -7.0, 7.0, 1.0], [2.0, 2.0, -2.0, 0.0]),))

# the product the NaN-safety rule makes (w * d, exactly 0 where the weight w is 0 even if d is inf
# or NaN): what the differentiable rules record for a cotangent or tangent times a derivative
binary("mul_zero_safe", "where(a == 0, 0, a * b)", "b", "a",
       "a * b, but exactly 0 where a is 0 (even when b is inf or NaN).", enum="MUL_SAFE", public=False,
       edges=(([0.0, 0.0, 1.0, 2.0], [inf, nan, inf, 3.0]),))

ALL = UNARY + BINARY
BY_NAME = {op.name: op for op in ALL}
