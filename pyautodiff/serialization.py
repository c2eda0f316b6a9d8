"""ad.save / ad.load: tensors and nested containers of them (state dicts of modules, optimizers
and schedulers) in a NumPy .npz file, read back with allow_pickle=False, so loading a file never
runs code.

Format (version 1). A zip archive as numpy.savez writes it, holding
  __pyautodiff__.npy  a uint8 array: UTF-8 JSON {"format": "pyautodiff.save", "version": 1,
                      "root": NODE}
  a0.npy, a1.npy ...  the arrays the tree refers to, one per tensor or NumPy array
where NODE is one of
  {"t": "none"} | {"t": "bool", "v": true} | {"t": "int", "v": "123"} (decimal string: any size)
  {"t": "float", "v": "0.1"} (repr: round-trips exactly, inf and nan included) | {"t": "str", "v": "..."}
  {"t": "list", "v": [NODE...]} | {"t": "tuple", "v": [NODE...]}
  {"t": "dict", "v": [[KEY NODE, VALUE NODE]...]} (keys: str, int, float, bool, None, tuple)
  {"t": "tensor", "a": "a0", "requires_grad": false} (float32 or float64)
  {"t": "ndarray", "a": "a1"} (bool, integer or float dtypes)
Anything else in a file, a truncated or corrupted archive, or an object array (a pickle) is a
ValueError naming the file."""
import json
import numbers
import os

import numpy as np

from .tensor import Tensor, tensor

FORMAT, VERSION, HEADER = "pyautodiff.save", 1, "__pyautodiff__"
_MAX_DEPTH = 100


def save(obj, f):
    """Write obj (a Tensor, NumPy array, number, string, None, or lists / tuples / dicts of them)
    to f, a path or a writable binary file. A path is written whole or not at all (a temporary
    file renamed into place), so an interrupted save never leaves a truncated checkpoint."""
    arrays = {}
    root = _encode(obj, arrays, 0)
    header = json.dumps({"format": FORMAT, "version": VERSION, "root": root}).encode()
    arrays[HEADER] = np.frombuffer(header, dtype=np.uint8)
    if hasattr(f, "write"):
        np.savez(f, **arrays)
        return
    path = os.fspath(f)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _encode(obj, arrays, depth):
    if depth > _MAX_DEPTH:
        raise ValueError(f"save: containers nested deeper than {_MAX_DEPTH} levels")
    if obj is None:
        return {"t": "none"}
    if isinstance(obj, (bool, np.bool_)):
        return {"t": "bool", "v": bool(obj)}
    if isinstance(obj, numbers.Integral):
        return {"t": "int", "v": str(int(obj))}
    if isinstance(obj, numbers.Real) and not isinstance(obj, np.ndarray):
        return {"t": "float", "v": repr(float(obj))}
    if isinstance(obj, str):
        return {"t": "str", "v": obj}
    if isinstance(obj, Tensor):
        key = f"a{len(arrays)}"
        arrays[key] = obj.numpy()
        return {"t": "tensor", "a": key, "requires_grad": obj.requires_grad}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"save: arrays of dtype {obj.dtype} cannot be saved (bool, integer and float only)")
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"t": "ndarray", "a": key}
    if isinstance(obj, (list, tuple)):
        return {"t": "list" if isinstance(obj, list) else "tuple", "v": [_encode(v, arrays, depth + 1) for v in obj]}
    if isinstance(obj, dict):
        return {"t": "dict", "v": [[_encode(k, arrays, depth + 1), _encode(v, arrays, depth + 1)]
                                   for k, v in obj.items()]}
    raise TypeError(f"save: cannot save a {type(obj).__name__} (tensors, arrays, numbers, strings, None and "
                    f"lists / tuples / dicts of them only)")


def load(f):
    """Read what save() wrote, from a path or a readable binary file. Tensors come back as leaves
    with their saved requires_grad. A file that is not a complete pyautodiff save (truncated,
    another format, a pickled object inside) is a ValueError; nothing in it is executed."""
    name = getattr(f, "name", None) if hasattr(f, "read") else os.fspath(f)
    try:
        npz = np.load(f, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with npz:
            arrays = {k: npz[k] for k in npz.files}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:
        # the bytes are untrusted: whatever NumPy or zipfile trips over (a truncated archive, a bad
        # CRC, a pickle, a header declaring an absurd shape) means the file is not a valid save
        raise ValueError(f"load: {name} is not a readable pyautodiff save ({type(e).__name__}: {e})") from None
    header = arrays.pop(HEADER, None)
    try:
        if header is None or header.dtype != np.uint8 or header.ndim != 1:
            raise ValueError("no pyautodiff header")
        meta = json.loads(header.tobytes().decode("utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("wrong magic")
        if meta.get("version") != VERSION:
            raise ValueError(f"format version {meta.get('version')!r}, this pyautodiff reads {VERSION}")
        return _decode(meta.get("root"), arrays, 0)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, UnicodeDecodeError) as e:
        raise ValueError(f"load: {name} is not a valid pyautodiff save: {e}") from None


def _decode(node, arrays, depth):
    if depth > _MAX_DEPTH or not isinstance(node, dict):
        raise ValueError("malformed object tree")
    t, v = node.get("t"), node.get("v")
    if t == "none":
        return None
    if t == "bool" and isinstance(v, bool):
        return v
    if t == "int" and isinstance(v, str) and len(v) < 5000:
        return int(v)
    if t == "float" and isinstance(v, str):
        return float(v)
    if t == "str" and isinstance(v, str):
        return v
    if t in ("list", "tuple") and isinstance(v, list):
        items = [_decode(x, arrays, depth + 1) for x in v]
        return items if t == "list" else tuple(items)
    if t == "dict" and isinstance(v, list):
        out = {}
        for pair in v:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError("malformed dict entry")
            key = _decode(pair[0], arrays, depth + 1)
            if not isinstance(key, (str, int, float, bool, tuple, type(None))):
                raise ValueError(f"a dict key of type {type(key).__name__}")
            out[key] = _decode(pair[1], arrays, depth + 1)
        return out
    if t in ("tensor", "ndarray"):
        arr = arrays.get(node.get("a")) if isinstance(node.get("a"), str) else None
        if arr is None:
            raise ValueError(f"missing array {node.get('a')!r}")
        if t == "ndarray":
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"an array of dtype {arr.dtype}")
            return arr
        if arr.dtype not in (np.float32, np.float64):
            raise ValueError(f"a tensor of dtype {arr.dtype} (float32 or float64 expected)")
        return tensor(arr, requires_grad=bool(node.get("requires_grad", False)))
    raise ValueError(f"unknown entry {str(t)[:40]!r}")
