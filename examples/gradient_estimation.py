"""The seed's table of gradient estimation methods, measured.

For the chained Rosenbrock function of n inputs

    f(x) = sum_i 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2,    i = 0 .. n-2,

written with pyautodiff ops, the gradient is computed by forward differences, central differences
(both ``ad.numerical_grad``), a hand-written NumPy gradient, reverse mode (``backward``) and, when
this build has it, forward mode (``ad.jvp``, one sweep per input). Each is compared with the
hand-written gradient and timed; the result is a Markdown table on stdout, JSON in
examples/results/, and a log-log plot of time against n when matplotlib is installed.

    python examples/gradient_estimation.py            # n = 10 .. 10^4, every method in full
    python examples/gradient_estimation.py --quick    # at n = 10^4, the O(n^2) methods run on 1000
                                                      # coordinates and are extrapolated (labelled)
"""
import os

# OpenBLAS (behind SciPy, which pyautodiff's matmul calls) hands even 100x100 products to worker
# threads; on a machine whose cores are busy, waking them costs milliseconds per call and would
# be timed instead of the arithmetic. One thread unless the caller says otherwise. This must
# happen before NumPy or SciPy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import pyautodiff as ad  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (10, 100, 1000, 10000)
SEED = 0
FORWARD_MODE_MISSING = "forward mode: not available in this build"

# The seed's verdicts (gradient-estimation-notes.md), for the summary. None: the seed left it blank.
SEED_VERDICTS = {
    "forward difference": ("❌", "❌"),
    "central difference": ("❌", "❌"),
    "analytic (NumPy)": ("✅", "❌"),
    # the seed's "Backpropagation" row: its "Reverse mode automatic" row is blank
    "reverse mode": ("✅", "✅"),
    "forward mode": ("✅", "❌"),
}
# Where the summary draws the line. Rounding alone puts float64 gradients within ~1e-15 of each
# other; "low cost" means a bounded multiple of one function evaluation, not a multiple of n.
ACCURATE_REL_ERROR = 1e-12
CHEAP_TIMES_F_EVAL = 20.0


# ---------------------------------------------------------------------------------------------
# The function, written with pyautodiff ops
# ---------------------------------------------------------------------------------------------
def _block_shape(n):
    """(m, b) with m * b = n and b the divisor of n nearest sqrt(n)."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    b = min(divisors, key=lambda d: (abs(math.log(d) - 0.5 * math.log(n)), d))
    return n // b, b


def _columns(size, keep):
    """A constant size x len(keep) 0/1 matrix: v @ it picks v[keep]."""
    return ad.tensor(np.eye(size)[:, keep])


def make_rosenbrock(n):
    """The chained Rosenbrock function of n inputs, as a function of one Tensor of shape (n,).

    pyautodiff has no indexing or slicing op yet, so x[:-1] and x[1:] are picked out with constant
    0/1 matrices. Dense n x (n-1) ones would take 800 MB at n = 10^4; instead x is viewed as an
    m x b block with b about sqrt(n): neighbours within a row come from b x (b-1) selections and
    neighbours across rows (the last of row k, the first of row k+1) from m x (m-1) ones. One
    evaluation therefore costs O(n^1.5) flops rather than O(n); every pyautodiff method below pays
    that alike, the NumPy gradient does not.
    """
    if n < 2:
        raise ValueError("the chained Rosenbrock function needs n >= 2")
    m, b = _block_shape(n)
    row_left, row_right = _columns(b, slice(0, b - 1)), _columns(b, slice(1, b))
    last, first = _columns(b, b - 1), _columns(b, 0)
    across_left, across_right = _columns(m, slice(0, m - 1)), _columns(m, slice(1, m))

    def terms(left, right):
        return ad.sum(100.0 * (right - left ** 2) ** 2 + (1.0 - left) ** 2)

    def rosenbrock(x):
        blocks = ad.reshape(x, (m, b))
        total = None
        if b > 1:
            total = terms(blocks @ row_left, blocks @ row_right)
        if m > 1:
            across = terms((blocks @ last) @ across_left, (blocks @ first) @ across_right)
            total = across if total is None else total + across
        return total

    rosenbrock.block_shape = (m, b)
    return rosenbrock


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
def _median_time(call, min_total=0.2, min_runs=3, max_runs=1000):
    """Median seconds per call and the last result. Calls are repeated until min_total seconds
    have passed, so neither the clock's resolution nor a first-call warm-up shows."""
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
# The methods. Finite differences and forward mode may run on a sample of the coordinates.
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
    seconds, grad = _median_time(gradient, min_runs=1)
    return grad, seconds, counted.calls


