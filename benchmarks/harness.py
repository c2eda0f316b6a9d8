"""Verify, then time: the measurement method shared by every workload.

A workload module builds one ``Cell`` per contestant. The harness

1. runs each cell once under a time cap and compares its loss and gradients with the hand-written
   reference (a contestant whose gradients disagree is reported, never timed);
2. warms each cell up once more, picks an inner loop count so that one sample lasts at least
   ``min_sample_s`` (timer resolution and loop overhead stay negligible);
3. times the cells in interleaved rounds (every cell once per round, rotating the order), so that
   load from other tenants of this shared machine hits all contestants alike and the ratios,
   which are what the report is about, stay meaningful even when absolute times drift;
4. reports median, min and max of the per-call times.

Cells that may crash the interpreter (JAX jit of very deep graphs has died with SIGSEGV), that
need a cap on C++ code that SIGALRM cannot interrupt (XLA compiles), or whose memory must be
measured on a fresh heap run in a child process (``python -m benchmarks --cell NAME:KEY``).
"""

import dataclasses
import gc
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np

from benchmarks import peers
from benchmarks.peers import Unavailable

RESULT_MARKER = "BENCHMARK_CELL_RESULT "


@dataclasses.dataclass
class Config:
    quick: bool
    budget_s: float  # timing budget of one workload, all in-process cells together
    min_samples: int
    max_samples: int
    min_sample_s: float
    call_cap_s: float  # a first call longer than this marks the contestant as over the cap
    slow_call_s: float  # calls longer than this are sampled once after the verification call
    reuse_first_call_s: float  # calls longer than this are timed on the verification call alone
    child_timeout_s: float  # wall-clock cap of one isolated cell, imports and compiles included
    grad_rtol: float = 1e-6
    keep_openblas_env: bool = False


FULL = Config(quick=False, budget_s=4.0, min_samples=5, max_samples=40, min_sample_s=0.05,
              call_cap_s=40.0, slow_call_s=2.0, reuse_first_call_s=8.0,
              child_timeout_s=150.0)
QUICK = Config(quick=True, budget_s=0.25, min_samples=3, max_samples=5, min_sample_s=0.005,
               call_cap_s=5.0, slow_call_s=0.5, reuse_first_call_s=2.0,
               child_timeout_s=40.0)


@dataclasses.dataclass
class Cell:
    """One contestant's forward + backward of one workload, with its inputs already in place."""

    step: object  # () -> out; one forward + backward
    grads: object  # (out) -> (loss: float, [np.ndarray, ...]) in the workload's leaf order
    sync: object = None  # (out) -> None; waits for asynchronous results (JAX)
    compile_s: float = None  # JAX jit: trace + XLA compile, measured apart from the step
    note: str = ""
    # (out, extra) from a forward with the graph still alive; lets a cell report what its
    # library says about the graph's memory (pyautodiff's tape_stats) on the memory run.
    probe: object = None
    # (loss, [arrays]) this cell's output must match, when it is not the reference cell's output
    # (a workload timing a different quantity as its baseline, e.g. one gradient against an
    # HVP); checked like the reference, on the reference cell too.
    expected: object = None


class CapExceeded(BaseException):
    # BaseException so that a library's own `except Exception` cannot swallow the cap.
    pass


@contextmanager
def time_cap(seconds):
    def on_alarm(signum, frame):
        raise CapExceeded(seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---- memory (Linux /proc; reported as unavailable elsewhere) ----

def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak_rss():
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so the peak of one call can be read.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


# ---- one call ----

def _run(cell):
    out = cell.step()
    if cell.sync is not None:
        cell.sync(out)
    return out


def first_call(cell, memory_nodes=None):
    """The verification call; with memory_nodes, also the peak-RSS growth per graph node."""
    memory = None
    extra = {}
    if memory_nodes:
        gc.collect()
        try:
            _reset_peak_rss()
            rss_before = _status_kib("VmRSS")
        except OSError as exc:
            memory = {"error": f"peak RSS not measurable here: {exc}"}
            memory_nodes = None
    start = time.perf_counter()
    if cell.probe is not None and memory_nodes:
        out, extra = cell.probe()
    else:
        out = _run(cell)
    elapsed = time.perf_counter() - start
    if memory_nodes:
        peak = _status_kib("VmHWM")
        memory = {
            "nodes": memory_nodes,
            "peak_rss_growth_bytes": peak - rss_before,
            "peak_rss_bytes_per_node": (peak - rss_before) / memory_nodes,
            "method": "VmHWM reset via /proc/self/clear_refs, minus VmRSS before the call; "
                      "first call in a fresh process",
        }
        for key, value in extra.items():
            memory[key] = value
    return out, elapsed, memory


def gradient_error(reference, candidate):
    """Largest normwise relative error over the loss and every gradient, or a shape complaint."""
    ref_loss, ref_grads = reference
    loss, grads = candidate
    if len(grads) != len(ref_grads):
        return None, f"{len(grads)} gradients, expected {len(ref_grads)}"
    worst = abs(float(loss) - ref_loss) / max(abs(ref_loss), 1e-300)
    if not np.isfinite(worst):  # a NaN would slip through every comparison below
        return float("inf"), f"loss is {loss}, expected {ref_loss}"
    for index, (ref, got) in enumerate(zip(ref_grads, grads)):
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(got)
        if got.shape != ref.shape:
            return None, f"gradient {index} has shape {got.shape}, expected {ref.shape}"
        scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-300)
        error = float(np.max(np.abs(got.astype(np.float64) - ref))) / scale if ref.size else 0.0
        if not np.isfinite(error):
            return float("inf"), f"gradient {index} is not finite"
        worst = max(worst, error)
    return worst, None


