"""`prvr index build|add|info|verify` and `prvr search` with `--engine qdrant-edge` and `--engine qdrant`.

Oracle: the exact engine (`--engine exact`, itself held equal to brute force and to the Python API in
tests/sdk/index and tests/cli/test_encode_index_search.py) on the same golden bundle, features, metadata
and queries: the same videos in the same order, the same winning clip, moment and metadata, scores
within float32 summation order. `--engine qdrant` runs against qdrant-client's local mode
(`--url local:DIR`), which takes the remote code path without a server. No torch: the golden bundles.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("qdrant_edge")
pytest.importorskip("qdrant_client")

from prvr_cli.app import app  # noqa: E402
from prvr_sdk.index import ExactIndex  # noqa: E402
from prvr_sdk.index.qdrant import QdrantEdgeIndex  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
NUM_VIDEOS = 24
runner = CliRunner()


def _videos(model: str, ids: list[str], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tail = (5, 32) if model == "muse" else (32,)  # MUSE takes patch tokens [T, 1+P, C]
    return {v: rng.standard_normal((int(rng.integers(2, 30)), *tail)).astype(np.float32) for v in ids}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Per golden model: feature files (all videos, two halves, the second half re-drawn), metadata,
    a batch of query features."""
    root = tmp_path_factory.mktemp("qdrant-cli")
    rng = np.random.default_rng(7)
    ids = [f"v{i:02d}" for i in range(NUM_VIDEOS)]
    meta = root / "meta.jsonl"
    meta.write_text("".join(
        json.dumps({"video_id": v, "group": i % 3, "lang": ["en", "de"][i % 2], "n": i}) + "\n"
        for i, v in enumerate(ids)
    ))
    made = {}
    for model in ("amdnet", "mamfusion", "muse"):
        d = root / model
        d.mkdir()
        videos = _videos(model, ids, seed=len(model))
        np.savez(d / "all.npz", **videos)
        np.savez(d / "first.npz", **{v: videos[v] for v in ids[:16]})
        np.savez(d / "rest.npz", **{v: videos[v] for v in ids[16:]})
        np.savez(d / "redrawn.npz", **_videos(model, ids[12:20], seed=99))  # 4 present, 4 new
        shape = (int(rng.integers(1, 9)), 32) if model == "mamfusion" else (32,)  # tokens vs sentence
        np.savez(d / "q.npz", **{f"q{i}": rng.standard_normal(shape).astype(np.float32) for i in range(4)})
        made[model] = d
    return root, made, meta


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def bundle(model: str) -> Path:
    return GOLDEN / model / "bundle"


def engine_args(engine: str, where: Path, flag: str = "--index") -> list:
    """The flags that name an index of ``engine`` kept under ``where``."""
    if engine == "qdrant":
        return ["--engine", "qdrant", "--url", f"local:{where}", "--collection", "c"]
    return ["--engine", engine, flag, where]


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """Hit for hit: query, rank, video, winning clip, moment, metadata equal; scores to 1e-5."""
    assert len(got) == len(want) and want
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k != "score"} == {k: v for k, v in w.items() if k != "score"}
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)


def search(model, d, engine, where, *extra):
    args = ["search", "--query-features", d / "q.npz", "--top-k", "5", "--json", *extra]
    if engine == "exact":
        return lines(ok(*args, "--index", where))
    return lines(ok(*args, *engine_args(engine, where)))


@pytest.fixture(scope="module")
def exact(corpus):
    """``exact(model, *extra)``: the exact engine's rows on the whole corpus (built and searched once)."""
    root, made, meta = corpus
    cache: dict = {}

    def rows(model, *extra):
        where = root / f"exact-{model}"
        if not where.exists():
            ok("index", "build", "--bundle", bundle(model), "--features", made[model] / "all.npz",
               "--metadata", meta, "--out", where)
        if (model, extra) not in cache:
            cache[model, extra] = search(model, made[model], "exact", where, *extra)
        return cache[model, extra]

    return rows


