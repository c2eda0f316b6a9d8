"""Scale, memory and threads: a 10^6-node chain, flat memory over 10,000 training steps and
10,000 forward-only passes, the tape growing in the middle of a sweep, and two threads training
two models at once."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import pyautodiff as ad

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def rss_bound(base=2 * 2 ** 20):
    """Allowed RSS growth: `base` bytes (default: 2 MB of allocator noise over a 10,000-step loop). Under AddressSanitizer
    (the PYAUTODIFF_SANITIZE=1 build) freed memory sits in ASan's quarantine (256 MB unless
    ASAN_OPTIONS sets quarantine_size_mb) before it is reused, which shows as RSS growth that is
    not ours: the quarantine is added to the bound there, with ASan's shadow of it (one byte per
    eight, written when a chunk is poisoned on entering the quarantine): without the shadow, a run
    that filled the quarantine measured 263.4 MB against a bound of 260 MB with no live node left."""
    with open("/proc/self/maps") as f:
        asan = "libasan" in f.read()
    if not asan:
        return base
    opts = dict(o.split("=", 1) for o in os.environ.get("ASAN_OPTIONS", "").replace(",", ":").split(":") if "=" in o)
    quarantine = int(opts.get("quarantine_size_mb", 256)) * 2 ** 20
    return quarantine + quarantine // 8 + base


def live():
    s = ad.tape_stats()
    return s["live_nodes"], s["live_bytes"]


# ---------------------------------------------------------------------------------------------
# depth: no recursion anywhere
# ---------------------------------------------------------------------------------------------
def test_million_node_chain_forward_and_backward():
    start = live()
    x = ad.tensor(1.0, requires_grad=True)
    y = x
    for _ in range(10 ** 6):
        y = y * 1.000001
    assert ad.tape_stats()["live_nodes"] >= start[0] + 10 ** 6
    y.backward()
    # d/dx of x * c^N is c^N = 1.000001^(10^6) ~ e; forward and sweep each round 10^6 products,
    # a relative error of at most 10^6 * 2^-53 = 1.1e-10
    expected = 1.000001 ** 1e6
    assert x.grad.item() == pytest.approx(expected, rel=2e-10)
    assert y.item() == pytest.approx(expected, rel=2e-10)
    del y
    x.zero_grad()
    del x
    assert live() == start          # the released chain is gone, nothing else stays behind


def test_million_node_chain_released_without_backward():
    start = live()
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    y = x
    for _ in range(10 ** 6):
        y = y + 1.0
    del y                            # the whole chain is freed by a loop, not a recursion
    assert live()[0] == start[0] + 1
    del x
    assert live() == start


# ---------------------------------------------------------------------------------------------
# flat memory
# ---------------------------------------------------------------------------------------------
def _tiny_model():
    rng = np.random.default_rng(0)
    W = ad.tensor(rng.standard_normal((3, 4)) * 0.5, requires_grad=True)
    b = ad.tensor(np.zeros(4), requires_grad=True)
    x = rng.standard_normal((8, 3))
    t = rng.standard_normal((8, 4))
    return W, b, x, t


def _step(W, b, x, t, lr=0.01):
    out = ad.tanh(x @ W + b)
    loss = ((out - t) ** 2.0).mean()
    loss.backward()
    with ad.no_grad():
        W2, b2 = W - lr * W.grad, b - lr * b.grad
    W2.requires_grad = True
    b2.requires_grad = True
    return W2, b2, loss.item()


def test_training_loop_runs_in_flat_memory():
    W, b, x, t = _tiny_model()
    for _ in range(500):                       # warm up: pools, Python caches, NumPy
        W, b, _ = _step(W, b, x, t)
    nodes0, bytes0 = live()
    rss0 = rss_bytes()
    losses = []
    for _ in range(10_000):
        W, b, loss = _step(W, b, x, t)
        losses.append(loss)
    assert live() == (nodes0, bytes0)
    growth = rss_bytes() - rss0
    # measured: 0 bytes of growth over the 10,000 steps (the tape reuses its node slots and
    # pooled buffers); the bound leaves room for allocator noise but not for a leak, which at
    # ~20 nodes per step of >= 216 bytes each would be >= 40 MB
    assert growth < rss_bound(), growth
    assert losses[-1] < losses[0]              # it did train


def test_forward_passes_without_backward_run_in_flat_memory():
    W, b, x, t = _tiny_model()
    for _ in range(500):
        ((ad.tanh(x @ W + b) - t) ** 2.0).mean()
    nodes0, bytes0 = live()
    rss0 = rss_bytes()
    peak_nodes = 0
    for _ in range(10_000):
        loss = ((ad.tanh(x @ W + b) - t) ** 2.0).mean()
        peak_nodes = max(peak_nodes, ad.tape_stats()["live_nodes"])
        # graphs nobody references are freed as soon as the last handle goes
    del loss
    assert live() == (nodes0, bytes0)
    assert peak_nodes <= nodes0 + 8            # at most one graph alive at a time
    growth = rss_bytes() - rss0
    # measured: 0 bytes of growth; see the training test for the bound
    assert growth < rss_bound(), growth


def test_stats_rise_with_a_live_graph_and_return_after_release():
    nodes0, bytes0 = live()
    x = ad.tensor(np.ones(1000), requires_grad=True)
    y = (ad.exp(x) * 2.0).sum()
    nodes1, bytes1 = live()
    # x and exp(x) (its VJP reads it) hold 8000 bytes each; exp(x) * 2.0, which no VJP reads,
    # was freed when the expression dropped it, though its node stays in the graph
    assert nodes1 == nodes0 + 4 and bytes0 + 2 * 8000 <= bytes1 < bytes0 + 3 * 8000
    y.backward()
    assert live()[0] == nodes0 + 3             # x, y (values kept), x.grad; the graph is gone
    del y
    x.grad = None
    del x
    assert live() == (nodes0, bytes0)


def test_values_no_vjp_reads_are_freed_when_dropped():
    n = 2 ** 17                            # 1 MiB per value: a whole size class of the pool
    x = ad.tensor(np.linspace(-1.0, 1.0, n), requires_grad=True)
    w, b = ad.tensor(0.7, requires_grad=True), ad.tensor(-0.2, requires_grad=True)
    _, bytes0 = live()
    h = x * w + b                          # x * w: only the add reads it, and the add reads nothing
    t = ad.tanh(h)                         # tanh's VJP reads its output, not h
    loss = (t * x).sum()                   # the product reads t and x; sum reads nothing
    _, bytes_held = live()
    del h
    _, bytes_dropped = live()
    # held: x*w freed at once; h (ours) and t; then h goes too: only t's MiB stays, plus records
    assert bytes_held - bytes0 < 2 * 8 * n + 8 * n // 2
    assert bytes_held - bytes_dropped >= 8 * n
    assert bytes_dropped - bytes0 < 8 * n + 8 * n // 2
    loss.backward(retain_graph=True)
    tv = np.tanh(np.linspace(-1.0, 1.0, n) * 0.7 - 0.2)
    xv = np.linspace(-1.0, 1.0, n)
    expected_x = tv + xv * (1 - tv * tv) * 0.7
    np.testing.assert_allclose(x.grad.numpy(), expected_x, rtol=1e-12, atol=1e-14)
    loss.backward()                        # the kept values serve a second sweep too
    np.testing.assert_allclose(x.grad.numpy(), 2 * expected_x, rtol=1e-12, atol=1e-14)
    assert w.grad.item() == pytest.approx(2 * float((xv * (1 - tv * tv) * xv).sum()), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# the tape grows during a sweep (regression: the sweep held a pointer into the tape's order
# array, which creating a leaf's grad mid-sweep could reallocate or compact)
# ---------------------------------------------------------------------------------------------
SWEEP_GROWTH = textwrap.dedent("""
    import sys
    import pyautodiff as ad
    retain, target = sys.argv[1] == "1", int(sys.argv[2])
    # a fresh process: the tape's order array starts with room for 1024 entries (tape.c) and
    # doubles; filling it to a power of two >= that puts the sweep right at a capacity boundary
    w = ad.tensor(2.0, requires_grad=True)
    v = ad.tensor(1.0, requires_grad=True)
    x = ad.tensor(3.0, requires_grad=True)
    for _ in range(300):
        t = ad.tensor(0.0)         # dead entries below the graph: compaction would move it
    del t
    keep, y = [], x
    for _ in range(100):
        y = y + 1.0
        keep.append(y)
    y = y * w                      # w's and v's grads are created in the middle of the sweep
    for _ in range(50):
        y = y + 0.0
        keep.append(y)
    y = y * v
    while ad.tape_stats()["tape_length"] < target:   # fill the order array to capacity
        y = y * 1.0
        keep.append(y)
    if not retain:
        keep.clear()
    y.backward(retain_graph=retain)
    assert (w.grad.item(), v.grad.item(), x.grad.item()) == (103.0, 206.0, 2.0), (w.grad, v.grad, x.grad)
    print("ok")