# ---- interleaved timing ----

def _sample(cell, inner):
    # Every sample starts from the same heap state; collections during the sample still count.
    # (Cheap because run_workload freezes the objects that exist before timing starts.)
    gc.collect()
    start = time.perf_counter()
    for _ in range(inner):
        out = _run(cell)
    elapsed = time.perf_counter() - start
    del out
    return elapsed / inner


def time_cells(cells, cfg, first_seconds):
    estimate, inner, wanted, samples, on_first_call = {}, {}, {}, {}, set()
    for key, cell in cells.items():
        if first_seconds[key] > cfg.reuse_first_call_s:
            # So slow that one-off costs in the first call (JAX compiling each primitive: well
            # under a second) are noise, and a second call would cost the run another minute.
            estimate[key], inner[key], wanted[key] = first_seconds[key], 1, 1
            samples[key] = [first_seconds[key]]
            on_first_call.add(key)
            continue
        # Warm-up after the verification call (which may have paid one-off costs such as JAX
        # compiling each primitive); its time sizes the inner loop. A call still slower than
        # slow_call_s is sampled just this once, so a 15 s contestant costs two calls, not ten.
        warm = _sample(cell, 1)
        estimate[key] = warm
        inner[key] = max(1, int(cfg.min_sample_s / max(warm, 1e-9)))
        slow = warm > cfg.slow_call_s
        wanted[key] = 1 if slow else cfg.min_samples
        samples[key] = [warm] if slow else []

    start = time.perf_counter()
    for round_index in range(cfg.max_samples):
        over_budget = time.perf_counter() - start > cfg.budget_s
        active = [key for key in cells
                  if len(samples[key]) < wanted[key]
                  or (not over_budget and estimate[key] <= cfg.slow_call_s)]
        if not active:
            break
        shift = round_index % len(active)
        for key in active[shift:] + active[:shift]:
            samples[key].append(_sample(cells[key], inner[key]))
    return {
        key: {
            "median_s": float(np.median(values)),
            "min_s": float(np.min(values)),
            "max_s": float(np.max(values)),
            "samples": len(values),
            "inner": inner[key],
            "timed_on_first_call": key in on_first_call,
        }
        for key, values in samples.items()
    }


# ---- a workload ----

def _cell_record(workload, key):
    return {
        "contestant": key,
        "display": workload.HAND_LABEL if key == "numpy" else peers.DISPLAY[key],
        "status": "ok",
        "reason": "",
        "note": "",
        "isolated": False,
    }


def _build_and_verify(workload, key, data, size, reference, cfg, memory_nodes=None):
    """Build a cell, make its first call and, given a reference, check its gradients.

    Returns (record, cell, first_call_seconds, (loss, gradients)); cell is None when the
    contestant cannot be timed (unavailable, failed, over the cap, or wrong).
    """
    record = _cell_record(workload, key)
    try:
        with time_cap(cfg.call_cap_s):
            started = time.perf_counter()
            cell = workload.BUILDERS[key](data, size)
            record["build_s"] = time.perf_counter() - started
            record["note"] = cell.note
            if cell.compile_s is not None:
                record["compile_s"] = cell.compile_s
            out, seconds, memory = first_call(cell, memory_nodes)
            record["first_call_s"] = seconds
            measured = cell.grads(out)
            del out
    except Unavailable as exc:
        record.update(status=exc.status, reason=exc.reason)
        return record, None, None, None
    except CapExceeded:
        record.update(status="timeout", reason=f"first call exceeded the {cfg.call_cap_s:g} s cap",
                      lower_bound_s=cfg.call_cap_s)
        return record, None, None, None
    except Exception as exc:  # RecursionError included: micrograd's is a result, not a bug here
        record.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        return record, None, None, None
    if memory is not None:
        record["memory"] = memory
    if cell.expected is not None:
        reference = cell.expected
    if reference is not None and not check_against(record, reference, measured, cfg):
        return record, None, None, measured
    return record, cell, seconds, measured


