"""Turn measurements into the report: a Markdown table, JSON, and a log-scale bar chart (PNG).

Every ratio is pyautodiff's median time over the contestant's median time in the same run:
below 1 means pyautodiff is faster.
"""

import json
import os

from benchmarks import peers

OK = "ok"


# ---- formatting ----

def _seconds_per_unit(result, seconds):
    return seconds / result["n_ops"] if result["per_op"] else seconds


def format_time(result, seconds):
    if seconds is None:
        return "—"
    value = _seconds_per_unit(result, seconds)
    if result["per_op"]:
        nanoseconds = value * 1e9
        return f"{nanoseconds:.3g} ns/op" if nanoseconds < 1000 else f"{nanoseconds / 1000:.3g} µs/op"
    if value < 1e-3:
        return f"{value * 1e6:.3g} µs"
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def format_ratio(ratio):
    """pyautodiff / contestant, with the plain-words reading next to it."""
    if ratio <= 1:
        return f"{ratio:.3g} ({1 / ratio:.3g}x faster)"
    return f"{ratio:.3g} ({ratio:.3g}x slower)"


def _status_text(cell):
    status = cell["status"]
    if status == "timeout":
        return f"over the time cap ({cell.get('reason', '')})"
    if status in ("error", "crashed", "mismatch"):
        return f"{status}: {cell.get('reason', '')}"
    return f"{status} ({cell['reason']})" if cell.get("reason") else status


def describe_cell(result, cell):
    if cell["status"] != OK:
        return _status_text(cell)
    text = (f"{format_time(result, cell['median_s'])} (median of {cell['samples']}; "
            f"min {format_time(result, cell['min_s'])}, max {format_time(result, cell['max_s'])})")
    if cell.get("compile_s") is not None:
        text += f", compile {cell['compile_s']:.3g} s"
    memory = cell.get("memory") or {}
    if "peak_rss_bytes_per_node" in memory:
        text += f", peak RSS {memory['peak_rss_bytes_per_node']:.0f} B/node"
    return text


def describe_sweep(sweep):
    if sweep["status"] != OK:
        return _status_text(sweep)
    return (f"{sweep['median_ns_per_node']:.3g} ns/node over {sweep['nodes']:,} nodes "
            f"(min {sweep['min_ns_per_node']:.3g}, max {sweep['max_ns_per_node']:.3g})")


def _short(text, limit=90):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cells(result):
    return {cell["contestant"]: cell for cell in result["cells"]}


# ---- targets ----

def evaluate(result, key):
    """The issue's target for pyautodiff against one contestant, judged on this run's ratio."""
    target = result["targets"].get(key)
    if target is None:
        return None
    cells = _cells(result)
    mine = cells.get("pyautodiff")
    verdict = {"workload": result["name"], "contestant": key, "target": target["text"]}
    if mine is None or mine["status"] != OK:
        reason = "not run" if mine is None else _status_text(mine)
        if target.get("runs") and mine is not None:
            return dict(verdict, met=False, detail=f"pyautodiff {reason}")
        return dict(verdict, met=None, detail=f"pyautodiff {reason}")
    if target.get("runs"):
        memory = mine.get("memory") or {}
        per_node = memory.get("peak_rss_bytes_per_node")
        detail = "ran without error" + (f"; peak RSS {per_node:.0f} B/node" if per_node else "")
        if memory.get("tape_live_bytes_per_node") is not None:
            detail += f"; tape_stats {memory['tape_live_bytes_per_node']:.0f} B/node"
        return dict(verdict, met=True, detail=detail)
    other = cells.get(key)
    bound = target["max_ratio"]
    if other is None or other["status"] not in (OK, "timeout"):
        reason = "not run" if other is None else _status_text(other)
        return dict(verdict, met=None, detail=f"{peers.DISPLAY[key]} {_short(reason, 60)}")
    if other["status"] == "timeout":
        # The contestant took longer than the cap, so the true ratio is below this figure.
        ceiling = mine["median_s"] / other["lower_bound_s"]
        if ceiling <= bound:
            return dict(verdict, met=True, ratio_upper_bound=ceiling,
                        detail=f"ratio < {ceiling:.3g}x (contestant over the cap)")
        return dict(verdict, met=None, ratio_upper_bound=ceiling,
                    detail=f"ratio < {ceiling:.3g}x only: contestant over the cap, undecided")
    ratio = mine["median_s"] / other["median_s"]
    met = ratio < bound if target.get("strict") else ratio <= bound
    detail = f"ratio {ratio:.4g}, bound {bound:.4g}"
    if not met:
        detail += f": {ratio / bound:.2f}x over the bound"
    return dict(verdict, met=met, ratio=ratio, detail=detail)


