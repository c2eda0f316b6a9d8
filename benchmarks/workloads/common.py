"""Helpers several workloads share: target tables, JAX compile timing, micrograd's missing ops."""

import importlib
import math
import sys
import time

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell

# Issue 6's targets for the scalar-graph workloads, as the largest allowed pyautodiff/contestant
# time ratio. "strict" means the ratio must be below the bound, not merely at it.
SCALAR_TARGETS = {
    "torch": {"max_ratio": 1 / 8, "text": "≥ 8x faster than PyTorch eager"},
    "micrograd": {"max_ratio": 1.0, "strict": True, "text": "faster than micrograd"},
    "jax": {"max_ratio": 1 / 100, "text": "≥ 100x faster than JAX op-by-op"},
}


def hand_target(bound):
    return {"numpy": {"max_ratio": bound, "text": f"within {bound:g}x of hand-written NumPy"}}


def builders(namespace):
    """A workload's BUILDERS: its functions build_<contestant>, keyed by contestant."""
    return {name[len("build_"):]: fn for name, fn in namespace.items()
            if name.startswith("build_") and callable(fn)}


def f64(value):
    return np.asarray(value, dtype=np.float64)


def rng(seed=0):
    return np.random.default_rng(seed)


# ---- JAX ----

def jax_grads(out):
    """(value, gradients) from jax.value_and_grad, gradients flattened in argument order."""
    jax = peers.load("jax")
    value, gradients = out
    return float(value), [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(gradients)]


def jax_compile(jax, function, *args):
    """jit, trace and compile ahead of time, so the compile is timed apart from the steps."""
    start = time.perf_counter()
    compiled = jax.jit(function).lower(*args).compile()
    return compiled, time.perf_counter() - start


# ---- HIPS autograd ----

def autograd_numpy():
    peers.load("autograd")
    return importlib.import_module("autograd.numpy")


# ---- micrograd ----

def micrograd_engine():
    peers.load("micrograd")
    return importlib.import_module("micrograd.engine")


def micrograd_unary(Value):
    """tanh, exp and log for micrograd, written the way its engine writes relu."""

    def tanh(x):
        t = math.tanh(x.data)
        out = Value(t, (x,), "tanh")

        def _backward():
            x.grad += (1.0 - t * t) * out.grad

        out._backward = _backward
        return out

    def exp(x):
        e = math.exp(x.data)
        out = Value(e, (x,), "exp")

        def _backward():
            x.grad += e * out.grad

        out._backward = _backward
        return out

    def log(x):
        out = Value(math.log(x.data), (x,), "log")

        def _backward():
            x.grad += out.grad / x.data

        out._backward = _backward
        return out

    return tanh, exp, log


_SAFE_MARGIN = 1_000  # frames the harness itself is already using below micrograd's recursion


def micrograd_backward(root, depth):
    """micrograd's backward with the recursion limit raised to cover its recursive topo sort."""
    previous = sys.getrecursionlimit()
    needed = depth + _SAFE_MARGIN
    if needed > previous:
        sys.setrecursionlimit(needed)
    try:
        root.backward()
    finally:
        sys.setrecursionlimit(previous)


_recursion_probe = {}


def micrograd_recursion_note(Value, depth):
    """Show, once, what happens at the default limit, and say what this run raised it to."""
    if depth + _SAFE_MARGIN <= sys.getrecursionlimit():
        return ""
    if "result" not in _recursion_probe:
        limit = sys.getrecursionlimit()
        x = Value(0.0)
        v = x
        for _ in range(limit + 100):
            v = v + x
        try:
            v.backward()
            _recursion_probe["result"] = f"a {limit + 100}-deep chain ran at the default limit"
        except RecursionError:
            _recursion_probe["result"] = (f"at the default recursion limit ({limit}) its "
                                          f"recursive topological sort raises RecursionError "
                                          f"on a {limit + 100}-deep chain")
    return (f"micrograd: {_recursion_probe['result']}; sys.setrecursionlimit raised to "
            f"{depth + _SAFE_MARGIN} around its backward for this run")


# ---- cells for array libraries: a workload writes only its loss, once per library ----

def _backward_cell(tensors, loss, note, cotangent=None, cotangent_array=None):
    """PyTorch-style: leaves with .grad, loss.backward(); grads cleared before every step.

    With a cotangent (a tensor of the output's shape, made once), the output need not be a
    scalar: out.backward(cotangent) runs the VJP, and the reported loss is <out, cotangent>."""

    def step():
        for t in tensors:
            t.grad = None
        out = loss(*tensors)
        if cotangent is None:
            out.backward()
        else:
            out.backward(cotangent)
        return out

    def grads(out):
        value = (out.item() if cotangent is None else
                 float(np.vdot(np.asarray(out.detach(), dtype=np.float64), cotangent_array)))
        return value, [t.grad.numpy() for t in tensors]

    return Cell(step, grads, note=note)


