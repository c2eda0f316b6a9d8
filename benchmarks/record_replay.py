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
- training steps (``ad.record_step``: zero_grad, loss, backward, optimizer.step in one C call)
  against the eager loop and PyTorch eager's, on micrograd_mlp (SGD with momentum) and small_mlp
  (Adam).
- GradBench lstm, ode and det: ``ad.record`` replay against eager and JAX jit (compiled ahead in a
  child process capped at JAX_CAP_S, its compile time beside; JAX's lstm scans over time). Target:
  within 2x of JAX jit.
- a 10^6-op scalar chain (full run only, ~10 s): trace, replay, arena and plan memory per op.

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


def _rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1e3
    except OSError:
        pass
    return float("nan")


def million_ops(ops):
    """A chain of ``ops`` scalar ops (10^6 in the full run) recorded and replayed: trace time,
    replay time (median of 3 value_and_grad calls), the plan's arena and the memory the plan holds
    (resident set with the plan minus without it), and the process's peak resident set (the
    recording's eager graph and the plan both live at the end of ad.record)."""
    import gc
    import resource
    import pyautodiff as ad

    def chain(a, b):
        v = a
        for _ in range(ops // 5):
            v = ad.log(ad.exp(ad.tanh((v + a) * b)))
        return v

    t0 = time.perf_counter()
    tf = ad.record(chain, 0.5, 0.9, argnums=(0, 1))
    trace = time.perf_counter() - t0
    replay = _median_time(lambda: tf.value_and_grad(0.4, 0.8), 3)
    stats = tf.plan_stats()
    gc.collect()
    with_plan = _rss_mb()
    del tf
    gc.collect()
    plan_mb = with_plan - _rss_mb()
    return {"ops": ops, "trace_s": trace, "replay_s": replay, "arena_bytes": stats["bytes"],
            "plan_resident_mb": plan_mb, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}


JAX_CAP_S = {"quick": 120.0, "full": 150.0}   # trace + compile + timing of one eval in the child


def _gradbench_losses(quick):
    """{eval: (leaves, loss over pyautodiff)}: the workloads' own loss functions."""
    import numpy as np
    import pyautodiff as ad
    from benchmarks.workloads import det, lstm, ode

    out = {}
    d = lstm.make_data(lstm.size(quick))
    state, sequence = [ad.tensor(r) for r in d["state"]], [ad.tensor(r) for r in d["sequence"]]
    out["lstm"] = (d["leaves"], lambda main, extra: lstm.loss(ad, main, extra, state, sequence))
    d = ode.make_data(ode.size(quick))
    one, steps = ad.tensor(np.ones(1)), d["s"]
    out["ode"] = (d["leaves"], lambda x: ode.solve(ad, x, one, steps)[-1])
    d = det.make_data(det.size(quick))
    out["det"] = (d["leaves"], det.det_by_minor)
    return out


def _jax_loss(jax, name, quick):
    """(leaves, loss) as a JAX user writes it: lstm scans over time and ode loops over its RK4
    steps (unrolled, XLA takes minutes to compile them), det is the workload's own function (the
    expansion by minors has no loop to roll: unrolled, 13,699 scalar ops)."""
    from benchmarks.workloads import det, lstm, ode
    jnp = jax.numpy
    if name == "lstm":
        d = lstm.make_data(lstm.size(quick))
        sequence = jnp.asarray(d["sequence"])
        state0 = jnp.asarray(d["state"])

        def loss(main, extra):
            b = extra.shape[1]

            def step(state, xs):
                x_in, gold = xs
                x = x_in * extra[0]
                new = []
                for layer in range(0, state.shape[0], 2):
                    hidden, cell = state[layer], state[layer + 1]
                    gates = jnp.concatenate([x, hidden, x, hidden]) * main[layer] + main[layer + 1]
                    forget, ingate = jax.nn.sigmoid(gates[:b]), jax.nn.sigmoid(gates[b:2 * b])
                    outgate, change = jax.nn.sigmoid(gates[2 * b:3 * b]), jnp.tanh(gates[3 * b:])
                    cell = cell * forget + ingate * change
                    hidden = outgate * jnp.tanh(cell)
                    new += [hidden, cell]
                    x = hidden
                y = x * extra[1] + extra[2]
                return jnp.stack(new), jnp.sum(gold * (y - jnp.log(jnp.sum(jnp.exp(y)) + 2.0)))

            _, terms = jax.lax.scan(step, state0, (sequence[:-1], sequence[1:]))
            return -jnp.sum(terms) / ((sequence.shape[0] - 1) * b)
        return d["leaves"], loss
    if name == "ode":
        d = ode.make_data(ode.size(quick))
        one, steps = jnp.ones(1), d["s"]

        def solve(x):
            # ode.solve's RK4 step in a fori_loop (unrolled, 100 steps did not compile in 150 s)
            h = ode.T_FINAL / steps

            def f(y):
                return x * jnp.concatenate([one, y[:-1]])

            def rk4(_, y):
                k1 = f(y)
                k2 = f(y + h / 2 * k1)
                k3 = f(y + h / 2 * k2)
                k4 = f(y + h * k3)
                return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            return jax.lax.fori_loop(0, steps, rk4, x * 0.0)[-1]
        return d["leaves"], solve
    d = det.make_data(det.size(quick))
    return d["leaves"], det.det_by_minor


def _jax_child(name, quick, rounds, calls):
    """Run in a child process (so that a compile running away is capped): JSON on stdout."""
    import numpy as np
    from benchmarks import peers
    from benchmarks.workloads import common
    jax = peers.load("jax")
    leaves, loss = _jax_loss(jax, name, quick)
    args = [jax.numpy.asarray(v) for v in leaves]
    compiled, compile_s = common.jax_compile(jax, jax.value_and_grad(loss, argnums=tuple(range(len(args)))), *args)
    value, grads = compiled(*args)
    t = _interleaved({"jax": lambda: jax.block_until_ready(compiled(*args))}, rounds, calls)["jax"]
    print(json.dumps({"compile_s": compile_s, "seconds": t, "value": float(value),
                      "grads": [np.asarray(g).tolist() for g in grads]}))


def _jax_cell(name, quick, rounds, calls):
    """{"compile_s", "seconds", "value", "grads"} from the child, or {"error": why}."""
    cap = JAX_CAP_S["quick" if quick else "full"]
    cmd = [sys.executable, "-m", "benchmarks.record_replay", "--jax-child", name, "--rounds", str(rounds),
           "--calls", str(calls)] + (["--quick"] if quick else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=cap,
                           env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    except subprocess.TimeoutExpired:
        return {"error": f"trace + compile + timing did not finish in {cap:.0f} s"}
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": "not installed" if "not installed" in last else last}
    return json.loads(r.stdout.strip().splitlines()[-1])


def gradbench_replay(quick, rounds, calls):
    """GradBench lstm, ode and det: the gradient by ``ad.record`` replay against eager
    pyautodiff and JAX jit (compiled ahead, in a child process capped at JAX_CAP_S; the compile
    time beside). JAX is an optional peer: without it the JAX rows are left out."""
    import numpy as np
    import pyautodiff as ad

    results = {}
    for name, (leaves, loss) in _gradbench_losses(quick).items():
        nums = tuple(range(len(leaves)))
        t0 = time.perf_counter()
        tf = ad.record(loss, *leaves, argnums=nums)
        trace = time.perf_counter() - t0
        eager = ad.value_and_grad(loss, argnums=nums)
        v1, g1 = tf.value_and_grad(*leaves)
        v0, g0 = eager(*leaves)
        assert _same_bits(v1.numpy(), v0.numpy()) and all(_same_bits(a.numpy(), b.numpy()) for a, b in zip(g1, g0))
        cells = {"replay: tf.value_and_grad": lambda tf=tf, leaves=leaves: tf.value_and_grad(*leaves),
                 "eager: ad.value_and_grad": lambda eager=eager, leaves=leaves: eager(*leaves)}
        t = _interleaved(cells, rounds, calls)
        jax = _jax_cell(name, quick, rounds, calls)
        if "error" not in jax:
            # the same function in another library: equal to rounding, not bit for bit
            assert np.allclose(jax["value"], float(v0.numpy()), rtol=1e-9, atol=1e-12)
            assert all(np.allclose(np.asarray(a), b.numpy(), rtol=1e-7, atol=1e-10) for a, b in zip(jax["grads"], g0))
            t["JAX jit (compiled ahead, another process)"] = jax["seconds"]
        else:
            print(f"gradbench {name}: JAX jit left out ({jax['error']})", file=sys.stderr)
        replay = t["replay: tf.value_and_grad"]
        results[name] = {"trace_s": trace, "jax_compile_s": jax.get("compile_s"), "jax_error": jax.get("error"),
                         "ops": tf.plan_stats()["ops"],
                         "rows": [{"what": k, "seconds": v, "over_replay": v / replay} for k, v in t.items()]}
    return results


def _torch_or_none(what):
    from benchmarks import peers
    try:
        return peers.load("torch")
    except peers.Unavailable as exc:
        print(f"{what}: PyTorch left out ({exc})", file=sys.stderr)
        return None


def _eager_step(loss_fn, optimizer, batch):
    """The eager training step, the same four lines in pyautodiff and PyTorch."""
    def step():
        optimizer.zero_grad()
        loss = loss_fn(*batch)
        loss.backward()
        optimizer.step()
        return loss
    return step


def train_steps(points, rounds, calls):
    """A whole training step (zero_grad, loss, backward, optimizer.step): ``ad.record_step``
    against the eager pyautodiff loop and PyTorch eager's, on micrograd_mlp (337 scalar parameters,
    SGD with momentum) and small_mlp (784-128-64-10, batch 32, Adam; one-hot targets, so one plan
    serves every batch). Before timing, three traced steps are checked bit for bit against three
    eager ones from the same start."""
    import copy
    import numpy as np
    import pyautodiff as ad
    from benchmarks.workloads import micrograd_mlp as mm, small_mlp as sm

    torch = _torch_or_none("train_steps")
    results = {}

    # micrograd_mlp: every weight a 0-d tensor
    size = {"points": points, "layers": [2, 16, 16, 1]}
    data = mm.make_data(size)

    def scalar_model(leaf):
        layers = mm.map_params(data["layers"], leaf)
        return layers, mm.flatten(layers)

    def scalar_loss(layers, relu):
        return lambda: mm.scalar_loss(layers, data["X"], data["y"], relu=relu)

    def ad_scalar():
        layers, params = scalar_model(lambda v: ad.tensor(v, requires_grad=True))
        return scalar_loss(layers, ad.relu), params, ad.optim.SGD(params, lr=0.05, momentum=0.9)

    # small_mlp: six tensors
    sdata = sm.make_data(sm.size(False))
    X, onehot = sdata["X"], sdata["onehot"]

    def ad_tensor_mlp():
        params = [ad.tensor(p, requires_grad=True) for p in sdata["params"]]

        def loss(x, t):
            h = x
            for i in range(0, 6, 2):
                h = h @ params[i] + params[i + 1]
                if i < 4:
                    h = ad.relu(h)
            return -(t * ad.log_softmax(h, axis=1)).sum() * (1.0 / x.shape[0])
        return loss, params, ad.optim.Adam(params, lr=1e-3)

    cases = {"micrograd_mlp": (ad_scalar, ()), "small_mlp": (ad_tensor_mlp, (X, onehot))}
    for name, (make, batch) in cases.items():
        loss_e, params_e, opt_e = make()
        loss_t, params_t, opt_t = make()
        t0 = time.perf_counter()
        step = ad.record_step(loss_t, opt_t, *batch)
        trace = time.perf_counter() - t0

        eager = _eager_step(loss_e, opt_e, batch)
        for _ in range(3):
            assert _same_bits(eager().numpy(), step(*batch).numpy())
        assert all(_same_bits(p.numpy(), q.numpy()) for p, q in zip(params_e, params_t))
        cells = {"traced: ad.record_step": lambda step=step, batch=batch: step(*batch),
                 "eager pyautodiff: zero_grad, loss, backward, step": eager}
        if torch is not None:
            if name == "micrograd_mlp":
                layers, tparams = scalar_model(lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=True))
                tloss, targs = scalar_loss(layers, torch.relu), ()
                topt = torch.optim.SGD(tparams, lr=0.05, momentum=0.9)
            else:
                tparams = [torch.tensor(p, requires_grad=True) for p in sdata["params"]]

                def tloss(x, t, tp=tparams):
                    h = x
                    for i in range(0, 6, 2):
                        h = h @ tp[i] + tp[i + 1]
                        if i < 4:
                            h = torch.relu(h)
                    return -(t * torch.log_softmax(h, dim=1)).sum() / x.shape[0]
                targs = (torch.from_numpy(X), torch.from_numpy(onehot))
                topt = torch.optim.Adam(tparams, lr=1e-3)
            cells["PyTorch eager: zero_grad, loss, backward, step"] = _eager_step(tloss, topt, targs)
        t = _interleaved(cells, rounds, calls)
        traced = t["traced: ad.record_step"]
        results[name] = {"trace_s": trace, "rows": [{"what": k, "seconds": v, "traced_speedup": v / traced}
                                                     for k, v in t.items()]}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--peers-site", metavar="DIR", help="site-packages to import PyTorch from")
    parser.add_argument("--only-big", action="store_true", help="big_elementwise only (no JSON written)")
    parser.add_argument("--jax-child", metavar="EVAL", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # One BLAS and pyautodiff thread, as `python -m benchmarks` pins them (run.py), before NumPy
    # loads: on a shared 2-core machine OpenBLAS's threads fighting for busy cores made a batch-32
    # MLP step 10x slower (README, "Record once, replay"). An explicit setting is kept.
    from benchmarks.run import THREAD_VARIABLES
    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, "1")
    if args.peers_site:
        sys.path.append(args.peers_site)
    rounds, calls = (3, 3) if args.quick else (5, 7)
    if args.jax_child:
        return _jax_child(args.jax_child, args.quick, args.rounds or rounds, args.calls or calls)
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
    steps = train_steps(4 if args.quick else 100, rounds, 1 if args.quick else 3)
    million = None if args.quick else million_ops(1_000_000)
    grad_bench = gradbench_replay(args.quick, rounds, calls)
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
    for name, r in steps.items():
        print(f"\ntraining step, {name} (record_step trace {r['trace_s'] * 1e3:.0f} ms):")
        for row in r["rows"]:
            print(f"  {row['what']:<50} {row['seconds'] * 1e3:9.3f} ms  {row['traced_speedup']:8.1f}x the traced step's")
    for name, r in grad_bench.items():
        compile_s = (f", JAX jit: {r['jax_error']}" if r["jax_compile_s"] is None else
                     f", JAX jit compile {r['jax_compile_s']:.2f} s")
        print(f"\nGradBench {name} ({r['ops']:,} ops; trace {r['trace_s'] * 1e3:.0f} ms{compile_s}):")
        for row in r["rows"]:
            print(f"  {row['what']:<50} {row['seconds'] * 1e3:9.3f} ms  {row['over_replay']:8.2f}x the replay's time")
    if million is not None:
        m = million
        print(f"\n{m['ops']:,}-op scalar chain: trace {m['trace_s']:.2f} s, replay (forward + backward) "
              f"{m['replay_s'] * 1e3:.1f} ms ({m['replay_s'] / m['ops'] * 1e9:.1f} ns/op), arena "
              f"{m['arena_bytes'] / m['ops']:.1f} B/op, plan resident {m['plan_resident_mb'] * 1e6 / m['ops']:.0f} "
              f"B/op, peak RSS {m['peak_rss_mb']:.0f} MB")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "record_replay.json")
    if not args.quick:
        with open(path, "w") as f:
            json.dump({"load": load, "scalar_chain": chain, "micrograd_mlp": mlp, "big_elementwise": big,
                       "train_steps": steps, "million_ops": million, "gradbench": grad_bench}, f, indent=1)


if __name__ == "__main__":
    main()
