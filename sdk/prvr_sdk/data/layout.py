"""Where each collection keeps its files (docs/models.md §1.1): one table, read by every reader.

A collection ``c`` lives in ``<data_root>/<c>/``::

    TextData/<c>train.caption.txt, <c>val.caption.txt, <c>test.caption.txt
    TextData/<token_feats>          one hdf5 dataset per cap_id: [n_tokens, Dq]   (query_type "tokens")
    TextData/<sentence_feats>       one hdf5 dataset per cap_id: [Dq]             (query_type "sentence")
    TextData/<meta>                 optional JSON: fps, durations, [start, end] seconds per caption
    FeatureData/<vfeat>/{feature.bin, id.txt, shape.txt, video2frames.txt}      (video_source "bigfile")
    FeatureData/<video_hdf5>        one hdf5 dataset per video_id: [Nf, Dv]       (video_source "hdf5")
    FeatureData/<patches>           one hdf5 dataset per video_id: [Nf, 1+P, C]   (video_source "patches")

The real collections use the MS-SL bundle's names. MSR-VTT (MUSE) has no MS-SL bundle: MUSE trains on raw
frames through CLIP, which this project cannot run, so ``msrvtt`` expects *pre-extracted* CLIP ViT-B/32 tokens
per frame (CLS + 7x7 patches after ``ln_post`` and the visual projection, [Nf, 50, 512]) in
``FeatureData/patch_tokens.hdf5``, and captions in the same caption-file format as the others.
The ``demo`` collection is written by ``prvr_export.data.demo``; its file names say which encoder made them
(all-MiniLM-L6-v2 text features; synthetic frame features).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prvr_sdk.errors import InvalidInputError

__all__ = ["DATASETS", "SPLITS", "CollectionFiles", "caption_path", "collection_files"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CollectionFiles:
    """File names of one collection; ``None`` = the collection ships no such file."""

    vfeat: str | None  # BigFile folder under FeatureData/
    token_feats: str | None  # under TextData/
    sentence_feats: str | None  # under TextData/
    video_hdf5: str | None  # under FeatureData/
    patches: str | None  # under FeatureData/
    meta: str | None  # under TextData/; optional even when named


# fmt: off
DATASETS: dict[str, CollectionFiles] = {
    "tvr": CollectionFiles(
        vfeat="i3d_resnet",  # 3072-d: ResNet-152 2048 + I3D 1024
        token_feats="roberta_tvr_query_feat.hdf5",  # RoBERTa, 768-d
        sentence_feats="clip_ViT_B_32_tvr_query_feat.hdf5",  # CLIP B/32, 512-d
        video_hdf5="new_clip_vit_32_tvr_vid_features.hdf5",  # CLIP B/32 frames, 512-d
        patches="patch_tokens.hdf5",
        meta="tvr_meta.json",
    ),
    "activitynet": CollectionFiles(
        vfeat="i3d",  # 1024-d
        token_feats="roberta_activitynet_query_feat.hdf5",  # RoBERTa, 1024-d
        sentence_feats="clip_ViT_B_32_activitynet_query_feat.hdf5",
        video_hdf5="new_clip_vit_32_activitynet_vid_features.hdf5",
        patches="patch_tokens.hdf5",
        meta="activitynet_meta.json",
    ),
    "charades": CollectionFiles(
        vfeat="i3d_rgb_lgi",  # 1024-d
        token_feats="roberta_charades_query_feat.hdf5",  # RoBERTa, 1024-d
        sentence_feats="clip_ViT_B_32_charades_query_feat.hdf5",
        video_hdf5="new_clip_vit_32_charades_vid_features.hdf5",
        patches="patch_tokens.hdf5",
        meta="charades_meta.json",
    ),
    "msrvtt": CollectionFiles(
        vfeat=None,
        token_feats="roberta_msrvtt_query_feat.hdf5",
        sentence_feats="clip_ViT_B_32_msrvtt_query_feat.hdf5",  # CLIP B/32 EOT feature, 512-d
        video_hdf5=None,
        patches="patch_tokens.hdf5",  # pre-extracted CLIP B/32 tokens, [Nf, 50, 512]
        meta="msrvtt_meta.json",
    ),
    "demo": CollectionFiles(
        vfeat="demo_frames",  # synthetic, 128-d (prvr_export.data.demo)
        token_feats="minilm_demo_query_feat.hdf5",  # all-MiniLM-L6-v2 token features, 384-d
        sentence_feats="minilm_sent_demo_query_feat.hdf5",  # all-MiniLM-L6-v2 sentence features, 384-d
        video_hdf5="demo_frames_vid_features.hdf5",  # the same frames as the BigFile
        patches="patch_tokens.hdf5",  # CLS = frame feature + a 2x2 grid of synthetic patch tokens
        meta="demo_meta.json",
    ),
}
# fmt: on


def collection_files(dataset: str) -> CollectionFiles:
    """The table entry of ``dataset``.

    Raises:
        InvalidInputError: an unknown dataset name (the message lists the known ones).
    """
    try:
        return DATASETS[dataset]
    except KeyError:
        raise InvalidInputError(
            f"unknown dataset {dataset!r}; known datasets: {', '.join(sorted(DATASETS))}"
        ) from None


def caption_path(root: Path, dataset: str, split: str) -> Path:
    """``<root>/<c>/TextData/<c><split>.caption.txt``."""
    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return Path(root) / dataset / "TextData" / f"{dataset}{split}.caption.txt"
