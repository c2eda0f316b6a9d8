/* Handles and their owners across the Python boundary, without a gap (included by the cffi
 * preamble in _build.py; Python's C API, never the core's internals).
 *
 * A handle the core returns carries one reference, which its Tensor drops in __del__. Were the
 * handle to come back to Python as a plain int and be put into a Tensor afterwards, a signal
 * handler that raises (KeyboardInterrupt, an alarm) could run in between: the interpreter checks
 * for pending signals after every call and at every function entry, and the int would be dropped
 * with the frame, its node alive for good. So the calls that make tensors go through these
 * builtins, which call the core and put the handle into a new Tensor in C, where no Python code
 * runs in between; and the Tensor's __del__ is C too, since a pending signal raised inside a
 * Python __del__ is swallowed there ("Exception ignored in ...") and the node is not released.
 *
 *   _call(fn, *args)          fn(*args) returns a handle: a new Tensor owning it; None for 0; a
 *                             negative status raises (raise_status).
 *   _call_out(fn, n, addr, *args)  fn(*args) returns a status and writes n handles (0: none) at
 *                             address addr: a list of new Tensors (or None) owning them.
 *   _borrow(h)                a new reference to h (ad_retain), owned by a new Tensor.
 *   _lend(addr, i, h)         a new reference to h, stored at ((int64_t *)addr)[i], whose reader
 *                             (the core, after a custom rule) takes it over.
 *   _init(Tensor, raise_status, dtypes)  once, from tensor.py; installs Tensor.__del__ and the
 *                             getters Tensor.shape and Tensor.dtype (dtypes: NumPy's dtype per
 *                             ad_dtype code).
 *   _init_no_grad(no_grad)    once, from tensor.py; installs no_grad's __enter__ and __exit__.
 *
 * Only the limited C API is used, as everywhere in the module (an abi3 wheel). */

static PyTypeObject *pyad_tensor_type;
static PyObject *pyad_raise_status;
static Py_ssize_t pyad_h_offset;   /* where a Tensor keeps its `_h` slot (found by _init) */
static Py_ssize_t pyad_shape_offset, pyad_dtype_offset;   /* and its `_shape` and `_dtype` slots */
static PyObject *pyad_dtypes;
static allocfunc pyad_alloc;

#ifndef METH_FASTCALL   /* the limited API of the oldest version names neither; both exist since 3.7 */
#define METH_FASTCALL 0x0080
#endif
typedef PyObject *(*pyad_fastcall)(PyObject *, PyObject *const *, Py_ssize_t);
PyAPI_FUNC(void *) PyType_GetSlot(PyTypeObject *, int);   /* 3.4 on, heap types */

/* The core may have released the GIL for long work (ad_set_gil_hook: a big tensor's last reference
 * going, say); the cffi wrappers retake it after each call, and so do these direct calls. */
static void pyad_regain(void)
{
    if (pyautodiff_saved) {
        PyThreadState *state = pyautodiff_saved;
        pyautodiff_saved = NULL;
        PyEval_RestoreThread(state);
    }
}

static void pyad_release(int64_t h)
{
    ad_release(h);
    pyad_regain();
}

static int pyad_retain(int64_t h)
{
    int st = ad_retain(h);
    pyad_regain();
    return st;
}

/* A new Tensor holding handle h (the int object hobj, whose reference it takes over). On failure
 * the node's reference is dropped, so nothing is left owned by nobody. */
static PyObject *pyad_adopt(PyObject *hobj, int64_t h)
{
    PyObject *t = pyad_alloc(pyad_tensor_type, 0);
    if (!t) {
        Py_DECREF(hobj);
        pyad_release(h);
        return NULL;
    }
    *(PyObject **)((char *)t + pyad_h_offset) = hobj;   /* the slot is NULL in a fresh object */
    return t;
}

/* fn(*args[first:]) */
static PyObject *pyad_invoke(PyObject *const *args, Py_ssize_t first, Py_ssize_t nargs)
{
    PyObject *tuple = PyTuple_New(nargs - first);
    if (!tuple) return NULL;
    for (Py_ssize_t i = first; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SetItem(tuple, i - first, args[i]);
    }
    PyObject *r = PyObject_Call(args[0], tuple, NULL);
    Py_DECREF(tuple);
    return r;
}

static PyObject *pyad_raise(PyObject *status)
{
    PyObject *r = PyObject_CallFunctionObjArgs(pyad_raise_status, status, NULL);
    Py_XDECREF(r);
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "pyautodiff: a failed call raised nothing");
    return NULL;
}

