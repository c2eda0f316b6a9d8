"""The seed's table of gradient estimation methods, measured.

For the chained Rosenbrock function of n inputs

    f(x) = sum_i 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2,    i = 0 .. n-2,

written with pyautodiff ops, the gradient is computed by forward differences, central differences
(both ``ad.numerical_grad``), a hand-written NumPy gradient, reverse mode (``backward``) and
forward mode twice: n separate ``ad.jvp`` calls, one per basis direction e_i (the seed's "n forward
passes"), and ``ad.jacfwd``, which pushes all n directions through one sweep of width n. Each is
compared with the hand-written gradient and timed; the result is a Markdown table on stdout, JSON
in examples/results/, and a log-log plot of time against n when matplotlib is installed.

The width-n sweep carries an n x n tangent block through every node of f's graph (8 n^2 bytes:
800 MB per node at n = 10^4); its measured peak memory for this f is about six such blocks,
~730 MB at n = 4000, so several GB at n = 10^4. It therefore runs only for n <= 4000
(``--max-sweep-width``); above that its row says "not run".

    python examples/gradient_estimation.py            # n = 10 .. 10^4, every method in full
    python examples/gradient_estimation.py --quick    # at n = 10^4, the O(n^2) methods run on 1000
                                                      # coordinates and are extrapolated (labelled)
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import pyautodiff as ad

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (10, 100, 1000, 10000)
SEED = 0
MAX_SWEEP_WIDTH = 4000

JVP_CALLS = "forward mode, n jvp calls"
WIDTH_N_SWEEP = "forward mode, one width-n sweep"
# The seed's verdicts (gradient-estimation-notes.md), for the summary. None: the seed left it blank.
SEED_VERDICTS = {
    "forward difference": ("❌", "❌"),
    "central difference": ("❌", "❌"),
    "analytic (NumPy)": ("✅", "❌"),
    # the seed's "Backpropagation" row: its "Reverse mode automatic" row is blank
    "reverse mode": ("✅", "✅"),
    # the seed's "Forward mode automatic" row (n forward passes), for both ways of making them
    JVP_CALLS: ("✅", "❌"),
    WIDTH_N_SWEEP: ("✅", "❌"),
}
# Where the summary draws the line. Rounding alone puts float64 gradients within ~1e-15 of each
# other; "low cost" means a bounded multiple of one function evaluation, not a multiple of n.
ACCURATE_REL_ERROR = 1e-12
CHEAP_TIMES_F_EVAL = 20.0


# ---------------------------------------------------------------------------------------------
# The function, written with pyautodiff ops
# ---------------------------------------------------------------------------------------------
def rosenbrock(x):
    """The chained Rosenbrock function of a Tensor of shape (n,), n >= 2: O(n) work."""
    left, right = x[:-1], x[1:]
    return ad.sum(100.0 * (right - left ** 2) ** 2 + (1.0 - left) ** 2)


def rosenbrock_numpy(x):
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))


def rosenbrock_gradient(x):
    """The hand-derived gradient: every x[i] appears as the `left` of term i and the `right` of
    term i-1."""
    left, right = x[:-1], x[1:]
    residual = right - left ** 2
    grad = np.zeros_like(x)
    grad[:-1] += -400.0 * left * residual - 2.0 * (1.0 - left)
    grad[1:] += 200.0 * residual
    return grad


# ---------------------------------------------------------------------------------------------
# Timing and counting
# ---------------------------------------------------------------------------------------------
def _median_time(call, min_total=0.5, min_runs=5, max_runs=1000):
    """Median seconds per call and the last result. Calls are repeated at least min_runs times and
    until min_total seconds have passed, so neither the clock's resolution, a first-call warm-up
    nor one run slowed by other work on the machine shows."""
    times, result = [], None
    while len(times) < min_runs or (sum(times) < min_total and len(times) < max_runs):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


class _Counted:
    """f, counting its calls, so the table reports evaluations made rather than promised."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, *args):
        self.calls += 1
        return self.f(*args)


