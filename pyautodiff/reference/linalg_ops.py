"""Products of issue 17: dot, vdot, outer, inner, tensordot, einsum, trace.

Each is linear in each operand (multilinear), so its rules follow from NumPy's forward alone, with
no formula to get wrong: the VJP for an operand is <g, f(..., e_k, ...)> over the basis vectors
e_k of that operand (exact, no differencing; the test shapes are small), and the JVP is the sum
over operands of f with that operand replaced by its tangent.
"""
import numpy as np

from ._core import ref_op

OPS = {}


def multilinear(np_fn, arity):
    def forward(*xs, **p):
        return np_fn(*xs, **p)

    def vjp(g, out, *xs, **p):
        grads = []
        for i, x in enumerate(xs):
            gx = np.zeros(x.size, dtype=np.result_type(g, x))
            for k in range(x.size):
                e = np.zeros(x.size, x.dtype)
                e[k] = 1
                args = list(xs)
                args[i] = e.reshape(x.shape)
                gx[k] = np.sum(g * np_fn(*args, **p))
            grads.append(gx.reshape(x.shape))
        return tuple(grads)

    def jvp(tangents, out, *xs, **p):
        total = np.zeros(np.shape(out), np.asarray(out).dtype)
        for i, t in enumerate(tangents):
            args = list(xs)
            args[i] = t
            total = total + np_fn(*args, **p)
        return total

    return ref_op(forward, vjp, jvp, arity=arity)


OPS["dot"] = multilinear(np.dot, 2)
OPS["vdot"] = multilinear(np.vdot, 2)
OPS["outer"] = multilinear(np.outer, 2)
OPS["inner"] = multilinear(np.inner, 2)
OPS["tensordot"] = multilinear(lambda a, b, axes=2: np.tensordot(a, b, axes), 2)
OPS["trace"] = multilinear(lambda x, offset=0, axis1=0, axis2=1: np.trace(x, offset, axis1, axis2), 1)
OPS["einsum"] = multilinear(lambda *xs, subscripts: np.einsum(subscripts, *xs), None)
