"""Soak test: random programs on several threads for minutes, with random interrupts, then check
that nothing leaked.

Each thread runs random programs over the public API (elementwise chains with fan-out,
reductions, matmul, softmax, indexing, backward, grad / jvp / hessian, in-place updates and an
optimizer step under no_grad) on tensors of up to a few thousand elements. The main thread runs
them too and takes an interrupt (an exception raised by a SIGALRM handler, as a Ctrl-C is) every
few milliseconds, wherever it lands: inside an op, a sweep, a destructor. At the end every thread
drops what it holds, and the test requires

- zero live nodes on every thread's tape (ad.tape_stats()), and
- a flat resident set: RSS at the end within --rss-mb of RSS after the warm-up (the first tenth
  of the run), so that neither nodes nor buffers nor thread state accumulate.

    python tools/soak.py --minutes 30            # the long run (issue 16); not part of CI
    python tools/soak.py --minutes 1 --seed 3    # a quick look

Exit status 0 when both hold. Interrupts are counted, with where they landed (inside pyautodiff's
Python code and the C calls it makes, or elsewhere), so that a run which was never interrupted inside the core does not pass for one that
was.
"""
import argparse
import gc
import os
import random
import signal
import sys
import threading
import time

import numpy as np

import pyautodiff as ad


class Interrupt(BaseException):
    """Raised by the timer's signal handler; a BaseException, as KeyboardInterrupt is, so no
    `except Exception` in the library may swallow it."""


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


UNARY = ["tanh", "exp", "sin", "sigmoid", "softplus", "square", "relu", "abs"]


