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

The names in ``DATASETS`` are defaults: a config's ``visual_feature`` (the BigFile folder),
``clip_feature_file`` (the video hdf5 of ``video_source`` "hdf5" or "patches") and ``query_feature_file``
(under TextData) replace them, so a model can train on other features (``feature_names``). Those fields are
plain names, checked by ``check_file_name``: nothing a config says reaches outside the collection's folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prvr_sdk.errors import InvalidInputError

__all__ = [
    "DATASETS",
    "FEATURE_FPS",
    "SPLITS",
    "CollectionFiles",
    "FeatureNames",
    "caption_path",
    "check_file_name",
    "collection_files",
    "collection_root",
    "feature_names",
    "missing_feature_hint",
]

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
# Video feature rows per second of each collection, where the release documents it: TVR's I3D+ResNet
# features are one per 1.5 s clip (TVRetrieval); the demo corpus is 1 fps. Others are not documented:
# `prvr export --fps` / `prvr data annotations` (which estimates the rate from video2frames.txt) take it.
FEATURE_FPS: dict[str, float] = {"demo": 1.0, "tvr": 1 / 1.5}

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


# --- feature selection (config fields visual_feature, clip_feature_file, query_feature_file) -------------

FEATURE_FIELDS = ("visual_feature", "clip_feature_file", "query_feature_file")


def check_file_name(name: object, field: str) -> str:
    """``name`` if it is one plain file or folder name (no separator, not ``.``/``..``), else
    ``InvalidInputError`` naming the config ``field``: a config never points outside its collection."""
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise InvalidInputError(
            f"config.{field} = {name!r}; expected a plain file or folder name inside the collection "
            "(no '/', not '.' or '..')"
        )
    return name


@dataclass(frozen=True)
class FeatureNames:
    """The feature files one config reads: ``video`` under FeatureData/, ``query`` under TextData/.

    ``video_field`` / ``query_field`` name the config field that selects each (for messages and fixes).
    """

    video: str
    video_field: str
    query: str
    query_field: str


def feature_names(
    dataset: str,
    video_source: str,
    query_type: str,
    *,
    visual_feature: str | None = None,
    clip_feature_file: str | None = None,
    query_feature_file: str | None = None,
) -> FeatureNames:
    """The feature files a config reads in ``dataset``: the config's names where set, else the table's.

    Raises:
        InvalidInputError: an unknown dataset; a name that is not a plain name; the collection has no
            default file for this ``video_source`` / ``query_type`` and the config names none.
    """
    files = collection_files(dataset)
    if video_source == "bigfile":
        video, video_field = visual_feature or files.vfeat, "visual_feature"
    else:
        default = files.video_hdf5 if video_source == "hdf5" else files.patches
        video, video_field = clip_feature_file or default, "clip_feature_file"
    if video is None:
        raise InvalidInputError(
            f"dataset {dataset!r} has no video features for video_source {video_source!r}; "
            f"name a file with --config {video_field}=NAME"
        )
    query = query_feature_file or (files.token_feats if query_type == "tokens" else files.sentence_feats)
    if query is None:
        raise InvalidInputError(
            f"dataset {dataset!r} has no query features for query_type {query_type!r}; "
            "name a file with --config query_feature_file=NAME"
        )
    return FeatureNames(
        check_file_name(video, video_field), video_field, check_file_name(query, "query_feature_file"),
        "query_feature_file",
    )


# --- hints for the mistakes users make ------------------------------------------------------------------


def collection_root(data_root: str | os.PathLike, dataset: str) -> Path:
    """``<data_root>/<dataset>``, or ``InvalidInputError`` with a hint when ``data_root`` is the
    collection folder itself (``--data-root …/tvr``) rather than its parent."""
    data_root = Path(data_root)
    root = data_root / dataset
    if root.is_dir():
        return root
    if not data_root.is_dir():
        raise InvalidInputError(f"data root {data_root}: folder not found")
    looks_like_collection = (data_root / "TextData").is_dir() or (data_root / "FeatureData").is_dir()
    if data_root.name == dataset or looks_like_collection:
        raise InvalidInputError(
            f"{root}: collection folder for dataset {dataset!r} not found; {data_root} looks like the "
            f"collection folder itself: pass its parent, --data-root {data_root.parent}"
        )
    raise InvalidInputError(
        f"{root}: collection folder for dataset {dataset!r} not found (the data root holds <dataset>/ with "
        "TextData/ and FeatureData/ inside)"
    )


def missing_feature_hint(dataset: str, name: str) -> str:
    """Where a missing default feature file comes from ('' when there is nothing to add)."""
    files = DATASETS.get(dataset)
    if files is None or dataset == "demo":
        return ""
    if name == files.patches:
        return "pre-extracted CLIP ViT-B/32 patch tokens, [frames, 1+P, C] per video (in no public release)"
    if dataset == "msrvtt":
        return ""
    if name in (files.video_hdf5, files.sentence_feats):
        return (
            "AMDNet's CLIP ViT-B/32 files (FeatureData/"
            f"{files.video_hdf5}, TextData/{files.sentence_feats}) are not part of the MS-SL feature "
            "release; they come from the AMDNet authors (no public download is linked: ask them, or extract "
            "CLIP ViT-B/32 features yourself, docs/datasets.md) -- or name other files with --config "
            "clip_feature_file=... / query_feature_file=..."
        )
    if name in (files.vfeat, files.token_feats):
        return "part of the MS-SL feature release of this collection (the ms-sl README links it)"
    return ""
