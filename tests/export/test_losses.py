"""Tests for prvr_export/losses.py: each loss against a case worked by hand.

The losses are described in docs/models.md §1.9, §4.4, §5.3.
"""

from __future__ import annotations

import math

import pytest
import torch

from prvr_export import losses
from prvr_sdk.errors import InvalidInputError, ShapeMismatchError


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_clip_nce_two_by_two_by_hand():
    scores = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    query_video = torch.tensor([0, 1])
    t2v = ((lse(1.0, 0.0) - 1.0) + (lse(0.5, 2.0) - 2.0)) / 2
    v2t = ((lse(1.0, 0.5) - 1.0) + (lse(0.0, 2.0) - 2.0)) / 2
    assert losses.clip_nce(scores, query_video).item() == pytest.approx(t2v + v2t, rel=1e-6)


def test_clip_nce_groups_several_queries_per_video():
    # Video 0 has queries 0 and 2 (not contiguous): its v2t positive term is a logsumexp over both.
    scores = torch.tensor([[1.0, 0.2], [0.1, 0.7], [0.4, 0.3]])
    query_video = torch.tensor([0, 1, 0])
    t2v = ((lse(1.0, 0.2) - 1.0) + (lse(0.1, 0.7) - 0.7) + (lse(0.4, 0.3) - 0.4)) / 3
    v2t = ((lse(1.0, 0.1, 0.4) - lse(1.0, 0.4)) + (lse(0.2, 0.7, 0.3) - 0.7)) / 2
    assert losses.clip_nce(scores, query_video).item() == pytest.approx(t2v + v2t, rel=1e-6)


def test_triplet_hard_mode_is_deterministic_and_matches_hand_computation():
    # 3 queries, 3 videos; query_video = [0, 0, 1]; video 2 has no query (only the t2v side sees it).
    scores = torch.tensor([[0.9, 0.3, 0.5], [0.2, 0.4, 0.1], [0.6, 0.8, 0.7]])
    query_video = torch.tensor([0, 0, 1])
    m = 0.2
    # t2v, hard, pool 1: the highest-scoring other video.
    t2v = (max(0, m + 0.5 - 0.9) + max(0, m + 0.4 - 0.2) + max(0, m + 0.7 - 0.8)) / 3
    # v2t: video 0: pos = mean(0.9, 0.2), hardest other query 0.6; video 1: pos 0.8, hardest max(0.3, 0.4).
    v2t = (max(0, m + 0.6 - 0.55) + max(0, m + 0.4 - 0.8)) / 3  # divided by B = 3
    values = {
        losses.triplet_sampled(scores, query_video, m, hard=True, hard_pool_size=1).item() for _ in range(5)
    }
    assert len(values) == 1
    assert values.pop() == pytest.approx(t2v + v2t, rel=1e-6)


def test_triplet_hard_pool_draws_only_from_the_top_negatives():
    # One query; GT video 0 scores 0.9, the others 0.1, 0.8, 0.5. Hard pool 2 -> negative 0.8 or 0.5 only.
    # v2t is 0: video 0 has no other video's query to rank, and videos 1..3 have no query.
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.5]])
    query_video = torch.tensor([0])
    m = 0.3
    allowed = {round(max(0.0, m + neg - 0.9), 6) for neg in (0.8, 0.5)}
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        loss = losses.triplet_sampled(scores, query_video, m, hard=True, hard_pool_size=2, generator=gen)
        seen.add(round(loss.item(), 6))
    assert seen == allowed


def test_triplet_random_mode_draws_every_other_video_and_never_the_positive():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.6, 0.0]])
    query_video = torch.tensor([0, 1])
    gen = torch.Generator().manual_seed(1)
    values = set()
    for _ in range(60):
        loss = losses.triplet_sampled(scores, query_video, 1.0, hard=False, generator=gen)
        values.add(round(loss.item(), 6))
    # t2v: q0 picks video 1 or 2 -> 0.2 / 0.3; q1 picks video 0 or 2 -> 0.7 / 0.4; mean over the 2 queries.
    # v2t: video 0: pos 0.9, the only other query scores 0.3 -> 0.4; video 1: pos 0.6, other 0.1 -> 0.5;
    # video 2 has no query; (0.4 + 0.5) / B=3 = 0.3.
    expected = {round((a + b) / 2 + 0.3, 6) for a in (0.2, 0.3) for b in (0.7, 0.4)}
    assert values == expected


