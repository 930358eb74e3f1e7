"""The Qdrant index, embedded (qdrant_edge, the real engine) and remote (qdrant-client's local mode, the
remote code path), against the exact index on the same corpus: same ids, scores within fp16 tolerance, same
winning clips and spans, for every scoring rule, filter, upsert, removal and reopening."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("qdrant_edge")
pytest.importorskip("qdrant_client")

from prvr_sdk.errors import (  # noqa: E402
    BackendUnavailableError,
    IndexConflictError,
    IndexFormatError,
    IndexLockedError,
    IndexMismatchError,
    InvalidInputError,
)
from prvr_sdk.index import ExactIndex, Index  # noqa: E402
from prvr_sdk.index.qdrant import QdrantEdgeIndex, QdrantRemoteIndex  # noqa: E402
from prvr_sdk.index.qdrant.edge import RECORD  # noqa: E402
from prvr_sdk.index.qdrant.translate import point_id  # noqa: E402

KINDS = ["max_clip", "weighted", "video"]
FLAVOURS = ["edge", "remote"]
BUNDLE = "ab" * 32


@pytest.fixture
def make(tmp_path):
    """``make(flavour, dim, rule, **kw)``: a new, empty Qdrant index of that flavour (closed afterwards)."""
    made = []

    def build(flavour, dim, rule, **kw):
        if flavour == "edge":
            index = QdrantEdgeIndex(tmp_path / f"edge{len(made)}", dim, rule, **kw)
        else:
            index = QdrantRemoteIndex(dim, rule, url=":memory:", collection=f"c{len(made)}", **kw)
        made.append(index)
        return index

    yield build
    for index in made:
        index.close()


def assert_same_hits(got, want, atol=1e-5):
    """Same videos in the same order, same winning clip, span and metadata, scores within ``atol``."""
    assert [h.video_id for h in got] == [h.video_id for h in want]
    assert [h.clip_index for h in got] == [h.clip_index for h in want]
    assert [(h.start, h.end) for h in got] == [(h.start, h.end) for h in want]
    assert [h.metadata for h in got] == [h.metadata for h in want]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=atol, rtol=0)


def both(ix, make, flavour, kind, corpus, **kw):
    exact = ExactIndex(corpus.queries.shape[1], ix.RULES[kind])
    exact.add(**corpus.add_kwargs(kind))
    index = make(flavour, corpus.queries.shape[1], ix.RULES[kind], **kw)
    index.add(**corpus.add_kwargs(kind))
    return exact, index


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("candidates", [None, 3])  # 3: the first engine round never suffices
def test_search_equals_the_exact_index(ix, make, flavour, kind, candidates):
    corpus = ix.make_corpus(num_videos=70, seed=5)
    exact, index = both(ix, make, flavour, kind, corpus, candidates=candidates)
    assert isinstance(index, Index) and len(index) == 70
    ref, best = ix.brute_force(corpus, kind)
    for qi, (got, want) in enumerate(
        zip(index.search(corpus.queries, top_k=10), exact.search(corpus.queries, top_k=10), strict=True)
    ):
        assert_same_hits(got, want)
        ix.assert_same_topk(got, ref[qi], corpus.ids, 10, atol=1e-5)  # and brute force agrees
        if best is not None:
            assert [h.clip_index for h in got] == [best[qi, corpus.ids.index(h.video_id)] for h in got]
    if kind != "video":
        for got, want in zip(
            index.search(corpus.queries, top_k=15, group_by="clip"),
            exact.search(corpus.queries, top_k=15, group_by="clip"),
            strict=True,
        ):
            assert_same_hits(got, want)
    threshold = exact.search(corpus.queries[0], top_k=4)[2].score - 1e-4  # keeps three of the four
    assert_same_hits(
        index.search(corpus.queries[0], top_k=4, min_score=threshold),
        exact.search(corpus.queries[0], top_k=4, min_score=threshold),
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_filters_mean_what_they_mean_in_the_exact_index(ix, make, flavour):
    corpus = ix.make_corpus(num_videos=45, seed=11)
    corpus.metadata[7]["duration"] = 1.8033694935553486  # 17 digits: payload floats need not round-trip
    corpus.metadata[8]["x"], corpus.metadata[9]["x"] = 1, 1.0
    corpus.metadata[10]["x"], corpus.metadata[11]["x"] = True, "1"
    corpus.metadata[12]["x"], corpus.metadata[13]["x"] = None, [1, 2]
    corpus.metadata[14]["x"], corpus.metadata[15]["x"] = -0.0, -2.5e-310  # zero's sign, a subnormal
    exact, index = both(ix, make, flavour, "weighted", corpus)
    specs = [
        {"video_id": ["vid0003", "vid0040", "vid0007", "nope"]},
        {"video_id": "vid0021"},
        {"video_id": {"$nin": ["vid0000", "vid0001"]}},
        {"video_id": {"$gt": 3}},
        {"split": "test"},
        {"lang": ["de", "fr"]},
        {"lang": {"$ne": "en"}},
        {"flag": True},
        {"n": {"$gte": 10, "$lt": 30}},
        {"n": {"$gt": 40}, "split": "test"},
        {"duration": {"$lte": 15.5}},
        {"duration": 1.8033694935553486},
        {"duration": {"$gt": 1.8033694935553486}},
        {"duration": {"$gte": 1.8033694935553486, "$lt": 3}},
        {"n": {"$in": [1, 2, 44]}},
        {"n": 3.0},
        {"x": 1},
        {"x": True},
        {"x": "1"},
        {"x": None},
        {"x": {"$in": [None, "1"]}},
        {"x": {"$nin": [1]}},
        {"x": 0},
        {"x": {"$lt": 0}},
        {"x": {"$gte": -1e-300, "$lte": 0}},
        {"x": {"$gte": 0}},
        {"split": "nothing"},
        {"n": {"$in": []}},
    ]
    for spec in specs:
        for got, want in zip(
            index.search(corpus.queries[:3], top_k=45, filter=spec),
            exact.search(corpus.queries[:3], top_k=45, filter=spec),
            strict=True,
        ):
            assert_same_hits(got, want)
    hits = index.search(corpus.queries[0], top_k=45, filter={"x": {"$in": [1, None]}})
    assert sorted(h.video_id for h in hits) == ["vid0008", "vid0009", "vid0012"]  # an oracle of its own
    with pytest.raises(InvalidInputError, match="string range bounds"):
        index.search(corpus.queries[0], filter={"date": {"$gte": "2024-03-01"}})
    with pytest.raises(InvalidInputError, match="unknown operator"):
        index.search(corpus.queries[0], filter={"n": {"$regex": "a"}})


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_upsert_and_remove_follow_the_exact_index(ix, make, flavour):
    corpus = ix.make_corpus(num_videos=40, seed=2)
    other = ix.make_corpus(num_videos=40, seed=9)
    exact, index = both(ix, make, flavour, "weighted", corpus)
    replaced = other.add_kwargs("weighted", [3, 4, 5])
    replaced["video_ids"] = ["vid0003", "vid0004", "new"]
    for target in (exact, index):
        target.upsert(**replaced)
        assert target.remove(["vid0010", "vid0011", "nope", "vid0010"]) == 2
    assert len(index) == len(exact) == 39 and "vid0010" not in index and "new" in index
    for got, want in zip(
        index.search(corpus.queries, top_k=39), exact.search(corpus.queries, top_k=39), strict=True
    ):
        assert_same_hits(got, want)
    with pytest.raises(InvalidInputError, match="already in the index.*upsert"):
        index.add(**corpus.add_kwargs("weighted", [0]))
    bad = corpus.add_kwargs("weighted", [20, 21])
    bad["video_ids"] = ["fresh1", "fresh2"]
    bad["clip_embs"] = [bad["clip_embs"][0], bad["clip_embs"][1] * 2]  # not unit length
    with pytest.raises(InvalidInputError, match="unit-length"):
        index.add(**bad)
    assert len(index) == 39 and "fresh1" not in index  # all-or-nothing


def test_edge_index_persists_and_remembers_its_bundle(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=30, seed=4)
    path = tmp_path / "ix"
    index = QdrantEdgeIndex(path, 32, ix.RULES["max_clip"], bundle_sha256=BUNDLE, model="amdnet")
    index.add(**corpus.add_kwargs("max_clip"))
    index.remove(["vid0002"])
    before = index.search(corpus.queries, top_k=5)
    with pytest.raises(IndexLockedError, match="another process"):
        QdrantEdgeIndex.load(path)
    assert index.save() == path.absolute()
    index.close()
    again = QdrantEdgeIndex.load(path, bundle_sha256=BUNDLE, dim=32, model="amdnet")
    assert len(again) == 29 and again.search(corpus.queries, top_k=5) == before
    assert again.info()["bundle_sha256"] == BUNDLE and again.info()["videos"] == 29
    again.close()
    with pytest.raises(IndexMismatchError, match="bundle sha256"):
        QdrantEdgeIndex.load(path, bundle_sha256="cd" * 32)
    with pytest.raises(IndexMismatchError, match="32-dimensional"):
        QdrantEdgeIndex.load(path, dim=64)
    with pytest.raises(IndexConflictError, match="already holds"):
        QdrantEdgeIndex(path, 32, "max_clip")


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe not utf-8",
        b"{not json",
        b'{"format": "something-else"}',
        b"[]",
        b'{"format": "prvr-qdrant-index", "format_version": 1, "scoring": "max_clip"}',
        b'{"format": "prvr-qdrant-index", "format_version": 1, "dim": 0, "scoring": "max_clip"}',
        b'{"format": "prvr-qdrant-index", "format_version": 99, "dim": 4, "scoring": "max_clip"}',
    ],
)
def test_corrupt_record_is_an_index_format_error(tmp_path, content):
    path = tmp_path / "ix"
    QdrantEdgeIndex(path, 4, "max_clip").close()
    (path / RECORD).write_bytes(content)
    with pytest.raises(IndexFormatError, match=RECORD):
        QdrantEdgeIndex.load(path)


def test_edge_folder_checks(tmp_path):
    with pytest.raises(IndexFormatError, match="not a Qdrant index"):
        QdrantEdgeIndex.load(tmp_path)
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="new or empty folder"):
        QdrantEdgeIndex(tmp_path, 4, "max_clip")
    with pytest.raises(InvalidInputError, match="cannot be saved"):
        with QdrantEdgeIndex(tmp_path / "ix", 4, "max_clip") as index:
            index.save(tmp_path / "elsewhere")
    with pytest.raises(InvalidInputError, match="positive clip_weight"):
        QdrantEdgeIndex(tmp_path / "neg", 4, {"kind": "max_clip", "clip_weight": -1})


def test_remote_index_persists_in_its_collection(ix, tmp_path):
    from qdrant_client import QdrantClient

    corpus = ix.make_corpus(num_videos=30, seed=6)
    client = QdrantClient(path=str(tmp_path / "local"))
    index = QdrantRemoteIndex(32, ix.RULES["video"], BUNDLE, client=client, collection="videos")
    index.add(**corpus.add_kwargs("video"))
    before = index.search(corpus.queries, top_k=5)
    assert index.save() == "videos"
    with pytest.raises(IndexConflictError, match="already exists"):
        QdrantRemoteIndex(32, "video", client=client, collection="videos")
    client.close()
    client = QdrantClient(path=str(tmp_path / "local"))  # a new process's view of the same storage
    again = QdrantRemoteIndex.load(client=client, collection="videos", bundle_sha256=BUNDLE, dim=32)
    assert len(again) == 30 and again.search(corpus.queries, top_k=5) == before
    with pytest.raises(IndexMismatchError, match="bundle sha256"):
        QdrantRemoteIndex.load(client=client, collection="videos", bundle_sha256="cd" * 32)
    with pytest.raises(IndexFormatError, match="no such collection"):
        QdrantRemoteIndex.load(client=client, collection="missing")
    from qdrant_client import models

    client.create_collection(
        "plain", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT)
    )
    with pytest.raises(IndexFormatError, match="not a prvr index"):
        QdrantRemoteIndex.load(client=client, collection="plain")
    client.create_collection(
        "broken",
        vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT),
        metadata={
            "prvr": {"format": "prvr-qdrant-index", "format_version": 1, "dim": "x", "scoring": "video"}
        },
    )
    with pytest.raises(IndexFormatError, match="malformed"):
        QdrantRemoteIndex.load(client=client, collection="broken")
    client.close()


def test_payload_keeps_metadata_and_spans_verbatim(make):
    """What a user browsing the collection sees: the id, JSON text of metadata and spans, filter keys."""
    index = make("remote", 4, "max_clip")
    clips = np.eye(4, dtype=np.float32)[:2]
    index.add(
        ["a"],
        clip_embs=[clips],
        spans=[np.array([[0.1, 1.7], [1.7, 2.0000000000000004]])],
        metadata=[{"t": "x", "d": 1.8033694935553486}],
    )
    ((payload, vectors),) = index._engine.retrieve([point_id("a")]).values()
    assert payload["video_id"] == "a"
    assert json.loads(payload["metadata"]) == {"t": "x", "d": 1.8033694935553486}
    assert json.loads(payload["spans"]) == [[0.1, 1.7], [1.7, 2.0000000000000004]]
    np.testing.assert_array_equal(np.asarray(vectors["clips"]), clips)
    (hit,) = index.search(np.array([0, 1, 0, 0], dtype=np.float32), top_k=1)
    assert (hit.clip_index, hit.start, hit.end) == (1, 1.7, 2.0000000000000004)


def test_missing_engine_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "qdrant_edge", None)  # import qdrant_edge now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"prvr-sdk\[qdrant\]"):
        QdrantEdgeIndex(tmp_path / "ix", 4, "max_clip")
    monkeypatch.setitem(sys.modules, "qdrant_client", None)
    with pytest.raises(BackendUnavailableError, match=r"prvr-sdk\[qdrant\]"):
        QdrantRemoteIndex(4, "max_clip", url=":memory:")


def test_importing_the_sdk_loads_no_qdrant_library():
    """``prvr_sdk``, its index package and the Qdrant adapters import; the engines load only when used."""
    import subprocess
    import sys

    code = (
        "import sys, prvr_sdk, prvr_sdk.index\n"
        "from prvr_sdk.index import QdrantEdgeIndex, QdrantRemoteIndex\n"
        "print(sorted(m for m in sys.modules if m.startswith(('qdrant_edge', 'qdrant_client'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