def all_targets(results):
    verdicts = []
    for result in results:
        for key in peers.ORDER:
            verdict = evaluate(result, key)
            if verdict is not None:
                verdicts.append(verdict)
    return verdicts


def _met_text(verdict):
    if verdict is None:
        return "—", "—"
    if verdict["met"] is None:
        return verdict["target"], f"not measured: {verdict['detail']}"
    return verdict["target"], ("met" if verdict["met"] else "**NOT met**") + f" ({verdict['detail']})"


def failures(results, sweep):
    """What makes the run exit non-zero: wrong gradients anywhere, or pyautodiff broken."""
    found = []
    for result in results:
        for cell in result["cells"]:
            if cell["status"] == "mismatch":
                found.append(f"{result['name']} / {cell['display']}: {cell['reason']}")
            elif cell["contestant"] == "pyautodiff" and cell["status"] in (
                    "error", "crashed", "not installed"):
                found.append(f"{result['name']} / pyautodiff: {_status_text(cell)}")
    if sweep is not None and sweep["status"] in ("error", "crashed"):
        found.append(f"backward_sweep: {_status_text(sweep)}")
    return found


# ---- Markdown ----

def _blas_line(meta):
    pools = meta.get("threads", {}).get("threadpools")
    if not pools:
        return meta.get("threads", {}).get("threadpoolctl", "BLAS not inspected")
    parts = []
    for pool in pools:
        name = pool.get("internal_api") or pool.get("user_api")
        where = os.path.basename(pool.get("filepath") or "")
        kernel = f", kernel {pool['architecture']}" if pool.get("architecture") else ""
        parts.append(f"{name} {pool.get('version') or ''} ({where}{kernel}, "
                     f"{pool.get('num_threads')} thread(s))")
    return "; ".join(parts)


def header(meta):
    env = meta["environment"]
    removed = env["removed_for_this_run"]
    kept = env.get("kept", {})
    if removed:
        removed_text = ", ".join(f"{k}={v}" for k, v in removed.items()) + " unset for this run"
    elif kept:
        removed_text = (", ".join(f"{k}={v}" for k, v in kept.items())
                        + " kept (--keep-openblas-env)")
    else:
        removed_text = "no OpenBLAS overrides in the environment"
    threads = meta.get("threads", {})
    torch_threads = (f"torch {threads['torch.get_num_threads']} intra-op / "
                     f"{threads['torch.get_num_interop_threads']} inter-op thread(s); "
                     if "torch.get_num_threads" in threads else "")
    version_text = ", ".join(f"{v}" for k, v in meta["versions"].items()
                             if k not in ("pyautodiff_path",) and v)
    lines = [
        f"- Date: {meta['date']} · mode: {meta['mode']} · run time {meta['elapsed_s']:.0f} s",
        f"- Command: `{meta['command']}`",
        f"- Machine: {meta['cpu']}, {meta['logical_cpus']} logical CPUs "
        f"({meta['usable_cpus']} usable), {meta['platform']}, Python {meta['python']}; "
        f"load average {meta['loadavg_start'][0]:.2f} at start, {meta['loadavg_end'][0]:.2f} at end",
        f"- Threads: {', '.join(f'{k}={v}' for k, v in env['set'].items())}; {torch_threads}"
        f"{removed_text}",
        f"- BLAS: {_blas_line(meta)}",
        f"- Versions: {version_text}",
        "- Method: gradients (and loss) of every contestant checked against the hand-written "
        f"reference (normwise relative error ≤ {meta['config']['grad_rtol']:g}) before any "
        "timing; then a warm-up call, and samples of ≥ "
        f"{meta['config']['min_sample_s'] * 1e3:g} ms each taken in interleaved rounds (all "
        "contestants of a workload once per round, order rotated) until a "
        f"{meta['config']['budget_s']:g} s budget is spent, at least "
        f"{meta['config']['min_samples']} per contestant (1 for calls over "
        f"{meta['config']['slow_call_s']:g} s; a call over {meta['config']['reuse_first_call_s']:g} s "
        "is timed on its verification call alone). Times are medians of `time.perf_counter` samples; "
        "GC stays on (it is part of the cost of object-heavy graphs; objects that exist before "
        "timing are frozen out of it). JAX jit compile time is "
        "reported apart. Cells marked isolated ran in a child process (crash and time-cap "
        f"safety, memory on a fresh heap); caps: {meta['config']['call_cap_s']:g} s per first "
        f"call, {meta['config']['child_timeout_s']:g} s per child process.",
    ]
    return lines