@pytest.mark.parametrize("engine", ["qdrant-edge", "qdrant"])
@pytest.mark.parametrize("model", ["amdnet", "mamfusion", "muse"])  # max_clip, weighted, video
def test_build_and_search_equal_the_exact_engine(corpus, exact, tmp_path, model, engine):
    root, made, meta = corpus
    d = made[model]
    exact(model)
    built = lines(ok("index", "build", "--bundle", bundle(model), "--features", d / "all.npz", "--metadata",
                     meta, *engine_args(engine, tmp_path / "q", flag="--out"), "--json"))[-1]
    exact_info = json.loads(ok("index", "info", "--index", root / f"exact-{model}", "--json").stdout)
    info = json.loads(ok("index", "info", *engine_args(engine, tmp_path / "q"), "--json").stdout)
    assert exact_info["engine"] == "exact" and info["engine"] == engine == built["engine"]
    assert info["videos"] == exact_info["videos"] == NUM_VIDEOS
    assert info["bundle_sha256"] == exact_info["bundle_sha256"] and info["model"] == model
    assert info["scoring"] == exact_info["scoring"] and info["dim"] == exact_info["dim"]
    assert info["format"] == "prvr-qdrant-index" and info["bundle_path"] == str(bundle(model).resolve())
    cases = [[], ["--filter", '{"group": 1}'], ["--filter", '{"n": {"$gte": 5, "$lt": 15}, "lang": ["de"]}'],
             ["--min-score", "0.2"]]
    if model != "muse":
        cases.append(["--group-by", "clip"])
    for extra in cases:
        assert_same_rows(search(model, d, engine, tmp_path / "q", *extra), exact(model, *extra))
    filtered = search(model, d, engine, tmp_path / "q", "--filter", '{"group": 1}')
    assert {r["metadata"]["group"] for r in filtered} == {1} and len(filtered) == 4 * 5


def test_path_is_an_alias_of_out_and_index(corpus, exact, tmp_path):
    root, made, meta = corpus
    d = made["amdnet"]
    ok("index", "build", "--bundle", bundle("amdnet"), "--features", d / "all.npz", "--metadata", meta,
       "--engine", "qdrant-edge", "--path", tmp_path / "ed")
    got = lines(ok("search", "--query-features", d / "q.npz", "--top-k", "5", "--json", "--engine",
                   "qdrant-edge", "--path", tmp_path / "ed"))
    assert_same_rows(got, exact("amdnet"))
    info = json.loads(ok("index", "info", "--engine", "qdrant-edge", "--path", tmp_path / "ed",
                         "--json").stdout)
    assert info["path"] == str(tmp_path / "ed") and info["videos"] == NUM_VIDEOS


@pytest.mark.parametrize("engine", ["qdrant-edge", "qdrant"])
def test_add_upsert_and_reopen_follow_the_exact_engine(corpus, tmp_path, engine):
    root, made, meta = corpus
    d, b = made["mamfusion"], bundle("mamfusion")
    ok("index", "build", "--bundle", b, "--features", d / "first.npz", "--out", tmp_path / "exact")
    ok("index", "build", "--bundle", b, "--features", d / "first.npz",
       *engine_args(engine, tmp_path / "q", flag="--out"))
    # add: the bundle comes from the index's record, as for the exact engine
    ok("index", "add", "--index", tmp_path / "exact", "--features", d / "rest.npz", "--metadata", meta)
    added = lines(ok("index", "add", *engine_args(engine, tmp_path / "q"), "--features", d / "rest.npz",
                     "--metadata", meta, "--json"))[-1]
    assert added["action"] == "updated" and added["videos"] == NUM_VIDEOS
    duplicate = invoke("index", "add", *engine_args(engine, tmp_path / "q"), "--features", d / "redrawn.npz")
    assert duplicate.exit_code == 2 and "v12" in duplicate.output and "--upsert" in duplicate.output
    assert json.loads(ok("index", "info", *engine_args(engine, tmp_path / "q"), "--json").stdout)[
        "videos"] == NUM_VIDEOS  # the refused add wrote nothing
    ok("index", "add", "--index", tmp_path / "exact", "--features", d / "redrawn.npz", "--upsert")
    upserted = lines(ok("index", "add", *engine_args(engine, tmp_path / "q"), "--features",
                        d / "redrawn.npz", "--upsert", "--json"))[-1]
    assert upserted["videos"] == NUM_VIDEOS  # 4 replaced (v12..v15), 4 already there (v16..v19)
    assert len(ExactIndex.load(tmp_path / "exact")) == NUM_VIDEOS
    # every command reopened the index: searching it once more still equals the exact engine
    for extra in ([], ["--filter", '{"video_id": ["v12", "v13", "v16", "v03"]}'], ["--group-by", "clip"]):
        assert_same_rows(search("mamfusion", d, engine, tmp_path / "q", *extra),
                         search("mamfusion", d, "exact", tmp_path / "exact", *extra))
    # the replaced videos carry the redrawn features' duration, and lost the metadata of the first add
    hits = search("mamfusion", d, engine, tmp_path / "q", "--filter", '{"video_id": "v16"}')
    redrawn = np.load(d / "redrawn.npz")["v16"]
    assert hits[0]["metadata"] == {"duration": pytest.approx(float(len(redrawn)))}  # fps 1


