"""ExactIndex.search against brute force over the whole corpus (prvr_sdk.scoring), for every scoring rule."""

from __future__ import annotations

import numpy as np
import pytest

from prvr_sdk.hits import Hit
from prvr_sdk.index import ExactIndex, Index

KINDS = ["max_clip", "weighted", "video"]


def build(ix, corpus, kind, **kw) -> ExactIndex:
    index = ExactIndex(corpus.queries.shape[1], ix.RULES[kind], **kw)
    index.add(**corpus.add_kwargs(kind))
    return index


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ragged", [True, False])
@pytest.mark.parametrize("block_size", [None, 7])
def test_search_equals_brute_force(ix, kind, ragged, block_size):
    corpus = ix.make_corpus(ragged=ragged, seed=1 + ragged)
    index = build(ix, corpus, kind)
    ref, best = ix.brute_force(corpus, kind)
    results = index.search(corpus.queries, top_k=10, block_size=block_size)
    assert len(results) == len(corpus.queries)
    for qi, hits in enumerate(results):
        ix.assert_same_topk(hits, ref[qi], corpus.ids, 10, atol=1e-5)
        for hit in hits:
            v = corpus.ids.index(hit.video_id)
            assert hit.metadata == corpus.metadata[v]
            if kind == "video":
                assert hit.clip_index is None
                assert (hit.start, hit.end) == (0.0, corpus.metadata[v]["duration"])
            else:  # the winning clip is the brute-force argmax, and its span is returned
                assert hit.clip_index == best[qi, v]
                assert (hit.start, hit.end) == tuple(corpus.spans[v][hit.clip_index])


@pytest.mark.parametrize("kind", KINDS)
def test_scores_match_the_model_score_within_fp16_tolerance(ix, kind):
    """Against normalised float32 scoring (what `score` computes): same ranking, fp16-level differences."""
    corpus = ix.make_corpus(seed=3)
    index = build(ix, corpus, kind)
    ref, _ = ix.brute_force(corpus, kind, normalize=True)
    for qi, hits in enumerate(index.search(corpus.queries, top_k=8)):
        ix.assert_same_topk(hits, ref[qi], corpus.ids, 8, atol=2e-3)


@pytest.mark.parametrize("kind", ["max_clip", "weighted"])
def test_group_by_clip_ranks_clips(ix, kind):
    corpus = ix.make_corpus(num_videos=25, seed=4)
    index = build(ix, corpus, kind)
    rule = ix.RULES[kind]
    owner = np.concatenate([[v] * len(c) for v, c in enumerate(corpus.clips)])
    within = np.concatenate([np.arange(len(c)) for c in corpus.clips])
    flat = np.concatenate(corpus.clips)
    ref = rule.clip_weight * (corpus.queries @ flat.T)
    if rule.uses_video_emb:
        ref = ref + rule.frame_weight * (corpus.queries @ corpus.video.T)[:, owner]
    keys = [f"{corpus.ids[o]}#{c}" for o, c in zip(owner, within, strict=True)]
    for qi, hits in enumerate(index.search(corpus.queries, top_k=12, group_by="clip", block_size=5)):
        as_keys = [Hit(f"{h.video_id}#{h.clip_index}", h.score) for h in hits]
        ix.assert_same_topk(as_keys, ref[qi].astype(np.float32), keys, 12, atol=1e-5)
        for h in hits:
            v = corpus.ids.index(h.video_id)
            assert (h.start, h.end) == tuple(corpus.spans[v][h.clip_index])
    assert len({h.video_id for h in index.search(corpus.queries[0], top_k=40, group_by="clip")}) < 40


def test_single_query_returns_a_flat_list_and_the_protocol_holds(ix):
    corpus = ix.make_corpus(num_videos=12)
    index = build(ix, corpus, "max_clip")
    hits = index.search(corpus.queries[0], top_k=3)
    assert isinstance(hits, list) and all(isinstance(h, Hit) for h in hits) and len(hits) == 3
    assert hits == index.search(corpus.queries[:1], top_k=3)[0]
    assert isinstance(index, Index)
    assert len(index) == 12 and "vid0003" in index and "nope" not in index
    d = hits[0].to_dict()
    assert set(d) == {"video_id", "score", "start", "end", "clip_index", "metadata"}
    assert isinstance(d["score"], float) and isinstance(d["clip_index"], int)