def pyautodiff_cell(leaves, loss, note="", cotangent=None):
    """leaves keep their dtype (float32 stays float32); cotangent: a NumPy array or None."""
    ad = peers.load("pyautodiff")
    seed = None if cotangent is None else ad.tensor(cotangent)
    return _backward_cell([ad.tensor(v, requires_grad=True) for v in leaves], loss, note,
                          seed, cotangent)


def torch_dtype(value):
    """float32 for a float32 array, else float64 (every contestant computes in float64)."""
    torch = peers.load("torch")
    return torch.float32 if getattr(value, "dtype", None) == np.float32 else torch.float64


def torch_cell(leaves, loss, note="", cotangent=None):
    torch = peers.load("torch")
    tensors = [torch.tensor(v, dtype=torch_dtype(v), requires_grad=True) for v in leaves]
    seed = None if cotangent is None else torch.tensor(cotangent, dtype=torch_dtype(cotangent))
    return _backward_cell(tensors, loss, note, seed, cotangent)


def jax_cell(leaves, loss, jit, note=""):
    """jax.value_and_grad over every argument; with jit, compiled ahead and timed apart."""
    jax = peers.load("jax")
    args = [jax.numpy.asarray(v) for v in leaves]
    value_and_grad = jax.value_and_grad(loss, argnums=tuple(range(len(args))))
    if not jit:
        return Cell(lambda: value_and_grad(*args), jax_grads, sync=jax.block_until_ready,
                    note=note)
    compiled, compile_s = jax_compile(jax, value_and_grad, *args)
    return Cell(lambda: compiled(*args), jax_grads, sync=jax.block_until_ready,
                compile_s=compile_s, note=note)


def autograd_cell(leaves, loss, note=""):
    autograd = peers.load("autograd")
    value_and_grad = autograd.value_and_grad(loss, argnum=tuple(range(len(leaves))))
    args = [np.array(v) for v in leaves]

    def grads(out):
        value, gradients = out
        return float(value), [np.asarray(g, dtype=np.float64) for g in gradients]

    return Cell(lambda: value_and_grad(*args), grads, note=note)


def jnp():
    return peers.load("jax").numpy


# ---- PyTorch under NumPy's names: one model function serves pyautodiff and torch ----

class TorchNames:
    """torch with the NumPy spellings the cases use (axis=, amax for max, cat, ...)."""

    def __init__(self, torch):
        self.torch = torch

    def __getattr__(self, name):
        return getattr(self.torch, name)

    @staticmethod
    def _dims(x, axis):
        return tuple(range(x.ndim)) if axis is None else axis

    def sum(self, x, axis=None):
        return self.torch.sum(x, dim=self._dims(x, axis))

    def mean(self, x, axis=None):
        return self.torch.mean(x, dim=self._dims(x, axis))

    def max(self, x, axis=None):
        return self.torch.amax(x, dim=self._dims(x, axis))  # ties share the gradient, as here

    def min(self, x, axis=None):
        return self.torch.amin(x, dim=self._dims(x, axis))

    def logsumexp(self, x, axis=None):
        return self.torch.logsumexp(x, dim=self._dims(x, axis))

    def softmax(self, x, axis=-1):
        return self.torch.softmax(x, dim=axis)

    def log_softmax(self, x, axis=-1):
        return self.torch.log_softmax(x, dim=axis)

    def concatenate(self, xs, axis=0):
        return self.torch.cat(xs, dim=axis)

    def stack(self, xs, axis=0):
        return self.torch.stack(xs, dim=axis)

    def split(self, x, sections, axis=0):
        return list(self.torch.tensor_split(x, sections, dim=axis))

    def transpose(self, x, axes=None):
        return x.permute(*(axes or reversed(range(x.ndim))))

    def reshape(self, x, shape):
        return x.reshape(shape)

    def maximum(self, x, y):
        return self.torch.maximum(x, y)

    def divide(self, x, y):
        return self.torch.div(x, y)

    def relu(self, x):
        return self.torch.relu(x)


# ---- GradBench evals (issue 15) ----

GRADBENCH_NOT_WRITTEN = {key: "not written for this GradBench eval"
                         for key in ("jax", "jax_jit", "autograd", "micrograd")}


def gradbench_targets(numpy_bound=None):
    """Issue 15: every eval faster than PyTorch eager; some within a bound of NumPy by hand."""
    targets = {"torch": {"max_ratio": 1.0, "strict": True, "text": "faster than PyTorch eager"}}
    if numpy_bound is not None:
        targets.update(hand_target(numpy_bound))
    return targets
