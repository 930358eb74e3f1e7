"""``prvr_export.calibrate``: int8 / fp16 graphs for tiny AMDNet and MamFusion bundles, end to end.

Oracles: the report's cosines are recomputed here from the fp32 and reduced graphs through the public
``Retriever`` (another batching, another code path than the report's); its R@K from scores computed here
with numpy and ``prvr_sdk.metrics``; the graphs are inspected node by node with ``onnx``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
h5py = pytest.importorskip("h5py")

from prvr_export.calibrate import COMPATIBLE_COSINE, calibrate_bundle  # noqa: E402
from prvr_export.models.registry import create_model  # noqa: E402
from prvr_export.onnx_export.bundle import export_bundle  # noqa: E402
from prvr_sdk import Retriever  # noqa: E402
from prvr_sdk.bundle import load, read_manifest, write_manifest  # noqa: E402
from prvr_sdk.errors import IndexMismatchError, InvalidInputError, ParityError, ShapeMismatchError  # noqa: E402
from prvr_sdk.metrics import prvr_metrics  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
NUM_VIDEOS, NUM_QUERIES = 40, 40


def export_tiny(name: str, out: Path, tiny) -> Path:
    torch.manual_seed(0)
    model = create_model(name, "demo", tiny(name)).eval()
    export_bundle(model, model.config, out, model_name=name, dataset="demo", text_frontend=None,
                  validate=False)  # torch parity is tested elsewhere; here only the graphs matter
    return out


def write_data(root: Path, manifest: dict, seed: int = 0) -> tuple[Path, Path, dict, dict]:
    """Videos (``.npz``, varied lengths) and queries (sentence ``.npy`` or token ``.npz``)."""
    rng = np.random.default_rng(seed)
    dv, dq = manifest["video_input"]["feature_dim"], manifest["text_input"]["dim"]
    videos = {f"v{i:02d}": rng.standard_normal((int(rng.integers(3, 50)), dv)).astype(np.float32)
              for i in range(NUM_VIDEOS)}
    np.savez(root / "videos.npz", **videos)
    if manifest["text_input"]["kind"] == "tokens":
        queries = {f"q{i:02d}": rng.standard_normal((int(rng.integers(2, 12)), dq)).astype(np.float32)
                   for i in range(NUM_QUERIES)}
        np.savez(root / "queries.npz", **queries)
        return root / "videos.npz", root / "queries.npz", videos, queries
    batch = rng.standard_normal((NUM_QUERIES, dq)).astype(np.float32)
    np.save(root / "queries.npy", batch)
    return root / "videos.npz", root / "queries.npy", videos, {str(i): q for i, q in enumerate(batch)}


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("calibrate")
    out = {}
    for name in ("amdnet", "mamfusion"):
        bundle = export_tiny(name, root / f"{name}-base", tiny)
        data = root / f"{name}-data"
        data.mkdir()
        out[name] = (bundle, *write_data(data, read_manifest(bundle)))
    return out


@pytest.fixture(scope="module")
def calibrated(bundles, tmp_path_factory):
    """Each model calibrated once (int8 + fp16); tests read the result."""
    out = {}
    for name, (base, videos, queries, raw_v, raw_q) in bundles.items():
        bundle = tmp_path_factory.mktemp(name) / "bundle"
        shutil.copytree(base, bundle)
        report = calibrate_bundle(bundle, videos, queries, max_samples=24, show_progress=False)
        out[name] = (bundle, report, raw_v, raw_q)
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return np.einsum("ij,ij->i", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("name", ["amdnet", "mamfusion"])
def test_report_cosines_match_an_independent_computation(calibrated, name):
    bundle, report, raw_v, raw_q = calibrated[name]
    held_v = report["held_out_ids"]["video_encoder"]
    held_q = report["held_out_ids"]["text_encoder"]
    assert len(held_v) == 16 and len(held_q) == 16  # 40 samples, 24 for calibration, the rest held out
    assert not set(held_v) & set(report["calibration_ids"]["video_encoder"])
    fp32 = Retriever.from_bundle(bundle, device="cpu")
    videos = {vid: raw_v[vid] for vid in held_v}
    queries = [raw_q[q] for q in held_q]
    ref_v, ref_q = fp32.encode_video(videos, batch_size=3), fp32.encode_text(queries, batch_size=3)
    for precision in ("int8", "fp16"):
        entry = report["precisions"][precision]
        other = Retriever.from_bundle(bundle, device="cpu", precision=precision)
        got_v, got_q = other.encode_video(videos, batch_size=3), other.encode_text(queries, batch_size=3)
        expected = {"clip_emb": _cosines(ref_v.clip_emb, got_v.clip_emb)}
        if ref_v.video_emb is not None:
            expected["video_emb"] = _cosines(ref_v.video_emb, got_v.video_emb)
        text = _cosines(ref_q, got_q)
        for output, cos in expected.items():
            summary = entry["cosines"]["video_encoder"][output]
            assert summary["rows"] == cos.size
            assert summary["min"] == pytest.approx(cos.min(), abs=2e-4)
            assert summary["mean"] == pytest.approx(cos.mean(), abs=2e-5)
        assert entry["cosines"]["text_encoder"]["text_emb"]["min"] == pytest.approx(text.min(), abs=2e-4)
        worst = min(min(c.min() for c in expected.values()), text.min())
        assert entry["cosine_min"] == pytest.approx(worst, abs=2e-4)
        assert entry["compatible"] == (entry["cosine_min"] >= COMPATIBLE_COSINE)
        if precision == "fp16":
            assert worst > 0.999  # fp16 with float norms and scan: nearly exact
        else:
            assert 0.5 < worst < 1.0  # int8 changes the numbers, yet stays recognisably the same


@pytest.mark.parametrize("name", ["amdnet", "mamfusion"])
def test_graphs_keep_scan_and_norms_float_and_manifest_records_provenance(calibrated, bundles, name):
    bundle, report, _, _ = calibrated[name]
    manifest = load(bundle).manifest  # verify=True: every new file is sealed
    for precision in ("int8", "fp16"):
        for role in ("video_encoder", "text_encoder"):
            file = f"{role}.{precision}.onnx"
            assert manifest["files"][file]["role"] == role
            assert manifest["files"][file]["precision"] == precision
            assert manifest["files"][file]["format"] == "onnx"
        entry = manifest["precisions"][precision]
        assert entry["compatible"] == report["precisions"][precision]["compatible"]
        assert entry["calibration"]["video_encoder"]["source"] == str(bundles[name][1])
        assert entry["calibration"]["video_encoder"]["samples"] == 24
        assert entry["calibration"]["text_encoder"]["held_out"] == 16
    assert manifest["precisions"]["int8"]["method"] == "minmax"
    assert json.loads((bundle / "calibration.json").read_text())["precisions"].keys() == {"int8", "fp16"}
    assert manifest["files"]["calibration.json"]["role"] == "calibration_report"

    model = onnx.load(str(bundle / "video_encoder.int8.onnx"))
    producer = {out: node for node in model.graph.node for out in node.output}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") > 0 and ops.count("QuantizeLinear") > 0
    floats = [n for n in model.graph.node
              if n.op_type in ("SelectiveScan", "LayerNormalization", "ReduceL2", "Softmax")]
    for node in floats:  # no input of a float-kept node comes straight from a DequantizeLinear
        assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)
    scans = [n for n in model.graph.node if n.op_type == "SelectiveScan"]
    assert len(scans) == (4 if name == "mamfusion" else 0)
    assert all(n.domain == "prvr" for n in scans)
    if scans:  # the portable body travels with both variants
        assert [f.name for f in model.functions] == ["SelectiveScan"]
        half = onnx.load(str(bundle / "video_encoder.fp16.onnx"))
        assert [f.name for f in half.functions] == ["SelectiveScan"]
        typed = onnx.shape_inference.infer_shapes(half)
        types = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.input]}
        types.update({t.name: t.data_type for t in typed.graph.initializer})
        made = {out: node for node in half.graph.node for out in node.output}
        for node in (n for n in half.graph.node if n.op_type == "SelectiveScan"):  # fp32 in, fp32 out
            for name in node.input:
                assert types.get(name) == onnx.TensorProto.FLOAT or (
                    made[name].op_type == "Cast" and made[name].attribute[0].i == onnx.TensorProto.FLOAT)
            users = [n for n in half.graph.node if node.output[0] in n.input]
            assert [(n.op_type, n.attribute[0].i) for n in users] == [("Cast", onnx.TensorProto.FLOAT16)]


def test_refuses_without_data_and_mismatched_dims(bundles, tmp_path):
    base, videos, queries, _, _ = bundles["amdnet"]
    before = snapshot(base)
    with pytest.raises(InvalidInputError, match="--data"):
        calibrate_bundle(base, None, queries)
    with pytest.raises(InvalidInputError, match="--queries"):
        calibrate_bundle(base, videos, None)
    np.savez(tmp_path / "wide.npz", a=np.ones((5, 64), np.float32), b=np.ones((6, 64), np.float32))
    with pytest.raises(ShapeMismatchError, match=r"--data .*wide\.npz.*Dv = 128"):
        calibrate_bundle(base, tmp_path / "wide.npz", queries)
    np.save(tmp_path / "q.npy", np.ones((8, 300), np.float32))
    with pytest.raises(ShapeMismatchError, match=r"--queries .*q\.npy"):
        calibrate_bundle(base, videos, tmp_path / "q.npy")
    assert snapshot(base) == before
    assert not [p for p in base.parent.iterdir() if ".calibrate-" in p.name]  # no staging left


def write_collection(root: Path, videos: dict[str, np.ndarray], dq: int, seed: int = 1) -> Path:
    """A PRVR ``demo`` collection (hdf5 frames, sentence query features): two captions per video, whose
    features are a noisy copy of the video's mean frame projected to Dq (so retrieval is above chance)."""
    rng = np.random.default_rng(seed)
    (root / "demo" / "FeatureData").mkdir(parents=True)
    (root / "demo" / "TextData").mkdir()
    with h5py.File(root / "demo" / "FeatureData" / "demo_frames_vid_features.hdf5", "w") as f:
        for vid, frames in videos.items():
            f.create_dataset(vid, data=frames)
    lines = []
    with h5py.File(root / "demo" / "TextData" / "minilm_sent_demo_query_feat.hdf5", "w") as f:
        for vid in videos:
            for k in range(2):
                cap = f"{vid}#enc#{k}"
                f.create_dataset(cap, data=rng.standard_normal(dq).astype(np.float32))
                lines.append(f"{cap} caption {k} of {vid}")
    (root / "demo" / "TextData" / "demotest.caption.txt").write_text("\n".join(lines) + "\n")
    return root


