"""Retrieval and moment metrics (docs/models.md §1.5 PRVR protocol, §1.6 moments, §5.4 MUSE), in numpy.

Text-to-video ranks are 1-based: ``rank_i = 1 + #{j != gt_i : S[i, j] >= S[i, gt_i]}``.

**Ties are pessimistic**: a video that ties with the ground truth counts as ranked above it. Upstream breaks
ties by an unstable argsort (PRVR code) or in the ground truth's favour (CLIP4Clip). Both let a degenerate
model score well: with constant scores, favouring the ground truth gives every query rank 1 (R@1 = 100),
and argsort's order depends on the sort algorithm and on where the ground truth sits in the index. Counting
ties against the ground truth makes constant scores rank last (``Nv``), and is deterministic. With float
scores from a trained model exact ties are rare: on the demo models with float16-stored embeddings not one
of 387,600 (query, video) pairs tied the ground truth, and pessimistic, optimistic and argsort ranks gave
identical SumR (``bench/ties.py``, bench/RESULTS.md), so the numbers match upstream's in practice.

* ``R@K = 100 * mean(rank <= K)`` (percent); ``SumR = R@1 + R@5 + R@10 + R@100``;
* ``MdR`` / ``MnR`` = median / mean of the 1-based ranks, which is CLIP4Clip's ``median(r) + 1`` and
  ``mean(r) + 1`` on its 0-based ``r`` (the median of an even count averages the two middle ranks, as
  ``np.median`` does there);
* ``mAP`` = text-to-video mean average precision, in percent. Each query has exactly one relevant video,
  so its average precision is ``1 / rank`` and ``mAP = 100 * mean(1 / rank)`` (MS-SL reports it so).

Moment metrics compare predicted ``[start, end]`` spans with ground-truth spans (one pair per query):
``mIoU`` = mean temporal IoU and ``R@1,IoU>=t`` = share of queries whose top span has IoU >= t, both in
percent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError

__all__ = [
    "PRVR_KS",
    "mean_average_precision",
    "mean_rank",
    "median_rank",
    "moment_metrics",
    "prvr_metrics",
    "ranks",
    "recall_at_k",
    "sum_r",
    "temporal_iou",
]

PRVR_KS = (1, 5, 10, 100)


def ranks(scores: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """1-based rank of each query's ground-truth video, ties counted against it.

    Args:
        scores: ``r(Nq Nv)``, higher is better; must be finite.
        gt: int ``[Nq]``, the column of each query's ground-truth video.

    Returns:
        int64 ``[Nq]`` in ``1 .. Nv``: ``1 + #{j != gt_i : scores[i, j] >= scores[i, gt_i]}``.

    Raises:
        ShapeMismatchError: ``scores`` is not 2-D or ``gt`` is not ``[Nq]``.
        InvalidInputError: ``gt`` is not integer or out of range, or ``scores`` has a NaN/Inf (a NaN would
            compare false against everything and silently rank first).
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ShapeMismatchError(f"scores: expected a 2-D array [Nq, Nv], got shape {s.shape}")
    g = np.asarray(gt)
    if g.shape != (s.shape[0],):
        raise ShapeMismatchError(f"gt: expected shape ({s.shape[0]},) (one per row of scores), got {g.shape}")
    if g.size and not np.issubdtype(g.dtype, np.integer):
        raise InvalidInputError(f"gt: expected integer video indices, got dtype {g.dtype}")
    g = g.astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= s.shape[1]):
        bad = int(np.flatnonzero((g < 0) | (g >= s.shape[1]))[0])
        raise InvalidInputError(
            f"gt: expected indices in [0, {s.shape[1]}), got {int(g[bad])} for query {bad}"
        )
    finite = np.isfinite(s).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InvalidInputError(f"scores: expected finite values, got NaN/Inf in row {row}")
    s_gt = s[np.arange(s.shape[0]), g][:, None]  # [Nq, 1]
    # the ground truth compares >= with itself, which supplies the "1 +"
    return (s >= s_gt).sum(axis=1, dtype=np.int64)


def _check_ranks(r: np.ndarray) -> np.ndarray:
    arr = np.asarray(r)
    if arr.ndim != 1 or arr.size == 0:
        raise ShapeMismatchError(f"ranks: expected a non-empty 1-D array, got shape {arr.shape}")
    return arr


def recall_at_k(ranks: np.ndarray, ks: Iterable[int] = PRVR_KS) -> dict[str, float]:
    """``{"R@K": 100 * mean(ranks <= K)}`` for each K, in the order of ``ks``.

    Raises:
        ShapeMismatchError: ``ranks`` is not a non-empty 1-D array.
    """
    r = _check_ranks(ranks)
    return {f"R@{k}": float(100.0 * np.mean(r <= k)) for k in ks}