def main_table(results):
    rows = ["| workload | contestant | contestant time | pyautodiff time | pyautodiff / contestant "
            "| target | result |",
            "|---|---|---|---|---|---|---|"]
    for result in results:
        cells = _cells(result)
        mine = cells.get("pyautodiff")
        mine_text = ("not run" if mine is None else
                     format_time(result, mine["median_s"]) if mine["status"] == OK
                     else _short(_status_text(mine), 60))
        for key in peers.ORDER:
            cell = cells.get(key)
            if cell is None or cell["status"] == "n/a":
                continue
            if key == "pyautodiff":
                if key in result["targets"]:
                    target, met = _met_text(evaluate(result, key))
                    rows.append(f"| {result['name']} | (pyautodiff itself) | — | {mine_text} | — "
                                f"| {target} | {met} |")
                continue
            if cell["status"] == OK:
                other = format_time(result, cell["median_s"])
                if cell.get("compile_s") is not None:
                    other += f" (+{cell['compile_s']:.3g} s compile)"
            else:
                other = _short(_status_text(cell), 60)
            ratio = "—"
            if mine is not None and mine["status"] == OK and cell["status"] == OK:
                ratio = format_ratio(mine["median_s"] / cell["median_s"])
            target, met = _met_text(evaluate(result, key))
            rows.append(f"| {result['name']} | {cell['display']} | {other} | {mine_text} | {ratio} "
                        f"| {target} | {met} |")
    return rows


