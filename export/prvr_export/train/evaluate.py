"""Retrieval evaluation of a model on one split (docs/models.md §1.5, §5.4), and loading a trained checkpoint.

``evaluate`` follows the PRVR protocol: every video of the split is encoded once, in batches of
``config.eval_video_batch``; queries are encoded in batches of ``config.eval_query_batch`` and scored
against all videos with ``model.score``; each query's ground truth is its caption's video. Ranks, R@K and
SumR come from ``prvr_sdk.metrics`` -- the numpy code the runtime SDK reports with -- so training-time
validation and ``prvr eval`` agree with the SDK by construction. Ties rank pessimistically there (a
query whose GT ties with another video gets the worse rank); upstream's argsort order is unspecified.

Moment localisation (when the split's captions carry ``[start, end]`` spans and the model returns the
winning clip): the best clip of the query against its **ground-truth** video is turned into seconds with
``prvr_sdk.features.clip_bounds(num_frames, num_clips)`` (the frame rows of that clip, end exclusive)
divided by the feature rate (rows per second, from the collection's metadata), and compared with the true
span: mean IoU and R@1 at IoU >= 0.5 (``prvr_sdk.metrics.moment_metrics``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError

from .checkpoint import read_checkpoint

__all__ = [
    "HEADLINE_KEYS",
    "encode_videos",
    "evaluate",
    "evaluate_bundle",
    "evaluate_checkpoint",
    "headline",
    "load_checkpoint",
    "selection_key",
]

logger = logging.getLogger(__name__)

# What each selection metric reports first (docs/models.md §1.5 for PRVR, §5.4 for MUSE).
HEADLINE_KEYS = {
    "sumr": ("R@1", "R@5", "R@10", "R@100", "SumR"),
    "r1": ("R@1", "R@5", "R@10", "MdR", "MnR"),
}
_SELECTION = {"sumr": "SumR", "r1": "R@1"}


def selection_key(config: Any) -> str:
    """The metric that picks the best epoch: "SumR" (PRVR) or "R@1" (``config.metric == "r1"``, MUSE)."""
    metric = getattr(config, "metric", "sumr")
    if metric not in _SELECTION:
        raise InvalidInputError(f"config.metric = {metric!r}; expected one of {', '.join(_SELECTION)}")
    return _SELECTION[metric]


def headline(config: Any) -> tuple[str, ...]:
    """The metric names ``prvr eval`` shows: MUSE reports the text-video protocol (docs/models.md §5.4,
    R@1/5/10, MdR, MnR) whatever metric selects its epochs; PRVR models follow ``config.metric``."""
    from prvr_export.models.muse import MuseConfig

    if isinstance(config, MuseConfig):
        return HEADLINE_KEYS["r1"]
    return HEADLINE_KEYS[getattr(config, "metric", "sumr")]


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def _video_inputs(model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    keys = getattr(model, "video_inputs", None)
    if keys is None:
        raise InvalidInputError(
            f"{type(model).__name__} declares no `video_inputs` (the batch keys it reads)"
        )
    missing = [k for k in keys if k not in batch]
    if missing:
        raise InvalidInputError(
            f"{type(model).__name__} reads video inputs {list(keys)} but the data gives {sorted(batch)}; "
            f"missing {missing} (does the config's video_source match the model?)"
        )
    return {k: batch[k] for k in keys}


def encode_videos(
    model: nn.Module, loader: DataLoader, device: torch.device, on_batch: Callable[[int], None] | None = None
) -> dict[str, torch.Tensor]:
    """``model.encode_video`` over every batch of ``loader``, each output concatenated along dim 0.

    Raises:
        ShapeMismatchError: an output's trailing shape changes between batches.
    """
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        out = model.encode_video(**_to_device(_video_inputs(model, batch), device))
        for key, value in out.items():
            parts.setdefault(key, []).append(value)
        if on_batch is not None:
            on_batch(len(batch["video_ids"]))
    merged = {}
    for key, values in parts.items():
        shapes = {tuple(v.shape[1:]) for v in values}
        if len(shapes) > 1:
            raise ShapeMismatchError(
                f"encode_video output {key!r} has per-batch shapes {sorted(shapes)}; "
                "expected one fixed shape per video so that the index can store it"
            )
        merged[key] = torch.cat(values, dim=0)
    return merged


def _timing(data: Any, video_id: str) -> tuple[int, float] | None:
    """(feature rows, rows per second) of a video, from the data object or its metadata; None if unknown."""
    num_frames = data.num_frames(video_id) if hasattr(data, "num_frames") else None
    meta = getattr(data, "meta", {}) or {}
    entry = meta.get("videos", {}).get(video_id) or {}
    fps = entry.get("fps", meta.get("fps"))
    if num_frames is None:
        num_frames = entry.get("num_frames")
        if num_frames is None and fps is not None and entry.get("duration") is not None:
            num_frames = int(round(float(entry["duration"]) * float(fps)))
    if num_frames is None or fps is None or float(fps) <= 0 or int(num_frames) < 1:
        return None
    return int(num_frames), float(fps)


def _moment_metrics(
    data: Any, video_ids: list[str], gt: np.ndarray, spans: list, best_clip: np.ndarray, num_clips: int
) -> dict[str, float]:
    from prvr_sdk.features import clip_bounds
    from prvr_sdk.metrics import moment_metrics

    pred, true = [], []
    bounds_cache: dict[str, np.ndarray | None] = {}
    for q, span in enumerate(spans):
        if span is None:
            continue
        video_id = video_ids[gt[q]]
        if video_id not in bounds_cache:
            timing = _timing(data, video_id)
            bounds_cache[video_id] = (
                None if timing is None else clip_bounds(timing[0], num_clips).astype(np.float64) / timing[1]
            )
        seconds = bounds_cache[video_id]
        if seconds is None:
            continue
        pred.append(seconds[best_clip[q]])
        true.append(span)
    if not pred:
        return {}
    result = moment_metrics(np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64))
    return {**{k: float(v) for k, v in result.items()}, "moment_queries": len(pred)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    split: str,
    config: Any,
    *,
    device: str | torch.device | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, float]:
    """Score every query of ``split`` against every video of ``split``; report retrieval metrics.

    Args:
        model: a PRVR model (``prvr_export.models.base``); put in eval mode for the call, then restored.
        data: a ``prvr_export.data.PRVRData`` (``videos(split)``, ``queries(split)``, ``meta``).
        split: "train", "val" or "test".
        config: the model config (``eval_video_batch``, ``eval_query_batch``, ``num_clips``, ``metric``).
        device: where to run; default the model's device.
        progress: optional ``progress(stage, done, total)`` callback (stage "videos" or "queries").
    Returns:
        ``{"R@1", "R@5", "R@10", "R@100", "SumR", "MdR", "MnR", "queries", "videos"}`` (percent for R@K), plus
        ``"mIoU"``, ``"R@1,IoU>=0.5"``, ``"moment_queries"`` when spans and winning clips are available.
    Raises:
        InvalidInputError: the split has no queries or no videos; data errors name the file.
    """
    from prvr_export.data import collate_queries, collate_videos
    from prvr_sdk.metrics import prvr_metrics

    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    videos, queries = data.videos(split), data.queries(split)
    if len(videos) == 0 or len(queries) == 0:
        raise InvalidInputError(
            f"split {split!r} of {data!r} has {len(videos)} videos and {len(queries)} queries"
        )
    was_training = model.training
    model.eval()
    try:
        video_loader = DataLoader(
            videos, batch_size=int(config.eval_video_batch), shuffle=False, collate_fn=collate_videos
        )
        done = 0

        def _tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress("videos", done, len(videos))

        video_out = encode_videos(model, video_loader, device, _tick)
        query_loader = DataLoader(
            queries, batch_size=int(config.eval_query_batch), shuffle=False, collate_fn=collate_queries
        )
        scores, gts, spans, winners = [], [], [], []
        any_best = False
        for batch in query_loader:
            batch = _to_device(batch, device)
            text = model.encode_text(batch["query"], batch.get("query_mask"))
            s, best = model.score(text, video_out)  # [nq, Nv], [nq, Nv] | None
            gt = batch["query_video"]
            scores.append(s.float().cpu())
            gts.append(gt.cpu())
            spans.extend(batch["spans"])
            if best is not None:
                any_best = True
                winners.append(best.gather(1, gt[:, None]).squeeze(1).cpu())
            if progress is not None:
                progress("queries", sum(len(g) for g in gts), len(queries))
    finally:
        model.train(was_training)
    score_matrix = torch.cat(scores).numpy()
    gt_all = torch.cat(gts).numpy().astype(np.int64)
    if not np.isfinite(score_matrix).all():
        bad = int((~np.isfinite(score_matrix)).any(axis=1).sum())
        raise InvalidInputError(
            f"evaluation on {split!r}: {bad} of {len(score_matrix)} queries have NaN/Inf scores "
            "(NaN in the features, or the model diverged)"
        )
    metrics = {k: float(v) for k, v in prvr_metrics(score_matrix, gt_all).items()}
    metrics["queries"] = len(gt_all)
    metrics["videos"] = len(videos)
    if any_best and any(span is not None for span in spans):
        best_clip = torch.cat(winners).numpy()
        metrics.update(
            _moment_metrics(
                data, videos.video_ids, gt_all, spans, best_clip, int(getattr(config, "num_clips", 32))
            )
        )
    return metrics


def evaluate_checkpoint(
    path: str | os.PathLike,
    split: str = "test",
    *,
    data_root: str | os.PathLike | None = None,
    dataset: str | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Load a training checkpoint and ``evaluate`` it on ``split`` of its collection.

    Args:
        path: a checkpoint file or a run directory (its ``best.pt``).
        split: "test" (default), "val" or "train".
        data_root: the folder holding ``<dataset>/``; default the one the run trained on.
        dataset: the collection; default the one the run trained on.
        device: "cpu", "cuda", ...; default CUDA when available.
    Returns:
        The metrics of ``evaluate`` plus ``model``, ``dataset``, ``split``, ``checkpoint``, ``epoch`` (the
        checkpoint's epoch) and ``headline`` (the metric names to show first).
    Raises:
        InvalidInputError: missing checkpoint or data, or a data root the checkpoint does not record.
    """
    from prvr_export.data import open_dataset
    from prvr_export.models.registry import build_model

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "best.pt")
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    payload = read_checkpoint(path, map_location="cpu")
    config = config_from_checkpoint(payload, source=path)
    dataset = dataset or payload["dataset"]
    data_root = data_root or payload.get("data_root")
    if not data_root:
        raise InvalidInputError(f"{path} records no data root; pass one (--data-root)")
    data = open_dataset(dataset, data_root, config)
    model = build_model(payload["model_name"], config)
    model.load_state_dict(payload["model"])
    model.to(torch.device(device))
    metrics = evaluate(model, data, split, config, device=device)
    return {
        "model": payload["model_name"],
        "dataset": dataset,
        "split": split,
        "checkpoint": path,
        "epoch": int(payload.get("epoch", 0)),
        "headline": list(headline(config)),
        **metrics,
    }


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """Rebuild the model a training checkpoint holds (``best.pt``/``last.pt``), in eval mode.

    Args:
        path: a checkpoint file, or a run directory (its ``best.pt`` is used).
        map_location: where to load the tensors.
    Returns:
        ``(model, config)``: the model with the saved weights and its config dataclass.
    Raises:
        InvalidInputError: missing/foreign checkpoint, or a config the registry no longer accepts.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "best.pt")
    payload = read_checkpoint(path, map_location=map_location)
    config = config_from_checkpoint(payload, source=path)
    from prvr_export.models.registry import build_model

    model = build_model(payload["model_name"], config)
    model.load_state_dict(payload["model"])
    model.eval()
    return model, config


def config_from_checkpoint(payload: dict[str, Any], source: str = "checkpoint") -> Any:
    """The config dataclass saved in a checkpoint (the registry's class, rebuilt from the saved fields)."""
    from prvr_export.train.loop import resolve_config

    saved = dict(payload["config"])
    try:
        return resolve_config(payload["model_name"], payload["dataset"], saved)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{source}: saved config no longer fits the registry ({exc})") from None


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
) -> dict[str, Any]:
    """``evaluate``'s protocol run through an exported bundle with the runtime ``Retriever`` (no torch).

    Videos go in as stored raw features (the Retriever pools them) and queries as stored features
    (``text="features"``, so the numbers match ``evaluate_checkpoint`` to float tolerance) or as caption
    strings through the bundle's text front end (``text="strings"``: the whole serving path). Metrics come
    from the same ``prvr_sdk.metrics`` code.

    Returns:
        The keys of ``evaluate_checkpoint``, with ``bundle``, ``backend`` and ``text`` for ``checkpoint``.
    Raises:
        InvalidInputError: unknown ``text`` mode, empty split, or strings for a bundle without a front end.
    """
    from types import SimpleNamespace

    from prvr_export.data import open_dataset
    from prvr_sdk import Retriever
    from prvr_sdk.metrics import moment_metrics, prvr_metrics

    if text not in ("features", "strings"):
        raise InvalidInputError(f"text: expected 'features' or 'strings', got {text!r}")
    retriever = Retriever.from_bundle(bundle, backend=backend, device=device, trusted_keys=trusted_keys)
    manifest = retriever.manifest
    config = SimpleNamespace(**manifest["model"]["config"])
    dataset = dataset or manifest["model"]["dataset"]
    data = open_dataset(dataset, data_root, config, cache=False)
    video_ids, captions = data.video_ids(split), data.captions(split)
    if not video_ids or not captions:
        raise InvalidInputError(
            f"split {split!r} of {data!r} has {len(video_ids)} videos and {len(captions)} queries"
        )
    rates = {(_timing(data, vid) or (None, None))[1] for vid in video_ids} - {None}
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
    metrics: dict[str, Any] = {k: float(v) for k, v in prvr_metrics(scores, gt).items()}
    metrics.update(queries=len(captions), videos=len(video_ids))
    spans = [data.span(c.cap_id) for c in captions]
    if best is not None and videos.spans is not None:
        pairs = [
            (videos.clip_spans(int(gt[q]))[best[q, gt[q]]], span)
            for q, span in enumerate(spans)
            if span is not None
        ]
        pairs = [(p, t) for p, t in pairs if np.isfinite(p).all()]
        if pairs:
            pred, true = (np.asarray(x, dtype=np.float64) for x in zip(*pairs, strict=True))
            metrics.update({k: float(v) for k, v in moment_metrics(pred, true).items()})
            metrics["moment_queries"] = len(pairs)
    return {
        "model": retriever.model_name,
        "dataset": dataset,
        "split": split,
        "bundle": str(bundle),
        "backend": f"{retriever.choice.backend} ({retriever.choice.device})",
        "text": text,
        "headline": list(HEADLINE_KEYS["r1"] if retriever.model_name == "muse" else headline(config)),
        **metrics,
    }
