"""conv2d, layer_norm, batch_norm and embedding, forward + backward, against PyTorch eager CPU (conv)
and NumPy by hand (the norms and embedding), all at one thread, in one run:

    python -m benchmarks.conv_norms [--rounds 15] [--dtype float32]

Prints one line per case with the median time of each contestant over interleaved rounds (each
round runs every contestant once, so a load change hits all alike) and the ratio pyautodiff / peer.
Gradients are checked against the peer's before timing. PyTorch is optional (its column is then
skipped). Targets (issue 17): conv within 1.3x of PyTorch, the others within 1.2x of NumPy."""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "PYAUTODIFF_NUM_THREADS"):
    os.environ[_var] = "1"      # before NumPy loads: BLAS reads it once

import argparse      # noqa: E402
import time          # noqa: E402

import numpy as np   # noqa: E402

import pyautodiff as ad                      # noqa: E402
import pyautodiff.nn.functional as F         # noqa: E402

ad.set_num_threads(1)      # the environment variable above already says so; explicit for the reader

try:
    import torch
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
except ImportError:
    torch = None


def _run(fn, leaves, g):
    """Forward and backward once (pyautodiff or torch: the same calls); the leaves' gradients."""
    for t in leaves:
        t.grad = None
    out = fn(*leaves)
    out.backward(g)
    return [t.grad.numpy() for t in leaves]


def conv_case(x_shape, w_shape, padding, dtype, rng):
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    leaves = [ad.tensor(a, requires_grad=True) for a in (x, w, b)]
    out_shape = F.conv2d(*leaves, padding=padding).shape
    g = rng.standard_normal(out_shape).astype(dtype)
    runs = {"pyautodiff": lambda: _run(lambda *a: F.conv2d(*a, padding=padding), leaves, g)}
    if torch is not None:
        tl = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
        tg = torch.tensor(g)
        runs["torch"] = lambda: _run(lambda *a: torch.nn.functional.conv2d(*a, padding=padding), tl, tg)
    return runs


def layer_norm_case(shape, dtype, rng, eps=1e-5):
    x = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(shape[-1:]).astype(dtype), rng.standard_normal(shape[-1:]).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    leaves = [ad.tensor(a, requires_grad=True) for a in (x, w, b)]

    def numpy_by_hand():
        mu = x.mean(-1, keepdims=True)
        xc = x - mu
        rstd = 1 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
        xhat = xc * rstd
        out = xhat * w + b                      # the forward output, as a user's code keeps it
        gb = g.sum(0)
        gw = (g * xhat).sum(0)
        gxhat = g * w
        gx = rstd * (gxhat - gxhat.mean(-1, keepdims=True) - xhat * (gxhat * xhat).mean(-1, keepdims=True))
        return [gx, gw, gb], out

    return {"pyautodiff": lambda: _run(lambda *a: F.layer_norm(a[0], shape[-1], a[1], a[2], eps), leaves, g),
            "numpy": lambda: numpy_by_hand()[0]}


def batch_norm_case(shape, dtype, rng, eps=1e-5):
    x = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    leaves = [ad.tensor(a, requires_grad=True) for a in (x, w, b)]
    axes = (0, 2, 3)
    view = (1, c, 1, 1)

    def numpy_by_hand():
        mu = x.mean(axes, keepdims=True)
        xc = x - mu
        rstd = 1 / np.sqrt((xc * xc).mean(axes, keepdims=True) + eps)
        xhat = xc * rstd
        out = xhat * w.reshape(view) + b.reshape(view)
        gb = g.sum(axes)
        gw = (g * xhat).sum(axes)
        gxhat = g * w.reshape(view)
        gx = rstd * (gxhat - gxhat.mean(axes, keepdims=True) - xhat * (gxhat * xhat).mean(axes, keepdims=True))
        return [gx, gw, gb], out

    return {"pyautodiff": lambda: _run(lambda *a: F.batch_norm(a[0], None, None, a[1], a[2], True), leaves, g),
            "numpy": lambda: numpy_by_hand()[0]}


def embedding_case(num, dim, idx_shape, dtype, rng):
    w = rng.standard_normal((num, dim)).astype(dtype)
    idx = rng.integers(0, num, idx_shape)
    g = rng.standard_normal(idx_shape + (dim,)).astype(dtype)
    leaves = [ad.tensor(w, requires_grad=True)]

    def numpy_by_hand():
        out = w[idx]
        gw = np.zeros_like(w)
        np.add.at(gw, idx.reshape(-1), g.reshape(-1, dim))
        return [gw], out

    return {"pyautodiff": lambda: _run(lambda t: F.embedding(idx, t), leaves, g),
            "numpy": lambda: numpy_by_hand()[0]}


def measure(runs, rounds):
    ref = None
    for name, fn in runs.items():          # warm up, and check the gradients agree
        grads = fn()
        if ref is None:
            ref = grads
        else:
            for a, b in zip(ref, grads):
                np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(np.abs(b).max()),
                                           err_msg=f"{name} disagrees with pyautodiff")
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(v)) for name, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv_norms")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = p.parse_args(argv)
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    cases = [
        ("conv2d (32,16,28,28) * 32x3x3, pad 1", conv_case((32, 16, 28, 28), (32, 16, 3, 3), 1, dtype, rng)),
        ("conv2d (8,3,64,64) * 16x5x5, pad 2", conv_case((8, 3, 64, 64), (16, 3, 5, 5), 2, dtype, rng)),
        ("layer_norm (512, 768)", layer_norm_case((512, 768), dtype, rng)),
        ("batch_norm (32, 64, 28, 28)", batch_norm_case((32, 64, 28, 28), dtype, rng)),
        ("embedding (30000, 256)[64, 64]", embedding_case(30000, 256, (64, 64), dtype, rng)),
    ]
    load = os.getloadavg()[0]
    print(f"forward + backward, {dtype}, 1 thread, median of {args.rounds} interleaved rounds; load average "
          f"{load:.2f}; torch {'absent' if torch is None else torch.__version__}")
    for label, runs in cases:
        t = measure(runs, args.rounds)
        peer = "torch" if "torch" in t else "numpy" if "numpy" in t else None
        ratio = f"{t['pyautodiff'] / t[peer]:.2f}x {peer}" if peer else "(no peer)"
        cols = "  ".join(f"{k} {1e3 * v:8.3f} ms" for k, v in t.items())
        print(f"{label:40s} {cols}  ratio {ratio}")


if __name__ == "__main__":
    main()
