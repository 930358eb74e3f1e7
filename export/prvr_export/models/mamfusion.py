"""MamFusion (Ying et al., arXiv 2506.03473): GMMFormer trunk and four Mamba residual branches.

Re-implemented from the description in docs/models.md §1.7, §2, §3 (the official repository carries no
licence):

    query:  q_tok [Nq,Lq,Dq] -> LinearLayer -> posenc(max_desc_l) -> BertAttention(mask) -> pool -> q [Nq,D]
    clips:  C [B,32,Dv] -> LinearLayer -> posenc -> GMMBlock -> MB -> GMMBlock -> MB          -> Xc [B,32,D]
    frames: F [B,Lf,Dv], m -> LinearLayer -> posenc -> GMMBlock(m) -> MB -> GMMBlock(m) -> MB
            -> pool(m) -> f [B,D]

with ``MB(X) = X + LN(Mamba(X))`` (unidirectional, causal). Score: ``0.7 max_c cos(q, Xc_c) + 0.3 cos(q, f)``;
the index holds ``Xc [32, D]`` and ``f [D]`` per video. Two temporal-fusion modules (cross-attention across
the batch's videos and queries, docs/models.md §3.2) are training-only: they turn the queries into ``q'``,
which feeds only the query-diversity loss. Inference never calls them, and the video path never sees a query.

Choices, each deliberate:

* **GMM widths over the valid length** (``gmm_length="valid"``, docs/models.md §2.2): the official code
  draws the frame branch's Gaussians over the padded batch length, so a video's embedding changed with its
  batch-mates. Here every video's Gaussians use its own length, so ``encode_video`` is padding-invariant
  (encode once, index). ``gmm_length="padded"`` restores the official rule.
* **Initialisation** (``mamba_init="official"``, docs/models.md §1.7, §3.5 item 3): faithful to the code that
  produced the paper's numbers, the GMMFormer re-init walks *every* sub-module, Mamba included: the Mamba
  in/x/dt/out projections are re-drawn from N(0, 0.02) and the ``dt_proj`` bias is zeroed (initial step
  softplus(0) ~ 0.69). ``mamba_init="stock"`` leaves each Mamba with mamba-ssm's own init instead.
* **Dead parameters dropped** (``fusion_dead_conv=False``, docs/models.md §3.5 item 4): each official fusion
  module also registers a Conv2d(5 -> 15680, 1x1) that no code path calls (94,080 parameters each). It is left
  out by default; ``fusion_dead_conv=True`` registers it so the parameter count matches docs/models.md §6
  exactly. The ``top_k`` / ``km`` attributes (not parameters) are not reproduced.
* **No 4x repeat in the fusion**: the official code repeats ``f`` four times before fusing. Row-wise attention
  gives four identical copies, and duplicated keys leave a softmax-weighted mean unchanged, so ``q'`` is the
  same without it.
* ``q'`` comes from a second pass of the query encoder (a fresh dropout draw), as in the official ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.serving import HEADLINE_KEYS, GraphSpec, ServingSpec, text_graph

from .. import losses
from ..nn.attention import LENGTH_MODES, BertAttention, GMMBlock
from ..nn.layers import LinearLayer, MambaResidual, bert_init_, tag_no_weight_decay
from ..nn.mamba import Mamba
from ..nn.pooling import AttentionPool
from ..nn.positional import TrainablePositionalEncoding
from ..scoring import cosine, max_over_clips, weighted_score
from .registry import PRVRConfig, register_model

__all__ = ["MamFusion", "MamFusionConfig", "TemporalFusion"]

MAMBA_INITS = ("official", "stock")


@dataclass(frozen=True)
class MamFusionConfig(PRVRConfig):
    """MamFusion's architecture and loss fields (defaults: the TVR config, docs/models.md §3.4)."""

    d_model: int = 384  # hidden size D
    n_heads: int = 8  # attention heads (TVR/ActivityNet 8, Charades 4)
    input_drop: float = 0.2  # dropout in LinearLayer and the positional encodings
    drop: float = 0.45  # dropout on attention probabilities and attention outputs
    initializer_range: float = 0.02  # std of the N(0, std) re-init
    d_state: int = 16  # Mamba state size
    d_conv: int = 4  # Mamba causal conv width
    expand: int = 2  # Mamba d_inner = expand * d_model
    gmm_widths: tuple[float, ...] = (0.5, 1.0, 5.0)  # Gaussian heads of a GMMBlock (plus one global head)
    gmm_length: str = "valid"  # Gaussians over each video's "valid" length (fix) | "padded" (official)
    mamba_init: str = "official"  # "official": re-init Mamba Linears, dt bias 0 (as the code); "stock": keep
    fusion_dead_conv: bool = False  # register the official fusion modules' unused Conv2d (2 x 94,080 params)
    clip_scale_w: float = 0.7  # score weight of max-over-clips cosine
    frame_scale_w: float = 0.3  # score weight of the pooled-frame cosine
    loss_factor: tuple[float, float, float] = (0.027, 0.045, 0.015)  # l1 clip NCE, l2 frame NCE, l3 q-div
    neg_factor: tuple[float, float] = (0.2, 32.0)  # (delta, alpha) of the query-diversity loss

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.query_type != "tokens":
            raise InvalidInputError(
                f"MamFusion reads token features; config.query_type = {self.query_type!r}"
            )
        if self.d_model % self.n_heads != 0:
            raise InvalidInputError(
                f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})"
            )
        if self.num_clips > self.max_ctx_l:
            raise InvalidInputError(f"num_clips ({self.num_clips}) exceeds max_ctx_l ({self.max_ctx_l})")
        if self.gmm_length not in LENGTH_MODES:
            raise InvalidInputError(
                f"config.gmm_length = {self.gmm_length!r}; expected one of {LENGTH_MODES}"
            )
        if self.mamba_init not in MAMBA_INITS:
            raise InvalidInputError(f"config.mamba_init = {self.mamba_init!r}; expected one of {MAMBA_INITS}")
        if len(self.loss_factor) != 3 or len(self.neg_factor) != 2:
            raise InvalidInputError(
                f"config.loss_factor needs 3 values and neg_factor 2; "
                f"got {self.loss_factor!r}, {self.neg_factor!r}"
            )


