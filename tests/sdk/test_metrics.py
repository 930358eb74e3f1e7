"""Tests for sdk/prvr_sdk/metrics.py: hand-ranked cases (ties included), CLIP4Clip's formula, IoU by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.metrics import (
    mean_rank,
    median_rank,
    moment_metrics,
    prvr_metrics,
    ranks,
    recall_at_k,
    sum_r,
    temporal_iou,
)


def clip4clip_metrics(x: np.ndarray) -> dict[str, float]:
    """CLIP4Clip's compute_metrics (docs/models.md §5.4), GT on the diagonal:
    0-based r, R@K, MdR = median + 1.
    """
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, None]
    ind = np.where(sx - d == 0)[1]
    return {
        "R@1": 100.0 * np.sum(ind == 0) / len(ind),
        "R@5": 100.0 * np.sum(ind < 5) / len(ind),
        "R@10": 100.0 * np.sum(ind < 10) / len(ind),
        "MdR": float(np.median(ind)) + 1,
        "MnR": float(np.mean(ind)) + 1,
    }


def test_ranks_hand_worked_with_pessimistic_ties():
    scores = np.array(
        [
            [0.9, 0.5, 0.5, 0.1],
            [0.9, 0.5, 0.5, 0.1],
            [0.9, 0.5, 0.5, 0.1],
            [0.2, 0.2, 0.2, 0.2],
            [0.1, 0.3, 0.2, 0.4],
        ]
    )
    gt = np.array([0, 1, 2, 1, 2])
    # row 0: gt 0.9 is alone at the top                    -> 1
    # rows 1, 2: gt 0.5 ties the other 0.5, below 0.9     -> 1 + 2 = 3 (both of them, not 2 and 3)
    # row 3: constant scores, the other three all tie     -> 4 (last)
    # row 4: gt 0.2 is below 0.3 and 0.4                  -> 3
    got = ranks(scores, gt)
    np.testing.assert_array_equal(got, [1, 3, 3, 4, 3])
    assert got.dtype == np.int64


def test_constant_scores_rank_last():
    r = ranks(np.zeros((6, 6)), np.arange(6))
    np.testing.assert_array_equal(r, 6)
    m = prvr_metrics(np.zeros((6, 6)), np.arange(6))
    assert m["R@1"] == 0.0 and m["R@5"] == 0.0 and m["R@10"] == 100.0 and m["MdR"] == 6.0


def test_recall_and_rank_summaries_hand_worked():
    r = np.array([1, 3, 2, 7, 150])
    rec = recall_at_k(r)
    assert rec == {"R@1": 20.0, "R@5": 60.0, "R@10": 80.0, "R@100": 80.0}
    assert list(rec) == ["R@1", "R@5", "R@10", "R@100"]
    assert sum_r(rec) == 240.0
    assert median_rank(r) == 3.0
    assert mean_rank(r) == pytest.approx(32.6)  # (1 + 3 + 2 + 7 + 150) / 5
    assert median_rank(np.array([1, 2, 3, 10])) == 2.5  # even count: mean of the middle two
    assert recall_at_k(r, ks=(2, 3)) == {"R@2": 40.0, "R@3": 60.0}


def test_prvr_metrics_hand_worked():
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1], [0.3, 0.2, 0.1], [0.0, 0.5, 0.5]])
    gt = np.array([0, 1, 2, 2])  # ranks 1, 2, 3, 2 (tie with column 1 counts against)
    m = prvr_metrics(scores, gt)
    assert m == pytest.approx({
        "R@1": 25.0,
        "R@5": 100.0,
        "R@10": 100.0,
        "R@100": 100.0,
        "SumR": 325.0,
        "MdR": 2.0,
        "MnR": 2.0,
        "mAP": 100 * (1 / 1 + 1 / 2 + 1 / 3 + 1 / 2) / 4,  # one relevant video: AP = 1 / rank
    }, rel=1e-12)
    assert all(type(v) is float for v in m.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prvr_metrics_match_clip4clip_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = 60
    # a weak diagonal signal so that ranks spread over 1..n
    x = rng.standard_normal((n, n)) + 1.5 * np.eye(n)
    want = clip4clip_metrics(x)
    got = prvr_metrics(x, np.arange(n))
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert got["R@100"] == 100.0


def test_prvr_metrics_non_diagonal_gt_against_sorting():
    rng = np.random.default_rng(9)
    scores = rng.standard_normal((40, 130))
    gt = rng.integers(0, 130, size=40)
    order = np.argsort(-scores, axis=1)  # no ties with continuous random scores
    want = np.array([int(np.flatnonzero(order[i] == gt[i])[0]) + 1 for i in range(40)])
    np.testing.assert_array_equal(ranks(scores, gt), want)
    assert prvr_metrics(scores, gt)["R@100"] == pytest.approx(100.0 * np.mean(want <= 100))


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.integers(-3, 3), min_size=4, max_size=4),
        min_size=1,
        max_size=6,
    ),
    data=st.data(),
)
def test_ranks_property_counts_ties_against_gt(rows, data):
    scores = np.array(rows, dtype=np.float32)  # small integers: plenty of ties
    gt = np.array([data.draw(st.integers(0, 3)) for _ in rows])
    r = ranks(scores, gt)
    for i, row in enumerate(rows):
        above_or_tied = sum(1 for j, s in enumerate(row) if j != gt[i] and s >= row[gt[i]])
        assert r[i] == 1 + above_or_tied
        # same as sorting by score descending with the gt placed after every video it ties with
        is_gt = np.arange(4) == gt[i]
        order = np.lexsort((is_gt, -np.array(row)))
        assert r[i] == int(np.flatnonzero(order == gt[i])[0]) + 1


def test_ranks_errors():
    with pytest.raises(ShapeMismatchError, match=r"scores: expected a 2-D array"):
        ranks(np.zeros(3), np.zeros(3, int))
    with pytest.raises(ShapeMismatchError, match=r"gt: expected shape \(2,\)"):
        ranks(np.zeros((2, 3)), np.zeros(3, int))
    with pytest.raises(InvalidInputError, match="gt: expected integer"):
        ranks(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(InvalidInputError, match=r"gt: expected indices in \[0, 3\), got 3 for query 1"):
        ranks(np.zeros((2, 3)), np.array([0, 3]))
    bad = np.zeros((3, 3))
    bad[2, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN/Inf in row 2"):
        ranks(bad, np.arange(3))
    with pytest.raises(ShapeMismatchError, match="ranks: expected a non-empty 1-D array"):
        recall_at_k(np.array([], dtype=int))


# --- temporal IoU and moment metrics ------------------------------------------------------------------------


def test_temporal_iou_hand_worked():
    pred = [[0, 1], [0, 2], [0, 1], [0, 1], [1, 2], [1, 1], [1, 1], [1, 1], [3, 7], [2.5, 4.0]]
    gt = [[0, 2], [1, 3], [2, 3], [1, 2], [0, 4], [0, 2], [1, 1], [2, 2], [3, 7], [3.0, 5.0]]
    want = [
        0.5,  # inside, half the length
        1 / 3,  # overlap 1 of union 3
        0.0,  # disjoint
        0.0,  # touching at one instant
        0.25,  # contained: 1 of 4
        0.0,  # zero-length inside a real span
        1.0,  # the same instant
        0.0,  # two different instants
        1.0,  # identical
        0.4,  # overlap [3, 4] = 1 of union [2.5, 5] = 2.5
    ]
    np.testing.assert_allclose(temporal_iou(pred, gt), want, rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    spans=st.lists(
        st.tuples(*[st.floats(0, 100, allow_nan=False) for _ in range(4)]),
        min_size=1,
        max_size=8,
    )
)
def test_temporal_iou_properties(spans):
    pred = np.array([[min(a, b), max(a, b)] for a, b, _, _ in spans])
    gt = np.array([[min(c, d), max(c, d)] for _, _, c, d in spans])
    iou = temporal_iou(pred, gt)
    assert ((iou >= 0) & (iou <= 1)).all()
    np.testing.assert_allclose(iou, temporal_iou(gt, pred))  # symmetric
    np.testing.assert_array_equal(temporal_iou(pred, pred), 1.0)


def test_temporal_iou_errors():
    with pytest.raises(InvalidInputError, match=r"pred: expected start <= end, got \[2.0, 1.0\] in row 1"):
        temporal_iou([[0, 1], [2, 1]], [[0, 1], [0, 1]])
    with pytest.raises(ShapeMismatchError, match=r"gt: expected a 2-D array \[N, 2\]"):
        temporal_iou([[0, 1]], [0, 1])
    with pytest.raises(ShapeMismatchError, match=r"gt: expected shape \(1, 2\) like pred"):
        temporal_iou([[0, 1]], [[0, 1], [0, 1]])
    with pytest.raises(InvalidInputError, match="finite"):
        temporal_iou([[0, np.nan]], [[0, 1]])


def test_moment_metrics_hand_worked():
    pred = [[0, 1], [0, 2], [3, 7], [0, 1]]
    gt = [[0, 2], [1, 3], [3, 7], [2, 3]]
    # IoUs 0.5, 1/3, 1, 0: mIoU = 100 * (11/6) / 4; IoU >= 0.5 for 2 of 4 (0.5 itself counts)
    m = moment_metrics(pred, gt)
    assert m == {"mIoU": pytest.approx(100 * (11 / 6) / 4), "R@1,IoU>=0.5": 50.0}
    m = moment_metrics(pred, gt, thresholds=(0.3, 0.7))
    assert m["R@1,IoU>=0.3"] == 75.0 and m["R@1,IoU>=0.7"] == 25.0
    with pytest.raises(ShapeMismatchError, match="at least one span"):
        moment_metrics(np.zeros((0, 2)), np.zeros((0, 2)))


def test_map_matches_scikit_learn_average_precision():
    """Oracle: scikit-learn's average precision per query (one positive each), on tie-free scores."""
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((40, 25)) + 2.0 * np.eye(40, 25)
    gt = np.arange(40) % 25
    labels = np.zeros_like(scores, dtype=int)
    labels[np.arange(40), gt] = 1
    per_query = [metrics.average_precision_score(y, s) for y, s in zip(labels, scores, strict=True)]
    expected = 100 * np.mean(per_query)
    assert prvr_metrics(scores, gt)["mAP"] == pytest.approx(expected, rel=1e-12)
