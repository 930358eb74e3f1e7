"""The selective scan in ONNX: one ``prvr::SelectiveScan`` node that carries its own portable body.

docs/deploy-notes.md §1–§5 has the reasons and measurements behind each choice:
- the node has fixed arity ``(u, delta, A, B [B,G,N,L], C, D, delta_bias) -> y`` and attributes
  ``delta_softplus`` and ``plugin_namespace="prvr"`` (TensorRT prefers a registered plugin for it);
- the model ships an ONNX *local function* of the same name and domain whose body uses standard ops
  only, so any ONNX Runtime runs the file with no custom library;
- the body precomputes ``exp(Δ·A)`` and ``Δ·B·u`` for all steps, then runs one ``Scan`` over time whose
  step is ``h = a_t·h + b_t; y_t = Σ_n h·C_t`` (the fastest form on ONNX Runtime CPU, §2, §5);
- the SiLU gate is not part of the node: the exporter emits it as ordinary ops after it.
The dynamo exporter inlines local functions it creates itself (§3), so export maps the
torch op to a bare custom node (``translate_selective_scan``) and appends the function afterwards
(``attach_selective_scan_function``).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

DOMAIN = "prvr"
OP_TYPE = "SelectiveScan"
OPSET_VERSION = 1
INPUTS = ("u", "delta", "A", "B", "C", "D", "delta_bias")
# Opset of the standard ops inside the function body (Softplus, Scan, ReduceSum with axes input).
BODY_OPSET = 18


def register_schema() -> None:
    """Tell onnx (and through it onnxscript) about prvr::SelectiveScan so the exporter can emit it.

    Only needed in the exporting process: a saved model carries the function, which is what a fresh
    process checks and runs (tested).
    """
    try:
        onnx.defs.get_schema(OP_TYPE, OPSET_VERSION, DOMAIN)
        return
    except onnx.defs.SchemaError:
        pass
    param = onnx.defs.OpSchema.FormalParameter
    act, weight = "T", "TW"
    schema = onnx.defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        OPSET_VERSION,
        doc="Mamba selective scan (mamba-ssm selective_scan_fn without z). u, delta: [B,D,L]; A: [D,N]; "
        "B, C: [B,G,N,L]; D, delta_bias: [D]; y: [B,D,L].",
        inputs=[param(n, act if n in ("u", "delta", "B", "C") else weight) for n in INPUTS],
        outputs=[param("y", act)],
        type_constraints=[
            (act, ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "activations"),
            (weight, ["tensor(float)"], "parameters stay float32, as in mamba-ssm"),
        ],
        attributes=[
            onnx.defs.OpSchema.Attribute("delta_softplus", onnx.defs.OpSchema.AttrType.INT, "apply softplus"),
            onnx.defs.OpSchema.Attribute("plugin_namespace", onnx.defs.OpSchema.AttrType.STRING,
                                         "TensorRT plugin namespace"),
        ],
    )
    onnx.defs.register_schema(schema)


def _const_ints(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64,
                                                                              [len(values)], values))


def _attr_ref_int(output: str, attribute: str) -> onnx.NodeProto:
    """A Constant whose int value is the calling node's attribute (function attribute reference)."""
    node = helper.make_node("Constant", [], [output])
    node.attribute.append(onnx.AttributeProto(name="value_int", ref_attr_name=attribute,
                                              type=onnx.AttributeProto.INT))
    return node


