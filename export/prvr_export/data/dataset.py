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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from prvr_sdk.errors import InvalidInputError
from prvr_sdk.features import uniform_frame_indices
from prvr_sdk.inputs import TextSpec, VideoSpec, pad_queries, pad_videos, prepare_query, prepare_video

from .layout import SPLITS, caption_path, collection_files
from .readers import BigFileVideos, Caption, H5Features, read_captions, read_meta

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

QUERY_TYPES = ("tokens", "sentence")
VIDEO_SOURCES = ("bigfile", "hdf5", "patches")


@dataclass(frozen=True)
class DataSettings:
    """The config fields the data pipeline reads, checked once."""

    query_type: str
    video_source: str
    video_feat_dim: int
    query_feat_dim: int
    max_ctx_l: int
    max_desc_l: int
    num_clips: int = 32
    normalize_video: bool = True
    normalize_query: bool = True
    max_frames: int | None = None  # MUSE
    patch_grid: int | None = None  # MUSE: patches per frame = patch_grid ** 2

    @classmethod
    def from_config(cls, config: Any) -> DataSettings:
        """Read the fields from any object that has them (a registry config, a SimpleNamespace).

        Raises:
            InvalidInputError: a field is missing or has a disallowed value.
        """
        required = (
            "query_type",
            "video_source",
            "video_feat_dim",
            "query_feat_dim",
            "max_ctx_l",
            "max_desc_l",
        )
        missing = [name for name in required if not hasattr(config, name)]
        if missing:
            raise InvalidInputError(f"config lacks the data fields {missing}")
        values = {name: getattr(config, name) for name in required}
        for name in ("num_clips", "normalize_video", "normalize_query", "max_frames", "patch_grid"):
            if hasattr(config, name):
                values[name] = getattr(config, name)
        settings = cls(**values)
        if settings.query_type not in QUERY_TYPES:
            raise InvalidInputError(
                f"config.query_type = {settings.query_type!r}; expected one of {QUERY_TYPES}"
            )
        if settings.video_source not in VIDEO_SOURCES:
            raise InvalidInputError(
                f"config.video_source = {settings.video_source!r}; expected one of {VIDEO_SOURCES}"
            )
        if settings.video_source == "patches" and (not settings.max_frames or not settings.patch_grid):
            raise InvalidInputError("video_source 'patches' needs config.max_frames and config.patch_grid")
        for name in ("video_feat_dim", "query_feat_dim", "max_ctx_l", "max_desc_l", "num_clips"):
            if int(getattr(settings, name)) < 1:
                raise InvalidInputError(
                    f"config.{name} = {getattr(settings, name)!r}; expected a positive int"
                )
        return settings

    def video_spec(self) -> VideoSpec:
        """The runtime's spec of the same inputs (``prvr_sdk.inputs``: one preparation for both sides)."""
        if self.video_source == "patches":
            grid = int(self.patch_grid or 0)
            return VideoSpec(self.video_feat_dim, self.num_clips, int(self.max_frames or 0),
                             self.normalize_video, 1 + grid * grid)
        return VideoSpec(self.video_feat_dim, self.num_clips, self.max_ctx_l, self.normalize_video)

    def text_spec(self) -> TextSpec:
        return TextSpec(self.query_type, self.query_feat_dim, self.max_desc_l, self.normalize_query)