def sum_r(recalls: Mapping[str, float]) -> float:
    """SumR: the sum of the recall values (``R@1 + R@5 + R@10 + R@100`` for ``recall_at_k``'s default)."""
    return float(sum(recalls.values()))


def median_rank(ranks: np.ndarray) -> float:
    """MdR: median of the 1-based ranks (CLIP4Clip's ``median(r) + 1``)."""
    return float(np.median(_check_ranks(ranks)))


def mean_rank(ranks: np.ndarray) -> float:
    """MnR: mean of the 1-based ranks (CLIP4Clip's ``mean(r) + 1``)."""
    return float(np.mean(_check_ranks(ranks)))


def mean_average_precision(ranks: np.ndarray) -> float:
    """t2v mAP in percent with one relevant video per query: ``100 * mean(1 / rank)``."""
    return float(100.0 * np.mean(1.0 / _check_ranks(ranks)))


def prvr_metrics(scores: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The PRVR report for a score matrix: ``R@1, R@5, R@10, R@100, SumR``, ``MdR, MnR`` and ``mAP``.

    Args:
        scores: ``r(Nq Nv)`` query-to-video scores.
        gt: int ``[Nq]`` ground-truth video column of each query.

    Returns:
        ``{"R@1", "R@5", "R@10", "R@100", "SumR", "MdR", "MnR", "mAP"}`` as Python floats.

    Raises:
        As ``ranks``; also ShapeMismatchError for zero queries.
    """
    r = ranks(scores, gt)
    out = recall_at_k(r, PRVR_KS)
    out["SumR"] = sum_r(out)
    out["MdR"] = median_rank(r)
    out["MnR"] = mean_rank(r)
    out["mAP"] = mean_average_precision(r)
    return out


def _check_spans(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ShapeMismatchError(f"{name}: expected a 2-D array [N, 2] of [start, end], got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name}: expected finite spans, got NaN/Inf")
    backwards = np.flatnonzero(arr[:, 1] < arr[:, 0])
    if backwards.size:
        i = int(backwards[0])
        raise InvalidInputError(f"{name}: expected start <= end, got {arr[i].tolist()} in row {i}")
    return arr


def temporal_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Temporal IoU of paired spans: ``|pred_i ∩ gt_i| / |pred_i ∪ gt_i|``.

    Disjoint spans (and spans that only touch) give 0. When both spans have zero length the union is empty:
    the IoU is 1 if they are the same instant, else 0. A zero-length span against a real one gives 0.

    Args:
        pred: ``r(N 2)`` predicted ``[start, end]`` (seconds or frames; any unit shared with ``gt``).
        gt: ``r(N 2)`` ground-truth ``[start, end]``.

    Returns:
        float64 ``[N]`` in ``[0, 1]``.

    Raises:
        ShapeMismatchError: not ``[N, 2]`` or different ``N``.
        InvalidInputError: a span with ``end < start`` or a NaN/Inf.
    """
    p = _check_spans(pred, "pred")
    g = _check_spans(gt, "gt")
    if p.shape != g.shape:
        raise ShapeMismatchError(f"gt: expected shape {p.shape} like pred, got {g.shape}")
    inter = np.clip(np.minimum(p[:, 1], g[:, 1]) - np.maximum(p[:, 0], g[:, 0]), 0.0, None)
    union = (p[:, 1] - p[:, 0]) + (g[:, 1] - g[:, 0]) - inter
    same_instant = (union == 0) & (p[:, 0] == g[:, 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.where(same_instant, 1.0, iou)


def moment_metrics(
    pred: np.ndarray, gt: np.ndarray, thresholds: Iterable[float] = (0.5,)
) -> dict[str, float]:
    """Moment localisation quality of each query's top span: mIoU and R@1 at IoU thresholds, in percent.

    Args:
        pred: ``r(N 2)`` top-1 predicted ``[start, end]`` per query.
        gt: ``r(N 2)`` ground-truth ``[start, end]``.
        thresholds: IoU thresholds; each gives a key ``"R@1,IoU>=t"`` (``>=``, so IoU 0.5 counts at 0.5).

    Returns:
        ``{"mIoU": 100 * mean IoU, "R@1,IoU>=0.5": 100 * mean(IoU >= 0.5), ...}``.

    Raises:
        As ``temporal_iou``; ShapeMismatchError for zero spans.
    """
    iou = temporal_iou(pred, gt)
    if iou.size == 0:
        raise ShapeMismatchError("pred: expected at least one span, got shape (0, 2)")
    out = {"mIoU": float(100.0 * iou.mean())}
    for t in thresholds:
        out[f"R@1,IoU>={t:g}"] = float(100.0 * np.mean(iou >= t))
    return out