def check_against(record, reference, measured, cfg):
    error, complaint = gradient_error(reference, measured)
    record["grad_error"] = error
    if complaint or error > cfg.grad_rtol:
        record.update(status="mismatch",
                      reason=complaint or f"loss or gradients differ from the reference by "
                                          f"{error:.2e} (normwise relative; tolerance "
                                          f"{cfg.grad_rtol:g})")
        return False
    return True


def _header(workload, size):
    return {
        "name": workload.NAME,
        "title": workload.TITLE,
        "per_op": workload.PER_OP,
        "n_ops": workload.n_ops(size),
        "size": size,
        "hand_label": workload.HAND_LABEL,
        "leaves": workload.LEAVES,
        "targets": workload.TARGETS,
        "notes": list(getattr(workload, "NOTES", [])),
    }


def _reference(workload, data, size, cfg):
    record, cell, seconds, measured = _build_and_verify(workload, "numpy", data, size, None, cfg)
    if cell is None:
        raise RuntimeError(f"{workload.NAME}: the hand-written reference failed: {record['reason']}")
    record.setdefault("grad_error", 0.0)
    return record, cell, seconds, measured


def _isolated_keys(workload):
    isolated = getattr(workload, "ISOLATED", set())
    return set(peers.ORDER) if isolated == "all" else set(isolated)


def run_workload(workload, cfg, wanted, run_isolated, freeze=True):
    """Run one workload over the wanted contestants. ``run_isolated(name, key)`` runs a child."""
    started = time.perf_counter()
    size = workload.size(cfg.quick)
    result = _header(workload, size)
    isolated = _isolated_keys(workload)
    data = workload.make_data(size)

    records, cells, first_seconds = {}, {}, {}
    if "numpy" not in isolated:
        record, cell, seconds, reference = _reference(workload, data, size, cfg)
        records["numpy"], cells["numpy"], first_seconds["numpy"] = record, cell, seconds
    else:
        reference = None
    for key in peers.ORDER:
        if key == "numpy" or key not in wanted:
            continue
        if key in workload.NOT_APPLICABLE or key not in workload.BUILDERS:
            record = _cell_record(workload, key)
            record.update(status="n/a", reason=workload.NOT_APPLICABLE.get(key, "not implemented"))
            records[key] = record
            continue
        if cfg.quick and key in getattr(workload, "SKIP_IN_QUICK", {}):
            record = _cell_record(workload, key)
            record.update(status="skipped", reason=workload.SKIP_IN_QUICK[key])
            records[key] = record
            continue
        if key in isolated:
            continue
        record, cell, seconds, _ = _build_and_verify(workload, key, data, size, reference, cfg)
        records[key] = record
        if cell is not None:
            cells[key], first_seconds[key] = cell, seconds

    # Imported libraries and built inputs move to GC's permanent generation: a full collection
    # in a process with torch and jax loaded scans ~240,000 objects (0.1 s here), a cost that
    # depends on what else is imported, not on the library being timed. A caller that runs
    # many small workloads (the op matrix) freezes around all of them instead (freeze=False).
    if freeze:
        gc.collect()
        gc.freeze()
    try:
        for key, timing in time_cells(cells, cfg, first_seconds).items():
            records[key].update(timing)
    finally:
        if freeze:
            gc.unfreeze()
    cells.clear()
    gc.collect()

    for key in peers.ORDER:
        if key in isolated and (key in wanted or key == "numpy") and key not in records:
            records[key] = run_isolated(workload.NAME, key, child_timeout(workload, key, cfg))
        elif getattr(workload, "MEASURE_MEMORY", False) and records.get(key, {}).get("status") == "ok":
            # Timed here, interleaved with the others; memory needs a fresh heap, so one more
            # first call in a child process measures it.
            child = run_isolated(workload.NAME, key, child_timeout(workload, key, cfg),
                                 memory_only=True)
            records[key]["memory"] = child.get("memory") or {
                "error": f"memory run {child['status']}: {child.get('reason', '')}"}
    result["cells"] = [records[key] for key in peers.ORDER if key in records]
    result["elapsed_s"] = time.perf_counter() - started
    return result


