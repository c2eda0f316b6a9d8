"""Out of memory at every allocation of the Python API's sweeps, the SQLite way.

    python tools/oom_sweep.py                # builds a copy of the package whose core has the
                                             # fault injector (csrc/fault.c; -O0, about 10 s) in
                                             # build/oom, then sweeps with it
    python tools/oom_sweep.py --installed    # sweeps with the importable pyautodiff, which must
                                             # have been built with PYAUTODIFF_FAULT_INJECTION=1

For each call below (backward, backward(create_graph=True), grad, value_and_grad, vjp, jvp, hvp,
hessian, jacrev, jacfwd, autograd.grad) and n = 1, 2, ...: the n-th allocation the core makes
during the call fails, until the call no longer reaches it. After every failure the call must
have raised MemoryError with a message, every parameter's .grad must be bit for bit what it was,
the live node count what it was, and the same call run again (memory freed) must give the result
of a run that never failed; every tensor the call made is freed. csrc/tests/test_oom.c does the
same for the C sweeps (tools/ctest.sh); tests/test_transactional.py runs this script.
Exit status 0 when every check passed; the failures are printed.
"""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(dest):
    """A copy of the package whose extension has the fault injector, in dest (rebuilt every run:
    the core may have changed)."""
    tree = os.path.join(dest, "tree")
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "csrc"), os.path.join(tree, "csrc"))
    shutil.copytree(os.path.join(ROOT, "pyautodiff"), os.path.join(tree, "pyautodiff"),
                    ignore=shutil.ignore_patterns("*.so", "*.o", "__pycache__"))
    env = dict(os.environ, PYAUTODIFF_FAULT_INJECTION="1", PYAUTODIFF_DEBUG="1")
    env.pop("LD_PRELOAD", None)   # under tools/sanitize.sh: the compiler needs no ASan runtime
    # _build.py loaded by its path (importing the package would need the module being built);
    # cffi puts the module at pyautodiff/_core.*.so under tmpdir, the tree itself here
    code = ("import importlib.util as u; s = u.spec_from_file_location('_build', 'pyautodiff/_build.py'); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); m.ffibuilder.compile(tmpdir='.')")
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"oom_sweep: building the fault-injection module failed:\n{r.stdout[-5000:]}{r.stderr[-5000:]}")
    return tree


def main(argv):
    if "--run" not in argv:
        env = dict(os.environ)
        if "--installed" not in argv:
            env["PYTHONPATH"] = build(os.path.join(ROOT, "build", "oom")) + os.pathsep + env.get("PYTHONPATH", "")
        # a fresh interpreter that imports the fault-injection build, from a directory where the
        # source tree's own package is not on the path
        return subprocess.run([sys.executable, os.path.abspath(__file__), "--run"], env=env, cwd="/").returncode
    return sweep_all()


def sweep_all():
    import gc

    import numpy as np

    import pyautodiff as ad
    from pyautodiff._capi import lib

    if lib.ad_fault_arm(0) != 0:
        print("oom_sweep: this pyautodiff was built without PYAUTODIFF_FAULT_INJECTION=1")
        return 2

    rng = np.random.default_rng(0)
    W0, b0, x = rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((5, 3))
    v0 = np.linspace(-1.0, 1.0, 4)

    def f(v):
        return (ad.tanh(v) ** 2 * ad.sin(v)).sum()        # v used twice

    def make():
        """Parameters W (no grad yet) and b (a grad the caller also holds), and a loss of them."""
        W = ad.tensor(W0, requires_grad=True)
        b = ad.tensor(b0, requires_grad=True)
        b.grad = np.ones(4)
        held = b.grad
        loss = (ad.tanh(x @ W + b) ** 2).mean() + ad.logsumexp(x @ W, axis=1).sum()
        return {"W": W, "b": b, "held": held, "loss": loss}

    def backward(s):
        s["loss"].backward()

    def backward_retain(s):
        s["loss"].backward(retain_graph=True)

    def backward_create(s):
        s["loss"].backward(create_graph=True)
        return s["b"].grad

    cases = {
        "backward": backward,
        "backward(retain_graph=True)": backward_retain,
        "backward(create_graph=True)": backward_create,
        "grad": lambda s: ad.grad(f)(v0),
        "value_and_grad": lambda s: ad.value_and_grad(f)(v0),
        "vjp": lambda s: ad.vjp(ad.tanh, v0)[1](np.ones(4)),
        "jvp": lambda s: ad.jvp(f, (v0,), (np.ones(4),)),
        "hvp": lambda s: ad.hvp(f, (v0,), (np.ones(4),)),
        "hessian": lambda s: ad.hessian(f)(v0),
        "jacrev": lambda s: ad.jacrev(ad.softmax)(v0),
        "jacfwd": lambda s: ad.jacfwd(ad.softmax)(v0),
        "autograd.grad": lambda s: ad.autograd.grad(s["loss"], [s["W"], s["b"]], create_graph=True),
        "grad of grad": lambda s: ad.grad(lambda v: ad.grad(f)(v).sum())(v0),
    }

    def arrays(r):
        if r is None:
            return []
        if isinstance(r, ad.Tensor):
            return [r.numpy()]
        if isinstance(r, (tuple, list)):
            return [a for item in r for a in arrays(item)]
        return [np.asarray(r)]

    def state(s):
        grads = [None if s[k].grad is None else s[k].grad.numpy() for k in ("W", "b")]
        return grads, ad.tape_stats()["live_nodes"]

    def same(a, b):
        return len(a) == len(b) and all((p is None and q is None) or (p is not None and q is not None and
                                        p.shape == q.shape and np.array_equal(p, q, equal_nan=True))
                                        for p, q in zip(a, b))

    problems = []
    base = ad.tape_stats()["live_nodes"]
    for name, call in cases.items():
        s = make()
        want = arrays(call(s))
        want_grads, _ = state(s)
        del s
        gc.collect()
        failures = 0
        for n in range(1, 100_000):
            s = make()
            before_grads, before_live = state(s)
            lib.ad_fault_arm(n)
            try:
                result, message = call(s), None
            except MemoryError as e:
                result, message = None, str(e) or "(no message)"
            finally:
                made = lib.ad_fault_count()
                lib.ad_fault_arm(0)
            gc.collect()
            if message is not None:
                failures += 1
                grads, live = state(s)
                if not same(grads, before_grads) or live != before_live:
                    problems.append(f"{name}, allocation {n}: the state changed ({message}; live nodes "
                                    f"{before_live} -> {live})")
                result = call(s)          # memory is back: the same call succeeds
            if not same(arrays(result), want) or not same(state(s)[0], want_grads):
                problems.append(f"{name}, allocation {n}: wrong result" +
                                (" after the retry" if message is not None else ""))
            del s, result
            gc.collect()
            if ad.tape_stats()["live_nodes"] != base:
                problems.append(f"{name}, allocation {n}: {ad.tape_stats()['live_nodes'] - base} nodes left")
                base = ad.tape_stats()["live_nodes"]
            if made < n:
                break
        if failures == 0:
            problems.append(f"{name}: no allocation failed (is the fault injector there?)")
        print(f"{name}: {failures} allocations failed in turn")
    for p in problems[:50]:
        print("FAIL", p)
    print(f"oom_sweep: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