class TemporalFusion(nn.Module):
    """One fusion module: ``tgt * MHA(query=tgt, key=memory, value=memory)``, on unbatched [N, D] inputs.

    Attention therefore runs across the items of the mini-batch (videos attend over queries, or queries over
    videos). No residual, no norm, dropout 0 (docs/models.md §3.2).

    Args:
        d_model, n_heads: MHA sizes.
        dead_conv: also register the official, never-called Conv2d(5 -> 15680, 1x1).
    """

    def __init__(self, d_model: int, n_heads: int, dead_conv: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=0.0)
        self.dead_conv = nn.Conv2d(5, 15680, kernel_size=1) if dead_conv else None

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """tgt (N, D), memory (M, D) -> (N, D)."""
        attended, _ = self.attn(tgt, memory, memory, need_weights=False)
        return tgt * attended


class MamFusion(nn.Module):
    """MamFusion; see the module docstring. Implements ``prvr_export.models.base.PRVRModel``.

    Args:
        config: a ``MamFusionConfig``.
    """

    name = "mamfusion"
    video_inputs = ("clips", "frames", "frame_mask")

    def __init__(self, config: MamFusionConfig):
        super().__init__()
        self.config = config
        c, d = config, config.d_model
        widths = (None, *c.gmm_widths)

        def gmm_block() -> GMMBlock:
            return GMMBlock(d, c.n_heads, c.drop, widths=widths, length_mode=c.gmm_length)

        def mamba_branch() -> MambaResidual:
            return MambaResidual(d, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand)

        self.query_input_proj = LinearLayer(c.query_feat_dim, d, c.input_drop)
        self.query_pos_embed = TrainablePositionalEncoding(c.max_desc_l, d, c.input_drop, name="query")
        self.query_encoder = BertAttention(d, c.n_heads, c.drop)
        self.query_pool = AttentionPool(d)

        self.clip_input_proj = LinearLayer(c.video_feat_dim, d, c.input_drop)
        self.clip_pos_embed = TrainablePositionalEncoding(c.max_ctx_l, d, c.input_drop, name="clips")
        self.clip_encoder = nn.ModuleList([gmm_block(), gmm_block()])
        self.clip_mamba = nn.ModuleList([mamba_branch(), mamba_branch()])

        self.frame_input_proj = LinearLayer(c.video_feat_dim, d, c.input_drop)
        self.frame_pos_embed = TrainablePositionalEncoding(c.max_ctx_l, d, c.input_drop, name="frames")
        self.frame_encoder = nn.ModuleList([gmm_block(), gmm_block()])
        self.frame_mamba = nn.ModuleList([mamba_branch(), mamba_branch()])
        self.frame_pool = AttentionPool(d)

        # Training only (query-diversity loss); never on the inference path.
        self.v2t_fusion = TemporalFusion(d, c.n_heads, dead_conv=c.fusion_dead_conv)
        self.t2v_fusion = TemporalFusion(d, c.n_heads, dead_conv=c.fusion_dead_conv)

        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GMMFormer's re-init (docs/models.md §1.7), whole model; Mamba too unless ``mamba_init="stock"``."""
        skip = (lambda m: isinstance(m, Mamba)) if self.config.mamba_init == "stock" else None
        bert_init_(self, std=self.config.initializer_range, skip=skip)
        tag_no_weight_decay(self)

    # ------------------------------------------------------------------ encoders
    def encode_text(self, query: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token features -> one vector per query.

        Args:
            query: r(Nq Lq Dq) token features, Lq <= max_desc_l.
            query_mask: (Nq Lq) float, 1 on real tokens; None = all real.

        Returns:
            r(Nq D).

        Raises:
            ShapeMismatchError: wrong rank or feature width, or a mask of another shape.
        """
        c = self.config
        if query.dim() != 3 or query.shape[-1] != c.query_feat_dim:
            raise ShapeMismatchError(
                f"query must be [Nq, Lq, {c.query_feat_dim}] token features, got {tuple(query.shape)}"
            )
        if query_mask is None:
            query_mask = query.new_ones(query.shape[:2])
        elif tuple(query_mask.shape) != tuple(query.shape[:2]):
            raise ShapeMismatchError(
                f"query_mask must be [Nq, Lq] = {tuple(query.shape[:2])}, got {tuple(query_mask.shape)}"
            )
        query_mask = query_mask.to(query.dtype)
        x = self.query_pos_embed(self.query_input_proj(query))  # (Nq Lq D)
        x = self.query_encoder(x, query_mask)
        return self.query_pool(x, query_mask)  # (Nq D)

    def encode_video(
        self, clips: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Clip and frame features -> the video's index entry. Never sees a query.

        Args:
            clips: r(B Nc Dv) clip-pooled features (Nc = num_clips).
            frames: r(B Lf Dv) frame features, right-padded, Lf <= max_ctx_l.
            frame_mask: (B Lf) float, 1 on real frames; None = all real.

        Returns:
            ``{"clip_emb": r(B Nc D), "video_emb": r(B D)}`` (not normalised). A video's entry does not depend
            on the padding of its batch.

        Raises:
            ShapeMismatchError: wrong ranks, feature widths or batch sizes.
        """
        c = self.config
        if clips.dim() != 3 or clips.shape[-1] != c.video_feat_dim:
            raise ShapeMismatchError(f"clips must be [B, Nc, {c.video_feat_dim}], got {tuple(clips.shape)}")
        if frames.dim() != 3 or frames.shape[-1] != c.video_feat_dim or frames.shape[0] != clips.shape[0]:
            raise ShapeMismatchError(
                f"frames must be [B={clips.shape[0]}, Lf, {c.video_feat_dim}], got {tuple(frames.shape)}"
            )
        if frame_mask is None:
            frame_mask = frames.new_ones(frames.shape[:2])
        elif tuple(frame_mask.shape) != tuple(frames.shape[:2]):
            raise ShapeMismatchError(
                f"frame_mask must be [B, Lf] = {tuple(frames.shape[:2])}, got {tuple(frame_mask.shape)}"
            )
        frame_mask = frame_mask.to(frames.dtype)

        x = self.clip_pos_embed(self.clip_input_proj(clips))  # (B Nc D); 32 clips, never padded
        for gmm, mamba in zip(self.clip_encoder, self.clip_mamba, strict=True):
            x = mamba(gmm(x))

        y = self.frame_pos_embed(self.frame_input_proj(frames))  # (B Lf D)
        for gmm, mamba in zip(self.frame_encoder, self.frame_mamba, strict=True):
            y = mamba(gmm(y, frame_mask))  # causal scan: valid steps never see the right padding
        return {"clip_emb": x, "video_emb": self.frame_pool(y, frame_mask)}

    def serving_spec(self) -> ServingSpec:
        """Clip vectors (uniform in time) and one pooled video vector, scored 0.7 / 0.3 (configurable)."""
        c = self.config
        video = GraphSpec(
            {
                "clips": ("batch", c.num_clips, c.video_feat_dim),
                "frames": ("batch", "frames", c.video_feat_dim),
                "frame_mask": ("batch", "frames"),
            },
            ("clip_emb", "video_emb"),
        )
        return ServingSpec(
            video=video,
            text=text_graph(c.query_type, c.query_feat_dim),
            dim=c.d_model,
            scoring={"kind": "weighted", "clip_weight": float(c.clip_scale_w),
                     "frame_weight": float(c.frame_scale_w)},
            clip_output="clip_emb",
            video_output="video_emb",
            clip_count=c.num_clips,
            clip_time="uniform",
            headline=HEADLINE_KEYS[c.metric],
        )

    # ------------------------------------------------------------------ scoring
    def score(
        self, text_emb: torch.Tensor, video: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``clip_scale_w * max_c cos(q, clip_c) + frame_scale_w * cos(q, video_emb)``.

        Returns:
            scores r(Nq Nv) and best_clip long (Nq Nv).
        """
        clip_scores, best_clip = max_over_clips(text_emb, video["clip_emb"], normalize=True)
        frame_scores = cosine(text_emb, video["video_emb"])
        scores = weighted_score(
            clip_scores, frame_scores, self.config.clip_scale_w, self.config.frame_scale_w
        )
        return scores, best_clip

    # ------------------------------------------------------------------ training
    def fuse_queries(self, queries: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """The two temporal-fusion modules: ``V' = f * A``, ``q' = q * A'`` (docs/models.md §3.2). Training
        only.

        Args:
            queries: r(Nq D), the batch's queries.
            video_emb: r(B D), the batch's pooled frame vectors f.

        Returns:
            q' r(Nq D).
        """
        fused_videos = self.v2t_fusion(video_emb, queries)  # (B D): videos attend over the batch's queries
        return self.t2v_fusion(queries, fused_videos)  # (Nq D): queries attend over the fused videos

    def loss(self, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """docs/models.md §3.4: ``l1 NCE(clip) + trip(clip) + l2 NCE(frame) + trip(frame) + l3 L_qd(q')``.

        NCE terms use un-normalised scores (max-over-clips dot products, ``q . f``); triplets use cosines;
        hard negatives from ``epoch >= hard_negative_start_epoch`` (0-based).

        Args:
            batch: a training batch (``prvr_export.models.base``): clips, frames, frame_mask, query,
                query_mask, query_video.
            epoch: the current epoch, 0-based.

        Returns:
            (total loss, {part name: float}).
        """
        c = self.config
        video = self.encode_video(batch["clips"], batch["frames"], batch.get("frame_mask"))
        query_video = batch["query_video"].long()
        q = self.encode_text(batch["query"], batch.get("query_mask"))
        hard = epoch >= c.hard_negative_start_epoch
        clip_l, frame_l, qd_l = c.loss_factor
        delta, alpha = c.neg_factor

        clip_dot, _ = max_over_clips(q, video["clip_emb"], normalize=False)
        clip_cos, _ = max_over_clips(q, video["clip_emb"], normalize=True)
        frame_dot = q @ video["video_emb"].t()
        frame_cos = cosine(q, video["video_emb"])

        q_fused = self.fuse_queries(
            self.encode_text(batch["query"], batch.get("query_mask")), video["video_emb"]
        )
        parts = {
            "clip_nce": clip_l * losses.clip_nce(clip_dot, query_video),
            "clip_trip": losses.triplet_sampled(clip_cos, query_video, c.margin, hard, c.hard_pool_size),
            "frame_nce": frame_l * losses.clip_nce(frame_dot, query_video),
            "frame_trip": losses.triplet_sampled(frame_cos, query_video, c.margin, hard, c.hard_pool_size),
            "query_div": qd_l * losses.query_diversity(q_fused, query_video, delta, alpha),
        }
        total = sum(parts.values())
        return total, {name: float(value.detach()) for name, value in parts.items()}


register_model(MamFusion.name, MamFusionConfig, MamFusion)
