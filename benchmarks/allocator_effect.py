"""How much of the big_elementwise comparison is glibc's allocator, not arithmetic.

The hand-written NumPy step makes ~20 temporaries of 8 MB. In a fresh process glibc serves each
from a new mmap (every page faults on first touch); once its mmap threshold has grown, or with
the environment below, it reuses heap memory and the same NumPy code runs much faster.
pyautodiff keeps its own buffer pool, so it is barely affected. Run both ways:

    python benchmarks/allocator_effect.py
    MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456 python benchmarks/allocator_effect.py

Prints the median of interleaved forward + backward steps (ms) and the ratio.
"""
import time

import numpy as np

import pyautodiff as ad


def main(rounds=30):
    xv = np.random.default_rng(4).normal(size=1_000_000)
    x = ad.tensor(xv, requires_grad=True)
    w = ad.tensor(np.float64(0.7), requires_grad=True)
    b = ad.tensor(np.float64(-0.2), requires_grad=True)

    def numpy_step():   # the same hand-written reference as benchmarks/workloads/big_elementwise.py
        t = np.tanh(xv * 0.7 + -0.2)
        e = np.exp(-xv * xv)
        loss = np.sum(t * e)
        grad_u = e * (1.0 - t * t)
        return loss, grad_u * 0.7 - 2.0 * xv * t * e, np.sum(grad_u * xv), np.sum(grad_u)

    def pyautodiff_step():
        for leaf in (x, w, b):
            leaf.grad = None
        loss = ad.sum(ad.tanh(x * w + b) * ad.exp(-x * x))
        loss.backward()
        return loss

    times = {"numpy": [], "pyautodiff": []}
    steps = {"numpy": numpy_step, "pyautodiff": pyautodiff_step}
    for step in steps.values():
        step()
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    med = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    print(f"numpy {med['numpy']:.2f} ms, pyautodiff {med['pyautodiff']:.2f} ms, "
          f"ratio {med['pyautodiff'] / med['numpy']:.2f}")


if __name__ == "__main__":
    main()
