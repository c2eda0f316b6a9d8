"""jacobian_fwd / jacobian_rev: the full 100x100 Jacobian of a composite R^100 -> R^100 function.

    f(x) = tanh(A @ x + c) * exp(-x*x / 2) + log(1 + x*x)

Forward mode builds it from 100 JVPs (one per input direction), reverse mode from 100 VJPs (one
per output); the hand-written baseline is the analytic Jacobian
    J = diag((1 - t^2) * e) @ A + diag(-x * t * e + 2x / (1 + x^2)),  t = tanh(Ax + c), e = exp(-x^2/2)
pyautodiff runs only once it has ad.jacfwd / ad.jacrev (issue 4).
"""

import types

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.peers import Unavailable
from benchmarks.workloads import common


def size(quick):
    return {"n": 20 if quick else 100}


def n_ops(size):
    return None


def make_data(size):
    n = size["n"]
    generator = common.rng(8)
    return {
        "A": generator.normal(scale=1 / np.sqrt(n), size=(n, n)),
        "c": generator.normal(scale=0.1, size=n),
        "x": generator.normal(size=n),
    }


def _jacobian_grads(J):
    return 0.0, [np.asarray(J, dtype=np.float64)]


def build_numpy(data, size):
    A, c, x = data["A"], data["c"], data["x"]

    def step():
        t = np.tanh(A @ x + c)
        e = np.exp(-0.5 * x * x)
        J = ((1.0 - t * t) * e)[:, None] * A
        J[np.diag_indices_from(J)] += -x * t * e + 2.0 * x / (1.0 + x * x)
        return J

    return Cell(step, _jacobian_grads)


def _pyautodiff(data, mode):
    ad = peers.load("pyautodiff")
    transform = getattr(ad, mode, None)
    if transform is None:
        raise Unavailable("not available yet", f"ad.{mode} does not exist yet (issue 4)")
    A, c, x = ad.tensor(data["A"]), ad.tensor(data["c"]), ad.tensor(data["x"])

    def f(x):
        return ad.tanh(A @ x + c) * ad.exp(-0.5 * x * x) + ad.log(1.0 + x * x)

    jacobian = transform(f)
    return Cell(lambda: jacobian(x), _jacobian_grads, note=f"ad.{mode}")


def _torch(data, mode):
    torch = peers.load("torch")
    A, c, x = (torch.tensor(data[k], dtype=torch.float64) for k in ("A", "c", "x"))

    def f(x):
        return torch.tanh(A @ x + c) * torch.exp(-0.5 * x * x) + torch.log(1.0 + x * x)

    jacobian = getattr(torch.func, mode)(f)
    return Cell(lambda: jacobian(x), lambda J: _jacobian_grads(J.numpy()),
                note=f"torch.func.{mode}")


def _jax(data, mode, jit):
    jax = peers.load("jax")
    jnp = jax.numpy
    A, c, x = (jnp.asarray(data[k]) for k in ("A", "c", "x"))

    def f(x):
        return jnp.tanh(A @ x + c) * jnp.exp(-0.5 * x * x) + jnp.log(1.0 + x * x)

    jacobian = getattr(jax, mode)(f)
    if not jit:
        return Cell(lambda: jacobian(x), _jacobian_grads, sync=jax.block_until_ready,
                    note=f"jax.{mode}")
    compiled, compile_s = common.jax_compile(jax, jacobian, x)
    return Cell(lambda: compiled(x), _jacobian_grads, sync=jax.block_until_ready,
                compile_s=compile_s, note=f"jax.jit(jax.{mode})")


def _autograd(data):
    autograd = peers.load("autograd")
    anp = common.autograd_numpy()
    A, c, x = data["A"], data["c"], data["x"]

    def f(x):
        return anp.tanh(A @ x + c) * anp.exp(-0.5 * x * x) + anp.log(1.0 + x * x)

    jacobian = autograd.jacobian(f)
    return Cell(lambda: jacobian(x), _jacobian_grads, note="autograd.jacobian (reverse mode)")


def _variant(mode):
    name = "jacobian_fwd" if mode == "jacfwd" else "jacobian_rev"
    builders = {
        "numpy": build_numpy,
        "pyautodiff": lambda data, size: _pyautodiff(data, mode),
        "torch": lambda data, size: _torch(data, mode),
        "jax": lambda data, size: _jax(data, mode, jit=False),
        "jax_jit": lambda data, size: _jax(data, mode, jit=True),
    }
    not_applicable = {"micrograd": "scalar-only library, no Jacobian transform"}
    if mode == "jacrev":
        builders["autograd"] = lambda data, size: _autograd(data)
    else:
        not_applicable["autograd"] = "HIPS autograd has no forward-mode Jacobian"
    return types.SimpleNamespace(
        NAME=name,
        TITLE=f"{mode} of a 100 -> 100 composite (matmul, tanh, exp, log), full Jacobian",
        PER_OP=False,
        HAND_LABEL="hand-written NumPy (analytic)",
        LEAVES=["x (100)"],
        ISOLATED=set(),
        NOT_APPLICABLE=not_applicable,
        TARGETS={},
        NOTES=[],
        BUILDERS=builders,
        size=size,
        n_ops=n_ops,
        make_data=make_data,
    )


VARIANTS = {"jacobian_fwd": _variant("jacfwd"), "jacobian_rev": _variant("jacrev")}