@pytest.mark.parametrize("engine", ["qdrant-edge", "qdrant"])
def test_another_bundle_is_refused_with_exit_6(corpus, tmp_path, engine):
    root, made, _ = corpus
    ok("index", "build", "--bundle", bundle("amdnet"), "--features", made["amdnet"] / "all.npz",
       *engine_args(engine, tmp_path / "q", flag="--out"))
    searched = invoke("search", "--query-features", made["muse"] / "q.npz", "--bundle", bundle("muse"),
                      *engine_args(engine, tmp_path / "q"))
    assert searched.exit_code == 6, searched.output
    assert "bundle sha256" in searched.output
    added = invoke("index", "add", *engine_args(engine, tmp_path / "q"), "--bundle", bundle("muse"),
                   "--features", made["muse"] / "rest.npz")
    assert added.exit_code == 6, added.output
    foreign = root / "muse-emb.npz"
    if not foreign.exists():
        ok("encode", "--bundle", bundle("muse"), "--features", made["muse"] / "rest.npz", "--out", foreign)
    from_embeddings = invoke("index", "add", *engine_args(engine, tmp_path / "q"), "--embeddings", foreign)
    assert from_embeddings.exit_code == 6, from_embeddings.output
    info = json.loads(ok("index", "info", *engine_args(engine, tmp_path / "q"), "--json").stdout)
    assert info["videos"] == NUM_VIDEOS and info["model"] == "amdnet"


def test_default_collection_is_named_after_model_and_space(corpus, exact, tmp_path):
    root, made, meta = corpus
    d, b = made["amdnet"], bundle("amdnet")
    url = f"local:{tmp_path / 'local'}"
    built = lines(ok("index", "build", "--bundle", b, "--features", d / "all.npz", "--metadata", meta,
                     "--engine", "qdrant", "--url", url, "--json"))[-1]
    space = json.loads((b / "manifest.json").read_text())["embedding_space"]
    assert built["collection"] == f"prvr-amdnet-{space[:12]}"
    search = ["search", "--query-features", d / "q.npz", "--top-k", "5", "--json", "--engine", "qdrant",
              "--url", url]
    assert_same_rows(lines(ok(*search, "--bundle", b)), exact("amdnet"))
    assert_same_rows(lines(ok(*search, "--collection", built["collection"])), exact("amdnet"))
    neither = invoke("search", "--query-features", d / "q.npz", "--engine", "qdrant", "--url", url)
    assert neither.exit_code == 2 and "--collection" in neither.output
    info = invoke("index", "info", "--engine", "qdrant", "--url", url)
    assert info.exit_code == 2 and "--collection" in info.output


def test_edge_overwrite_replaces_only_a_prvr_qdrant_folder(corpus, tmp_path):
    root, made, _ = corpus
    d, b = made["amdnet"], bundle("amdnet")
    edge = tmp_path / "edge"
    edge_build = ["index", "build", "--bundle", b, "--engine", "qdrant-edge", "--out", edge]
    ok(*edge_build, "--features", d / "first.npz")
    again = invoke("index", "build", "--bundle", b, "--features", d / "all.npz", "--engine", "qdrant-edge",
                   "--out", edge)
    assert again.exit_code == 2 and "--overwrite" in again.output
    ok(*edge_build, "--features", d / "rest.npz", "--overwrite")
    index = QdrantEdgeIndex.load(edge)
    assert len(index) == NUM_VIDEOS - 16 and "v16" in index and "v00" not in index
    index.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edge"]  # no staging folder left beside it
    ok("index", "build", "--bundle", b, "--features", d / "first.npz", "--out", tmp_path / "exact")
    onto_exact = invoke("index", "build", "--bundle", b, "--features", d / "all.npz", "--engine",
                        "qdrant-edge", "--out", tmp_path / "exact", "--overwrite")
    assert onto_exact.exit_code == 5 and "not a prvr Qdrant index" in onto_exact.output
    assert len(ExactIndex.load(tmp_path / "exact")) == 16  # untouched
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    onto_other = invoke("index", "build", "--bundle", b, "--features", d / "all.npz", "--engine",
                        "qdrant-edge", "--out", other, "--overwrite")
    assert onto_other.exit_code == 5 and (other / "keep.txt").read_text() == "mine"
    exact_onto_edge = invoke("index", "build", "--bundle", b, "--features", d / "all.npz", "--out", edge,
                             "--overwrite")
    assert exact_onto_edge.exit_code == 5  # the exact engine does not replace a Qdrant folder either


