"""The median of several full runs, and the targets judged on it (a target counts as met only if
it holds in the median of three full runs).

    python -m benchmarks --output run1     # three times: run1, run2, run3
    python -m benchmarks.median run1 run2 run3

Prints one line per workload: pyautodiff's median time, then per contestant the median ratio
pyautodiff / contestant with its range over the runs, and each target's verdict on the median.
Standard library only.
"""

import json
import os
import statistics
import sys

ORDER = ["numpy", "torch", "jax", "jax_jit", "autograd", "micrograd"]


def collect(stems, directory):
    rows = {}
    for stem in stems:
        with open(os.path.join(directory, stem + ".json")) as fh:
            run = json.load(fh)
        for w in run["workloads"]:
            cells = {c["contestant"]: c for c in w["cells"]}
            me = cells.get("pyautodiff")
            if not me or me.get("status") != "ok":
                continue
            row = rows.setdefault(w["name"], {"per_op": w["per_op"], "n_ops": w.get("n_ops"),
                                              "targets": w["targets"], "me": [], "ratios": {}})
            row["me"].append(me["median_s"])
            for key, cell in cells.items():
                if key != "pyautodiff" and cell.get("status") == "ok":
                    row["ratios"].setdefault(key, []).append(me["median_s"] / cell["median_s"])
    return rows


def _time(seconds, per_op, n_ops):
    if per_op and n_ops:
        seconds /= n_ops
    unit = "/op" if per_op and n_ops else ""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns{unit}"
    return f"{seconds * 1e6:.1f} µs{unit}" if seconds < 1e-3 else f"{seconds * 1e3:.1f} ms{unit}"


def lines(rows):
    out = []
    for name, row in rows.items():
        parts = []
        for key in sorted(row["ratios"], key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
            values = row["ratios"][key]
            median = statistics.median(values)
            text = f"{key} {median:.3g} ({min(values):.3g}-{max(values):.3g}, {len(values)} runs)"
            target = row["targets"].get(key)
            if target:
                met = median < target["max_ratio"] if target.get("strict") else median <= target["max_ratio"]
                text += f" [{target['text']}: {'met' if met else 'NOT met'}]"
            parts.append(text)
        out.append(f"{name}: {_time(statistics.median(row['me']), row['per_op'], row['n_ops'])} | " + " | ".join(parts))
    return out


def main(argv=None):
    stems = sys.argv[1:] if argv is None else list(argv)
    if not stems:
        print(__doc__)
        return 2
    directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    print("\n".join(lines(collect(stems, directory))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
