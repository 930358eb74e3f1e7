"""Streaming top-k: equal to a global sort by (score desc, key asc), however the stream is cut."""

from __future__ import annotations

import numpy as np
import pytest

from prvr_sdk.index.topk import TopK, select_top_columns


def reference(scores: np.ndarray, k: int):
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 10])
def test_streamed_top_k_equals_a_global_sort_with_many_ties(seed, k):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(4, 97)).astype(np.float32)  # heavy ties
    scores[:, rng.integers(0, 97, size=10)] = -np.inf  # masked entries
    want_scores, want_keys = reference(scores, k)
    cuts = np.sort(rng.choice(np.arange(1, 97), size=6, replace=False))
    acc = TopK(4, k)
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, 97], strict=True):
        acc.push(scores[:, lo:hi], np.arange(lo, hi), np.broadcast_to(np.arange(lo, hi) * 10, (4, hi - lo)))
    np.testing.assert_array_equal(acc.scores, want_scores)
    np.testing.assert_array_equal(acc.keys, want_keys)
    np.testing.assert_array_equal(acc.extra, want_keys * 10)
    for row, (s, _, _) in enumerate(acc.results()):
        assert np.isfinite(s).all() and len(s) == min(k, np.isfinite(scores[row]).sum())


def test_select_top_columns_prefers_lower_columns_on_ties():
    scores = np.array([[1, 3, 3, 3, 2, 3]], dtype=np.float32)
    np.testing.assert_array_equal(select_top_columns(scores, 2), [[1, 2]])
    np.testing.assert_array_equal(select_top_columns(scores, 5), [[1, 2, 3, 4, 5]])


def test_min_score_drops_weak_entries():
    acc = TopK(1, 3)
    acc.push(np.array([[0.1, 0.9, 0.5, 0.7]], dtype=np.float32), np.arange(4))
    s, keys, _ = acc.results(min_score=0.6)[0]
    np.testing.assert_array_equal(keys, [1, 3])
