"""Moved to ``prvr_sdk.data.captions`` (torch-free, so ``prvr eval --bundle`` runs without torch)."""

from prvr_sdk.data.captions import (
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
    "BigFile",
    "BigFileVideos",
    "Caption",
    "H5Features",
    "read_captions",
    "read_meta",
    "read_video2frames",
    "video_id_of",
]
