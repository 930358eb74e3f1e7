"""The PRVR evaluation protocol, once, without torch: scores, winning clips and spans in, metrics out.

Training-time validation and ``prvr eval --checkpoint`` (``prvr_export.train.evaluate``: the torch model
encodes) and ``prvr eval --bundle`` (``evaluate_bundle`` here: the runtime ``Retriever`` encodes) both hand
their encodings to ``evaluate_scores``, so the two can only differ by the encoders' numerics.

Protocol: every video of the split is encoded once; every caption of the split is a query whose ground
truth is its caption's video; the query-to-video score is the model's rule (``ServingSpec.scoring``).
Ranks, R@K, SumR, MdR, MnR and mAP come from ``prvr_sdk.metrics`` (ties count against the ground truth).
Moment localisation, when the collection records spans: the query's winning clip (or learned moment) **in
its ground-truth video** is turned into seconds -- uniform clips with ``uniform_clip_spans`` over the
video's frame times, learned moments with ``anchor_spans`` -- and compared with the true span (mIoU, R@1 at
IoU >= 0.5). Queries whose video's timing is unknown are left out of the moment metrics and counted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from prvr_sdk.errors import InvalidInputError
from prvr_sdk.metrics import moment_metrics, prvr_metrics

__all__ = ["evaluate_bundle", "evaluate_scores"]

SpanSource = Callable[[int], "np.ndarray | None"]


def evaluate_scores(
    scores: np.ndarray,
    gt: np.ndarray,
    *,
    best_clip: np.ndarray | None = None,
    clip_spans: SpanSource | None = None,
    true_spans: Sequence[tuple[float, float] | None] | None = None,
) -> dict[str, float]:
    """Metrics of one split from its score matrix.

    Args:
        scores: ``[Nq, Nv]`` query-to-video scores (finite).
        gt: int ``[Nq]``: the column of each query's ground-truth video.
        best_clip: int ``[Nq]``: each query's winning clip (moment) index in its ground-truth video, or
            None for models that score one vector per video.
        clip_spans: ``video column -> [Nc, 2]`` seconds of that video's clips (None: timing unknown).
        true_spans: per query ``(start, end)`` seconds, or None where the collection has no span.

    Returns:
        ``R@1 R@5 R@10 R@100 SumR MdR MnR mAP`` (percent for R@K and mAP), ``queries``, ``videos``, and
        ``mIoU``, ``R@1,IoU>=0.5``, ``moment_queries`` when spans and winning clips exist; then also
        ``moment_skipped`` (queries with a true span whose video timing is unknown).

    Raises:
        InvalidInputError: NaN/Inf scores (naming how many queries), or mismatched lengths.
    """
    scores = np.asarray(scores)
    gt = np.asarray(gt, dtype=np.int64)
    if scores.ndim == 2 and not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).any(axis=1).sum())
        raise InvalidInputError(
            f"{bad} of {len(scores)} queries have NaN/Inf scores (NaN in the features, or the model diverged)"
        )
    metrics: dict[str, float] = dict(prvr_metrics(scores, gt))
    metrics["queries"] = int(scores.shape[0])
    metrics["videos"] = int(scores.shape[1])
    if best_clip is None or clip_spans is None or true_spans is None:
        return metrics
    if len(best_clip) != len(gt) or len(true_spans) != len(gt):
        raise InvalidInputError(
            f"best_clip ({len(best_clip)}) and true_spans ({len(true_spans)}) need one entry per query "
            f"({len(gt)})"
        )
    pred, true, skipped = [], [], 0
    cache: dict[int, np.ndarray | None] = {}
    for q, span in enumerate(true_spans):
        if span is None:
            continue
        video = int(gt[q])
        if video not in cache:
            cache[video] = clip_spans(video)
        spans = cache[video]
        guess = None if spans is None else spans[int(best_clip[q])]
        if guess is None or not np.isfinite(guess).all():
            skipped += 1
            continue
        pred.append(guess)
        true.append(span)
    if pred:
        found = moment_metrics(np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64))
        metrics.update({k: float(v) for k, v in found.items()})
        metrics["moment_queries"] = len(pred)
        metrics["moment_skipped"] = skipped
    return metrics


def evaluate_bundle(
    bundle: str | os.PathLike,
    data_root: str | os.PathLike,
    split: str = "test",
    *,
    dataset: str | None = None,
    text: str = "features",
    backend: str = "auto",
    device: str = "auto",
    trusted_keys: list | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """The protocol through an exported bundle with the runtime ``Retriever`` (no torch anywhere).

    Videos go in as stored raw features (the Retriever pools them) and queries as stored features
    (``text="features"``, so the numbers match ``prvr eval --checkpoint`` to float tolerance) or as caption
    strings through the bundle's text front end (``text="strings"``: the whole serving path).

    Returns:
        ``evaluate_scores``' metrics plus ``model``, ``dataset``, ``split``, ``bundle``, ``backend``,
        ``text`` and ``headline`` (the metric names to show first, from the bundle's serving spec).
    Raises:
        InvalidInputError: unknown ``text`` mode, empty split, videos with different feature rates, or
            strings for a bundle without a front end.
    """
    from types import SimpleNamespace

    from prvr_sdk import Retriever
    from prvr_sdk.data import open_collection

    if text not in ("features", "strings"):
        raise InvalidInputError(f"text: expected 'features' or 'strings', got {text!r}")
    retriever = Retriever.from_bundle(
        bundle, backend=backend, device=device, precision=precision, trusted_keys=trusted_keys
    )
    manifest = retriever.manifest
    config = SimpleNamespace(**manifest["model"]["config"])
    dataset = dataset or manifest["model"]["dataset"]
    data = open_collection(dataset, data_root, config, cache=False)
    video_ids, captions = data.video_ids(split), data.captions(split)
    if not video_ids or not captions:
        raise InvalidInputError(
            f"split {split!r} of {data!r} has {len(video_ids)} videos and {len(captions)} queries"
        )
    rates = {(data.timing(vid) or (None, None))[1] for vid in video_ids} - {None}
    if len(rates) > 1:
        raise InvalidInputError(f"{data!r}: videos of {split!r} have different feature rates {sorted(rates)}")
    videos = retriever.encode_video(
        ((vid, data.raw_video(vid)) for vid in video_ids), fps=rates.pop() if rates else None
    )
    if text == "strings":
        queries = retriever.encode_text([c.text for c in captions])
    else:
        queries = retriever.encode_text([data.raw_query(c.cap_id) for c in captions])
    scores, best = retriever.score(queries, videos)
    position = {vid: i for i, vid in enumerate(video_ids)}
    gt = np.array([position[c.video_id] for c in captions], dtype=np.int64)
    winners = None if best is None else best[np.arange(len(gt)), gt]
    metrics = evaluate_scores(
        scores,
        gt,
        best_clip=winners,
        clip_spans=None if videos.spans is None else videos.clip_spans,
        true_spans=[data.span(c.cap_id) for c in captions],
    )
    return {
        "model": retriever.model_name,
        "dataset": dataset,
        "split": split,
        "bundle": str(bundle),
        "backend": f"{retriever.choice.backend} ({retriever.choice.device})",
        "precision": precision,
        "text": text,
        "headline": list(retriever.spec.headline),
        **metrics,
    }
