"""Shape ops (squeeze, expand_dims, flatten, permute, moveaxis, swapaxes, flip, roll, tile, repeat,
pad, take_along_axis, put_along_axis, scatter_add, tril, triu, diagonal), with NumPy's semantics
and PyTorch's names as aliases where they differ.

Each is a composition of differentiable ops that already have every rule (reshape, transpose, the
strided slice, gather / scatter_add, broadcast_to, where), so every order of derivative comes with
them and nothing is written twice. Ops that only move elements are one strided copy (flip, diagonal:
the views NumPy returns) or one gather: NumPy's own function applied to a grid of flat positions
says which element lands where (so the semantics, shapes and errors are NumPy's by construction),
and the trailing axes an op leaves alone move as whole blocks, as `t[rows]` does.
"""
import math

import numpy as np

from ._capi import ffi, lib, int_arg, int_tuple, _call
from .tensor import Tensor, as_tensor, _gather, _gather_blocks, _slice, _overwrite
from .ops import reshape, transpose, broadcast_to, where, _scatter_add


def _axis(axis, ndim, op, what="axis"):
    """One axis in [0, ndim), negative counting from the end; AxisError (a ValueError) naming op."""
    a = int_arg(axis, f"{op}: {what}")
    if not -ndim <= a < ndim:
        raise np.exceptions.AxisError(a, ndim, msg_prefix=op)
    return a % ndim


def _axes(axis, ndim, op, what="axis"):
    """An int or a sequence of ints as distinct axes in [0, ndim)."""
    axes = tuple(_axis(a, ndim, op, what) for a in int_tuple(axis, f"{op}: {what}"))
    if len(set(axes)) != len(axes):
        raise ValueError(f"{op}: repeated axis in {what} {axis!r}")
    return axes


def _prod(shape):
    return math.prod(shape)


def _rearranged(x, k, fn):
    """x's elements rearranged by fn, a NumPy function of an array of shape x.shape[:k] (the
    leading axes, those fn moves along) that returns the flat positions each output element reads.
    The axes from k on stay whole: they move as blocks in one gather, whose VJP scatter-adds."""
    shape = x.shape
    lead, trail = shape[:k], shape[k:]
    block = _prod(trail)
    rows = fn(np.arange(_prod(lead), dtype=np.int64).reshape(lead))
    out_shape = rows.shape + trail
    if block == 0 or rows.size == 0:
        block, rows = 1, np.zeros(out_shape, np.int64)     # nothing moves: an empty result
    flat = np.ascontiguousarray(rows * block, dtype=np.int64)
    return _gather_blocks(x, flat, out_shape, block)


# ---- axes added, removed, reordered: reshape (a view of x's values) and transpose (a copy) ----

def squeeze(x, axis=None):
    """x without its size-1 axes (all of them, or those in axis: an int or a tuple), as numpy.squeeze."""
    x = as_tensor(x)
    shape = x.shape
    if axis is None:
        return reshape(x, tuple(d for d in shape if d != 1))
    axes = _axes(axis, len(shape), "squeeze")
    for a in axes:
        if shape[a] != 1:
            raise ValueError(f"squeeze: cannot squeeze axis {a} of a tensor of shape {shape}: its size is "
                             f"{shape[a]}, not 1")
    return reshape(x, tuple(d for i, d in enumerate(shape) if i not in axes))


def expand_dims(x, axis):
    """x with a size-1 axis inserted at each position in axis (an int or a tuple; positions in the
    result), as numpy.expand_dims."""
    x = as_tensor(x)
    shape = x.shape
    ndim = len(shape) + len(int_tuple(axis, "expand_dims: axis"))
    axes = _axes(axis, ndim, "expand_dims")
    it = iter(shape)
    return reshape(x, tuple(1 if i in axes else next(it) for i in range(ndim)))


def unsqueeze(x, dim):
    """x with a size-1 axis inserted at dim (one int), as torch.unsqueeze."""
    return expand_dims(x, int_arg(dim, "unsqueeze: dim"))