def random_program(rng):
    """One random program; returns a count of the ops it ran (the values die with it)."""
    dtype = rng.choice([np.float32, np.float64])
    n = int(rng.choice([3, 17, 256, 2048]))
    x = ad.tensor(rng.uniform(-1, 1, (n,)).astype(dtype), requires_grad=True)
    w = ad.tensor(rng.uniform(-1, 1, (n, 4)).astype(dtype), requires_grad=True)
    vals = [x]
    for _ in range(int(rng.integers(2, 9))):
        v = vals[int(rng.integers(len(vals)))]          # fan-out: earlier values are reused
        kind = rng.integers(7)
        if kind == 0:
            vals.append(getattr(ad, UNARY[int(rng.integers(len(UNARY)))])(v))
        elif kind == 1:
            vals.append(v * vals[int(rng.integers(len(vals)))] + 0.5)
        elif kind == 2:
            vals.append(ad.softmax(v, axis=-1) * n)
        elif kind == 3:
            vals.append(ad.max(v) + ad.mean(v) * v)
        elif kind == 4:
            vals.append(ad.reshape(v[::-1][rng.integers(0, n, n)], (n,)))
        elif kind == 5:
            vals.append(ad.sum(ad.reshape(v, (n, 1)) * w, axis=1))
        else:
            vals.append(ad.where(rng.random(n) < 0.5, v, vals[0] * 2.0))
    loss = ad.sum(vals[-1]) + ad.sum(vals[len(vals) // 2])
    form = rng.integers(5)
    if form == 0:
        loss.backward()
        opt = ad.optim.SGD([x, w], lr=0.01)
        opt.step()
        opt.zero_grad()
    elif form == 1:
        ad.grad(lambda t: ad.sum(ad.tanh(t) * t))(vals[-1].detach())
    elif form == 2:
        ad.jvp(lambda t: ad.softmax(t * t, axis=-1), (x.detach().numpy()[:8],), (np.ones(min(n, 8), dtype),))
    elif form == 3:
        ad.hessian(lambda t: ad.sum(ad.exp(t) * t))(x.detach().numpy()[:4])
    else:
        with ad.no_grad():
            y = vals[-1].detach().clone()
            y += 1.0
            y[0] = 3.0
            y.mul_(0.5)
    return len(vals)


# Set on the main thread while a program runs: the handler raises only then, so that an interrupt
# never lands in the soak's own bookkeeping (and disarms itself before raising).
ARMED = [False]


def worker(seed, deadline, report, interruptible):
    rng = np.random.default_rng(seed)
    programs = interrupts = 0
    landed = {}
    while time.time() < deadline:
        try:
            ARMED[0] = interruptible
            random_program(rng)
            ARMED[0] = False
            programs += 1
        except Interrupt as e:
            interrupts += 1
            frames, tb = [], e.__traceback__
            while tb:
                frames.append(tb.tb_frame.f_code.co_filename)
                tb = tb.tb_next
            # the last frame is the handler; the one before it is where the interrupt landed
            key = "in pyautodiff" if len(frames) > 1 and "pyautodiff" in frames[-2] else "elsewhere"
            landed[key] = landed.get(key, 0) + 1
        except Exception as e:   # a real bug: report it, keep going (a soak run finds all of them)
            report.setdefault("errors", []).append(f"{type(e).__name__}: {e}")
    report.update(programs=programs, interrupts=interrupts, landed=landed)


def finish_thread(report):
    """This thread's tape, once its programs' values are gone."""
    for _ in range(3):
        gc.collect()
    report["live_nodes"] = ad.tape_stats()["live_nodes"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=4, help="threads running programs, the main one included")
    ap.add_argument("--interrupt-ms", type=float, nargs=2, default=(1.0, 20.0), metavar=("MIN", "MAX"),
                    help="interval between interrupts, drawn uniformly (default 1 20)")
    ap.add_argument("--rss-mb", type=float, default=20.0, help="allowed RSS growth after the warm-up (MB)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    start = time.time()
    duration = args.minutes * 60
    deadline = start + duration
    reports = [{} for _ in range(args.threads)]

    def run_worker(i):
        worker(args.seed * 1000 + i, deadline, reports[i], False)
        finish_thread(reports[i])

    threads = [threading.Thread(target=run_worker, args=(i,), daemon=True) for i in range(1, args.threads)]
    pick = random.Random(args.seed)

    def on_alarm(signum, frame):
        signal.setitimer(signal.ITIMER_REAL, pick.uniform(*args.interrupt_ms) / 1000)
        if ARMED[0]:
            ARMED[0] = False
            raise Interrupt()

    rss0 = rss_mb()
    warm = {}

    def sample_warm():
        time.sleep(duration / 10)
        warm["rss"] = rss_mb()

    sampler = threading.Thread(target=sample_warm, daemon=True)
    for t in threads:
        t.start()
    sampler.start()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, pick.uniform(*args.interrupt_ms) / 1000)
    worker(args.seed * 1000, deadline, reports[0], True)
    signal.setitimer(signal.ITIMER_REAL, 0)
    for t in threads:
        t.join()
    sampler.join()
    finish_thread(reports[0])
    for _ in range(3):
        gc.collect()
    rss1 = rss_mb()
    growth = rss1 - warm.get("rss", rss0)

    print(f"soak: {args.minutes:g} min on {args.threads} threads, seed {args.seed}; load {os.getloadavg()[0]:.1f}")
    ok = True
    for i, r in enumerate(reports):
        errors = r.get("errors", [])
        print(f"  thread {i}: {r.get('programs', 0)} programs, {r.get('interrupts', 0)} interrupts "
              f"{r.get('landed', {})}, live nodes at the end {r.get('live_nodes')}, {len(errors)} errors")
        for e in sorted(set(errors))[:5]:
            print(f"    error: {e}")
        ok &= r.get("live_nodes") == 0 and not errors
    print(f"  RSS: {rss0:.0f} MB at the start, {warm.get('rss', float('nan')):.0f} MB after the warm-up, "
          f"{rss1:.0f} MB at the end (growth {growth:+.1f} MB, allowed {args.rss_mb:g})")
    ok &= growth <= args.rss_mb
    print("soak: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
