"""Intra-op threads (issue 15): forward + backward of 10^7-element elementwise work with
``ad.set_num_threads(1)`` against ``ad.set_num_threads(2)``, interleaved in one run.

``python -m benchmarks.threads`` (about a minute), ``--quick`` (10^6 elements, seconds; only
checks that both settings give the same numbers bit for bit). Target: a speed-up of at least
1.7x with 2 threads on the full size (median of three interleaved rounds of five calls).
Results go to ``benchmarks/results/threads.{md,json}``.

Each call: ``(f(x, y) * g).sum().backward()`` with leaves x, y made once (grads cleared) and a
fixed g, so the forward, the product with g, the blocked sum and every VJP pass are the size of
the tensors. Only the standard library is imported at module level (see ``benchmarks.run``).
"""

import argparse
import json
import os
import statistics
import sys
import time

from benchmarks import run as runner

TARGET = 1.7
CASES = ["tanh(x)", "exp(x)", "x * y", "sigmoid(x) * y"]


def _fn(ad, name):
    return {"tanh(x)": lambda x, y: ad.tanh(x), "exp(x)": lambda x, y: ad.exp(x),
            "x * y": lambda x, y: x * y, "sigmoid(x) * y": lambda x, y: ad.sigmoid(x) * y}[name]


def measure(n, rounds, calls, log=sys.stderr):
    import numpy as np
    import pyautodiff as ad

    rng = np.random.default_rng(0)
    x = ad.tensor(rng.standard_normal(n), requires_grad=True)
    y = ad.tensor(rng.standard_normal(n), requires_grad=True)
    g = ad.tensor(rng.standard_normal(n))
    before = ad.get_num_threads()
    rows = []
    try:
        for name in CASES:
            f = _fn(ad, name)
            times, grads = {1: [], 2: []}, {}
            for _ in range(rounds):
                for threads in (1, 2):
                    ad.set_num_threads(threads)
                    samples = []
                    for _ in range(calls):
                        x.grad = None
                        y.grad = None
                        t0 = time.perf_counter()
                        (f(x, y) * g).sum().backward()
                        samples.append(time.perf_counter() - t0)
                    times[threads].append(statistics.median(samples))
                    grads[threads] = x.grad.numpy().copy()
            same = bool(np.array_equal(grads[1], grads[2]))
            t1, t2 = statistics.median(times[1]), statistics.median(times[2])
            rows.append({"case": name, "elements": n, "one_thread_s": t1, "two_threads_s": t2,
                         "speedup": t1 / t2, "bit_identical": same})
            print(f"  {name:16s} 1 thread {t1 * 1e3:8.1f} ms   2 threads {t2 * 1e3:8.1f} ms   "
                  f"speed-up {t1 / t2:4.2f}x   bit-identical {same}", file=log, flush=True)
    finally:
        ad.set_num_threads(before)
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^6 elements, one round: checks only")
    args = parser.parse_args(argv)
    runner.pin_before_numpy("benchmarks.threads", argv, keep_openblas_env=False)
    n, rounds, calls = (10**6, 1, 2) if args.quick else (10**7, 3, 5)
    rows = measure(n, rounds, calls)
    ok = all(r["bit_identical"] for r in rows)
    met = all(r["speedup"] >= TARGET for r in rows)
    lines = ["# Intra-op threads: 1 against 2 threads", "",
             f"`python -m benchmarks.threads{' --quick' if args.quick else ''}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores; "
             f"median of {rounds} interleaved rounds of {calls} calls", "",
             "| case | elements | 1 thread | 2 threads | speed-up | bit-identical |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['elements']:,} | {r['one_thread_s'] * 1e3:.1f} ms | "
                     f"{r['two_threads_s'] * 1e3:.1f} ms | {r['speedup']:.2f}x | {r['bit_identical']} |")
    if not args.quick:
        lines += ["", f"Target: >= {TARGET}x with 2 threads: {'met' if met else 'not met'}."]
    out = os.path.join(runner.ROOT, "benchmarks", "results")
    os.makedirs(out, exist_ok=True)
    stem = "threads-quick" if args.quick else "threads"
    with open(os.path.join(out, stem + ".md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(out, stem + ".json"), "w") as fh:
        json.dump({"rows": rows, "target": TARGET, "quick": args.quick}, fh, indent=1)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
