"""float64 matmuls that csrc/kernels/gemm_skinny.c (two small sides) and dgemm_avx512.c (every side
large) compute on AVX-512F instead of BLAS (on other CPUs, and in float32, BLAS or gemm_small.c
computes them and these tests still hold): forward, both VJPs, JVP and Hessians through the
product, against NumPy in float64 (and float32, against float64 NumPy), on shapes that reach every
block size and tail:

  "tall"       (m x k) @ op(B) (k x n), k <= 64, n <= 32, m >= 8: rows in blocks of 16/12/8/6 (for
               n in 1-8 / 9-16 / 17-24 / 25-32), then 4, then 1; op(B) copied and zero-padded unless
               B is untransposed with n a multiple of 8; the last vector of a row masked.
  "long inner" A^T G, (k x m) @ (m x n), k <= 64, n <= 32: C's rows in blocks of 16/12/8/6, then 4,
               then 1; m in chunks of 128 rows whose sums are added to C in order.
  "blocked"    every side >= 128: 8 x 24 tiles of C over packed panels (see BLOCKED below).

Tolerance: float64 sums of k products of unit normals differ from NumPy's (BLAS's) order by a few
ulp of sqrt(k) * the largest term; float32 by a few float32 ulp of the same."""
import numpy as np
import pytest

import pyautodiff as ad

DTYPES = [np.float64, np.float32]


def _close(got, want, dtype, k=1):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max(initial=0.0)), 1.0) * max(1.0, np.sqrt(k))
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, want, rtol=0, atol=16 * eps * scale)


def _check(ashape, bshape, dtype, seed=0):
    """forward and both gradients of a @ b against NumPy (in float64 from the same inputs)"""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(ashape).astype(dtype)
    b = rng.standard_normal(bshape).astype(dtype)
    want = a.astype(np.float64) @ b.astype(np.float64)
    g = rng.standard_normal(want.shape).astype(dtype)
    at, bt = ad.tensor(a, requires_grad=True), ad.tensor(b, requires_grad=True)
    y = at @ bt
    assert y.dtype == dtype and y.shape == want.shape
    k = ashape[-1]
    _close(y.numpy(), want, dtype, k)
    y.backward(ad.tensor(g))
    a64, b64, g64 = a.astype(np.float64), b.astype(np.float64), g.astype(np.float64)
    # NumPy's VJP of matmul, with 1-D operands as a row / a column and broadcast batches summed
    A = a64[None] if a.ndim == 1 else a64
    B = b64[:, None] if b.ndim == 1 else b64
    G = g64.reshape(want.shape[:-1] + (1,) + want.shape[-1:]) if a.ndim == 1 else g64
    G = G[..., None] if b.ndim == 1 else G
    da = G @ np.swapaxes(B, -1, -2)
    db = np.swapaxes(A, -1, -2) @ G
    da = _unbroadcast(da, A.shape).reshape(ashape)
    db = _unbroadcast(db, B.shape).reshape(bshape)
    _close(at.grad.numpy(), da, dtype, max(bshape[-1], 1))
    _close(bt.grad.numpy(), db, dtype, max(int(np.prod(ashape[:-1])), 1))


def _unbroadcast(x, shape):
    while x.ndim > len(shape):
        x = x.sum(axis=0)
    for i, s in enumerate(shape):
        if s == 1 and x.shape[i] != 1:
            x = x.sum(axis=i, keepdims=True)
    return x


