"""Numerical gradients and gradient checking: the seed's "always use the analytic gradient, but
check it with a numeric one along a random direction from the unit ball".

Public names: ``numerical_grad``, ``numerical_jacobian``, ``gradcheck``, ``GradcheckError``,
``taylor_test`` (and ``default_step``, the step rule below as a function).

Step sizes
----------
With ``eps=None`` the step for an input element x is ``c * max(1, |x|)``, where ``c`` depends on
the input's dtype (its machine epsilon ``m = np.finfo(dtype).eps``) and on the method:

    forward difference  (f(x + h) - f(x)) / h          c = sqrt(m)   float64: 1.49e-08  float32: 3.45e-04
    central difference  (f(x + h) - f(x - h)) / 2h     c = cbrt(m)   float64: 6.06e-06  float32: 4.92e-03

These balance truncation error (O(h) forward, O(h^2) central) against round-off (about m |f| / h),
and the ``max(1, |x|)`` factor keeps the step meaningful for large inputs, whose spacing between
representable numbers grows with |x|. A step given explicitly (``eps=1e-4``) is used as given,
for every element, without magnitude scaling.

The perturbed input ``x + h`` is rounded to the input's dtype before f sees it (so a float32
function is checked as float32), and the difference quotient divides by the step actually taken,
``(x + h) - (x - h)`` after rounding, not by the nominal 2h. The differences of f are formed in
float64, so the returned estimates are float64 arrays whatever the input dtype.

gradcheck tolerances
--------------------
A direction (or, with ``full=True``, a Jacobian entry) passes when

    |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)

Defaults (``atol=None`` / ``rtol=None``), chosen by the least precise dtype among the inputs and
the output:

    float64: atol = 1e-5 (+ round-off allowance), rtol = 1e-3   (PyTorch's float64 reference values)
    float32: atol = 1e-4 (+ round-off allowance), rtol = 2e-3

The round-off allowance is ``4 * m * S / c``: f's value carries a few units m of round-off, and
the difference quotient divides it by the step c, where ``S = sum_i |u_i f_i(x)|`` is the size of
the (cotangent-weighted) output. It is negligible in float64 (m / c = 3.7e-11) and is what lets a
correct float32 function with large output values pass without false alarms. An explicit ``atol``
is used as given, without the allowance.

How the float32 values were chosen (measured with the C core): on composite functions (a tanh
MLP with scalar and matrix outputs, sums of 2000 terms with and without a large offset,
quotients), 1,920 directional checks of correct float32 gradients used at most 0.30 of the
tolerance, and 360 gradcheck runs of 8 directions raised no false alarm; a gradient scaled by 1.01
was caught by 87-95% of single directions (so by practically every run of 8) wherever |f| is not
much larger than its directional derivative. Where it is (a sum of 2000 terms offset by 100
each), float32 central differences cannot resolve 1% at all: the allowance then grows with S and
the check stays quiet rather than raising false alarms; check such functions in float64.

What ``f`` receives
-------------------
``gradcheck`` always calls f with Tensors (it needs reverse mode); its finite-difference
evaluations run under ``no_grad()``. ``numerical_grad``, ``numerical_jacobian`` and ``taylor_test``
(with ``grad=`` given) call f with inputs of the kind they were given: Tensors for Tensor inputs,
NumPy arrays for anything else, so plain NumPy functions can be differentiated numerically too.
f may return a Tensor, a NumPy array or scalar, or a Python float.
"""
from __future__ import annotations

import contextlib
import importlib
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "numerical_grad",
    "numerical_jacobian",
    "gradcheck",
    "GradcheckError",
    "taylor_test",
    "TaylorResult",
    "default_step",
]

_METHODS = ("central", "forward")

# Default tolerances per dtype: (atol, rtol). float64 uses PyTorch's gradcheck values.
_TOLERANCES = {
    np.dtype(np.float64): (1e-5, 1e-3),
    np.dtype(np.float32): (1e-4, 2e-3),
}

# Units of round-off we allow in one evaluation of f before it counts against the gradient.
_ROUNDOFF_ULPS = 4.0


class GradcheckError(RuntimeError):
    """Raised by :func:`gradcheck` when the analytic and numerical derivatives disagree.

    The message is meant to be read; the attributes repeat its numbers for programs and tests.
    ``input_index`` is None when no single input explains the discrepancy; ``direction_index`` is
    None for an entry-by-entry (``full=True``) failure, which sets ``output_index`` and
    ``element_index`` instead.
    """

    def __init__(self, message, *, input_index=None, direction_index=None, output_index=None,
                 element_index=None, analytic=None, numeric=None, abs_error=None,
                 rel_error=None, tolerance=None):
        super().__init__(message)
        self.input_index = input_index
        self.direction_index = direction_index
        self.output_index = output_index
        self.element_index = element_index
        self.analytic = analytic
        self.numeric = numeric
        self.abs_error = abs_error
        self.rel_error = rel_error
        self.tolerance = tolerance


