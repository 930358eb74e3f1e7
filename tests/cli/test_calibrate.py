"""`prvr calibrate` and `--precision` on encode / index build / search / eval, through typer's CliRunner.

Oracle: the Python API on the same inputs (``calibrate_bundle``'s files read back, ``Retriever`` with the
same precision, ``evaluate_bundle``); exit codes from ``prvr_sdk.errors``. One tiny random-weight AMDNet
bundle (sentence queries, hdf5 videos) keeps this file fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
h5py = pytest.importorskip("h5py")

from prvr_cli.app import app  # noqa: E402
from prvr_export.models.registry import create_model  # noqa: E402
from prvr_export.onnx_export.bundle import export_bundle  # noqa: E402
from prvr_sdk import Retriever, VideoEmbeddings  # noqa: E402
from prvr_sdk.bundle import read_manifest, write_manifest  # noqa: E402
from prvr_sdk.evaluation import evaluate_bundle  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
runner = CliRunner()


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("cli-calibrate")
    torch.manual_seed(0)
    model = create_model("amdnet", "demo", tiny("amdnet")).eval()
    base = root / "base"
    export_bundle(model, model.config, base, model_name="amdnet", dataset="demo", text_frontend=None,
                  validate=False)  # torch parity is tested elsewhere
    rng = np.random.default_rng(0)
    videos = {f"v{i:02d}": rng.standard_normal((int(rng.integers(3, 40)), 128)).astype(np.float32)
              for i in range(32)}
    np.savez(root / "videos.npz", **videos)
    np.save(root / "queries.npy", rng.standard_normal((32, 384)).astype(np.float32))
    np.save(root / "q.npy", rng.standard_normal(384).astype(np.float32))
    data = root / "eval" / "demo"  # a PRVR collection: hdf5 frames, sentence features, test captions
    (data / "FeatureData").mkdir(parents=True)
    (data / "TextData").mkdir()
    with h5py.File(data / "FeatureData" / "demo_frames_vid_features.hdf5", "w") as f:
        for vid, frames in videos.items():
            f.create_dataset(vid, data=frames)
    with h5py.File(data / "TextData" / "minilm_sent_demo_query_feat.hdf5", "w") as f:
        for vid in videos:
            f.create_dataset(f"{vid}#enc#0", data=rng.standard_normal(384).astype(np.float32))
    (data / "TextData" / "demotest.caption.txt").write_text("".join(f"{v}#enc#0 a caption\n" for v in videos))
    return root, base, videos


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _calibrated(setup, tmp_path, *extra) -> Path:
    root, base, _ = setup
    bundle = tmp_path / "bundle"
    shutil.copytree(base, bundle)
    result = _run("calibrate", bundle, "--data", root / "videos.npz", "--queries", root / "queries.npy",
                  "--max-samples", 24, *extra)
    assert result.exit_code == 0, result.output
    return bundle


def test_calibrate_then_every_command_runs_the_int8_graphs(setup, tmp_path):
    root, _, videos = setup
    bundle = tmp_path / "bundle"
    shutil.copytree(setup[1], bundle)
    result = _run("calibrate", bundle, "--data", root / "videos.npz", "--queries", root / "queries.npy",
                  "--max-samples", 24, "--precision", "int8", "--activations", "uint8", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["precisions"]) == {"int8"} and report["activations"] == "uint8"
    ids = "\n".join(report["calibration_ids"]["video_encoder"]).encode()
    assert report["calibration"]["video_encoder"] == {
        "source": str(root / "videos.npz"), "kind": "videos", "samples": 24, "held_out": 8, "batches": 2,
        "ids_sha256": hashlib.sha256(ids).hexdigest()}
    manifest = read_manifest(bundle)
    assert manifest["manifest_sha256"] == report["manifest_sha256"]
    assert {n for n, e in manifest["files"].items() if e.get("precision") == "int8"} == {
        "video_encoder.int8.onnx", "text_encoder.int8.onnx"}
    graph = onnx.load(str(bundle / "video_encoder.int8.onnx"))  # uint8 activations: asymmetric
    zero_points = {i.name: i for i in graph.graph.initializer if i.name.endswith("_zero_point")}
    activation_zp = [z for n, z in zero_points.items() if not n.startswith(("val_", "model."))]
    assert activation_zp and all(z.data_type == onnx.TensorProto.UINT8 for z in activation_zp)

    api = Retriever.from_bundle(bundle, device="cpu", precision="int8")
    assert _run("encode", "--bundle", bundle, "--features", root / "videos.npz", "--out", tmp_path / "e.npz",
                "--precision", "int8").exit_code == 0
    got, expected = VideoEmbeddings.load(tmp_path / "e.npz"), api.encode_video(videos)
    for vid in expected.ids:
        np.testing.assert_allclose(got.clips(vid), expected.clips(vid), atol=1e-6)
    assert got.bundle_sha256 == api.bundle_sha256 == manifest["embedding_space"]  # compatible: same space
    assert _run("index", "build", "--bundle", bundle, "--features", root / "videos.npz", "--out",
                tmp_path / "idx", "--precision", "int8").exit_code == 0
    out = _run("search", "--index", tmp_path / "idx", "--query-features", root / "q.npy", "--top-k", 3,
               "--precision", "int8", "--json")
    assert out.exit_code == 0, out.output
    hits = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    api.load_index(tmp_path / "idx")
    want = api.search(api.encode_text(np.load(root / "q.npy")), top_k=3)
    assert [h["video_id"] for h in hits] == [h.video_id for h in want]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in want], abs=1e-6)
    ev = _run("eval", "--bundle", bundle, "--data-root", root / "eval", "--precision", "int8", "--json")
    assert ev.exit_code == 0, ev.output
    result = json.loads(ev.stdout)
    oracle = evaluate_bundle(bundle, root / "eval", "test", device="cpu", precision="int8")
    assert result["precision"] == "int8"
    for key in ("R@1", "R@5", "R@10", "R@100", "SumR"):
        assert result[key] == pytest.approx(oracle[key])


def test_refusals_exit_codes_and_unchanged_bundle(setup, tmp_path):
    root, base, _ = setup
    before = snapshot(base)
    no_data = _run("calibrate", base, "--queries", root / "queries.npy")
    assert no_data.exit_code == 2 and "--data" in no_data.output
    np.savez(tmp_path / "wide.npz", a=np.ones((4, 100), np.float32), b=np.ones((4, 100), np.float32))
    wide = _run("calibrate", base, "--data", tmp_path / "wide.npz", "--queries", root / "queries.npy")
    assert wide.exit_code == 2 and "wide.npz" in wide.output and "Dv = 128" in wide.output
    gate = _run("calibrate", base, "--data", root / "videos.npz", "--queries", root / "queries.npy",
                "--max-samples", 24, "--eval-data", root / "eval", "--max-drop", -1)
    assert gate.exit_code == 4, gate.output
    assert "R@10 drop above --max-drop -1" in gate.output and "bundle is unchanged" in gate.output
    assert snapshot(base) == before
    missing = _run("search", "--index", tmp_path / "none", "--bundle", base, "--query-features",
                   root / "q.npy", "--precision", "int8")
    assert missing.exit_code == 5 and "prvr calibrate" in missing.output  # no int8 graphs in this bundle


def test_fp32_index_accepts_compatible_and_refuses_incompatible_precision(setup, tmp_path):
    root, _, _ = setup
    bundle = _calibrated(setup, tmp_path, "--precision", "int8")
    assert _run("index", "build", "--bundle", bundle, "--features", root / "videos.npz", "--out",
                tmp_path / "idx").exit_code == 0  # fp32
    search = ("search", "--index", tmp_path / "idx", "--query-features", root / "q.npy",
              "--precision", "int8")
    original = json.loads((bundle / "manifest.json").read_text())
    for compatible, code in ((True, 0), (False, 6)):
        manifest = json.loads(json.dumps(original))
        manifest["precisions"]["int8"]["compatible"] = compatible
        write_manifest(bundle, manifest)
        result = _run(*search)
        assert result.exit_code == code, result.output
    add = _run("index", "add", "--index", tmp_path / "idx", "--features", root / "videos.npz", "--upsert",
               "--precision", "int8")
    assert add.exit_code == 6, add.output  # still recorded incompatible: int8 videos stay out
