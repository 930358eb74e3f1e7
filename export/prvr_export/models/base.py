"""The contract every PRVR model implements (docs/architecture.md §2), and the batch that training feeds it.

A model splits into a video encoder and a text encoder whose outputs are independent, so videos are
encoded once and indexed; ``score`` is a cheap function of the two (max-over-clips cosine, plus a pooled
cosine for some models). The video path never sees the query.

Training batch (a plain dict, built by ``prvr_export.data`` collate functions):

    clips        float [B, 32, Dv]       clip-pooled video features (prvr_sdk.features.pool_clips)
    frames       float [B, Lf, Dv]       frame-sampled features, zero-padded (prvr_sdk.features.sample_frames)
    frame_mask   float [B, Lf]           1 on real frames
    patches      float [B, T, 1+P, C]    MUSE only: per-frame CLS + patch tokens; frame_mask is then [B, T]
    query        float [Nq, Lq, Dq]      token features (MamFusion) or [Nq, Dq] sentence features
    query_mask   float [Nq, Lq]          1 on real tokens (absent for sentence features)
    query_video  long  [Nq]              batch index of each query's ground-truth video
    video_ids    list[str] (B), caption_ids list[str] (Nq)

Every model is an ``nn.Module`` with:
    encode_video(batch-like kwargs) -> dict[str, Tensor]   e.g. {"clip_emb": [B,32,D], "video_emb": [B,D]}
    encode_text(query, query_mask=None) -> Tensor [Nq, D]
    score(text_emb, video: dict) -> (scores [Nq, Nv], best_clip [Nq, Nv] long or None)
    loss(batch, epoch: int) -> (loss scalar, dict[str, float] of parts)   training only
    serving_spec() -> prvr_sdk.serving.ServingSpec   what export, serving and evaluation read about the model
and class attributes ``name`` (registry key) and ``video_inputs`` (the batch keys encode_video reads).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from prvr_sdk.serving import ServingSpec

Tensor = torch.Tensor


@runtime_checkable
class PRVRModel(Protocol):
    name: str
    video_inputs: tuple[str, ...]

    def encode_video(self, **inputs: Tensor) -> dict[str, Tensor]: ...

    def encode_text(self, query: Tensor, query_mask: Tensor | None = None) -> Tensor: ...

    def score(self, text_emb: Tensor, video: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]: ...

    def loss(self, batch: dict, epoch: int) -> tuple[Tensor, dict[str, float]]: ...

    def serving_spec(self) -> ServingSpec: ...  # graphs, outputs, dims, scoring, clip times, headline