def _errors(estimate, reference):
    abs_error = float(np.max(np.abs(estimate - reference)))
    return abs_error, abs_error / float(np.max(np.abs(reference)))


# ---------------------------------------------------------------------------------------------
# The methods. Finite differences and the n jvp calls may run on a sample of the coordinates.
# ---------------------------------------------------------------------------------------------
def _sampled_coordinates(n, sample, rng):
    if sample is None or sample >= n:
        return None
    return np.sort(rng.choice(n, size=sample, replace=False))


def finite_difference(f, x0, method, coords):
    """ad.numerical_grad over all of x, or over the coordinates `coords` with the rest held fixed
    (the same perturbation per coordinate, so the time per coordinate carries over)."""
    if coords is None:
        function, point = f, ad.tensor(x0)
    else:
        def function(values):
            x = x0.copy()
            x[coords] = values
            return f(ad.tensor(x))
        point = x0[coords].copy()

    counted = _Counted(function)

    def gradient():
        counted.calls = 0
        return ad.numerical_grad(counted, point, method=method)
    seconds, grad = _median_time(gradient)
    return grad, seconds, counted.calls


def reverse_mode(f, x0):
    def gradient():
        x = ad.tensor(x0, requires_grad=True)
        f(x).backward()
        return x.grad.numpy()
    return _median_time(gradient)


def forward_mode_jvp_calls(f, x0, coords):
    """One ad.jvp per basis direction e_i: each call evaluates f and runs one sweep of width 1."""
    indices = range(x0.size) if coords is None else coords
    tangent = np.zeros_like(x0)

    def gradient():
        grad = np.empty(len(indices))
        for k, i in enumerate(indices):
            tangent[i] = 1.0
            _, tangent_out = ad.jvp(f, (x0,), (tangent,))
            tangent[i] = 0.0
            grad[k] = tangent_out.item()
        return grad
    seconds, grad = _median_time(gradient)
    return grad, seconds, len(indices)


def forward_mode_sweep(f, x0):
    """ad.jacfwd: f evaluated once, all n basis directions pushed through one sweep of width n."""
    jacobian = ad.jacfwd(f)
    return _median_time(lambda: jacobian(x0).numpy())


def _row(method, n, seconds, f_eval, cost, abs_error=None, rel_error=None, *, evaluations=None,
         sweeps=None, extrapolated=False, measured_coordinates=None, measured_seconds=None,
         note=None):
    return {"method": method, "n": n, "max_abs_error": abs_error, "max_rel_error": rel_error,
            "seconds": seconds, "seconds_per_f_eval": None if seconds is None else seconds / f_eval,
            "function_evaluations": evaluations, "sweeps": sweeps, "cost": cost,
            "extrapolated": extrapolated,
            "measured_coordinates": measured_coordinates, "measured_seconds": measured_seconds,
            "note": note}


