"""PRVR collections read without torch: file layouts, caption and metadata readers, one ``Collection``.

* ``layout``: where each collection keeps its files (one table, ``DATASETS``).
* ``captions``: caption files, metadata JSON, and the feature readers of ``prvr_sdk.sources``.
* ``collection``: ``open_collection`` -> ``Collection`` (captions, spans, timing, raw and prepared features).

``prvr_export.data`` builds the torch datasets on ``Collection``; ``prvr eval --bundle`` uses it directly.
"""

from __future__ import annotations

from .captions import Caption, read_captions, read_meta, video_id_of
from .collection import Collection, DataSettings, open_collection
from .layout import DATASETS, SPLITS, CollectionFiles, caption_path, collection_files

__all__ = [
    "DATASETS",
    "SPLITS",
    "Caption",
    "Collection",
    "CollectionFiles",
    "DataSettings",
    "caption_path",
    "collection_files",
    "open_collection",
    "read_captions",
    "read_meta",
    "video_id_of",
]
