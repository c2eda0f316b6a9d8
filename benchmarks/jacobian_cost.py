"""What a Jacobian costs: one batched sweep against a Python-level pass per row or column, and the
seed's cost claim for forward and reverse mode. A standalone script, not a test:

    python benchmarks/jacobian_cost.py [--repeats N] [--quick]

Part 1 (the issue's performance target). A composite function R^100 -> R^100 (matvecs, tanh,
a softmax built from exp/max/sum/div, elementwise products). Its 100 x 100 Jacobian is built four
ways, interleaved, each timed as the median of the repeats:
  jacfwd          one recording of f, one forward sweep of width 100 (ad_jvp, k = 100)
  jacrev          one recording of f, one backward sweep of width 100 (ad_vjp, k = 100)
  100 x ad.jvp    a Python-level jvp per input direction (each call records f, as jvp must)
  100 x vjp_fn    one ad.vjp recording, then a Python-level vjp_fn call per output row
The target is jacfwd and jacrev each at least 3x faster than the loop of the same mode.

Part 2 (the seed's claim). For f: R^n -> R reverse mode gets the gradient in one sweep, while
forward mode needs n tangent directions; for f: R -> R^m it is the other way round. Both are
timed for growing n and m: the mode that needs one direction stays flat (linear in the size of
the graph), the one that needs n (or m) directions grows with it, whether the directions share
one batched sweep or take a Python-level call each.

Threads: BLAS is pinned to one thread (set before NumPy loads) so the numbers compare like for like.
"""
import argparse
import os
import platform
import statistics
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyautodiff as ad  # noqa: E402


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns, repeats):
    """Median seconds of each callable, run in turns so drifts in machine speed hit all alike."""
    for fn in fns.values():
        fn()                                   # warm-up: pools, caches, first-call costs
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


# ---------------------------------------------------------------------------------------------
# part 1: the 100 -> 100 composite
# ---------------------------------------------------------------------------------------------
def composite(n=100, seed=0):
    rng = np.random.default_rng(seed)
    W1 = ad.tensor(rng.standard_normal((n, n)) / np.sqrt(n))
    W2 = ad.tensor(rng.standard_normal((n, n)) / np.sqrt(n))
    b1 = ad.tensor(rng.standard_normal(n))

    def f(x):
        h = ad.tanh(W1 @ x + b1)
        z = W2 @ h
        e = ad.exp(z - z.max())
        return e / e.sum() + ad.sin(x) * h

    return f, rng.standard_normal(n)


def part1(repeats):
    n = 100
    f, x = composite(n)
    eye = np.eye(n)

    def loop_jvp():
        return np.stack([np.asarray(ad.jvp(f, (x,), (eye[j],))[1]) for j in range(n)], axis=-1)

    def loop_vjp():
        _, vjp_fn = ad.vjp(f, x)
        return np.stack([np.asarray(vjp_fn(eye[i])[0]) for i in range(n)])

    jf, jr = np.asarray(ad.jacfwd(f)(x)), np.asarray(ad.jacrev(f)(x))
    jl_f, jl_r = loop_jvp(), loop_vjp()
    err = max(np.abs(jf - jr).max(), np.abs(jf - jl_f).max(), np.abs(jr - jl_r).max())
    assert err < 1e-12, f"the four Jacobians disagree by {err}"

    t = interleaved({
        "jacfwd": lambda: ad.jacfwd(f)(x),
        "jacrev": lambda: ad.jacrev(f)(x),
        "loop_jvp": loop_jvp,
        "loop_vjp": loop_vjp,
    }, repeats)
    print(f"Part 1: Jacobian of a composite R^{n} -> R^{n} (matvec, tanh, softmax from exp/max/sum/div, "
          f"sin), float64, median of {repeats}")
    print(f"  jacfwd  (one forward sweep, 100 directions)   {t['jacfwd'] * 1e3:8.3f} ms")
    print(f"  100 x ad.jvp (Python loop, records f each)     {t['loop_jvp'] * 1e3:8.3f} ms"
          f"   jacfwd is {t['loop_jvp'] / t['jacfwd']:5.1f}x faster")
    print(f"  jacrev  (one backward sweep, 100 cotangents)  {t['jacrev'] * 1e3:8.3f} ms")
    print(f"  100 x vjp_fn (one recording, Python loop)      {t['loop_vjp'] * 1e3:8.3f} ms"
          f"   jacrev is {t['loop_vjp'] / t['jacrev']:5.1f}x faster")
    print(f"  (all four Jacobians agree to {err:.1e}; target: each ratio >= 3)")
    return t


