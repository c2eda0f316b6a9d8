"""Ops that move values without arithmetic: reshape, transpose, broadcast_to, getitem,
concatenate, stack. Their VJPs move the cotangent back the same way (getitem scatter-adds).
"""
import numpy as np

from ._core import ref_op

OPS = {}


# --- reshape(x, shape): -1 allowed, as in NumPy -----------------------------------------------------
def reshape_forward(x, shape):
    return np.reshape(x, shape)


def reshape_vjp(g, out, x, shape):
    return (np.reshape(g, x.shape),)


def reshape_jvp(tangents, out, x, shape):
    return np.reshape(tangents[0], out.shape)


OPS["reshape"] = ref_op(reshape_forward, reshape_vjp, reshape_jvp, arity=1)


# --- transpose(x, axes=None): None reverses the axes; the VJP applies the inverse permutation -----
def _permutation(axes, ndim):
    if axes is None:
        return tuple(reversed(range(ndim)))
    return tuple(int(a) % ndim for a in axes)


def transpose_forward(x, axes=None):
    return np.transpose(x, axes)


def transpose_vjp(g, out, x, axes=None):
    inverse = np.argsort(_permutation(axes, x.ndim))
    return (np.transpose(g, inverse),)


def transpose_jvp(tangents, out, x, axes=None):
    return np.transpose(tangents[0], axes)


OPS["transpose"] = ref_op(transpose_forward, transpose_vjp, transpose_jvp, arity=1)


# --- broadcast_to(x, shape): the dual of sum; the VJP is ref_op's unbroadcast --------------------
def broadcast_to_forward(x, shape):
    return np.broadcast_to(x, shape)


def broadcast_to_vjp(g, out, x, shape):
    return (g,)


def broadcast_to_jvp(tangents, out, x, shape):
    return np.broadcast_to(tangents[0], out.shape)


OPS["broadcast_to"] = ref_op(broadcast_to_forward, broadcast_to_vjp, broadcast_to_jvp, arity=1)


# --- getitem(x, index): NumPy basic and advanced indexing -------------------------------------------
# The VJP scatter-adds with np.add.at, so an element picked several times (x[[0, 0]]) collects the
# sum of its cotangents; plain fancy assignment would keep only the last one.
def getitem_forward(x, index):
    return np.array(x[index])


def getitem_vjp(g, out, x, index):
    gx = np.zeros(x.shape, dtype=np.result_type(g, x))
    np.add.at(gx, index, g)
    return (gx,)


def getitem_jvp(tangents, out, x, index):
    return tangents[0][index]


OPS["getitem"] = ref_op(getitem_forward, getitem_vjp, getitem_jvp, arity=1)


# --- scatter_add(x, index, shape): zeros of `shape` with x.flat[i] added at flat position index[i] --
# getitem's VJP as an op of its own (the differentiable rule of a gather); its VJP is a gather.
def scatter_add_forward(x, index, shape):
    out = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=np.result_type(x, np.float32))
    np.add.at(out, np.asarray(index).reshape(-1), np.asarray(x).reshape(-1))
    return out.reshape(shape)


def scatter_add_vjp(g, out, x, index, shape):
    return (np.asarray(g).reshape(-1)[np.asarray(index).reshape(-1)].reshape(np.shape(x)),)


def scatter_add_jvp(tangents, out, x, index, shape):
    return scatter_add_forward(tangents[0], index, shape)


OPS["scatter_add"] = ref_op(scatter_add_forward, scatter_add_vjp, scatter_add_jvp, arity=1)


# --- concatenate(*xs, axis=0): the VJP splits the cotangent at the same boundaries ------------------
def concatenate_forward(*xs, axis=0):
    return np.concatenate(xs, axis=axis)


def concatenate_vjp(g, out, *xs, axis=0):
    boundaries = np.cumsum([x.shape[axis] for x in xs])[:-1]
    return tuple(np.split(g, boundaries, axis=axis))


def concatenate_jvp(tangents, out, *xs, axis=0):
    return np.concatenate(tangents, axis=axis)


OPS["concatenate"] = ref_op(concatenate_forward, concatenate_vjp, concatenate_jvp, arity=None)


# --- stack(*xs, axis=0): the VJP takes the slices back out along the new axis -------------------
def stack_forward(*xs, axis=0):
    return np.stack(xs, axis=axis)


def stack_vjp(g, out, *xs, axis=0):
    slices = np.moveaxis(g, axis, 0)
    return tuple(slices[i] for i in range(len(xs)))


def stack_jvp(tangents, out, *xs, axis=0):
    return np.stack(tangents, axis=axis)


OPS["stack"] = ref_op(stack_forward, stack_vjp, stack_jvp, arity=None)
