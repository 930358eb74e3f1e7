"""Shared data and oracles for the index tests: a seeded structured corpus and brute-force scores.

The oracle is ``prvr_sdk.scoring`` over the whole corpus at once (``max_over_clips`` with a clip mask for
ragged videos, ``weighted_score``), on the same float16-rounded vectors the index stores. The top-k check
is tie-tolerant in the way of faiss's ``check_ref_knn_with_draws``: every returned score must be the
video's true score, the k best scores must match, and any order among (near-)equal scores is accepted;
when the reference has no near-ties the order must match exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from prvr_sdk.features import l2_normalize
from prvr_sdk.index import ScoringRule
from prvr_sdk.scoring import cosine, max_over_clips, weighted_score

RULES = {
    "max_clip": ScoringRule("max_clip"),
    "weighted": ScoringRule("weighted", clip_weight=0.7, frame_weight=0.3),
    "video": ScoringRule("video"),
}


def _unit16(x: np.ndarray) -> np.ndarray:
    """Unit vectors as the index stores them: float16-rounded, returned as float32."""
    return l2_normalize(x).astype(np.float16).astype(np.float32)


@dataclass
class Corpus:
    ids: list[str]
    clips: list[np.ndarray]  # per video [Nc_i, D] float32 (float16-exact values)
    video: np.ndarray  # [Nv, D]
    spans: list[np.ndarray]  # per video [Nc_i, 2] seconds
    metadata: list[dict]
    queries: np.ndarray  # [Nq, D] unit float32

    def add_kwargs(self, kind: str, rows: slice | list[int] | None = None) -> dict:
        take = range(len(self.ids))[rows] if isinstance(rows, slice) else (rows or range(len(self.ids)))
        take = list(take)
        out = {"video_ids": [self.ids[i] for i in take], "metadata": [self.metadata[i] for i in take]}
        if RULES[kind].uses_clips:
            out["clip_embs"] = [self.clips[i] for i in take]
            out["spans"] = [self.spans[i] for i in take]
        if RULES[kind].uses_video_emb:
            out["video_embs"] = self.video[take]
        return out


def make_corpus(num_videos=60, dim=32, ragged=True, num_queries=7, seed=0, max_clips=8) -> Corpus:
    """Clustered unit vectors (8 topics), so that scores spread out instead of all sitting near 0."""
    rng = np.random.default_rng(seed)
    topics = l2_normalize(rng.standard_normal((8, dim)))
    clips, spans, metas = [], [], []
    for i in range(num_videos):
        n = int(rng.integers(1, max_clips + 1)) if ragged else 6
        topic = topics[rng.integers(8)]
        clips.append(_unit16(topic + rng.standard_normal((n, dim)) / np.sqrt(dim)))
        length = rng.uniform(1.0, 5.0, size=n)
        ends = np.cumsum(length)
        spans.append(np.stack([ends - length, ends], axis=1))
        meta = {
            "n": i,
            "duration": float(ends[-1]),
            "split": "test" if i % 3 == 0 else "train",
            "lang": ["en", "de", "fr"][i % 3],
            "flag": bool(i % 2),
            "date": f"2024-{1 + i % 12:02d}-01",
        }
        if i % 5 == 0:
            del meta["lang"]  # some videos lack a field
        metas.append(meta)
    video = np.stack([_unit16(c.mean(axis=0) + 0.1 * rng.standard_normal(dim) / np.sqrt(dim)) for c in clips])
    queries = l2_normalize(
        topics[rng.integers(8, size=num_queries)] + 0.3 * rng.standard_normal((num_queries, dim))
    )
    return Corpus([f"vid{i:04d}" for i in range(num_videos)], clips, video, spans, metas, queries)


def brute_force(corpus: Corpus, kind: str, queries: np.ndarray | None = None, normalize: bool = False):
    """Reference ``(scores [Nq, Nv], best_clip [Nq, Nv] | None)`` over the whole corpus."""
    rule = RULES[kind]
    q = corpus.queries if queries is None else queries
    frame = (
        (cosine(q, corpus.video) if normalize else q @ corpus.video.T) if rule.uses_video_emb else None
    )
    if not rule.uses_clips:
        return frame, None
    nc = max(len(c) for c in corpus.clips)
    padded = np.zeros((len(corpus.clips), nc, q.shape[1]), dtype=np.float32)
    mask = np.zeros((len(corpus.clips), nc), dtype=bool)
    for i, c in enumerate(corpus.clips):
        padded[i, : len(c)] = c
        mask[i, : len(c)] = True
    clip_scores, best = max_over_clips(q, padded, normalize=normalize, clip_mask=mask)
    return weighted_score(clip_scores, frame, rule.clip_weight, rule.frame_weight), best


def assert_same_topk(hits, ref: np.ndarray, ids: list[str], k: int, atol: float) -> None:
    """Tie-tolerant comparison of one query's hits with reference scores ``ref [Nv]`` over ``ids``."""
    order = np.lexsort((np.arange(len(ref)), -ref))
    k = min(k, len(ref))
    assert len(hits) == k, (len(hits), k)
    where = {v: j for j, v in enumerate(ids)}
    got = np.array([h.score for h in hits])
    true = ref[[where[h.video_id] for h in hits]]
    np.testing.assert_allclose(got, true, atol=atol, rtol=0)  # each hit carries its own true score
    np.testing.assert_allclose(got, ref[order[:k]], atol=atol, rtol=0)  # ... and they are the k best
    assert (np.diff(got) <= 0).all(), "hits not sorted best first"
    kth = ref[order[k - 1]]
    must = {ids[j] for j in np.flatnonzero(ref > kth + atol)}
    assert must <= {h.video_id for h in hits}, "a clearly better video is missing"
    top = ref[order[: k + 1]]
    if len(top) < 2 or (-np.diff(top) > 2 * atol).all():  # no near-ties: the order itself must match
        assert [h.video_id for h in hits] == [ids[j] for j in order[:k]]


@pytest.fixture
def ix() -> SimpleNamespace:
    """Helpers for the index tests (a fixture, since test modules here do not import each other)."""
    return SimpleNamespace(
        RULES=RULES,
        make_corpus=make_corpus,
        brute_force=brute_force,
        assert_same_topk=assert_same_topk,
        unit16=_unit16,
    )
