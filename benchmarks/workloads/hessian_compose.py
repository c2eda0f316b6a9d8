"""hessian_compose_*: second order by composing first-order transforms, against pyautodiff's own
second-order entry points, on the loss of a small MLP with 100 inputs:

    f(x) = 0.5 * (w2 . tanh(W1 @ x + b1) + b2 - y)^2,   x in R^100, W1 (64, 100)

Three workloads, one composition each (the pyautodiff column), each against a pyautodiff
baseline in the hand-written column, so the ratio is composition / baseline in the same run:

  hessian_compose_jac      ad.jacfwd(ad.jacrev(f))(x)             vs ad.hessian(f)(x)   (≤ 2x)
  hessian_compose_hvp_fwd  ad.jvp(ad.grad(f), (x,), (v,))         vs ad.grad(f)(x)      (≤ 4x)
  hessian_compose_hvp_rev  ad.grad(lambda x: <ad.grad(f)(x), v>)  vs ad.grad(f)(x)      (≤ 4x)

Every cell, the baseline included, is checked against hand-written NumPy before timing: the
analytic Hessian
    H = a a^T + r W1^T diag(-2 w2 h (1 - h^2)) W1,  h = tanh(W1 x + b1), a = W1^T (w2 (1 - h^2)),
    r = w2 . h + b2 - y
its product with v, and the gradient r a. PyTorch (torch.func, eager) runs the same composition
as an optional peer.
"""

import types

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.peers import Unavailable
from benchmarks.workloads import common

N_IN, N_HIDDEN = 100, 64


def size(quick):
    return {"inputs": N_IN, "hidden": N_HIDDEN}


def n_ops(size):
    return None


def make_data(size):
    generator = common.rng(13)
    n, m = size["inputs"], size["hidden"]
    data = {
        "W1": generator.normal(scale=1 / np.sqrt(n), size=(m, n)),
        "b1": generator.normal(scale=0.1, size=m),
        "w2": generator.normal(scale=1 / np.sqrt(m), size=m),
        "b2": 0.1,
        "y": 1.5,
        "x": generator.normal(size=n),
        "v": generator.normal(size=n),
    }
    W1, b1, w2, x, v = data["W1"], data["b1"], data["w2"], data["x"], data["v"]
    h = np.tanh(W1 @ x + b1)
    r = w2 @ h + data["b2"] - data["y"]
    a = W1.T @ (w2 * (1.0 - h * h))
    H = np.outer(a, a) + r * (W1.T * (-2.0 * w2 * h * (1.0 - h * h))) @ W1
    data["expected"] = {"hessian": H, "hvp": H @ v, "grad": r * a}
    return data


def _one(value):
    return 0.0, [np.asarray(value, dtype=np.float64)]


def _expected(data, what):
    return 0.0, [data["expected"][what]]


def _pyautodiff_f(data):
    ad = peers.load("pyautodiff")
    W1, b1, w2 = (ad.tensor(data[k]) for k in ("W1", "b1", "w2"))
    b2, y = data["b2"], data["y"]

    def f(x):
        r = (w2 * ad.tanh(W1 @ x + b1)).sum() + (b2 - y)
        return 0.5 * r * r

    return ad, f


def _torch_f(data):
    torch = peers.load("torch")
    W1, b1, w2, x, v = (torch.tensor(data[k], dtype=torch.float64)
                        for k in ("W1", "b1", "w2", "x", "v"))
    b2, y = data["b2"], data["y"]

    def f(x):
        r = (w2 * torch.tanh(W1 @ x + b1)).sum() + (b2 - y)
        return 0.5 * r * r

    return torch, f, x, v


def _need(ad, *names):
    for name in names:
        if not hasattr(ad, name):
            raise Unavailable("not available yet", f"ad.{name} does not exist yet")


# ---- pyautodiff baselines (the hand-written column) ----

def _baseline_hessian(data, size):
    ad, f = _pyautodiff_f(data)
    _need(ad, "hessian")
    hessian, x = ad.hessian(f), data["x"]
    return Cell(lambda: hessian(x), lambda H: _one(H.numpy()),
                expected=_expected(data, "hessian"), note="ad.hessian(f)")


def _baseline_grad(data, size):
    ad, f = _pyautodiff_f(data)
    grad, x = ad.grad(f), data["x"]
    return Cell(lambda: grad(x), lambda g: _one(g.numpy()), expected=_expected(data, "grad"),
                note="ad.grad(f)")


# ---- pyautodiff compositions ----