# ---------------------------------------------------------------------------------------------
# Access to the library. Imported lazily: pyautodiff/__init__.py imports this module.
# ---------------------------------------------------------------------------------------------
def _library():
    """The pyautodiff package if its core is importable, else None."""
    try:
        module = importlib.import_module(__name__.rpartition(".")[0])
    except ImportError:
        return None
    if not hasattr(module, "Tensor") or not hasattr(module, "tensor"):
        return None
    return module


def _require_library():
    ad = _library()
    if ad is None:
        raise ImportError("gradcheck needs the pyautodiff core (ad.tensor, backward); it could not "
                          "be imported")
    return ad


def _is_tensor(value) -> bool:
    ad = _library()
    return ad is not None and isinstance(value, ad.Tensor)


def _no_grad():
    ad = _library()
    return ad.no_grad() if ad is not None else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Inputs, outputs, steps
# ---------------------------------------------------------------------------------------------
def _as_float_array(value) -> np.ndarray:
    """A float32/float64 copy of an input, the way ad.tensor converts data."""
    array = value.numpy() if _is_tensor(value) else np.asarray(value)
    if array.dtype in (np.float32, np.float64):
        return np.array(array)
    if array.dtype.kind in "biuf":
        return array.astype(np.float64)
    raise TypeError(f"cannot differentiate with respect to data of dtype {array.dtype}")


def _output_array(value) -> np.ndarray:
    array = value.numpy() if _is_tensor(value) else np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"f must return real numbers, got dtype {array.dtype}")
    return array


def _least_precise(dtypes) -> np.dtype:
    floats = [np.dtype(d) for d in dtypes if np.dtype(d).kind == "f"]
    return min(floats, key=lambda d: d.itemsize) if floats else np.dtype(np.float64)


def default_step(dtype, method: str = "central") -> float:
    """The relative step c of the default rule h = c * max(1, |x|) (see the module docstring)."""
    _check_method(method)
    machine_eps = float(np.finfo(dtype).eps)
    return math.sqrt(machine_eps) if method == "forward" else machine_eps ** (1.0 / 3.0)


def _check_method(method):
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")


def _element_steps(x: np.ndarray, eps, method) -> np.ndarray:
    """Per-element steps h (float64): the documented default rule, or eps as given."""
    if eps is None:
        return default_step(x.dtype, method) * np.maximum(1.0, np.abs(x.astype(np.float64)))
    return np.full(x.shape, float(eps))