def run_size(n, sample, max_sweep_width, rng, log):
    if n < 2:
        raise ValueError("the chained Rosenbrock function needs n >= 2")
    x0 = rng.uniform(-2.0, 2.0, n)
    f = rosenbrock
    with ad.no_grad():
        value = f(ad.tensor(x0)).item()
    if not math.isclose(value, rosenbrock_numpy(x0), rel_tol=1e-12):
        raise AssertionError(f"n={n}: pyautodiff f = {value!r}, NumPy f = {rosenbrock_numpy(x0)!r}")

    def evaluate():
        with ad.no_grad():
            return f(ad.tensor(x0))
    f_eval, _ = _median_time(evaluate)
    analytic_seconds, reference = _median_time(lambda: rosenbrock_gradient(x0))

    rows = [_row("analytic (NumPy)", n, analytic_seconds, f_eval, "1 NumPy pass, no f evals",
                 evaluations=0, note="the reference")]

    coords = _sampled_coordinates(n, sample, rng)
    for method, name, per_coordinate in (("forward", "forward difference", 1),
                                          ("central", "central difference", 2)):
        log(f"  n={n}: {name} ...")
        grad, seconds, calls = finite_difference(f, x0, method, coords)
        target = reference if coords is None else reference[coords]
        abs_error, rel_error = _errors(grad, target)
        if coords is None:
            rows.append(_row(name, n, seconds, f_eval, f"{calls} f evals", abs_error, rel_error,
                             evaluations=calls))
        else:
            # Only the per-coordinate loop scales with n; the one evaluation at x0 does not.
            total_calls = per_coordinate * n + (calls - per_coordinate * len(coords))
            estimate = seconds * total_calls / calls
            rows.append(_row(name, n, estimate, f_eval, f"{total_calls} f evals", abs_error,
                             rel_error, evaluations=total_calls, extrapolated=True,
                             measured_coordinates=len(coords), measured_seconds=seconds,
                             note=f"timed on {len(coords)} of {n} coordinates and extrapolated; "
                                  f"errors over those {len(coords)}"))

    log(f"  n={n}: reverse mode ...")
    seconds, grad = reverse_mode(f, x0)
    rows.append(_row("reverse mode", n, seconds, f_eval, "1 forward + 1 backward sweep",
                     *_errors(grad, reference), evaluations=1, sweeps=1))

    log(f"  n={n}: {JVP_CALLS} ...")
    grad, seconds, calls = forward_mode_jvp_calls(f, x0, coords)
    target = reference if coords is None else reference[coords]
    cost = f"{n} f evals + {n} sweeps of width 1"
    if coords is None:
        rows.append(_row(JVP_CALLS, n, seconds, f_eval, cost, *_errors(grad, target),
                         evaluations=calls, sweeps=calls))
    else:
        rows.append(_row(JVP_CALLS, n, seconds * n / calls, f_eval, cost, *_errors(grad, target),
                         evaluations=n, sweeps=n, extrapolated=True, measured_coordinates=calls,
                         measured_seconds=seconds,
                         note=f"timed on {calls} of {n} coordinates and extrapolated; "
                              f"errors over those {calls}"))

    if n <= max_sweep_width:
        log(f"  n={n}: {WIDTH_N_SWEEP} ...")
        seconds, grad = forward_mode_sweep(f, x0)
        rows.append(_row(WIDTH_N_SWEEP, n, seconds, f_eval, f"1 f eval + 1 sweep of width {n}",
                         *_errors(grad, reference), evaluations=1, sweeps=1))
    else:
        rows.append(_row(WIDTH_N_SWEEP, n, None, f_eval, "not run",
                         note=f"not run: n > --max-sweep-width {max_sweep_width}; its n x n "
                              f"tangents take {8 * n * n / 1e6:.0f} MB per graph node"))
    return f_eval, value, rows


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
def _seconds(s):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if float(f"{s / scale:.3g}") >= 1.0:  # 0.99995 s prints as 1 s, not 1e+03 ms
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _error(e):
    return "—" if e is None else f"{e:.2e}"