def details_table(results):
    rows = ["| workload | contestant | status | median | min – max | samples × calls | "
            "grad error | memory | note |",
            "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for cell in result["cells"]:
            if cell["status"] == "n/a":
                continue
            memory = cell.get("memory") or {}
            memory_text = "—"
            if "peak_rss_bytes_per_node" in memory:
                memory_text = f"{memory['peak_rss_bytes_per_node']:.0f} B/node peak RSS"
                if memory.get("tape_live_bytes_per_node") is not None:
                    memory_text += f", {memory['tape_live_bytes_per_node']:.0f} B/node tape_stats"
            elif "error" in memory:
                memory_text = memory["error"]
            note = cell.get("note") or ""
            if cell.get("compile_s") is not None:
                note = f"compile (trace + XLA) {cell['compile_s']:.3g} s. {note}"
            if cell.get("timed_on_first_call"):
                note = f"timed on its verification call alone (over the slow-call limit). {note}"
            if cell.get("isolated"):
                note = f"isolated. {note}"
            if cell["status"] == OK:
                rows.append(
                    f"| {result['name']} | {cell['display']} | ok "
                    f"| {format_time(result, cell['median_s'])} "
                    f"| {format_time(result, cell['min_s'])} – {format_time(result, cell['max_s'])} "
                    f"| {cell['samples']} × {cell['inner']} | {cell.get('grad_error', 0):.1e} "
                    f"| {memory_text} | {_short(note, 200)} |")
            else:
                rows.append(f"| {result['name']} | {cell['display']} | {cell['status']} | — | — | — "
                            f"| — | {memory_text} | {_short(cell.get('reason', ''), 200)} "
                            f"{_short(note, 120)} |")
    return rows


def render(meta, results, sweep, plot_note):
    lines = ["# pyautodiff benchmarks", ""] + header(meta) + [""]
    if meta["mode"] == "quick":
        lines += ["**Quick mode**: sizes reduced and few repeats. It shows the suite works "
                  "(gradients agree, files written); its ratios are not the issue's targets.", ""]
    lines += ["## Results", "",
              "pyautodiff / contestant is the ratio of median times in this run: below 1 means "
              "pyautodiff is faster. Scalar-graph workloads are per op (forward + backward time "
              "divided by the number of recorded ops); the others per forward + backward step.",
              ""]
    lines += main_table(results) + [""]
    lines += ["## Backward sweep alone (C)", ""]
    if sweep is None:
        lines.append("Not selected in this run.")
    else:
        lines.append(f"`ad._bench_sweep({sweep['nodes']:,})`: {describe_sweep(sweep)}.")
        deep = next((r for r in results if r["name"] == "deep_chain"), None)
        mine = _cells(deep).get("pyautodiff") if deep else None
        if sweep["status"] == OK and mine is not None and mine["status"] == OK:
            per_op = mine["median_s"] / deep["n_ops"] * 1e9
            lines.append(f"deep_chain through the Python API costs {per_op:.3g} ns per add, "
                         f"forward + backward: the sweep's share is "
                         f"{sweep['median_ns_per_node'] / per_op:.1%}; the rest is recording "
                         "the forward through the bindings.")
    lines += ["", "## Workloads", ""]
    for result in results:
        not_applicable = [f"{c['display']} ({c['reason']})" for c in result["cells"]
                          if c["status"] == "n/a"]
        size = ", ".join(f"{k}={v}" for k, v in result["size"].items())
        line = f"- **{result['name']}**: {result['title']} ({size}"
        if result["n_ops"]:
            line += f"; {result['n_ops']:,} ops per step"
        line += f"). Leaves: {', '.join(result['leaves'])}. Reference: {result['hand_label']}."
        if not_applicable:
            line += f" Not applicable: {'; '.join(not_applicable)}."
        lines.append(line)
        lines += [f"  - {note}" for note in result["notes"]]
    lines += ["", "## Every measurement", ""] + details_table(results)
    lines += ["", f"Plot: {plot_note}", ""]
    return "\n".join(lines)


# ---- plot ----

def pyplot():
    """matplotlib.pyplot drawing to files (the Agg backend), or None without matplotlib."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


NO_MATPLOTLIB = "skipped (matplotlib is not installed)"


def plot(results, path):
    plt = pyplot()
    if plt is None:
        return None, NO_MATPLOTLIB
    from matplotlib.ticker import NullFormatter

    shown = [r for r in results if any(c["status"] == OK for c in r["cells"])]
    if not shown:
        return None, "skipped (nothing was measured)"
    figure, axes = plt.subplots(len(shown), 1, figsize=(9, 1.0 + 1.7 * len(shown)), squeeze=False)
    for axis, result in zip(axes[:, 0], shown):
        cells = [c for c in result["cells"] if c["status"] == OK]
        scale, unit = (1e6, "µs/op") if result["per_op"] else (1e3, "ms")
        values = [_seconds_per_unit(result, c["median_s"]) * scale for c in cells]
        colours = ["tab:red" if c["contestant"] == "pyautodiff" else "tab:blue" for c in cells]
        labels = [c["display"] for c in cells]
        axis.barh(range(len(cells)), values, color=colours)
        axis.set_yticks(range(len(cells)), labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlim(min(values) / 3, max(values) * 3)  # room for the value labels
        size = ", ".join(f"{k}={v}" for k, v in result["size"].items())
        axis.set_title(f"{result['name']}: {result['title']}  [{size}]", fontsize=8, loc="left")
        axis.set_xlabel(f"median time ({unit}, log scale)", fontsize=8)
        axis.tick_params(axis="x", labelsize=8)
        for index, value in enumerate(values):
            axis.text(value, index, f" {value:.3g}", va="center", fontsize=7)
        missing = [f"{c['display']}: {c['status']}" for c in result["cells"]
                   if c["status"] not in (OK, "n/a")]
        if missing:
            axis.text(1.0, -0.35, _short("; ".join(missing), 110), transform=axis.transAxes,
                      ha="right", fontsize=6, color="grey")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path, f"`{os.path.basename(path)}` (median times, log scale; pyautodiff in red)"


def write(meta, results, sweep, directory, stem):
    os.makedirs(directory, exist_ok=True)
    written = []
    png_path, plot_note = plot(results, os.path.join(directory, f"{stem}.png"))
    if png_path:
        written.append(png_path)
    document = {
        "meta": meta,
        "workloads": results,
        "backward_sweep": sweep,
        "targets": all_targets(results),
        "plot": plot_note,
    }
    json_path = os.path.join(directory, f"{stem}.json")
    with open(json_path, "w") as handle:
        json.dump(document, handle, indent=1, default=float)
        handle.write("\n")
    written.append(json_path)
    markdown = render(meta, results, sweep, plot_note)
    md_path = os.path.join(directory, f"{stem}.md")
    with open(md_path, "w") as handle:
        handle.write(markdown)
    written.append(md_path)
    return written, markdown


README_START = "<!-- latest-results:start (written by python -m benchmarks) -->"
README_END = "<!-- latest-results:end -->"


def update_readme(path, meta, results, sweep):
    """Put the full run's summary between the README's markers, so it never goes stale."""
    block = [README_START, "",
             f"Full run of {meta['date']} on {meta['cpu']} ({meta['logical_cpus']} logical CPUs, "
             f"load average {meta['loadavg_start'][0]:.1f} at start), command `{meta['command']}`. "
             "Every measurement, versions, BLAS and thread settings: `results/latest.md`.", ""]
    block += main_table(results)
    if sweep is not None:
        block += ["", f"C backward sweep alone: `ad._bench_sweep({sweep['nodes']:,})` = "
                      f"{describe_sweep(sweep)}."]
    block += ["", README_END]
    with open(path) as handle:
        text = handle.read()
    if README_START in text and README_END in text:
        before = text[: text.index(README_START)]
        after = text[text.index(README_END) + len(README_END):]
        text = before + "\n".join(block) + after
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n"
    with open(path, "w") as handle:
        handle.write(text)
    return path
