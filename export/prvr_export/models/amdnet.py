"""AMDNet (Song et al., IEEE TMM 2025, arXiv 2504.10920): learnable moment anchors over clips.

See docs/models.md §4.

Re-implemented from the description in docs/models.md §1.7, §4 (the official repository carries no licence):

    q  = LinearLayer(sentence)                                      [Nq, D]
    X  = posenc(LinearLayer(clips))                                 [B, 32, D]
    g  = Linear(LayerNorm(mean_t X))                                [B, D]     video-level vector
    c, w = sigmoid(Linear(g)) -> [B, K, 2]                                     learnable span anchors
    M  = Gaussian masks [B, K, 32] (peak 1), P = M X                [B, K, D]  moment features
    O0 = BertAttention(X);  O1 = BertAttention_masked(O0, M);  Y = (O0 + O1) / 2   moment-enhanced clips

Masked multi-moment attention: head k's logits are multiplied by ``M_k(key position)`` before the softmax,
so H must equal K. There is no frame branch and no text transformer.

Scoring (``score_mode``):

* ``"clips"`` (default, the code's rule): ``s = max_c cos(q, Y_c)``; index ``Y [32, D]`` per video.
* ``"moments"`` (the paper's max-over-moments reading, docs/models.md §4.6 item 1): ``s = max_k cos(q, P_k)``;
  index ``P [K, D]`` per video plus the anchors ``(c_k, w_k)`` (``moment_anchor``). The NCE loss then trains
  the same moment scores. ``Y`` is used by neither scoring nor any loss in this mode, so the two attention
  blocks are not built (the model is smaller than the §6 figure).

Losses (docs/models.md §4.4): ``l1 NCE(max-over-tokens dot) + l2 L_div(M) + 25 L_rel``. As in the official
``forward``, the relevance loss reads the queries from a second pass of the query encoder (fresh dropout).
Defects of the released code (§4.6 item 2) do not arise here: there is no stray ``generate_gauss_weight``
call, the encoder returns one dict, and the unfinished ``soft_moment_mask`` helper is not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.serving import HEADLINE_KEYS, GraphSpec, ServingSpec, text_graph

from .. import losses
from ..nn.attention import BertAttention, moment_masks
from ..nn.layers import LinearLayer, bert_init_, tag_no_weight_decay
from ..nn.positional import TrainablePositionalEncoding
from ..scoring import max_over_clips
from .registry import PRVRConfig, register_model

__all__ = ["AMDNet", "AMDNetConfig"]

SCORE_MODES = ("clips", "moments")


@dataclass(frozen=True)
class AMDNetConfig(PRVRConfig):
    """AMDNet's architecture and loss fields (defaults: the TVR config, docs/models.md §4.5)."""

    d_model: int = 384  # hidden size D (TVR 384, ActivityNet/Charades 256)
    n_heads: int = 4  # attention heads H, which is also the number of moments K (event_size)
    input_drop: float = 0.2  # dropout in LinearLayer and the positional encoding
    drop: float = 0.2  # dropout on attention probabilities and attention outputs
    initializer_range: float = 0.02  # std of the N(0, std) re-init
    score_mode: str = "clips"  # "clips": max over the 32 enhanced clips (code); "moments": max over K moments
    loss_factor: tuple[float, float] = (0.04, 1.0)  # lambda1 clip NCE, lambda2 moment diversity
    relevance_weight: float = 25.0  # weight of the moment relevance loss
    relevance_margin: float = 0.02  # margin of the moment relevance loss
    diversity_target: float = 0.15  # diagonal target of the moment diversity loss

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.query_type != "sentence":
            raise InvalidInputError(
                f"AMDNet reads sentence features; config.query_type = {self.query_type!r}"
            )
        if self.d_model % self.n_heads != 0:
            raise InvalidInputError(
                f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})"
            )
        if self.num_clips > self.max_ctx_l:
            raise InvalidInputError(f"num_clips ({self.num_clips}) exceeds max_ctx_l ({self.max_ctx_l})")
        if self.score_mode not in SCORE_MODES:
            raise InvalidInputError(f"config.score_mode = {self.score_mode!r}; expected one of {SCORE_MODES}")
        if len(self.loss_factor) != 2:
            raise InvalidInputError(f"config.loss_factor needs 2 values, got {self.loss_factor!r}")


