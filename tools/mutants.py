"""Mutation testing: plant one-line bugs in csrc/ and check that the test suite catches each.

Every mutant below is a single line of the C core replaced by a plausible mistake: a dropped or
doubled accumulation on a sweep path, a wrong stride, a wrong tie rule, a skipped NaN-safety
select, a missed version or generation check, a wrong sign. A mutant is named by its file, the
exact text of the original line (which must occur exactly once in that file: when the code moves
on, the tool fails loudly instead of planting nothing) and the replacement line.

The tree is copied to a scratch directory and the extension is built there once, one object per
C file (at -O1 by default: the suite runs about as fast as at -O3, and a file compiles in seconds);
each mutant then recompiles only its own file and relinks. The suite runs against that build with
`-x` (the first failure ends the run: a caught mutant is cheap), from the scratch tree, so the
pyautodiff under test is the mutated one. One mutant at a time: the machine may be shared.

    python tools/mutants.py                 # every mutant (long: see README, Testing); not in CI
    python tools/mutants.py --list          # the mutants, numbered
    python tools/mutants.py --check         # every mutant still applies (seconds, no build)
    python tools/mutants.py --only 1 7      # some mutants, by number or name
    python tools/mutants.py --only 7 -- tests/test_rules.py   # ... against some tests only

Exit status 0 when every mutant ran was caught (and the unmutated build passed), 1 otherwise.
"""
import argparse
import importlib.machinery
import os
import re
import runpy
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Mutant:
    name: str
    path: str          # relative to the repository root
    original: str      # the whole line, indentation included
    replacement: str
    why: str           # what goes wrong: the bug the suite must notice


