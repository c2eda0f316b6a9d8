"""deep_chain: v = x, then v = v + y a hundred thousand times; forward + backward, time and memory.

A graph as deep as it is long: recursion-free backward sweeps survive it, recursive ones
(micrograd's topological sort) need the recursion limit raised. Leaves: x and y (0-d); y feeds
every node, so its adjoint accumulates 10^5 times.

Peak memory is measured on a fresh heap, in a child process: the peak RSS growth of one first
call divided by the number of nodes. ``deep_chain_1e6`` runs 10^6 adds for pyautodiff alone
(plus the hand-written reference), in child processes: the issue's "without error" target.
"""

import types

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common


def make_data(size):
    return {"x": 0.25, "y": 1e-6}


def n_ops(size):
    return size["ops"]


def build_numpy(data, size):
    x, y, n = data["x"], data["y"], size["ops"]

    def step():
        v = x
        for _ in range(n):
            v = v + y
        grad_v = 1.0
        grad_y = 0.0
        for _ in range(n):
            grad_y += grad_v  # each add passes its cotangent on unchanged to v and to y
        return v, grad_v, grad_y

    def grads(out):
        v, grad_x, grad_y = out
        return v, [common.f64(grad_x), common.f64(grad_y)]

    return Cell(step, grads)


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")
    x = ad.tensor(data["x"], requires_grad=True)
    y = ad.tensor(data["y"], requires_grad=True)
    n = size["ops"]

    def forward():
        x.grad = None
        y.grad = None
        v = x
        for _ in range(n):
            v = v + y
        return v

    def step():
        v = forward()
        v.backward()
        return v

    def probe():
        # What the core itself says it holds for the live graph, next to the RSS figure.
        before = ad.tape_stats()
        v = forward()
        during = ad.tape_stats()
        v.backward()
        after = ad.tape_stats()
        return v, {
            "tape_live_nodes_growth": during["live_nodes"] - before["live_nodes"],
            "tape_live_bytes_per_node": (during["live_bytes"] - before["live_bytes"]) / n,
            "tape_live_nodes_after_backward": after["live_nodes"] - before["live_nodes"],
        }

    def grads(v):
        return v.item(), [x.grad.numpy(), y.grad.numpy()]

    return Cell(step, grads, probe=probe if hasattr(ad, "tape_stats") else None)


def build_torch(data, size):
    torch = peers.load("torch")
    x = torch.tensor(data["x"], dtype=torch.float64, requires_grad=True)
    y = torch.tensor(data["y"], dtype=torch.float64, requires_grad=True)
    n = size["ops"]

    def step():
        x.grad = None
        y.grad = None
        v = x
        for _ in range(n):
            v = v + y
        v.backward()
        return v

    def grads(v):
        return v.item(), [x.grad.numpy(), y.grad.numpy()]

    return Cell(step, grads)


def _jax_loss(size):
    n = size["ops"]

    def loss(x, y):
        v = x
        for _ in range(n):
            v = v + y
        return v

    return loss


def build_jax(data, size):
    return common.jax_cell([data["x"], data["y"]], _jax_loss(size), jit=False)


def build_jax_jit(data, size):
    return common.jax_cell([data["x"], data["y"]], _jax_loss(size), jit=True)


def build_autograd(data, size):
    return common.autograd_cell([data["x"], data["y"]], _jax_loss(size))


def build_micrograd(data, size):
    Value = common.micrograd_engine().Value
    x, y = Value(data["x"]), Value(data["y"])
    n = size["ops"]

    def step():
        x.grad = 0
        y.grad = 0
        v = x
        for _ in range(n):
            v = v + y
        common.micrograd_backward(v, n + 2)
        return v

    def grads(v):
        return v.data, [common.f64(x.grad), common.f64(y.grad)]

    return Cell(step, grads, note=common.micrograd_recursion_note(Value, n + 2))


_ALL = common.builders(globals())

_COMMON = dict(
    PER_OP=True,
    HAND_LABEL="hand-written (Python floats)",
    LEAVES=["x", "y"],
    CHILD_TIMEOUT_S={"jax_jit": (15.0, 10.0)},  # (full, quick): trace + compile is capped
    SKIP_IN_QUICK={"jax_jit": "skipped in --quick: tracing and compiling a scalar graph takes "
                              "seconds (the full run caps it at 15 s)"},
    MEASURE_MEMORY=True,
    make_data=make_data,
    n_ops=n_ops,
)

deep_chain = types.SimpleNamespace(
    NAME="deep_chain",
    # Timed in this process, interleaved, with memory measured by a child; in a child of their
    # own: JAX jit (has died with SIGSEGV on deep graphs) and the two contestants whose calls
    # take seconds (one sample each, so interleaving would buy nothing).
    ISOLATED={"jax", "jax_jit", "autograd"},
    TITLE="100,000 sequential adds on 0-d tensors",
    size=lambda quick: {"ops": 2_000 if quick else 100_000},
    BUILDERS=_ALL,
    NOT_APPLICABLE={},
    TARGETS=common.SCALAR_TARGETS,
    NOTES=["The hand-written baseline is a Python-float loop forward and its reverse loop "
           "accumulating the adjoints: the interpreter floor per add."],
    **_COMMON,
)

deep_chain_1e6 = types.SimpleNamespace(
    NAME="deep_chain_1e6",
    ISOLATED="all",  # a crash at 10^6 nodes must be reported, not take the suite down with it
    TITLE="10^6 sequential adds, pyautodiff alone: runs without error, memory per node",
    size=lambda quick: {"ops": 100_000 if quick else 1_000_000},
    BUILDERS={"numpy": build_numpy, "pyautodiff": build_pyautodiff},
    NOT_APPLICABLE={key: "10^6 nodes are run for pyautodiff alone (issue 6)"
                    for key in ("torch", "jax", "jax_jit", "autograd", "micrograd")},
    TARGETS={"pyautodiff": {"runs": True, "text": "10^6 nodes forward + backward without error"}},
    NOTES=[],
    **_COMMON,
)

VARIANTS = {"deep_chain": deep_chain, "deep_chain_1e6": deep_chain_1e6}
