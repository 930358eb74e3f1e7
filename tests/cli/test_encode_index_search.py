"""`prvr encode`, `prvr index build|add|info`, `prvr search` through typer's CliRunner.

Oracle: the Python API on the same inputs (``Retriever.encode_video`` / ``search``), whose own equality
with the torch model is tested in tests/retriever/. Bundles are random-weight demo models (fast to export).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
h5py = pytest.importorskip("h5py")

from prvr_cli.app import app  # noqa: E402
from prvr_export.models.registry import create_model  # noqa: E402
from prvr_export.onnx_export.bundle import export_bundle  # noqa: E402
from prvr_sdk import Retriever, VideoEmbeddings  # noqa: E402
from prvr_sdk.index import ExactIndex  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
runner = CliRunner()
LENGTHS = [12, 40, 5, 33, 70, 21]


def _bundle(out, seed=0):
    torch.manual_seed(seed)
    model = create_model("amdnet", "demo").eval()
    export_bundle(model, model.config, out, model_name="amdnet", dataset="demo", text_frontend=None)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    bundle = _bundle(root / "bundle")
    rng = np.random.default_rng(0)
    videos = {f"vid{i}": rng.standard_normal((n, 128)).astype(np.float32) for i, n in enumerate(LENGTHS)}
    np.savez(root / "feats.npz", **videos)
    with h5py.File(root / "feats.h5", "w") as f:
        for k, v in videos.items():
            f.create_dataset(k, data=v)
    meta = root / "meta.jsonl"
    meta.write_text("".join(json.dumps({"video_id": k, "group": i % 2}) + "\n" for i, k in enumerate(videos)))
    query = rng.standard_normal(384).astype(np.float32)
    np.save(root / "q.npy", query)
    return root, bundle, videos, query


def _ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_encode_writes_what_the_api_computes(setup):
    root, bundle, videos, _ = setup
    out = _ok(["encode", "--bundle", bundle, "--features", root / "feats.npz", "--out", root / "e.npz",
               "--json"])
    summary = _json_lines(out.stdout)[-1]
    assert summary["videos"] == 6 and summary["clips"] == 6 * 32
    got = VideoEmbeddings.load(root / "e.npz")
    expected = Retriever.from_bundle(bundle, device="cpu").encode_video(videos)
    assert sorted(got.ids) == sorted(expected.ids)
    for vid in expected.ids:
        np.testing.assert_allclose(got.clips(vid), expected.clips(vid), atol=1e-6)
        np.testing.assert_allclose(got.clip_spans(vid), expected.clip_spans(vid))


def test_build_info_and_search_equal_the_api(setup):
    root, bundle, videos, query = setup
    idx = root / "idx"
    _ok(["index", "build", "--bundle", bundle, "--features", root / "feats.h5", "--metadata",
         root / "meta.jsonl", "--out", idx])
    info = json.loads(_ok(["index", "info", "--index", idx, "--json"]).stdout)
    assert info["videos"] == 6 and info["clips"] == 6 * 32 and info["bundle_path"] == str(bundle.resolve())
    out = _ok(["search", "--index", idx, "--query-features", root / "q.npy", "--top-k", "4", "--json"])
    hits = _json_lines(out.stdout)
    r = Retriever.from_bundle(bundle, device="cpu", index=idx)
    expected = r.search(r.encode_text(query), top_k=4)
    assert [h["video_id"] for h in hits] == [h.video_id for h in expected]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    for h, e in zip(hits, expected, strict=True):
        assert h["score"] == pytest.approx(e.score, abs=1e-6)
        assert (h["start"], h["end"], h["clip_index"]) == (e.start, e.end, e.clip_index)
        assert h["metadata"]["group"] == int(h["video_id"][3:]) % 2
        assert h["metadata"]["duration"] == pytest.approx(LENGTHS[int(h["video_id"][3:])])  # fps 1
    odd = _json_lines(_ok(["search", "--index", idx, "--query-features", root / "q.npy", "--json",
                           "--filter", '{"group": 1}']).stdout)
    assert {h["video_id"] for h in odd} == {"vid1", "vid3", "vid5"}


def test_build_from_embeddings_and_add_more(setup):
    root, bundle, videos, query = setup
    _ok(["encode", "--bundle", bundle, "--features", root / "feats.npz", "--out", root / "all.npz"])
    first = VideoEmbeddings.load(root / "all.npz")
    first.select(["vid0", "vid1", "vid2"]).save(root / "a.npz")
    first.select(["vid3", "vid4", "vid5"]).save(root / "b.npz")
    idx = root / "idx2"
    _ok(["index", "build", "--bundle", bundle, "--embeddings", root / "a.npz", "--out", idx])
    _ok(["index", "add", "--index", idx, "--embeddings", root / "b.npz"])  # bundle from the index
    index = ExactIndex.load(idx)
    assert len(index) == 6 and index.info()["segments"] == 2
    again = _json_lines(_ok(["index", "add", "--index", idx, "--embeddings", root / "b.npz", "--upsert",
                             "--json"]).stdout)[-1]
    assert again["videos"] == 6
    duplicate = runner.invoke(app, ["index", "add", "--index", str(idx), "--embeddings",
                                    str(root / "b.npz")])
    assert duplicate.exit_code == 2 and "vid3" in duplicate.output


def test_errors_exit_with_documented_codes(setup, tmp_path):
    root, bundle, _, _ = setup
    idx = tmp_path / "idx"
    _ok(["index", "build", "--bundle", bundle, "--features", root / "feats.npz", "--out", idx])
    again = runner.invoke(app, ["index", "build", "--bundle", str(bundle), "--features",
                                str(root / "feats.npz"), "--out", str(idx)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad_filter = runner.invoke(app, ["search", "--index", str(idx), "--query-features", str(root / "q.npy"),
                                     "--filter", "{split:"])
    assert bad_filter.exit_code == 2 and "--filter" in bad_filter.output
    both = runner.invoke(app, ["search", "a door", "--index", str(idx), "--queries",
                               str(root / "meta.jsonl")])
    assert both.exit_code == 2 and "exactly one" in both.output
    strings = runner.invoke(app, ["search", "a man opens a door", "--index", str(idx)])
    assert strings.exit_code == 2 and "no text front end" in strings.output
    other = _bundle(tmp_path / "other", seed=1)
    mismatch = runner.invoke(app, ["index", "add", "--index", str(idx), "--bundle", str(other),
                                   "--features", str(root / "feats.npz")])
    assert mismatch.exit_code == 6 and "bundle" in mismatch.output
    searched = runner.invoke(app, ["search", "--index", str(idx), "--bundle", str(other), "--query-features",
                                   str(root / "q.npy")])
    assert searched.exit_code == 6 and "bundle" in searched.output
    Retriever.from_bundle(other, device="cpu").encode_video({"x": np.ones((4, 128), np.float32)}).save(
        tmp_path / "other.npz"
    )
    foreign = runner.invoke(app, ["index", "build", "--bundle", str(bundle), "--embeddings",
                                  str(tmp_path / "other.npz"), "--out", str(tmp_path / "idx_other")])
    assert foreign.exit_code == 6 and "encode them again" in foreign.output
    assert not (tmp_path / "idx_other").exists()
    (other / "video_encoder.onnx").write_bytes(b"garbage")
    corrupt = runner.invoke(app, ["encode", "--bundle", str(other), "--features", str(root / "feats.npz"),
                                  "--out", str(tmp_path / "x.npz")])
    assert corrupt.exit_code == 5 and "video_encoder.onnx" in corrupt.output
    assert not (tmp_path / "x.npz").exists()
    missing = runner.invoke(app, ["index", "info", "--index", str(tmp_path / "nothing")])
    assert missing.exit_code == 5


def test_sentences_with_a_front_end_bundle(setup, frontend_bundle, tmp_path):
    root, _, _, _ = setup
    idx = tmp_path / "idx"
    _ok(["index", "build", "--bundle", frontend_bundle, "--features", root / "feats.npz", "--out", idx])
    table = _ok(["search", "a man opens a door", "--index", idx, "--top-k", "3"]).stdout
    r = Retriever.from_bundle(frontend_bundle, device="cpu", index=idx)
    best = r.search("a man opens a door", top_k=3)
    header, first, *rest = table.splitlines()  # not a terminal: plain aligned columns
    assert header.split() == ["rank", "video", "score", "moment"] and len(rest) == 2
    assert first.split()[:3] == ["1", best[0].video_id, f"{best[0].score:.4f}"]
    assert first.endswith(f"{best[0].start:.1f}–{best[0].end:.1f} s")
    queries = tmp_path / "q.txt"
    queries.write_text("a man opens a door\n\n  a dog runs on the beach  \n")
    _ok(["search", "--index", idx, "--queries", queries, "--top-k", "2", "--out", tmp_path / "ranked.jsonl"])
    rows = _json_lines((tmp_path / "ranked.jsonl").read_text())
    assert [(r_["query_index"], r_["rank"]) for r_ in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert rows[2]["query"] == "a dog runs on the beach"
    assert [x["video_id"] for x in rows[:2]] == [h.video_id for h in r.search("a man opens a door", top_k=2)]