def _scan_body() -> onnx.GraphProto:
    """One time step. State h [B,G,Dg,N]; inputs a_t, b_t [B,G,Dg,N], c_t [B,G,1,N]; output y_t [B,G,Dg]."""
    nodes = [
        helper.make_node("Mul", ["a_t", "h_in"], ["decayed"]),
        helper.make_node("Add", ["decayed", "b_t"], ["h_out"]),
        helper.make_node("Mul", ["h_out", "c_t"], ["hc"]),
        _const_ints("last_axis", [-1]),
        helper.make_node("ReduceSum", ["hc", "last_axis"], ["y_t"], keepdims=0),
    ]
    # Untyped values: the body takes its element type from the Scan inputs (float, float16, bfloat16).
    def value(name: str) -> onnx.ValueInfoProto:
        return onnx.ValueInfoProto(name=name)

    return helper.make_graph(
        nodes,
        "selective_scan_step",
        inputs=[value("h_in"), value("a_t"), value("b_t"), value("c_t")],
        outputs=[value("h_out"), value("y_t")],
    )


def build_selective_scan_function() -> onnx.FunctionProto:
    """The portable body of prvr::SelectiveScan (standard ops, type-polymorphic through CastLike).

    Shapes: L time steps, B batch, D channels in G groups of Dg = D / G, N states.
    """
    n = helper.make_node
    nodes = [
        # Step size: delta + bias, then softplus when the attribute says so.
        _const_ints("ax_last", [-1]),
        n("CastLike", ["delta_bias", "u"], ["bias_c"]),
        n("Unsqueeze", ["bias_c", "ax_last"], ["bias_col"]),  # [D,1]
        n("Add", ["delta", "bias_col"], ["dt_raw"]),  # [B,D,L]
        _attr_ref_int("softplus_flag_i", "delta_softplus"),
        n("Cast", ["softplus_flag_i"], ["softplus_flag"], to=TensorProto.BOOL),
        n("Softplus", ["dt_raw"], ["dt_soft"]),
        n("Where", ["softplus_flag", "dt_soft", "dt_raw"], ["dt"]),  # [B,D,L]
        # Sizes.
        n("Shape", ["u"], ["shape_u"]),  # [B, D, L]
        n("Shape", ["B"], ["shape_B"]),  # [B, G, N, L]
        _const_ints("i0", [0]), _const_ints("i1", [1]), _const_ints("i2", [2]),
        n("Gather", ["shape_u", "i0"], ["dim_b"]),
        n("Gather", ["shape_u", "i1"], ["dim_d"]),
        n("Gather", ["shape_u", "i2"], ["dim_l"]),
        n("Gather", ["shape_B", "i1"], ["dim_g"]),
        n("Gather", ["shape_B", "i2"], ["dim_n"]),
        n("Div", ["dim_d", "dim_g"], ["dim_dg"]),
        n("Concat", ["dim_l", "dim_b", "dim_g", "dim_dg", "dim_n"], ["shape_lbgdn"], axis=0),
        n("Concat", ["dim_b", "dim_g", "dim_dg", "dim_n"], ["shape_state"], axis=0),
        n("Concat", ["dim_l", "dim_b", "dim_g", "dim_dg"], ["shape_lbgd"], axis=0),
        n("Concat", ["dim_l", "dim_b", "dim_d"], ["shape_lbd"], axis=0),
        # Time-major step quantities, computed for all steps at once (outside the loop).
        n("Transpose", ["dt"], ["dt_t"], perm=[2, 0, 1]),  # [L,B,D]
        n("Unsqueeze", ["dt_t", "ax_last"], ["dt_t1"]),  # [L,B,D,1]
        n("CastLike", ["A", "u"], ["A_c"]),  # [D,N]
        n("Mul", ["dt_t1", "A_c"], ["dtA"]),  # [L,B,D,N]
        n("Exp", ["dtA"], ["decay_flat"]),
        n("Reshape", ["decay_flat", "shape_lbgdn"], ["decay"]),  # [L,B,G,Dg,N]
        n("Mul", ["dt", "u"], ["dtu"]),  # [B,D,L]
        n("Transpose", ["dtu"], ["dtu_t"], perm=[2, 0, 1]),  # [L,B,D]
        n("Unsqueeze", ["dtu_t", "ax_last"], ["dtu_t1"]),  # [L,B,D,1]
        _const_ints("one", [1]),
        n("Concat", ["dim_l", "dim_b", "dim_g", "dim_dg", "one"], ["shape_lbgd1"], axis=0),
        n("Reshape", ["dtu_t1", "shape_lbgd1"], ["dtu_g"]),  # [L,B,G,Dg,1]
        n("Transpose", ["B"], ["B_t"], perm=[3, 0, 1, 2]),  # [L,B,G,N]
        _const_ints("ax3", [3]),
        n("Unsqueeze", ["B_t", "ax3"], ["B_t1"]),  # [L,B,G,1,N]
        n("Mul", ["dtu_g", "B_t1"], ["drive"]),  # [L,B,G,Dg,N]
        n("Transpose", ["C"], ["C_t"], perm=[3, 0, 1, 2]),
        n("Unsqueeze", ["C_t", "ax3"], ["C_t1"]),  # [L,B,G,1,N]
        # h_0 = 0 in u's type.
        n("ConstantOfShape", ["shape_state"], ["zeros_f"]),
        n("CastLike", ["zeros_f", "u"], ["h0"]),
        n("Scan", ["h0", "decay", "drive", "C_t1"], ["h_last", "y_steps"], num_scan_inputs=3,
          body=_scan_body()),  # y_steps [L,B,G,Dg]
        n("Reshape", ["y_steps", "shape_lbd"], ["y_lbd"]),
        n("Transpose", ["y_lbd"], ["y_scan"], perm=[1, 2, 0]),  # [B,D,L]
        # Skip connection D·u.
        n("CastLike", ["D", "u"], ["D_c"]),
        n("Unsqueeze", ["D_c", "ax_last"], ["D_col"]),
        n("Mul", ["u", "D_col"], ["skip"]),
        n("Add", ["y_scan", "skip"], ["y"]),
    ]
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        inputs=list(INPUTS),
        outputs=["y"],
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", BODY_OPSET)],
        attributes=["delta_softplus", "plugin_namespace"],
    )


