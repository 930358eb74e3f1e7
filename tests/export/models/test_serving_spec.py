"""Every registered model, in every one of its configs, declares a serving spec its encoders keep.

Oracle: the model's own forward pass. For each ``list_configs()`` entry (the paper-size TVR, ActivityNet,
Charades, MSR-VTT configs included) the spec's declared inputs feed ``encode_video`` / ``encode_text``, the
outputs it names are exactly what ``encode_video`` returns, embeddings have the declared ``dim``, clip
outputs have ``clip_count`` rows, anchors are ``[B, Nc, 2]`` fractions, and the scoring rule is one the
index can run. A new model gets these checks by being registered.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from prvr_export.models.registry import create_model, list_configs  # noqa: E402
from prvr_export.onnx_export.bundle import dummy_inputs  # noqa: E402
from prvr_sdk.index import ScoringRule  # noqa: E402
from prvr_sdk.serving import ServingSpec  # noqa: E402


@pytest.mark.parametrize("name", list_configs())
def test_spec_matches_the_forward_pass(name):
    model_name, dataset = name.split("-", 1)
    torch.manual_seed(0)
    model = create_model(model_name, dataset).eval()
    spec = model.serving_spec()
    assert ServingSpec.from_dict(spec.to_dict()) == spec  # survives the manifest round trip
    assert spec.video.input_names == tuple(model.video_inputs)
    ScoringRule.parse(spec.scoring)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = model.encode_video(**dummy_inputs(spec.video, {"batch": 2, "frames": 3}, gen))
        text = model.encode_text(*dummy_inputs(spec.text, {"batch": 3, "tokens": 4}, gen).values())
    assert tuple(out) == spec.video.outputs
    assert text.shape == (3, spec.dim)
    if spec.video_output is not None:
        assert out[spec.video_output].shape == (2, spec.dim)
    if spec.clip_output is not None:
        assert out[spec.clip_output].shape == (2, spec.clip_count, spec.dim)
    if spec.clip_time == "anchors":
        anchors = out[spec.anchor_output]
        assert anchors.shape == (2, spec.clip_count, 2) and ((anchors >= 0) & (anchors <= 1)).all()
    scores, best = model.score(text, out)
    assert scores.shape == (3, 2) and (best is None) == (spec.clip_output is None)
