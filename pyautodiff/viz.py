"""A picture of the recorded graph: ``ad.viz.to_dot(t)`` gives Graphviz DOT text of the graph
behind t, ``ad.viz.render(t, "graph.svg")`` writes it as SVG/PNG/PDF when the ``graphviz`` package
or the ``dot`` program is installed (both optional).

One box per node: its op (a custom function's name), shape, dtype and the bytes it holds (record,
value and saved parameters, as ``ad.tape_stats()["live_bytes"]`` counts them; a value no
derivative reads is freed early and not counted). Leaves are ellipses, named after ``params``
(a dict name -> tensor, e.g. ``dict(model.named_parameters())``) where given; leaves that require
grad are filled. Edges run from each input to its consumer. The walk is read-only, in C
(``ad_node_inputs``), and visits each node once.
"""
import shutil
import subprocess

from .hooks import node_info, _op_name
from .tensor import Tensor

__all__ = ["to_dot", "render"]


def _label_escape(s):
    return str(s).replace("\\", "\\\\").replace('"', '\\"')


def _walk(root):
    """Every node of root's graph as (handle, info, input handles), root first, each once."""
    seen, order, todo = set(), [], [root._h]
    while todo:
        h = todo.pop()
        if h in seen:
            continue
        seen.add(h)
        info, ins = node_info(h)
        order.append((h, info, ins))
        todo += reversed(ins)
    return order


def to_dot(t, params=None, name="graph"):
    """Graphviz DOT text of the graph behind tensor t (see the module docstring)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"to_dot: expected a Tensor, got {type(t).__name__}")
    names = {}
    for key, p in (params or {}).items():
        if not isinstance(p, Tensor):
            raise TypeError(f"to_dot: params[{key!r}] is a {type(p).__name__}, not a Tensor")
        names[p._h] = key
    lines = [f'digraph "{_label_escape(name)}" {{', '  rankdir=BT;', '  node [fontname="monospace", fontsize=10];']
    for h, info, ins in _walk(t):
        shape = tuple(info.shape[i] for i in range(info.ndim))
        dtype = "float32" if info.dtype == 0 else "float64"
        op = _op_name(info.op, h)
        if info.is_leaf or info.op == 0:
            title = names.get(h, "leaf" if info.requires_grad else "constant")
            style = ', style=filled, fillcolor="lightblue"' if info.requires_grad else ""
            kind = "ellipse"
        else:
            title = op
            style = ""
            kind = "box"
        label = "\\n".join(_label_escape(part) for part in (title, f"{shape} {dtype}", f"{info.bytes} B"))
        lines.append(f'  n{h} [label="{label}", shape={kind}{style}, '
                     f'op="{_label_escape(op)}", bytes={info.bytes}];')
        for i in ins:
            lines.append(f"  n{i} -> n{h};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(t, path, params=None, format=None):
    """Write the graph behind t to path (format from the suffix: svg, png, pdf) with the graphviz
    package or else the dot program; RuntimeError saying what to install when neither is there."""
    import os
    fmt = format or os.path.splitext(str(path))[1].lstrip(".").lower() or "svg"
    dot = to_dot(t, params)
    try:
        import graphviz
    except ImportError:
        graphviz = None
    if graphviz is not None:
        data = graphviz.Source(dot).pipe(format=fmt)
    elif shutil.which("dot"):
        data = subprocess.run(["dot", f"-T{fmt}"], input=dot.encode(), capture_output=True, check=True).stdout
    else:
        raise RuntimeError("viz.render: needs the graphviz Python package or Graphviz's `dot` program "
                           "(e.g. `pip install graphviz` and `apt install graphviz`); ad.viz.to_dot(t) "
                           "gives the DOT text without them")
    with open(path, "wb") as f:
        f.write(data)
    return path
