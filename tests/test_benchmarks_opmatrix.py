"""Correctness of the benchmark code of issue 15 (no timings; torch not needed).

- The op matrix's quick subset: pyautodiff's gradients agree with the hand-written NumPy VJP of
  every cell, and each float64 NumPy VJP agrees with a central difference of <forward(x), W>
  along a random direction.
- The GradBench evals: each hand-written NumPy gradient agrees with central differences of
  the eval's NumPy objective at a tiny size, and pyautodiff's gradient with it.
"""

import os
import sys

import numpy as np
import pytest

# benchmarks/ is not installed: found in the repository, appended so that pyautodiff still comes
# from the installed build (the sanitizer run imports its ASan build from outside the tree)
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import harness, opmatrix  # noqa: E402
from benchmarks.workloads import load  # noqa: E402

QUICK_CELLS = opmatrix.plan(quick=True)
GRADBENCH = ["gmm_d2_k5", "gmm_d10_k25", "lstm", "lse", "llsq", "ode", "det"]


def _cell_id(cell):
    case, n = cell
    return f"{case.label} n={n}"


def _run(builder, data):
    cell = builder(data, {"n": 0})
    return cell.grads(cell.step())


@pytest.mark.parametrize("cell", QUICK_CELLS, ids=[_cell_id(c) for c in QUICK_CELLS])
def test_opmatrix_quick_cell(cell):
    case, n = cell
    workload = opmatrix.workload(case, n, np)
    data = workload.make_data(None)
    reference = _run(workload.BUILDERS["numpy"], data)
    error, complaint = harness.gradient_error(reference, _run(workload.BUILDERS["pyautodiff"], data))
    assert complaint is None, complaint
    assert error <= opmatrix.GRAD_RTOL[case.dtype], f"{case.label}: error {error:.2e}"
    if case.dtype != "float64":
        return
    # the hand-written VJP itself, against a central difference along a random direction
    consts, leaves, cotangent = data["consts"], data["leaves"], data["cotangent"]
    rng = np.random.default_rng(1)
    direction = [rng.normal(size=np.shape(x)) for x in leaves]

    def value(t):
        moved = [x + t * v for x, v in zip(leaves, direction)]
        return opmatrix._vdot(case.forward(consts, *moved), cotangent, np)

    step = 1e-6
    numeric = (value(step) - value(-step)) / (2 * step)
    analytic = sum(float(np.vdot(g, v)) for g, v in zip(reference[1], direction))
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7), case.label


def _central_gradient(f, leaves, step=1e-6):
    grads = []
    for index, leaf in enumerate(leaves):
        grad = np.zeros_like(leaf)
        for position in np.ndindex(leaf.shape):
            moved = [x.copy() for x in leaves]
            moved[index][position] += step
            up = f(*moved)
            moved[index][position] -= 2 * step
            grad[position] = (up - f(*moved)) / (2 * step)
        grads.append(grad)
    return grads


@pytest.mark.parametrize("name", GRADBENCH)
def test_gradbench_numpy_reference_against_finite_differences(name):
    workload = load(name)
    data = workload.make_data(workload.TINY)
    value, grads = _run(workload.BUILDERS["numpy"], data)
    leaves = data["leaves"]
    assert value == pytest.approx(float(workload.objective(data, *leaves)), rel=1e-12)
    numeric = _central_gradient(lambda *x: float(workload.objective(data, *x)), leaves)
    for got, expected in zip(grads, numeric):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", GRADBENCH)
def test_gradbench_pyautodiff_agrees_with_numpy(name):
    workload = load(name)
    data = workload.make_data(workload.TINY)
    reference = _run(workload.BUILDERS["numpy"], data)
    error, complaint = harness.gradient_error(reference, _run(workload.BUILDERS["pyautodiff"], data))
    assert complaint is None, complaint
    assert error <= 1e-10, f"{name}: error {error:.2e}"
