"""Streaming top-k over blocks of scores, with deterministic ties (higher score, then lower key, first).

Search scores the corpus block by block; ``TopK`` keeps the best ``k`` (score, key, extra) triples per
query seen so far, so memory is ``[Nq, k]`` whatever the corpus size. Keys are the caller's global row
numbers and must increase within each block; among equal scores the lower key wins, so results do not
depend on the block size or on how ``np.argpartition`` happens to break ties.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["TopK", "select_top_columns"]


def select_top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest scores of each row; ties go to the lower column.

    Args:
        scores: float32 ``[nq, n]`` with ``n > k``; no NaN.
        k: how many to keep (``1 <= k < n``).

    Returns:
        int64 ``[nq, k]`` column indices in increasing column order (not sorted by score).
    """
    nq, n = scores.shape
    kth = np.partition(scores, n - k, axis=1)[:, n - k : n - k + 1]  # the k-th largest of each row
    above = scores > kth
    tie = scores == kth
    need = k - above.sum(axis=1, keepdims=True)
    if not (tie.sum(axis=1, keepdims=True) == need).all():  # more ties than room: lower columns first
        tie &= np.cumsum(tie, axis=1) <= need
    return np.nonzero(above | tie)[1].reshape(nq, k)


class TopK:
    """The best ``k`` per query over all pushed blocks.

    Attributes after ``push``: ``scores`` float32 ``[nq, m]`` (best first), ``keys`` int64 ``[nq, m]``,
    ``extra`` int64 ``[nq, m]`` (an integer carried with each entry, e.g. the winning clip), ``m <= k``.
    """

    def __init__(self, num_queries: int, k: int) -> None:
        self.k = k
        self.scores = np.empty((num_queries, 0), dtype=np.float32)
        self.keys = np.empty((num_queries, 0), dtype=np.int64)
        self.extra = np.empty((num_queries, 0), dtype=np.int64)

    def push(
        self,
        scores: np.ndarray,
        keys: np.ndarray,
        extra: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """Merge a block.

        Args:
            scores: float32 ``[nq, n]``; ``-inf`` marks entries that must never be returned.
            keys: int64 ``[n]`` (same for every query) or ``[nq, n]``, increasing along each row.
            extra: int64 ``[nq, n]``; or a function mapping the chosen columns ``[nq, m]`` to their
                ``[nq, m]`` extras, so that costly extras (the winning clip) are computed for the few
                candidates only; or None (stored as -1).
        """
        nq, n = scores.shape
        if n == 0:
            return
        keys = np.broadcast_to(keys, (nq, n))
        if n > self.k:
            cols = select_top_columns(scores, self.k)
            scores = np.take_along_axis(scores, cols, axis=1)
            keys = np.take_along_axis(keys, cols, axis=1)
        else:
            cols = np.broadcast_to(np.arange(n), (nq, n))
        if extra is None:
            extra = np.full(cols.shape, -1, dtype=np.int64)
        elif callable(extra):
            extra = extra(cols)
        else:
            extra = np.take_along_axis(np.broadcast_to(extra, (nq, n)), cols, axis=1)
        all_scores = np.concatenate([self.scores, scores.astype(np.float32, copy=False)], axis=1)
        all_keys = np.concatenate([self.keys, keys], axis=1)
        all_extra = np.concatenate([self.extra, extra], axis=1)
        order = np.lexsort((all_keys, -all_scores), axis=1)[:, : self.k]
        self.scores = np.take_along_axis(all_scores, order, axis=1)
        self.keys = np.take_along_axis(all_keys, order, axis=1)
        self.extra = np.take_along_axis(all_extra, order, axis=1)

    def results(self, min_score: float | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per query: (scores, keys, extra), best first, without ``-inf`` or below-``min_score`` entries."""
        out = []
        for s, key, e in zip(self.scores, self.keys, self.extra, strict=True):
            keep = s > -np.inf if min_score is None else s >= min_score
            out.append((s[keep], key[keep], e[keep]))
        return out
