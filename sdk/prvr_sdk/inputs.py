"""Model inputs from raw features: one code path for training (``prvr_export.data``) and serving (Retriever).

A video arrives as frame features ``[T, Dv]`` (or, for MUSE, per-frame CLIP tokens ``[T, 1+P, C]``) and a
query as token features ``[Lq, Dq]`` or one sentence vector ``[Dq]``. What the encoders see is derived here
and nowhere else, so an embedding computed at serving time equals the one the model was evaluated on:

* clip/frame models: ``pool_clips`` to ``num_clips`` rows and ``sample_frames`` to ``max_frames`` rows, each
  row L2-normalised when the model asks (``prvr_sdk.features``);
* patch models (MUSE): ``max_frames`` whole frames at CLIP4Clip's linspace positions
  (``features.uniform_frame_indices``), normalised per token;
* queries: token rows (or the sentence vector) L2-normalised, tokens cut to ``max_tokens``.

``pad_videos`` / ``pad_queries`` batch variable-length items right-padded with a float mask (1 = real), the
layout the encoders and the exported graphs take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.features import l2_normalize, pool_clips, sample_frames, uniform_frame_indices, validate_frames

__all__ = [
    "QUERY_EPS",
    "TextSpec",
    "VideoSpec",
    "pad_queries",
    "pad_videos",
    "prepare_query",
    "prepare_video",
]

QUERY_EPS = 1e-5  # docs/models.md §1.3: eps added to the norm


@dataclass(frozen=True)
class VideoSpec:
    """What a video encoder takes.

    Attributes:
        feature_dim: ``Dv`` of every frame feature (``C`` of every token for patches).
        num_clips: clip rows (32).
        max_frames: frame rows after ``sample_frames`` (``max_ctx_l``), or sampled frames for patches.
        normalize: L2-normalise rows before the encoder.
        patches: tokens per frame (``1 + P``) for patch models, ``None`` for frame-feature models.
    """

    feature_dim: int
    num_clips: int = 32
    max_frames: int = 128
    normalize: bool = True
    patches: int | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> VideoSpec:
        """The spec a bundle's manifest records (``video_input`` plus MUSE's ``patch_grid``)."""
        v = manifest["video_input"]
        patches = None
        if v.get("source") == "patches":
            grid = int(manifest["model"]["config"]["patch_grid"])
            patches = 1 + grid * grid
        return cls(int(v["feature_dim"]), int(v["num_clips"]), int(v["max_frames"]), bool(v["normalize"]),
                   patches)

    def check(self, raw: Any, name: str) -> np.ndarray:
        """Validate one video's raw features (shape, dim, NaN/Inf, at least one frame) -> float32."""
        if self.patches is None:
            return validate_frames(raw, self.feature_dim, name=name)
        arr = np.asarray(raw)
        want = (self.patches, self.feature_dim)
        if arr.ndim != 3 or arr.shape[1:] != want:
            raise ShapeMismatchError(f"{name}: expected [num_frames, {want[0]}, {want[1]}] patch tokens, "
                                     f"got shape {arr.shape}")
        flat = validate_frames(arr.reshape(arr.shape[0], want[0] * want[1]), None, name=name)
        return flat.reshape(arr.shape)


def prepare_video(raw: np.ndarray, spec: VideoSpec) -> dict[str, np.ndarray]:
    """Encoder inputs of one video: ``{"clips" [Nc, Dv], "frames" [Lf, Dv]}`` or ``{"patches" [T, 1+P, C]}``.

    ``raw`` must already be checked (``VideoSpec.check`` or a validating reader).
    """
    if spec.patches is not None:
        patches = raw[uniform_frame_indices(len(raw), spec.max_frames)]
        if spec.normalize:
            patches = l2_normalize(patches, axis=-1)
        return {"patches": np.ascontiguousarray(patches, dtype=np.float32)}
    clips = pool_clips(raw, spec.num_clips)
    frames = sample_frames(raw, spec.max_frames)
    if spec.normalize:
        clips, frames = l2_normalize(clips), l2_normalize(frames)
    return {"clips": clips, "frames": frames}


def pad_videos(items: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batch ``prepare_video`` outputs: ``clips [B, Nc, Dv]``, ``frames [B, Lf, Dv]`` zero-padded (or
    ``patches [B, T, 1+P, C]``) and ``frame_mask [B, Lf|T]`` float32."""
    if not items:
        raise InvalidInputError("pad_videos: empty batch")
    key = "patches" if "patches" in items[0] else "frames"
    lengths = [len(item[key]) for item in items]
    first = items[0][key]
    padded = np.zeros((len(items), max(lengths), *first.shape[1:]), dtype=np.float32)
    mask = np.zeros((len(items), max(lengths)), dtype=np.float32)
    for b, (item, n) in enumerate(zip(items, lengths, strict=True)):
        padded[b, :n] = item[key]
        mask[b, :n] = 1.0
    batch = {key: padded, "frame_mask": mask}
    if key == "frames":
        batch["clips"] = np.stack([item["clips"] for item in items]).astype(np.float32, copy=False)
    return batch


@dataclass(frozen=True)
class TextSpec:
    """What a text encoder takes: ``kind`` "tokens" ([Lq, Dq] per query) or "sentence" ([Dq])."""

    kind: str
    dim: int
    max_tokens: int
    normalize: bool = True

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> TextSpec:
        t = manifest["text_input"]
        return cls(str(t["kind"]), int(t["dim"]), int(t["max_tokens"]), bool(t["normalize"]))


def prepare_query(value: np.ndarray, spec: TextSpec) -> np.ndarray:
    """One query's encoder input: rows normalised when the model asks, tokens cut to ``max_tokens``."""
    if spec.normalize:
        value = l2_normalize(value, axis=-1, eps=QUERY_EPS)
    if spec.kind == "tokens":
        value = np.ascontiguousarray(value[: spec.max_tokens])
    return value


def pad_queries(queries: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Sentence vectors stacked ``query [N, Dq]``; token sequences zero-padded ``query [N, Lq, Dq]`` plus
    ``query_mask [N, Lq]`` float32."""
    if not queries:
        raise InvalidInputError("pad_queries: empty batch")
    if queries[0].ndim == 1:
        return {"query": np.stack(queries).astype(np.float32, copy=False)}
    lengths = [len(q) for q in queries]
    padded = np.zeros((len(queries), max(lengths), queries[0].shape[-1]), dtype=np.float32)
    mask = np.zeros((len(queries), max(lengths)), dtype=np.float32)
    for k, (q, n) in enumerate(zip(queries, lengths, strict=True)):
        padded[k, :n] = q
        mask[k, :n] = 1.0
    return {"query": padded, "query_mask": mask}
