"""The native prvr::SelectiveScan kernel inside ONNX Runtime (``prvr_sdk.backends.ort_scan``).

Oracles, independent of the kernel: a numpy float64 loop of the recurrence written here
(``h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t``, ``y_t = C_t·h_t + D u_t``, ``Δ = softplus?(delta + bias)``), the
node's portable ONNX body (standard ops) on the same inputs, and the committed golden bundles' torch outputs.
The kernel's call counter proves ORT ran the kernel rather than inlining the node's body.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
scan_function = pytest.importorskip("prvr_export.onnx_export.scan_function")

from onnx import TensorProto, helper  # noqa: E402

from prvr_sdk.backends import ort_scan  # noqa: E402
from prvr_sdk.backends.onnxruntime import OnnxRuntimeSession, scan_backend  # noqa: E402

RTOL = 1e-5
GOLDEN = Path(__file__).resolve().parents[1] / "golden"

_REASON = ort_scan.unavailable_reason()  # builds the kernel once for this test process
needs_kernel = pytest.mark.skipif(_REASON is not None, reason=f"native kernel unavailable: {_REASON}")


def scan_numpy(u, delta, A, B, C, D, delta_bias, softplus: bool) -> np.ndarray:
    """The recurrence, one time step at a time, in float64 (channels of a group share B and C)."""
    u, delta, A, B, C, D, bias = (np.asarray(x, np.float64) for x in (u, delta, A, B, C, D, delta_bias))
    batch, dim, length = u.shape
    group = np.arange(dim) // (dim // B.shape[1])  # the group of each channel
    dt = delta + bias[:, None]
    if softplus:
        dt = np.logaddexp(0.0, dt)
    B, C = B[:, group], C[:, group]  # [batch, dim, N, L]: each channel's B and C
    h = np.zeros((batch, dim, A.shape[1]))
    y = np.empty_like(u)
    for t in range(length):
        h = np.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[..., t]
        y[:, :, t] = np.einsum("bdn,bdn->bd", h, C[..., t]) + D * u[:, :, t]
    return y


def scan_model(softplus: int) -> bytes:
    """A one-node graph: prvr::SelectiveScan with its portable function body attached."""
    inputs = scan_function.INPUTS
    node = helper.make_node(scan_function.OP_TYPE, list(inputs), ["y"], domain=scan_function.DOMAIN,
                            delta_softplus=softplus, plugin_namespace=scan_function.DOMAIN)
    ranks = {"u": 3, "delta": 3, "A": 2, "B": 4, "C": 4, "D": 1, "delta_bias": 1}
    graph = helper.make_graph(
        [node], "scan_only",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * ranks[n]) for n in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 3)],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(scan_function.DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10,
                              functions=[scan_function.build_selective_scan_function()])
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def scan_inputs(batch, dim, dstate, length, groups, softplus, bias=True, skip=True, seed=0):
    rng = np.random.default_rng(seed)
    f = np.float32
    inputs = {
        "u": rng.standard_normal((batch, dim, length)).astype(f),
        "A": -np.exp(rng.random((dim, dstate)) * np.log(16)).astype(f),
        "B": rng.standard_normal((batch, groups, dstate, length)).astype(f),
        "C": rng.standard_normal((batch, groups, dstate, length)).astype(f),
        "D": rng.standard_normal(dim).astype(f) if skip else np.zeros(dim, f),
    }
    if softplus:  # softplus(delta + bias) spans roughly 1e-3 .. 1
        inputs["delta"] = (rng.standard_normal((batch, dim, length)) * 1.5).astype(f)
        inputs["delta_bias"] = (rng.standard_normal(dim) * 0.5 - 3.0).astype(f)
    else:  # positive step sizes given directly
        inputs["delta"] = (rng.random((batch, dim, length)) * 0.2 + 1e-3).astype(f)
        inputs["delta_bias"] = (rng.random(dim) * 0.01).astype(f)
    if not bias:
        inputs["delta_bias"] = np.zeros(dim, f)
    return inputs


def session(tmp_path: Path, softplus: int, native: bool, threads: int | None = None) -> OnnxRuntimeSession:
    """An OnnxRuntimeSession on the one-node graph, with the native kernel or the portable body."""
    path = tmp_path / f"scan_{softplus}.onnx"
    if not path.exists():
        path.write_bytes(scan_model(softplus))
    old = os.environ.get("PRVR_ORT_SCAN")
    os.environ["PRVR_ORT_SCAN"] = "on" if native else "off"
    try:
        s = OnnxRuntimeSession(path, device="cpu", threads=threads)
    finally:
        os.environ.pop("PRVR_ORT_SCAN")
        if old is not None:
            os.environ["PRVR_ORT_SCAN"] = old
    assert s.scan == ("native" if native else "portable")
    return s


def close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())


# (length, dstate): every L of the brief with a small and the usual state size; D=40 in G=2 groups leaves a
# partial block of 4 channels per group (blocks are 16 wide), G=4 gives 10 channels per group.
SHAPES = [(1, 4), (7, 16), (128, 16)]
GRID = [
    (length, dstate, groups, softplus, bias, skip)
    for (length, dstate), groups, softplus, (bias, skip) in itertools.product(
        SHAPES, (1, 2, 4), (0, 1), ((True, True), (False, True), (True, False), (False, False)))
]


@needs_kernel
@pytest.mark.parametrize("length,dstate,groups,softplus,bias,skip", GRID)
def test_native_kernel_matches_numpy_loop_and_portable_body(tmp_path, length, dstate, groups, softplus, bias,
                                                            skip):
    feeds = scan_inputs(2, 40, dstate, length, groups, softplus, bias, skip)
    before = ort_scan.calls()
    (native,) = session(tmp_path, softplus, native=True).run(feeds).values()
    assert ort_scan.calls() == before + 1  # ORT ran the kernel, not the inlined body
    (body,) = session(tmp_path, softplus, native=False).run(feeds).values()
    assert ort_scan.calls() == before + 1
    expected = scan_numpy(**feeds, softplus=bool(softplus))
    close(native, expected)
    close(body, expected)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_native_kernel_splits_work_across_threads_without_changing_results(tmp_path, threads):
    """Big enough (3 rows x 64 channels x 256 steps) for the kernel to hand chunks to ORT's thread pool."""
    feeds = scan_inputs(3, 64, 16, 256, 2, 1, seed=threads)
    (native,) = session(tmp_path, 1, native=True, threads=threads).run(feeds).values()
    close(native, scan_numpy(**feeds, softplus=True))