static PyObject *pyad_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs < 1) { PyErr_SetString(PyExc_TypeError, "_call(fn, *args)"); return NULL; }
    PyObject *r = pyad_invoke(args, 1, nargs);
    if (!r) return NULL;
    int64_t h = PyLong_AsLongLong(r);
    if (h == -1 && PyErr_Occurred()) { Py_DECREF(r); return NULL; }
    if (h > 0) return pyad_adopt(r, h);
    if (h == 0) { Py_DECREF(r); Py_RETURN_NONE; }
    pyad_raise(r);
    Py_DECREF(r);
    return NULL;
}

static PyObject *pyad_call_out(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs < 3) { PyErr_SetString(PyExc_TypeError, "_call_out(fn, n, addr, *args)"); return NULL; }
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    int64_t *out = PyLong_AsVoidPtr(args[2]);
    if (PyErr_Occurred()) return NULL;
    PyObject *fn_args[64];
    if (nargs - 2 > 64) { PyErr_SetString(PyExc_TypeError, "_call_out: too many arguments"); return NULL; }
    fn_args[0] = args[0];
    for (Py_ssize_t i = 3; i < nargs; i++) fn_args[i - 2] = args[i];
    PyObject *r = pyad_invoke(fn_args, 1, nargs - 2);
    if (!r) return NULL;
    long st = PyLong_AsLong(r);
    if (st == -1 && PyErr_Occurred()) { Py_DECREF(r); return NULL; }
    if (st) { pyad_raise(r); Py_DECREF(r); return NULL; }
    Py_DECREF(r);
    /* from here on every handle at out is ours: each goes into a Tensor, or is released */
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t h = out[i];
        out[i] = 0;
        PyObject *t = NULL;
        if (!list) {
            if (h > 0) pyad_release(h);
            continue;
        }
        if (h > 0) {
            PyObject *hobj = PyLong_FromLongLong(h);
            if (!hobj) pyad_release(h);
            else t = pyad_adopt(hobj, h);
        } else {
            Py_INCREF(Py_None);
            t = Py_None;
        }
        if (!t) { Py_CLEAR(list); continue; }
        PyList_SetItem(list, i, t);
    }
    return list;
}

static PyObject *pyad_borrow(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 1) { PyErr_SetString(PyExc_TypeError, "_borrow(h)"); return NULL; }
    int64_t h = PyLong_AsLongLong(args[0]);
    if (h == -1 && PyErr_Occurred()) return NULL;
    int st = pyad_retain(h);
    if (st) {
        PyObject *s = PyLong_FromLong(st);
        if (s) { pyad_raise(s); Py_DECREF(s); }
        return NULL;
    }
    PyObject *hobj = PyLong_FromLongLong(h);
    if (!hobj) { pyad_release(h); return NULL; }
    return pyad_adopt(hobj, h);
}

static PyObject *pyad_lend(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "_lend(addr, i, h)"); return NULL; }
    int64_t *out = PyLong_AsVoidPtr(args[0]);
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    int64_t h = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    int st = pyad_retain(h);
    if (st) {
        PyObject *s = PyLong_FromLong(st);
        if (s) { pyad_raise(s); Py_DECREF(s); }
        return NULL;
    }
    out[i] = h;
    Py_RETURN_NONE;
}

/* Tensor.__del__: drop the node's reference. Runs no Python code, so no pending signal can be
 * raised (and lost) inside it; it raises nothing either (a Tensor whose __init__ failed holds 0). */
static PyObject *pyad_del(PyObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *hobj = *(PyObject **)((char *)self + pyad_h_offset);
    if (hobj && PyLong_CheckExact(hobj)) {
        int64_t h = PyLong_AsLongLong(hobj);
        if (h > 0) pyad_release(h);
        else if (h == -1) PyErr_Clear();   /* not a handle (cannot happen): nothing to release */
    }
    Py_RETURN_NONE;
}

static PyMethodDef pyad_del_def = {"__del__", pyad_del, METH_NOARGS,
                                   "Drop this tensor's reference to its node (C: no signal is lost here)."};

/* Tensor.shape and Tensor.dtype: read from the node by the first use and kept in the slots
 * `_shape` and `_dtype`, since a node's shape and dtype never change (tensor.py's _adopt forgets
 * them when a second __init__ gives the Tensor another node). C, because the first read is one
 * ad_info with no cffi objects, so that caching costs a fresh tensor nothing. */
static void pyad_store(PyObject *self, Py_ssize_t offset, PyObject *value)
{
    PyObject **slot = (PyObject **)((char *)self + offset), *old = *slot;
    *slot = value;
    Py_XDECREF(old);
}