# ---------------------------------------------------------------------------------------------
# part 2: the seed's cost claim
# ---------------------------------------------------------------------------------------------
def scalar_out(x):
    # R^n -> R: O(n) work per evaluation
    return (ad.sin(x) * ad.exp(-x * x) + ad.tanh(x)).sum()


def make_vector_out(m):
    c = ad.tensor(np.linspace(-2.0, 2.0, m))

    def vector_out(x):
        # R -> R^m (x has shape (1,)): O(m) work per evaluation
        y = x * c
        return ad.sin(y) * ad.exp(-y * y) + ad.tanh(y)

    return vector_out


def part2(repeats, sizes, loop_limit):
    print()
    print("Part 2: the seed's cost claim, float64, median of", repeats)
    print("  f: R^n -> R, f(x) = sum(sin(x) exp(-x^2) + tanh(x)): the gradient")
    print(f"  {'n':>6}  {'reverse: 1 sweep':>17}  {'forward: n dirs, 1 sweep':>25}  {'forward: n x jvp':>17}"
          f"  {'fwd/rev':>8}")
    rows = []
    rng = np.random.default_rng(1)
    for n in sizes:
        x = rng.standard_normal(n)
        eye = None
        fns = {"rev": lambda: ad.grad(scalar_out)(x), "fwd": lambda: ad.jacfwd(scalar_out)(x)}
        if n <= loop_limit:
            eye = np.eye(n)
            fns["loop"] = lambda: [ad.jvp(scalar_out, (x,), (eye[j],)) for j in range(n)]
        g = np.asarray(ad.grad(scalar_out)(x))
        assert np.allclose(np.asarray(ad.jacfwd(scalar_out)(x)), g, rtol=1e-12, atol=1e-12)
        t = interleaved(fns, repeats)
        loop = f"{t['loop'] * 1e3:14.3f} ms" if "loop" in t else f"{'(skipped)':>17}"
        print(f"  {n:>6}  {t['rev'] * 1e3:14.3f} ms  {t['fwd'] * 1e3:22.3f} ms  {loop}  {t['fwd'] / t['rev']:8.1f}")
        rows.append(("R^n->R", n, t))

    print("  f: R -> R^m, f(x) = sin(c x) exp(-(c x)^2) + tanh(c x), c in [-2, 2]^m: the Jacobian column")
    print(f"  {'m':>6}  {'forward: 1 sweep':>17}  {'reverse: m cots, 1 sweep':>25}  {'reverse: m x vjp_fn':>19}"
          f"  {'rev/fwd':>8}")
    x = np.array([0.7])
    for m in sizes:
        f = make_vector_out(m)
        fns = {"fwd": lambda: ad.jvp(f, (x,), (np.ones(1),)), "rev": lambda: ad.jacrev(f)(x)}
        if m <= loop_limit:
            eye = np.eye(m)

            def loop(f=f, eye=eye, m=m):
                _, vjp_fn = ad.vjp(f, x)
                return [vjp_fn(eye[i]) for i in range(m)]

            fns["loop"] = loop
        col = np.asarray(ad.jvp(f, (x,), (np.ones(1),))[1])
        assert np.allclose(np.asarray(ad.jacrev(f)(x))[:, 0], col, rtol=1e-12, atol=1e-12)
        t = interleaved(fns, repeats)
        loop = f"{t['loop'] * 1e3:16.3f} ms" if "loop" in t else f"{'(skipped)':>19}"
        print(f"  {m:>6}  {t['fwd'] * 1e3:14.3f} ms  {t['rev'] * 1e3:22.3f} ms  {loop}  {t['rev'] / t['fwd']:8.1f}")
        rows.append(("R->R^m", m, t))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="few repeats and small sizes (a smoke run)")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    print(f"pyautodiff {ad.__version__}, Python {platform.python_version()}, NumPy {np.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}")
    part1(repeats)
    sizes = [10, 100] if args.quick else [10, 100, 1000, 4000]
    part2(max(3, repeats // 3), sizes, loop_limit=1000)


if __name__ == "__main__":
    main()
