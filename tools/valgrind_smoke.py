"""A short tour of the core for valgrind (tools/valgrind.sh): every op family forward and
backward in both dtypes, broadcasting, retain_graph, no_grad, errors, a second thread, anomaly
mode, empty and oversized shapes, the forward, batched reverse and second-order sweeps. Valgrind checks every read and write of the C core; this
script checks the values are right and that the core's live counters come back to zero.
Small on purpose: everything runs ~50x slower under valgrind."""
import os
import sys
import threading

import numpy as np

import pyautodiff as ad


_DEVNULL = os.open(os.devnull, os.O_WRONLY)


def defined(t):
    """Hand the tensor's bytes to a system call. Valgrind checks every byte a syscall reads, so
    a value our kernels left uninitialised is reported here, in a plain write(), and not deep in
    the interpreter where the suppressions for CPython's own noise would hide it."""
    os.write(_DEVNULL, np.ascontiguousarray(t.numpy()).tobytes())
    return t


def check(cond, what):
    if not cond:
        sys.exit(f"valgrind_smoke: {what}")


def close(a, b, what, tol=1e-6):
    check(np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=tol, atol=tol), what)


def tour(dtype):
    rng = np.random.default_rng(0)
    av = rng.uniform(0.5, 2.0, size=(3, 4)).astype(dtype)
    bv = rng.uniform(0.5, 2.0, size=(4,)).astype(dtype)
    a = ad.tensor(av, requires_grad=True)
    b = ad.tensor(bv, requires_grad=True)
    terms = [ad.negative(a), ad.exp(a), ad.log(a), ad.sqrt(a), ad.abs(a - 1.0), ad.sin(a),
             ad.cos(a), ad.tanh(a), ad.sigmoid(a), ad.relu(a - 1.0),
             a + b, a - b, a * b, a / b, a ** b, ad.maximum(a, b), ad.minimum(a, b),
             a + 2.0, a * 3.0, 1.0 - a, a / 2.0, 2.0 / a, a ** 2.0, a ** 0.5, 2.0 ** a,
             ad.broadcast_to(b, (3, 4)), ad.reshape(a, (4, 3)).T, ad.transpose(a),
             ad.astype(a, np.float64 if dtype == np.float32 else np.float32)]
    total = None
    for t in terms:
        defined(t)
        s = ad.sum(t)
        total = s if total is None else total + ad.astype(s, total.dtype)
    total = (total + ad.mean(a, axis=0).sum() + ad.max(a, axis=1).sum() + ad.min(a, axis=(0, 1))
             + ad.sum(a, axis=-1, keepdims=True).sum())
    m = ad.matmul(a, ad.reshape(b, (4, 1)))
    batched = ad.matmul(ad.broadcast_to(a, (2, 3, 4)), ad.transpose(ad.broadcast_to(a, (2, 3, 4)), (0, 2, 1)))
    total = total + ad.sum(m) + ad.sum(batched) + ad.sum(ad.matmul(b, b))
    for t in (m, batched, total):
        defined(t)
    total.backward(retain_graph=True)
    defined(a.grad)
    defined(b.grad)
    g1 = a.grad.numpy().copy()
    total.backward()
    close(a.grad.numpy(), 2 * g1, "retain_graph accumulates")
    check(a.grad.dtype == dtype and b.grad.shape == (4,), "grad dtype and shape")
    # the same sum of products by hand for one term: d/da sum(a*b) = b
    a.grad = None
    ad.sum(a * b).backward()
    close(a.grad.numpy(), np.broadcast_to(bv, (3, 4)), "multiply gradient")


def errors():
    for fn in (lambda: ad.ones((2, 3)) + ad.ones((4,)),
               lambda: ad.ones((2, 3)) @ ad.ones((2, 3)),
               lambda: ad.ones((2, 3)).sum(axis=5),
               lambda: ad.ones((2, 3)).reshape(5),
               lambda: ad.zeros((10**6, 10**6)),
               lambda: ad.zeros((2**40, 2**30)),
               lambda: ad.tensor([[1, 2], [3]]),
               lambda: ad.tensor(["a"]),
               lambda: (ad.ones(3, requires_grad=True) * 2.0).backward()):
        try:
            fn()
        except (ValueError, TypeError, MemoryError, RuntimeError):
            pass
        else:
            sys.exit("valgrind_smoke: an invalid call did not raise")
    x = ad.tensor([1.0], requires_grad=True)
    y = (x * 2.0).sum()
    y.backward()
    try:
        y.backward()
    except RuntimeError:
        pass
    defined(x.grad)
    e = ad.zeros((0, 3), requires_grad=True)
    e.sum().backward()
    check(e.grad.shape == (0, 3), "empty grad")
    z = ad.zeros((0, 2**40, 2**40), requires_grad=True)
    (z * z).sum().backward()


def threads():
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("t", ad.tensor([1.0, 2.0], requires_grad=True)))
    t.start()
    t.join()
    try:
        box["t"] * 2.0
    except RuntimeError:
        pass
    check(box["t"].numpy().tolist() == [1.0, 2.0], "foreign tensor readable")
    del box["t"]


def anomaly():
    with ad.detect_anomaly():
        try:
            ad.log(ad.tensor([-1.0]))
        except FloatingPointError:
            pass
        a = ad.tensor([1.0], requires_grad=True)
        b = ad.tensor([0.0], requires_grad=True)
        try:
            ad.log(a * b).sum().backward()
        except FloatingPointError:
            pass


def sweeps(dtype):
    """jacfwd, jacrev and hessian through every op with a second-order term."""
    x = np.linspace(0.5, 2.0, 4).astype(dtype)

    def f(v):
        smooth = (ad.exp(v) + ad.log(v) + ad.sqrt(v) + ad.sin(v) + ad.cos(v) + ad.tanh(v) + ad.sigmoid(v)
                  + v * v + v / (v + 1.0) + v ** v + 2.0 / v + v ** 3.0 + 2.0 ** v)
        return (smooth.sum() + ad.logsumexp(v) + (ad.softmax(v) * v).sum() + (ad.log_softmax(v) * v).sum()
                + ad.matmul(v, ad.reshape(v, (4, 1))).sum())

    H = defined(ad.hessian(f)(x))
    close(H.numpy(), H.numpy().T, "Hessian symmetric", tol=1e-4)
    _, (hv,) = ad.hvp(f, (x,), (np.ones(4, dtype),))
    close(defined(hv).numpy(), H.numpy().sum(axis=1), "hvp is the Hessian times a vector", tol=1e-4)
    close(defined(ad.jacfwd(ad.tanh)(x)).numpy(), defined(ad.jacrev(ad.tanh)(x)).numpy(), "jacfwd == jacrev")


def main():
    before = ad.tape_stats()
    for dtype in (np.float64, np.float32):
        tour(dtype)
        sweeps(dtype)
    errors()
    threads()
    anomaly()
    with ad.no_grad():
        check(not (ad.ones(2, requires_grad=True) * 2.0).requires_grad, "no_grad")
    x = ad.tensor(0.5, requires_grad=True)
    y = x
    for _ in range(2000):
        y = ad.tanh(y) + 0.1
    y.backward()
    defined(x.grad)
    del x, y
    after = ad.tape_stats()
    check(after["live_nodes"] == before["live_nodes"] and after["live_bytes"] == before["live_bytes"],
          f"live counters did not return: {before} -> {after}")
    print("valgrind_smoke: ok")


if __name__ == "__main__":
    main()
