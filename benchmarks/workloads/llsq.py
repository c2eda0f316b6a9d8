"""llsq: GradBench's linear least squares eval (from cmpad's llsq_obj).

    y(x) = 1/2 sum_i (s_i - sum_j x_j t_i^j)^2,  t_i = -1 + 2 i / (n - 1),  s_i = sign(t_i)

for x of m = 128 and n = 16,392 points (GradBench's largest); x uniform in [0, 1). With V the
(n, m) Vandermonde matrix V_ij = t_i^j this is 1/2 |V x - s|^2, gradient V^T (V x - s): a
matrix-vector product each way. V and s are built once, outside the timed step, for every
contestant (GradBench's tools build the powers inside). Quick: n = 1,024.
"""

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "llsq"
TITLE = "GradBench llsq: gradient of 1/2 |V x - s|^2, V (16392,128) Vandermonde (quick: n=1024)"
PER_OP = False
HAND_LABEL = "hand-written NumPy (r = V x - s; gradient r @ V)"
LEAVES = ["x (128)"]
ISOLATED = set()
NOT_APPLICABLE = common.GRADBENCH_NOT_WRITTEN
TARGETS = common.gradbench_targets(numpy_bound=1.5)
NOTES = ["llsq: the Vandermonde matrix V and s = sign(t) are inputs built once, for every "
         "contestant alike."]
TINY = {"n": 9, "m": 4}


def size(quick):
    return {"n": 1_024 if quick else 16_392, "m": 128}


def n_ops(size):
    return None


def make_data(size):
    n, m = size["n"], size["m"]
    t = -1.0 + np.arange(n) * 2.0 / (n - 1)
    return {"V": np.vander(t, m, increasing=True), "s": np.sign(t),
            "leaves": [common.rng(16).random(m)]}


def objective(data, x):
    r = data["V"] @ x - data["s"]
    return 0.5 * r @ r


def build_numpy(data, size):
    V, s = data["V"], data["s"]
    (x,) = data["leaves"]

    def step():
        r = V @ x
        r -= s
        return 0.5 * (r @ r), [r @ V]

    return Cell(step, lambda out: (float(out[0]), out[1]))


def loss(L, V, s, x):
    """The objective for pyautodiff (L = ad) and torch."""
    r = V @ x - s
    return 0.5 * L.sum(r * r)


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")
    V, s = ad.tensor(data["V"]), ad.tensor(data["s"])
    return common.pyautodiff_cell(data["leaves"], lambda x: loss(ad, V, s, x))


def build_torch(data, size):
    torch = peers.load("torch")
    V, s = torch.from_numpy(data["V"]), torch.from_numpy(data["s"])
    return common.torch_cell(data["leaves"], lambda x: loss(torch, V, s, x))


BUILDERS = common.builders(globals())