def test_failed_edge_build_leaves_nothing(corpus, tmp_path):
    root, made, _ = corpus
    muse_emb = root / "muse-emb.npz"
    if not muse_emb.exists():
        ok("encode", "--bundle", bundle("muse"), "--features", made["muse"] / "rest.npz", "--out", muse_emb)
    result = invoke("index", "build", "--bundle", bundle("amdnet"), "--embeddings", muse_emb, "--engine",
                    "qdrant-edge", "--out", tmp_path / "edge")
    assert result.exit_code == 6, result.output
    bad_meta = tmp_path / "meta.json"
    bad_meta.write_text(json.dumps({"v00": {"x": float("nan")}}))  # JSON's NaN: no finite JSON value
    result = invoke("index", "build", "--bundle", bundle("amdnet"), "--features", made["amdnet"] / "all.npz",
                    "--metadata", bad_meta, "--engine", "qdrant-edge", "--out", tmp_path / "edge")
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_remote_overwrite_replaces_only_a_prvr_collection(corpus, tmp_path):
    from qdrant_client import QdrantClient, models

    root, made, _ = corpus
    d, b = made["amdnet"], bundle("amdnet")
    where = engine_args("qdrant", tmp_path / "local", flag="--out")
    ok("index", "build", "--bundle", b, "--features", d / "first.npz", *where)
    again = invoke("index", "build", "--bundle", b, "--features", d / "rest.npz", *where)
    assert again.exit_code == 2 and "--overwrite" in again.output
    replaced = lines(ok("index", "build", "--bundle", b, "--features", d / "rest.npz", *where, "--overwrite",
                        "--json"))[-1]
    assert replaced["videos"] == NUM_VIDEOS - 16
    client = QdrantClient(path=str(tmp_path / "local"))
    client.create_collection("theirs", vectors_config=models.VectorParams(size=4,
                                                                       distance=models.Distance.DOT))
    client.close()
    theirs = ["--engine", "qdrant", "--url", f"local:{tmp_path / 'local'}", "--collection", "theirs"]
    refused = invoke("index", "build", "--bundle", b, "--features", d / "rest.npz", *theirs, "--overwrite")
    assert refused.exit_code == 5 and "not a prvr index" in refused.output
    client = QdrantClient(path=str(tmp_path / "local"))
    assert client.collection_exists("theirs")  # left alone
    client.close()
    assert invoke("search", "--query-features", d / "q.npz", *theirs).exit_code == 5
    assert invoke("index", "info", *theirs).exit_code == 5


def test_flags_must_fit_the_engine(corpus, tmp_path):
    root, made, _ = corpus
    feats = made["amdnet"] / "all.npz"
    build = ["index", "build", "--bundle", bundle("amdnet"), "--features", feats]
    cases = [
        ([*build, "--engine", "milvus", "--out", tmp_path / "x"], "--engine"),
        ([*build, "--engine", "qdrant"], "--url"),
        ([*build, "--engine", "qdrant", "--url", "ftp://host", "--collection", "c"], "http"),
        ([*build, "--engine", "qdrant", "--url", "local:", "--collection", "c"], "local:PATH"),
        ([*build, "--out", tmp_path / "x", "--url", "http://localhost:6333"], "--engine qdrant"),
        ([*build, "--engine", "qdrant-edge"], "--out"),
        (["index", "info", "--engine", "qdrant-edge"], "--index"),
        (["search", "x", "--engine", "qdrant", "--url", "local:/nowhere", "--index", tmp_path], "collection"),
    ]
    for args, said in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert said in result.output, (args, result.output)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("engine", ["qdrant-edge", "qdrant"])
def test_verify_is_not_supported_for_qdrant(tmp_path, engine):
    result = invoke("index", "verify", *engine_args(engine, tmp_path / "q"))
    assert result.exit_code == 2 and "not supported" in result.output


@pytest.mark.parametrize(("engine", "module"), [("qdrant-edge", "qdrant_edge"), ("qdrant", "qdrant_client")])
def test_missing_extra_exits_3_naming_it(corpus, tmp_path, monkeypatch, engine, module):
    root, made, _ = corpus
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    for args in (
        ["index", "build", "--bundle", bundle("amdnet"), "--features", made["amdnet"] / "all.npz",
         *engine_args(engine, tmp_path / "q", flag="--out")],
        ["search", "--query-features", made["amdnet"] / "q.npz", *engine_args(engine, tmp_path / "q")],
        ["index", "info", *engine_args(engine, tmp_path / "q")],
    ):
        result = invoke(*args)
        assert result.exit_code == 3, result.output
        assert "prvr-sdk[qdrant]" in result.output
    assert not (tmp_path / "q").exists()