""")


@pytest.mark.parametrize("target", [1024, 4096])
@pytest.mark.parametrize("retain", [0, 1])
def test_tape_growing_during_a_sweep(retain, target):
    # MALLOC_PERTURB_ fills freed memory with junk, so reading a freed order array crashes
    # (before the fix: a segfault with retain=1; under ASan, a heap-use-after-free)
    env = dict(os.environ, MALLOC_PERTURB_="165")
    r = subprocess.run([sys.executable, "-c", SWEEP_GROWTH, str(retain), str(target)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr)


@pytest.mark.parametrize("set_to_none", [False, True])
def test_training_loop_tape_stays_as_long_as_the_live_graph(set_to_none):
    # Each iteration makes 4 entries, two of them (the leaves' fresh grads) inside the sweep,
    # while it holds the order. The tape fills at the same phase every time (its capacity is a
    # power of two), so before the fix it always filled while held, grew instead of compacting,
    # and every backward walked all the dead entries of earlier iterations: 12,906 entries after
    # 3,000 iterations and each step slower than the last. Now any push outside a sweep compacts
    # once more than 1,024 entries (and half) are dead (tape.c, order_push).
    x = ad.tensor(np.arange(3.0), requires_grad=True)
    y = ad.tensor(np.ones(3), requires_grad=True)
    base, lengths = ad.tape_stats()["tape_length"], []   # other tests' live tensors may share the tape
    for i in range(3000):
        if set_to_none:
            x.grad = None                # PyTorch's zero_grad(set_to_none=True) does this
            y.grad = None
        (x * y).backward(np.full(3, 2.0))
        if i % 500 == 499:
            lengths.append(ad.tape_stats()["tape_length"])
    assert max(lengths) < 2 * (base + 4) + 1024 + 64, (base, lengths)
    assert np.array_equal(x.grad.numpy(), np.full(3, 2.0) if set_to_none else np.full(3, 6000.0))
    assert np.array_equal(y.grad.numpy(), 2 * np.arange(3.0) * (1 if set_to_none else 3000))


# ---------------------------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------------------------
def _train(seed, steps=300, size=64):
    """A small MLP trained with plain SGD; returns the final weights and the losses."""
    rng = np.random.default_rng(seed)
    W1 = ad.tensor(rng.standard_normal((size, size)) / np.sqrt(size), requires_grad=True)
    W2 = ad.tensor(rng.standard_normal((size, 1)) / np.sqrt(size), requires_grad=True)
    x = rng.standard_normal((32, size))
    t = rng.standard_normal((32, 1))
    losses = []
    for _ in range(steps):
        h = ad.relu(x @ W1)
        loss = ((ad.sigmoid(h @ W2) - t) ** 2.0).mean() + ad.max(ad.abs(W1)) * 1e-3
        loss.backward()
        with ad.no_grad():
            W1, W2 = W1 - 0.1 * W1.grad, W2 - 0.1 * W2.grad
        W1.requires_grad = W2.requires_grad = True
        losses.append(loss.item())
    return W1.numpy(), W2.numpy(), np.array(losses)


def test_two_threads_training_match_sequential_runs_bit_for_bit():
    sequential = [_train(1), _train(2)]
    results = [None, None]
    errors = []

    def run(k):
        try:
            results[k] = _train(k + 1)
            # each thread has its own tape: its stats cover its own graphs only
            assert ad.tape_stats()["live_nodes"] == 0
        except BaseException as e:              # surfaced below, not swallowed by the thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for seq, par in zip(sequential, results):
        for a, b in zip(seq, par):
            assert a.dtype == b.dtype and np.array_equal(a, b)    # bit-identical, no tolerance
    assert not np.array_equal(sequential[0][2], sequential[1][2])


def test_tensor_from_another_thread():
    box = {}

    def make():
        box["t"] = ad.tensor([1.0, 2.0], requires_grad=True)
        box["y"] = box["t"] * 3.0
        box["y"].sum().backward()

    th = threading.Thread(target=make)
    th.start()
    th.join()
    t, y = box.pop("t"), box.pop("y")
    mine = ad.tensor([1.0, 1.0], requires_grad=True)
    # using it in an op on this thread is a clear RuntimeError ...
    for use in (lambda: t + mine, lambda: mine * t, lambda: ad.exp(t), lambda: ad.sum(y),
                lambda: t @ mine, lambda: y.backward(grad=np.ones(2)), lambda: t.detach()):
        with pytest.raises(RuntimeError, match="another thread"):
            use()
    with pytest.raises(RuntimeError, match="another thread"):
        mine.grad = t                               # a grad from another thread's tape
    assert mine.grad is None
    # ... while reading it works, values and grad included
    assert t.numpy().tolist() == [1.0, 2.0] and t.shape == (2,) and t.dtype == np.float64
    assert y.numpy().tolist() == [3.0, 6.0] and t.grad.numpy().tolist() == [3.0, 3.0]
    assert t.requires_grad and t.is_leaf and "tensor(" in repr(t)
    assert (t > 1.5).tolist() == [False, True]
    # its values can be brought over as a new tensor of this thread
    u = ad.tensor(t) * 2.0
    assert u.numpy().tolist() == [2.0, 4.0]
    # and dropping it here releases it on its own tape
    before = live()
    del t, y
    assert live() == before                    # this thread's tape is untouched


def test_thread_tapes_are_reused_after_threads_exit():
    """Tensors dropped after their thread ended do not pin memory: 50 short-lived threads each
    create and return a tensor, which the main thread reads and drops."""
    out = []

    def work(i):
        out.append(ad.tensor([float(i)]) * 2.0)

    for i in range(50):
        th = threading.Thread(target=work, args=(i,))
        th.start()
        th.join()
    assert sorted(o.item() for o in out) == [2.0 * i for i in range(50)]
    out.clear()
    # a new thread gets a working tape with grad mode on
    res = []

    def check():
        res.append((ad.is_grad_enabled(), ad.tape_stats()["live_nodes"]))
        x = ad.tensor(2.0, requires_grad=True)
        (x * x).backward()
        res.append(x.grad.item())

    th = threading.Thread(target=check)
    th.start()
    th.join()
    assert res == [(True, 0), 4.0]


def test_no_grad_is_per_thread():
    seen = []
    ready, done = threading.Event(), threading.Event()

    def other():
        ready.wait()
        x = ad.tensor(1.0, requires_grad=True)
        seen.append((ad.is_grad_enabled(), (x * 2.0).requires_grad))
        done.set()

    th = threading.Thread(target=other)
    th.start()
    with ad.no_grad():
        ready.set()
        done.wait()
    th.join()
    assert seen == [(True, True)]


def _spinner():
    """A thread that counts while it holds the GIL; returns (counter, stop)."""
    counter, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    th = threading.Thread(target=spin, daemon=True)
    th.start()
    return counter, stop, th


def test_short_calls_keep_the_gil_and_long_work_releases_it():
    # A switch interval of 0.5 s: while this thread runs Python or holds the GIL in a call, the
    # spinner gets the GIL only after half a second. So it counts during a call exactly when the
    # call released the GIL (small ops keep it: releasing costs a fifth of their time).
    small = ad.tensor(np.ones(3), requires_grad=True)
    big = ad.tensor(np.linspace(0.0, 1.0, 4_000_000), requires_grad=True)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.5)
    counter, stop, th = _spinner()
    try:
        time.sleep(0)                             # the spinner has run; this thread holds the GIL
        before = counter[0]
        y = small
        for _ in range(300):                      # ~1 ms of short calls
            y = ad.tanh(y * 0.5 + small)
            if counter[0] != before:              # (a released GIL would stall here for 0.5 s)
                break
        counts_small = counter[0] - before
        released = False
        for _ in range(5):                        # the spinner may not be scheduled at once
            before = counter[0]
            ad.exp(big)                           # 4 * 10^6 elements: released
            if counter[0] != before:
                released = True
                break
    finally:
        stop.set()
        sys.setswitchinterval(previous)
        th.join()
    assert released
    assert counts_small == 0 and np.isfinite(y.numpy()).all()


def test_cross_thread_reads_and_drops_during_long_work_do_not_deadlock():
    # The main thread runs big ops and backward (the core releases the GIL inside them, holding
    # its tape lock); a second thread meanwhile reads and drops tensors of the main thread's tape,
    # which needs that lock while holding the GIL. The core never waits for the GIL under a lock.
    x = ad.tensor(np.linspace(-1.0, 1.0, 100_000), requires_grad=True)
    shared = [ad.tensor(np.full(50_000, float(i))) for i in range(200)]
    errors, sums = [], []

    def reader():
        try:
            while shared:
                t = shared.pop()
                sums.append(float(t.numpy()[0]))
                del t
        except BaseException as e:
            errors.append(e)

    th = threading.Thread(target=reader)
    th.start()
    for _ in range(30):
        x.grad = None
        (ad.tanh(x * 2.0) * x).sum().backward()
    th.join(timeout=60)
    assert not th.is_alive() and not errors, errors
    assert sorted(sums) == [float(i) for i in range(200)]
    t = np.tanh(2 * x.numpy())
    np.testing.assert_allclose(x.grad.numpy(), 2 * (1 - t * t) * x.numpy() + t, rtol=1e-13, atol=1e-15)
