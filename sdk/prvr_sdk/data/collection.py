"""One PRVR collection read without torch: captions, spans, raw and prepared features, timing.

``open_collection(dataset, data_root, config)`` returns a ``Collection`` that reads one collection (layout:
``prvr_sdk.data.layout``) the way a model's config asks. It is what ``prvr eval --bundle`` (no torch) and
the training data pipeline (``prvr_export.data.PRVRData``, which adds the torch datasets) both read:

* ``captions(split)`` / ``video_ids(split)``: the split's captions in file order and its videos in order
  of first appearance;
* ``span(cap_id)``, ``duration(video_id)``, ``timing(video_id)``: ground-truth moments and the feature
  rate from the collection's metadata JSON (when it ships one);
* ``raw_video`` / ``raw_query``: features as stored; ``video`` / ``query``: prepared model inputs
  (``prvr_sdk.inputs``, the numpy code the runtime runs), cached in memory when ``cache=True``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prvr_sdk.data.captions import BigFileVideos, Caption, H5Features, read_captions, read_meta
from prvr_sdk.data.layout import (
    FeatureNames,
    caption_path,
    check_file_name,
    collection_files,
    collection_root,
    feature_names,
    missing_feature_hint,
)
from prvr_sdk.errors import InvalidInputError
from prvr_sdk.inputs import TextSpec, VideoSpec, prepare_query, prepare_video

__all__ = ["Collection", "DataSettings", "open_collection", "parse_span"]

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
    visual_feature: str | None = None  # BigFile folder under FeatureData/ (None: the collection's)
    clip_feature_file: str | None = None  # video hdf5 under FeatureData/ ("hdf5", "patches")
    query_feature_file: str | None = None  # query hdf5 under TextData/

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
        optional = ("num_clips", "normalize_video", "normalize_query", "max_frames", "patch_grid",
                    "visual_feature", "clip_feature_file", "query_feature_file")
        for name in optional:
            if hasattr(config, name):
                values[name] = getattr(config, name)
        settings = cls(**values)
        for name in ("visual_feature", "clip_feature_file", "query_feature_file"):
            if getattr(settings, name) is not None:
                check_file_name(getattr(settings, name), name)
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


class Collection:
    """One collection under ``data_root``, read for one model config, without torch.

    Args:
        dataset: a key of ``prvr_sdk.data.layout.DATASETS`` ("tvr", "activitynet", "charades", "msrvtt",
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
        self.root = collection_root(self.data_root, dataset)
        self.settings = DataSettings.from_config(config)
        self.cache = cache
        self._captions: dict[str, list[Caption]] = {}
        self._videos: BigFileVideos | H5Features | None = None
        self._queries: H5Features | None = None
        self._meta: dict | None = None
        self._video_cache: dict[str, dict[str, np.ndarray]] = {}
        self._query_cache: dict[str, np.ndarray] = {}

    # -- files -------------------------------------------------------------------------------------

    def feature_names(self) -> FeatureNames:
        """The feature file names this config reads (its ``visual_feature`` / ``clip_feature_file`` /
        ``query_feature_file``, else the collection's defaults)."""
        s = self.settings
        return feature_names(
            self.dataset, s.video_source, s.query_type, visual_feature=s.visual_feature,
            clip_feature_file=s.clip_feature_file, query_feature_file=s.query_feature_file,
        )

    def video_path(self) -> Path:
        """The video feature file (or BigFile folder) that ``settings.video_source`` selects."""
        return self.root / "FeatureData" / self.feature_names().video

    def query_path(self) -> Path:
        """The query feature file that ``settings.query_type`` selects."""
        return self.root / "TextData" / self.feature_names().query

    def _require(self, path: Path, field: str, what: str) -> None:
        """A missing feature file: name it, the config field that picks it, and where it comes from."""
        if path.exists():
            return
        hint = missing_feature_hint(self.dataset, path.name)
        raise InvalidInputError(
            f"{path}: {what} not found (config field {field}){'; ' + hint if hint else ''}"
        )

    def _video_store(self) -> BigFileVideos | H5Features:
        if self._videos is None:
            s = self.settings
            path = self.video_path()
            self._require(path, self.feature_names().video_field, f"{s.video_source} video features")
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
            self._require(self.query_path(), "query_feature_file", f"{s.query_type} query features")
            self._queries = H5Features(self.query_path(), shape, f"{s.query_type} query features")
        return self._queries

    def meta_path(self) -> Path | None:
        """``TextData/<collection>_meta.json`` (which may not exist), or None for a collection without one."""
        return self.root / "TextData" / self.files.meta if self.files.meta else None

    @property
    def meta(self) -> dict:
        """The collection's metadata JSON (spans, durations), or ``{}`` when it ships none."""
        if self._meta is None:
            path = self.meta_path()
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
        span = parse_span(entry)
        if span is None:
            raise InvalidInputError(
                f"{self.meta_path()}: caption {cap_id!r}: span {entry!r} is not [start, end] seconds with "
                "0 <= start <= end"
            )
        return span

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

    def timing(self, video_id: str) -> tuple[int, float] | None:
        """``(feature rows, rows per second)`` of a video from the metadata, or None when unknown.

        Rows come from ``metadata["videos"][id]["num_frames"]`` or ``duration * fps``; the rate from the
        video's entry or the collection-wide ``fps``.
        """
        meta = self.meta or {}
        entry = meta.get("videos", {}).get(video_id) or {}
        fps = entry.get("fps", meta.get("fps"))
        num_frames = entry.get("num_frames")
        if num_frames is None and fps is not None and entry.get("duration") is not None:
            num_frames = int(round(float(entry["duration"]) * float(fps)))
        if num_frames is None or fps is None or float(fps) <= 0 or int(num_frames) < 1:
            return None
        return int(num_frames), float(fps)

    def __repr__(self) -> str:
        s = self.settings
        name = type(self).__name__
        return f"{name}({self.dataset!r}, {str(self.root)!r}, video={s.video_source}, query={s.query_type})"


def parse_span(entry: Any) -> tuple[float, float] | None:
    """``(start, end)`` seconds from a metadata span ``[start, end]``, or None when it is not one
    (two finite numbers, ``0 <= start <= end``)."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry):
        return None
    start, end = float(entry[0]), float(entry[1])
    if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or end < start:
        return None
    return start, end


def open_collection(
    dataset: str, data_root: str | os.PathLike, config: Any, *, cache: bool = True
) -> Collection:
    """``Collection(dataset, data_root, config, cache=cache)``; see ``Collection``."""
    return Collection(dataset, data_root, config, cache=cache)