def test_eval_report_and_gate(bundles, tmp_path):
    base, videos, queries, raw_v, _ = bundles["amdnet"]
    root = write_collection(tmp_path / "eval", raw_v, 384)
    bundle = tmp_path / "bundle"
    shutil.copytree(base, bundle)
    before = snapshot(bundle)
    with pytest.raises(ParityError, match="R@10 drop above --max-drop -1"):
        calibrate_bundle(bundle, videos, queries, max_samples=24, eval_data=root, max_drop=-1.0,
                         show_progress=False)
    assert snapshot(bundle) == before  # byte for byte
    assert not [p for p in tmp_path.iterdir() if ".calibrate-" in p.name]
    report = calibrate_bundle(bundle, videos, queries, max_samples=24, eval_data=root, max_drop=100.0,
                              precisions=["int8"], show_progress=False)
    metrics = report["eval"]["metrics"]
    assert set(metrics) == {"fp32", "int8"}
    text = root / "demo" / "TextData"
    with h5py.File(text / "minilm_sent_demo_query_feat.hdf5") as f:
        caps = [line.split()[0] for line in (text / "demotest.caption.txt").read_text().splitlines()]
        feats = np.stack([f[c][()] for c in caps])
    ids = sorted(raw_v)
    gt = np.array([ids.index(c.split("#")[0]) for c in caps])
    for precision in ("fp32", "int8"):
        r = Retriever.from_bundle(bundle, device="cpu", precision=precision)
        emb = r.encode_video({v: raw_v[v] for v in ids})
        clips = emb.clip_emb.reshape(len(ids), -1, emb.dim)
        scores = np.einsum("qd,vcd->qvc", r.encode_text(feats), clips).max(axis=2)  # AMDNet: max over clips
        expected = prvr_metrics(scores, gt)
        for key in ("R@1", "R@5", "R@10", "R@100", "SumR"):
            assert metrics[precision][key] == pytest.approx(expected[key], abs=1e-6)
    drop = metrics["fp32"]["R@10"] - metrics["int8"]["R@10"]
    assert report["eval"]["r10_drop"]["int8"] == pytest.approx(drop)
    assert read_manifest(bundle)["precisions"]["int8"]["eval"]["R@10"] == metrics["int8"]["R@10"]
    calibrated = snapshot(bundle)  # a rejected re-calibration must not write through to the old int8 files
    with pytest.raises(ParityError):
        calibrate_bundle(bundle, videos, queries, max_samples=20, eval_data=root, max_drop=-1.0,
                         precisions=["int8"], show_progress=False)
    assert snapshot(bundle) == calibrated