def markdown_table(rows):
    lines = ["| method | n | max abs error | max rel error | wall time | f evals / sweeps "
             "| time ÷ one f eval |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        if r["seconds"] is None:
            lines.append(f"| {r['method']} | {r['n']} | {r['note']} | | | | |")
            continue
        mark = " *" if r["extrapolated"] else ""
        abs_error = "reference" if r["note"] == "the reference" else _error(r["max_abs_error"])
        rel_error = "" if r["note"] == "the reference" else _error(r["max_rel_error"])
        lines.append(f"| {r['method']} | {r['n']} | {abs_error} | {rel_error} | "
                     f"{_seconds(r['seconds'])}{mark} | {r['cost']} | "
                     f"{r['seconds_per_f_eval']:.3g}{mark} |")
    return "\n".join(lines)


def summarize(rows, sizes, taylor_order):
    """The seed's two measurable columns, one line per method, decided by the numbers."""
    largest = max(sizes)
    summary = []
    for method, (seed_accurate, seed_cheap) in SEED_VERDICTS.items():
        mine = [r for r in rows if r["method"] == method and r["seconds"] is not None]
        if not mine:
            notes = [r["note"] for r in rows if r["method"] == method]
            summary.append({"method": method, "seed": [seed_accurate, seed_cheap],
                            "measured": None, "text": notes[0] if notes else "not run"})
            continue
        # a method capped below the largest n (the width-n sweep) is judged where it last ran
        at_largest = max(mine, key=lambda r: r["n"])
        at_smallest = min(mine, key=lambda r: r["n"])
        cost_growth = at_largest["seconds_per_f_eval"] / at_smallest["seconds_per_f_eval"]
        cheap = at_largest["seconds_per_f_eval"] <= CHEAP_TIMES_F_EVAL
        if method == "analytic (NumPy)":
            reverse = max(r["max_rel_error"] for r in rows if r["method"] == "reverse mode")
            accurate = taylor_order > 1.9 and reverse <= ACCURATE_REL_ERROR
            accuracy_text = (f"the reference: reverse mode agrees to {reverse:.1e}, "
                             f"taylor_test order {taylor_order:.2f}")
        else:
            worst = max(r["max_rel_error"] for r in mine)
            accurate = worst <= ACCURATE_REL_ERROR
            accuracy_text = f"worst relative error {worst:.1e}"
        measured = ["✅" if accurate else "❌", "✅" if cheap else "❌"]
        where = f"n={largest}" if at_largest["n"] == largest else \
            f"n={at_largest['n']}, the largest n it ran at"
        cost_text = (f"{at_largest['seconds_per_f_eval']:.3g}x one f eval at {where}, "
                     f"a ratio that changes {cost_growth:.3g}x from n={at_smallest['n']}")
        summary.append({"method": method, "seed": [seed_accurate, seed_cheap],
                        "measured": measured, "text": f"{accuracy_text}; {cost_text}"})
    return summary


def summary_markdown(summary):
    lines = ["| method | seed: accurate / low cost | measured: accurate / low cost | because |",
             "|---|:---:|:---:|---|"]
    for s in summary:
        measured = " / ".join(s["measured"]) if s["measured"] else "—"
        lines.append(f"| {s['method']} | {' / '.join(s['seed'])} | {measured} | {s['text']} |")
    return "\n".join(lines)


def plot(rows, f_evals, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written (pip install matplotlib to get one)"
    fig, ax = plt.subplots(figsize=(7, 6))
    for method in SEED_VERDICTS:
        mine = sorted((r for r in rows if r["method"] == method and r["seconds"] is not None),
                      key=lambda r: r["n"])
        if not mine:
            continue
        label = method
        skipped = [str(r["n"]) for r in rows if r["method"] == method and r["seconds"] is None]
        if skipped:
            label += f" (not run at n = {', '.join(skipped)}: memory)"
        line, = ax.plot([r["n"] for r in mine], [r["seconds"] for r in mine], "-", label=label)
        for r in mine:
            ax.plot(r["n"], r["seconds"], "o", color=line.get_color(),
                    markerfacecolor="none" if r["extrapolated"] else line.get_color())
    sizes = sorted(f_evals)
    ax.plot(sizes, [f_evals[n] for n in sizes], "k:", label="one f evaluation")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("n (inputs)")
    ax.set_ylabel("wall time for the gradient (s)")
    title = "Gradient of the chained Rosenbrock function"
    if any(r["extrapolated"] for r in rows):
        title += "\n(hollow markers: extrapolated from a sample of coordinates)"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    # below the axes: inside, it would hide the points of the steep lines
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot written to {path}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="time the O(n^2) methods on 1000 random coordinates at n=10^4 and "
                             "extrapolate (labelled *); writes gradient_estimation.quick.json/png")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                        help="values of n (default: %(default)s)")
    parser.add_argument("--sample", type=int, default=None,
                        help="for n above this, time finite differences and the n jvp calls on "
                             "this many random coordinates and extrapolate (default: none, or "
                             "1000 with --quick)")
    parser.add_argument("--max-sweep-width", type=int, default=MAX_SWEEP_WIDTH,
                        help="run the width-n forward sweep (ad.jacfwd, 8 n^2 bytes per graph "
                             "node) only for n up to this (default: %(default)s)")
    args = parser.parse_args(argv)
    sample = args.sample if args.sample is not None else (1000 if args.quick else None)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    rng = np.random.default_rng(SEED)
    rows, f_evals, f_values = [], {}, {}
    for n in args.sizes:
        f_evals[n], f_values[n], size_rows = run_size(n, sample, args.max_sweep_width, rng, log)
        rows += size_rows

    # The analytic gradient is the reference, so it is itself checked: its central-difference
    # error must shrink as eps^2 along a random direction.
    check_x = np.random.default_rng(SEED).uniform(-2.0, 2.0, 100)
    taylor = ad.taylor_test(rosenbrock_numpy, check_x, grad=rosenbrock_gradient)

    summary = summarize(rows, args.sizes, taylor.order)
    elapsed = time.perf_counter() - started
    command = "python examples/gradient_estimation.py" + (" " + " ".join(sys.argv[1:])
                                                          if argv is None and sys.argv[1:] else "")

    table = markdown_table(rows)
    print(f"Gradient of f(x) = sum 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2, x ~ U(-2, 2)^n "
          f"(seed {SEED}), float64.\n")
    print(table)
    if any(r["extrapolated"] for r in rows):
        print("\n\\* timed on a random sample of coordinates and extrapolated to all n; errors "
              "over the sampled coordinates only.")
    print("\nmax rel error = max|g - g_analytic| / max|g_analytic|. "
          "\"time ÷ one f eval\" divides by one evaluation of f under no_grad at the same n.")
    skipped = [r["n"] for r in rows if r["method"] == WIDTH_N_SWEEP and r["seconds"] is None]
    if skipped:
        print(f"The width-n sweep is not run at n = {', '.join(map(str, skipped))}: it holds an "
              f"n x n float64 tangent per graph node (--max-sweep-width {args.max_sweep_width}).")
    # Why the finite-difference errors grow with n: one step moves one or two terms of a sum whose
    # size grows with n, and f's rounding error (machine eps x |f|) is divided by the step h.
    sizes_text = ", ".join(f"{f_values[n]:.2g} at n={n}" for n in args.sizes)
    print(f"Finite-difference errors are mostly round-off, about machine eps x |f| / h, and |f| "
          f"grows with n ({sizes_text}).")
    print(f"\nThe analytic gradient itself: taylor_test order {taylor.order:.2f} "
          f"(expected {taylor.expected_order}) at n=100.\n")
    print("The seed's columns, measured (accurate: relative error <= "
          f"{ACCURATE_REL_ERROR:g}; low cost: <= {CHEAP_TIMES_F_EVAL:g} f evals' worth of time "
          f"at n={max(args.sizes)}):\n")
    print(summary_markdown(summary))
    print(f"\nTotal runtime {elapsed:.1f} s.")

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "gradient_estimation" + (".quick" if args.quick else "")
    payload = {
        "command": command,
        "function": "chained Rosenbrock: sum_i 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2",
        "input": f"x ~ Uniform(-2, 2)^n, numpy.random.default_rng({SEED}), float64",
        "quick": args.quick,
        "sample": sample,
        "sizes": args.sizes,
        "f_eval_seconds": {str(n): s for n, s in f_evals.items()},
        "f_values": {str(n): v for n, v in f_values.items()},
        "max_sweep_width": args.max_sweep_width,
        "analytic_taylor_order": taylor.order,
        "results": rows,
        "summary": summary,
        "runtime_seconds": elapsed,
        "environment": {"python": platform.python_version(), "numpy": np.__version__,
                        "pyautodiff": ad.__version__, "machine": platform.machine(),
                        "cpus": os.cpu_count()},
    }
    json_path = RESULTS / f"{stem}.json"
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    print(f"\nJSON written to {json_path}")
    print(plot(rows, f_evals, RESULTS / f"{stem}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
