"""Record once, replay in C (issue 14): ``ad.record`` against eager pyautodiff in one run.

``python -m benchmarks.record_replay`` (about a minute; ``--quick``: seconds). Interleaved rounds,
medians; every replay's gradients are checked bit for bit against eager's before timing.

- scalar_chain (10^4 scalar ops, the workload of benchmarks/workloads/scalar_chain.py): ns per op,
  forward + backward, of the replay (``tf.value_and_grad``, and the C plan alone through
  ``ad_plan_run``, without the Python call around it) against eager pyautodiff (the workload's
  own cell: tensor ops then backward) and ``ad.value_and_grad``, and against the same chain
  hand-written in C with no AD (compiled with ``cc`` when there is one): the floor libm's scalar
  tanh, exp and log set. Target: <= 10 ns per op replayed.
  Trace time (``ad.record``) against one eager ``ad.value_and_grad`` call. Target: <= 2x.
- micrograd_mlp (the workload's 2-16-16-1 MLP on 100 points, ~65,000 scalar ops): one step
  (forward + gradient) replayed against eager pyautodiff and, when ``torch`` imports, PyTorch
  eager (the workload's cells). Target: >= 50x faster than PyTorch eager.

- big_elementwise (10^6 float64, the workload's sum(tanh(x*w + b) * exp(-x*x)) with 0-d w and b, and
  a second shape, mean(square(tanh(x) - y) + 0.1 * abs(x)) over two vectors): forward + gradient
  replayed fused (csrc/fusion.c) and unfused (``fuse=False``), the C plan alone (``ad_plan_run``),
  against hand-written NumPy, eager ``ad.value_and_grad`` and the physical limit: the same
  expression and its gradient hand-written as one C loop (read the inputs once, write the
  gradients once; libmvec's tanh and exp, compiled with ``cc -O3 -march=native`` when there is a
  compiler). Targets: the fused plan within 2x of the C loop, >= 3x faster than NumPy. NumPy's
  time depends on glibc's heap (benchmarks/allocator_effect.py): the state is printed.

PyTorch is not a dependency: to include it, name the site-packages of an environment that has it
with ``--peers-site DIR`` (appended to sys.path, so this environment's NumPy and pyautodiff come
first; only ``import torch`` is taken from there). Results go to
``benchmarks/results/record_replay.json``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _median_time(fn, calls):
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _interleaved(cells, rounds, calls):
    """{name: median over rounds of each round's median call time}, the cells taking turns."""
    times = {name: [] for name in cells}
    for _ in range(rounds):
        for name, fn in cells.items():
            times[name].append(_median_time(fn, calls))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _same_bits(a, b):
    import numpy as np
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()


def scalar_chain(ops, rounds, calls):
    import numpy as np
    import pyautodiff as ad
    from pyautodiff._capi import ffi, lib
    from benchmarks.workloads import scalar_chain as sc

    groups = ops // 5

    def chain(a, b):
        v = a
        for _ in range(groups):
            v = ad.log(ad.exp(ad.tanh((v + a) * b)))
        return v

    eager_vg = ad.value_and_grad(chain, argnums=(0, 1))
    eager_vg(0.5, 0.9)                          # warm the pool once, as the replay's first call did
    trace_s, eager_s = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        tf = ad.record(chain, 0.5, 0.9, argnums=(0, 1))
        trace_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        eager_vg(0.5, 0.9)
        eager_s.append(time.perf_counter() - t0)
    v1, g1 = tf.value_and_grad(0.5, 0.9)
    v0, g0 = eager_vg(0.5, 0.9)
    assert _same_bits(v1.numpy(), v0.numpy()) and all(_same_bits(a.numpy(), b.numpy()) for a, b in zip(g1, g0))

    # the plan alone: one ad_plan_run with buffers made once
    plan = next(iter(tf._plans.values())).plan
    a, b, out = np.array(0.5), np.array(0.9), np.empty(())
    ga, gb = np.empty(()), np.empty(())
    keep = [ffi.from_buffer(x) for x in (a, b, out, ga, gb)]
    inputs = ffi.new("void *[]", keep[:2])
    grads = ffi.new("void *[]", keep[3:])

    def plan_only():
        lib.ad_plan_run(plan, inputs, keep[2], ffi.NULL, grads)

    plan_only()
    assert _same_bits(ga, g0[0].numpy()) and _same_bits(gb, g0[1].numpy())
    workload_cell = sc.build_pyautodiff(sc.make_data({"ops": ops}), {"ops": ops})
    cells = {
        "replay: tf.value_and_grad": lambda: tf.value_and_grad(0.5, 0.9),
        "replay: the C plan alone (ad_plan_run)": plan_only,
        "replay: forward only, tf(a, b)": lambda: tf(0.5, 0.9),
        "eager: ops + backward (the workload's cell)": workload_cell.step,
        "eager: ad.value_and_grad": lambda: eager_vg(0.5, 0.9),
    }
    t = _interleaved(cells, rounds, calls)
    floor = c_floor_s(ops)
    if floor is not None:
        t["hand-written C, no AD (best of 200; the libm floor)"] = floor
    rows = [{"what": k, "seconds": v, "ns_per_op": v / ops * 1e9} for k, v in t.items()]
    return {"ops": ops, "rows": rows, "trace_s": statistics.median(trace_s),
            "eager_call_s": statistics.median(eager_s),
            "trace_over_eager": statistics.median(trace_s) / statistics.median(eager_s)}


# The same chain hand-written in C with no AD at all (values saved, the reverse loop written out):
# the floor libm's scalar tanh, exp and log set on this machine.
_FLOOR_C = r"""
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
    int groups = atoi(argv[1]);
    double *s = malloc(sizeof(double) * 3 * groups), best = 1e30;
    volatile double a0 = 0.5, b0 = 0.9, sink;
    for (int rep = 0; rep < 200; rep++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        double a = a0, b = b0, v = a, ga = 0, gb = 0, gv = 1;
        for (int i = 0; i < groups; i++) {
            double u = v + a, m = u * b, t = tanh(m), e = exp(t);
            v = log(e);
            s[3 * i] = u; s[3 * i + 1] = t; s[3 * i + 2] = e;
        }
        for (int i = groups - 1; i >= 0; i--) {
            double u = s[3 * i], t = s[3 * i + 1], e = s[3 * i + 2];
            double gm = gv / e * e * (1 - t * t), gu = gm * b;
            gb += gm * u; ga += gu; gv = gu;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        sink = v + ga + gb;
        double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
        if (ns < best) best = ns;
    }
    printf("%.1f\n", best);
    return 0;
}
"""


def _run_c(source, flags, argv):
    """stdout of the C program source compiled with cc and flags, run with argv; None without a
    compiler (or a library the flags name)."""
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "prog.c"), os.path.join(d, "prog")
        with open(src, "w") as f:
            f.write(source)
        cc = os.environ.get("CC", "cc").split()
        try:
            subprocess.run(cc + ["-O3", "-std=c11", "-fno-math-errno", src, "-o", exe] + flags, check=True,
                           capture_output=True)
            return subprocess.run([exe] + [str(a) for a in argv], check=True, capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None


def c_floor_s(ops):
    """Seconds of the hand-written C chain (best of 200), or None without a C compiler."""
    out = _run_c(_FLOOR_C, ["-lm"], [ops // 5])
    return None if out is None else float(out) * 1e-9


# big_elementwise's expressions hand-written as one C loop each, forward and gradient (value and
# gradient as the replay returns them): the physical limit of a fused pass on this machine.
_LIMIT_C = r"""
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#pragma omp declare simd notinbranch
extern double tanh(double);
#pragma omp declare simd notinbranch
extern double exp(double);
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    int which = atoi(argv[2]), reps = atoi(argv[3]);
    double *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *gx = malloc(n * sizeof *gx),
           *gy = malloc(n * sizeof *gy), *ns = malloc(reps * sizeof *ns);
    unsigned long long s = 4;
    for (long i = 0; i < n; i++) {   /* uniform(-2, 2), as good as normal for the arithmetic */
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (double)(s >> 11) / 9007199254740992.0 * 4 - 2;
        y[i] = x[i] * 0.5;
    }
    volatile double sink;
    for (int rep = 0; rep < reps; rep++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        double loss = 0, gw = 0, gb = 0;
        const double w = 0.7, b = -0.2;
        if (which == 0) {
#pragma omp simd reduction(+:loss, gw, gb)
            for (long i = 0; i < n; i++) {
                double xi = x[i], t = tanh(xi * w + b), e = exp(-xi * xi);
                loss += t * e;
                double gu = e * (1 - t * t);
                gx[i] = gu * w - 2 * xi * t * e;
                gw += gu * xi;
                gb += gu;
            }
        } else {
            const double k = 1.0 / n;
#pragma omp simd reduction(+:loss)
            for (long i = 0; i < n; i++) {
                double xi = x[i], t = tanh(xi), d = t - y[i];
                loss += d * d + 0.1 * fabs(xi);
                gx[i] = (2 * d * (1 - t * t) + (xi > 0 ? 0.1 : xi < 0 ? -0.1 : 0)) * k;
                gy[i] = -2 * d * k;
            }
            loss *= k;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        sink = loss + gw + gb + gx[n / 2] + gy[n / 3];
        ns[rep] = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    }
    qsort(ns, reps, sizeof *ns, cmp);
    printf("%.1f\n", ns[reps / 2]);
    return 0;
}
"""


def c_limit_s(n, which, reps=31):
    """Median seconds of the hand-written fused C loop for expression `which`, or None without a
    C compiler (or without libmvec)."""
    out = _run_c(_LIMIT_C, ["-march=native", "-fopenmp-simd", "-lmvec", "-lm"], [n, which, reps])
    return None if out is None else float(out) * 1e-9


def glibc_heap_state():
    """What decides NumPy's temporaries' cost (benchmarks/allocator_effect.py)."""
    env = {k: os.environ[k] for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ}
    if env:
        return "glibc heap: " + ", ".join(f"{k}={v}" for k, v in env.items()) + " (large temporaries reuse heap memory)"
    return ("glibc heap: default settings, process warmed (the dynamic mmap threshold has risen past 8 MB "
            "after the first frees, so NumPy's temporaries reuse heap memory after the first calls)")


def big_elementwise(n, rounds, calls):
    import numpy as np
    import pyautodiff as ad
    from pyautodiff._capi import ffi, lib

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=n), rng.uniform(-1, 1, size=n)
    w, b = np.asarray(0.7), np.asarray(-0.2)

    def expr0(x, w, b):
        return ad.sum(ad.tanh(x * w + b) * ad.exp(-x * x))

    def numpy0():   # benchmarks/workloads/big_elementwise.py's hand-written step
        t = np.tanh(x * 0.7 + -0.2)
        e = np.exp(-x * x)
        loss = np.sum(t * e)
        grad_u = e * (1.0 - t * t)
        return loss, [grad_u * 0.7 - 2.0 * x * t * e, np.sum(grad_u * x), np.sum(grad_u)]

    def expr1(x, y):
        return ad.mean(ad.square(ad.tanh(x) - y) + 0.1 * ad.abs(x))

    def numpy1():
        t = np.tanh(x)
        d = t - y
        loss = np.mean(d * d + 0.1 * np.abs(x))
        k = 1.0 / x.size
        return loss, [(2 * d * (1 - t * t) + 0.1 * np.sign(x)) * k, -2 * d * k]

    out = []
    for which, (f, args, hand, text) in enumerate([
            (expr0, (x, w, b), numpy0, "sum(tanh(x*w + b) * exp(-x*x)), 0-d w and b"),
            (expr1, (x, y), numpy1, "mean(square(tanh(x) - y) + 0.1 * abs(x))")]):
        nums = tuple(range(len(args)))
        fused = ad.record(f, *args, argnums=nums)
        plain = ad.record(f, *args, argnums=nums, fuse=False)
        eager = ad.value_and_grad(f, argnums=nums)
        v0, g0 = eager(*args)
        for tf in (fused, plain):
            v1, g1 = tf.value_and_grad(*args)
            assert _same_bits(v1.numpy(), v0.numpy()) and all(_same_bits(p.numpy(), q.numpy()) for p, q in zip(g1, g0))
        stats = fused.plan_stats()

        def plan_cell(tf):
            plan = next(iter(tf._plans.values())).plan
            res, grads = np.empty(()), [np.empty_like(a) for a in args]
            keep = [ffi.from_buffer(a) for a in (*args, res, *grads)]
            inputs, gptr = ffi.new("void *[]", keep[:len(args)]), ffi.new("void *[]", keep[len(args) + 1:])
            return lambda: lib.ad_plan_run(plan, inputs, keep[len(args)], ffi.NULL, gptr)

        cells = {"replay fused: the C plan alone (ad_plan_run)": plan_cell(fused),
                 "replay unfused: the C plan alone": plan_cell(plain),
                 "replay fused: tf.value_and_grad": lambda: fused.value_and_grad(*args),
                 "replay unfused: tf.value_and_grad": lambda: plain.value_and_grad(*args),
                 "hand-written NumPy": hand,
                 "eager: ad.value_and_grad": lambda: eager(*args)}
        t = _interleaved(cells, rounds, calls)
        limit = c_limit_s(n, which)
        if limit is not None:
            t["one hand-written C loop (the physical limit)"] = limit
        fused_s = t["replay fused: the C plan alone (ad_plan_run)"]
        rows = [{"what": k, "seconds": v, "over_fused_plan": v / fused_s} for k, v in t.items()]
        out.append({"expression": text, "n": n, "fused_regions": stats["fused_regions"],
                    "fused_ops": stats["fused_ops"], "tile": stats["tile"], "rows": rows,
                    "fused_over_limit": fused_s / limit if limit else None,
                    "numpy_over_fused": t["hand-written NumPy"] / fused_s})
    return out


def micrograd_mlp(points, rounds, calls):
    import numpy as np
    import pyautodiff as ad
    from benchmarks import peers
    from benchmarks.workloads import micrograd_mlp as mm

    size = {"points": points, "layers": [2, 16, 16, 1]}
    data = mm.make_data(size)
    shape = data["layers"]

    def loss(params):
        it = iter(params)
        return mm.scalar_loss(mm.map_params(shape, lambda _: next(it)), data["X"], data["y"], relu=ad.relu)

    params = [np.asarray(p) for p in mm.flatten(shape)]
    t0 = time.perf_counter()
    tf = ad.record(loss, params)
    trace = time.perf_counter() - t0
    g1, g0 = tf.grad(params), ad.grad(loss)(params)
    assert all(_same_bits(a.numpy(), b.numpy()) for a, b in zip(g1, g0))
    cells = {"replay: tf.grad": lambda: tf.grad(params),
             "eager: ops + backward (the workload's cell)": mm.build_pyautodiff(data, size).step}
    try:
        peers.load("torch")
        cells["PyTorch eager (the workload's cell)"] = mm.build_torch(data, size).step
    except peers.Unavailable as exc:
        print(f"micrograd_mlp: PyTorch left out ({exc})", file=sys.stderr)
    t = _interleaved(cells, rounds, calls)
    replay = t["replay: tf.grad"]
    rows = [{"what": k, "seconds": v, "replay_speedup": v / replay} for k, v in t.items()]
    return {"points": points, "ops": mm.n_ops(size), "trace_s": trace, "rows": rows}


def print_big(big, rounds):
    for e in big:
        print(f"\nbig_elementwise, {e['expression']}, n = {e['n']:,}, forward + gradient (median of {rounds} "
              f"rounds; {e['fused_ops']} ops fused in {e['fused_regions']} region(s), tiles of {e['tile']}):")
        for r in e["rows"]:
            print(f"  {r['what']:<46} {r['seconds'] * 1e3:9.3f} ms  {r['over_fused_plan']:6.2f}x the fused plan")
        limit = f"{e['fused_over_limit']:.2f}x the C loop (target <= 2x)" if e["fused_over_limit"] else "no C loop"
        print(f"  fused plan: {limit}; NumPy / fused plan {e['numpy_over_fused']:.2f}x (target >= 3x)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--peers-site", metavar="DIR", help="site-packages to import PyTorch from")
    parser.add_argument("--only-big", action="store_true", help="big_elementwise only (no JSON written)")
    args = parser.parse_args(argv)
    if args.peers_site:
        sys.path.append(args.peers_site)
    rounds, calls = (3, 3) if args.quick else (5, 7)
    load = os.getloadavg()
    big = big_elementwise(100_000 if args.quick else 1_000_000, rounds, calls)
    if args.only_big:
        load = os.getloadavg()
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)")
        print(glibc_heap_state())
        print_big(big, rounds)
        return
    chain = scalar_chain(1_000 if args.quick else 10_000, rounds, calls)
    mlp = micrograd_mlp(4 if args.quick else 100, rounds, 1 if args.quick else 3)
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)")
    print(glibc_heap_state())
    print_big(big, rounds)
    print(f"\nscalar_chain, {chain['ops']:,} scalar ops, forward + backward (median of {rounds} rounds):")
    for r in chain["rows"]:
        print(f"  {r['what']:<46} {r['seconds'] * 1e3:9.3f} ms  {r['ns_per_op']:8.1f} ns/op")
    print(f"  trace (ad.record) {chain['trace_s'] * 1e3:.1f} ms, one eager ad.value_and_grad "
          f"{chain['eager_call_s'] * 1e3:.1f} ms: {chain['trace_over_eager']:.2f}x (target <= 2x)")
    print(f"\nmicrograd_mlp, {mlp['points']} points, {mlp['ops']:,} scalar ops per step "
          f"(trace {mlp['trace_s'] * 1e3:.0f} ms):")
    for r in mlp["rows"]:
        print(f"  {r['what']:<46} {r['seconds'] * 1e3:9.3f} ms  {r['replay_speedup']:8.1f}x the replay's time")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "record_replay.json")
    if not args.quick:
        with open(path, "w") as f:
            json.dump({"load": load, "scalar_chain": chain, "micrograd_mlp": mlp, "big_elementwise": big}, f, indent=1)


if __name__ == "__main__":
    main()
