"""Record once, replay in C: ``tf = ad.record(f, *example_args, argnums=0)``.

Recording calls f once, eagerly, on fresh leaves made from the differentiated arguments (as
``ad.grad`` does), and turns the graph f recorded into a plan in C (csrc/replay.c): the ops between
the inputs and the output in creation order, with every buffer assigned once. ``tf(*args)``,
``tf.grad``, ``tf.value_and_grad`` and ``tf.vjp`` then replay that plan at new values of the
differentiated arguments, forward and reverse, in one C call with the GIL released: the same
kernels in the same order as ``ad.grad(f, argnums)(*args)`` on its numeric path, so the results
are bit-identical to it. Replays return plain values (no graph): where ad.grad keeps its result on
the tape for a higher order (f closes over a tensor that requires grad, with grad mode on), the
recorded rules it then runs agree with the replay to rounding only; inside a transform a replay
is refused.

What keys a plan. The shapes and dtypes of the differentiated arguments (and their pytree
structure): a call with another shape records again, as ``jax.jit`` specialises. The other
arguments and keyword arguments are static: NumPy arrays and numbers by value, tensors and other
objects by identity; a call with different ones records again.

Guards. f may read traced values in Python (``item()``, ``float()``, ``bool()``, ``numpy()``, a
comparison such as ``x > 0``, which gives a NumPy bool array, and everything built on them: a mask,
``ad.where``, an ``if``). The value read (for a comparison: the mask it gave) is then part of the
plan's contract: the plan computes the tensor again at every replay and the binding compares it
with what the recording read. A replay whose reads would differ (a flipped comparison, another
item()) records again (``on_guard="rerecord"``, the default) or raises ``ad.GuardError``
(``on_guard="raise"``); it never returns a value computed from a stale mask or branch. A plan
with guards runs as two C calls (forward, the checks in NumPy, backward), one without as one.

Constants. Tensors f uses that are not inputs (closed-over parameters, data) are copied into the
plan; an in-place write to one since (an optimizer step) is seen at the next replay, which then
records again (or raises, with ``on_guard="raise"``). NumPy arrays f closes over are read when f
is recorded, as ``jax.jit`` does.

Not supported (a clear error at recording): custom functions (``ad.custom_vjp``, ``ad.Function``)
and gradient hooks, whose rules run Python; values computed off the graph from traced tensors
(ops under ``ad.no_grad()``, ``detach()``, ``.data``) and in-place writes inside f, which a replay
could not follow; ``backward()`` inside f.

Fusion. Chains of elementwise ops on one shape of at least ``fuse`` elements (``FUSE_MIN_ELEMENTS``
by default; scalars such as a 0-d weight may be broadcast in) run tile by tile, forward and
reverse (csrc/fusion.c): a tile of a few thousand elements passes through the whole chain while
it sits in cache, the reverse computes the chain's inner values again per tile instead of reading
them from memory, and only the chain's inputs, outputs and gradients go to memory. The kernels and
their order per element are the unfused ones', and a one-value operand's gradient is summed in
the same lanes in the same order, so a fused replay is bit-identical to the unfused one (and to
eager). ``fuse=False`` turns it off.

Scalars. Runs of one-element elementwise steps (a chain of 0-d values, a graph of numbers like
micrograd's) replay as a compact program of one interpreter loop (csrc/scalar_replay.c) whose
cases compute each op from the same generated expressions as its kernel, so with the same bits
(a NaN result is left to the kernel itself: its sign depends on the compiler's operand order);
the other steps of the plan run as before. ``plan_stats()`` counts the steps it ran.

Threads: a plan is private memory, so ``tf`` may be called from any thread. Calls to one ``tf``
from several threads are serialized (a lock per plan: each replay runs whole, forward, guards and
backward, never interleaved); for parallel replays, record one callable per thread.
"""
import contextlib
import threading
import types
import warnings

import numpy as np

from ._capi import ffi, lib, check, raise_status, as_float_array, float32, float64
from .tensor import Tensor, _from_array, _recording
from .functional import (_argnums, _flatten, _unflatten, _level, _output, _scalar_output, _matching,
                         _handles, _dependence, _pick, _active)

__all__ = ["record", "GuardError"]


class GuardError(RuntimeError):
    """A replay of a recorded function (with ``on_guard="raise"``) would have read other values
    than the recording did: a comparison, item() or numpy() of a traced tensor came out differently,
    or a tensor the plan holds as a constant was written in place."""


