"""Metadata filters: applied before top-k, JSON-typed equality, ranges, and clear errors for bad filters."""

from __future__ import annotations

import numpy as np
import pytest

from prvr_sdk.errors import InvalidInputError
from prvr_sdk.index import ExactIndex, compile_filter


@pytest.fixture
def setup(ix):
    corpus = ix.make_corpus(num_videos=45, seed=11)
    index = ExactIndex(32, ix.RULES["weighted"])
    index.add(**corpus.add_kwargs("weighted", slice(0, 20)))
    index.add(**corpus.add_kwargs("weighted", slice(20, 45)))  # two segments
    ref, _ = ix.brute_force(corpus, "weighted")
    return corpus, index, ref


def check(ix, setup, spec, predicate, k=10, **kw):
    """Search with ``spec`` equals brute force restricted to the videos where ``predicate(i, meta)``."""
    corpus, index, ref = setup
    keep = [i for i, m in enumerate(corpus.metadata) if predicate(i, m)]
    for qi, hits in enumerate(index.search(corpus.queries, top_k=k, filter=spec, **kw)):
        if not keep:
            assert hits == []
            continue
        ix.assert_same_topk(hits, ref[qi, keep], [corpus.ids[i] for i in keep], k, atol=1e-5)
    return keep


@pytest.mark.parametrize(
    ("spec", "predicate"),
    [
        ({"video_id": ["vid0003", "vid0040", "vid0007", "nope"]}, lambda i, m: i in (3, 7, 40)),
        ({"video_id": "vid0021"}, lambda i, m: i == 21),
        ({"video_id": {"$nin": ["vid0000", "vid0001"]}}, lambda i, m: i > 1),
        ({"split": "test"}, lambda i, m: m["split"] == "test"),
        ({"lang": ["de", "fr"]}, lambda i, m: m.get("lang") in ("de", "fr")),
        ({"lang": {"$ne": "en"}}, lambda i, m: m.get("lang") != "en"),  # missing field passes $ne
        ({"flag": True}, lambda i, m: m["flag"] is True),
        ({"n": {"$gte": 10, "$lt": 30}}, lambda i, m: 10 <= m["n"] < 30),
        ({"n": {"$gt": 40}, "split": "test"}, lambda i, m: m["n"] > 40 and m["split"] == "test"),
        ({"duration": {"$lte": 15.5}}, lambda i, m: m["duration"] <= 15.5),
        (
            {"date": {"$gte": "2024-03-01", "$lte": "2024-05-01"}},
            lambda i, m: "2024-03-01" <= m["date"] <= "2024-05-01",
        ),
        ({"n": {"$in": [1, 2, 44]}}, lambda i, m: m["n"] in (1, 2, 44)),
        ({"n": 3.0}, lambda i, m: m["n"] == 3),  # numbers compare as numbers
        ({"split": "nothing"}, lambda i, m: False),
    ],
)
def test_filter_is_applied_before_top_k(ix, setup, spec, predicate):
    check(ix, setup, spec, predicate)


def test_filter_by_clip_and_with_removed_videos(ix, setup):
    corpus, index, _ = setup
    index.remove(["vid0003"])
    hits = index.search(
        corpus.queries[0], top_k=50, filter={"video_id": ["vid0003", "vid0004"]}, group_by="clip"
    )
    assert {h.video_id for h in hits} == {"vid0004"} and len(hits) == len(corpus.clips[4])


def test_equality_is_json_typed(ix):
    index = ExactIndex(4, "video")
    vecs = np.eye(4, dtype=np.float32)
    index.add(
        ["a", "b", "c", "d"], video_embs=vecs, metadata=[{"x": True}, {"x": 1}, {"x": "1"}, {"x": None}]
    )
    q = np.full(4, 0.5, dtype=np.float32)

    def ids(spec):
        return sorted(h.video_id for h in index.search(q, top_k=4, filter=spec))

    assert ids({"x": True}) == ["a"]
    assert ids({"x": 1}) == ["b"]
    assert ids({"x": "1"}) == ["c"]
    assert ids({"x": None}) == ["d"]
    assert ids({"x": {"$gte": 0}}) == ["b"]  # bools are not numbers
    assert ids({"y": {"$ne": 1}}) == ["a", "b", "c", "d"]
    assert ids({"y": 1}) == []


@pytest.mark.parametrize(
    "spec",
    [
        {"n": {"$regex": "a"}},
        {"n": {}},
        {"$and": [{"n": 1}]},
        {"n": {"$gt": [1, 2]}},
        {"n": {"$gt": True}},
        {"n": {"$gt": 1, "$lt": "z"}},
        {"n": {"$in": "abc"}},
        {"n": {"$eq": {"nested": 1}}},
        {"n": float("nan")},
        {3: 1},
        ["video_id", "x"],
    ],
)
def test_bad_filters_raise_before_searching(ix, setup, spec):
    corpus, index, _ = setup
    with pytest.raises(InvalidInputError) as err:
        index.search(corpus.queries[0], filter=spec)
    assert "filter" in str(err.value)


def test_unknown_operator_message_lists_the_valid_ones():
    with pytest.raises(InvalidInputError, match=r"unknown operator '\$between'.*\$gte"):
        compile_filter({"duration": {"$between": [1, 2]}})
