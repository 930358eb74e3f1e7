"""`prvr export --out DIR` never destroys a directory it should not, and `prvr keys` makes signing keys.

Oracles: the directory tree on disk (names, bytes and mtimes before/after), the exit code contract
(2 = invalid input), and `prvr_sdk.bundle.load` with trusted keys on what export wrote.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prvr_cli.app import app
from prvr_sdk import bundle as sdk_bundle
from prvr_sdk.errors import BundleError

runner = CliRunner()


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: its bytes and mtime (ns)."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny, untrained AMDNet checkpoint in a run directory, as `prvr train` writes it."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import torch

    from prvr_export.models.registry import config_to_dict, create_model
    from prvr_export.train.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    torch.manual_seed(0)
    model = create_model("amdnet", "demo").eval()
    run = tmp_path_factory.mktemp("runs") / "amdnet-demo"
    run.mkdir()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": "amdnet",
        "dataset": "demo",
        "config": config_to_dict(model.config),
        "model": model.state_dict(),
    }
    save_checkpoint(run / "best.pt", payload)
    (run / "config.json").write_text(json.dumps({"model_name": "amdnet", "dataset": "demo"}))
    return run


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def _export(run_dir: Path, out: Path, *extra: str):
    args = ["export", "--model", "amdnet", "--checkpoint", str(run_dir / "best.pt"), "--out", str(out),
            "--no-validate", "--text-frontend", "none", *extra]  # fmt: skip
    return runner.invoke(app, args)


def _fake_bundle(path: Path) -> Path:
    """A small but valid sealed bundle (what an earlier export left there)."""
    path.mkdir(parents=True)
    (path / "video_encoder.onnx").write_bytes(b"\x08\x08old video graph")
    (path / "text_encoder.onnx").write_bytes(b"\x08\x08old text graph")
    sdk_bundle.write_manifest(path, {"model": {"name": "amdnet"}, "files": {
        "video_encoder.onnx": {"role": "video_encoder"}, "text_encoder.onnx": {"role": "text_encoder"}}})
    return path


def test_existing_dir_with_a_manifest_is_refused_without_overwrite(run_dir, tmp_path):
    """Today's bug: any folder holding a manifest.json was deleted without --overwrite (exit 0)."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "manifest.json").write_text('{"my": "own manifest"}')
    (out / "notes.txt").write_text("precious")
    before = snapshot(out)
    result = _export(run_dir, out)
    assert result.exit_code == 2, result.output
    assert "--overwrite" in flat(result.output)
    assert snapshot(out) == before


def test_overwrite_refuses_a_folder_that_is_not_a_bundle(run_dir, tmp_path):
    """Even --overwrite leaves a project folder, or an index version directory, untouched (exit 2)."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('hi')\n")
    index_version = tmp_path / "index" / "v000001"
    index_version.mkdir(parents=True)
    (index_version / "manifest.json").write_text(json.dumps({"kind": "prvr-index", "version": 1}))
    (index_version / "vectors.npy").write_bytes(b"\x93NUMPY fake")
    for out in (project, index_version):
        before = snapshot(out)
        result = _export(run_dir, out, "--overwrite")
        assert result.exit_code == 2, result.output
        assert "not a prvr bundle" in flat(result.output)
        assert snapshot(out) == before


def test_overwrite_replaces_a_bundle_and_signs_it(run_dir, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    gen = runner.invoke(app, ["keys", "generate", str(keys / "release"), "--json"])
    assert gen.exit_code == 0, gen.output
    info = json.loads(gen.stdout)
    assert Path(info["private_key"]) == keys / "release" and Path(info["public_key"]) == keys / "release.pub"
    assert stat.S_IMODE((keys / "release").stat().st_mode) == 0o600

    out = _fake_bundle(tmp_path / "bundle")
    result = _export(run_dir, out, "--overwrite", "--sign-key", str(keys / "release"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["signed"] is True
    loaded = sdk_bundle.load(out, trusted_keys=[keys / "release.pub"])
    assert loaded.model_name == "amdnet" and loaded.manifest["opset"] == 18  # the new bundle, not the fake
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp/aside dirs left
    other = runner.invoke(app, ["keys", "generate", str(keys / "other")])
    assert other.exit_code == 0, other.output
    with pytest.raises(BundleError, match="not trusted"):
        sdk_bundle.load(out, trusted_keys=[keys / "other.pub"])


def test_keys_generate_never_overwrites(tmp_path):
    pytest.importorskip("cryptography")
    (tmp_path / "k.pub").write_text("someone's key")
    result = runner.invoke(app, ["keys", "generate", str(tmp_path / "k")])
    assert result.exit_code == 2 and "already exists" in flat(result.output)
    assert (tmp_path / "k.pub").read_text() == "someone's key" and not (tmp_path / "k").exists()
