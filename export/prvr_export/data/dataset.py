"""PRVR datasets for training and evaluation (docs/models.md §1.2–§1.5), and the collate functions.

``open_dataset(dataset, data_root, config)`` returns a ``PRVRData`` that reads one collection (layout:
``prvr_export.data.layout``) the way its model's config asks:

* ``train_set()``: one item per *video* with **all** its captions (docs/models.md §1.2);
* ``videos(split)``: the split's videos, in order of first appearance in its caption file (§1.5);
* ``queries(split)``: every caption of the split, with the index of its video in ``videos(split)`` and its
  ``[start, end]`` span in seconds when the collection's metadata JSON has one (``None`` otherwise).

Video inputs go through ``prvr_sdk.features`` -- the same numpy code the runtime runs -- so training and
serving pool identically: ``pool_clips`` to ``num_clips`` clips, ``sample_frames`` to ``max_ctx_l`` steps,
then per-row ``l2_normalize`` when ``normalize_video``. MUSE (``video_source="patches"``) instead keeps at
most ``max_frames`` whole frames, chosen with CLIP4Clip's ``linspace`` rule (docs/models.md §1.4, §5.1).
Queries: token rows L2-normalised (eps 1e-5) when ``normalize_query``, then cut to ``max_desc_l`` (§1.3);
sentence vectors normalised when ``normalize_query`` (AMDNet: never).

Caching: an epoch reads every video and caption again, so with ``cache=True`` (the default) each video's
pooled clips/frames and each caption's features are computed once and kept in memory. The demo corpus
needs about 100 MB for that; a real collection at full width needs (32 + max_ctx_l) * Dv * 4 bytes per
video (TVR at 3072-d: ~2 GB), so pass ``cache=False`` when memory is short. With DataLoader workers each
worker fills its own cache.

``config`` is any object with the data fields the registry's configs carry (``query_type``,
``video_source``, ``video_feat_dim``, ``query_feat_dim``, ``max_ctx_l``, ``max_desc_l``, ``num_clips``,
``normalize_video``, ``normalize_query``; for ``video_source="patches"`` also ``max_frames``, ``patch_grid``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from prvr_sdk.data.collection import Collection, DataSettings
from prvr_sdk.data.layout import SPLITS
from prvr_sdk.errors import InvalidInputError
from prvr_sdk.features import uniform_frame_indices
from prvr_sdk.inputs import pad_queries, pad_videos

__all__ = [
    "DataSettings",
    "PRVRData",
    "QuerySet",
    "TrainSet",
    "VideoSet",
    "collate_queries",
    "collate_train",
    "collate_videos",
    "open_dataset",
    "uniform_frame_indices",
]

class PRVRData(Collection):
    """A ``prvr_sdk.data.Collection`` plus the torch datasets training and ``evaluate`` iterate.

    Args and raises as ``Collection``.
    """

    # -- torch datasets ------------------------------------------------------------------------------

    def train_set(self) -> TrainSet:
        """Training items: one per train video, with all its captions (batch them with ``collate_train``)."""
        return TrainSet(self)

    def videos(self, split: str) -> VideoSet:
        """Evaluation videos of ``split`` (batch them with ``collate_videos``)."""
        return VideoSet(self, split)

    def queries(self, split: str) -> QuerySet:
        """Evaluation queries of ``split`` (batch them with ``collate_queries``)."""
        return QuerySet(self, split)



def open_dataset(dataset: str, data_root: str | os.PathLike, config: Any, *, cache: bool = True) -> PRVRData:
    """``PRVRData(dataset, data_root, config, cache=cache)``; see ``PRVRData``.

    Example:
        >>> data = open_dataset("demo", "data", get_config("mamfusion", "demo"))   # doctest: +SKIP
        >>> loader = DataLoader(data.train_set(), batch_size=64, shuffle=True, collate_fn=collate_train)
    """
    return PRVRData(dataset, data_root, config, cache=cache)


class TrainSet(Dataset):
    """Item = ``{"video_id", "clips", "frames" (or "patches"), "queries": [per caption], "caption_ids"}``."""

    def __init__(self, data: PRVRData) -> None:
        self.data = data
        groups: dict[str, list[str]] = OrderedDict()
        for caption in data.captions("train"):
            groups.setdefault(caption.video_id, []).append(caption.cap_id)
        self.video_ids = list(groups)
        self.caption_ids = [groups[v] for v in self.video_ids]

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_id, caption_ids = self.video_ids[index], self.caption_ids[index]
        return {
            "video_id": video_id,
            **self.data.video(video_id),
            "queries": [self.data.query(c) for c in caption_ids],
            "caption_ids": list(caption_ids),
        }


class VideoSet(Dataset):
    """Item = ``{"video_id", "clips", "frames"}`` or ``{"video_id", "patches"}``."""

    def __init__(self, data: PRVRData, split: str) -> None:
        if split not in SPLITS:
            raise InvalidInputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        self.data = data
        self.split = split
        self.video_ids = data.video_ids(split)

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_id = self.video_ids[index]
        return {"video_id": video_id, **self.data.video(video_id)}


class QuerySet(Dataset):
    """Item = ``{"caption_id", "video_id", "video_index", "query", "span"}``.

    ``video_index`` is the position of the caption's video in ``PRVRData.videos(split)`` (the ground truth
    column of the score matrix); ``span`` is ``(start, end)`` seconds or ``None``.
    """

    def __init__(self, data: PRVRData, split: str) -> None:
        if split not in SPLITS:
            raise InvalidInputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        self.data = data
        self.split = split
        self.captions = data.captions(split)
        self.video_index = {v: i for i, v in enumerate(data.video_ids(split))}

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        caption = self.captions[index]
        return {
            "caption_id": caption.cap_id,
            "video_id": caption.video_id,
            "video_index": self.video_index[caption.video_id],
            "query": self.data.query(caption.cap_id),
            "span": self.data.span(caption.cap_id),
        }


# --- collate ----------------------------------------------------------------------------------------


def _num_steps(item: dict[str, Any]) -> int:
    return len(item["patches"]) if "patches" in item else len(item["frames"])


def _collate_video_part(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """clips [B, Nc, Dv] + frames [B, Lf, Dv] zero-padded, or patches [B, T, 1+P, C]; frame_mask [B, Lf|T]."""
    return {k: torch.from_numpy(v) for k, v in pad_videos(items).items()}


def _collate_query_part(queries: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Sentence vectors stacked [Nq, Dq]; token sequences zero-padded [Nq, Lq, Dq] + query_mask [Nq, Lq]."""
    return {k: torch.from_numpy(v) for k, v in pad_queries(queries).items()}