def run_single_cell(workload, key, cfg, memory_only=False):
    """The child side of an isolated cell: first call (with memory), verification, timing.
    With memory_only, just the first call: the parent has verified and timed the cell."""
    size = workload.size(cfg.quick)
    data = workload.make_data(size)
    memory_nodes = workload.n_ops(size) if getattr(workload, "MEASURE_MEMORY", False) else None
    if key in workload.NOT_APPLICABLE or key not in workload.BUILDERS:
        record = _cell_record(workload, key)
        record.update(status="n/a", reason=workload.NOT_APPLICABLE.get(key, "not implemented"))
        return record
    # The contestant's first call comes before the reference's so that its memory is measured
    # on a fresh heap; its gradients are checked right after.
    record, cell, seconds, measured = _build_and_verify(workload, key, data, size, None, cfg,
                                                        memory_nodes)
    if memory_only:
        return record
    if cell is not None:
        if key == "numpy":
            record["grad_error"] = 0.0
        else:
            reference = cell.expected or _reference(workload, data, size, cfg)[3]
            if not check_against(record, reference, measured, cfg):
                cell = None
    if cell is not None:
        gc.collect()
        gc.freeze()
        record.update(time_cells({key: cell}, cfg, {key: seconds})[key])
    record["isolated"] = True
    return record


def child_timeout(workload, key, cfg):
    """The wall-clock cap of an isolated cell; a workload may lower it for a contestant whose
    compile alone would eat the run's time budget (JAX jit of a 10,000-op scalar graph ran for
    two minutes here before dying with SIGSEGV)."""
    override = getattr(workload, "CHILD_TIMEOUT_S", {}).get(key)
    if override is None:
        return cfg.child_timeout_s
    return min(cfg.child_timeout_s, override[1] if cfg.quick else override[0])


def spawn_cell(name, key, cfg, timeout_s, memory_only=False):
    """Run one cell in a fresh interpreter; crashes and hangs become statuses, not failures."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "benchmarks", "--cell", f"{name}:{key}"]
    if memory_only:
        command.append("--memory-only")
    if cfg.quick:
        command.append("--quick")
    if cfg.keep_openblas_env:
        command.append("--keep-openblas-env")
    placeholder = {
        "contestant": key,
        "display": peers.DISPLAY[key],
        "isolated": True,
        "note": "",
    }
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return dict(placeholder, status="timeout", lower_bound_s=timeout_s,
                    reason=f"no result within {timeout_s:g} s (imports, build, compile "
                           f"and verification included); child process stopped")
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            record = json.loads(line[len(RESULT_MARKER):])
            if done.returncode < 0:  # seen with JAX after a capped trace: dies at interpreter exit
                record["note"] = (f"{record.get('note', '')} The child process died with "
                                  f"{signal.Signals(-done.returncode).name} after reporting.").strip()
            return record
    tail = " | ".join(done.stderr.strip().splitlines()[-3:])
    if done.returncode < 0:
        signame = signal.Signals(-done.returncode).name
        return dict(placeholder, status="crashed", reason=f"child process died with {signame}; {tail}")
    return dict(placeholder, status="error",
                reason=f"child process exited with {done.returncode} and no result; {tail}")


# ---- the C-level micro-benchmark ----

def run_backward_sweep(cfg):
    """ns per node of pyautodiff's backward sweep alone, timed inside C by ad._bench_sweep(n):
    set against deep_chain's per-op time, it tells the core's cost from the bindings'."""
    nodes = 100_000 if cfg.quick else 1_000_000
    result = {"name": "backward_sweep", "nodes": nodes}
    try:
        ad = peers.load("pyautodiff")
    except Unavailable as exc:
        return dict(result, status=exc.status, reason=exc.reason)
    bench = getattr(ad, "_bench_sweep", None)
    if bench is None:
        return dict(result, status="not available",
                    reason="ad._bench_sweep(n_nodes) does not exist yet")
    try:
        with time_cap(cfg.call_cap_s):
            bench(nodes)  # warm-up: arena chunks allocated, pages touched
            values = [float(bench(nodes)) for _ in range(cfg.min_samples)]
    except CapExceeded:
        return dict(result, status="timeout", reason=f"exceeded the {cfg.call_cap_s:g} s cap")
    except Exception as exc:
        return dict(result, status="error", reason=f"{type(exc).__name__}: {exc}")
    return dict(result, status="ok", median_ns_per_node=float(np.median(values)),
                min_ns_per_node=min(values), max_ns_per_node=max(values), samples=len(values))
