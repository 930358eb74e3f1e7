"""Retrieval evaluation of a torch model on one split (docs/models.md §1.5, §5.4), and loading checkpoints.

``evaluate`` only *encodes* with torch: every video of the split once, in batches of
``config.eval_video_batch``; queries in batches of ``config.eval_query_batch``, scored against all videos
with ``model.score``. The metrics -- ranks, R@K, SumR, MdR, MnR, mAP, and moment localisation from the
winning clip in the ground-truth video -- come from ``prvr_sdk.evaluation.evaluate_scores``, the torch-free
protocol ``prvr eval --bundle`` runs too, with clip times from the model's ``ServingSpec`` (uniform clips
or learned anchors). So training-time validation, ``prvr eval --checkpoint`` and ``prvr eval --bundle``
agree by construction. ``evaluate_bundle`` lives in ``prvr_sdk.evaluation`` (re-exported here).
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
from prvr_sdk.evaluation import evaluate_bundle, evaluate_scores
from prvr_sdk.features import anchor_spans, uniform_clip_spans
from prvr_sdk.serving import HEADLINE_KEYS

from .checkpoint import read_checkpoint, resolve_checkpoint

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

_SELECTION = {"sumr": "SumR", "r1": "R@1"}


def selection_key(config: Any) -> str:
    """The metric that picks the best epoch: "SumR" (PRVR) or "R@1" (``config.metric == "r1"``, MUSE)."""
    metric = getattr(config, "metric", "sumr")
    if metric not in _SELECTION:
        raise InvalidInputError(f"config.metric = {metric!r}; expected one of {', '.join(_SELECTION)}")
    return _SELECTION[metric]


def headline(model: nn.Module) -> tuple[str, ...]:
    """The metric names ``prvr eval`` shows first: the model's own (``serving_spec().headline``)."""
    return tuple(model.serving_spec().headline)


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


def _clip_spans(model: nn.Module, data: Any, video_ids: list[str], video_out: dict[str, torch.Tensor]):
    """``column -> [Nc, 2]`` seconds of each video's clips, by the model's spec; None when unknown."""
    spec = model.serving_spec()
    if spec.clip_output is None:
        return None

    def spans(column: int) -> np.ndarray | None:
        timing = data.timing(video_ids[column]) if hasattr(data, "timing") else None
        if timing is None:
            return None
        num_frames, fps = timing
        if spec.clip_time == "anchors":
            anchors = video_out[spec.anchor_output][column].float().cpu().numpy()
            return anchor_spans(anchors, num_frames / fps)
        return uniform_clip_spans(np.arange(num_frames + 1, dtype=np.float64) / fps, spec.clip_count)

    return spans


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
        ``prvr_sdk.evaluation.evaluate_scores``' metrics: ``R@1 R@5 R@10 R@100 SumR MdR MnR mAP queries
        videos``, plus ``mIoU``, ``R@1,IoU>=0.5``, ``moment_queries`` when spans and winning clips exist.
    Raises:
        InvalidInputError: the split has no queries or no videos; data errors name the file.
    """
    from prvr_export.data import collate_queries, collate_videos

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
    try:
        return evaluate_scores(
            score_matrix,
            gt_all,
            best_clip=torch.cat(winners).numpy() if any_best else None,
            clip_spans=_clip_spans(model, data, videos.video_ids, video_out),
            true_spans=spans,
        )
    except InvalidInputError as exc:
        raise InvalidInputError(f"evaluation on {split!r}: {exc}") from None


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

    path = os.fspath(resolve_checkpoint(path))
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
        "headline": list(headline(model)),
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
    path = os.fspath(resolve_checkpoint(path))
    payload = read_checkpoint(path, map_location=map_location)
    config = config_from_checkpoint(payload, source=path)
    from prvr_export.models.registry import build_model

    model = build_model(payload["model_name"], config)
    model.load_state_dict(payload["model"])
    model.eval()
    return model, config


def config_from_checkpoint(payload: dict[str, Any], source: str = "checkpoint") -> Any:
    """The config dataclass saved in a checkpoint (the registry's class, rebuilt from the saved fields)."""
    from prvr_export.models.registry import resolve_config

    saved = dict(payload["config"])
    try:
        return resolve_config(payload["model_name"], payload["dataset"], saved)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{source}: saved config no longer fits the registry ({exc})") from None
