"""PRVR collections read without torch: file layouts, caption and metadata readers, one ``Collection``.

* ``layout``: where each collection keeps its files (one table, ``DATASETS``).
* ``captions``: caption files, metadata JSON, and the feature readers of ``prvr_sdk.sources``.
* ``collection``: ``open_collection`` -> ``Collection`` (captions, spans, timing, raw and prepared features).
* ``check``: ``check_collection`` -> ``CheckReport``: every problem of the files a model will read, at once
  (``prvr data check``; ``prvr train`` runs it first).

``prvr_export.data`` builds the torch datasets on ``Collection``; ``prvr eval --bundle`` uses it directly.
"""

from __future__ import annotations

from .captions import Caption, read_captions, read_meta, scan_captions, video_id_of
from .check import CheckReport, Problem, check_collection
from .collection import Collection, DataSettings, open_collection
from .layout import DATASETS, SPLITS, CollectionFiles, caption_path, collection_files, feature_names

__all__ = [
    "DATASETS",
    "SPLITS",
    "Caption",
    "CheckReport",
    "Collection",
    "CollectionFiles",
    "DataSettings",
    "Problem",
    "caption_path",
    "check_collection",
    "collection_files",
    "feature_names",
    "open_collection",
    "read_captions",
    "read_meta",
    "scan_captions",
    "video_id_of",
]