class AMDNet(nn.Module):
    """AMDNet; see the module docstring. Implements ``prvr_export.models.base.PRVRModel``.

    Args:
        config: an ``AMDNetConfig``.
    """

    name = "amdnet"
    video_inputs = ("clips",)

    def __init__(self, config: AMDNetConfig):
        super().__init__()
        self.config = config
        c, d = config, config.d_model
        self.n_moments = c.n_heads
        self.query_input_proj = LinearLayer(c.query_feat_dim, d, c.input_drop)
        self.clip_input_proj = LinearLayer(c.video_feat_dim, d, c.input_drop)
        self.clip_pos_embed = TrainablePositionalEncoding(c.max_ctx_l, d, c.input_drop, name="clips")
        # Video-level vector g and the K span anchors predicted from it.
        self.video_norm = nn.LayerNorm(d)
        self.video_proj = nn.Linear(d, d)
        self.anchor_proj = nn.Linear(d, 2 * self.n_moments)
        if c.score_mode == "clips":
            self.global_attn = BertAttention(d, c.n_heads, c.drop)
            self.moment_attn = BertAttention(d, c.n_heads, c.drop)  # head k masked by moment k
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GMMFormer's re-init (docs/models.md §1.7): Linear/Embedding N(0, 0.02), biases 0, LN (1, 0)."""
        bert_init_(self, std=self.config.initializer_range)
        tag_no_weight_decay(self)

    # ------------------------------------------------------------------ encoders
    def encode_text(self, query: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence features r(Nq Dq) -> r(Nq D); ``query_mask`` is only there for the common signature.

        Raises:
            ShapeMismatchError: not a [Nq, Dq] sentence matrix.
        """
        if query.dim() != 2 or query.shape[-1] != self.config.query_feat_dim:
            raise ShapeMismatchError(
                f"query must be [Nq, {self.config.query_feat_dim}] sentence features, "
                f"got {tuple(query.shape)}"
            )
        return self.query_input_proj(query)

    def encode_parts(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the video path computes: tokens X, g, anchors, masks M, moments P and (clips mode) Y.

        Args:
            clips: r(B Nc Dv).

        Returns:
            dict with ``tokens`` (B Nc D), ``video_vec`` (B D), ``anchors`` (B K 2) = (centre, width),
            ``masks`` (B K Nc), ``moments`` (B K D) and, in clips mode, ``enhanced`` (B Nc D).
        """
        c = self.config
        if clips.dim() != 3 or clips.shape[-1] != c.video_feat_dim:
            raise ShapeMismatchError(f"clips must be [B, Nc, {c.video_feat_dim}], got {tuple(clips.shape)}")
        x = self.clip_pos_embed(self.clip_input_proj(clips))  # (B Nc D)
        video_vec = self.video_proj(self.video_norm(x.mean(dim=1)))  # (B D)
        anchors = torch.sigmoid(self.anchor_proj(video_vec)).unflatten(-1, (self.n_moments, 2))  # (B K 2)
        masks = moment_masks(anchors[..., 0], anchors[..., 1], x.shape[1])  # (B K Nc)
        parts = {
            "tokens": x,
            "video_vec": video_vec,
            "anchors": anchors,
            "masks": masks,
            "moments": masks @ x,  # (B K D); weights peak at 1, they do not sum to 1
        }
        if c.score_mode == "clips":
            o0 = self.global_attn(x)
            o1 = self.moment_attn(o0, weights=masks.unsqueeze(2))  # (B K 1 Nc): head k, every query row
            parts["enhanced"] = (o0 + o1) / 2
        return parts

    def encode_video(
        self,
        clips: torch.Tensor,
        frames: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Clip features -> the video's index entry. Never sees a query; ``frames``/``frame_mask`` are unused.

        Returns:
            clips mode: ``{"clip_emb": r(B Nc D)}``; moments mode: ``{"moment_emb": r(B K D),
            "moment_anchor": r(B K 2)}`` (centre and width of each Gaussian, as fractions of the video).
        """
        parts = self.encode_parts(clips)
        if self.config.score_mode == "clips":
            return {"clip_emb": parts["enhanced"]}
        return {"moment_emb": parts["moments"], "moment_anchor": parts["anchors"]}

    def serving_spec(self) -> ServingSpec:
        """Clips mode: the 32 enhanced clips, uniform in time. Moments mode: the K moment vectors, each
        spanning its learned anchor (``moment_anchor``: centre, width as fractions of the video)."""
        c = self.config
        moments = c.score_mode == "moments"
        outputs = ("moment_emb", "moment_anchor") if moments else ("clip_emb",)
        return ServingSpec(
            video=GraphSpec({"clips": ("batch", c.num_clips, c.video_feat_dim)}, outputs),
            text=text_graph(c.query_type, c.query_feat_dim),
            dim=c.d_model,
            scoring={"kind": "max_clip"},
            clip_output=outputs[0],
            clip_count=self.n_moments if moments else c.num_clips,
            clip_time="anchors" if moments else "uniform",
            anchor_output="moment_anchor" if moments else None,
            headline=HEADLINE_KEYS[c.metric],
        )

    # ------------------------------------------------------------------ scoring
    def _score_tokens(self, video: dict[str, torch.Tensor]) -> torch.Tensor:
        return video["clip_emb"] if self.config.score_mode == "clips" else video["moment_emb"]

    def score(
        self, text_emb: torch.Tensor, video: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``max_c cos(q, Y_c)`` (clips mode) or ``max_k cos(q, P_k)`` (moments mode).

        Returns:
            scores r(Nq Nv) and the winning clip (or moment) index, long (Nq Nv).
        """
        return max_over_clips(text_emb, self._score_tokens(video), normalize=True)

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """docs/models.md §4.4: ``l1 NCE(max-over-tokens dot) + l2 L_div(M) + relevance_weight L_rel``.

        ``epoch`` is accepted for the common signature: AMDNet has no hard-negative schedule.
        """
        c = self.config
        parts = self.encode_parts(batch["clips"])
        query_video = batch["query_video"].long()
        q = self.encode_text(batch["query"])
        tokens = parts["enhanced"] if c.score_mode == "clips" else parts["moments"]
        dot, _ = max_over_clips(q, tokens, normalize=False)
        nce_l, div_l = c.loss_factor
        q_rel = self.encode_text(batch["query"])  # second pass, fresh dropout (official forward)
        terms = {
            "clip_nce": nce_l * losses.clip_nce(dot, query_video),
            "moment_div": div_l * losses.moment_diversity(parts["masks"], c.diversity_target),
            "moment_rel": c.relevance_weight
            * losses.moment_relevance(
                q_rel, parts["moments"], parts["video_vec"], query_video, c.relevance_margin
            ),
        }
        total = sum(terms.values())
        return total, {name: float(value.detach()) for name, value in terms.items()}


register_model(AMDNet.name, AMDNetConfig, AMDNet)
