"""Issue 16, item 3: a sweep that fails part-way (out of memory, an anomaly, a rule that raises)
leaves every .grad and the graph exactly as they were, so the caller can free memory and retry."""
import os
import subprocess
import sys

import numpy as np
import pytest

import pyautodiff as ad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sqrt_twice_graph():
    """w (owning a grad of 10s) reached last by the sweep, after z's two sqrt paths, whose
    contributions at z = 0 are +inf and -inf: their sum is anomaly mode's NaN."""
    w = ad.tensor([1.0, 2.0], requires_grad=True)
    w.grad = np.full(2, 10.0)
    z = ad.tensor([0.0, 1.0], requires_grad=True)
    zz = z * 1.0
    loss = (ad.sqrt(zz) - ad.sqrt(zz)).sum() + (w * 3).sum()
    return w, z, loss


def test_an_error_part_way_through_backward_changes_no_grad_and_keeps_the_graph():
    # w's contribution is computed before the sweep reaches the sqrt nodes; it used to be added
    # to w.grad at once, and the graph behind it released: the retry then said "backward through
    # the graph a second time"
    w, z, loss = sqrt_twice_graph()
    live = ad.tape_stats()["live_nodes"]
    with pytest.raises(FloatingPointError, match="sqrt"):
        with ad.detect_anomaly():
            loss.backward()
    assert w.grad.numpy().tolist() == [10.0, 10.0]
    assert z.grad is None
    assert ad.tape_stats()["live_nodes"] == live
    loss.backward()                                   # the same graph, outside anomaly mode
    assert w.grad.numpy().tolist() == [13.0, 13.0]    # 10 + d(3w)/dw
    assert np.isnan(z.grad.numpy()[0]) and z.grad.numpy()[1] == 0.0   # inf - inf; 1/(2 sqrt 1) twice, opposite


def test_a_grad_someone_holds_is_not_changed_by_a_failed_backward():
    w, z, loss = sqrt_twice_graph()
    held = w.grad
    with pytest.raises(FloatingPointError):
        with ad.detect_anomaly():
            loss.backward(retain_graph=True)
    loss.backward()
    assert held.numpy().tolist() == [10.0, 10.0]      # accumulated into a copy, as PyTorch does
    assert w.grad.numpy().tolist() == [13.0, 13.0]


def test_memory_error_at_every_allocation_of_every_sweep():
    # the SQLite way: tools/oom_sweep.py builds a copy of the package whose core fails its n-th
    # allocation on request (csrc/fault.c) and fails each allocation in turn of backward,
    # backward(create_graph=True), grad, value_and_grad, vjp, jvp, hvp, hessian, jacrev, jacfwd,
    # autograd.grad and grad of grad; after each MemoryError the grads and live nodes must be as
    # before and a retry must give the result of a run that never failed (csrc/tests/test_oom.c
    # does the same in C, under the sanitizers, in tools/ctest.sh)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "oom_sweep.py")], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "oom_sweep: 0 problems" in r.stdout
    counts = [int(line.split(": ")[1].split()[0]) for line in r.stdout.splitlines() if "allocations failed" in line]
    assert len(counts) == 13 and min(counts) > 0, r.stdout
