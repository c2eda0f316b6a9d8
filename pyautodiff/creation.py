"""Creation functions beyond tensor / zeros / ones / full (tensor.py), with PyTorch's names and
NumPy's shape convention (a tuple or an int): empty, arange, linspace, eye, rand, randn, their
*_like forms, and manual_seed for the random ones."""
import numpy as np

from ._capi import resolve_dtype
from .tensor import as_tensor, full, tensor, _shape_arg

# one generator for rand / randn (PCG64, NumPy's default), reseeded by manual_seed
_rng = np.random.default_rng()


def manual_seed(seed):
    """Seed the generator behind ad.rand / ad.randn / *_like: the same seed gives the same numbers."""
    global _rng
    _rng = np.random.default_rng(int(seed))


def _dtype(dtype):
    return np.dtype(np.float64) if dtype is None else resolve_dtype(dtype)


def empty(shape, dtype=None, requires_grad=False):
    """A tensor of shape (its values are zeros here: the core has no uninitialised tensors)."""
    return full(shape, 0.0, dtype, requires_grad)


def arange(start, stop=None, step=1, dtype=None, requires_grad=False):
    """As numpy.arange, as a float tensor (float64 unless dtype)."""
    values = np.arange(start, stop, step) if stop is not None else np.arange(start)
    return tensor(values, _dtype(dtype), requires_grad)


def linspace(start, stop, num=50, dtype=None, requires_grad=False):
    """num evenly spaced values from start to stop, both included (numpy.linspace)."""
    return tensor(np.linspace(start, stop, int(num)), _dtype(dtype), requires_grad)


def eye(n, m=None, dtype=None, requires_grad=False):
    return tensor(np.eye(int(n), None if m is None else int(m)), _dtype(dtype), requires_grad)


def rand(shape, dtype=None, requires_grad=False):
    """Uniform on [0, 1), drawn in float64 and rounded to dtype."""
    return tensor(_rng.random(_shape_arg(shape)), _dtype(dtype), requires_grad)


def randn(shape, dtype=None, requires_grad=False):
    """Standard normal, drawn in float64 and rounded to dtype."""
    return tensor(_rng.standard_normal(_shape_arg(shape)), _dtype(dtype), requires_grad)


def full_like(t, fill_value, dtype=None, requires_grad=False):
    t = as_tensor(t)
    return full(t.shape, fill_value, dtype or t.dtype, requires_grad)


def empty_like(t, dtype=None, requires_grad=False):
    return full_like(t, 0.0, dtype, requires_grad)


def rand_like(t, dtype=None, requires_grad=False):
    t = as_tensor(t)
    return rand(t.shape, dtype or t.dtype, requires_grad)


def randn_like(t, dtype=None, requires_grad=False):
    t = as_tensor(t)
    return randn(t.shape, dtype or t.dtype, requires_grad)