MUTANTS = [
    # ---- sweep.c: every path by which a contribution reaches an adjoint ----
    Mutant("sweep-scratch-drop", "csrc/sweep.c",
           "    if (!st) ad_unbroadcast_into(m->dtype, target, acc, m->ndim, m->shape, s.dst, s.ndim, s.shape);",
           "    if (!st) ad_unbroadcast_into(m->dtype, target, 0, m->ndim, m->shape, s.dst, s.ndim, s.shape);",
           "a second contribution summed over broadcast axes (scratch path) replaces the first"),
    Mutant("sweep-direct-drop", "csrc/sweep.c",
           "        s.accumulate = acc;",
           "        s.accumulate = 0;",
           "a second contribution written directly by the kernel replaces the first"),
    Mutant("sweep-leaf-grad-drop", "csrc/sweep.c",
           "            *accumulate = 1;",
           "            *accumulate = 0;",
           "a leaf's .grad is overwritten, not accumulated, by a later contribution or backward"),
    Mutant("sweep-interior-drop", "csrc/sweep.c",
           "        *accumulate = 1;",
           "        *accumulate = 0;",
           "an interior node's adjoint keeps only its last consumer's contribution"),
    Mutant("sweep-handover-overwrite", "csrc/sweep.c",
           "           (!(m->flags & F_LEAF) || t_defer_leaves) && !m->adj && m->dtype == n->dtype && n->size > 0 &&",
           "           (!(m->flags & F_LEAF) || t_defer_leaves) && m->dtype == n->dtype && n->size > 0 &&",
           "a cotangent handed over as a buffer replaces an adjoint that already holds contributions"),
    Mutant("sweep-uniform-mean-scale", "csrc/sweep.c",
           "    double scale = n->op == AD_OP_MEAN ? 1.0 / (double)m->size : 1.0;",
           "    double scale = 1.0;",
           "mean's one-value (uniform) adjoint forgets the 1/n"),
    Mutant("sweep-custom-drop", "csrc/sweep.c",
           "        ad_add_into(m->dtype, dst, acc, res[j]->data, m->size);",
           "        ad_add_into(m->dtype, dst, 0, res[j]->data, m->size);",
           "a custom function's contribution replaces the input's earlier ones"),
    Mutant("sweep-rows-scratch-drop", "csrc/sweep.c",
           "        if (!st && !direct) ad_unbroadcast_into(m->dtype, tr, acc, m->ndim, m->shape, scratch, s.ndim, s.shape);",
           "        if (!st && !direct) ad_unbroadcast_into(m->dtype, tr, 0, m->ndim, m->shape, scratch, s.ndim, s.shape);",
           "batched reverse (vjp, jacrev, hvp): a broadcast-summed contribution replaces the earlier ones"),
    Mutant("sweep-rows-direct-drop", "csrc/sweep.c",
           "        s.accumulate = direct ? acc : 0;",
           "        s.accumulate = 0;",
           "batched reverse: a direct contribution replaces the earlier ones"),
    Mutant("sweep-hvp-first-order-drop", "csrc/sweep.c",
           "            if (second && (st = pass_rows_to_input(T, n, NULL, j, atm->buf, acc || (at->state & S_HAS), k, &sec)))",
           "            if (second && (st = pass_rows_to_input(T, n, NULL, j, atm->buf, acc, k, &sec)))",
           "hvp: the second-order term overwrites vjp(gdot) instead of adding to it"),
    Mutant("sweep-recorded-accumulate-doubled", "csrc/sweep.c",
           "    int st = ad_mk_binary(T, AD_OP_ADD, *slot, c, &sum);",
           "    int st = ad_mk_binary(T, AD_OP_ADD, c, c, &sum);",
           "recorded sweeps (higher order): a second contribution is doubled instead of added"),
    Mutant("sweep-jvp-first-input", "csrc/sweep.c",
           "            tin[j] = m->pos >= lo ? slots[m->pos - lo].buf : NULL;",
           "            tin[j] = m->pos > lo ? slots[m->pos - lo].buf : NULL;",
           "forward mode: off by one at the lowest position, the first seeded input's tangent is lost"),
    # ---- tape.c: the checks that keep a stale value or handle from being used ----
    Mutant("tape-version-input", "csrc/tape.c",
           "            if (reads_value(n, i) && ad_storage(m)->version != v[i]) {",
           "            if (0 && reads_value(n, i) && ad_storage(m)->version != v[i]) {",
           "an input modified in place after it was saved is used silently (stale gradient)"),
    Mutant("tape-version-output", "csrc/tape.c",
           "        if (reads_value(n, -1) && ad_storage(n)->version != 0) { st = stale(sweep, n, \"the output\", n, 0); break; }",
           "        if (0 && reads_value(n, -1) && ad_storage(n)->version != 0) { st = stale(sweep, n, \"the output\", n, 0); break; }",
           "an output modified in place (exp(x) then y += 1) is used silently by its own VJP"),
    Mutant("tape-generation", "csrc/tape.c",
           "    if (!(n->flags & F_IN_USE) || n->gen != gen)",
           "    if (!(n->flags & F_IN_USE))",
           "a stale handle to a recycled node slot resolves to the new node"),
    # ---- shape.c: broadcasting and strided passes ----
    Mutant("shape-bcast-stride", "csrc/shape.c",
           "            s *= shape[j];",
           "            s *= shape[j] - 1;",
           "off by one in a broadcast stride"),
    Mutant("shape-unbroadcast-sum", "csrc/shape.c",
           "                a[oa] += (T)AD_SUM(T, s + os, len, is);                                    \\",
           "                a[oa] = (T)AD_SUM(T, s + os, len, is);                                     \\",
           "summing a contribution over broadcast axes keeps only the last run"),
    Mutant("shape-tiled-transpose", "csrc/shape.c",
           "                            ASSIGN(d[od + i * dq + j * dl], s[os + i * sq + j * sl]);      \\",
           "                            ASSIGN(d[od + i * dq + j * dl], s[os + j * sq + i * sl]);      \\",
           "the tiled strided copy (transposes of 8x8 and up) swaps its inner indices"),
    # ---- elementwise.c: the driver of every elementwise VJP/JVP ----
    Mutant("ew-contiguous-drop", "csrc/kernels/elementwise.c",
           "        int acc = s->reduce || s->accumulate;",
           "        int acc = s->reduce;",
           "contiguous elementwise VJP overwrites the adjoint instead of adding"),
    Mutant("ew-chunked-drop", "csrc/kernels/elementwise.c",
           "            int acc = s->reduce ? dR == 1 : s->accumulate, wrote = 0;",
           "            int acc = s->reduce ? dR == 1 : 0, wrote = 0;",
           "broadcast (chunked) elementwise VJP overwrites the adjoint instead of adding"),
    Mutant("ew-both-overwrite", "csrc/kernels/elementwise.c",
           "            if (f1) f1(in, gk, out, r.len, n->c, acc || f0);",
           "            if (f1) f1(in, gk, out, r.len, n->c, acc);",
           "x op x: the second input's share overwrites the first's"),
    Mutant("ew-reduced-run-total", "csrc/kernels/elementwise.c",
           "            if (dt == AD_F64) ((double *)s->dst)[o] += total;",
           "            if (dt == AD_F64) ((double *)s->dst)[o] = total;",
           "float64 VJP summed along a run into one element keeps only the last run"),
    Mutant("ew-second-order-nan-safety", "csrc/kernels/elementwise.c",
           "        else for (int64_t i = 0; i < m; i++) out[i] = SAFE(w[i], w[i] * d[i]);                    \\",
           "        else for (int64_t i = 0; i < m; i++) out[i] = w[i] * d[i];                                \\",
           "second-order term: a zero tangent times an infinite coefficient gives NaN, not 0"),
    Mutant("ew-jvp-stride-swap", "csrc/kernels/elementwise.c",
           "                    int64_t off = j == 0 ? r.oa : r.ob, st = j == 0 ? r.dA : r.dB;",
           "                    int64_t off = j == 0 ? r.oa : r.ob, st = j == 0 ? r.dB : r.dA;",
           "JVP of a broadcast binary op walks a tangent with the other input's stride"),
    # ---- reduce.c ----
    Mutant("reduce-max-tie", "csrc/kernels/reduce.c",
           "        for (int64_t i = 0; i < n->size; i++) share[i] = G[i] != 0 ? G[i] / share[i] : 0; \\",
           "        for (int64_t i = 0; i < n->size; i++) share[i] = G[i] != 0 ? G[i] : 0;             \\",
           "max/min ties each get the whole cotangent instead of an equal share"),
    Mutant("reduce-vjp-axis-stride", "csrc/kernels/reduce.c",
           "            for (int64_t i = 0; i < len; i++) D[ox + i * dx] OP G[oo + i * dout] * sc; \\",
           "            for (int64_t i = 0; i < len; i++) D[ox + i * dx] OP G[oo] * sc;            \\",
           "sum VJP reads the cotangent with stride 0 along a kept innermost axis"),
    Mutant("reduce-mean-jvp-scale", "csrc/kernels/reduce.c",
           "        double scale = node->op == AD_OP_MEAN ? 1.0 / (double)count : 1.0;",
           "        double scale = 1.0;",
           "mean's JVP forgets the 1/n"),
    Mutant("reduce-max-jvp-tie", "csrc/kernels/reduce.c",
           "            for (int64_t i = 0; i < n->size; i++) TO[i] = (T)(acc[i] / cnt[i]);        \\",
           "            for (int64_t i = 0; i < n->size; i++) TO[i] = (T)acc[i];                   \\",
           "max/min JVP sums the tied winners' tangents instead of averaging them"),
    Mutant("reduce-recorded-tie", "csrc/kernels/reduce.c",
           "    if (cnt && (st = ad_mk_binary(T, AD_OP_DIV, g, cnt, &share))) goto done;",
           "    if (0 && cnt && (st = ad_mk_binary(T, AD_OP_DIV, g, cnt, &share))) goto done;",
           "max/min differentiable rule (higher order) does not split among ties"),
    # ---- linalg.c ----
    Mutant("matmul-batched-dA-drop", "csrc/kernels/linalg.c",
           "                    s->accumulate, (char *)s->dst + (size_t)(t * m * k) * isz, k);",
           "                    0, (char *)s->dst + (size_t)(t * m * k) * isz, k);",
           "batched matmul's VJP for A overwrites the adjoint instead of adding"),
    Mutant("matmul-folded-dB-drop", "csrc/kernels/linalg.c",
           "            ad_gemm(n->dtype, 1, 0, k, nn, rows, a->data, k, g, nn, s->accumulate, s->dst, nn);",
           "            ad_gemm(n->dtype, 1, 0, k, nn, rows, a->data, k, g, nn, 0, s->dst, nn);",
           "a matrix weight under a batched input: its VJP overwrites the weight's adjoint"),
    Mutant("matmul-recorded-swap", "csrc/kernels/linalg.c",
           "    if ((st = which == 0 ? ad_mk_matmul(T, g2, other_t, &c) : ad_mk_matmul(T, other_t, g2, &c))) goto done;",
           "    if ((st = which == 0 ? ad_mk_matmul(T, g2, other_t, &c) : ad_mk_matmul(T, g2, other_t, &c))) goto done;",
           "matmul's differentiable VJP for B multiplies in the wrong order (A^T G -> G A^T)"),
    Mutant("matmul-batched-jvp-drop", "csrc/kernels/linalg.c",
           "                beta = 1;",
           "                beta = 0;",
           "batched matmul's JVP loses dA @ B when B moves too"),
    # ---- index.c ----
    Mutant("gather-repeat-drop", "csrc/kernels/index.c",
           "        if (block == 1) { for (int64_t i = 0; i < count; i++) D[I[i]] += S[i]; return; } \\",
           "        if (block == 1) { for (int64_t i = 0; i < count; i++) D[I[i]] = S[i]; return; }  \\",
           "scatter-add (the VJP of x[[0, 0]]) keeps one of the repeated indices' contributions"),
    Mutant("slice-recorded-index", "csrc/kernels/index.c",
           "        int64_t p = n->aux[0];",
           "        int64_t p = n->aux[0] + 1;",
           "getitem's differentiable VJP scatters one element off"),
    Mutant("where-accumulate", "csrc/kernels/index.c",
           "        if (s->accumulate) { for (int64_t i = 0; i < s->size; i++) if (M[i] == pick) D[i] += G[i]; } \\",
           "        if (s->accumulate) { for (int64_t i = 0; i < s->size; i++) if (M[i] == pick) D[i] = G[i]; }  \\",
           "where's VJP overwrites an adjoint that already holds contributions"),
    Mutant("slice-vjp-drop", "csrc/kernels/index.c",
           "    if (!s->accumulate) memset(s->dst, 0, (size_t)s->size * ad_itemsize(n->dtype));",
           "    memset(s->dst, 0, (size_t)s->size * ad_itemsize(n->dtype));",
           "basic indexing's VJP zeroes an adjoint that already holds contributions"),
    Mutant("concat-vjp-drop", "csrc/kernels/index.c",
           "            if (s->accumulate) for (int64_t i = 0; i < len; i++) dst[i] += src[i];       \\",
           "            if (s->accumulate) for (int64_t i = 0; i < len; i++) dst[i] = src[i];        \\",
           "concatenate's VJP overwrites an adjoint that already holds contributions"),
    Mutant("clip-nan-safety", "csrc/kernels/index.c",
           "            TT d = SAFE(G[i], v != v ? (TT)NAN : (v >= l && v <= h ? G[i] : G[i] * (TT)0)); \\",
           "            TT d = v != v ? (TT)NAN : (v >= l && v <= h ? G[i] : G[i] * (TT)0);       \\",
           "clip's VJP skips the NaN-safety select: a zero cotangent at a NaN input gives NaN"),
    # ---- softmax.c ----
    Mutant("softmax-vjp-sign", "csrc/kernels/softmax.c",
           "                        double d = GR[c + i] - RD[i];                                    \\",
           "                        double d = GR[c + i] + RD[i];                                    \\",
           "softmax's VJP (contiguous blocks) adds sum(g * y) instead of subtracting it"),
    Mutant("softmax-vjp-strided-sign", "csrc/kernels/softmax.c",
           "                double d = G[ix] - red[io];                                              \\",
           "                double d = G[ix] + red[io];                                              \\",
           "softmax's VJP over axes that are not one block: the wrong sign"),
    Mutant("log-softmax-jvp-sign", "csrc/kernels/softmax.c",
           "                SLICE_WALK(x, mask, TO[ix] = (TT)(TX[ix] - red[io]));                    \\",
           "                SLICE_WALK(x, mask, TO[ix] = (TT)(TX[ix] + red[io]));                    \\",
           "log_softmax's JVP: the wrong sign"),
    Mutant("softmax-second-order", "csrc/kernels/softmax.c",
           "            SLICE_WALK(x, mask, STORE(D, ix, (TT)(SAFE(TY[ix], TY[ix] * (G[ix] - r1[io])) - \\",
           "            SLICE_WALK(x, mask, STORE(D, ix, (TT)(SAFE(TY[ix], TY[ix] * (G[ix] + r1[io])) - \\",
           "softmax's second-order term (hvp): the wrong sign inside"),
]

