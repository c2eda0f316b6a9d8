"""A traced training step: ``step = ad.record_step(loss_fn, optimizer, *example_batch)``.

``step(*batch)`` does what the eager loop's four lines do::

    optimizer.zero_grad()
    loss = loss_fn(*batch)
    loss.backward()
    optimizer.step()

and returns ``loss`` (a Tensor that does not require grad), in one C call with the GIL released:
the recorded plan (see ``record.py``) replays forward and backward with the optimizer's
parameters as its inputs, each gradient is written into the parameter's ``.grad``, and the
optimizer's C update (``csrc/optim.c``, the kernel ``optimizer.step()`` itself calls) runs on it.
The results equal the eager loop's bit for bit, and everything stays in the Python objects: the
parameters' values and ``.grad``, ``optimizer.state`` (moments, buffers and step counts: the very
tensors ``optimizer.step()`` updates), and the hyperparameters, read from ``optimizer.param_groups``
at every call, so a learning-rate scheduler, ``state_dict()`` / ``load_state_dict()``,
``add_param_group`` and eager steps in between all keep working.

What is traced. ``loss_fn(*batch)`` reads the parameters from the model it closes over. The
positional arguments that are float Tensors or float NumPy arrays are the batch: their values are
read at every call (a new shape or dtype records again). Every other argument (numbers, integer
arrays such as class labels used as indices, objects) and the keyword arguments are static, keyed
by value (arrays, numbers) or identity, as in ``ad.record``: a new value records again, so pass
targets as float arrays (one-hot labels) to keep one plan. Reads of traced values inside
``loss_fn`` are guards, as in ``ad.record`` (``on_guard``).

Supported: the built-in optimizers (SGD with momentum, dampening, nesterov and weight decay,
Adam, AdamW, amsgrad, RMSprop, Adagrad), any number of parameter groups, parameters the loss does
not reach (no grad, no update: as eager), frozen tensors (``requires_grad=False``: constants).
Refused with a clear error, never a different update: an optimizer class that overrides
``step()`` (its update runs in Python: call it eagerly), a tensor the loss depends on that
requires grad but is not in the optimizer (eager backward would give it a ``.grad`` that a
traced step does not compute), and what ``ad.record`` refuses. There is no closure argument:
the step calls ``loss_fn`` itself. Gradients are not accumulated across steps (the step starts
with ``zero_grad()``); for gradient accumulation or clipping, run the eager loop.
"""
import numpy as np

from ._capi import ffi, lib, check, raise_status, float32, float64
from .tensor import Tensor, _from_array
from .functional import _dependence, _active
from .optim.optimizers import Optimizer
from .record import Recorded, GuardError, _Plan, _static_key, MAX_PLANS

__all__ = ["record_step", "TrainStep"]

_FLOATS = (float32, float64)
# ad_train_param_t as NumPy sees it, to read and write the step counts in one go
_TABLE = np.dtype([("param", np.int64), ("state", np.int64, 3), ("step", np.int64), ("group", np.int32),
                   ("hit", np.int32)])


def _is_data(v):
    if isinstance(v, Tensor):
        return v.dtype in _FLOATS
    return type(v) is np.ndarray and v.dtype in _FLOATS


class _StepPlan(_Plan):
    """One recording of loss_fn: the C plan over (trainable parameters, batch) and its guards."""

    def __init__(self, params, hit, plan, guards, out, keep):
        super().__init__(plan, guards, None, None, out.shape, out.dtype, keep)
        self.params = params           # the trainable parameters, in the plan's input order
        self.hit = hit                 # whether the loss reaches each


