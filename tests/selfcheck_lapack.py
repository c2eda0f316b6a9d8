"""Self-check cases (test_reference_selfcheck.py) of the ad.linalg reference ops
(reference/lapack.py): well-conditioned matrices (cond ~ 10, from op_table's generators), so
central differences with step 1e-5 stay far inside that file's tolerances. cholesky's inputs
are symmetric positive definite; its VJP is checked against differences of NumPy's forward,
which reads the lower triangle only, exactly the function its rule differentiates. svd and
svdvals take matrices with singular values at least 0.5 apart and from 0 (op_table.separated)."""
from op_table import separated, spd, well_conditioned


def case(*arrays, **params):
    return list(arrays), params


CASES = {
    "solve": [lambda r: case(well_conditioned(r, (3, 3)), r.standard_normal((3, 2))),
              lambda r: case(well_conditioned(r, (2, 3, 3)), r.standard_normal(3)),
              lambda r: case(well_conditioned(r, (3, 3)), r.standard_normal((2, 3, 1)))],
    "inv": [lambda r: case(well_conditioned(r, (2, 3, 3)))],
    "det": [lambda r: case(well_conditioned(r, (2, 3, 3)))],
    "logdet": [lambda r: case(well_conditioned(r, (2, 3, 3)))],
    "cholesky": [lambda r: case(spd(r, (3, 3))), lambda r: case(spd(r, (2, 4, 4)))],
    "svdvals": [lambda r: case(separated(r, (3, 3))), lambda r: case(separated(r, (2, 4, 3)))],
    "svd": [lambda r: case(separated(r, (3, 3))), lambda r: case(separated(r, (4, 2))),
            lambda r: case(separated(r, (2, 2, 5)))],
}
