"""Backends: the auto rule picks what the issue specifies, and every Session runs a graph like numpy does.

Oracle: numpy on a tiny hand-built graph (``y = x @ W + b``, dynamic batch). The TensorRT test builds an
engine from the same graph and needs ``tensorrt`` and a GPU; it skips with the reason elsewhere.

The CUDA-fallback tests need no GPU: they let this (CPU) onnxruntime claim CUDAExecutionProvider, as
onnxruntime-gpu does on a host whose CUDA libraries are missing; the real ``InferenceSession`` is then
asked for CUDA and falls back to the CPU by itself, which is what the session must report.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from prvr_sdk import backends
from prvr_sdk.backends import BackendFallbackWarning, Choice, OnnxRuntimeSession, choose, open_session
from prvr_sdk.backends import onnxruntime as ort_backend
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


def test_cpu_session_reports_the_cpu_without_warning(tmp_path):
    pytest.importorskip("onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendFallbackWarning)
        session = OnnxRuntimeSession(_linear_model(tmp_path / "m.onnx"), "cpu", strict=True)
    assert (session.device, session.requested_device) == ("cpu", "cpu")
    assert session.providers == ("CPUExecutionProvider",)
    assert repr(session) == "OnnxRuntimeSession(device='cpu', provider='CPUExecutionProvider')"


@pytest.fixture
def cuda_listed_but_unloadable(monkeypatch):
    """This onnxruntime lists CUDAExecutionProvider but cannot create it (see the module docstring)."""
    ort = pytest.importorskip("onnxruntime")
    real = list(ort.get_available_providers())
    if "CUDAExecutionProvider" in real:
        pytest.skip("this onnxruntime really offers CUDA; the fallback cannot be provoked here")
    monkeypatch.setattr(ort_backend, "available_providers", lambda: [*real, "CUDAExecutionProvider"])


# onnxruntime's own warning about the provider it cannot create is expected here; ours is asserted.
ORT_OWN_WARNING = "ignore:Specified provider 'CUDAExecutionProvider':UserWarning"
FALLBACK = (r"m\.onnx: device 'cuda:0' was asked for, but ONNX Runtime could not load CUDAExecutionProvider "
            r"and runs the graph with \['CPUExecutionProvider'\] on the CPU")


@pytest.mark.filterwarnings(ORT_OWN_WARNING)
def test_cuda_fallback_warns_and_reports_what_runs(tmp_path, cuda_listed_but_unloadable):
    path = _linear_model(tmp_path / "m.onnx")
    with pytest.warns(BackendFallbackWarning, match=FALLBACK) as caught:
        session = OnnxRuntimeSession(path, "cuda:0")
    ours = [w for w in caught if w.category is BackendFallbackWarning]
    assert len(ours) == 1 and "strict=True" in str(ours[0].message)
    assert session.requested_device == "cuda:0"
    assert (session.device, session.provider) == ("cpu", "CPUExecutionProvider")
    assert repr(session) == ("OnnxRuntimeSession(device='cpu', provider='CPUExecutionProvider', "
                             "requested_device='cuda:0')")
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})["y"], x @ W + B, rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings(ORT_OWN_WARNING)
def test_cuda_fallback_is_an_error_when_strict(tmp_path, cuda_listed_but_unloadable):
    path = _linear_model(tmp_path / "m.onnx")
    with pytest.raises(BackendUnavailableError, match=FALLBACK) as info:
        OnnxRuntimeSession(path, "cuda:0", strict=True)
    assert info.value.extra == "gpu"


@pytest.mark.filterwarnings(ORT_OWN_WARNING)
def test_open_session_keeps_the_auto_rule_and_reports_the_fallback(tmp_path, cuda_listed_but_unloadable):
    # choose() still trusts the provider list (auto picks cuda:0); the session says what really runs.
    path = _linear_model(tmp_path / "m.onnx")
    choice = choose("auto", "auto")
    assert (choice.backend, choice.device) == ("onnxruntime", "cuda:0")
    with pytest.warns(BackendFallbackWarning, match=FALLBACK):
        assert open_session(path, choice).device == "cpu"
    with pytest.raises(BackendUnavailableError, match=FALLBACK):
        open_session(path, Choice("onnxruntime", "cuda:0", "requested"), strict=True)


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


# ---------------------------------------------------------------------------------------------
# tests/conftest.py: which machines run the `gpu` tests. The machine is simulated by standing in for
# shutil.which and subprocess.run (what nvidia-smi says) and onnxruntime's provider list.

SMI = "/usr/bin/nvidia-smi"
H200 = "GPU 0: NVIDIA H200 (UUID: GPU-4a1c0e4e-0000-0000-0000-000000000000)\n"
NO_DRIVER = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


@pytest.fixture
def nvidia_smi(monkeypatch):
    """``nvidia_smi(None)``: not on PATH; ``nvidia_smi(rc, stdout, stderr)`` or ``nvidia_smi(exc)``: its
    answer. Returns the list of commands run."""
    import shutil
    import subprocess

    calls: list = []

    def set_(answer, stdout: str = "", stderr: str = "") -> list:
        monkeypatch.setattr(shutil, "which", lambda name: SMI if answer is not None and name == "nvidia-smi"
                            else None)

        def run(cmd, **kwargs):
            calls.append((cmd, kwargs.get("timeout")))
            if isinstance(answer, BaseException):
                raise answer
            return subprocess.CompletedProcess(cmd, answer, stdout, stderr)

        monkeypatch.setattr(subprocess, "run", run)
        return calls

    return set_


def _providers(*names):
    return lambda: list(names)


def _never():
    raise AssertionError("onnxruntime consulted although nvidia-smi answered")


def test_gpu_tests_run_where_nvidia_smi_lists_a_gpu(gpu_policy, nvidia_smi):
    calls = nvidia_smi(0, H200)
    assert gpu_policy.machine(ort_providers=_never) is None
    ((cmd, timeout),) = calls
    assert cmd == [SMI, "-L"] and timeout is not None and timeout > 0


@pytest.mark.parametrize(
    ("answer", "stdout", "stderr", "expected"),
    [
        (9, "", NO_DRIVER, "exit status 9: " + NO_DRIVER),
        (0, "No devices found.\n", "", "lists none (exit status 0: No devices found.)"),
        (OSError("exec format error"), "", "", "`nvidia-smi -L` failed: exec format error"),
    ],
    ids=["no-driver", "no-devices", "broken"],
)
def test_nvidia_smi_without_a_gpu_skips_even_if_onnxruntime_has_cuda(gpu_policy, nvidia_smi, answer,
                                                                      stdout, stderr, expected):
    nvidia_smi(answer, stdout, stderr)
    reason = gpu_policy.machine(ort_providers=_providers("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert reason is not None and reason.startswith("needs an NVIDIA GPU") and expected in reason


def test_nvidia_smi_timeout_skips(gpu_policy, nvidia_smi):
    import subprocess

    nvidia_smi(subprocess.TimeoutExpired([SMI, "-L"], 20))
    assert "timed out" in gpu_policy.machine(ort_providers=_never)


def test_without_nvidia_smi_onnxruntime_cuda_decides(gpu_policy, nvidia_smi):
    calls = nvidia_smi(None)
    gpu_ort = _providers("CUDAExecutionProvider", "CPUExecutionProvider")
    assert gpu_policy.machine(ort_providers=gpu_ort) is None
    assert gpu_policy.machine(ort_providers=_providers("CPUExecutionProvider")) == (
        "needs an NVIDIA GPU; nvidia-smi is not on PATH and onnxruntime has no CUDAExecutionProvider"
    )
    assert calls == []


def test_torch_cuda_is_asked_only_by_tests_that_need_it(gpu_policy):
    cpu_torch = "needs torch with CUDA; torch 2.13.0+cpu sees no GPU"
    gpu_host, no_gpu = (lambda: None), (lambda: "needs an NVIDIA GPU; ...")
    assert gpu_policy.reason((), gpu_host, _never) is None  # TensorRT / ORT tests: torch is not asked
    assert gpu_policy.reason(("torch",), gpu_host, lambda: cpu_torch) == cpu_torch
    assert gpu_policy.reason(("torch",), gpu_host, lambda: None) is None
    assert gpu_policy.reason(("torch",), no_gpu, _never) == "needs an NVIDIA GPU; ..."


def test_this_machine_is_judged_by_its_hardware(gpu_policy):
    # Oracle: nvidia-smi's presence and onnxruntime's real provider list, independent of torch's build.
    import shutil

    reason = gpu_policy.machine()
    assert reason is None or reason.startswith("needs an NVIDIA GPU")
    if shutil.which("nvidia-smi") is None:
        has_cuda_ort = "CUDAExecutionProvider" in ort_backend.available_providers()
        assert (reason is None) == has_cuda_ort
    torch_reason = gpu_policy.torch_cuda()
    assert torch_reason is None or torch_reason.startswith("needs torch with CUDA")
