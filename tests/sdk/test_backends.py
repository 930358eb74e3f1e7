"""Backends: the auto rule picks what the issue specifies, and every Session runs a graph like numpy does.

Oracle: numpy on a tiny hand-built graph (``y = x @ W + b``, dynamic batch). The TensorRT test builds an
engine from the same graph and needs ``tensorrt`` and a GPU; it skips with the reason elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from prvr_sdk import backends
from prvr_sdk.backends import OnnxRuntimeSession, choose
from prvr_sdk.errors import BackendUnavailableError, InvalidInputError

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
B = np.array([1.0, -1.0, 0.5], dtype=np.float32)


@pytest.fixture
def machine(monkeypatch):
    """Pretend what this machine has: ``machine(trt=..., cuda=...)``."""

    def set_(trt: bool, cuda: bool) -> None:
        monkeypatch.setattr(backends, "tensorrt_available", lambda: trt)
        monkeypatch.setattr(backends, "cuda_available", lambda: cuda)

    return set_


@pytest.mark.parametrize(
    ("trt", "cuda", "engine", "expected"),
    [
        (True, True, True, ("tensorrt", "cuda:0")),  # engine + library: TensorRT
        (True, True, False, ("onnxruntime", "cuda:0")),  # no engine in the bundle: ORT on CUDA
        (False, True, True, ("onnxruntime", "cuda:0")),  # engine but no library: ORT on CUDA
        (False, False, True, ("onnxruntime", "cpu")),  # nothing: ORT on the CPU
        (True, False, True, ("tensorrt", "cuda:0")),
    ],
)
def test_auto_rule(machine, trt, cuda, engine, expected):
    machine(trt, cuda)
    choice = choose("auto", "auto", has_engine=engine)
    assert (choice.backend, choice.device) == expected and choice.reason.startswith("auto")


def test_explicit_requests_are_honoured_or_refused(machine):
    machine(False, False)
    assert choose("onnxruntime", "cpu").device == "cpu"
    assert choose("auto", "cpu", has_engine=True).backend == "onnxruntime"  # cpu forbids TensorRT
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        choose("tensorrt", "auto", has_engine=True)
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        choose("onnxruntime", "cuda:1")
    with pytest.raises(InvalidInputError, match="device"):
        choose("auto", "gpu")
    with pytest.raises(InvalidInputError, match="backend"):
        choose("torch")
    machine(True, True)
    with pytest.raises(BackendUnavailableError, match="no TensorRT engines"):
        choose("tensorrt", "cuda", has_engine=False)
    with pytest.raises(InvalidInputError, match="GPU"):
        choose("tensorrt", "cpu", has_engine=True)
    assert choose("onnxruntime", "cuda:1").device == "cuda:1"


def _linear_model(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_onnxruntime_session_runs_like_numpy(tmp_path):
    pytest.importorskip("onnxruntime")
    session = OnnxRuntimeSession(_linear_model(tmp_path / "m.onnx"), "cpu")
    assert session.input_names == ("x",) and session.output_names == ("y",)
    assert session.provider == "CPUExecutionProvider" and isinstance(session, backends.Session)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})["y"], x @ W + B, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_tensorrt_session_runs_like_numpy(tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'prvr-sdk[gpu]')")
    path = _linear_model(tmp_path / "m.onnx")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(path.read_bytes())
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4), (8, 4), (64, 4))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    (tmp_path / "m.plan").write_bytes(bytes(builder.build_serialized_network(network, config)))
    session = backends.TensorRTSession(tmp_path / "m.plan", "cuda:0")
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})["y"], x @ W + B, rtol=1e-5, atol=1e-5)