static int pyad_describe(PyObject *self)
{
    PyObject *hobj = *(PyObject **)((char *)self + pyad_h_offset);
    int64_t h = hobj ? PyLong_AsLongLong(hobj) : 0;
    if (h == -1 && PyErr_Occurred()) return -1;
    ad_info_t info;
    int st = ad_info(h, &info);
    pyad_regain();   /* a big tensor's node counts as long work: the core let the GIL go */
    if (st) {
        PyObject *s = PyLong_FromLong(st);
        if (s) { pyad_raise(s); Py_DECREF(s); }
        return -1;
    }
    PyObject *dtype = PyTuple_GetItem(pyad_dtypes, info.dtype), *shape = dtype ? PyTuple_New(info.ndim) : NULL;
    for (int i = 0; shape && i < info.ndim; i++) {
        PyObject *d = PyLong_FromLongLong(info.shape[i]);
        if (!d) Py_CLEAR(shape);
        else PyTuple_SetItem(shape, i, d);
    }
    if (!shape) return -1;
    Py_INCREF(dtype);
    pyad_store(self, pyad_shape_offset, shape);
    pyad_store(self, pyad_dtype_offset, dtype);
    return 0;
}

static PyObject *pyad_described(PyObject *self, Py_ssize_t offset)
{
    PyObject *v = *(PyObject **)((char *)self + offset);
    if (!v && pyad_describe(self) == 0) {
        v = *(PyObject **)((char *)self + offset);
        if (!v) PyErr_SetString(PyExc_RuntimeError, "Tensor: its shape or dtype slot was emptied while it was read");
    }
    Py_XINCREF(v);
    return v;
}

static PyObject *pyad_get_shape(PyObject *self, void *unused) { (void)unused; return pyad_described(self, pyad_shape_offset); }
static PyObject *pyad_get_dtype(PyObject *self, void *unused) { (void)unused; return pyad_described(self, pyad_dtype_offset); }

static PyGetSetDef pyad_getset_defs[] = {
    {"shape", pyad_get_shape, NULL, "The tensor's shape, a tuple of ints (as NumPy's).", NULL},
    {"dtype", pyad_get_dtype, NULL, "The tensor's dtype, numpy.float32 or numpy.float64.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* Where a Tensor made by alloc keeps the slot `name`: write a marker through the slot and look for
 * it in the object (size bytes). -1 with an exception set when it is not found exactly once. */
static Py_ssize_t pyad_slot_offset(PyTypeObject *type, allocfunc alloc, Py_ssize_t size, const char *name)
{
    PyObject *probe = alloc(type, 0), *marker = PyLong_FromLong(-12345);
    Py_ssize_t found = -1;
    if (probe && marker && PyObject_SetAttrString(probe, name, marker) == 0) {
        for (Py_ssize_t off = 0; off + (Py_ssize_t)sizeof(PyObject *) <= size; off += sizeof(PyObject *))
            if (*(PyObject **)((char *)probe + off) == marker) found = found < 0 ? off : -2;
        PyObject_SetAttrString(probe, name, Py_None);
    }
    Py_XDECREF(marker);
    Py_XDECREF(probe);   /* its __del__ is still the Python one here: it finds no handle */
    if (PyErr_Occurred()) return -1;
    if (found < 0) { PyErr_Format(PyExc_RuntimeError, "_init: cannot find Tensor's %s slot", name); return -1; }
    return found;
}

/* _init(Tensor, raise_status, dtypes): find Tensor's slots, then install __del__, shape and dtype. */
static PyObject *pyad_init(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3 || !PyType_Check(args[0]) || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "_init(Tensor, raise_status, dtypes)");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    PyObject *basic = PyObject_GetAttrString(args[0], "__basicsize__");
    Py_ssize_t size = basic ? PyLong_AsSsize_t(basic) : -1;
    Py_XDECREF(basic);
    if (!alloc || size < 0) return NULL;
    Py_ssize_t h, shape, dtype;
    if ((h = pyad_slot_offset(type, alloc, size, "_h")) < 0 || (shape = pyad_slot_offset(type, alloc, size, "_shape")) < 0 ||
        (dtype = pyad_slot_offset(type, alloc, size, "_dtype")) < 0)
        return NULL;
    PyObject *del = PyDescr_NewMethod(type, &pyad_del_def);
    if (!del || PyObject_SetAttrString(args[0], "__del__", del) < 0) { Py_XDECREF(del); return NULL; }
    Py_DECREF(del);
    for (PyGetSetDef *d = pyad_getset_defs; d->name; d++) {
        PyObject *g = PyDescr_NewGetSet(type, d);
        if (!g || PyObject_SetAttrString(args[0], d->name, g) < 0) { Py_XDECREF(g); return NULL; }
        Py_DECREF(g);
    }
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    Py_INCREF(args[2]);
    Py_XDECREF((PyObject *)pyad_tensor_type);
    Py_XDECREF(pyad_raise_status);
    Py_XDECREF(pyad_dtypes);
    pyad_tensor_type = type;
    pyad_raise_status = args[1];
    pyad_dtypes = args[2];
    pyad_alloc = alloc;
    pyad_h_offset = h;
    pyad_shape_offset = shape;
    pyad_dtype_offset = dtype;
    Py_RETURN_NONE;
}

/* no_grad's __enter__ and __exit__. Switching grad mode and saving (or restoring) the previous
 * mode happen in one C call: a pending signal is raised only at the next Python instruction, so
 * it can land before or after the switch, never between the switch and its bookkeeping. A Python
 * __exit__ interrupted at its first line would leave grad mode off for the rest of the thread. */
static PyObject *pyad_nograd_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    int prev = ad_set_grad_enabled(0);
    if (prev < 0) {
        PyObject *st = PyLong_FromLong(prev);
        if (st) { pyad_raise(st); Py_DECREF(st); }
        return NULL;
    }
    PyObject *p = PyLong_FromLong(prev);
    if (!p || PyObject_SetAttrString(self, "_prev", p) < 0) {
        Py_XDECREF(p);
        ad_set_grad_enabled(prev);   /* nothing changed if the context cannot be entered */
        return NULL;
    }
    Py_DECREF(p);
    Py_INCREF(self);
    return self;
}