def _require_items(items: list, who: str) -> None:
    if len(items) == 0:
        raise InvalidInputError(f"{who}: empty batch")


def collate_train(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Training batch of ``prvr_export.models.base`` from ``TrainSet`` items.

    Videos are sorted by frame length, longest first (stable), and their captions concatenated in that
    order, so each video's captions stay contiguous (the query-diversity loss relies on it,
    docs/models.md §1.2).

    Returns:
        ``clips`` [B, Nc, Dv], ``frames`` [B, Lf, Dv], ``frame_mask`` [B, Lf] (or ``patches`` [B, T, 1+P, C]
        and ``frame_mask`` [B, T]); ``query`` [Nq, Lq, Dq] + ``query_mask`` [Nq, Lq] (tokens) or ``query``
        [Nq, Dq] (sentences); ``query_video`` long [Nq]; ``video_ids`` (B), ``caption_ids`` (Nq).
    """
    _require_items(items, "collate_train")
    items = sorted(items, key=_num_steps, reverse=True)  # sorted() is stable
    batch: dict[str, Any] = _collate_video_part(items)
    queries, query_video, caption_ids = [], [], []
    for b, item in enumerate(items):
        queries.extend(item["queries"])
        caption_ids.extend(item["caption_ids"])
        query_video.extend([b] * len(item["queries"]))
    if not queries:
        raise InvalidInputError(
            f"collate_train: the batch's videos {[i['video_id'] for i in items]} have no captions"
        )
    batch.update(_collate_query_part(queries))
    batch["query_video"] = torch.tensor(query_video, dtype=torch.long)
    batch["video_ids"] = [item["video_id"] for item in items]
    batch["caption_ids"] = caption_ids
    return batch


def collate_videos(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluation video batch from ``VideoSet`` items, in the given order: the video keys of ``collate_train``
    plus ``video_ids``."""
    _require_items(items, "collate_videos")
    batch: dict[str, Any] = _collate_video_part(items)
    batch["video_ids"] = [item["video_id"] for item in items]
    return batch


def collate_queries(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluation query batch from ``QuerySet`` items, in the given order.

    Returns:
        ``query`` (+ ``query_mask`` for tokens), ``query_video`` long [Nq] (index into the split's videos),
        ``caption_ids``, ``video_ids``, ``spans`` (list of ``(start, end)`` seconds or ``None``).
    """
    _require_items(items, "collate_queries")
    batch: dict[str, Any] = _collate_query_part([item["query"] for item in items])
    batch["query_video"] = torch.tensor([item["video_index"] for item in items], dtype=torch.long)
    batch["caption_ids"] = [item["caption_id"] for item in items]
    batch["video_ids"] = [item["video_id"] for item in items]
    batch["spans"] = [item["span"] for item in items]
    return batch