# Fast, focused files first: most mutants are caught within seconds; the rest of the suite follows.
FIRST = ["tests/test_branches.py", "tests/test_rules.py", "tests/test_sweep_routes.py", "tests/test_inplace_versions.py",
         "tests/test_forward_mode.py", "tests/test_hessian.py", "tests/test_kernel_paths.py", "tests/test_errors.py"]


def select(names):
    if not names:
        return list(enumerate(MUTANTS, 1))
    out = []
    for word in names:
        hits = [(i, m) for i, m in enumerate(MUTANTS, 1) if word == str(i) or word == m.name]
        if not hits:
            sys.exit(f"mutants: no mutant {word!r} (see --list)")
        out += hits
    return out


def apply(text, m):
    """text with m's line replaced; the line must occur exactly once."""
    lines = text.split("\n")
    where = [i for i, line in enumerate(lines) if line == m.original]
    if len(where) != 1:
        raise SystemExit(f"mutants: {m.name}: the line occurs {len(where)} times in {m.path} (must be once); "
                         f"the code has moved on, update the mutant:\n    {m.original}")
    lines[where[0]] = m.replacement
    return "\n".join(lines)


def check_all(mutants):
    for _, m in mutants:
        with open(os.path.join(ROOT, m.path)) as f:
            apply(f.read(), m)