class TrainStep:
    """``loss = step(*batch)``: zero_grad, forward, backward and optimizer.step() replayed in C (see the
    module docstring); made by ad.record_step."""

    def __init__(self, loss_fn, optimizer, on_guard="rerecord"):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"record_step: optimizer must be a pyautodiff.optim optimizer, got {type(optimizer).__name__}")
        kind = type(optimizer)
        if kind.step is not Optimizer.step or kind._configure is Optimizer._configure:
            raise TypeError(f"record_step: {kind.__name__} has no C update (it overrides step(), which runs in "
                            f"Python); a traced step supports the built-in SGD, Adam, AdamW, RMSprop and Adagrad. "
                            f"Run the eager loop (loss.backward(); optimizer.step()) for this optimizer")
        self.f = loss_fn
        self.optimizer = optimizer
        # unfused: fusion (csrc/fusion.c) is not yet tested with a plan's data inputs
        self._rec = Recorded(loss_fn, 0, on_guard, fuse=False)
        self.on_guard = on_guard
        self._plans = {}
        self.records = 0
        self._settings = ffi.new("ad_optim_t[]", 1)
        self._cache = None
        self.__name__ = f"record_step({getattr(loss_fn, '__name__', 'loss_fn')})"

    # -- keys and recording --

    def _split(self, batch, kwargs):
        data = [i for i, v in enumerate(batch) if _is_data(v)]
        arrays = [batch[i].numpy() if isinstance(batch[i], Tensor) else np.ascontiguousarray(batch[i]) for i in data]
        static = tuple((i, _static_key(v)) for i, v in enumerate(batch) if i not in data)
        kw = tuple(sorted((k, _static_key(v)) for k, v in kwargs.items()))
        params = tuple(p for p in self.optimizer.params if p.requires_grad)
        key = (len(batch), tuple(data), tuple((a.shape, a.dtype.str) for a in arrays), static, kw,
               tuple(id(p) for p in params))
        return data, arrays, params, key

    def _record(self, batch, kwargs, data, arrays, params, key):
        leaves = [_from_array(a, requires_grad=True) for a in arrays]   # the batch: data inputs of the plan
        call_args = list(batch)
        for i, leaf in zip(data, leaves):
            call_args[i] = leaf
        plan, guards, out, reached, _ = self._rec._trace(call_args, kwargs, list(params) + leaves, len(params))
        if out.size != 1:
            raise ValueError(f"record_step: loss_fn must return a scalar loss, got shape {out.shape}")
        _, outside = _dependence(out, list(params) + leaves)
        if outside:
            raise ValueError(f"record_step: the loss depends on {outside} tensor(s) that require grad but are not "
                             f"in the optimizer; eager backward() would give them a .grad that a traced step does "
                             f"not compute. Add them to the optimizer, or set requires_grad=False on them")
        keep = [v for i, v in enumerate(batch) if i not in data] + list(kwargs.values())
        entry = _StepPlan(params, reached, plan, guards, out, keep)
        self._plans.pop(key, None)
        while len(self._plans) >= MAX_PLANS:
            self._plans.pop(next(iter(self._plans)))
        self._plans[key] = entry
        self.records += 1
        return entry

    # -- the optimizer's side --

    def _slots(self, entry):
        """The C description of every parameter (its state leaves made on first use, as
        optimizer.step() makes them) and of every group's settings, read from the optimizer at
        every call: the hyperparameters a scheduler set, the step counts, state that
        load_state_dict() or an eager step replaced. The parameter table is kept between calls
        and checked (identity of every state dict and buffer) rather than rebuilt."""
        opt = self.optimizer
        groups = opt.param_groups
        if len(self._settings) < len(groups):
            self._settings = ffi.new("ad_optim_t[]", len(groups))
        needs = []
        for gi, g in enumerate(groups):
            o = self._settings[gi]
            opt._configure(o, g)
            needs.append((id(g["params"]), len(g["params"]), o.kind, o.momentum != 0, o.amsgrad, o.centered))
        key = (entry, id(opt.state), tuple(needs))
        cache = self._cache
        if cache is None or cache[0] != key or not self._unchanged(cache[3]):
            cache = self._cache = (key,) + self._table(entry)
        _, cp, view, checks, hit = cache
        if hit:
            view["step"][hit] = [st["step"] for _, st, _ in checks]
        return cp, view, checks, hit, len(groups)

    def _unchanged(self, checks):
        state = self.optimizer.state
        for p, st, items in checks:
            if state.get(p) is not st:
                return False
            for k, b in items:
                if st.get(k) is not b:
                    return False
        return True

    def _table(self, entry):
        opt = self.optimizer
        group_of = {id(p): (gi, g) for gi, g in enumerate(opt.param_groups) for p in g["params"]}
        cp = ffi.new("ad_train_param_t[]", max(len(entry.params), 1))
        view = np.frombuffer(ffi.buffer(cp), dtype=_TABLE)
        checks, hit = [], []
        for i, (p, reached) in enumerate(zip(entry.params, entry.hit)):
            gi, g = group_of[id(p)]
            c = cp[i]
            c.param, c.group, c.hit = p._h, gi, reached
            if not reached:
                continue                 # no grad: not stepped, no state made (as optimizer.step())
            state = opt.state.setdefault(p, {"step": 0})
            s = opt._buffers(p, state, g)
            c.state = [b._h if b is not None else 0 for b in s]
            checks.append((p, state, tuple((k, v) for k, v in state.items() if isinstance(v, Tensor))))
            hit.append(i)
        return cp, view, checks, hit

    # -- a step --

    def __call__(self, *batch, **kwargs):
        levels = _active()
        if levels:
            raise RuntimeError(f"record_step: a training step called inside the function given to "
                               f"ad.{levels[-1].name}")
        data, arrays, params, key = self._split(batch, kwargs)
        entry = self._plans.get(key)
        fresh = entry is None
        if fresh:
            entry = self._record(batch, kwargs, data, arrays, params, key)
        while True:
            cp, view, checks, hit, n_groups = self._slots(entry)
            loss = np.empty(entry.out_shape, entry.out_dtype)
            dptr = ffi.new("void *[]", [ffi.from_buffer(a) for a in arrays] or [ffi.NULL])
            lptr = ffi.from_buffer(loss)
            n = len(entry.params)
            held = True
            with entry.lock:               # calls from several threads run one at a time, as ad.record's
                if not entry.guards:
                    st = lib.ad_plan_train_step(entry.plan, lib.AD_TRAIN_STEP, n, cp, n_groups, self._settings,
                                                dptr, lptr)
                else:
                    st = lib.ad_plan_train_step(entry.plan, lib.AD_TRAIN_FORWARD, n, cp, n_groups, self._settings,
                                                dptr, lptr)
                    held = st != 0 or entry._guards_hold()
                    if st == 0 and held:
                        st = lib.ad_plan_train_step(entry.plan, lib.AD_TRAIN_FINISH, n, cp, n_groups,
                                                    self._settings, dptr, ffi.NULL)
            if st == 0 and held:
                for (_, state, _), t in zip(checks, view["step"][hit].tolist()):
                    state["step"] = t
                return _from_array(loss)
            if st != 0 and st != lib.AD_PLAN_STALE:
                raise_status(st)
            if fresh:
                raise RuntimeError("record_step: the replay right after recording loss_fn read other values than "
                                   "the recording did; loss_fn is not deterministic, so it cannot be recorded")
            if self.on_guard == "raise":
                raise GuardError("record_step: a guard of the recorded loss_fn failed (a value it read, or a constant "
                                 "it holds, changed); call with on_guard='rerecord' (the default) to record again")
            entry = self._record(batch, kwargs, data, arrays, params, key)
            fresh = True

    def plan_stats(self):
        """{"plans", "ops", "bytes"} of the plans held."""
        ops, consts, nbytes = ffi.new("int64_t *"), ffi.new("int64_t *"), ffi.new("int64_t *")
        total = {"plans": 0, "ops": 0, "bytes": 0}
        for entry in list(self._plans.values()):
            check(lib.ad_plan_stats(entry.plan, ops, consts, nbytes))
            total["plans"] += 1
            total["ops"] += ops[0]
            total["bytes"] += nbytes[0]
        return total


def record_step(loss_fn, optimizer, *example_batch, on_guard="rerecord", **example_kwargs):
    """Record one training step of ``loss_fn`` (a scalar loss of the batch, closing over the model)
    with ``optimizer`` at example_batch, and return ``step``: ``step(*batch)`` runs zero_grad,
    the loss, backward and optimizer.step() replayed in C, bit for bit as the eager loop, and
    returns the loss. The example call only records: it changes no parameter. See the module
    docstring for what is supported and what is refused."""
    step = TrainStep(loss_fn, optimizer, on_guard)
    data, arrays, params, key = step._split(example_batch, example_kwargs)
    step._record(example_batch, example_kwargs, data, arrays, params, key)
    return step
