"""lse: GradBench's logsumexp eval, log(sum(exp(x))) of one vector and its gradient.

GradBench (github.com/gradbench/gradbench, eval "lse") draws x uniform in [0, 1) with n from
2,500 to 1,280,000; the gradient is softmax(x). Every contestant calls its library's
logsumexp (max-shifted, as GradBench's tools write it by hand). Full size n = 1,280,000
(GradBench's largest); quick: 10,000.
"""

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "lse"
TITLE = "GradBench lse: gradient of logsumexp(x), x of 1,280,000 (quick: 10,000)"
PER_OP = False
HAND_LABEL = "hand-written NumPy (max-shifted, gradient exp(x - lse))"
LEAVES = ["x"]
ISOLATED = set()
NOT_APPLICABLE = common.GRADBENCH_NOT_WRITTEN
TARGETS = common.gradbench_targets(numpy_bound=1.5)
NOTES = []
TINY = {"n": 7}


def size(quick):
    return {"n": 10_000 if quick else 1_280_000}


def n_ops(size):
    return None


def make_data(size):
    return {"leaves": [common.rng(15).random(size["n"])]}


def objective(data, x):
    m = x.max()
    return m + np.log(np.exp(x - m).sum())


def build_numpy(data, size):
    (x,) = data["leaves"]

    def step():
        m = x.max()
        e = x - m
        np.exp(e, out=e)
        total = e.sum()
        e *= 1.0 / total
        return m + np.log(total), [e]

    return Cell(step, lambda out: (float(out[0]), out[1]))


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")
    return common.pyautodiff_cell(data["leaves"], lambda x: ad.logsumexp(x))


def build_torch(data, size):
    torch = peers.load("torch")
    return common.torch_cell(data["leaves"], lambda x: torch.logsumexp(x, 0))


BUILDERS = common.builders(globals())