# ---- the build: one object per C file, so a mutant recompiles one file ----------------------

class Build:
    def __init__(self, tree, opt, jobs):
        self.tree, self.opt, self.jobs = tree, opt, jobs
        self.objdir = os.path.join(tree, "_mutant_objs")
        os.makedirs(self.objdir, exist_ok=True)
        cwd = os.getcwd()
        os.chdir(tree)   # _build.py names its sources relative to the working directory
        try:
            ffi = runpy.run_path(os.path.join(tree, "pyautodiff", "_build.py"))["ffibuilder"]
        finally:
            os.chdir(cwd)
        _, _, _, kw = ffi._assigned_source
        wrapper = os.path.join(self.objdir, "_core.c")
        ffi.emit_c_code(wrapper)
        self.sources = [wrapper] + [os.path.join(tree, s) for s in kw["sources"]]
        # the build's own flags with the optimisation level swapped; Python's NDEBUG and -fwrapv
        # as setuptools would add them
        flags = [opt if re.fullmatch(r"-O\d", f) else f for f in kw["extra_compile_args"]]
        py_inc = sysconfig.get_paths()["include"]
        self.cflags = (["-fPIC", "-DNDEBUG", "-fwrapv", "-I" + py_inc]
                       + ["-I" + os.path.join(tree, d) for d in kw["include_dirs"]] + flags)
        self.ldflags = kw.get("extra_link_args", []) + ["-l" + lib for lib in kw.get("libraries", [])]
        self.cc = os.environ.get("CC", "cc").split()
        self.target = os.path.join(tree, "pyautodiff", "_core" + importlib.machinery.EXTENSION_SUFFIXES[0])

    def obj(self, src, tag=""):
        rel = os.path.relpath(src, self.tree).replace(os.sep, "_")
        return os.path.join(self.objdir, rel + tag + ".o")

    def compile(self, src, obj):
        r = subprocess.run(self.cc + self.cflags + ["-c", src, "-o", obj], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"compiling {src} failed:\n{r.stderr[-3000:]}")

    def base(self):
        with ThreadPoolExecutor(self.jobs) as pool:
            list(pool.map(lambda s: self.compile(s, self.obj(s)), self.sources))

    def link(self, swap=None):
        """Link the base objects, with swap = (source, object) standing in for one of them."""
        objs = [swap[1] if swap and s == swap[0] else self.obj(s) for s in self.sources]
        r = subprocess.run(self.cc + ["-shared"] + objs + ["-o", self.target] + self.ldflags,
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"linking failed:\n{r.stderr[-3000:]}")