class _Evaluator:
    """Calls f at perturbed copies of the inputs and returns its value as float64.

    ``as_tensors[k]`` says whether input k is handed to f as a Tensor (built from the perturbed
    array in its own dtype) or as the NumPy array itself.
    """

    def __init__(self, f: Callable, as_tensors: Sequence[bool]):
        self.f = f
        self.as_tensors = list(as_tensors)
        self.ad = _library() if any(self.as_tensors) else None
        self.output_dtype = None

    def __call__(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        with _no_grad():
            args = [self.ad.tensor(x, dtype=x.dtype) if wrap else x.copy()
                    for x, wrap in zip(arrays, self.as_tensors)]
            out = _output_array(self.f(*args))
        self.output_dtype = out.dtype
        return out.astype(np.float64)


def _perturbed(x, delta):
    """x + delta, rounded to x's dtype: f must see values its dtype can hold."""
    x = np.asarray(x)
    return (x.astype(np.float64) + delta).astype(x.dtype)


def _taken_step(x_plus, x_minus):
    """The step actually taken between two rounded points, exactly, in float64."""
    return np.asarray(x_plus).astype(np.float64) - np.asarray(x_minus).astype(np.float64)


def _directional_difference(evaluate_scalar, arrays, perturbation, method, f_at_x=None):
    """Difference of a scalar function along a perturbation of all inputs at once.

    Returns (difference, taken): for "central", difference = (F(x+p) - F(x-p)) / 2 and ``taken``
    the per-input half-distance actually travelled; for "forward", F(x+p) - F(x) and the step
    taken. Either way difference ~= <grad F, taken>, with the rounding of x + p accounted for.
    """
    plus = [_perturbed(x, p) for x, p in zip(arrays, perturbation)]
    if method == "central":
        minus = [_perturbed(x, -p) for x, p in zip(arrays, perturbation)]
        difference = (evaluate_scalar(plus) - evaluate_scalar(minus)) / 2.0
        taken = [_taken_step(xp, xm) / 2.0 for xp, xm in zip(plus, minus)]
    else:
        if f_at_x is None:
            f_at_x = evaluate_scalar(arrays)
        difference = evaluate_scalar(plus) - f_at_x
        taken = [_taken_step(xp, x) for xp, x in zip(plus, arrays)]
    return difference, taken


def _jacobians(evaluate, arrays, eps, method, f0=None) -> Tuple[np.ndarray, List[np.ndarray]]:
    """f(x) and, per input, the finite-difference Jacobian shaped out.shape + in.shape.

    One element at a time; only the perturbed input is copied, so the bookkeeping per element is
    one copy of that input, whatever the number of inputs.
    """
    if f0 is None:
        f0 = evaluate(arrays)
    jacobians = []
    for k, x in enumerate(arrays):
        steps = _element_steps(x, eps, method)
        columns = np.empty((x.size, f0.size))
        args = list(arrays)
        for j in range(x.size):
            plus, minus = x.copy(), x.copy()
            plus.flat[j] = _perturbed(x.flat[j], steps.flat[j])
            args[k] = plus
            f_plus = evaluate(args).ravel()
            if method == "central":
                minus.flat[j] = _perturbed(x.flat[j], -steps.flat[j])
                args[k] = minus
                difference = f_plus - evaluate(args).ravel()
            else:
                difference = f_plus - f0.ravel()
            step = float(_taken_step(plus.flat[j], minus.flat[j]))
            if step == 0:
                raise ValueError(
                    f"finite-difference step {steps.flat[j]:.3g} vanishes at input {k} element "
                    f"{np.unravel_index(j, x.shape)} (value {x.flat[j]!r}, dtype {x.dtype}): "
                    f"pass a larger eps")
            columns[j] = difference / step
        jacobians.append(columns.T.reshape(f0.shape + x.shape))
    return f0, jacobians


def _prepare(inputs):
    arrays = [_as_float_array(v) for v in inputs]
    as_tensors = [_is_tensor(v) for v in inputs]
    return arrays, as_tensors


def _single_or_tuple(items):
    return items[0] if len(items) == 1 else tuple(items)


# ---------------------------------------------------------------------------------------------
# numerical_grad, numerical_jacobian
# ---------------------------------------------------------------------------------------------
def numerical_grad(f: Callable, *inputs, eps=None, method: str = "central"):
    """Finite-difference gradient of a scalar function, one element at a time.

    ``method="forward"``: (f(x + h e_i) - f(x)) / h; ``"central"``: (f(x + h e_i) - f(x - h e_i)) / 2h.
    ``eps=None`` uses the dtype- and magnitude-scaled step of the module docstring; an explicit
    eps is the step h itself. f must return one number (a Tensor or array with one element, a
    NumPy scalar or a float). Returns a float64 array shaped like the input, or a tuple of them
    for several inputs. Costs 2n + 1 (central) or n + 1 (forward) evaluations of f for n
    input elements.
    """
    _check_method(method)
    if not inputs:
        raise TypeError("numerical_grad needs at least one input")
    arrays, as_tensors = _prepare(inputs)
    evaluate = _Evaluator(f, as_tensors)
    f0 = evaluate(arrays)
    if f0.size != 1:
        raise ValueError(f"numerical_grad needs a scalar-valued f, but f returned shape "
                         f"{f0.shape}; use numerical_jacobian for vector-valued functions")
    _, jacobians = _jacobians(evaluate, arrays, eps, method, f0)
    return _single_or_tuple([jac.reshape(x.shape) for jac, x in zip(jacobians, arrays)])


def numerical_jacobian(f: Callable, *inputs, eps=None, method: str = "central"):
    """Finite-difference Jacobian, shaped ``out.shape + in.shape`` (like ``jacrev``).

    Same steps and methods as :func:`numerical_grad`. Returns a float64 array, or a tuple of them
    (one per input) for several inputs.
    """
    _check_method(method)
    if not inputs:
        raise TypeError("numerical_jacobian needs at least one input")
    arrays, as_tensors = _prepare(inputs)
    _, jacobians = _jacobians(_Evaluator(f, as_tensors), arrays, eps, method)
    return _single_or_tuple(jacobians)


# ---------------------------------------------------------------------------------------------
# Reverse mode through the public API
# ---------------------------------------------------------------------------------------------
def _reverse_mode(ad, f, arrays, cotangent=None):
    """f(x) and the vector-Jacobian product of ``cotangent``.

    ``cotangent=None`` means 1 for a scalar f; for a non-scalar f it means "value only" and the
    gradients come back as None.

    Fresh leaves every call, so gradients never accumulate across calls and the caller's own
    tensors are never touched.
    """
    leaves = [ad.tensor(x, dtype=x.dtype, requires_grad=True) for x in arrays]
    y = f(*leaves)
    if not isinstance(y, ad.Tensor):
        raise TypeError(f"gradcheck needs f to return a Tensor (it differentiates it in reverse "
                        f"mode), got {type(y).__name__}")
    value = y.numpy()
    grads = [np.zeros(x.shape) for x in arrays]
    if not getattr(y, "requires_grad", True) or value.size == 0:
        return value, np.dtype(y.dtype), grads  # f does not depend on its inputs: zero gradient
    if cotangent is None and value.size != 1:
        return value, np.dtype(y.dtype), None  # the caller only wanted f(x)
    if value.size == 1:
        # One element counts as a scalar: the plain backward() every user calls, scaled after.
        y.backward()
        weight = 1.0 if cotangent is None else float(np.asarray(cotangent).reshape(()))
    else:
        y.backward(grad=np.asarray(cotangent, dtype=y.dtype).reshape(y.shape))
        weight = 1.0
    for k, leaf in enumerate(leaves):
        if leaf.grad is not None:
            grads[k] = weight * leaf.grad.numpy().astype(np.float64)
    return value, np.dtype(y.dtype), grads


def _unit_vector(rng, shape) -> np.ndarray:
    """Uniform on the unit sphere: a standard normal sample is rotation invariant."""
    v = rng.standard_normal(shape)
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def _split(flat, arrays):
    pieces, start = [], 0
    for x in arrays:
        pieces.append(flat[start:start + x.size].reshape(x.shape))
        start += x.size
    return pieces


# ---------------------------------------------------------------------------------------------
# gradcheck
# ---------------------------------------------------------------------------------------------
def _describe(k, arrays):
    x = arrays[k]
    return f"inputs[{k}] (input {k + 1} of {len(arrays)}, shape {x.shape}, {x.dtype})"


def _taylor_hint():
    return ("To tell a wrong gradient from a tolerance that is too tight, run "
            "ad.taylor_test(f, inputs): a correct gradient shows the finite-difference error "
            "falling like eps^2 (order about 2), a wrong one an error that does not shrink "
            "(order about 0).")


@dataclass(frozen=True)
class _Tolerance:
    """atol + rtol * magnitude, with the part of atol that is round-off allowance kept apart."""

    atol: float
    rtol: float
    allowance: float = 0.0

    def __call__(self, magnitude: float) -> float:
        return self.atol + self.allowance + self.rtol * magnitude

    def agrees(self, analytic: float, numeric: float) -> bool:
        # Written so that a NaN on either side fails the check.
        return abs(analytic - numeric) <= self(max(abs(analytic), abs(numeric)))

    def describe(self, analytic: float, numeric: float) -> str:
        magnitude = max(abs(analytic), abs(numeric))
        atol = f"{self.atol + self.allowance:.3g}"
        if self.allowance:
            atol += f" (incl. round-off allowance {self.allowance:.3g})"
        return (f"atol + rtol * max(|analytic|, |numeric|) = {atol} + {self.rtol:.3g} * "
                f"{magnitude:.3g} = {self(magnitude):.3g}")


def _discrepancy(analytic: float, numeric: float) -> float:
    error = abs(analytic - numeric)
    return math.inf if math.isnan(error) else error


def _errors(analytic, numeric):
    abs_error = abs(analytic - numeric)
    magnitude = max(abs(analytic), abs(numeric))
    if magnitude > 0:
        rel_error = abs_error / magnitude
    else:
        rel_error = 0.0 if abs_error == 0 else math.inf
    return abs_error, rel_error


class _Checker:
    """The state one gradcheck call shares between its directional and full checks."""

    def __init__(self, ad, f, arrays, eps, atol, rtol):
        self.ad, self.f, self.arrays = ad, f, arrays
        self.evaluate = _Evaluator(f, [True] * len(arrays))
        self.value, out_dtype, self.scalar_grads = _reverse_mode(ad, f, arrays)
        dtype = _least_precise([x.dtype for x in arrays] + [out_dtype])
        default_atol, default_rtol = _TOLERANCES.get(dtype, _TOLERANCES[np.dtype(np.float64)])
        self.explicit_eps = eps is not None
        self.scale = default_step(dtype, "central") if eps is None else float(eps)
        self.atol = atol
        self.default_atol = default_atol
        self.rtol = default_rtol if rtol is None else float(rtol)
        self.machine_eps = float(np.finfo(dtype).eps)

    def tolerance(self, output_magnitude: float) -> _Tolerance:
        """The tolerance for a check whose (cotangent-weighted) output has this size.

        The default atol carries the round-off allowance: a few units of round-off in f's value
        (_ROUNDOFF_ULPS), amplified by 1/step. An explicit atol is used as given.
        """
        if self.atol is not None:
            return _Tolerance(float(self.atol), self.rtol)
        allowance = _ROUNDOFF_ULPS * self.machine_eps * output_magnitude / self.scale
        return _Tolerance(self.default_atol, self.rtol, allowance)

    def perturbation(self, direction):
        """h * delta per input; h = scale * max(1, |x|) elementwise unless eps was given."""
        if self.explicit_eps:
            return [self.scale * piece for piece in direction]
        return [self.scale * np.maximum(1.0, np.abs(x.astype(np.float64))) * piece
                for x, piece in zip(self.arrays, direction)]

    def directional(self, u, grads, perturbation):
        """(analytic, numeric) derivative of u^T f along perturbation / scale."""

        def weighted(xs):
            return float(np.sum(u * self.evaluate(xs)))

        difference, taken = _directional_difference(weighted, self.arrays, perturbation,
                                                    "central")
        analytic = sum(float(np.sum(g * t)) for g, t in zip(grads, taken)) / self.scale
        return analytic, difference / self.scale

    def forward_directional(self, u, perturbation):
        """u^T J delta from one forward-mode sweep, along the step the difference really took."""
        taken = [_taken_step(_perturbed(x, p), _perturbed(x, -p)) / 2.0
                 for x, p in zip(self.arrays, perturbation)]
        tangents = tuple(t.astype(x.dtype) for t, x in zip(taken, self.arrays))
        _, tangent_out = self.ad.jvp(self.f, tuple(self.arrays), tangents)
        return float(np.sum(u * np.asarray(tangent_out, dtype=np.float64))) / self.scale

    def step_rule(self) -> str:
        if self.explicit_eps:
            return f"{self.scale:.3g}"
        return f"{self.scale:.3g} * max(1, |x|)"


def gradcheck(f: Callable, inputs, *, eps=None, atol=None, rtol=None, n_directions: int = 8,
              seed: int = 0, full: bool = False, check_forward: bool = True) -> bool:
    """Check f's reverse-mode gradient, and its forward-mode derivative, against central
    differences along random directions.

    ``inputs`` is a tuple of arrays/Tensors (a single array or Tensor is accepted too); they are
    copied, so the caller's tensors get no ``.grad``. For each of ``n_directions`` directions
    delta, drawn uniformly from the unit sphere of the joint input space (all inputs
    concatenated; reproducible from ``seed``), the input is moved by h * delta with the step rule
    of the module docstring (each element's step scaled by max(1, |x|)), and

        analytic  <grad, h * delta> / h      from one backward pass
        numeric   (f(x + h delta) - f(x - h delta)) / 2h

    are compared. For a non-scalar f, each direction also draws a random unit cotangent u over the
    output, and both sides use u^T f (the analytic side is then the VJP of u). ``full=True``
    additionally compares the whole Jacobian entry by entry (one backward pass per output element
    and 2 evaluations per input element: for small inputs), before the directional checks.

    With ``check_forward`` (the default) each direction is also pushed through one forward-mode
    sweep (``ad.jvp``), and u^T (J delta) is compared with the same central difference.

    Returns True, or raises :class:`GradcheckError` naming the input, the direction (or the
    Jacobian entry), analytic vs numeric values, absolute and relative error and the tolerance.
    Tolerances: see the module docstring; explicit ``eps``/``atol``/``rtol`` are used as given.
    """
    ad = _require_library()
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    if not inputs:
        raise TypeError("gradcheck needs at least one input")
    arrays = [_as_float_array(v) for v in inputs]
    checker = _Checker(ad, f, arrays, eps, atol, rtol)
    value = checker.value

    if full:
        _check_full_jacobian(checker)

    total = sum(x.size for x in arrays)
    if total == 0 or value.size == 0:
        return True
    scalar_output = value.size == 1
    rng = np.random.default_rng(seed)
    for d in range(n_directions):
        direction = _split(_unit_vector(rng, total), arrays)
        if scalar_output:
            u, grads = np.ones(value.shape), checker.scalar_grads
        else:
            u = _unit_vector(rng, value.shape)
            _, _, grads = _reverse_mode(ad, f, arrays, u)
        tolerance = checker.tolerance(float(np.sum(np.abs(u * value))))
        perturbation = checker.perturbation(direction)
        analytic, numeric = checker.directional(u, grads, perturbation)
        if not tolerance.agrees(analytic, numeric):
            raise _direction_failure(checker, u, grads, perturbation, tolerance, d,
                                     n_directions, seed, analytic, numeric)
        if check_forward:
            forward = checker.forward_directional(u, perturbation)
            if not tolerance.agrees(forward, numeric):
                raise _forward_failure(checker, tolerance, d, n_directions, seed, forward, numeric)
    return True


def _forward_failure(checker, tolerance, d, n_directions, seed, analytic, numeric):
    """The GradcheckError for a direction whose JVP disagrees (the reverse check passed)."""
    abs_error, rel_error = _errors(analytic, numeric)
    quantity = "<grad f, delta>" if checker.value.size == 1 else "u^T J delta"
    lines = [
        "gradcheck failed: the forward-mode derivative (JVP) disagrees with central finite "
        "differences, while the reverse-mode gradient agrees",
        f"  along random direction #{d} of {n_directions} over all inputs (seed={seed}):",
        f"    analytic  (forward mode, {quantity}) = {analytic:.10g}",
        f"    numeric   (central difference, step {checker.step_rule()}) = {numeric:.10g}",
        f"    abs error = {abs_error:.3g}, rel error = {rel_error:.3g}",
        f"    tolerance = {tolerance.describe(analytic, numeric)}",
        _taylor_hint(),
    ]
    return GradcheckError("\n".join(lines), direction_index=d, analytic=analytic, numeric=numeric,
                          abs_error=abs_error, rel_error=rel_error,
                          tolerance=tolerance(max(abs(analytic), abs(numeric))))


def _direction_failure(checker, u, grads, perturbation, tolerance, d, n_directions, seed,
                       analytic, numeric):
    """The GradcheckError for a failed direction, naming the input responsible.

    A direction moves every input at once; to say which input is wrong, the same direction is
    checked again one input at a time (two more evaluations of f per input).
    """
    arrays = checker.arrays
    per_input = []
    if len(arrays) == 1:
        per_input.append((0, analytic, numeric))
    else:
        for k in range(len(arrays)):
            alone = [p if i == k else np.zeros(p.shape) for i, p in enumerate(perturbation)]
            alone_grads = [g if i == k else np.zeros(g.shape) for i, g in enumerate(grads)]
            per_input.append((k, *checker.directional(u, alone_grads, alone)))
    failing = [item for item in per_input if not tolerance.agrees(item[1], item[2])]

    if failing:
        # The input with the largest discrepancy is named; the others' verdicts are listed.
        input_index, shown_analytic, shown_numeric = max(
            failing, key=lambda item: _discrepancy(item[1], item[2]))
        where = (f"{_describe(input_index, arrays)}, "
                 f"{'alone ' if len(arrays) > 1 else ''}along random direction #{d} "
                 f"of {n_directions}")
    else:
        input_index, shown_analytic, shown_numeric = None, analytic, numeric
        where = (f"all {len(arrays)} inputs jointly (no single input fails alone), along "
                 f"random direction #{d} of {n_directions}")
    abs_error, rel_error = _errors(shown_analytic, shown_numeric)
    scalar_output = checker.value.size == 1
    quantity = "<grad f, delta>" if scalar_output else "u^T J delta"
    lines = [
        "gradcheck failed: the reverse-mode gradient disagrees with central finite differences",
        f"  at {where} (seed={seed}):",
        f"    analytic  (reverse mode, {quantity}) = {shown_analytic:.10g}",
        f"    numeric   (central difference, step {checker.step_rule()}) = {shown_numeric:.10g}",
        f"    abs error = {abs_error:.3g}, rel error = {rel_error:.3g}",
        f"    tolerance = {tolerance.describe(shown_analytic, shown_numeric)}",
    ]
    if not scalar_output:
        lines.append(f"  f is not scalar (output shape {checker.value.shape}): u is a random unit "
                     f"cotangent over the output, drawn with the direction.")
    if len(arrays) > 1:
        verdicts = [f"inputs[{k}] {'fails' if not tolerance.agrees(a, n) else 'agrees'} "
                    f"(analytic {a:.6g}, numeric {n:.6g}, abs error {abs(a - n):.3g})"
                    for k, a, n in per_input]
        lines.append("  each input alone along the same direction: " + "; ".join(verdicts))
    lines.append(_taylor_hint())
    return GradcheckError("\n".join(lines), input_index=input_index, direction_index=d,
                          analytic=shown_analytic, numeric=shown_numeric, abs_error=abs_error,
                          rel_error=rel_error,
                          tolerance=tolerance(max(abs(shown_analytic), abs(shown_numeric))))


def _check_full_jacobian(checker):
    """Compare the reverse-mode Jacobian with the finite-difference one, entry by entry."""
    arrays, value = checker.arrays, checker.value
    eps = checker.scale if checker.explicit_eps else None
    _, numeric = _jacobians(checker.evaluate, arrays, eps, "central")
    analytic = [np.zeros(value.shape + x.shape) for x in arrays]
    for i in range(value.size):
        one_hot = np.zeros(value.shape)
        one_hot.flat[i] = 1.0
        _, _, rows = _reverse_mode(checker.ad, checker.f, arrays, one_hot)
        out_index = np.unravel_index(i, value.shape)
        for k in range(len(arrays)):
            analytic[k][out_index] = rows[k]

    output_magnitudes = np.abs(value.astype(np.float64)).ravel()
    worst = None
    for k, x in enumerate(arrays):
        a_k = analytic[k].reshape(value.size, x.size)
        n_k = numeric[k].reshape(value.size, x.size)
        for i in range(value.size):
            tolerance = checker.tolerance(float(output_magnitudes[i]))
            for j in range(x.size):
                a, n = float(a_k[i, j]), float(n_k[i, j])
                if tolerance.agrees(a, n):
                    continue
                excess = _discrepancy(a, n) - tolerance(max(abs(a), abs(n)))
                if worst is None or excess > worst[0]:
                    worst = (excess, k, i, j, a, n, tolerance)
    if worst is None:
        return
    _, k, i, j, a, n, tolerance = worst
    out_index = tuple(int(v) for v in np.unravel_index(i, value.shape))
    in_index = tuple(int(v) for v in np.unravel_index(j, arrays[k].shape))
    abs_error, rel_error = _errors(a, n)
    message = "\n".join([
        "gradcheck failed (full=True): the reverse-mode Jacobian disagrees with central finite "
        "differences",
        f"  at {_describe(k, arrays)}, entry d out{list(out_index)} / d x{list(in_index)} "
        f"(the worst of the failing entries):",
        f"    analytic (reverse mode) = {a:.10g}",
        f"    numeric  (central difference, step {checker.step_rule()}) = {n:.10g}",
        f"    abs error = {abs_error:.3g}, rel error = {rel_error:.3g}",
        f"    tolerance = {tolerance.describe(a, n)}",
        _taylor_hint(),
    ])
    raise GradcheckError(message, input_index=k, output_index=out_index, element_index=in_index,
                         analytic=a, numeric=n, abs_error=abs_error, rel_error=rel_error,
                         tolerance=tolerance(max(abs(a), abs(n))))


# ---------------------------------------------------------------------------------------------
# taylor_test
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaylorResult:
    """Outcome of :func:`taylor_test`.

    ``order``: the log-log slope of |finite difference - analytic| against eps, fitted over the
    steps where round-off does not dominate. About 2 (central) or 1 (forward) for a correct
    gradient, about 0 for a wrong one (the error stays at the size of the mistake). ``inf`` when
    the finite difference equals the analytic value to round-off at every step (f is polynomial
    of low degree along the direction, so there is nothing left to converge: consistent).
    ``table``: (eps, error) pairs, largest eps first. ``expected_order``: 2 or 1.
    """

    order: float
    table: List[Tuple[float, float]]
    expected_order: int
    method: str

    def __str__(self):
        rows = [f"taylor_test ({self.method} differences): observed order {self.order:.3g}, "
                f"expected {self.expected_order}",
                "           eps        error"]
        rows += [f"  {eps:12.4e} {error:12.4e}" for eps, error in self.table]
        return "\n".join(rows)


# Default sweeps, as multiples of max(1, |x|max): wide enough for a clean fit, stopping well above
# the step where round-off (m |f| / eps) overtakes truncation error for a well-scaled f.
_DEFAULT_EPS_RANGE = {
    (np.dtype(np.float64), "central"): (1e-1, 1e-4, 10),
    (np.dtype(np.float64), "forward"): (1e-1, 1e-6, 11),
    (np.dtype(np.float32), "central"): (2e-1, 1e-2, 8),
    (np.dtype(np.float32), "forward"): (1e-1, 1e-3, 9),
}


def taylor_test(f: Callable, x, direction=None, eps_range=None, method: str = "central", *,
                grad=None, seed: int = 0) -> TaylorResult:
    """Sweep the step eps and measure how fast the finite difference converges to the gradient.

    ``x`` is one input (array or Tensor) or a tuple of inputs. ``direction`` (same structure as
    ``x``; default: random, uniform on the unit sphere of the joint input space, from ``seed``)
    is used as given. For each eps in ``eps_range`` (default: a geometric sweep chosen by dtype and
    method, scaled by max(1, max |x|)) the error |D_eps - <grad, direction>| is recorded, where
    D_eps is the forward or central difference quotient along the direction; ``.order`` is the
    least-squares slope of log(error) against log(eps).

    The analytic gradient comes from reverse mode (f called with Tensors; a non-scalar f is
    contracted with a random unit cotangent), or from ``grad``: the gradient itself (an array, or
    a tuple for several inputs) or a callable returning it from the input arrays. With ``grad``,
    f may be a plain NumPy function and must be scalar-valued.
    """
    _check_method(method)
    inputs = x if isinstance(x, tuple) else (x,)
    arrays, as_tensors = _prepare(inputs)
    rng = np.random.default_rng(seed)

    if direction is None:
        direction = _split(_unit_vector(rng, sum(a.size for a in arrays)), arrays)
    else:
        direction = direction if isinstance(direction, tuple) else (direction,)
        direction = [np.asarray(v, dtype=np.float64) for v in direction]
        if [v.shape for v in direction] != [a.shape for a in arrays]:
            raise ValueError(f"direction shapes {[v.shape for v in direction]} do not match "
                             f"input shapes {[a.shape for a in arrays]}")

    if grad is not None:
        evaluate = _Evaluator(f, as_tensors)
        value = evaluate(arrays)
        if value.size != 1:
            raise ValueError(f"with grad= given, f must be scalar-valued; it returned shape "
                             f"{value.shape}")
        given = grad(*[a.copy() for a in arrays]) if callable(grad) else grad
        given = given if isinstance(given, tuple) else (given,)
        grads = [np.asarray(g, dtype=np.float64).reshape(a.shape) for g, a in zip(given, arrays)]
        u = np.ones(value.shape)
        out_dtype = evaluate.output_dtype
    else:
        ad = _require_library()
        evaluate = _Evaluator(f, [True] * len(arrays))
        value, out_dtype, grads = _reverse_mode(ad, f, arrays)
        u = np.ones(value.shape)
        if value.size != 1:
            u = _unit_vector(rng, value.shape)
            _, _, grads = _reverse_mode(ad, f, arrays, u)
        value = value.astype(np.float64)

    dtype = _least_precise([a.dtype for a in arrays] + [out_dtype])
    if eps_range is None:
        high, low, count = _DEFAULT_EPS_RANGE[(dtype, method)]
        magnitude = max([1.0] + [float(np.max(np.abs(a))) for a in arrays if a.size])
        eps_range = np.geomspace(high, low, count) * magnitude
    eps_values = [float(e) for e in eps_range]

    def weighted(xs):
        return float(np.sum(u * evaluate(xs)))

    f_at_x = weighted(arrays)
    table = []
    for eps in eps_values:
        perturbation = [eps * v for v in direction]
        difference, taken = _directional_difference(weighted, arrays, perturbation, method, f_at_x)
        analytic = sum(float(np.sum(g * t)) for g, t in zip(grads, taken))
        table.append((eps, abs(difference - analytic) / eps))

    # Errors within a few units of round-off of f (amplified by 1/eps) say nothing about
    # convergence; fit only the steps clearly above that floor.
    machine_eps = float(np.finfo(dtype).eps)
    size = float(np.sum(np.abs(u * value))) if value.size else 0.0
    floor = [10 * _ROUNDOFF_ULPS * machine_eps * max(size, 1e-300) / eps for eps in eps_values]
    usable = [(eps, err) for (eps, err), lim in zip(table, floor) if err > lim]
    expected = 2 if method == "central" else 1
    if len(usable) < 2:
        order = math.inf
    else:
        log_eps = np.log([eps for eps, _ in usable])
        log_err = np.log([err for _, err in usable])
        order = float(np.polyfit(log_eps, log_err, 1)[0])
    return TaylorResult(order=order, table=table, expected_order=expected, method=method)
