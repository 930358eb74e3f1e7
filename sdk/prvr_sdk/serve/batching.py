"""``Coalescer``: concurrent searches that arrive while one runs are searched together, in one pass.

An exact search reads the whole clip matrix (768 MiB at 1M clips x 384, float16), and the native kernel
scores up to ``f16dot.MAX_NQ`` queries per read of it, so K queries searched together cost far less than
K searches one after another (``bench/serve.py``). The server therefore funnels ``ExactIndex.search``
through one thread per worker: a request queues its query embeddings and waits; the thread takes
everything queued (up to ``max_queries`` queries), searches requests that share an index version,
filter and ``group_by`` as one batch with the largest ``top_k`` among them, and hands each request its
own rows cut to its ``top_k`` and ``min_score``. Nothing waits for company: one lone request is searched
at once (latency unchanged but for a thread hand-off), and batches form only when requests overlap.

Results equal separate searches: a query's hits do not depend on the other queries of its batch, and the
top ``k`` of a query are the first ``k`` of its top ``k' >= k`` (ties are ordered by score, then insertion
order, in both); scores may differ in the last float32 bits, because a batch can take another product path
than one query (``ExactIndex.search``: equal products up to summation order), so two hits whose scores tie
to ~1e-7 may swap. A batch that raises is retried request by request, so a bad request fails alone.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prvr_sdk.hits import Hit
from prvr_sdk.index import ExactIndex

__all__ = ["Coalescer"]


@dataclass(eq=False)
class _Job:
    index: ExactIndex
    queries: np.ndarray  # [n, D]
    top_k: int
    filter: Mapping[str, Any] | None
    group_by: str
    min_score: float | None
    done: threading.Event = field(default_factory=threading.Event)
    result: list[list[Hit]] | None = None
    error: BaseException | None = None

    def key(self) -> tuple:
        shape = None if self.filter is None else json.dumps(self.filter, sort_keys=True, default=repr)
        return id(self.index), shape, self.group_by


def _cut(hits: list[Hit], top_k: int, min_score: float | None) -> list[Hit]:
    hits = hits[:top_k]
    if min_score is None:
        return hits
    bound = np.float32(min_score)  # the index compares its float32 scores with a float32 bound
    return [h for h in hits if np.float32(h.score) >= bound]


class Coalescer:
    """One search thread that batches overlapping requests (see the module docstring).

    Args:
        max_queries: most queries searched in one pass (default 64: the native kernel's batch).
    """

    def __init__(self, max_queries: int = 64) -> None:
        self.max_queries = max_queries
        self._cv = threading.Condition()
        self._queue: list[_Job] = []
        self._thread: threading.Thread | None = None
        self.batches = 0  # passes run, and requests served by them (batching ratio = requests / batches)
        self.requests = 0

    def search(
        self,
        index: ExactIndex,
        queries: np.ndarray,
        top_k: int,
        filter: Mapping[str, Any] | None = None,
        group_by: str = "video",
        min_score: float | None = None,
    ) -> list[list[Hit]]:
        """``index.search(queries [n, D], ...)`` (one list of hits per query), possibly batched with
        other callers'. Raises what ``ExactIndex.search`` raises for these arguments."""
        job = _Job(index, np.atleast_2d(queries), top_k, filter, group_by, min_score)
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="prvr-search", daemon=True)
                self._thread.start()
            self._queue.append(job)
            self._cv.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _take(self) -> list[_Job]:
        with self._cv:
            while not self._queue:
                self._cv.wait()
            taken, total = [], 0
            while self._queue and (not taken or total + len(self._queue[0].queries) <= self.max_queries):
                job = self._queue.pop(0)
                taken.append(job)
                total += len(job.queries)
            return taken

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key(), []).append(job)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[_Job]) -> None:
        self.batches += 1
        self.requests += len(group)
        if len(group) > 1:
            first = group[0]
            try:
                found = first.index.search(
                    np.concatenate([job.queries for job in group]),
                    top_k=max(job.top_k for job in group),
                    filter=first.filter,
                    group_by=first.group_by,  # type: ignore[arg-type]
                )
            except BaseException:  # noqa: BLE001 - retried one by one below, so the culprit gets the error
                found = None
            if found is not None:
                row = 0
                for job in group:
                    mine = found[row : row + len(job.queries)]
                    job.result = [_cut(hits, job.top_k, job.min_score) for hits in mine]
                    row += len(job.queries)
                    job.done.set()
                return
        for job in group:
            try:
                job.result = job.index.search(
                    job.queries, top_k=job.top_k, filter=job.filter, group_by=job.group_by,  # type: ignore[arg-type]
                    min_score=job.min_score,
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                job.error = exc
            job.done.set()