def _jac(data, size):
    ad, f = _pyautodiff_f(data)
    _need(ad, "jacfwd", "jacrev")
    hessian, x = ad.jacfwd(ad.jacrev(f)), data["x"]
    return Cell(lambda: hessian(x), lambda H: _one(H.numpy()),
                expected=_expected(data, "hessian"), note="ad.jacfwd(ad.jacrev(f))")


def _hvp_fwd(data, size):
    ad, f = _pyautodiff_f(data)
    grad, x, v = ad.grad(f), data["x"], data["v"]
    return Cell(lambda: ad.jvp(grad, (x,), (v,))[1], lambda hv: _one(hv.numpy()),
                expected=_expected(data, "hvp"), note="ad.jvp(ad.grad(f), (x,), (v,))")


def _hvp_rev(data, size):
    ad, f = _pyautodiff_f(data)
    grad = ad.grad(f)
    v_t = ad.tensor(data["v"])
    hvp, x = ad.grad(lambda x: (grad(x) * v_t).sum()), data["x"]
    return Cell(lambda: hvp(x), lambda hv: _one(hv.numpy()), expected=_expected(data, "hvp"),
                note="ad.grad(lambda x: (ad.grad(f)(x) * v).sum())")


# ---- PyTorch eager, the same compositions ----

def _torch_jac(data, size):
    torch, f, x, v = _torch_f(data)
    hessian = torch.func.jacfwd(torch.func.jacrev(f))
    return Cell(lambda: hessian(x), lambda H: _one(H.numpy()),
                expected=_expected(data, "hessian"), note="torch.func.jacfwd(torch.func.jacrev(f))")


def _torch_hvp_fwd(data, size):
    torch, f, x, v = _torch_f(data)
    grad = torch.func.grad(f)
    return Cell(lambda: torch.func.jvp(grad, (x,), (v,))[1], lambda hv: _one(hv.numpy()),
                expected=_expected(data, "hvp"), note="torch.func.jvp(torch.func.grad(f), (x,), (v,))")


def _torch_hvp_rev(data, size):
    torch, f, x, v = _torch_f(data)
    grad = torch.func.grad(f)
    hvp = torch.func.grad(lambda x: (grad(x) * v).sum())
    return Cell(lambda: hvp(x), lambda hv: _one(hv.numpy()), expected=_expected(data, "hvp"),
                note="torch.func.grad of <torch.func.grad(f), v>")


_VARIANTS = {
    # name: (composition, baseline, torch, title, baseline label, bound, compared value)
    "hessian_compose_jac": (
        _jac, _baseline_hessian, _torch_jac,
        "Hessian of a 100-input MLP loss: ad.jacfwd(ad.jacrev(f)) vs ad.hessian(f)",
        "ad.hessian(f) (pyautodiff baseline)", 2.0, "H (100, 100)"),
    "hessian_compose_hvp_fwd": (
        _hvp_fwd, _baseline_grad, _torch_hvp_fwd,
        "HVP of a 100-input MLP loss: ad.jvp(ad.grad(f)) vs one ad.grad(f)",
        "one ad.grad(f) (pyautodiff baseline)", 4.0, "H v (100); grad f for the baseline"),
    "hessian_compose_hvp_rev": (
        _hvp_rev, _baseline_grad, _torch_hvp_rev,
        "HVP of a 100-input MLP loss: ad.grad(<ad.grad(f), v>) vs one ad.grad(f)",
        "one ad.grad(f) (pyautodiff baseline)", 4.0, "H v (100); grad f for the baseline"),
}


def _variant(name):
    composition, baseline, torch_cell, title, label, bound, value = _VARIANTS[name]
    return types.SimpleNamespace(
        NAME=name,
        TITLE=title,
        PER_OP=False,
        HAND_LABEL=label,
        LEAVES=[value],
        ISOLATED=set(),
        NOT_APPLICABLE={key: "not run (pyautodiff against itself; PyTorch is the peer)"
                        for key in ("jax", "jax_jit", "autograd", "micrograd")},
        TARGETS={"numpy": {"max_ratio": bound,
                           "text": f"within {bound:g}x of {label.split(' (')[0]}"}},
        NOTES=[f"{name}: the hand-written column is pyautodiff's own baseline, checked (like "
               f"every cell) against an analytic NumPy Hessian / HVP / gradient; the ratio is "
               f"composition / baseline."],
        BUILDERS={"numpy": baseline, "pyautodiff": composition, "torch": torch_cell},
        size=size,
        n_ops=n_ops,
        make_data=make_data,
    )


VARIANTS = {name: _variant(name) for name in _VARIANTS}
