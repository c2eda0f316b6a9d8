"""Command line of the benchmark suite: ``python -m benchmarks [--quick] [--only NAMES]``.

Only the standard library is imported at module level: thread counts and OpenBLAS settings are
read by NumPy's BLAS when it is first loaded, so they are fixed in ``os.environ`` before any
workload (and NumPy) is imported.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys

THREAD_VARIABLES = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "PYAUTODIFF_NUM_THREADS"]
# Set on this machine for older OpenBLAS builds that misbehave on its CPU; they force a slower
# kernel on a current NumPy (on the 2-core EPYC here, Haswell instead of SkylakeX: 512x512 GEMM
# 4.3 ms instead of 2.7 ms). Removed together, for this process and its children only.
OPENBLAS_OVERRIDES = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"]
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
SWEEP_NAME = "backward_sweep"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="pyautodiff against hand-written NumPy, PyTorch, JAX, HIPS autograd and "
                    "micrograd: gradients checked, then timed (medians of interleaved repeats).")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and few repeats: proves the suite works end to end "
                             "(gradients agree, files written); not for quoting numbers")
    parser.add_argument("--only", default="",
                        help="comma-separated workloads, e.g. scalar_chain,small_mlp; a family "
                             "name selects all its members (deep_chain, jacobian); "
                             f"'{SWEEP_NAME}' is the C backward-sweep micro-benchmark")
    parser.add_argument("--contestants", default="",
                        help="comma-separated subset of pyautodiff,numpy,torch,jax,jax_jit,"
                             "autograd,micrograd (the hand-written reference always runs)")
    parser.add_argument("--output", default="",
                        help="file stem under benchmarks/results/ (default: partial with "
                             "--only/--contestants, else quick for --quick, else latest)")
    parser.add_argument("--keep-openblas-env", action="store_true",
                        help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE as the environment sets them")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--cell", default="", help=argparse.SUPPRESS)  # NAME:KEY, child process
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def pin_environment(keep_openblas_env):
    """One thread everywhere, before any numeric library loads.
    Returns the OpenBLAS overrides removed and those kept, as {name: value}."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = "1"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["JAX_ENABLE_X64"] = "1"
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in xla_flags:
        os.environ["XLA_FLAGS"] = f"{xla_flags} {XLA_ONE_THREAD}".strip()
    # A re-executed interpreter finds them already gone: it learns what was removed from here.
    removed = json.loads(os.environ.get("BENCHMARKS_OPENBLAS_REMOVED", "{}"))
    kept = {}
    for variable in OPENBLAS_OVERRIDES:
        if variable in os.environ:
            if keep_openblas_env:
                kept[variable] = os.environ[variable]
            else:
                removed[variable] = os.environ.pop(variable)
    os.environ["BENCHMARKS_OPENBLAS_REMOVED"] = json.dumps(removed)
    return removed, kept


