"""export_bundle / `prvr export`: every model exports, validates and scores like torch.

Oracles: the torch model itself (encoders and ``model.score``) on fresh inputs the exporter never saw.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from prvr_cli.app import app
from prvr_export.models.registry import create_model, list_models
from prvr_export.onnx_export.bundle import dummy_inputs, export_bundle
from prvr_sdk import bundle as sdk_bundle
from prvr_sdk import scoring
from prvr_sdk.errors import BundleError, ChecksumError, InvalidInputError, ParityError

ort = pytest.importorskip("onnxruntime")
logging.getLogger("torch.onnx").setLevel(logging.ERROR)


@pytest.fixture(scope="module", params=list_models())  # a registered model gets these tests for free
def exported(request, tmp_path_factory, tiny):
    name = request.param
    torch.manual_seed(0)
    model = create_model(name, "demo", tiny(name)).eval()
    out = tmp_path_factory.mktemp("bundles") / name
    manifest = export_bundle(model, model.config, out, model_name=name, dataset="demo", text_frontend=None)
    return name, model, out, manifest


def _run(path, names, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {n: inputs[n].numpy() for n in names})


def test_bundle_is_sealed_and_records_parity(exported):
    name, model, out, manifest = exported
    loaded = sdk_bundle.load(out)  # verifies sha256 of both graphs and the manifest digest
    assert loaded.model_name == name
    assert set(loaded.files) == {"video_encoder.onnx", "text_encoder.onnx"}
    for graph in ("video_encoder", "text_encoder"):
        diffs = loaded.manifest["parity"][graph]["max_abs_diff"]
        assert diffs and all(0.0 <= d <= 1e-4 for d in diffs.values())
        cases = loaded.manifest["parity"][graph]["cases"]
        timed = [k for k in ("frames", "patches", "query_mask") if k in cases[0]]
        if timed:  # a time axis exists (amdnet's video graph and sentence text graphs have none)
            lengths = {c[timed[0]][1] for c in cases}
            assert 1 in lengths and len(lengths) >= 2  # L = 1 and the maximum were validated


def test_onnx_scores_equal_model_score(exported):
    name, model, out, manifest = exported
    gen = torch.Generator().manual_seed(123)
    spec = model.serving_spec()
    videos = dummy_inputs(spec.video, {"batch": 4, "frames": 5}, gen)
    texts = dummy_inputs(spec.text, {"batch": 5, "tokens": 6}, gen)
    video_out = _run(out / "video_encoder.onnx", manifest["video_input"]["inputs"], videos)
    (text_emb,) = _run(out / "text_encoder.onnx", manifest["text_input"]["inputs"], texts)
    named = dict(zip(manifest["outputs"]["video_encoder"], video_out, strict=True))
    with torch.no_grad():
        video = model.encode_video(**videos)
        expected, _ = model.score(model.encode_text(*texts.values()), video)
    rule = manifest["scoring"]
    assert manifest["serving"] == spec.to_dict() and rule == spec.scoring
    clip = named[spec.clip_output] if spec.clip_output else None
    frame = scoring.cosine(text_emb, named[spec.video_output]) if spec.video_output else None
    if clip is None:
        got = frame
    else:
        clip_scores, _ = scoring.max_over_clips(text_emb, clip)
        got = scoring.weighted_score(
            clip_scores, frame, rule.get("clip_weight", 1.0), rule.get("frame_weight", 0.0)
        )
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    # Outputs are unit vectors, so the runtime's plain dot product is the model's cosine.
    assert manifest["normalized"] is True
    for arr in (text_emb, *video_out):
        np.testing.assert_allclose(np.linalg.norm(arr, axis=-1), 1.0, atol=1e-4)
    if rule["kind"] == "max_clip":
        np.testing.assert_allclose(
            (text_emb @ clip.transpose(0, 2, 1)).max(-1).T, expected.numpy(), atol=1e-5
        )


def test_graphs_have_no_aten_fallback(exported):
    import onnx

    _, _, out, _ = exported
    for file in ("video_encoder.onnx", "text_encoder.onnx"):
        model = onnx.load(out / file)
        assert not [n for n in model.graph.node if "aten" in n.domain.lower()]


def test_parity_failure_raises_and_leaves_nothing(tmp_path):
    model = create_model("amdnet", "demo").eval()
    out = tmp_path / "bundle"
    with pytest.raises(ParityError, match=r"max abs diff[\s\S]*clip_emb"):
        export_bundle(
            model, model.config, out, model_name="amdnet", dataset="demo", atol=0.0, text_frontend=None
        )
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # the temporary directory is gone too


def test_cli_without_runs_says_how_to_train(tmp_path):
    result = CliRunner().invoke(app, ["export", "--model", "amdnet", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "prvr train --model amdnet" in result.output


def test_cli_rejects_unknown_model(tmp_path):
    result = CliRunner().invoke(app, ["export", "--model", "clip4clip", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "expected one of" in result.output


def test_manifest_json_is_plain(exported):
    _, _, out, _ = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp32" and manifest["opset"] == 18
    assert manifest["text_input"]["frontend"] is None and "minilm" in manifest["text_input"]["expects"]


# ---------------------------------------------------------------- --out safety, signing, verify pass-through
def _snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def _old_bundle(path):
    """A sealed bundle as an earlier export left it (tiny fake graphs: only the seal matters here)."""
    path.mkdir(parents=True)
    for name in ("video_encoder.onnx", "text_encoder.onnx"):
        (path / name).write_bytes(b"\x08\x08old " + name.encode())
    files = {"video_encoder.onnx": {"role": "video_encoder"}, "text_encoder.onnx": {"role": "text_encoder"}}
    sdk_bundle.write_manifest(path, {"model": {"name": "old"}, "files": files})
    return path


def test_existing_dir_is_refused_without_overwrite(tmp_path):
    model = create_model("amdnet", "demo").eval()
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    (out / "data.csv").write_text("1,2,3\n")
    before = _snapshot(out)
    with pytest.raises(InvalidInputError, match="--overwrite"):
        export_bundle(model, model.config, out, model_name="amdnet", dataset="demo", text_frontend=None)
    assert _snapshot(out) == before


def test_overwrite_only_replaces_a_prvr_bundle(tmp_path):
    model = create_model("amdnet", "demo").eval()
    out = tmp_path / "folder"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format_version": 1, "files": {}}))
    before = _snapshot(out)
    with pytest.raises(InvalidInputError, match="not a prvr bundle"):
        export_bundle(model, model.config, out, model_name="amdnet", dataset="demo", text_frontend=None,
                      overwrite=True)  # fmt: skip
    assert _snapshot(out) == before


def test_failed_export_leaves_the_old_bundle_byte_identical(tmp_path):
    model = create_model("amdnet", "demo").eval()
    out = _old_bundle(tmp_path / "bundle")
    before = _snapshot(out)
    with pytest.raises(ParityError):
        export_bundle(model, model.config, out, model_name="amdnet", dataset="demo", atol=0.0,
                      text_frontend=None, overwrite=True)  # fmt: skip
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # the temporary directory is gone


def test_swap_restores_the_old_bundle_when_the_new_one_cannot_move_in(tmp_path, monkeypatch):
    from prvr_export.onnx_export import bundle as export_module
    from prvr_sdk import fsutil

    out = _old_bundle(tmp_path / "bundle")
    new = _old_bundle(tmp_path / ".bundle.tmp-x")
    before = _snapshot(out)
    real_rename = os.rename

    def rename(src, dst):
        if str(src) == str(new):  # the second rename of the swap fails (disk full, EXDEV, ...)
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(fsutil.os, "rename", rename)
    with pytest.raises(OSError, match="No space"):
        export_module.swap_into_place(new, out)
    monkeypatch.undo()
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.tmp-x", "bundle"]  # no aside dir left


def test_retriever_passes_verify_and_trusted_keys_through(exported, tmp_path):
    from prvr_sdk import Retriever
    from prvr_sdk.signing import generate_key, sign_manifest

    name, _, out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    generate_key(tmp_path / "key", tmp_path / "key.pub")
    generate_key(tmp_path / "other", tmp_path / "other.pub")
    with pytest.raises(BundleError, match="not signed"):
        Retriever.from_bundle(copy, backend="onnxruntime", device="cpu", trusted_keys=[tmp_path / "key.pub"])
    sign_manifest(copy, tmp_path / "key")
    r = Retriever.from_bundle(copy, backend="onnxruntime", device="cpu", trusted_keys=[tmp_path / "key.pub"])
    assert r.model_name == name
    other = [tmp_path / "other.pub"]
    with pytest.raises(BundleError, match="not trusted"):
        Retriever.from_bundle(copy, backend="onnxruntime", device="cpu", trusted_keys=other)
    graph = copy / "text_encoder.onnx"
    graph.write_bytes(graph.read_bytes()[:-1])
    with pytest.raises(ChecksumError, match="truncated"):  # verify=False still checks sizes
        Retriever.from_bundle(copy, backend="onnxruntime", device="cpu", verify=False)


def test_fps_with_timestamps_warns_that_fps_is_ignored(exported, caplog):
    from prvr_sdk import Retriever

    _, _, out, _ = exported
    r = Retriever.from_bundle(out, backend="onnxruntime", device="cpu")
    spec = r.video_spec
    shape = (spec.feature_dim,) if spec.patches is None else (spec.patches, spec.feature_dim)
    frames = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    ts = np.array([0.0, 0.5, 1.0, 1.5])
    with caplog.at_level(logging.WARNING, logger="prvr_sdk"):
        with_fps = r.encode_video(frames, fps=10.0, timestamps=ts, show_progress=False)
    assert "fps is ignored" in caplog.text
    without = r.encode_video(frames, timestamps=ts, show_progress=False)
    np.testing.assert_array_equal(with_fps.spans, without.spans)
