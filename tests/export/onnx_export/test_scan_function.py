"""prvr::SelectiveScan in ONNX: the portable function body and the exported Mamba layers.

Oracle: ``selective_scan_ref`` (torch) on the same inputs. fp32 tolerance: 1e-5 of the output's max.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from prvr_export.nn.mamba import BiMamba, Mamba
from prvr_export.onnx_export.scan_function import (
    DOMAIN,
    INPUTS,
    OP_TYPE,
    attach_selective_scan_function,
    build_selective_scan_function,
    custom_translation_table,
)
from prvr_export.ops.reference import selective_scan_ref

ort = pytest.importorskip("onnxruntime")
RTOL = 1e-5


def _scan_model(delta_softplus: int) -> onnx.ModelProto:
    node = helper.make_node(OP_TYPE, list(INPUTS), ["y"], domain=DOMAIN, delta_softplus=delta_softplus,
                            plugin_namespace=DOMAIN)
    ranks = {"u": 3, "delta": 3, "A": 2, "B": 4, "C": 4, "D": 1, "delta_bias": 1}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * ranks[n]) for n in INPUTS]
    graph = helper.make_graph([node], "scan_only", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 3)])
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[build_selective_scan_function()],
                              ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def _inputs(batch, dim, dstate, length, groups, softplus, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=g)
    A = -torch.exp(torch.rand(dim, dstate, generator=g) * math.log(16))
    B = torch.randn(batch, groups, dstate, length, generator=g)
    C = torch.randn(batch, groups, dstate, length, generator=g)
    D = torch.randn(dim, generator=g)
    if softplus:  # softplus(delta + bias) spans roughly 1e-3 .. 1
        bias = torch.randn(dim, generator=g) * 0.5 - 3.0
        delta = torch.randn(batch, dim, length, generator=g) * 1.5
    else:  # positive step sizes given directly
        bias = torch.rand(dim, generator=g) * 0.01
        delta = torch.rand(batch, dim, length, generator=g) * 0.2 + 1e-3
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=bias)


GRID = [
    # (batch, dim, dstate, length, groups, softplus)
    (2, 8, 4, 1, 1, 1),
    (2, 8, 4, 7, 2, 1),
    (2, 8, 4, 7, 4, 0),
    (1, 40, 16, 128, 2, 1),
    (3, 16, 16, 128, 1, 0),
    (1, 24, 16, 1000, 3, 1),
]


@pytest.mark.parametrize("batch,dim,dstate,length,groups,softplus", GRID)
def test_function_body_matches_reference(batch, dim, dstate, length, groups, softplus):
    model = _scan_model(softplus)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = _inputs(batch, dim, dstate, length, groups, softplus)
    (y,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    expected = selective_scan_ref(**inputs, delta_softplus=bool(softplus)).numpy()
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())


def test_function_body_with_zero_D_and_bias_equals_reference_without_them():
    inputs = _inputs(2, 8, 4, 9, 1, 1)
    inputs["D"] = torch.zeros(8)
    inputs["delta_bias"] = torch.zeros(8)
    session = ort.InferenceSession(_scan_model(1).SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    expected = selective_scan_ref(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                  delta_softplus=True).numpy()
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())


def _export(module: torch.nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=1024)
    length = torch.export.Dim("length", min=1, max=8192)
    program = torch.onnx.export(module, (x,), dynamo=True, dynamic_shapes=({0: batch, 1: length},),
                                custom_translation_table=custom_translation_table(), opset_version=18,
                                verbose=False)
    return attach_selective_scan_function(program.model_proto)


@pytest.fixture(scope="module", params=[Mamba, BiMamba], ids=["Mamba", "BiMamba"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    layer = request.param(16).eval()
    model = _export(layer, torch.randn(2, 9, 16))
    path = tmp_path_factory.mktemp("onnx") / f"{request.param.__name__}.onnx"
    onnx.save(model, path)
    return request.param, layer, model, path


def test_exported_layer_has_one_scan_node_per_direction_and_no_aten(exported):
    cls, _, model, _ = exported
    scans = [n for n in model.graph.node if (n.domain, n.op_type) == (DOMAIN, OP_TYPE)]
    assert len(scans) == (2 if cls is BiMamba else 1)
    assert all({a.name for a in n.attribute} >= {"delta_softplus", "plugin_namespace"} for n in scans)
    assert not [n for n in model.graph.node if "aten" in n.domain]
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, OP_TYPE)]


def test_exported_node_count_does_not_depend_on_sample_length(exported):
    cls, layer, model, _ = exported
    other = _export(layer, torch.randn(1, 40, 16))
    assert len(other.graph.node) == len(model.graph.node)
    # The only loop lives inside the function body, never unrolled or duplicated in the graph.
    assert not any(n.op_type in ("Loop", "Scan") for n in model.graph.node)


@pytest.mark.parametrize("batch,length", [(1, 1), (3, 5), (2, 300)])
def test_exported_layer_matches_torch(exported, batch, length):
    _, layer, _, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, length, 16, generator=torch.Generator().manual_seed(length))
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = layer(x).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_saved_model_checks_in_a_fresh_process(exported):
    """No Python-side schema in a new interpreter: the function alone must make the model valid."""
    _, _, _, path = exported
    code = textwrap.dedent(f"""
        import json, onnx
        m = onnx.load({str(path)!r})
        onnx.checker.check_model(m, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        out = inferred.graph.output[0].type.tensor_type
        print(json.dumps({{"rank": len(out.shape.dim), "elem": out.elem_type}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"rank": 3, "elem": TensorProto.FLOAT}