def pin_before_numpy(module, argv, keep_openblas_env):
    """pin_environment, in a fresh interpreter running ``python -m module *argv`` if NumPy's BLAS
    has already read its settings in this one."""
    if "numpy" in sys.modules and not os.environ.get("BENCHMARKS_REEXEC"):
        os.environ["BENCHMARKS_REEXEC"] = "1"
        pin_environment(keep_openblas_env)
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", module, *argv])
    return pin_environment(keep_openblas_env)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    removed, kept = pin_before_numpy("benchmarks", argv, args.keep_openblas_env)

    from benchmarks import harness, peers, report, workloads

    if args.list:
        for name in workloads.NAMES:
            print(f"{name:18s} {workloads.load(name).TITLE}")
        print(f"{SWEEP_NAME:18s} C micro-benchmark of the backward sweep alone (ad._bench_sweep)")
        return 0

    cfg = dataclasses.replace(harness.QUICK if args.quick else harness.FULL,
                              keep_openblas_env=args.keep_openblas_env)

    if args.cell:
        name, key = args.cell.split(":")
        record = harness.run_single_cell(workloads.load(name), key, cfg, args.memory_only)
        print(harness.RESULT_MARKER + json.dumps(record), flush=True)
        return 0

    wanted = set(peers.ORDER)
    if args.contestants:
        wanted = {key.strip() for key in args.contestants.split(",") if key.strip()}
        unknown = wanted - set(peers.ORDER)
        if unknown:
            raise SystemExit(f"unknown contestant(s): {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(peers.ORDER)}")
        wanted.add("numpy")
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    if not only:
        names, run_sweep = list(workloads.NAMES), True
    else:
        run_sweep = SWEEP_NAME in only
        rest = [name for name in only if name != SWEEP_NAME]
        names = workloads.select(",".join(rest)) if rest else []
    # A partial run must not overwrite the full one that the README points at.
    stem = args.output or ("partial" if (args.only or args.contestants) else
                           "quick" if args.quick else "latest")

    started = datetime.datetime.now().astimezone()
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([invocation(), *map(shlex.quote, argv)]).strip(),
        "mode": "quick" if args.quick else "full",
        "loadavg_start": os.getloadavg(),
        "environment": {
            "set": {v: os.environ[v] for v in [*THREAD_VARIABLES, "JAX_ENABLE_X64", "XLA_FLAGS"]},
            "removed_for_this_run": removed,
            "kept": kept,
        },
        "config": {k: v for k, v in vars(cfg).items()},
    }

    results = []
    for name in names:
        workload = workloads.load(name)
        print(f"[{name}] {workload.TITLE}", file=sys.stderr, flush=True)
        result = harness.run_workload(
            workload, cfg, wanted,
            lambda wname, key, timeout_s, memory_only=False: harness.spawn_cell(
                wname, key, cfg, timeout_s, memory_only))
        for cell in result["cells"]:
            print(f"    {cell['display']:30s} {report.describe_cell(result, cell)}",
                  file=sys.stderr, flush=True)
        print(f"    ({result['elapsed_s']:.1f} s)", file=sys.stderr, flush=True)
        results.append(result)

    sweep = harness.run_backward_sweep(cfg) if run_sweep else None
    if sweep is not None:
        print(f"[{SWEEP_NAME}] {report.describe_sweep(sweep)}", file=sys.stderr)

    meta.update(machine_info(), versions=versions(peers), threads=peers.thread_settings(),
                loadavg_end=os.getloadavg(),
                elapsed_s=(datetime.datetime.now().astimezone() - started).total_seconds())
    written, table = report.write(meta, results, sweep, os.path.join(ROOT, "benchmarks", "results"),
                                  stem)
    if stem == "latest":
        written.append(report.update_readme(os.path.join(ROOT, "benchmarks", "README.md"),
                                            meta, results, sweep))
    print(table)
    for path in written:
        print(f"wrote {os.path.relpath(path, os.getcwd())}", file=sys.stderr)
    failures = report.failures(results, sweep)
    if args.quick and not (args.only or args.contestants):
        # the op matrix's quick subset (seconds): CI sees its gradients agree too
        from benchmarks import opmatrix

        print("[opmatrix] quick subset (python -m benchmarks.opmatrix --quick)", file=sys.stderr)
        failures += opmatrix.measure_and_write(
            True, keep_openblas_env=args.keep_openblas_env, removed=removed, kept=kept,
            command=f"{meta['command']} (op matrix quick subset)")
        # intra-op threads: 1 and 2 threads give the same numbers (timings are not checked here)
        from benchmarks import threads

        print("[threads] 1 against 2 threads (python -m benchmarks.threads --quick)", file=sys.stderr)
        rows = threads.measure(10**6, 1, 1)
        failures += [f"threads: {r['case']} differs between 1 and 2 threads" for r in rows if not r["bit_identical"]]
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def invocation():
    as_script = os.path.basename(sys.argv[0]) == "run.py"
    return "python benchmarks/run.py" if as_script else "python -m benchmarks"


def machine_info():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            fields = dict(line.split(":", 1) for line in cpuinfo if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        cpu = (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, "
               f"model {fields.get('model', '?')}, stepping {fields.get('stepping', '?')})")
    except OSError:
        cpu = platform.processor() or "unknown"
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def versions(peers):
    import importlib.metadata

    found = {key: peers.version(key) for key in peers.ORDER if key != "jax_jit"}
    for extra in ("scipy", "cffi", "matplotlib", "threadpoolctl"):
        try:
            found[extra] = f"{extra} {importlib.metadata.version(extra)}"
        except importlib.metadata.PackageNotFoundError:
            found[extra] = f"{extra} not installed"
    module = sys.modules.get("pyautodiff")
    if module is not None:
        found["pyautodiff_path"] = os.path.dirname(getattr(module, "__file__", "") or "")
    return found


if __name__ == "__main__":  # `python benchmarks/run.py`: make the package importable
    sys.path.insert(0, ROOT)
    from benchmarks.run import main as package_main

    sys.exit(package_main())