# (m, k, n): n across 1-8 / 9-16 / 17-24 / 25-32 lanes (8, 16, 24, 32: whole vectors, B not copied)
# and the limits 32 / 33, k up to the limit 64 and past it (65: BLAS), m from below the tall
# kernel's 8 rows to past every block size (with remainders of 4-blocks and single rows)
TALL = [(8, 2, 2), (9, 7, 3), (13, 10, 10), (16, 10, 8), (17, 1, 5), (21, 3, 9), (29, 16, 16), (35, 33, 17),
        (100, 10, 24), (57, 32, 25), (31, 64, 32), (200, 5, 31), (7, 10, 10), (3, 64, 32), (40, 65, 10),
        (40, 10, 33), (1000, 32, 32), (1000, 10, 10)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", TALL, ids=str)
def test_tall_products_and_their_gradients(shape, dtype):
    # forward: tall (B in place or copied); dA = G @ B^T: tall, B transposed; dB = A^T @ G:
    # long inner with C (k x n) and m long
    m, k, n = shape
    _check((m, k), (k, n), dtype, seed=m * 10_000 + k * 100 + n)


# (m, k, n) with m the long inner dimension of b's VJP: chunks of 128 rows (127, 128, 129, 300:
# one, one full, a full and one row, two full and a part) and C's row blocks and tails for each
# lane count
LONG_INNER = [(127, 16, 1), (128, 17, 8), (129, 13, 9), (300, 30, 16), (300, 9, 17), (130, 40, 24), (260, 6, 25),
              (257, 64, 32), (1, 3, 2), (2, 64, 32), (500, 65, 32), (500, 64, 33)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", LONG_INNER, ids=str)
def test_long_inner_gradients(shape, dtype):
    m, k, n = shape
    _check((m, k), (k, n), dtype, seed=m * 10_000 + k * 100 + n)


# (m, k, n) for dgemm_avx512.c's blocked product (every side >= 128; 127 stays on BLAS): tiles of
# 8 x 24 with partial ones at the edges (1, 4, 6, 8, 10 and 13 columns wide: masked last vectors
# of 1, 2, 4, 5 and 6 lanes), k in blocks of 192 (193, 385: a one-step last block), A's rows in
# blocks of 192, n in blocks of 672 (700: one and a part; 1345: two and one column); the VJPs run it
# with B transposed (dA) and A transposed (dB)
BLOCKED = [(128, 128, 128), (129, 193, 130), (140, 150, 157), (200, 385, 700), (385, 130, 1345), (127, 300, 300),
           (250, 128, 127)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", BLOCKED, ids=str)
def test_blocked_products_and_their_gradients(shape, dtype):
    m, k, n = shape
    _check((m, k), (k, n), dtype, seed=m + k + n)


BATCHED = [((25, 10, 10), (25, 10, 10)), ((25, 100, 10), (25, 10, 10)), ((8, 100, 32), (32, 32)),
           ((8, 13, 7), (7,)), ((4, 1, 40, 16), (1, 3, 16, 16)), ((50, 10), (25, 10, 10)), ((9,), (3, 9, 20)),
           ((3, 17, 12), (3, 12, 5)), ((2, 3, 20, 9), (9, 30))]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shapes", BATCHED, ids=str)
def test_batched_and_broadcast_products(shapes, dtype):
    # batches folded into one tall product (b without batch axes), per-batch products, and
    # broadcast batch axes on either side, whose gradients the sweep sums
    _check(*shapes, dtype, seed=len(shapes[0]) * 7 + shapes[0][-1])


EDGES = [((0, 10), (10, 10)), ((20, 0), (0, 10)), ((25, 0, 10), (25, 10, 10)), ((0, 3, 4), (4, 5)),
         ((20, 10), (10, 0)), ((20, 1), (1, 10)), ((20, 10), (10, 1)), ((1, 10), (10, 10)), ((10,), (10, 10))]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shapes", EDGES, ids=str)
def test_edge_shapes(shapes, dtype):
    # zero-size results and inner dimensions, k = 1 (outer product), n = 1 and m = 1 (gemv)
    _check(*shapes, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_gradients_accumulate(dtype):
    # a and b each used by two products: the second VJP adds to the first (beta = 1 on both
    # kernels, including the masked last vector), and both products' forward results are summed
    rng = np.random.default_rng(5)
    a = rng.standard_normal((37, 10)).astype(dtype)
    b1, b2 = rng.standard_normal((10, 9)).astype(dtype), rng.standard_normal((10, 9)).astype(dtype)
    w1, w2 = rng.standard_normal((37, 9)).astype(dtype), rng.standard_normal((37, 9)).astype(dtype)
    at = ad.tensor(a, requires_grad=True)
    bt1, bt2 = ad.tensor(b1, requires_grad=True), ad.tensor(b2, requires_grad=True)
    ((at @ bt1) * ad.tensor(w1) + (at @ bt2) * ad.tensor(w2) + (at @ bt1) * ad.tensor(w2)).sum().backward()
    A, B1, B2, W1, W2 = (x.astype(np.float64) for x in (a, b1, b2, w1, w2))
    _close(at.grad.numpy(), (W1 + W2) @ B1.T + W2 @ B2.T, dtype, 10)
    _close(bt1.grad.numpy(), A.T @ (W1 + W2), dtype, 37)
    _close(bt2.grad.numpy(), A.T @ W2, dtype, 37)

    # the same through the blocked kernel (every side >= 128)
    a = rng.standard_normal((130, 200)).astype(dtype)
    b1, b2 = rng.standard_normal((200, 150)).astype(dtype), rng.standard_normal((200, 150)).astype(dtype)
    w1, w2 = rng.standard_normal((130, 150)).astype(dtype), rng.standard_normal((130, 150)).astype(dtype)
    at = ad.tensor(a, requires_grad=True)
    bt1, bt2 = ad.tensor(b1, requires_grad=True), ad.tensor(b2, requires_grad=True)
    ((at @ bt1) * ad.tensor(w1) + (at @ bt2) * ad.tensor(w2)).sum().backward()
    A, B1, B2, W1, W2 = (x.astype(np.float64) for x in (a, b1, b2, w1, w2))
    _close(at.grad.numpy(), W1 @ B1.T + W2 @ B2.T, dtype, 300)
    _close(bt1.grad.numpy(), A.T @ W1, dtype, 130)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shapes", [((40, 10), (10, 10)), ((8, 20, 32), (32, 32)), ((5, 30, 7), (5, 7, 17))], ids=str)
def test_jvp(shapes, dtype):
    rng = np.random.default_rng(6)
    a, b = (rng.standard_normal(s).astype(dtype) for s in shapes)
    da, db = (rng.standard_normal(s).astype(dtype) for s in shapes)
    out, t = ad.jvp(lambda x, y: x @ y, (a, b), (da, db))
    A, B, dA, dB = (x.astype(np.float64) for x in (a, b, da, db))
    _close(out.numpy(), A @ B, dtype, shapes[0][-1])
    _close(t.numpy(), dA @ B + A @ dB, dtype, 2 * shapes[0][-1])
    # one tangent alone (the other input constant)
    _, t = ad.jvp(lambda x: x @ ad.tensor(b), (a,), (da,))
    _close(t.numpy(), dA @ B, dtype, shapes[0][-1])


def test_hessian_through_the_product():
    # f = sum(W * sin(x @ B)): with y = x B and S = -W sin(y), the Hessian in x is
    # H[(i,p),(j,q)] = delta_ij sum_n B[p,n] S[i,n] B[q,n], and in B
    # H[(p,n),(q,l)] = delta_nl sum_i x[i,p] S[i,n] x[i,q]; the width-90 sweep runs the products
    # with 90 * 9 rows (tall) and the long-inner VJP through the second-order terms
    rng = np.random.default_rng(7)
    x, b, w = rng.standard_normal((9, 10)), rng.standard_normal((10, 12)), rng.standard_normal((9, 12))
    S = -w * np.sin(x @ b)
    hx = np.einsum("pn,in,qn,ij->ipjq", b, S, b, np.eye(9))
    hb = np.einsum("ip,in,iq,nl->pnql", x, S, x, np.eye(12))
    got_x = np.asarray(ad.hessian(lambda x: (ad.tensor(w) * ad.sin(x @ ad.tensor(b))).sum())(x))
    got_b = np.asarray(ad.hessian(lambda b: (ad.tensor(w) * ad.sin(ad.tensor(x) @ b)).sum())(b))
    _close(got_x, hx, np.float64, 12)
    _close(got_b, hb, np.float64, 9)
    # both operands at once: the mixed block d2f / dx dB
    hxb = np.asarray(ad.hessian(lambda x, b: (ad.tensor(w) * ad.sin(x @ b)).sum(), argnums=(0, 1))(x, b)[0][1])
    C = w * np.cos(x @ b)
    # d/dB[q,n] of grad_x[i,p] = sum_n' (W cos y)[i,n'] B[p,n'] is
    # C[i,n] delta_pq + sum_n' S[i,n'] B[p,n'] x[i,q] delta_n'n = C[i,n] delta_pq + S[i,n] B[p,n] x[i,q]
    want = np.einsum("in,pq->ipqn", C, np.eye(10)) + np.einsum("in,pn,iq->ipqn", S, b, x)
    _close(hxb, want, np.float64, 12)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_finite_differences(dtype):
    rng = np.random.default_rng(8)
    shapes = ((3, 20, 10), (10, 9))
    a, b = (rng.standard_normal(s) for s in shapes)
    w = rng.standard_normal((3, 20, 9))
    f = lambda x, y: (ad.tensor(w.astype(dtype)) * ad.tanh(x @ y)).sum()
    assert ad.gradcheck(f, (a.astype(dtype), b.astype(dtype)), n_directions=6)


def test_results_do_not_depend_on_the_row_count():
    # each element of the tall product is the same chain of k fused multiply-adds whatever block
    # its row falls in: rows computed alone, in blocks of 4 or in full blocks agree bit for bit
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((100, 30)), rng.standard_normal((30, 20))
    full = (ad.tensor(a) @ ad.tensor(b)).numpy()
    for lo, hi in [(0, 8), (3, 15), (50, 100), (10, 27)]:
        np.testing.assert_array_equal((ad.tensor(a[lo:hi]) @ ad.tensor(b)).numpy(), full[lo:hi])
    # the blocked kernel likewise: rows in any block of 8 or 192 sum in the same order
    a2, b2 = rng.standard_normal((400, 300)), rng.standard_normal((300, 200))
    full = (ad.tensor(a2) @ ad.tensor(b2)).numpy()
    for lo, hi in [(0, 128), (5, 200), (190, 400)]:
        np.testing.assert_array_equal((ad.tensor(a2[lo:hi]) @ ad.tensor(b2)).numpy(), full[lo:hi])
    # and the same product twice gives the same bits (the long-inner sums too)
    g = rng.standard_normal((100, 20))
    grads = []
    for _ in range(2):
        bt = ad.tensor(b, requires_grad=True)
        (ad.tensor(a) @ bt).backward(ad.tensor(g))
        grads.append(bt.grad.numpy())
    np.testing.assert_array_equal(grads[0], grads[1])