def translate_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus: bool = False):
    """onnxscript translation of ``torch.ops.prvr.selective_scan``: the bare custom node.

    The node's arity is fixed, so a missing ``D`` / ``delta_bias`` becomes float zeros of shape [D].
    """
    import onnxscript
    from onnxscript import opset18 as op

    prvr = onnxscript.values.Opset(DOMAIN, OPSET_VERSION)
    if D is None:
        D = op.ConstantOfShape(op.Shape(A, start=0, end=1))
    if delta_bias is None:
        delta_bias = op.ConstantOfShape(op.Shape(A, start=0, end=1))
    return prvr.SelectiveScan(u, delta, A, B, C, D, delta_bias, delta_softplus=int(delta_softplus),
                              plugin_namespace=DOMAIN)


def custom_translation_table() -> dict:
    """What ``torch.onnx.export(..., custom_translation_table=...)`` needs for our ops."""
    import torch

    import prvr_export.ops.selective_scan  # noqa: F401  (registers torch.ops.prvr.*)

    register_schema()
    return {torch.ops.prvr.selective_scan.default: translate_selective_scan}


def attach_selective_scan_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the portable body (once) and the opset imports it needs to an exported model, in place."""
    uses_scan = any(node.domain == DOMAIN and node.op_type == OP_TYPE for node in model.graph.node)
    if not uses_scan:
        return model
    if not any(f.domain == DOMAIN and f.name == OP_TYPE for f in model.functions):
        model.functions.append(build_selective_scan_function())
    imports = {imp.domain: imp for imp in model.opset_import}
    if DOMAIN not in imports:
        model.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    default = imports.get("")
    if default is None:
        model.opset_import.append(helper.make_opsetid("", BODY_OPSET))
    elif default.version < BODY_OPSET:
        raise ValueError(f"the SelectiveScan body needs opset >= {BODY_OPSET}; model uses {default.version}")
    return model
