"""The shape ops of issue 17: squeeze, expand_dims, flatten, moveaxis, swapaxes, flip, roll, tile,
repeat, pad, take_along_axis, put_along_axis, scatter_add, tril, triu, diagonal (permute is
transpose's reference).

Most only move elements, so they are linear maps that pick input elements: `index_map` states the
rules of all of them once. The forward is NumPy's function; the VJP scatter-adds the cotangent
back to the positions NumPy's function picks from a grid of flat positions (np.add.at, so an
element used twice collects both cotangents); the JVP is the forward applied to the tangent.
"""
import numpy as np

from ._core import ref_op

OPS = {}


def _grid(x):
    return np.arange(x.size, dtype=np.int64).reshape(x.shape)


def index_map(np_fn):
    """The RefOp of x -> np_fn(x, **params) for an np_fn that only moves elements."""
    def forward(x, **p):
        return np_fn(x, **p)

    def vjp(g, out, x, **p):
        gx = np.zeros(x.size, dtype=g.dtype)
        np.add.at(gx, np.asarray(np_fn(_grid(x), **p)).reshape(-1), g.reshape(-1))
        return (gx.reshape(x.shape),)

    def jvp(tangents, out, x, **p):
        return np_fn(tangents[0], **p)

    return ref_op(forward, vjp, jvp, arity=1)


def _flatten(x, start_dim=0, end_dim=-1):
    """torch.flatten: 0-d becomes (1,)."""
    if x.ndim == 0:
        return x.reshape(1)
    s, e = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:])


OPS["squeeze"] = index_map(lambda x, axis=None: np.squeeze(x, axis))
OPS["expand_dims"] = index_map(lambda x, axis: np.expand_dims(x, axis))
OPS["flatten"] = index_map(_flatten)
OPS["moveaxis"] = index_map(lambda x, source, destination: np.moveaxis(x, source, destination))
OPS["swapaxes"] = index_map(lambda x, axis1, axis2: np.swapaxes(x, axis1, axis2))
OPS["flip"] = index_map(lambda x, axis=None: np.flip(x, axis))
OPS["roll"] = index_map(lambda x, shift, axis=None: np.roll(x, shift, axis))
OPS["tile"] = index_map(lambda x, reps: np.tile(x, reps))
OPS["repeat"] = index_map(lambda x, repeats, axis=None: np.repeat(x, repeats, axis))
OPS["take_along_axis"] = index_map(lambda x, indices, axis=-1: np.take_along_axis(x, indices, axis))
OPS["diagonal"] = index_map(lambda x, offset=0, axis1=0, axis2=1: np.diagonal(x, offset, axis1, axis2))
# reflect and edge only move elements; constant also fills (below)
OPS["pad_moves"] = index_map(lambda x, pad_width, mode: np.pad(x, pad_width, mode=mode))


# --- pad(x, pad_width, mode="constant", constant_values=0): the fill has no derivative ----------------
def pad_forward(x, pad_width, constant_values=0):
    return np.pad(x, pad_width, mode="constant", constant_values=constant_values)


def _inner(x, pad_width):
    w = np.broadcast_to(np.asarray(pad_width), (x.ndim, 2))
    return tuple(slice(int(b), int(b) + d) for d, (b, e) in zip(x.shape, w))


def pad_vjp(g, out, x, pad_width, constant_values=0):
    return (g[_inner(x, pad_width)],)


def pad_jvp(tangents, out, x, pad_width, constant_values=0):
    return np.pad(tangents[0], pad_width, mode="constant")


OPS["pad_constant"] = ref_op(pad_forward, pad_vjp, pad_jvp, arity=1)


# --- tril / triu(x, k): the other triangle is 0 with gradient 0 ---------------------------------
for _name, _f in (("tril", np.tril), ("triu", np.triu)):
    OPS[_name] = ref_op(lambda x, k=0, f=_f: f(x, k), lambda g, out, x, k=0, f=_f: (f(g, k),),
                        lambda tangents, out, x, k=0, f=_f: f(tangents[0], k), arity=1)


# --- put_along_axis(x, values, indices, axis): NumPy's put, on a copy ---------------------------------
# Of positions written twice the last write wins, so only the last writer's value gets a gradient.
def _put_positions(x, indices, axis):
    grid = _grid(x) if axis is not None else np.arange(x.size, dtype=np.int64)
    return np.take_along_axis(grid, indices, axis if axis is not None else 0)


def put_along_axis_forward(x, values, indices, axis):
    y = np.array(x)
    np.put_along_axis(y, indices, values, axis)
    return y


def put_along_axis_vjp(g, out, x, values, indices, axis):
    pos = _put_positions(x, indices, axis).reshape(-1)
    gx = np.array(g).reshape(-1)
    gx[pos] = 0
    last = np.zeros(pos.size, bool)
    _, first_of_reversed = np.unique(pos[::-1], return_index=True)
    last[pos.size - 1 - first_of_reversed] = True
    gv = np.where(last, g.reshape(-1)[pos], 0).reshape(_put_positions(x, indices, axis).shape)
    return gx.reshape(x.shape), gv


def put_along_axis_jvp(tangents, out, x, values, indices, axis):
    tx, tv = tangents
    return put_along_axis_forward(tx, np.broadcast_to(tv, np.shape(values)), indices, axis)


OPS["put_along_axis"] = ref_op(put_along_axis_forward, put_along_axis_vjp, put_along_axis_jvp, arity=2)


# --- scatter_add(x, src, dim, index): torch.scatter_add; repeated positions accumulate ----------------
def _scatter_positions(x, dim, index):
    coords = list(np.indices(index.shape))
    coords[dim] = index
    return np.ravel_multi_index(coords, x.shape)


def scatter_add_forward(x, src, dim, index):
    y = np.array(x).reshape(-1)
    part = src[tuple(slice(0, n) for n in index.shape)]
    np.add.at(y, _scatter_positions(x, dim, index).reshape(-1), part.reshape(-1))
    return y.reshape(x.shape)


def scatter_add_vjp(g, out, x, src, dim, index):
    gs = np.zeros(src.shape, g.dtype)
    gs[tuple(slice(0, n) for n in index.shape)] = g.reshape(-1)[_scatter_positions(x, dim, index)]
    return g, gs


def scatter_add_jvp(tangents, out, x, src, dim, index):
    return scatter_add_forward(tangents[0], tangents[1], dim, index)


OPS["scatter_add_along"] = ref_op(scatter_add_forward, scatter_add_vjp, scatter_add_jvp, arity=2)