def reverse_mode(f, x0):
    def gradient():
        x = ad.tensor(x0, requires_grad=True)
        f(x).backward()
        return x.grad.numpy()
    return _median_time(gradient)


def forward_mode(f, x0, coords):
    """One JVP per input direction e_i: the gradient needs n forward sweeps."""
    indices = range(x0.size) if coords is None else coords
    tangent = np.zeros_like(x0)
    grad = np.empty(len(indices))
    start = time.perf_counter()
    for k, i in enumerate(indices):
        tangent[i] = 1.0
        _, tangent_out = ad.jvp(f, (x0,), (tangent,))
        tangent[i] = 0.0
        grad[k] = float(np.asarray(tangent_out))
    return grad, time.perf_counter() - start, len(indices)


def _row(method, n, seconds, f_eval, cost, abs_error=None, rel_error=None, *, evaluations=None,
         sweeps=None, extrapolated=False, measured_coordinates=None, measured_seconds=None,
         note=None):
    return {"method": method, "n": n, "max_abs_error": abs_error, "max_rel_error": rel_error,
            "seconds": seconds, "seconds_per_f_eval": None if seconds is None else seconds / f_eval,
            "function_evaluations": evaluations, "sweeps": sweeps, "cost": cost,
            "extrapolated": extrapolated,
            "measured_coordinates": measured_coordinates, "measured_seconds": measured_seconds,
            "note": note}


def run_size(n, sample, rng, log):
    x0 = rng.uniform(-2.0, 2.0, n)
    f = make_rosenbrock(n)
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

    if hasattr(ad, "jvp"):
        log(f"  n={n}: forward mode ...")
        try:
            grad, seconds, sweeps = forward_mode(f, x0, coords)
        except Exception as error:  # a half-finished jvp must not cost the other columns
            rows.append(_row("forward mode", n, None, f_eval, "failed",
                             note=f"forward mode failed: {type(error).__name__}: {error}"))
        else:
            target = reference if coords is None else reference[coords]
            if coords is None:
                rows.append(_row("forward mode", n, seconds, f_eval, f"{sweeps} JVP sweeps",
                                 *_errors(grad, target), sweeps=sweeps))
            else:
                rows.append(_row("forward mode", n, seconds * n / sweeps, f_eval,
                                 f"{n} JVP sweeps", *_errors(grad, target), sweeps=n,
                                 extrapolated=True, measured_coordinates=sweeps,
                                 measured_seconds=seconds,
                                 note=f"timed on {sweeps} of {n} coordinates and extrapolated; "
                                      f"errors over those {sweeps}"))
    else:
        rows.append(_row("forward mode", n, None, f_eval, "—",
                         note=FORWARD_MODE_MISSING))
    return f_eval, value, rows


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
def _seconds(s):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
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
        at_largest = next(r for r in mine if r["n"] == largest)
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
        cost_text = (f"{at_largest['seconds_per_f_eval']:.3g}x one f eval at n={largest}, "
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
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for method in SEED_VERDICTS:
        mine = sorted((r for r in rows if r["method"] == method and r["seconds"] is not None),
                      key=lambda r: r["n"])
        if not mine:
            continue
        line, = ax.plot([r["n"] for r in mine], [r["seconds"] for r in mine], "-", label=method)
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
    if not any(r["method"] == "forward mode" and r["seconds"] is not None for r in rows):
        ax.text(0.98, 0.02, "forward mode: not measured (see the table)", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color="gray")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
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
                        help="for n above this, time finite differences and forward mode on this "
                             "many random coordinates and extrapolate (default: none, or 1000 "
                             "with --quick)")
    args = parser.parse_args(argv)
    sample = args.sample if args.sample is not None else (1000 if args.quick else None)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    rng = np.random.default_rng(SEED)
    rows, f_evals, f_values = [], {}, {}
    for n in args.sizes:
        f_evals[n], f_values[n], size_rows = run_size(n, sample, rng, log)
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
    if not hasattr(ad, "jvp"):
        print(FORWARD_MODE_MISSING + " (ad.jvp is absent).")
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
        "forward_mode_available": hasattr(ad, "jvp"),
        "analytic_taylor_order": taylor.order,
        "results": rows,
        "summary": summary,
        "runtime_seconds": elapsed,
        "environment": {"python": platform.python_version(), "numpy": np.__version__,
                        "pyautodiff": ad.__version__, "machine": platform.machine(),
                        "cpus": os.cpu_count(),
                        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")},
    }
    json_path = RESULTS / f"{stem}.json"
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    print(f"\nJSON written to {json_path}")
    print(plot(rows, f_evals, RESULTS / f"{stem}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