def test_precision_compatibility_binds_indexes(calibrated, tmp_path):
    bundle, report, raw_v, raw_q = calibrated["amdnet"]
    fp32 = Retriever.from_bundle(bundle, device="cpu")
    fp32.add(fp32.encode_video(raw_v))
    fp32.index.save(tmp_path / "index")
    space = read_manifest(bundle)["embedding_space"]
    assert fp32.bundle_sha256 == space
    query = next(iter(raw_q.values()))
    for precision, compatible in (("int8", True), ("int8", False)):
        manifest_path = bundle / "manifest.json"
        original = manifest_path.read_bytes()
        manifest = json.loads(original)  # the same graphs, recorded (not) interchangeable
        manifest["precisions"][precision]["compatible"] = compatible
        write_manifest(bundle, manifest)
        try:
            other = Retriever.from_bundle(bundle, device="cpu", precision=precision)
            if compatible:
                assert other.bundle_sha256 == space
                other.load_index(tmp_path / "index")
                hits = other.search(other.encode_text(query), top_k=3)
                expected = fp32.search(fp32.encode_text(query), top_k=3)
                assert len(hits) == 3
                assert hits[0].score == pytest.approx(expected[0].score, abs=0.05)
            else:
                assert other.bundle_sha256 == hashlib.sha256(f"{space}:int8".encode()).hexdigest()
                with pytest.raises(IndexMismatchError):
                    other.load_index(tmp_path / "index")
                with pytest.raises(IndexMismatchError):
                    fp32.add(other.encode_video({"new": raw_v["v00"]}))
        finally:
            manifest_path.write_bytes(original)
    assert report["precisions"]["int8"]["compatible"] in (True, False)


def test_method_and_activations_are_recorded_and_used(bundles, tmp_path):
    base, videos, queries, _, _ = bundles["amdnet"]
    bundle = tmp_path / "bundle"
    shutil.copytree(base, bundle)
    report = calibrate_bundle(bundle, videos, queries, max_samples=24, method="percentile",
                              activations="uint8", precisions=["int8"], show_progress=False)
    entry = read_manifest(bundle)["precisions"]["int8"]
    assert (entry["method"], entry["activations"]) == ("percentile", "uint8")
    assert report["precisions"]["int8"]["graphs"]["video_encoder"]["method"] == "percentile"
    graph = onnx.load(str(bundle / "video_encoder.int8.onnx"))
    quantize = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    zero_points = {t.name: t for t in graph.graph.initializer}
    assert quantize and all(zero_points[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in quantize)
    with pytest.raises(InvalidInputError, match="--method 'kl'"):
        calibrate_bundle(bundle, videos, queries, method="kl")
