"""The runtime on a serving-only install: committed golden bundles against the torch outputs stored with them.

``tests/golden/<model>/`` holds a tiny bundle per registered model and ``golden.npz`` with the torch model's
embeddings, scores and winning clips on fixed inputs (``tests/golden/make_golden.py`` wrote both; the oracle
is that torch run). Nothing here imports torch, and one test runs the rest with torch blocked.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from prvr_sdk import Retriever  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
MODELS = sorted(p.name for p in GOLDEN.iterdir() if (p / "golden.npz").is_file())


def load(name: str):
    data = np.load(GOLDEN / name / "golden.npz")
    def numbered(kind: str) -> list[np.ndarray]:
        count = sum(bool(re.fullmatch(rf"{kind}_\d+", k)) for k in data.files)
        return [data[f"{kind}_{i}"] for i in range(count)]

    videos, queries = numbered("video"), numbered("query")
    return Retriever.from_bundle(GOLDEN / name / "bundle", device="cpu"), data, videos, queries


def test_there_are_golden_bundles():
    assert MODELS, f"no golden bundles under {GOLDEN}: run python tests/golden/make_golden.py"


@pytest.mark.parametrize("name", MODELS)
def test_runtime_reproduces_the_torch_outputs(name):
    r, golden, videos, queries = load(name)
    spec = r.spec
    emb = r.encode_video(videos, fps=1.0, batch_size=3)  # batches mix lengths: padding must not leak
    text = r.encode_text(queries)
    np.testing.assert_allclose(text, golden["text_emb"], atol=1e-5)
    if spec.clip_output is not None:
        for i in range(len(videos)):
            np.testing.assert_allclose(emb.clips(emb.ids[i]), golden[spec.clip_output][i], atol=1e-5)
    if spec.video_output is not None:
        np.testing.assert_allclose(emb.video_emb, golden[spec.video_output], atol=1e-5)
    scores, best = r.score(text, emb)
    np.testing.assert_allclose(scores, golden["scores"], atol=1e-5)
    if "best" in golden.files:
        assert (best == golden["best"]).mean() > 0.95  # argmax may flip only on near-ties
    else:
        assert best is None


@pytest.mark.parametrize("name", MODELS)
def test_search_ranks_as_the_torch_scores_do(name, tmp_path):
    r, golden, videos, queries = load(name)
    r.add(r.encode_video(videos, fps=1.0, video_ids=[f"v{i}" for i in range(len(videos))]))
    r.index.save(tmp_path / "idx")
    again = Retriever.from_bundle(GOLDEN / name / "bundle", device="cpu", index=tmp_path / "idx")
    for q, expected in zip(again.encode_text(queries), golden["scores"], strict=True):
        hits = again.search(q, top_k=len(videos))
        got = {h.video_id: h.score for h in hits}
        np.testing.assert_allclose([got[f"v{i}"] for i in range(len(videos))], expected, atol=2e-3)  # fp16
        assert hits[0].video_id == f"v{int(np.argmax(expected))}" or np.sort(expected)[-1] - np.sort(
            expected
        )[-2] < 2e-3


_BLOCKED = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test ({name})")
sys.meta_path.insert(0, BlockTorch())
import pytest
code = pytest.main(["-q", "-p", "no:cacheprovider", "--import-mode=importlib", FILE, "-k", "not blocked"])
assert "torch" not in sys.modules
sys.exit(int(code))
"""


def test_golden_checks_pass_with_torch_blocked():
    code = f"FILE = {str(Path(__file__))!r}\n" + textwrap.dedent(_BLOCKED)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.split("\n")[-2]


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda m: m.pop("serving"), "no serving spec; export it again"),
        (lambda m: m["serving"].update(dim=None), "no embedding dim"),
        (lambda m: m["serving"].update(clip_output="nope"), "not a video output"),
        (lambda m: m["serving"].update(scoring={"kind": "best-guess"}), "scoring"),
    ],
)
def test_bundles_without_a_valid_serving_spec_are_refused(change, pattern, tmp_path):
    """A re-sealed manifest (valid checksums) whose spec is missing or wrong is a BundleError (exit 5)."""
    import json
    import shutil

    from prvr_sdk import bundle as bundle_io
    from prvr_sdk.errors import BundleError

    copy = tmp_path / "bundle"
    shutil.copytree(GOLDEN / MODELS[0] / "bundle", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    bundle_io.write_manifest(copy, manifest)
    with pytest.raises(BundleError, match=pattern):
        Retriever.from_bundle(copy, device="cpu")


def test_indexes_stay_bound_to_the_model_when_files_are_added_and_the_manifest_resealed(tmp_path):
    """``prvr build-engine`` / ``prvr calibrate`` add files and re-seal: the manifest digest changes, the
    embedding space (spec + input preparation + fp32 graphs) does not, so existing indexes still load."""
    import json
    import shutil

    from prvr_sdk import bundle as bundle_io
    from prvr_sdk.errors import IndexMismatchError

    name = MODELS[0]
    copy = tmp_path / "bundle"
    shutil.copytree(GOLDEN / name / "bundle", copy)
    r, _, videos, _ = load(name)
    r = Retriever.from_bundle(copy, device="cpu")
    before = r.manifest
    assert r.bundle_sha256 == before["embedding_space"] != before["manifest_sha256"]
    r.add(r.encode_video(videos, fps=1.0))
    r.index.save(tmp_path / "idx")
    (copy / "engines").mkdir()
    (copy / "engines" / "video_encoder.fp16.sm_90.plan").write_bytes(b"an engine")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["engines/video_encoder.fp16.sm_90.plan"] = {
        "role": "video_encoder", "format": "tensorrt", "precision": "fp16"}
    after = bundle_io.write_manifest(copy, manifest)
    assert after["manifest_sha256"] != before["manifest_sha256"]
    again = Retriever.from_bundle(copy, device="cpu", index=tmp_path / "idx")
    assert again.bundle_sha256 == r.bundle_sha256 and len(again.index) == len(videos)
    other = MODELS[1]
    with pytest.raises(IndexMismatchError):
        Retriever.from_bundle(GOLDEN / other / "bundle", device="cpu", index=tmp_path / "idx")