class PRVRData:
    """One collection under ``data_root``, read for one model config. See the module docstring.

    Args:
        dataset: a key of ``prvr_export.data.layout.DATASETS`` ("tvr", "activitynet", "charades", "msrvtt",
            "demo").
        data_root: the folder holding ``<dataset>/``.
        config: the model config (data fields read by ``DataSettings.from_config``).
        cache: keep pooled videos and query features in memory after their first read.
    Raises:
        InvalidInputError: unknown dataset, missing collection folder, bad config fields. Missing or broken
            feature files raise when first needed, naming the file.
    """

    def __init__(
        self, dataset: str, data_root: str | os.PathLike, config: Any, *, cache: bool = True
    ) -> None:
        self.dataset = dataset
        self.files = collection_files(dataset)
        self.data_root = Path(data_root)
        self.root = self.data_root / dataset
        if not self.root.is_dir():
            raise InvalidInputError(f"{self.root}: collection folder for dataset {dataset!r} not found")
        self.settings = DataSettings.from_config(config)
        self.cache = cache
        self._captions: dict[str, list[Caption]] = {}
        self._videos: BigFileVideos | H5Features | None = None
        self._queries: H5Features | None = None
        self._meta: dict | None = None
        self._video_cache: dict[str, dict[str, np.ndarray]] = {}
        self._query_cache: dict[str, np.ndarray] = {}

    # -- files -------------------------------------------------------------------------------------

    def video_path(self) -> Path:
        """The video feature file (or BigFile folder) that ``settings.video_source`` selects."""
        source = self.settings.video_source
        name = {"bigfile": self.files.vfeat, "hdf5": self.files.video_hdf5, "patches": self.files.patches}[
            source
        ]
        if name is None:
            raise InvalidInputError(
                f"dataset {self.dataset!r} has no video features for video_source {source!r}"
            )
        return self.root / "FeatureData" / name

    def query_path(self) -> Path:
        """The query feature file that ``settings.query_type`` selects."""
        kind = self.settings.query_type
        name = self.files.token_feats if kind == "tokens" else self.files.sentence_feats
        if name is None:
            raise InvalidInputError(f"dataset {self.dataset!r} has no query features for query_type {kind!r}")
        return self.root / "TextData" / name

    def _video_store(self) -> BigFileVideos | H5Features:
        if self._videos is None:
            s = self.settings
            path = self.video_path()
            if s.video_source == "bigfile":
                self._videos = BigFileVideos(path, expected_dim=s.video_feat_dim)
            elif s.video_source == "hdf5":
                self._videos = H5Features(path, (None, s.video_feat_dim), "video features")
            else:
                self._videos = H5Features(path, (None, 1 + s.patch_grid**2, s.video_feat_dim), "patch tokens")
        return self._videos

    def _query_store(self) -> H5Features:
        if self._queries is None:
            s = self.settings
            shape = (None, s.query_feat_dim) if s.query_type == "tokens" else (s.query_feat_dim,)
            self._queries = H5Features(self.query_path(), shape, f"{s.query_type} query features")
        return self._queries

    @property
    def meta(self) -> dict:
        """The collection's metadata JSON (spans, durations), or ``{}`` when it ships none."""
        if self._meta is None:
            path = self.root / "TextData" / self.files.meta if self.files.meta else None
            self._meta = read_meta(path) if path is not None and path.is_file() else {}
        return self._meta

    # -- captions and spans --------------------------------------------------------------------------

    def captions(self, split: str) -> list[Caption]:
        """The split's captions in file order (read once)."""
        if split not in self._captions:
            self._captions[split] = read_captions(caption_path(self.data_root, self.dataset, split))
        return self._captions[split]

    def video_ids(self, split: str) -> list[str]:
        """The split's videos: unique video ids in order of first appearance in its caption file."""
        return list(OrderedDict.fromkeys(c.video_id for c in self.captions(split)))

    def span(self, cap_id: str) -> tuple[float, float] | None:
        """``(start, end)`` seconds of the moment a caption describes, when the metadata has it."""
        entry = self.meta.get("captions", {}).get(cap_id)
        if isinstance(entry, dict):
            entry = entry.get("span")
        if entry is None:
            return None
        start, end = entry
        return float(start), float(end)

    def duration(self, video_id: str) -> float | None:
        """A video's duration in seconds, when the metadata has it."""
        entry = self.meta.get("videos", {}).get(video_id)
        return float(entry["duration"]) if isinstance(entry, dict) and "duration" in entry else None

    # -- features ------------------------------------------------------------------------------------

    def raw_video(self, video_id: str) -> np.ndarray:
        """A video's features as stored (``[Nf, Dv]`` frames or ``[Nf, 1+P, C]`` tokens), before pooling: what
        a serving system receives (``prvr eval --bundle`` feeds these to the Retriever)."""
        return self._video_store().read(video_id)

    def raw_query(self, cap_id: str) -> np.ndarray:
        """A caption's stored features (``[n_tokens, Dq]`` or ``[Dq]``), before normalising and cutting."""
        return self._query_store().read(cap_id)

    def video(self, video_id: str) -> dict[str, np.ndarray]:
        """Model inputs of a video: ``{"clips" [Nc, Dv], "frames" [Lf, Dv]}`` or ``{"patches" [T, 1+P, C]}``.

        Raises:
            InvalidInputError / ShapeMismatchError: from the readers, naming the file and the video.
        """
        cached = self._video_cache.get(video_id)
        if cached is not None:
            return cached
        item = prepare_video(self.raw_video(video_id), self.settings.video_spec())
        if self.cache:
            self._video_cache[video_id] = item
        return item

    def query(self, cap_id: str) -> np.ndarray:
        """Features of one caption: tokens ``[Lq <= max_desc_l, Dq]`` or a sentence vector ``[Dq]``."""
        cached = self._query_cache.get(cap_id)
        if cached is not None:
            return cached
        value = prepare_query(self.raw_query(cap_id), self.settings.text_spec())
        if self.cache:
            self._query_cache[cap_id] = value
        return value

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

    def __repr__(self) -> str:
        s = self.settings
        return f"PRVRData({self.dataset!r}, {str(self.root)!r}, video={s.video_source}, query={s.query_type})"


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
