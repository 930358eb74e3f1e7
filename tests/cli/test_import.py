"""`prvr import` through typer's CliRunner, then `prvr export` of the imported run.

Oracle: the import API's own tests (tests/export/test_official_import.py) prove the weights arrive intact;
here the CLI must write the same run folder, report through --json / stderr, map errors to exit codes,
and produce a run that `prvr export` turns into a bundle whose ONNX graphs pass the parity check.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from prvr_cli.app import app  # noqa: E402
from prvr_export.models.registry import create_model  # noqa: E402
from prvr_export.official import to_official  # noqa: E402
from prvr_export.train.evaluate import load_checkpoint  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
runner = CliRunner()


def _official_amdnet(path, seed=0, **extra):
    """An AMDNet demo model saved in the official layout (plain-dict config); returns the model."""
    torch.manual_seed(seed)
    model = create_model("amdnet", "demo").eval()
    payload = {
        "config": {"hidden_size": 128, "n_heads": 4, "q_feat_size": 384, "num_workers": 8},
        "epoch": 11,
        "state_dict": to_official("amdnet", model.state_dict(), model.config),
        **extra,
    }
    torch.save(payload, path)
    return model


def _import(*args):
    return runner.invoke(app, ["import", *map(str, args)])


def test_import_json_then_export(tmp_path):
    model = _official_amdnet(tmp_path / "amdnet.ckpt")
    run = tmp_path / "runs" / "amdnet-official"
    result = _import("--model", "amdnet", "--official", tmp_path / "amdnet.ckpt", "--dataset", "demo",
                     "--out", run, "--config", "drop=0.3", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == "amdnet" and summary["epoch"] == 11 and summary["layout"] == "wrapped"
    assert summary["config"]["drop"] == 0.3  # --config wins over the file
    assert "imported amdnet" in result.stderr
    meta = json.loads((run / "config.json").read_text())
    assert meta["model_name"] == "amdnet" and meta["dataset"] == "demo"
    assert meta["imported_from"]["sha256"] == summary["sha256"]
    loaded, _ = load_checkpoint(run)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, atol=0, rtol=0)

    bundle = tmp_path / "bundle"
    args = ["export", "--model", "amdnet", "--checkpoint", run, "--out", bundle, "--text-frontend", "none"]
    result = runner.invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)
    assert exported["dataset"] == "demo" and exported["parity"]  # a parity failure would have exited 4
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["checkpoint"]["path"].endswith("best.pt")


def test_import_refuses_a_malicious_pickle(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    _official_amdnet(tmp_path / "evil.ckpt", model_val=Evil())
    result = _import("--model", "amdnet", "--official", tmp_path / "evil.ckpt", "--dataset", "demo",
                     "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "refusing to load" in result.stderr and "system" in result.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_import_errors_exit_2(tmp_path):
    _official_amdnet(tmp_path / "a.ckpt")
    base = ["--official", tmp_path / "a.ckpt", "--dataset", "demo", "--out", tmp_path / "run"]
    wrong_model = _import("--model", "mamfusion", *base)
    assert wrong_model.exit_code == 2 and "--model" in wrong_model.stderr
    unknown = _import("--model", "gmmformer", *base)
    assert unknown.exit_code == 2 and "expected one of" in unknown.stderr
    bad_field = _import("--model", "amdnet", *base, "--config", "no_such_field=1")
    assert bad_field.exit_code == 2 and "no_such_field" in bad_field.stderr
    no_dataset = _import("--model", "amdnet", "--official", tmp_path / "a.ckpt", "--dataset", "msrvtt",
                         "--out", tmp_path / "run")
    assert no_dataset.exit_code == 2 and "amdnet-msrvtt" in no_dataset.stderr
    missing = _import("--model", "amdnet", "--official", tmp_path / "nope.ckpt", "--dataset", "demo",
                      "--out", tmp_path / "run")
    assert missing.exit_code == 2 and "file not found" in missing.stderr
    assert not (tmp_path / "run").exists()
    assert _import("--model", "amdnet", *base).exit_code == 0
    again = _import("--model", "amdnet", *base)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert _import("--model", "amdnet", *base, "--overwrite").exit_code == 0
