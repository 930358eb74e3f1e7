"""Moved to ``prvr_sdk.data.layout`` (torch-free, so ``prvr eval --bundle`` runs without torch)."""

from prvr_sdk.data.layout import DATASETS, SPLITS, CollectionFiles, caption_path, collection_files

__all__ = ["DATASETS", "SPLITS", "CollectionFiles", "caption_path", "collection_files"]