def test_triplet_gradient_reaches_only_picked_entries():
    scores = torch.tensor([[0.9, 0.2, 0.5], [0.6, 0.8, 0.7]], requires_grad=True)
    loss = losses.triplet_sampled(scores, torch.tensor([0, 1]), 0.5, hard=True, hard_pool_size=1)
    loss.backward()
    # t2v (each / 2): q0: pos (0,0), neg (0,2), active; q1: pos (1,1), neg (1,2), active.
    # v2t (each / 3): video 0: pos (0,0), neg (1,0), 0.5 + 0.6 - 0.9 > 0 active; video 1: pos 0.8 vs neg 0.2,
    # inactive; video 2: no query.
    expected = torch.tensor([[-1 / 2 - 1 / 3, 0.0, 1 / 2], [1 / 3, -1 / 2, 1 / 2]])
    torch.testing.assert_close(scores.grad, expected)


def test_triplet_rejects_bad_pool_and_shapes():
    with pytest.raises(InvalidInputError):
        losses.triplet_sampled(torch.zeros(2, 2), torch.tensor([0, 1]), 0.1, hard=True, hard_pool_size=0)
    with pytest.raises(ShapeMismatchError, match="query_video"):
        losses.triplet_sampled(torch.zeros(2, 2), torch.tensor([0, 1, 1]), 0.1)


def test_query_diversity_formula_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])  # cos(0,1) = 0.6, cos(1,2) = 0.8, cos(0,2) = 0
    query_video = torch.tensor([0, 0, 1])
    delta, alpha = 0.2, 4.0
    # Column k sums over i != k of the same video: k=0 -> i=1; k=1 -> i=0; k=2 -> none.
    expected = (2 * math.log(1 + math.exp(alpha * (0.6 + delta))) + math.log(1)) / 3
    got = losses.query_diversity(q, query_video, delta, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_query_diversity_is_stable_for_large_alpha():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    got = losses.query_diversity(q, torch.tensor([0, 0]), 0.2, 1000.0)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(1200.0, rel=1e-5)  # log(1 + e^1200) = 1200


def test_moment_diversity_by_hand():
    masks = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    # Video 0: G = I -> ||0.15 I - I||^2 = 2 * 0.85^2; video 1: rows normalised to 0.5 -> G = 0.5 everywhere
    # -> diagonal (0.15 - 0.5)^2 twice + off-diagonal 0.5^2 twice.
    v0 = 2 * 0.85**2
    v1 = 2 * 0.35**2 + 2 * 0.25
    assert losses.moment_diversity(masks, 0.15).item() == pytest.approx((v0 + v1) / 2, rel=1e-6)


def test_moment_relevance_by_hand():
    queries = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    moments = torch.tensor([[[1.0, 1.0], [2.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])  # (B=2, K=2, D=2)
    video_vec = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    query_video = torch.tensor([0, 1])
    s = 1 / math.sqrt(2)
    # q0 -> video 0: best moment cos = max(s, 1) = 1, glob = 0 -> [0.02 + 0 - 1]+ = 0.
    # q1 -> video 1: best moment cos = max(0, 1) = 1, glob = s -> [0.02 + s - 1]+ = 0.
    assert losses.moment_relevance(queries, moments, video_vec, query_video, 0.02).item() == 0.0
    # Make the whole-video vector win for q0: glob = 1, best moment = s.
    moments0 = torch.tensor([[[1.0, 1.0], [-1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    video_vec0 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = (max(0.0, 0.02 + 1.0 - s) + 0.0) / 2
    got = losses.moment_relevance(queries, moments0, video_vec0, query_video, 0.02)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_infonce_by_hand():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    rows = ((lse(2.0, 0.0) - 2.0) + (lse(1.0, 3.0) - 3.0)) / 2
    cols = ((lse(2.0, 1.0) - 2.0) + (lse(0.0, 3.0) - 3.0)) / 2
    assert losses.symmetric_infonce(logits).item() == pytest.approx((rows + cols) / 2, rel=1e-6)
    with pytest.raises(ShapeMismatchError):
        losses.symmetric_infonce(torch.zeros(2, 3))
