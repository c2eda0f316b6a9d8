"""ad.einsum forward against np.einsum(..., optimize=True), ratios measured in one run (issue 17's
target: within 1.2x).

``python -m benchmarks.einsum`` (about a minute), ``--quick`` (seconds; not for quoting). One
thread everywhere (benchmarks.run pins the environment before NumPy loads). Each case: the
inputs as tensors that do not require grad (the forward alone, as the target states), the two
contestants timed in interleaved rounds, the median of each; ratio = pyautodiff / NumPy.
"""
import argparse
import sys
import time

from benchmarks import run as runner

CASES = [
    # name, subscripts, shapes
    ("matmul", "ij,jk->ik", [(256, 256), (256, 256)]),
    ("matmul_small", "ij,jk->ik", [(16, 32), (32, 8)]),
    ("matvec", "ij,j->i", [(2048, 512), (512,)]),
    ("batched", "bij,bjk->bik", [(32, 64, 64), (32, 64, 64)]),
    ("batched_ellipsis", "...ij,...jk->...ik", [(8, 4, 32, 48), (8, 4, 48, 16)]),
    ("outer", "i,j->ij", [(1000,), (1000,)]),
    ("trace", "ii->", [(2000, 2000)]),
    ("diag", "ii->i", [(2000, 2000)]),
    ("bilinear", "bi,ij,bj->b", [(256, 128), (128, 128), (256, 128)]),
    ("attention", "bhqd,bhkd->bhqk", [(4, 4, 64, 32), (4, 4, 64, 32)]),
    ("contract3", "ijk,jkl->il", [(64, 32, 32), (32, 32, 64)]),
    ("chain", "ij,jk,kl->il", [(128, 256), (256, 64), (64, 256)]),
    ("transpose_sum", "ijk->kj", [(64, 128, 128)]),
]


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def measure(quick=False):
    import numpy as np
    import pyautodiff as ad

    rng = np.random.default_rng(0)
    rows = []
    for name, spec, shapes in CASES:
        arrays = [rng.standard_normal(s) for s in shapes]
        tensors = [ad.tensor(a) for a in arrays]
        want = np.einsum(spec, *arrays, optimize=True)
        got = ad.einsum(spec, *tensors).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(want).max(initial=0))))

        def ours():
            return ad.einsum(spec, *tensors)

        def numpy_():
            return np.einsum(spec, *arrays, optimize=True)

        # repeats sized to ~20 ms a round
        t0 = time.perf_counter()
        numpy_()
        once = max(time.perf_counter() - t0, 1e-6)
        reps = max(1, min(2000, int(0.02 / once)))
        times = {"ours": [], "numpy": []}
        for _ in range(3 if quick else 15):
            for key, fn in (("ours", ours), ("numpy", numpy_)):
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                times[key].append((time.perf_counter() - t0) / reps)
        a, b = _median(times["ours"]), _median(times["numpy"])
        rows.append((name, spec, shapes, a, b, a / b))
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.einsum")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    runner.pin_before_numpy("benchmarks.einsum", argv, False)
    import os
    rows = measure(args.quick)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(f"{'case':18} {'subscripts':22} {'pyautodiff':>12} {'np optimize':>12} {'ratio':>7}")
    for name, spec, shapes, a, b, r in rows:
        print(f"{name:18} {spec:22} {a * 1e6:10.1f}us {b * 1e6:10.1f}us {r:7.2f}")
    worst = max(r for *_, r in rows)
    print(f"worst ratio {worst:.2f} (target <= 1.2): {'met' if worst <= 1.2 else 'not met'}")


if __name__ == "__main__":
    main()
