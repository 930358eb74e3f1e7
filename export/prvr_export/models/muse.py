"""MUSE: multi-scale Mamba over CLIP patch tokens (Tang et al., AAAI 2025; hrtang22/MUSE; docs/models.md §5).

The model is MUSE's similarity head ("sim_header MUSE") on top of *pre-extracted* CLIP outputs: the CLIP
image and text towers are not part of it. Video input: per frame the CLS token and the ``g x g`` patch tokens
after ``ln_post`` and the visual projection, ``patches [B, T, 1+g², C]`` with ``frame_mask [B, T]``. Text
input: the CLIP sentence feature (EOT token after ``ln_final`` and the text projection), ``[Nq, Dq]``.

Video path (``encode_video``):
1. ``FeaturePyramid`` on every frame's ``g x g`` patch map: scales 0.5 / 1.0 / 2.0 (3x3 + 7x7 + 14x14 = 254
   tokens per ViT-B/32 frame), each branch ending in ``C`` channels.
2. Scale-wise sequence (``scale_wise_sequence``): ``[CLS_1..CLS_T] ++ 0.5-scale tokens (frame-major,
   row-major) ++ 1.0-scale ++ 2.0-scale``.
3. ``n_blocks`` residual BiMamba blocks (``ResMambaBlock``): ``x <- x + Linear(Dropout_p(BiMamba(LN(x))))``,
   ``p = linspace(0, dropout, n_blocks)``.
4. The first T positions (the CLS slots) are the frame features ``[B, T, C]``; each is L2-normalised, the
   valid ones are averaged and the mean is L2-normalised: ``video_emb [B, C]``.
Text path (``encode_text``): the sentence feature, through a ``Linear(Dq -> C)`` only when ``Dq != C`` (the
MiniLM demo; upstream has none, CLIP's text projection already gives C), L2-normalised.
Score: ``text_emb @ video_emb.T``, a cosine of unit vectors; no best clip (``None``).
Loss: CLIP4Clip's symmetric InfoNCE on ``exp(logit_scale) * t vᵀ`` (see ``Muse.loss``).

Choices where the official code is defective or silent (docs/models.md §5.5):
* item 1, pyramid not registered upstream: the branches are an ``nn.ModuleList`` here, so they train,
  are saved in ``state_dict`` and survive a rebuild. They are named ``pyramid`` (upstream:
  ``mamba_stages``), so the ``lr_groups`` rule ``["mamba", 10.0]`` gives them the base learning rate and the
  10x rate stays with the residual Mamba blocks (``mamba_blocks.*``, upstream ``MS_mamba.*``: LN, BiMamba and
  output Linear), as upstream (whose log shows only CLIP's 1e-7 and the blocks' 1e-3: nothing trains at the
  base rate there). Add ``["pyramid", 10.0]`` to ``lr_groups`` for the rate the pyramid would have had
  upstream, registered under its original name.
* item 2, initialisation: ``init_scheme = "intended"`` (default) keeps what the authors wrote: each
  block's output Linear starts at zero, so every block starts as the identity and the model starts as
  CLIP4Clip's meanP; BiMamba keeps mamba-ssm's own initialisation (inverse-softplus dt bias). ``"clip4clip"``
  reproduces what upstream actually runs: CLIP4Clip's global pass draws every ``nn.Linear`` of the blocks
  (and the text projection) from N(0, 0.02) and zeroes every Linear bias, the ``dt_proj`` bias included
  (ignoring its ``_no_reinit`` tag); convolutions keep PyTorch's defaults in both schemes.
* item 3: the patch grid is the config field ``patch_grid`` (7 for ViT-B/32, 14 for ViT-B/16).
* Padding: upstream runs the scan over all T frames, padded ones included; their tokens sit in the middle
  of the frame-major sequence, so the forward scan carries them into later valid tokens. Here every token
  of a padded frame is moved behind all valid tokens (a stable partition of the sequence, ``pack_order``),
  the BiMamba blocks get a mask for the valid prefix (their backward scan then reverses only that prefix),
  and the CLS outputs are gathered back to their frame slots. A padded video therefore gets exactly the
  embedding of its valid frames alone, wherever the padding sits in ``frame_mask``.
* Normalisation is exact (``x / ||x||``, as upstream; ``F.normalize``'s 1e-12 floor only guards a zero
  vector), so ``score`` is a true cosine. A video with no valid frame gets a zero embedding (upstream divides
  by a frame count clamped to 1, then by a zero norm: NaN).
* ``logit_scale`` (CLIP's learned temperature, here owned by the head since CLIP is outside) starts at
  ``logit_scale_init`` and is clamped to [0, ``logit_scale_max`` = ln 100] by ``clamp_logit_scale``, which
  the training loop must call after every optimiser step. The default init is CLIP's from-scratch
  ln(1/0.07); upstream loads pretrained CLIP, whose value is ln 100, and trains it at CLIP's rate 1e-7, i.e.
  keeps it there, so ``muse-msrvtt`` starts at ln 100 (the demo, whose text projection starts from scratch,
  trains far better from ln(1/0.07)). It is tagged ``_no_weight_decay``: at CLIP's rate upstream's decay is
  negligible, at the head's rate a 0.2 decay would drag it toward 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.serving import HEADLINE_KEYS, GraphSpec, ServingSpec, text_graph

from ..losses import clip_nce
from ..nn.mamba import BiMamba
from ..nn.pyramid import SCALES, FeaturePyramid
from .registry import PRVRConfig, register_model

__all__ = [
    "Muse",
    "MuseConfig",
    "ResMambaBlock",
    "pack_order",
    "scale_wise_sequence",
    "sequence_frame_index",
]

INIT_SCHEMES = ("intended", "clip4clip")


@dataclass(frozen=True)
class MuseConfig(PRVRConfig):
    """``PRVRConfig`` with MUSE's defaults (docs/models.md §5.3) plus the head's architecture fields."""

    # --- training (docs/models.md §5.3; CLIP4Clip's BertAdam with warmup_cosine)
    lr: float = 1e-4
    batch_size: int = 128
    n_epoch: int = 5
    max_es_cnt: int = 5  # upstream has no early stopping; 5 = n_epoch never triggers it
    lr_warmup_proportion: float = 0.1
    weight_decay: float = 0.2
    seed: int = 42
    schedule: str = "warmup_cosine"
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    global_grad_clip: float | None = 1.0
    lr_groups: tuple[tuple[str, float], ...] = (("mamba", 10.0),)  # the residual Mamba blocks train at 10x
    metric: str = "r1"
    # hard_negative_start_epoch, hard_pool_size, margin: inherited and unused (MUSE has no triplet loss)

    # --- data
    video_feat_dim: int = 512  # C: CLIP width after the visual projection; the head works at this width
    query_feat_dim: int = 512  # Dq; a Linear(Dq -> C) text projection exists only when Dq != C
    query_type: str = "sentence"
    max_ctx_l: int = 12  # = max_frames
    max_desc_l: int = 32  # CLIP's max_words (unused with pre-extracted sentence features)
    normalize_video: bool = False  # CLIP tokens are used as they come
    normalize_query: bool = False  # encode_text normalises
    video_source: str = "patches"
    max_frames: int = 12  # T: frames per video (uniformly sampled by the data pipeline)
    patch_grid: int = 7  # g: patch tokens per frame = g * g (ViT-B/32 at 224 px: 7; ViT-B/16: 14)

    # --- architecture (docs/models.md §5.2)
    pyramid_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    n_blocks: int = 4  # residual BiMamba blocks
    d_state: int = 16
    d_conv: int = 4
    expand: int = 1  # Vim BiMamba with d_inner = C
    dropout: float = 0.1  # block i drops with p = linspace(0, dropout, n_blocks)[i]
    init_scheme: str = "intended"  # "intended" | "clip4clip" (see the module docstring)
    logit_scale_init: float = math.log(1 / 0.07)  # CLIP's initial temperature
    logit_scale_max: float = math.log(100.0)  # clamp_logit_scale keeps logit_scale in [0, this]
    notes: str = ""  # free text carried by the JSON file (provenance, deviations)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "pyramid_scales", tuple(float(s) for s in self.pyramid_scales))
        if self.init_scheme not in INIT_SCHEMES:
            raise InvalidInputError(
                f"config.init_scheme = {self.init_scheme!r}; expected one of {INIT_SCHEMES}"
            )
        if any(s not in SCALES for s in self.pyramid_scales):
            raise InvalidInputError(
                f"config.pyramid_scales = {self.pyramid_scales}; each must be one of {SCALES}"
            )
        if self.query_type != "sentence" or self.video_source != "patches":
            raise InvalidInputError(
                "MUSE reads sentence features and patch tokens: expected query_type 'sentence' and "
                f"video_source 'patches', got {self.query_type!r} and {self.video_source!r}"
            )
        for name in ("n_blocks", "patch_grid", "max_frames", "d_state", "d_conv", "expand"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise InvalidInputError(f"config.{name} = {getattr(self, name)!r}; expected a positive int")


# ----------------------------------------------------------------------------------------------
# The multi-scale token sequence and its padding-safe order.


def scale_wise_sequence(cls_tokens: torch.Tensor, scale_maps: list[torch.Tensor]) -> torch.Tensor:
    """MUSE's scale-wise sequence: all CLS tokens, then each scale's tokens, frame-major and row-major.

    Args:
        cls_tokens: r(B T C), the per-frame CLS tokens.
        scale_maps: per scale r(B*T C h w) (frame-major batch, as ``FeaturePyramid`` returns them).

    Returns:
        r(B L C) with ``L = T * (1 + sum h*w)``:
        ``[CLS_1..CLS_T] ++ [scale 1: frame 1 rows.., frame 2 ..] ++ [scale 2: ...] ++ ...``.
    """
    batch, _, channels = cls_tokens.shape
    parts = [cls_tokens]
    for m in scale_maps:
        parts.append(m.flatten(2).transpose(1, 2).reshape(batch, -1, channels))  # (B T*h*w C)
    return torch.cat(parts, dim=1)


def sequence_frame_index(num_frames: int, grids: tuple[int, ...], device=None) -> torch.Tensor:
    """long (L): the frame each position of ``scale_wise_sequence`` belongs to (for grids ``g_s x g_s``)."""
    frames = torch.arange(num_frames, device=device)
    parts = [frames] + [frames[:, None].expand(num_frames, g * g).reshape(-1) for g in grids]
    return torch.cat(parts)


def pack_order(token_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable partition of each row: valid positions first (in order), then the padded ones (in order).

    Args:
        token_valid: bool (B L).

    Returns:
        ``dest`` long (B L), the packed position of every original position (a permutation per row), and
        ``valid`` bool (B L), the prefix mask of the packed rows. Built from cumulative sums, not a sort, so
        it is deterministic and exports to ONNX.
    """
    v = token_valid.long()
    n_valid = v.sum(dim=1, keepdim=True)  # (B 1)
    dest = torch.where(token_valid, v.cumsum(dim=1) - 1, n_valid + (1 - v).cumsum(dim=1) - 1)  # (B L)
    positions = torch.arange(token_valid.shape[1], device=token_valid.device)
    return dest, positions < n_valid


