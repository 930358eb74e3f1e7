"""`--trusted-key` on the commands that open a bundle: a signed bundle serves, any other is refused (5).

Oracle: the signature check of ``prvr_sdk.bundle.load`` (tested in tests/sdk/test_signing.py); here the
CLI must pass the keys through on every path that opens a bundle, before any work is done.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("cryptography")

from prvr_cli.app import app  # noqa: E402
from prvr_export.models.registry import create_model  # noqa: E402
from prvr_export.onnx_export.bundle import export_bundle  # noqa: E402
from prvr_sdk.signing import generate_key  # noqa: E402

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    root = tmp_path_factory.mktemp("trusted")
    generate_key(root / "release", root / "release.pub")
    generate_key(root / "other", root / "other.pub")
    torch.manual_seed(0)
    model = create_model("amdnet", "demo").eval()
    export_bundle(model, model.config, root / "bundle", model_name="amdnet", dataset="demo",
                  text_frontend=None, sign_key=root / "release")
    export_bundle(model, model.config, root / "unsigned", model_name="amdnet", dataset="demo",
                  text_frontend=None)
    rng = np.random.default_rng(0)
    np.savez(root / "feats.npz", **{f"v{i}": rng.standard_normal((n, 128)).astype(np.float32)
                                    for i, n in enumerate([6, 20])})
    np.save(root / "q.npy", rng.standard_normal(384).astype(np.float32))
    return root


def test_encode_and_index_build_accept_only_trusted_bundles(signed):
    root = signed
    ok = invoke("encode", "--bundle", root / "bundle", "--features", root / "feats.npz", "--out",
                root / "e.npz", "--trusted-key", root / "other.pub", "--trusted-key", root / "release.pub")
    assert ok.exit_code == 0, ok.output
    wrong = invoke("encode", "--bundle", root / "bundle", "--features", root / "feats.npz", "--out",
                   root / "e2.npz", "--trusted-key", root / "other.pub")
    assert wrong.exit_code == 5 and "not trusted" in wrong.output.lower() and not (root / "e2.npz").exists()
    unsigned = invoke("index", "build", "--bundle", root / "unsigned", "--features", root / "feats.npz",
                      "--out", root / "idx-u", "--trusted-key", root / "release.pub")
    assert unsigned.exit_code == 5 and "sign" in unsigned.output and not (root / "idx-u").exists()
    built = invoke("index", "build", "--bundle", root / "bundle", "--features", root / "feats.npz", "--out",
                   root / "idx", "--trusted-key", root / "release.pub")
    assert built.exit_code == 0, built.output


def test_search_and_index_add_check_the_recorded_bundle(signed):
    root = signed
    if not (root / "idx").exists():
        pytest.skip("needs the index of the test above")
    hits = invoke("search", "--index", root / "idx", "--query-features", root / "q.npy", "--trusted-key",
                  root / "release.pub")
    assert hits.exit_code == 0 and '"video_id"' in hits.output, hits.output
    refused = invoke("search", "--index", root / "idx", "--query-features", root / "q.npy",
                     "--trusted-key", root / "other.pub")
    assert refused.exit_code == 5 and "video_id" not in refused.output
    add = invoke("index", "add", "--index", root / "idx", "--features", root / "feats.npz", "--upsert",
                 "--trusted-key", root / "other.pub")
    assert add.exit_code == 5
    assert invoke("search", "--index", root / "idx", "--query-features", root / "q.npy").exit_code == 0