@needs_kernel
def test_native_kernel_rejects_inconsistent_shapes(tmp_path):
    feeds = scan_inputs(1, 8, 4, 5, 1, 1)
    feeds["B"] = feeds["B"][..., :4]  # L of B differs from u's
    with pytest.raises(Exception, match=r"prvr::SelectiveScan: B and C must be \[B,G,N,L\]"):
        session(tmp_path, 1, native=True).run(feeds)
    feeds = scan_inputs(1, 9, 4, 5, 2, 1)  # 9 channels do not split into 2 groups
    with pytest.raises(Exception, match="multiple of the group count"):
        session(tmp_path, 1, native=True).run(feeds)


@needs_kernel
def test_float16_graphs_fall_back_to_the_portable_body(tmp_path, caplog):
    """The kernel is float32: ORT rejects its schema for a float16 scan node, and the session must then
    serve the graph with the body (as before the kernel existed) and say so, not fail."""
    model = onnx.load_from_string(scan_model(1))
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in ("u", "delta", "B", "C", "y"):
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    (tmp_path / "half.onnx").write_bytes(model.SerializeToString())
    feeds = scan_inputs(1, 8, 4, 6, 1, 1)
    half = {k: v.astype(np.float16) if k in ("u", "delta", "B", "C") else v for k, v in feeds.items()}
    with caplog.at_level("WARNING", logger="prvr_sdk.backends.onnxruntime"):
        s = OnnxRuntimeSession(tmp_path / "half.onnx", device="cpu")
    assert s.scan == "portable"
    assert "rejected the native kernel for half.onnx" in caplog.text
    (y,) = s.run(half).values()
    expected = scan_numpy(**{k: v.astype(np.float32) for k, v in half.items()}, softplus=True)
    np.testing.assert_allclose(y.astype(np.float32), expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())