def flatten(x, start_dim=0, end_dim=-1):
    """Axes start_dim..end_dim (inclusive) merged into one, as torch.flatten; the defaults give the
    1-D values of numpy's ndarray.flatten() (a 0-d tensor becomes shape (1,)). A view sharing x's
    values, as reshape."""
    x = as_tensor(x)
    shape = x.shape
    n = max(len(shape), 1)
    s, e = _axis(start_dim, n, "flatten", "start_dim"), _axis(end_dim, n, "flatten", "end_dim")
    if s > e:
        raise ValueError(f"flatten: start_dim ({start_dim}) comes after end_dim ({end_dim}) for a tensor "
                         f"of shape {shape}")
    if not shape:
        return reshape(x, (1,))
    return reshape(x, shape[:s] + (_prod(shape[s:e + 1]),) + shape[e + 1:])


def permute(x, *dims):
    """Axes reordered: dims[i] is the input axis that becomes axis i, as torch.permute (dims as
    separate ints or one sequence); numpy.transpose with its axes given."""
    x = as_tensor(x)
    if len(dims) == 1 and not isinstance(dims[0], (int, np.integer)):
        dims = tuple(dims[0])
    ndim = x.ndim
    perm = _axes(dims, ndim, "permute", "dims") if dims else ()
    if len(perm) != ndim:
        raise ValueError(f"permute: dims {dims} do not name each of the {ndim} axes of a tensor of shape "
                         f"{x.shape} once")
    return transpose(x, perm)