def test_top_k_larger_than_corpus_and_min_score(ix):
    corpus = ix.make_corpus(num_videos=5)
    index = build(ix, corpus, "weighted")
    hits = index.search(corpus.queries[0], top_k=50)
    assert len(hits) == 5
    cut = hits[2].score
    assert [h.video_id for h in index.search(corpus.queries[0], top_k=50, min_score=cut)] == [
        h.video_id for h in hits[:3]
    ]
    assert ExactIndex(32, "max_clip").search(corpus.queries, top_k=3) == [[] for _ in corpus.queries]


def test_segments_added_in_pieces_equal_one_shot(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=40, seed=5)
    one = build(ix, corpus, "weighted")
    pieces = ExactIndex(32, ix.RULES["weighted"])
    pieces.add(**corpus.add_kwargs("weighted", slice(0, 13)))
    pieces.add(**corpus.add_kwargs("weighted", slice(13, 20)))
    pieces.save(tmp_path / "idx")  # saved segments + in-memory ones afterwards
    pieces.add(**corpus.add_kwargs("weighted", slice(20, 33)))
    pieces.add(**corpus.add_kwargs("weighted", slice(33, 40)))
    assert pieces.info()["segments"] == 3
    a, b = one.search(corpus.queries, top_k=15), pieces.search(corpus.queries, top_k=15, block_size=11)
    for ha, hb in zip(a, b, strict=True):
        assert [h.video_id for h in ha] == [h.video_id for h in hb]
        assert [h.clip_index for h in ha] == [h.clip_index for h in hb]
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-6, rtol=0)
    pieces.close()


@pytest.mark.parametrize("kind", KINDS)
def test_removed_videos_never_come_back(ix, kind, tmp_path):
    corpus = ix.make_corpus(num_videos=30, seed=6)
    index = build(ix, corpus, kind)
    first = index.search(corpus.queries, top_k=5)
    gone = sorted({h.video_id for hits in first for h in hits[:2]})
    assert index.remove(gone + ["not-there"]) == len(gone)
    assert index.remove(gone) == 0
    assert len(index) == 30 - len(gone)
    keep = [i for i, v in enumerate(corpus.ids) if v not in gone]
    ref, _ = ix.brute_force(corpus, kind)
    for qi, hits in enumerate(index.search(corpus.queries, top_k=30)):
        assert not {h.video_id for h in hits} & set(gone)
        ix.assert_same_topk(hits, ref[qi, keep], [corpus.ids[i] for i in keep], 30, atol=1e-5)
    index.save(tmp_path / "idx")  # compaction drops them from disk
    again = ExactIndex.load(tmp_path / "idx")
    assert again.info()["clips"] == sum(len(corpus.clips[i]) for i in keep) or kind == "video"
    assert not {h.video_id for hits in again.search(corpus.queries, top_k=30) for h in hits} & set(gone)
    index.close()


def test_ties_go_to_the_earlier_video_whatever_the_block_size(ix):
    corpus = ix.make_corpus(num_videos=20, seed=7)
    index = ExactIndex(32, "max_clip")
    twin_clips = corpus.clips[3]
    index.add(["a", "b"], clip_embs=[corpus.clips[0], twin_clips])
    index.add(**corpus.add_kwargs("max_clip"))
    index.add(["z"], clip_embs=[twin_clips])  # identical to "b" and to vid0003
    q = twin_clips[0] / np.linalg.norm(twin_clips[0])
    for block_size in (None, 1, 2, 5):
        ids = [h.video_id for h in index.search(q, top_k=3, block_size=block_size)]
        assert ids == ["b", "vid0003", "z"], (block_size, ids)


def test_clip_and_video_counts_in_info(ix):
    corpus = ix.make_corpus(num_videos=9, seed=8)
    index = build(ix, corpus, "max_clip", model="amdnet-demo")
    info = index.info()
    assert info["videos"] == 9 and info["clips"] == sum(len(c) for c in corpus.clips)
    assert info["model"] == "amdnet-demo" and info["scoring"]["kind"] == "max_clip"
    assert info["unsaved_changes"] and info["path"] is None


def test_float16_decode_is_exact_for_every_finite_value():
    from prvr_sdk.index.blocks import decode_f16 as _decode_f16

    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    every = every[np.isfinite(every)]  # 63488 values: zeros, subnormals, normals, both signs
    out = _decode_f16(every, np.empty(len(every), dtype=np.float32))
    np.testing.assert_array_equal(out.view(np.int32), every.astype(np.float32).view(np.int32))
