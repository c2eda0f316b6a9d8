"""ode: GradBench's ODE eval (from cmpad's an_ode), gradient of the last state.

    y_0'(t) = x_0,   y_i'(t) = x_i y_{i-1}(t)  (i > 0),   y(0) = 0,

integrated to t = 2 by s steps of classical Runge-Kutta (RK4); the eval differentiates the last
element of y(2) with respect to x. In vector form f(y) = x * [1, y_0, ..., y_{n-2}], which every
contestant writes with a slice and a concatenation. n = 1,000 and s = 100 (GradBench runs n in
1,000-100,000 and s in 1-100); quick: n = 100, s = 10; x uniform in [0, 1).

The hand-written NumPy reference runs RK4 forward, keeping the four shifted states of each
step, and its adjoint backward: with k = x * z, z = [1, y[:-1]], a cotangent g of k gives g * z
to x and (g * x)[1:] to y[:-1].
"""

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "ode"
TITLE = "GradBench ode: gradient of y(2)[-1], RK4 with s=100 steps, n=1000 (quick: 100, 10)"
PER_OP = False
HAND_LABEL = "hand-written NumPy (RK4 forward + its adjoint)"
LEAVES = ["x"]
ISOLATED = set()
NOT_APPLICABLE = common.GRADBENCH_NOT_WRITTEN
TARGETS = common.gradbench_targets()
NOTES = []
TINY = {"n": 6, "s": 3}
T_FINAL = 2.0


def size(quick):
    return {"n": 100, "s": 10} if quick else {"n": 1_000, "s": 100}


def n_ops(size):
    return None


def make_data(size):
    return {"leaves": [common.rng(17).random(size["n"])], "s": size["s"]}


def solve(L, x, one, steps):
    """y(2) by RK4 from y(0) = 0, written once for pyautodiff (L = ad) and torch (TorchNames)."""
    h = T_FINAL / steps

    def f(y):
        return x * L.concatenate([one, y[:-1]])

    y = x * 0.0
    for _ in range(steps):
        k1 = f(y)
        k2 = f(y + h / 2 * k1)
        k3 = f(y + h / 2 * k2)
        k4 = f(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def _numpy_solve(x, steps, keep=None):
    h = T_FINAL / steps
    y = np.zeros_like(x)

    def f(y):
        z = np.empty_like(y)
        z[0] = 1.0
        z[1:] = y[:-1]
        return x * z, z

    for _ in range(steps):
        k1, z1 = f(y)
        k2, z2 = f(y + h / 2 * k1)
        k3, z3 = f(y + h / 2 * k2)
        k4, z4 = f(y + h * k3)
        if keep is not None:
            keep.append((z1, z2, z3, z4))
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def objective(data, x):
    return _numpy_solve(x, data["s"])[-1]


def numpy_gradient(x, steps):
    """(y(2)[-1], d y(2)[-1] / dx): RK4 forward, then its adjoint step by step backward."""
    h = T_FINAL / steps
    shifted = []
    y = _numpy_solve(x, steps, shifted)
    gy = np.zeros_like(x)
    gy[-1] = 1.0
    gx = np.zeros_like(x)

    def through_f(g, z, gy_next):
        # k = x * z, z = [1, y[:-1]]: x gets g * z, y[:-1] gets (g * x)[1:]; returns y's share
        np.add(gx, g * z, out=gx)
        gu = np.zeros_like(g)
        gu[:-1] = (g * x)[1:]
        gy_next += gu
        return gu

    for z1, z2, z3, z4 in reversed(shifted):
        gk1, gk2, gk3, gk4 = h / 6 * gy, h / 3 * gy, h / 3 * gy, h / 6 * gy
        carry = gy.copy()
        gk3 += h * through_f(gk4, z4, carry)          # k4 = f(y + h k3)
        gk2 += h / 2 * through_f(gk3, z3, carry)      # k3 = f(y + h/2 k2)
        gk1 += h / 2 * through_f(gk2, z2, carry)      # k2 = f(y + h/2 k1)
        through_f(gk1, z1, carry)                     # k1 = f(y)
        gy = carry
    return y[-1], gx


def build_numpy(data, size):
    (x,) = data["leaves"]
    steps = data["s"]
    return Cell(lambda: numpy_gradient(x, steps), lambda out: (float(out[0]), [out[1]]))


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")
    one = ad.tensor(np.ones(1))
    steps = data["s"]
    return common.pyautodiff_cell(data["leaves"], lambda x: solve(ad, x, one, steps)[-1])


def build_torch(data, size):
    torch = peers.load("torch")
    names = common.TorchNames(torch)
    one = torch.ones(1, dtype=torch.float64)
    steps = data["s"]
    return common.torch_cell(data["leaves"], lambda x: solve(names, x, one, steps)[-1])


BUILDERS = common.builders(globals())