def moveaxis(x, source, destination):
    """Axes moved from source to destination (ints or sequences of equal length), the others
    keeping their order, as numpy.moveaxis."""
    x = as_tensor(x)
    ndim = x.ndim
    src = _axes(source, ndim, "moveaxis", "source")
    dst = _axes(destination, ndim, "moveaxis", "destination")
    if len(src) != len(dst):
        raise ValueError(f"moveaxis: source {source!r} and destination {destination!r} must have the same "
                         f"number of elements")
    order = [a for a in range(ndim) if a not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return transpose(x, tuple(order))


def swapaxes(x, axis1, axis2):
    """Axes axis1 and axis2 exchanged, as numpy.swapaxes."""
    x = as_tensor(x)
    ndim = x.ndim
    a, b = _axis(axis1, ndim, "swapaxes", "axis1"), _axis(axis2, ndim, "swapaxes", "axis2")
    perm = list(range(ndim))
    perm[a], perm[b] = b, a
    return transpose(x, tuple(perm))


# ---- elements moved: a strided slice or one gather ----

def flip(x, axis=None):
    """Order of elements reversed along axis (None: every axis; an int or a tuple), as numpy.flip.
    One strided copy."""
    x = as_tensor(x)
    ndim = x.ndim
    axes = range(ndim) if axis is None else _axes(axis, ndim, "flip")
    return _slice(x, tuple(slice(None, None, -1) if a in axes else slice(None) for a in range(ndim)))


def roll(x, shift, axis=None):
    """Elements shifted by shift along axis, those pushed past the end coming back at the start, as
    numpy.roll (axis None: over the flattened tensor; shift and axis may be tuples that broadcast)."""
    x = as_tensor(x)
    shift = int_arg(shift, "roll: shift") if isinstance(shift, (int, np.integer)) else int_tuple(shift, "roll: shift")
    if axis is None:
        shape = x.shape
        return reshape(_rearranged(reshape(x, -1), 1, lambda g: np.roll(g, shift)), shape)
    axes = tuple(_axis(a, x.ndim, "roll") for a in int_tuple(axis, "roll: axis"))
    try:
        np.broadcast(np.asarray(shift), np.asarray(axes))
    except ValueError:
        raise ValueError(f"roll: shift {shift!r} and axis {axis!r} do not broadcast together") from None
    return _rearranged(x, max(axes) + 1, lambda g: np.roll(g, shift, axes))


def tile(x, reps):
    """x repeated reps[i] times along axis i, as numpy.tile (reps shorter than x's axes applies to
    the last ones; longer adds leading axes). A broadcast and a reshape: the gradient sums the copies."""
    x = as_tensor(x)
    reps = int_tuple(reps, "tile: reps")
    if any(r < 0 for r in reps):
        raise ValueError(f"tile: reps must not be negative, got {reps}")
    shape = x.shape
    n = max(len(shape), len(reps))
    shape = (1,) * (n - len(shape)) + shape
    reps = (1,) * (n - len(reps)) + tuple(reps)
    interleaved = tuple(v for d in shape for v in (1, d))
    wide = tuple(v for r, d in zip(reps, shape) for v in (r, d))
    return reshape(broadcast_to(reshape(x, interleaved), wide), tuple(r * d for r, d in zip(reps, shape)))


def repeat(x, repeats, axis=None):
    """Each element repeated along axis (None: of the flattened tensor), as numpy.repeat: repeats is
    an int (a broadcast and a reshape) or one count per element along the axis (one gather)."""
    x = as_tensor(x)
    if axis is None:
        x, axis = reshape(x, -1), 0
    shape = x.shape
    axis = _axis(axis, len(shape), "repeat")
    counts = np.asarray(repeats)
    if counts.dtype.kind not in "iu" and counts.size:
        raise TypeError(f"repeat: repeats must be integers, got {counts.dtype}")
    counts = counts.astype(np.int64)
    if (counts < 0).any():
        raise ValueError(f"repeat: repeats must not be negative, got {repeats!r}")
    if counts.ndim == 0:
        r = int(counts)
        inner = shape[:axis + 1] + (1,) + shape[axis + 1:]
        wide = shape[:axis + 1] + (r,) + shape[axis + 1:]
        out = shape[:axis] + (shape[axis] * r,) + shape[axis + 1:]
        return reshape(broadcast_to(reshape(x, inner), wide), out)
    if counts.ndim > 1 or counts.size not in (1, shape[axis]):
        raise ValueError(f"repeat: {counts.size} repeats for an axis of length {shape[axis]} (shape {shape})")
    return _rearranged(x, axis + 1, lambda g: np.repeat(g, counts, axis))


def _pairs(pad_width, ndim):
    w = np.asarray(pad_width)
    if w.dtype.kind not in "iu":
        raise TypeError(f"pad: pad_width must be integers, got {pad_width!r}")
    try:
        w = np.broadcast_to(w, (ndim, 2)).astype(np.int64)
    except ValueError:
        raise ValueError(f"pad: pad_width {pad_width!r} does not fit a tensor of {ndim} axes (want an int, "
                         f"(before, after), or one pair per axis)") from None
    if (w < 0).any():
        raise ValueError(f"pad: pad_width must not be negative, got {pad_width!r}")
    return w


def pad(x, pad_width, mode="constant", constant_values=0):
    """x padded as numpy.pad: pad_width is an int, (before, after) or one pair per axis; mode
    "constant" (constant_values: a number, or pairs like pad_width), "reflect" (mirror without the
    edge), "edge" (the edge value repeated) or "wrap" (periodic: the other end's values, PyTorch's
    "circular"). Padding is a gather (reflect, edge, wrap) or a
    scatter into zeros (constant); the unpadded trailing axes move as whole blocks."""
    x = as_tensor(x)
    shape = x.shape
    w = _pairs(pad_width, len(shape))
    padded = [a for a in range(len(shape)) if w[a].any()]
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ValueError(f"pad: mode must be 'constant', 'reflect', 'edge' or 'wrap', got {mode!r}")
    if not padded:
        return _slice(x, ())
    k = padded[-1] + 1
    lead = w[:k]
    if mode != "constant":
        for a in padded:
            if shape[a] == 0:
                raise ValueError(f"pad: cannot pad the empty axis {a} of a tensor of shape {shape} in mode {mode!r}")
        return _rearranged(x, k, lambda g: np.pad(g, lead, mode=mode))
    out_shape = tuple(int(d + b + e) for d, (b, e) in zip(shape, w))
    # where x lands in the result: the inner region of a grid of the result's leading axes
    grid = np.arange(_prod(out_shape[:k]), dtype=np.int64).reshape(out_shape[:k])
    inner = grid[tuple(slice(int(b), int(b) + d) for d, (b, e) in zip(shape[:k], lead))]
    block = _prod(shape[k:])
    if x.size == 0:
        placed = _scatter_add(x, np.zeros(0, np.int64), out_shape)
    else:
        placed = _scatter_add_blocks(x, inner * block, out_shape, block)
    cv = np.asarray(constant_values)
    if cv.dtype.kind not in "iufb":
        raise TypeError(f"pad: constant_values must be numbers, got {constant_values!r}")
    if not cv.any():
        return placed
    fill = np.pad(np.zeros(shape, x.dtype), w, mode="constant", constant_values=cv)
    mask = np.zeros(out_shape, bool)
    mask[tuple(slice(int(b), int(b) + d) for d, (b, e) in zip(shape, w))] = True
    return where(mask, placed, fill)


def _scatter_add_blocks(x, flat, shape, block):
    """Zeros of `shape` with x's consecutive blocks of `block` elements added at the flat
    positions `flat` (one per block, in x's order)."""
    flat = np.ascontiguousarray(flat, dtype=np.int64).reshape(-1)
    c = ffi.new("int64_t[]", tuple(shape) or (0,))
    ptr = ffi.from_buffer("int64_t[]", flat) if flat.size else ffi.NULL
    return _call(lib.ad_scatter_add, x._h, len(shape), c, ptr, block)


def _index_array(indices, op):
    if isinstance(indices, Tensor):
        raise TypeError(f"{op}: indices must be an integer NumPy array, not a Tensor (tensors hold floats)")
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be integers, got dtype {idx.dtype}")
    return idx


def _along_axis(x, indices, axis, op):
    """(x, flat positions) of numpy.take_along_axis(x, indices, axis) (axis None: x flattened)."""
    idx = _index_array(indices, op)
    if axis is None:
        x = reshape(x, -1)
        if idx.ndim != 1:
            raise ValueError(f"{op}: with axis=None, indices must be 1-D, got shape {idx.shape}")
        axis = 0
    shape = x.shape
    axis = _axis(axis, len(shape), op)
    if idx.ndim != len(shape):
        raise ValueError(f"{op}: indices of shape {idx.shape} must have as many axes as the tensor of shape {shape}")
    try:
        pos = np.take_along_axis(np.arange(x.size, dtype=np.int64).reshape(shape), idx, axis)
    except (IndexError, ValueError) as e:
        raise type(e)(f"{op}: {e} (tensor of shape {shape}, indices of shape {idx.shape})") from None
    return x, pos


def take_along_axis(x, indices, axis=-1):
    """The elements of x at integer indices along axis, as numpy.take_along_axis (as torch.gather):
    one gather, whose gradient scatter-adds (an index used twice collects both cotangents)."""
    x = as_tensor(x)
    x, pos = _along_axis(x, indices, axis, "take_along_axis")
    return _gather(x, pos)


def put_along_axis(x, indices, values, axis):
    """A copy of x with values (broadcast to indices' shape) written at indices along axis, as
    numpy.put_along_axis but returning the result instead of writing in place. Of repeated
    positions the last one wins, as in NumPy; the gradient reaches x where nothing was written and
    values where it was written."""
    x = as_tensor(x)
    shape = x.shape
    flat_x, pos = _along_axis(x, indices, axis, "put_along_axis")
    mask = np.zeros(x.size, dtype=bool)
    mask[pos.reshape(-1)] = True
    if isinstance(values, Tensor):
        v = values
    else:
        v = as_tensor(values, x.dtype) if np.asarray(values).dtype.kind != "f" else as_tensor(values)
    try:
        np.broadcast_shapes(v.shape, pos.shape)
    except ValueError:
        raise ValueError(f"put_along_axis: values of shape {v.shape} do not broadcast to the indices' shape {pos.shape}") from None
    return reshape(_overwrite(reshape(flat_x, -1), mask, v, pos), shape)


def scatter_add(x, dim, index, src):
    """x with src[i][j][k] added at x[index[i][j][k]][j][k] (dim 0; likewise for other dims), as
    torch.scatter_add: index has x's number of axes, is no larger than src along each axis and no
    larger than x except along dim; repeated positions accumulate. Differentiable in x and src."""
    x, src = as_tensor(x), as_tensor(src)
    idx = _index_array(index, "scatter_add")
    shape = x.shape
    dim = _axis(dim, max(len(shape), 1), "scatter_add", "dim")
    if not (idx.ndim == src.ndim == len(shape)):
        raise ValueError(f"scatter_add: index {idx.shape}, src {src.shape} and the tensor {shape} must have "
                         f"the same number of axes")
    if any(i > s for i, s in zip(idx.shape, src.shape)) or \
            any(i > d for a, (i, d) in enumerate(zip(idx.shape, shape)) if a != dim):
        raise ValueError(f"scatter_add: index of shape {idx.shape} is larger than src {src.shape}, or than the "
                         f"tensor {shape} along an axis other than dim {dim}")
    if idx.size and (idx.min() < 0 or idx.max() >= shape[dim]):
        raise IndexError(f"scatter_add: index values must lie in [0, {shape[dim]}) along dim {dim} of shape {shape}")
    if src.dtype != x.dtype:
        src = src.astype(x.dtype)
    coords = list(np.indices(idx.shape, dtype=np.int64))
    coords[dim] = idx.astype(np.int64)
    flat = np.ravel_multi_index(coords, shape) if idx.size else np.zeros(0, np.int64)
    part = _slice(src, tuple(slice(0, i) for i in idx.shape))
    return x + _scatter_add(part, flat, shape)


# ---- triangles and diagonals ----

def _tri(x, k, op, lower):
    x = as_tensor(x)
    if x.ndim == 0:
        raise ValueError(f"{op}: a 0-d tensor has no triangle (NumPy's {op} needs at least 1 axis)")
    k = int_arg(k, f"{op}: k")
    m = x.shape[-2:] if x.ndim >= 2 else x.shape * 2
    mask = np.tri(*m, k=k if lower else k - 1, dtype=bool)
    zero = np.zeros((), x.dtype)
    return where(mask, x, zero) if lower else where(mask, zero, x)


def tril(x, k=0):
    """The lower triangle of the last two axes (elements above the k-th diagonal zeroed), as
    numpy.tril (a 1-D x is taken as a row broadcast to a square, as NumPy does)."""
    return _tri(x, k, "tril", True)


def triu(x, k=0):
    """The upper triangle of the last two axes (elements below the k-th diagonal zeroed), as numpy.triu."""
    return _tri(x, k, "triu", False)


def diagonal(x, offset=0, axis1=0, axis2=1):
    """The offset diagonal of the matrices on axes axis1, axis2, as numpy.diagonal: those axes are
    removed and the diagonal becomes the last axis. One gather."""
    x = as_tensor(x)
    ndim = x.ndim
    if ndim < 2:
        raise ValueError(f"diagonal: needs at least 2 axes, got a tensor of shape {x.shape}")
    a1, a2 = _axis(axis1, ndim, "diagonal", "axis1"), _axis(axis2, ndim, "diagonal", "axis2")
    if a1 == a2:
        raise ValueError(f"diagonal: axis1 and axis2 cannot be the same (both {a1})")
    offset = int_arg(offset, "diagonal: offset")
    return _strided(x, *diagonal_view(x.shape, offset, a1, a2))


def diagonal_view(shape, offset, a1, a2):
    """(shape, start, strides) in elements of numpy.diagonal's view of a C-contiguous array: the
    other axes with their strides, then the diagonal, whose stride is the sum of the two axes'."""
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    length = max(0, min(shape[a1] - max(0, -offset), shape[a2] - max(0, offset)))
    start = (offset * strides[a2] if offset >= 0 else -offset * strides[a1]) if length else 0
    rest = [i for i in range(len(shape)) if i not in (a1, a2)]
    return ([shape[i] for i in rest] + [length], start, [strides[i] for i in rest] + [strides[a1] + strides[a2]])


def _strided(x, shape, start, strides):
    """One strided copy of x's elements (the slice op, whose VJP adds back through the strides)."""
    return _call(lib.ad_slice, x._h, len(shape), ffi.new("int64_t[]", shape or [0]), start,
                 ffi.new("int64_t[]", strides or [0]))
