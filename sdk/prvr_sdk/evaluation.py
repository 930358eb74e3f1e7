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

The metrics stay numbers (training records them as such); why moment metrics are missing or partial is
derived from their counters by ``moment_skip_reason``, with ``meta_hint`` naming what the collection's
metadata file lacks. ``evaluate_bundle`` and ``prvr eval`` add that sentence as ``moment_skipped_reason``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prvr_sdk.errors import InvalidInputError
from prvr_sdk.metrics import moment_metrics, prvr_metrics

__all__ = ["evaluate_bundle", "evaluate_scores", "meta_hint", "moment_skip_reason"]

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
        ``R@1 R@5 R@10 R@100 SumR MdR MnR mAP`` (percent for R@K and mAP), ``queries``, ``videos``,
        ``moment_spans`` (queries with a true span), ``moment_capable`` (1 when the model gives a winning
        clip with times, else 0); when both are non-zero ``moment_queries`` (compared) and
        ``moment_skipped`` (a true span, but the video's timing is unknown), plus ``mIoU`` and
        ``R@1,IoU>=0.5`` when ``moment_queries`` > 0. All numbers; see ``moment_skip_reason``.

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
    metrics["moment_spans"] = 0 if true_spans is None else sum(span is not None for span in true_spans)
    metrics["moment_capable"] = int(best_clip is not None and clip_spans is not None)
    if not metrics["moment_capable"] or not metrics["moment_spans"]:
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


def moment_skip_reason(result: Mapping[str, Any], hint: str | None = None) -> str | None:
    """Why ``result`` (``evaluate_scores``' metrics) has no, or only partial, moment metrics; None if none
    was skipped.

    Args:
        result: the metrics, with ``queries``, ``moment_spans``, ``moment_capable`` (and ``moment_skipped``).
        hint: what the collection's metadata lacks (``meta_hint``), appended where spans or timing are
            missing.
    """
    if "moment_capable" not in result:
        return None
    suffix = f" ({hint})" if hint else ""
    if not result["moment_capable"]:
        return "the model scores whole videos and gives no winning clip, so it predicts no moments"
    queries, spans = int(result["queries"]), int(result["moment_spans"])
    if spans == 0:
        return (
            "no query of this split has a ground-truth [start, end] span" + suffix if hint else
            "no query of this split has a ground-truth [start, end] span (the collection's "
            "TextData/<collection>_meta.json gives them; write it with `prvr data annotations`)"
        )
    parts = []
    skipped = int(result.get("moment_skipped", 0))
    if skipped:
        parts.append(
            f"{skipped} of {spans} queries with a span were left out: their video's timing is unknown (the "
            "metadata needs 'fps' and the video's 'duration' or 'num_frames')" + suffix
        )
    if spans < queries:
        parts.append(f"{queries - spans} of {queries} queries have no ground-truth span" + suffix)
    return "; ".join(parts) or None


def meta_hint(dataset: str, data_root: str | os.PathLike, split: str) -> str | None:
    """What the collection's metadata file lacks for moment metrics on ``split``, as one sentence (with
    the command that writes it), or None when it looks complete."""
    from prvr_sdk.data import read_captions, read_meta
    from prvr_sdk.data.annotations import ANNOTATION_DATASETS, meta_path
    from prvr_sdk.data.layout import caption_path

    try:
        path = meta_path(data_root, dataset)
    except InvalidInputError:
        return None
    command = (
        f"`prvr data annotations --dataset {dataset} --from FILE... --data-root {data_root}` writes it from "
        "the public annotations" if dataset in ANNOTATION_DATASETS else "docs/models.md §1.6 gives its format"
    )
    if not path.is_file():
        return f"no {path}; {command}"
    try:
        meta = read_meta(path)
        captions = read_captions(caption_path(Path(data_root), dataset, split))
    except InvalidInputError as exc:
        return str(exc)
    spans = meta.get("captions", {})
    if not any(isinstance(spans.get(c.cap_id), dict) and spans[c.cap_id].get("span") for c in captions):
        return f"{path} has no span for any caption of {split!r}; {command}"
    videos = meta.get("videos", {})
    if meta.get("fps") is None and not any(isinstance(v, dict) and v.get("fps") for v in videos.values()):
        return f"{path} has no 'fps' (feature rows per second); rerun `prvr data annotations` with --fps"
    spanned = {c.video_id for c in captions if isinstance(spans.get(c.cap_id), dict)
               and spans[c.cap_id].get("span")}
    missing = {v for v in spanned if not isinstance(videos.get(v), dict)
               or not ({"duration", "num_frames"} & set(videos[v]))}
    if missing:
        return f"{path} has no duration for {len(missing)} videos of {split!r}, e.g. {sorted(missing)[0]}"
    return None


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
        ``text``, ``headline`` (the metric names to show first, from the bundle's serving spec) and, when
        moment metrics were skipped (wholly or partly), ``moment_skipped_reason``.
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
    reason = moment_skip_reason(metrics)
    if reason is not None and metrics["moment_capable"]:
        reason = moment_skip_reason(metrics, meta_hint(dataset, data_root, split))
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
        **({"moment_skipped_reason": reason} if reason else {}),
    }