# ---- what f reads while it is recorded ----

class _Reads:
    """Every value of a tensor f reads while it is recorded (tensor.py reports them): the tensors
    (retained handles, for the plan to compute them again) and what was read."""

    def __init__(self):
        self.watch = []        # retained handles, one per read
        self.guards = []       # ("value", watch, bytes) or ("compare", fn, operands, mask)
        self._quiet = 0

    def _watch(self, t):
        check(lib.ad_retain(t._h))
        self.watch.append(t._h)
        return len(self.watch) - 1

    def read(self, t):
        if self._quiet:
            return
        info = t._info()
        nbytes = info.size * np.dtype(t.dtype).itemsize
        self.guards.append(("value", self._watch(t), bytes(ffi.buffer(info.data, nbytes)) if nbytes else b""))

    def compare(self, fn, t, other, mask):
        with self.quiet():
            operands = [(self._watch(t), t.numpy())]
            if isinstance(other, Tensor):
                operands.append((self._watch(other), other.numpy()))
            else:
                # kept as given: a Python scalar compares as NumPy's weak scalar, as in the recording
                operands.append((None, np.array(other, copy=True) if isinstance(other, np.ndarray) else other))
        self.guards.append(("compare", fn, operands, np.array(mask, copy=True)))

    @contextlib.contextmanager
    def quiet(self):
        """Reads inside are the bindings' own (a comparison reading its operands), not f's."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def release(self):
        for h in self.watch:
            lib.ad_release(h)
        self.watch = []


# ---- the keys ----

def _freeze(spec):
    if spec is None:
        return None
    kind, keys, children = spec
    return (kind, tuple(keys) if keys is not None else None, tuple(_freeze(c) for c in children))


def _static_key(v):
    """A hashable stand-in for an argument that is not differentiated: equal keys mean f sees the
    same thing."""
    if isinstance(v, Tensor):
        return ("tensor", v._h)
    if isinstance(v, np.ndarray):
        return ("array", v.shape, v.dtype.str, v.tobytes())
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes, np.generic)):
        return ("value", type(v), repr(v))
    if isinstance(v, (list, tuple)):
        return (type(v), tuple(_static_key(i) for i in v))
    if isinstance(v, dict):
        return (type(v), tuple((k, _static_key(i)) for k, i in v.items()))
    return ("object", id(v))


_FLOATS = (float32, float64)


def _as_input(x):
    """The values of one differentiated leaf as the array a replay reads (what ad.grad's fresh leaf
    would hold)."""
    if isinstance(x, Tensor):
        return x.numpy()
    if type(x) is np.ndarray and x.dtype in _FLOATS and x.flags.c_contiguous:
        return x                   # what as_float_array would return, without its checks
    return as_float_array(x, what="input")


# ---- one plan ----

_OK, _STALE, _GUARD = 0, 1, 2
MAX_PLANS = 32       # plans one recorded function keeps (one per key: shapes, dtypes, static args)
# Elements from which an elementwise chain is fused: below it its tensors stay in cache anyway
# (benchmarks/record_replay.py measures the gain above it), and the plan reuses their buffers.
FUSE_MIN_ELEMENTS = lib.AD_PLAN_FUSE_MIN
_NO_FUSION = 2**63 - 1   # ad_plan_build_data's fuse_from when fusion is off: every size shares buffers


class _Plan:
    """One recording of f: the C plan, the guards, and how results are shaped."""

    def __init__(self, plan, guards, specs, single, out_shape, out_dtype, keep):
        self.plan = plan
        self.guards = guards
        self.specs = specs
        self.single = single
        self.out_shape = out_shape
        self.out_dtype = out_dtype
        self.out_size = int(np.prod(out_shape, dtype=np.int64))
        self.keep = keep           # objects a static key names by identity
        self.lock = threading.Lock()

    def _watched(self, w):
        info = ffi.new("ad_info_t *")
        check(lib.ad_plan_watch(self.plan, w, info))
        dt = np.dtype(np.float64 if info.dtype == lib.AD_F64 else np.float32)
        shape = tuple(info.shape[i] for i in range(info.ndim))
        if info.size == 0:
            return np.zeros(shape, dt)
        return np.frombuffer(ffi.buffer(info.data, info.size * dt.itemsize), dtype=dt).reshape(shape)

    def _guards_hold(self):
        for g in self.guards:
            if g[0] == "value":
                _, w, expected = g
                if self._watched(w).tobytes() != expected:
                    return False
            else:
                _, fn, operands, mask = g
                values = [v if w is None else self._watched(w) for w, v in operands]
                got = np.asarray(fn(*values))
                if got.shape != mask.shape or not np.array_equal(got, mask):
                    return False
        return True

    def run(self, arrays, seed, want_grads):
        """(status, value array, gradient arrays or None)."""
        out = np.empty(self.out_shape, self.out_dtype)
        grads = [np.empty(a.shape, a.dtype) for a in arrays] if want_grads else None
        inputs = ffi.new("void *[]", [ffi.from_buffer(a) for a in arrays] or [ffi.NULL])
        gptr = ffi.new("void *[]", [ffi.from_buffer(g) for g in grads] or [ffi.NULL]) if want_grads else ffi.NULL
        sptr = ffi.from_buffer(seed) if seed is not None else ffi.NULL
        with self.lock:
            if not self.guards:
                st = lib.ad_plan_run(self.plan, inputs, ffi.from_buffer(out), sptr, gptr)
            else:
                st = lib.ad_plan_forward(self.plan, inputs, ffi.from_buffer(out))
                if st == 0 and not self._guards_hold():
                    return _GUARD, None, None
                if st == 0 and want_grads:
                    st = lib.ad_plan_backward(self.plan, sptr, gptr)
        if st == lib.AD_PLAN_STALE:
            return _STALE, None, None
        if st:
            raise_status(st)
        return _OK, out, grads


class Recorded:
    """A function recorded once and replayed in C (see the module docstring); made by ad.record."""

    def __init__(self, f, argnums, on_guard, fuse=True):
        if on_guard not in ("rerecord", "raise"):
            raise ValueError(f"record: on_guard must be 'rerecord' or 'raise', got {on_guard!r}")
        if fuse is True or fuse is False:
            fuse = FUSE_MIN_ELEMENTS if fuse else 0
        elif not isinstance(fuse, int) or fuse < 1:
            raise ValueError(f"record: fuse must be True, False or a number of elements >= 1, got {fuse!r}")
        self.fuse = fuse
        self.f = f
        self.argnums = argnums
        self.on_guard = on_guard
        self._plans = {}
        self._nums = {}            # normalised argnums by number of arguments
        self._lock = threading.Lock()
        self.records = 0           # recordings made so far (the first one included)
        self.__name__ = f"record({getattr(f, '__name__', 'f')})"

    # -- keys and recording --

    def _split(self, args, kwargs):
        """(arrays of the differentiated leaves, their specs, single, key)."""
        nargs = len(args)
        cached = self._nums.get(nargs)
        if cached is None:
            cached = self._nums[nargs] = _argnums(self.argnums, nargs, "record")
        single, nums = cached
        arrays, specs, counts = [], [], []
        for i in nums:
            values = []
            specs.append(_flatten(args[i], values))
            counts.append(len(values))
            arrays += [_as_input(v) for v in values]
        static = tuple(_static_key(a) for i, a in enumerate(args) if i not in nums)
        kw = tuple(sorted((k, _static_key(v)) for k, v in kwargs.items()))
        key = (nums, tuple(_freeze(s) for s in specs), tuple((a.shape, a.dtype.str) for a in arrays), static, kw)
        return arrays, (specs, counts), single, nums, key

    def _record(self, args, kwargs, arrays, specs, single, nums, key):
        specs, counts = specs
        leaves = [_from_array(a, requires_grad=True) for a in arrays]   # (copied into the core)
        call_args = list(args)
        it = iter(leaves)
        for i, spec, count in zip(nums, specs, counts):
            call_args[i] = _unflatten(spec, iter([next(it) for _ in range(count)]))
        plan, guards, out, _, fused = self._trace(call_args, kwargs, leaves, len(leaves))
        keep = [a for i, a in enumerate(args) if i not in nums] + list(kwargs.values())
        entry = _Plan(plan, guards, specs, single, out.shape, out.dtype, keep)
        entry.fused = (int(fused[0]), int(fused[1]), int(fused[2]))
        with self._lock:
            self._plans.pop(key, None)
            while len(self._plans) >= MAX_PLANS:       # the oldest goes (a cache, like jit's)
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = entry
            self.records += 1
        return entry

    def _trace(self, call_args, kwargs, inputs, n_diff):
        """Call f eagerly on call_args while recording and build its plan from the input leaves
        (the first n_diff differentiated, the rest data: record_step.py's batch), fused unless
        self.fuse is 0: (the C plan, the guards, f's output, which of the differentiated inputs the
        output depends on, the fusion's counts)."""
        leaves = inputs[:n_diff]
        reads = _Reads()
        before = lib.ad_record_mode(1)
        if before < 0:
            raise_status(before)
        prev = getattr(_recording, "rec", None)
        _recording.rec = reads
        try:
            with _level("record"):
                res = self.f(*call_args, **kwargs)
        except BaseException:
            reads.release()
            raise
        finally:
            _recording.rec = prev
            after = lib.ad_record_mode(0)
        try:
            if after != before:
                raise RuntimeError(
                    "record: f computed a value from a traced tensor off the graph (an op under "
                    "ad.no_grad(), detach(), .data) or wrote a tensor in place; a replay could not "
                    "follow that value to new inputs, so f cannot be recorded (call it eagerly, or "
                    "keep the computation on the graph)")
            out = _output(res, "record")
            reached, _ = _dependence(out, leaves)
            if leaves and not any(reached):
                warnings.warn("record: the output of f does not depend on the differentiated input, so its "
                              "derivative is zero. If that is unexpected, f may have left the tape (.numpy(), "
                              "float(), np.asarray() or .item() give plain numbers that cannot be differentiated)",
                              UserWarning, stacklevel=5)
            n_watch = len(reads.watch)
            where = ffi.new("int64_t[]", max(n_watch, 1))
            pp = ffi.new("ad_plan **")
            check(lib.ad_plan_build_data(out._h, len(inputs), _handles(inputs), n_diff, n_watch,
                                         ffi.new("int64_t[]", reads.watch or [0]), where,
                                         self.fuse or _NO_FUSION, pp))
            plan = ffi.gc(pp[0], lib.ad_plan_free)
            fused = ffi.new("int64_t[3]")
            if self.fuse:
                check(lib.ad_plan_fuse(plan, self.fuse, fused, fused + 1, fused + 2))
        finally:
            reads.release()
        guards = []
        for g in reads.guards:
            if g[0] == "value":
                if where[g[1]] >= 0:       # a constant of the plan cannot change unseen
                    guards.append(("value", int(where[g[1]]), g[2]))
            else:
                _, fn, operands, mask = g
                ops = [(None, v) if w is None or where[w] < 0 else (int(where[w]), None) for w, v in operands]
                if any(w is not None for w, _ in ops):
                    guards.append(("compare", fn, ops, mask))
        return plan, guards, out, reached, fused

    # -- replays --

    def _replay(self, args, kwargs, want_grads, cotangent=None, name="record"):
        levels = _active()
        if levels:
            # its results are plain values: an enclosing transform would see a constant
            raise RuntimeError(f"{name}: a recorded function called inside the function given to "
                               f"ad.{levels[-1].name} gives values that ad.{levels[-1].name} cannot "
                               f"differentiate; call f itself there")
        arrays, specs, single, nums, key = self._split(args, kwargs)
        entry = self._plans.get(key)
        fresh = entry is None
        if fresh:
            entry = self._record(args, kwargs, arrays, specs, single, nums, key)
        while True:
            seed = None
            if cotangent is not None:
                seed = np.ascontiguousarray(_matching(cotangent, entry.out_shape, entry.out_dtype,
                                                      f"{name}: the cotangent", "the output of f"))
            elif want_grads and entry.out_size != 1:
                _scalar_output(types.SimpleNamespace(size=entry.out_size, shape=entry.out_shape), name)
            st, out, grads = entry.run(arrays, seed, want_grads)
            if st == _OK:
                return entry, out, grads
            if fresh:
                raise RuntimeError(f"{name}: the replay right after recording f read other values than the "
                                   f"recording did; f is not deterministic (random numbers, a clock, global "
                                   f"state), so it cannot be recorded")
            if self.on_guard == "raise":
                raise GuardError(
                    f"{name}: a guard of the recorded f failed: "
                    + ("a tensor the plan holds as a constant was written in place since the recording"
                       if st == _STALE else
                       "a value f read while it was recorded (a comparison, item(), float(), bool(), numpy()) "
                       "comes out differently at these inputs, so f would take another branch or mask")
                    + "; call with on_guard='rerecord' (the default) to record again")
            entry = self._record(args, kwargs, arrays, specs, single, nums, key)
            fresh = True

    @staticmethod
    def _grads(entry, grads):
        it = iter([_from_array(g) for g in grads])
        return _pick(entry.single, [_unflatten(spec, it) for spec in entry.specs])

    def __call__(self, *args, **kwargs):
        """f(*args), replayed (a Tensor that does not require grad)."""
        _, out, _ = self._replay(args, kwargs, False)
        return _from_array(out)

    def value_and_grad(self, *args, **kwargs):
        """(f(*args), the gradient with respect to args[argnums]), as ad.value_and_grad(f, argnums)."""
        entry, out, grads = self._replay(args, kwargs, True, name="record.value_and_grad")
        return _from_array(out), self._grads(entry, grads)

    def grad(self, *args, **kwargs):
        """The gradient of scalar f with respect to args[argnums], as ad.grad(f, argnums)."""
        entry, _, grads = self._replay(args, kwargs, True, name="record.grad")
        return self._grads(entry, grads)

    def vjp(self, *args, **kwargs):
        """``(f(*args), vjp_fn)``: ``vjp_fn(cotangent)`` returns a tuple with one cotangent-weighted
        gradient per argument in argnums (every argument's when argnums names them all, as ad.vjp).
        Each vjp_fn call replays forward and backward at these args, so it stays right whatever
        other replays run in between."""
        _, out, _ = self._replay(args, kwargs, False, name="record.vjp")

        def vjp_fn(cotangent):
            entry, _, grads = self._replay(args, kwargs, True, cotangent, name="record.vjp")
            g = self._grads(entry, grads)
            return g if isinstance(g, tuple) else (g,)

        return _from_array(out), vjp_fn

    def plan_stats(self):
        """{"plans", "ops", "constants", "guards", "bytes", "fused_regions", "fused_ops"} of the plans
        held, "tile" (elements per tile of the last fused region), and "scalar_ops",
        "scalar_steps" (forward and reverse steps run by the scalar program, csrc/scalar_replay.c),
        for tests and tuning."""
        ops, consts, nbytes = ffi.new("int64_t *"), ffi.new("int64_t *"), ffi.new("int64_t *")
        sf, sr = ffi.new("int64_t *"), ffi.new("int64_t *")
        total = {"plans": 0, "ops": 0, "constants": 0, "guards": 0, "bytes": 0, "fused_regions": 0,
                 "fused_ops": 0, "tile": 0, "scalar_ops": 0, "scalar_steps": 0}
        for entry in list(self._plans.values()):
            check(lib.ad_plan_stats(entry.plan, ops, consts, nbytes))
            check(lib.ad_plan_scalar_ops(entry.plan, sf, sr))
            total["scalar_ops"] += sf[0]
            total["scalar_steps"] += sr[0]
            total["plans"] += 1
            total["ops"] += ops[0]
            total["constants"] += consts[0]
            total["guards"] += len(entry.guards)
            total["bytes"] += nbytes[0]
            total["fused_regions"] += entry.fused[0]
            total["fused_ops"] += entry.fused[1]
            total["tile"] = entry.fused[2] or total["tile"]
        return total


def record(f, *example_args, argnums=0, on_guard="rerecord", fuse=True, **example_kwargs):
    """Record f once at example_args (eagerly) and return a callable that replays it in C.

    ``tf = ad.record(f, *example_args, argnums=0)``; then ``tf(*args)``, ``tf.grad(*args)``,
    ``tf.value_and_grad(*args)`` and ``tf.vjp(*args)`` give what ``f(*args)``, ``ad.grad(f,
    argnums)(*args)``, ``ad.value_and_grad(f, argnums)(*args)`` and ``ad.vjp`` would, bit for bit,
    with the same structures (see the module docstring for guards, keys and what is not
    supported). ``on_guard``: ``"rerecord"`` (record again when a guard fails) or ``"raise"``.
    ``fuse``: run elementwise chains of at least FUSE_MIN_ELEMENTS elements tile by tile (True),
    not (False), or from this many elements (an int); the results are the same bit for bit."""
    tf = Recorded(f, argnums, on_guard, fuse)
    arrays, specs, single, nums, key = tf._split(example_args, example_kwargs)
    tf._record(example_args, example_kwargs, arrays, specs, single, nums, key)
    return tf