static PyObject *pyad_nograd_exit(PyObject *self, PyObject *args)
{
    (void)args;
    PyObject *p = PyObject_GetAttrString(self, "_prev");   /* AttributeError: never entered */
    if (!p) return NULL;
    long prev = PyLong_AsLong(p);
    Py_DECREF(p);
    if (prev == -1 && PyErr_Occurred()) return NULL;
    ad_set_grad_enabled((int)prev);
    Py_INCREF(Py_False);
    return Py_False;
}

static PyMethodDef pyad_nograd_defs[] = {
    {"__enter__", pyad_nograd_enter, METH_NOARGS, "Turn grad mode off, remembering what it was."},
    {"__exit__", pyad_nograd_exit, METH_VARARGS, "Restore the grad mode __enter__ found."},
    {NULL, NULL, 0, NULL},
};

/* _init_no_grad(no_grad): install the two methods above on the class. */
static PyObject *pyad_init_no_grad(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 1 || !PyType_Check(args[0])) { PyErr_SetString(PyExc_TypeError, "_init_no_grad(no_grad)"); return NULL; }
    for (PyMethodDef *d = pyad_nograd_defs; d->ml_name; d++) {
        PyObject *m = PyDescr_NewMethod((PyTypeObject *)args[0], d);
        if (!m || PyObject_SetAttrString(args[0], d->ml_name, m) < 0) { Py_XDECREF(m); return NULL; }
        Py_DECREF(m);
    }
    Py_RETURN_NONE;
}

static PyMethodDef pyad_defs[] = {
    {"_call", (PyCFunction)(void (*)(void))pyad_call, METH_FASTCALL, NULL},
    {"_call_out", (PyCFunction)(void (*)(void))pyad_call_out, METH_FASTCALL, NULL},
    {"_borrow", (PyCFunction)(void (*)(void))pyad_borrow, METH_FASTCALL, NULL},
    {"_lend", (PyCFunction)(void (*)(void))pyad_lend, METH_FASTCALL, NULL},
    {"_init", (PyCFunction)(void (*)(void))pyad_init, METH_FASTCALL, NULL},
    {"_init_no_grad", (PyCFunction)(void (*)(void))pyad_init_no_grad, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

/* Called through cffi once (the builtins cannot be cffi functions: they take Python objects):
 * puts them on the module pyautodiff._core. 0, or -1 with nothing raised (cffi would not pass an
 * exception on from a function returning int). */
static int pyautodiff_install_ownership(void)
{
    PyObject *mod = PyImport_ImportModule("pyautodiff._core");
    int st = mod ? 0 : -1;
    for (PyMethodDef *d = pyad_defs; d->ml_name && !st; d++) {
        PyObject *f = PyCFunction_NewEx(d, NULL, NULL);
        if (!f || PyObject_SetAttrString(mod, d->ml_name, f) < 0) st = -1;
        Py_XDECREF(f);
    }
    Py_XDECREF(mod);
    if (st) PyErr_Clear();
    return st;
}
