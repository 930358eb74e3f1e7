"""Which nodes of an encoder graph stay float in every reduced-precision variant, and graph hygiene.

Why these nodes:

* ``prvr::SelectiveScan`` (a local ONNX function whose body is a ``Scan`` over time): the recurrence
  ``h = exp(Δ·A)·h + Δ·B·u`` accumulates rounding over every step, and its TensorRT plugin takes fp32.
  ORT's quantizer and fp16 converter leave function bodies alone; the node itself is excluded by type.
* normalisations -- ``LayerNormalization`` and the final L2 norm (``ReduceL2`` and the ``Add``/``Clip``/
  ``Div`` that divide by it): embeddings are compared by cosine, and the norm is where small absolute
  errors become relative ones; also ``Softmax`` (exponent range).
* MatMul/Gemm whose activation comes from a scan output through the gate (``y * silu(z)`` -> transpose ->
  ``out_proj``): those activations are heavy-tailed, and per-tensor int8 on them alone took MamFusion's
  demo ``video_emb`` cosine from 0.9999 to 0.93 (measured; every other group of MatMuls stays >= 0.996).
"""

from __future__ import annotations

from collections import defaultdict

import onnx

__all__ = [
    "FLOAT_OP_TYPES",
    "PASS_THROUGH",
    "SCAN_OP",
    "float_nodes",
    "function_names",
    "toposort",
]

SCAN_OP = ("prvr", "SelectiveScan")
FLOAT_OP_TYPES = ("SelectiveScan", "LayerNormalization", "ReduceL2", "Softmax")
# Ops a value passes through unchanged in kind (layout, the gate's elementwise maths) between a scan's
# output and the next linear layer.
PASS_THROUGH = frozenset({
    "Mul", "Add", "Sub", "Sigmoid", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity",
    "Cast", "Slice", "Split", "Concat", "Where",
})
_NORM_TAIL = frozenset({"Add", "Clip", "Max", "Div", "Expand", "Unsqueeze"})


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                users[name].append(node)
    return users


def float_nodes(model: onnx.ModelProto, scan_consumers: bool = True) -> dict[str, str]:
    """``node name -> reason`` for every top-level node that must stay float (module docstring).

    ``scan_consumers``: include the linear layers fed by a scan's output (an int8 concern: their range;
    float16 represents heavy tails well, so the fp16 converter passes False).
    """
    graph = model.graph
    users = _consumers(graph)
    keep: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in FLOAT_OP_TYPES:
            keep[node.name] = f"{node.op_type} stays float"
    for node in graph.node:
        if node.op_type == "ReduceL2":  # the L2 norm's tail, up to the Div that applies it
            frontier = list(node.output)
            while frontier:
                for user in users.get(frontier.pop(), []):
                    if user.op_type in _NORM_TAIL and user.name not in keep:
                        keep[user.name] = "L2 normalisation"
                        if user.op_type != "Div":
                            frontier.extend(user.output)
    for node in graph.node:
        if not scan_consumers or (node.domain, node.op_type) != SCAN_OP:
            continue
        frontier, seen = list(node.output), set()
        while frontier:
            value = frontier.pop()
            if value in seen:
                continue
            seen.add(value)
            for user in users.get(value, []):
                if user.op_type in ("MatMul", "Gemm"):
                    keep.setdefault(user.name, f"linear layer on the output of scan {node.name}")
                elif user.op_type in PASS_THROUGH:
                    frontier.extend(user.output)
    return keep


def function_names(model: onnx.ModelProto) -> list[str]:
    """``domain::name`` of the model's local functions (the scan's portable body must survive)."""
    return sorted(f"{f.domain}::{f.name}" for f in model.functions)


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` topologically in place.

    The fp16 converter appends its input/output casts at the end of the node list; ONNX Runtime sorts
    graphs itself but ``onnx.checker`` (and TensorRT's parser) require the order.
    """
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input at node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