def _golden(name: str):
    import re

    data = np.load(GOLDEN / name / "golden.npz")
    count = sum(bool(re.fullmatch(r"video_\d+", k)) for k in data.files)
    return data, [data[f"video_{i}"] for i in range(count)]


@needs_kernel
@pytest.mark.parametrize("native", [True, False], ids=["native", "portable"])
@pytest.mark.parametrize("name", ["mamfusion", "muse"])
def test_golden_bundle_embeddings_match_torch_with_either_scan(name, native, monkeypatch):
    from prvr_sdk import Retriever

    monkeypatch.setenv("PRVR_ORT_SCAN", "on" if native else "off")
    golden, videos = _golden(name)
    r = Retriever.from_bundle(GOLDEN / name / "bundle", device="cpu")
    before = ort_scan.calls()
    emb = r.encode_video(videos, fps=1.0, batch_size=3)  # batches mix lengths: padding must not leak
    assert (ort_scan.calls() > before) == native
    spec = r.spec
    if spec.clip_output is not None:
        for i in range(len(videos)):
            np.testing.assert_allclose(emb.clips(emb.ids[i]), golden[spec.clip_output][i], atol=1e-5)
    if spec.video_output is not None:
        np.testing.assert_allclose(emb.video_emb, golden[spec.video_output], atol=1e-5)


_NO_COMPILER = """
import logging, sys
import numpy as np
from prvr_sdk.backends import ort_scan
from prvr_sdk.backends.onnxruntime import OnnxRuntimeSession, scan_backend
logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
feeds = dict(np.load({feeds!r}))
expected = np.load({expected!r})
for _ in range(2):  # two sessions, one log line
    s = OnnxRuntimeSession({model!r}, device="cpu")
    assert s.scan == "portable", s.scan
    (y,) = s.run(feeds).values()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
assert ort_scan.calls() == 0
print("BACKEND", scan_backend())
"""


def test_without_a_compiler_the_portable_body_serves_correctly_and_says_so(tmp_path):
    feeds = scan_inputs(2, 24, 8, 33, 2, 1)
    (tmp_path / "scan.onnx").write_bytes(scan_model(1))
    np.savez(tmp_path / "feeds.npz", **feeds)
    np.save(tmp_path / "expected.npy", scan_numpy(**feeds, softplus=True))
    code = textwrap.dedent(_NO_COMPILER).format(
        feeds=str(tmp_path / "feeds.npz"), expected=str(tmp_path / "expected.npy"),
        model=str(tmp_path / "scan.onnx"))
    env = {**os.environ, "PRVR_CC": str(tmp_path / "no-such-cc"), "PRVR_KERNEL_CACHE": str(tmp_path / "k")}
    env.pop("PRVR_ORT_SCAN", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logged = [line for line in done.stderr.splitlines() if line.startswith("LOG ")]
    assert len(logged) == 1 and "portable prvr::SelectiveScan body" in logged[0] and "no-such-cc" in logged[0]
    backend = next(line for line in done.stdout.splitlines() if line.startswith("BACKEND "))
    assert backend.startswith("BACKEND portable ONNX body") and "no-such-cc" in backend


def test_importing_the_backend_compiles_nothing():
    code = ("import prvr_sdk.backends.onnxruntime, prvr_sdk.native.build as b, sys; "
            "assert b.results() == {}, b.results(); assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_graphs_without_the_node_get_no_scan_backend(tmp_path):
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    (tmp_path / "relu.onnx").write_bytes(model.SerializeToString())
    s = OnnxRuntimeSession(tmp_path / "relu.onnx", device="cpu")
    assert s.scan is None
    assert ort_scan.graph_uses_scan(tmp_path / "relu.onnx") is False


def test_scan_backend_names_what_serves():
    reason = ort_scan.unavailable_reason()
    text = scan_backend()
    if reason is None:
        assert text.startswith("native C kernel") and str(ort_scan.library_path()) in text
    else:
        assert text.startswith("portable") and reason in text
