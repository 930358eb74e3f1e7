"""PRVR data: readers for the real collections' files, torch datasets, and the synthetic demo corpus.

* ``layout`` / ``readers``: re-exports of ``prvr_sdk.data.layout`` / ``prvr_sdk.data.captions`` (the
  torch-free readers ``prvr eval --bundle`` also uses).
* ``dataset``: ``open_dataset`` -> ``PRVRData`` (a ``prvr_sdk.data.Collection`` plus ``train_set``,
  ``videos``, ``queries``) and the collate
  functions that build ``prvr_export.models.base``'s batch. Pooling is ``prvr_sdk.features``.
* ``demo``: ``write_demo_corpus`` (``prvr data demo``), real MiniLM text features in the same layouts.
"""

from __future__ import annotations

from .dataset import (
    DataSettings,
    PRVRData,
    QuerySet,
    TrainSet,
    VideoSet,
    collate_queries,
    collate_train,
    collate_videos,
    open_dataset,
    uniform_frame_indices,
)
from .demo import DemoSummary, MiniLMEncoder, demo_patch_projections, demo_projection, write_demo_corpus
from .layout import DATASETS, SPLITS, CollectionFiles, caption_path, collection_files
from .readers import (
    BigFile,
    BigFileVideos,
    Caption,
    H5Features,
    read_captions,
    read_meta,
    read_video2frames,
    video_id_of,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "BigFile",
    "BigFileVideos",
    "Caption",
    "CollectionFiles",
    "DataSettings",
    "DemoSummary",
    "H5Features",
    "MiniLMEncoder",
    "PRVRData",
    "QuerySet",
    "TrainSet",
    "VideoSet",
    "caption_path",
    "collate_queries",
    "collate_train",
    "collate_videos",
    "collection_files",
    "demo_patch_projections",
    "demo_projection",
    "open_dataset",
    "read_captions",
    "read_meta",
    "read_video2frames",
    "uniform_frame_indices",
    "video_id_of",
    "write_demo_corpus",
]