def copy_tree(dst):
    ignore = shutil.ignore_patterns(".git", "build", "*.so", "*.egg-info", "__pycache__", ".hypothesis",
                                    ".pytest_cache", "_mutant_objs")
    shutil.copytree(ROOT, dst, ignore=ignore)


# Loaded from the scratch tree's root: a caught mutant fails a hypothesis test at once, and
# shrinking the failure (minutes under a mutant that breaks every example) would tell nothing more.
CONFTEST = """from hypothesis import Phase, settings
settings.register_profile("mutants", phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile("mutants")
"""


def suite_order(tree):
    """Every test file, the focused ones first (pytest keeps the order of file arguments, not of
    a directory's)."""
    found = []
    for d, _, names in os.walk(os.path.join(tree, "tests")):
        found += [os.path.relpath(os.path.join(d, n), tree) for n in names if re.fullmatch(r"test_.*\.py", n)]
    first = [t for t in FIRST if t in found]
    return first + sorted(t for t in found if t not in first)


def run_tests(tree, tests, timeout):
    """(passed, what failed first, seconds)"""
    files = tests or suite_order(tree)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timeout after {timeout} s (a hang)", time.time() - t0
    dt = time.time() - t0
    if r.returncode == 0:
        return True, "", dt
    out = r.stdout + r.stderr
    first = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - |$)", out, re.M)
    if first:
        return False, first.group(1), dt
    if r.returncode < 0 or "Fatal Python error" in out:
        return False, f"crash (status {r.returncode})", dt
    return False, f"pytest exit {r.returncode}: " + (out.strip().splitlines() or ["?"])[-1][:120], dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="N", help="mutants by number or name")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--check", action="store_true", help="check that every mutant applies, and exit")
    ap.add_argument("--opt", default="-O1", help="optimisation level of the mutant builds (default -O1)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel compiles of the base build (default 2)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per test run (default 900)")
    ap.add_argument("--baseline", choices=["yes", "no", "auto"], default="auto",
                    help="run the tests on the unmutated build first (auto: unless --only)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch tree")
    ap.add_argument("--markdown", metavar="FILE", help="also write the result table to FILE")
    ap.add_argument("tests", nargs="*", help="test files or node ids (after --); default: the whole suite")
    args = ap.parse_args(argv)
    chosen = select(args.only)
    if args.list:
        for i, m in chosen:
            print(f"{i:3d}  {m.name:36s} {m.path:28s} {m.why}")
        return 0
    check_all(chosen)
    if args.check:
        print(f"all {len(chosen)} mutants apply")
        return 0

    scratch = tempfile.mkdtemp(prefix="pyautodiff-mutants-")
    tree = os.path.join(scratch, "tree")
    try:
        copy_tree(tree)
        with open(os.path.join(tree, "conftest.py"), "w") as f:
            f.write(CONFTEST)
        t0 = time.time()
        build = Build(tree, args.opt, args.jobs)
        build.base()
        build.link()
        print(f"base build at {args.opt}: {time.time() - t0:.0f} s ({tree})", flush=True)
        probe = subprocess.run([sys.executable, "-c", "import pyautodiff; print(pyautodiff.__file__)"],
                               cwd=tree, capture_output=True, text=True)
        if not probe.stdout.startswith(tree):
            sys.exit(f"mutants: the scratch tree's pyautodiff is not the one imported: {probe.stdout}{probe.stderr}")
        if args.baseline == "yes" or (args.baseline == "auto" and not args.only):
            ok, what, dt = run_tests(tree, args.tests, args.timeout)
            print(f"unmutated build: {'passes' if ok else 'FAILS at ' + what} ({dt:.0f} s)", flush=True)
            if not ok:
                return 1
        rows = []
        for i, m in chosen:
            path = os.path.join(tree, m.path)
            with open(path) as f:
                original = f.read()
            obj = build.obj(path, ".mutant")
            try:
                with open(path, "w") as f:
                    f.write(apply(original, m))
                build.compile(path, obj)
            finally:
                with open(path, "w") as f:
                    f.write(original)
            build.link((path, obj))
            ok, what, dt = run_tests(tree, args.tests, args.timeout)
            rows.append((i, m, not ok, what, dt))
            print(f"{i:3d} {m.name:36s} {'caught by ' + what if not ok else 'SURVIVED'} ({dt:.0f} s)", flush=True)
        build.link()
        table = ["| # | mutant | file | result | first failing test |", "|---|---|---|---|---|"]
        for i, m, caught, what, dt in rows:
            table.append(f"| {i} | `{m.name}`: {m.why} | {os.path.basename(m.path)} | "
                         f"{'caught' if caught else '**survived**'} | {('`' + what + '`') if caught else ''} |")
        survived = [m.name for _, m, caught, _, _ in rows if not caught]
        print("\n" + "\n".join(table))
        print(f"\n{len(rows) - len(survived)} of {len(rows)} mutants caught"
              + (f"; survived: {', '.join(survived)}" if survived else ""))
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write("\n".join(table) + "\n")
        return 1 if survived else 0
    finally:
        if args.keep:
            print(f"scratch tree kept: {tree}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
