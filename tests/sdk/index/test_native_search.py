"""``ExactIndex.search`` gives the brute-force answer with the native kernel on and with it forced off.

The oracle is the shared one of these tests (``prvr_sdk.scoring`` over the whole float16-rounded corpus,
``ix.brute_force``), compared tie-tolerantly (``ix.assert_same_topk``), plus the winning clip. With the
kernel on, ``f16dot.calls()`` proves it served every block for batches of up to ``MAX_NQ`` queries (and
not beyond, where BLAS is faster); with ``PRVR_NATIVE=off`` it must not run at all (numpy decode + BLAS).
"""

from __future__ import annotations

import numpy as np
import pytest

from prvr_sdk.index import ExactIndex
from prvr_sdk.native import f16dot


@pytest.mark.parametrize("kind", ["max_clip", "weighted", "video"])
@pytest.mark.parametrize("nq", [1, 3, 8, 40])
@pytest.mark.parametrize("mode", ["kernel", "off"])
def test_search_equals_brute_force(ix, monkeypatch, tmp_path, mode: str, nq: int, kind: str) -> None:
    if mode == "kernel" and f16dot.unavailable_reason() is not None:
        pytest.skip(f"native kernel unavailable: {f16dot.unavailable_reason()}")
    if mode == "off":
        monkeypatch.setenv("PRVR_NATIVE", "off")
    corpus = ix.make_corpus(num_videos=300, dim=37, ragged=True, num_queries=nq, seed=nq, max_clips=9)
    rule = ix.RULES[kind]
    index = ExactIndex(37, rule)
    index.add(
        corpus.ids,
        clip_embs=corpus.clips if rule.uses_clips else None,
        video_embs=corpus.video if rule.uses_video_emb else None,
        spans=corpus.spans if rule.uses_clips else None,
        metadata=corpus.metadata,
    )
    index.save(tmp_path / "index")
    index = ExactIndex.load(tmp_path / "index")  # float16, memory-mapped: what the kernel reads
    before = f16dot.calls()["dot"]
    hits = index.search(corpus.queries, top_k=7, block_size=400)  # several blocks, the last one short
    used = f16dot.calls()["dot"] - before
    if mode == "off" or nq > f16dot.MAX_NQ:
        assert used == 0
    else:
        assert used >= (2 if rule.uses_clips else 1)  # ~1500 clip rows: 4+ blocks; 300 video rows: 1
    ref, best = ix.brute_force(corpus, kind)
    for qi, row in enumerate(hits):
        ix.assert_same_topk(row, ref[qi], corpus.ids, 7, atol=1e-5)
        if best is not None:
            for hit in row:
                v = corpus.ids.index(hit.video_id)
                clip_scores = corpus.clips[v] @ corpus.queries[qi].astype(np.float32)
                assert clip_scores[hit.clip_index] >= clip_scores.max() - 1e-5  # a best clip, up to ties
