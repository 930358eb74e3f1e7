"""`prvr index add | verify` on busy, crafted and damaged indexes: clear exits, no wasted work.

Oracle: what the index package itself reports (its lock owner, the recorded checksums); the CLI must
turn each case into the documented exit code before doing any encoding.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from prvr_cli.app import app  # noqa: E402
from prvr_export.models.registry import create_model  # noqa: E402
from prvr_export.onnx_export.bundle import export_bundle  # noqa: E402
from prvr_sdk import Retriever  # noqa: E402
from prvr_sdk.index import ExactIndex  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("index-safety")
    torch.manual_seed(0)
    model = create_model("amdnet", "demo").eval()
    export_bundle(model, model.config, root / "bundle", model_name="amdnet", dataset="demo",
                  text_frontend=None)
    rng = np.random.default_rng(1)
    videos = {f"vid{i}": rng.standard_normal((n, 128)).astype(np.float32) for i, n in enumerate([9, 30, 4])}
    np.savez(root / "feats.npz", **videos)
    result = runner.invoke(app, ["index", "build", "--bundle", str(root / "bundle"), "--features",
                                 str(root / "feats.npz"), "--out", str(root / "idx")])
    assert result.exit_code == 0, result.output
    return root


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_add_to_a_busy_index_fails_before_encoding(made, monkeypatch):
    calls = []
    real = Retriever.encode_video
    monkeypatch.setattr(
        Retriever, "encode_video", lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    )
    holder = ExactIndex.load(made / "idx")
    holder.lock()  # another writer is at work
    try:
        result = invoke("index", "add", "--index", made / "idx", "--features", made / "feats.npz", "--upsert")
    finally:
        holder.close()
    assert result.exit_code == 7, result.output
    assert "LOCK" in result.output and calls == []  # told at once, nothing encoded
    assert invoke("index", "add", "--index", made / "idx", "--features", made / "feats.npz",
                  "--upsert").exit_code == 0
    assert calls  # the same command encodes once the index is free


def test_existing_ids_name_the_upsert_flag(made):
    result = invoke("index", "add", "--index", made / "idx", "--features", made / "feats.npz")
    assert result.exit_code == 2 and "--upsert" in result.output and "upsert()" not in result.output


def test_embeddings_without_a_bundle_hash_are_refused(made, tmp_path):
    r = Retriever.from_bundle(made / "bundle")
    emb = r.encode_video({"new0": np.ones((5, 128), np.float32)})
    anonymous = dataclasses.replace(emb, bundle_sha256=None)
    anonymous.save(tmp_path / "anon.npz")
    result = invoke("index", "add", "--index", made / "idx", "--embeddings", tmp_path / "anon.npz")
    assert result.exit_code == 6, result.output
    assert "no bundle hash" in result.output and "new0" not in ExactIndex.load(made / "idx")


def test_verify_passes_then_names_the_corrupted_file(made, tmp_path):
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(made / "idx", copy)
    result = invoke("index", "verify", "--index", copy, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["videos"] == 3
    version = (copy / "CURRENT").read_text().strip()
    clips = next((copy / version).glob("seg-*/clips.f16.npy"))
    data = bytearray(clips.read_bytes())
    data[len(data) // 2] ^= 0x01
    clips.write_bytes(bytes(data))
    assert invoke("index", "info", "--index", copy).exit_code == 0  # the cheap checks pass
    result = invoke("index", "verify", "--index", copy)
    assert result.exit_code == 5 and "clips.f16.npy" in result.output and "sha256" in result.output
    assert "Traceback" not in result.output
