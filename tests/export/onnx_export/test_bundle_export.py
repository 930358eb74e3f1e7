"""export_bundle / `prvr export`: every model exports, validates and scores like torch.

Oracles: the torch model itself (encoders and ``model.score``) on fresh inputs the exporter never saw.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from prvr_cli.app import app
from prvr_export.models.registry import create_model
from prvr_export.onnx_export.bundle import _text_inputs, _video_inputs, export_bundle
from prvr_sdk import bundle as sdk_bundle
from prvr_sdk import scoring
from prvr_sdk.errors import ParityError

ort = pytest.importorskip("onnxruntime")
logging.getLogger("torch.onnx").setLevel(logging.ERROR)

# Tiny overrides keep the three exports at a few seconds each.
TINY = {"mamfusion": {"max_ctx_l": 32}, "amdnet": {}, "muse": {}}


@pytest.fixture(scope="module", params=sorted(TINY))
def exported(request, tmp_path_factory):
    name = request.param
    torch.manual_seed(0)
    model = create_model(name, "demo", TINY[name]).eval()
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
    cfg = model.config
    videos = _video_inputs(model, cfg, 4, 7 if name != "muse" else 5, gen)
    texts = _text_inputs(cfg, 5, 6, gen)
    video_out = _run(out / "video_encoder.onnx", manifest["video_input"]["inputs"], videos)
    (text_emb,) = _run(out / "text_encoder.onnx", manifest["text_input"]["inputs"], texts)
    named = dict(zip(manifest["outputs"]["video_encoder"], video_out, strict=True))
    with torch.no_grad():
        video = model.encode_video(**videos)
        expected, _ = model.score(model.encode_text(*texts.values()), video)
    rule = manifest["scoring"]
    if rule["kind"] == "video":
        got = scoring.cosine(text_emb, named["video_emb"])
    else:
        clip_scores, _ = scoring.max_over_clips(text_emb, named["clip_emb"])
        frame = scoring.cosine(text_emb, named["video_emb"]) if rule["kind"] == "weighted" else None
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
            (text_emb @ named["clip_emb"].transpose(0, 2, 1)).max(-1).T, expected.numpy(), atol=1e-5
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
