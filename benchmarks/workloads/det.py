"""det: GradBench's determinant eval (from cmpad's det_by_minor), gradient of det(A).

det(A) by expansion by minors along the first row, recursively, on the matrix's scalar
entries: ell! products, the eval's "good source of floating point operations" (GradBench runs
ell = 5 to 11; A uniform in [0, 1)). Every AD contestant runs the same recursion on the
entries A[i, j] of its tensor (0-d tensors). ell = 7 (about 13,700 products); quick: ell = 4.

The NumPy column is not the same algorithm: det(A) and its gradient, the cofactor matrix
det(A) inv(A)^T, from LU (it is the gradient's reference, and shows what the recursion costs).
"""

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "det"
TITLE = "GradBench det: gradient of det(A) by expansion by minors, ell=7 (quick: 4)"
PER_OP = False
HAND_LABEL = "NumPy by LU (det(A) inv(A)^T; not the expansion by minors)"
LEAVES = ["A (ell, ell)"]
ISOLATED = set()
NOT_APPLICABLE = common.GRADBENCH_NOT_WRITTEN
TARGETS = common.gradbench_targets()
NOTES = ["det: the NumPy column computes the determinant and its gradient by LU, not by "
         "expansion by minors; only the PyTorch target applies."]
TINY = {"ell": 3}


def size(quick):
    return {"ell": 4 if quick else 7}


def n_ops(size):
    return None


def make_data(size):
    return {"leaves": [common.rng(18).random((size["ell"], size["ell"]))]}


def det_by_minor(A):
    """Expansion by minors along row r over the remaining columns; A's entries are read once."""
    ell = A.shape[0]
    entries = [[A[i, j] for j in range(ell)] for i in range(ell)]

    def minor(r, cols):
        if len(cols) == 1:
            return entries[r][cols[0]]
        total = None
        for k, c in enumerate(cols):
            term = entries[r][c] * minor(r + 1, cols[:k] + cols[k + 1:])
            total = term if total is None else total + term if k % 2 == 0 else total - term
        return total

    return minor(0, tuple(range(ell)))


def objective(data, A):
    return np.linalg.det(A)


def build_numpy(data, size):
    (A,) = data["leaves"]

    def step():
        value = np.linalg.det(A)
        return value, [value * np.linalg.inv(A).T]

    return Cell(step, lambda out: (float(out[0]), out[1]))


def build_pyautodiff(data, size):
    return common.pyautodiff_cell(data["leaves"], det_by_minor)


def build_torch(data, size):
    return common.torch_cell(data["leaves"], det_by_minor)


BUILDERS = common.builders(globals())
