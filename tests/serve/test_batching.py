"""The search coalescer: overlapping requests searched in one pass get exactly what separate searches give."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.index import ExactIndex
from prvr_sdk.serve.batching import Coalescer

DIM = 16


def assert_same(got: list[list], want: list[list]) -> None:
    """Same hits (ids, moments, metadata) in the same order; scores equal up to float32 summation order (a
    batch of queries may take another product path than a single query)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert [(h.video_id, h.start, h.end, h.clip_index, h.metadata) for h in g] == [
            (h.video_id, h.start, h.end, h.clip_index, h.metadata) for h in w
        ]
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], rtol=0, atol=1e-6)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def index() -> ExactIndex:
    rng = np.random.default_rng(3)
    n = 40
    index = ExactIndex(DIM, "max_clip")
    clips = [_unit(rng.standard_normal((int(c), DIM))) for c in rng.integers(1, 6, size=n)]
    spans = [np.stack([np.arange(len(c)), np.arange(1, len(c) + 1)], 1).astype(float) for c in clips]
    meta = [{"g": i % 3} for i in range(n)]
    index.add([f"v{i}" for i in range(n)], clip_embs=clips, spans=spans, metadata=meta)
    return index


class Gated:
    """An index whose first search waits for ``open``: keeps the search thread busy while requests queue."""

    def __init__(self, index: ExactIndex) -> None:
        self.index, self.open, self.calls = index, threading.Event(), []

    def search(self, queries, **kwargs):
        self.calls.append(len(queries))
        if len(self.calls) == 1:
            assert self.open.wait(10)
        return self.index.search(queries, **kwargs)


def test_overlapping_requests_are_batched_and_equal_separate_searches(index):
    rng = np.random.default_rng(5)
    gated, coalescer = Gated(index), Coalescer(max_queries=64)
    jobs = [  # (queries, top_k, filter, min_score)
        (_unit(rng.standard_normal((1, DIM))), 3, None, None),  # the one that holds the thread
        (_unit(rng.standard_normal((2, DIM))), 5, None, None),
        (_unit(rng.standard_normal((1, DIM))), 1, None, 0.1),
        (_unit(rng.standard_normal((3, DIM))), 12, None, -1.0),
        (_unit(rng.standard_normal((1, DIM))), 4, {"g": 1}, None),
        (_unit(rng.standard_normal((1, DIM))), 7, {"g": 1}, 0.2),
        (np.full((1, DIM), 0.5, dtype=np.float32), 3, None, None),  # not unit: fails, alone
    ]
    results: dict[int, object] = {}

    def call(i: int) -> None:
        q, k, f, m = jobs[i]
        try:
            results[i] = coalescer.search(gated, q, top_k=k, filter=f, min_score=m)
        except Exception as exc:  # noqa: BLE001 - compared below
            results[i] = exc

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    while not gated.calls:
        time.sleep(0.005)
    threads += [threading.Thread(target=call, args=(i,)) for i in range(1, len(jobs))]
    for t in threads[1:]:
        t.start()
    while len(coalescer._queue) < len(jobs) - 1:  # noqa: SLF001 - wait until all queued behind the first
        time.sleep(0.005)
    gated.open.set()
    for t in threads:
        t.join(10)
    for i, (q, k, f, m) in enumerate(jobs[:-1]):
        assert_same(results[i], index.search(q, top_k=k, filter=f, min_score=m))
    assert isinstance(results[len(jobs) - 1], InvalidInputError) and "unit" in str(results[len(jobs) - 1])
    # first alone; then the unfiltered four (2+1+3+1 = 7 queries: one pass that fails on the bad one, then
    # one search each), and the two with {"g": 1} as one pass of 2 queries
    assert gated.calls[0] == 1 and 2 in gated.calls and 7 in gated.calls
    assert coalescer.requests == len(jobs) and coalescer.batches == 3


def test_a_lone_request_is_searched_at_once_and_errors_pass_through(index):
    coalescer = Coalescer()
    q = _unit(np.random.default_rng(1).standard_normal((2, DIM)))
    got = coalescer.search(index, q, top_k=4, group_by="clip")
    assert_same(got, index.search(q, top_k=4, group_by="clip"))
    with pytest.raises(ShapeMismatchError):
        coalescer.search(index, q[:, :-1], top_k=4)
    assert coalescer.batches == 2 and coalescer.requests == 2


def test_a_batch_never_exceeds_max_queries(index):
    coalescer, gated = Coalescer(max_queries=4), Gated(index)
    rng = np.random.default_rng(2)
    qs = [_unit(rng.standard_normal((n, DIM))) for n in (1, 3, 2, 2, 1)]
    out: dict[int, list] = {}

    def call(i: int) -> None:
        out[i] = coalescer.search(gated, qs[i], top_k=2)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(qs))]
    threads[0].start()
    while not gated.calls:
        time.sleep(0.005)
    for t in threads[1:]:
        t.start()
    while len(coalescer._queue) < len(qs) - 1:  # noqa: SLF001
        time.sleep(0.005)
    gated.open.set()
    for t in threads:
        t.join(10)
    assert max(gated.calls) <= 4 and sum(gated.calls) == 9
    for i, q in enumerate(qs):
        assert_same(out[i], index.search(q, top_k=2))