# ----------------------------------------------------------------------------------------------
# Layers.


class ResMambaBlock(nn.Module):
    """``x <- x + out(Dropout_p(BiMamba(norm(x))))``: the paper's "ResMamba" (upstream ``Mamba_head``).

    The paper's "gated residual" (docs/models.md §5.5 item 4) has no gate tensor: the zero-initialised output
    Linear plays that role (``zero_init_out``).
    """

    def __init__(
        self, d_model: int, d_state: int, d_conv: int, expand: int, dropout: float, zero_init_out: bool
    ):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mamba = BiMamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, d_model)
        if zero_init_out:  # the block starts as the identity (docs/models.md §5.5 item 2, "intended")
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, C) -> (B, L, C); ``mask`` bool (B, L) marks each row's valid prefix (None: all valid)."""
        return x + self.out(self.drop(self.mamba(self.norm(x), mask)))


class Muse(nn.Module):
    """MUSE's video head over CLIP patch tokens and its sentence side (see the module docstring).

    Args:
        config: a ``MuseConfig``.
    """

    name = "muse"
    video_inputs = ("patches", "frame_mask")

    def __init__(self, config: MuseConfig):
        super().__init__()
        self.config = config
        c = config.video_feat_dim
        self.d_model = c
        self.grid = config.patch_grid
        self.text_proj = nn.Linear(config.query_feat_dim, c) if config.query_feat_dim != c else None
        self.pyramid = FeaturePyramid(c, config.patch_grid, config.pyramid_scales)
        drop = np.linspace(0.0, config.dropout, config.n_blocks)
        zero_out = config.init_scheme == "intended"
        self.mamba_blocks = nn.ModuleList(
            ResMambaBlock(c, config.d_state, config.d_conv, config.expand, float(p), zero_out) for p in drop
        )
        # CLIP's temperature; lives here because CLIP itself is outside the model.
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.logit_scale._no_weight_decay = True  # see the module docstring
        if config.init_scheme == "clip4clip":
            self._clip4clip_init()

    def _clip4clip_init(self) -> None:
        """CLIP4Clip's ``init_weights`` over the modules it would reach: Linear ~ N(0, 0.02), bias 0."""
        modules = [self.mamba_blocks] + ([self.text_proj] if self.text_proj is not None else [])
        for root in modules:
            for m in root.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, mean=0.0, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)  # also dt_proj's bias: upstream ignores its _no_reinit tag

    # ------------------------------------------------------------------------------------------
    # Video path.

    def _check_video(self, patches: torch.Tensor, frame_mask: torch.Tensor | None) -> None:
        tokens = 1 + self.grid * self.grid
        if patches.dim() != 4 or patches.shape[2] != tokens or patches.shape[3] != self.d_model:
            raise ShapeMismatchError(
                f"muse: patches must have shape [B, T, 1+{self.grid}*{self.grid}={tokens}, {self.d_model}] "
                f"(CLS + patch tokens per frame), got {tuple(patches.shape)}"
            )
        if frame_mask is not None and tuple(frame_mask.shape) != tuple(patches.shape[:2]):
            raise ShapeMismatchError(
                f"muse: frame_mask must have shape [B, T] = {tuple(patches.shape[:2])} to match patches, "
                f"got {tuple(frame_mask.shape)}"
            )

    def frame_features(self, patches: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The CLS-slot outputs of the Mamba stack, un-normalised.

        Args:
            patches: r(B T 1+g² C), CLS then row-major patch tokens per frame.
            frame_mask: r(B T), 1 on real frames (any pattern), or None when every frame is real.

        Returns:
            r(B T C). Rows of padded frames are not meaningful; valid rows do not depend on them.

        Raises:
            ShapeMismatchError: ``patches`` or ``frame_mask`` does not fit the config.
        """
        self._check_video(patches, frame_mask)
        batch, num_frames, _, c = patches.shape
        cls_tokens = patches[:, :, 0]  # (B T C)
        grid_map = patches[:, :, 1:].reshape(batch * num_frames, self.grid, self.grid, c).permute(0, 3, 1, 2)
        x = scale_wise_sequence(cls_tokens, self.pyramid(grid_map))  # (B L C)
        if frame_mask is None:
            for block in self.mamba_blocks:
                x = block(x)
            return x[:, :num_frames]  # (B T C)

        token_frame = sequence_frame_index(num_frames, self.pyramid.grids, device=patches.device)  # (L)
        dest, valid = pack_order(frame_mask[:, token_frame] > 0.5)  # (B L) each
        x = x.new_zeros(x.shape).scatter(1, dest[..., None].expand_as(x), x)  # valid tokens first
        for block in self.mamba_blocks:
            x = block(x, valid)
        cls_dest = dest[:, :num_frames, None].expand(-1, -1, c)  # packed position of each CLS slot
        return x.gather(1, cls_dest)  # (B T C)

    def encode_video(
        self, patches: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Video embedding: the L2-normalised mean of the L2-normalised valid frame features.

        Args:
            patches: r(B T 1+g² C).
            frame_mask: r(B T), 1 on real frames; None = all real.

        Returns:
            ``{"video_emb": r(B C)}``, unit rows (a zero row for a video without valid frames).
        """
        feats = F.normalize(self.frame_features(patches, frame_mask), dim=-1)  # (B T C)
        if frame_mask is None:
            pooled = feats.mean(dim=1)
        else:
            m = (frame_mask > 0.5).to(feats.dtype)[..., None]  # (B T 1)
            pooled = (feats * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # (B C)
        return {"video_emb": F.normalize(pooled, dim=-1)}

    def serving_spec(self) -> ServingSpec:
        """One vector per video (no clips, so no moments); reports follow the text-video protocol
        (R@1/5/10, MdR, MnR) whatever metric selects its epochs."""
        c = self.config
        tokens = 1 + int(c.patch_grid) ** 2
        video = GraphSpec(
            {"patches": ("batch", "frames", tokens, c.video_feat_dim), "frame_mask": ("batch", "frames")},
            ("video_emb",),
        )
        return ServingSpec(
            video=video,
            text=text_graph(c.query_type, c.query_feat_dim),
            dim=c.video_feat_dim,
            scoring={"kind": "video"},
            video_output="video_emb",
            headline=HEADLINE_KEYS["r1"],
        )

    # ------------------------------------------------------------------------------------------
    # Text path, score, loss.

    def encode_text(self, query: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unit sentence embeddings: ``normalize(query)`` (``normalize(text_proj(query))`` when Dq != C).

        Args:
            query: r(Nq Dq), CLIP (or, in the demo, MiniLM) sentence features.
            query_mask: ignored; sentence features have no token axis.

        Returns:
            r(Nq C).

        Raises:
            ShapeMismatchError: ``query`` is not [Nq, query_feat_dim].
        """
        if query.dim() != 2 or query.shape[1] != self.config.query_feat_dim:
            raise ShapeMismatchError(
                f"muse: query must be sentence features [Nq, {self.config.query_feat_dim}], "
                f"got {tuple(query.shape)}"
            )
        if self.text_proj is not None:
            query = self.text_proj(query)
        return F.normalize(query, dim=-1)

    def score(self, text_emb: torch.Tensor, video: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
        """``text_emb @ video_emb.T`` [Nq, Nv]: cosine of unit vectors. MUSE has no clips, so no best clip."""
        return text_emb @ video["video_emb"].T, None

    def loss(self, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """CLIP4Clip's symmetric InfoNCE on ``exp(logit_scale) * t vᵀ`` (docs/models.md §5.3).

        Upstream pairs one caption with one video per batch row and takes ``½[CE(logits) + CE(logitsᵀ)]``
        with diagonal positives. PRVR batches carry several captions per video (``query_video``), so the
        multi-positive form is used: text-to-video is cross-entropy over the videos with target
        ``query_video``; video-to-text is, per video, ``logsumexp`` over all captions minus ``logsumexp`` over
        its own. That is ``½ clip_nce(logits, query_video)``, equal to upstream's loss when each video has
        exactly one caption. ``epoch`` is unused (no schedule of loss terms).

        Returns:
            ``(loss, {"infonce": ..., "logit_scale": exp(logit_scale)})``.
        """
        video = self.encode_video(patches=batch["patches"], frame_mask=batch.get("frame_mask"))
        text = self.encode_text(batch["query"])
        logits = self.logit_scale.exp() * (text @ video["video_emb"].T)  # (Nq B)
        loss = 0.5 * clip_nce(logits, batch["query_video"])
        return loss, {"infonce": float(loss.detach()), "logit_scale": float(self.logit_scale.detach().exp())}

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp ``logit_scale`` to [0, ``logit_scale_max``] in place (CLIP4Clip does this after every step).

        The training loop must call it after each ``optimizer.step()``.
        """
        self.logit_scale.clamp_(0.0, self.config.logit_scale_max)


register_model("muse", MuseConfig, Muse)
