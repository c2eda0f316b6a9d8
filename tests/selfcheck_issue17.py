"""Self-check cases (test_reference_selfcheck.py) of the reference ops issue 17 added: shape ops,
reductions and scans, products. Each entry builds (array inputs, keyword parameters) from a
random generator, as that file's CASES; inputs keep away from kinks and ties (sort, norm's inf
and 1 orders), so central differences apply."""
import numpy as np


def case(*arrays, **params):
    return list(arrays), params


def smooth(rng, shape):
    return rng.uniform(-2.0, 2.0, shape)


def distinct(rng, shape):
    """Values pairwise at least 0.3 apart and at least 0.05 from 0 (no ties, no sign kinks)."""
    size = int(np.prod(shape, dtype=np.int64))
    return ((rng.permutation(size) - size / 2) * 0.3 + 0.05).reshape(shape)


CASES = {
    "squeeze": [lambda r: case(smooth(r, (1, 3, 1)), axis=(0, 2))],
    "expand_dims": [lambda r: case(smooth(r, (3, 2)), axis=(0, -1))],
    "flatten": [lambda r: case(smooth(r, (2, 3, 4)), start_dim=1)],
    "moveaxis": [lambda r: case(smooth(r, (2, 3, 4)), source=0, destination=-1)],
    "swapaxes": [lambda r: case(smooth(r, (2, 3, 4)), axis1=0, axis2=2)],
    "flip": [lambda r: case(smooth(r, (2, 3)), axis=1)],
    "roll": [lambda r: case(smooth(r, (2, 3, 4)), shift=(1, -2), axis=(0, 2))],
    "tile": [lambda r: case(smooth(r, (2, 3)), reps=(2, 1, 2))],
    "repeat": [lambda r: case(smooth(r, (2, 3)), repeats=[1, 0, 2], axis=1)],
    "take_along_axis": [lambda r: case(smooth(r, (2, 3)), indices=np.array([[0, 0, 2], [1, 2, 1]]), axis=1)],
    "diagonal": [lambda r: case(smooth(r, (2, 3, 4)), offset=1, axis1=2, axis2=1)],
    "pad_moves": [lambda r: case(smooth(r, (3, 4)), pad_width=((1, 2), (2, 0)), mode="reflect"),
                  lambda r: case(smooth(r, (3, 4)), pad_width=1, mode="edge")],
    "pad_constant": [lambda r: case(smooth(r, (2, 3)), pad_width=((1, 0), (0, 2)), constant_values=2.0)],
    "tril": [lambda r: case(smooth(r, (2, 3, 3)), k=-1)],
    "triu": [lambda r: case(smooth(r, (3, 4)), k=1)],
    "put_along_axis": [lambda r: case(smooth(r, (3, 4)), smooth(r, (1, 4)), indices=np.array([[2, 0, 0, 1]]),
                                      axis=0)],
    "scatter_add_along": [lambda r: case(smooth(r, (3, 4)), smooth(r, (2, 4)),
                                         dim=0, index=np.array([[2, 0, 0, 1], [2, 2, 0, 1]]))],
    "prod": [lambda r: case(smooth(r, (2, 3, 4)), axis=(0, 2)),
             lambda r: case(np.array([[1.5, 0.0, -2.0], [0.0, 0.0, 3.0]]), axis=1)],
    "cumsum": [lambda r: case(smooth(r, (3, 4)), axis=0)],
    "cumprod": [lambda r: case(smooth(r, (3, 4)), axis=1),
                lambda r: case(np.array([1.5, 0.0, -2.0, 0.5]))],
    "scan": [lambda r: case(smooth(r, (3, 4)), smooth(r, (3, 4)), axis=1),
             lambda r: case(smooth(r, (3, 4)), smooth(r, (3, 4)), axis=0, reverse=True),
             lambda r: case(smooth(r, (3, 4)), smooth(r, (3, 4)), axis=1, unit=True)],
    "var": [lambda r: case(smooth(r, (3, 4)), axis=0, ddof=1)],
    "std": [lambda r: case(smooth(r, (3, 4)), axis=(0, 1), keepdims=True)],
    "norm": [lambda r: case(distinct(r, (3, 4))),
             lambda r: case(distinct(r, (3, 4)), ord=np.inf, axis=1),
             lambda r: case(distinct(r, (3, 4)), ord=1, axis=(0, 1)),
             lambda r: case(distinct(r, (5,)), ord=3)],
    "sort": [lambda r: case(distinct(r, (3, 4)), axis=1, descending=True),
             lambda r: case(distinct(r, (3, 4)), axis=0, k=2)],
    "dot": [lambda r: case(smooth(r, (2, 3, 4)), smooth(r, (4, 2)))],
    "vdot": [lambda r: case(smooth(r, (2, 3)), smooth(r, (3, 2)))],
    "outer": [lambda r: case(smooth(r, (3,)), smooth(r, (2, 2)))],
    "inner": [lambda r: case(smooth(r, (2, 3)), smooth(r, (4, 3)))],
    "tensordot": [lambda r: case(smooth(r, (2, 3, 4)), smooth(r, (4, 3, 2)), axes=((1, 2), (1, 0)))],
    "trace": [lambda r: case(smooth(r, (3, 4)), offset=1)],
    "einsum": [lambda r: case(smooth(r, (2, 3)), smooth(r, (3, 3)), smooth(r, (2,)), subscripts="ij,jj,i->j")],
}
