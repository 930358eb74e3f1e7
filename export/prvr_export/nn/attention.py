"""Self-attention of the GMMFormer family, with multiplicative Gaussian weights (docs/models.md §1.7, §4.2).

* ``BertAttention``: multi-head self-attention without a feed-forward sub-layer, post-LN residual. Optional
  multiplicative ``weights`` scale the logits before the padding mask and the softmax, so far-away logits
  shrink towards 0 (they are not pushed to -inf).
* ``gmm_weights``: GMMFormer's fixed-width Gaussian over positions; ``GMMBlock`` averages a global head and
  three Gaussian heads.
* ``moment_masks``: AMDNet's learnable Gaussian span anchors, one row per moment.

Deliberate fix (docs/models.md §2.2): the official code draws the GMM Gaussian over the *padded* batch
length, so a video's frame embedding depends on what it is batched with, which breaks "encode each video
once and index it". ``gmm_weights`` takes each sequence's valid length from the mask instead, so right
padding never changes a video's embedding. ``GMMBlock(length_mode="padded")`` reproduces the official rule.
On unpadded input (the 32 clips) both rules are identical.

Shape comments: B batch, H heads, L length (Lq query rows, Lk key columns), K moments, D width.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from prvr_sdk.errors import InvalidInputError

__all__ = [
    "GMM_WIDTHS",
    "BertAttention",
    "GMMBlock",
    "gaussian_weights",
    "gmm_weights",
    "moment_masks",
]

GMM_WIDTHS: tuple[float | None, ...] = (None, 0.5, 1.0, 5.0)  # None = the global (unweighted) head
MASKED_LOGIT = -10000.0  # BERT's additive padding mask
MIN_WIDTH = 0.01  # widths are clamped from below before sigma = width / 9
LENGTH_MODES = ("valid", "padded")


def gaussian_weights(
    positions: torch.Tensor,
    centres: torch.Tensor,
    widths: torch.Tensor | float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows ``g_r(p) = exp(-(p - c_r)^2 / (2 sigma_r^2))``, ``sigma_r = max(w_r, 0.01) / 9``, peak 1 per row.

    Each row is divided by its maximum over the valid positions (done in log space, so narrow rows never
    underflow to 0/0); invalid positions get weight 0.

    Args:
        positions: r(* Lk), the positions p in [0, 1].
        centres: r(* R), one centre per row.
        widths: r(* R) or a float.
        valid: bool (* Lk), True on real positions; None = all real. Every row needs one real position.

    Returns:
        r(* R Lk).
    """
    widths = torch.as_tensor(widths, dtype=centres.dtype, device=centres.device)
    sigma = widths.clamp(min=MIN_WIDTH) / 9.0
    sigma = sigma.expand_as(centres).unsqueeze(-1)  # (* R 1)
    log_g = -((positions.unsqueeze(-2) - centres.unsqueeze(-1)) ** 2) / (2.0 * sigma**2)  # (* R Lk)
    if valid is None:
        return torch.exp(log_g - log_g.amax(dim=-1, keepdim=True))
    valid = valid.unsqueeze(-2)  # (* 1 Lk)
    peak = torch.where(valid, log_g, float("-inf")).amax(dim=-1, keepdim=True)  # (* R 1)
    return torch.where(valid, torch.exp(log_g - peak), 0.0)


def gmm_weights(seq_len: int, width: float, lengths: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """GMMFormer's Gaussian over positions for query row i: centre ``i/n``, positions ``j/(n-1)``.

    ``n`` is each sequence's valid length (``lengths``) or, when ``lengths`` is None, ``seq_len`` for all
    (the official padded-length rule). Key columns at or beyond ``n`` get weight 0 (they are masked anyway).

    Args:
        seq_len: L.
        width: the head's width w (0.5, 1.0 or 5.0).
        lengths: (B) valid lengths, or None.

    Returns:
        r(B L L) with lengths, r(1 L L) without.
    """
    if lengths is None:
        n = torch.full((1, 1), float(seq_len), device=device)  # (1 1)
    else:
        n = lengths.to(torch.float32).clamp(min=1.0).unsqueeze(-1)  # (B 1)
        device = lengths.device
    steps = torch.arange(seq_len, dtype=torch.float32, device=device)  # (L)
    centres = steps / n  # (B L)
    positions = steps / (n - 1.0).clamp(min=1.0)  # (B L); linspace(0, 1, n) on the valid prefix
    valid = None if lengths is None else steps < n  # (B L)
    return gaussian_weights(positions, centres, width, valid)


def moment_masks(centres: torch.Tensor, widths: torch.Tensor, length: int) -> torch.Tensor:
    """AMDNet's span anchors: ``M_k(t) = exp(-(t - c_k)^2 / (2 sigma_k^2))``, ``t = linspace(0, 1, length)``.

    Args:
        centres, widths: r(B K), in (0, 1) (sigmoid outputs).
        length: number of clips.

    Returns:
        r(B K length), each row with peak 1.
    """
    steps = torch.arange(length, dtype=centres.dtype, device=centres.device)
    positions = steps / max(length - 1, 1)  # (length)
    return gaussian_weights(positions, centres, widths)


class BertAttention(nn.Module):
    """Multi-head self-attention + output Linear + post-LN residual (no feed-forward), docs/models.md §1.7.

    Args:
        d_model: width D; head width D / n_heads.
        n_heads: H.
        dropout: on the attention probabilities and on the output Linear (the configs' ``drop``).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.1):
        super().__init__()
        if d_model % n_heads != 0:
            raise InvalidInputError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.attn_dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(d_model, d_model)
        self.out_dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B L D) -> (B H L Dh)."""
        return x.unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D).

        Args:
            x: r(B L D).
            mask: (B L) float, 1 on real steps; padded keys get -10000 added to their logits. None = none.
            weights: multiplicative logit weights broadcastable to (B H L L): GMM (B|1, 1, L, L), AMDNet
                moments (B, H, 1, L). None = plain attention.
        """
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (B H L L)
        if weights is not None:
            logits = logits * weights
        if mask is not None:
            logits = logits + (1.0 - mask.to(logits.dtype))[:, None, None, :] * MASKED_LOGIT
        probs = self.attn_dropout(torch.softmax(logits, dim=-1))  # (B H L L)
        context = (probs @ v).transpose(1, 2).flatten(2)  # (B L D)
        return self.layer_norm(self.out_dropout(self.dense(context)) + x)


class GMMBlock(nn.Module):
    """GMMFormer's block: parallel BertAttentions (global + Gaussian widths) on one input, outputs averaged.

    Args:
        d_model, n_heads, dropout: as for ``BertAttention``.
        widths: one entry per head; None = global. Default (None, 0.5, 1.0, 5.0).
        length_mode: "valid" (default): Gaussians over each sequence's valid length, so padding never changes
            the output; "padded": over the padded length, as the official code does.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.1,
        widths: tuple[float | None, ...] = GMM_WIDTHS,
        length_mode: str = "valid",
    ):
        super().__init__()
        if length_mode not in LENGTH_MODES:
            raise InvalidInputError(f"length_mode must be one of {LENGTH_MODES}, got {length_mode!r}")
        self.widths = tuple(widths)
        self.length_mode = length_mode
        self.attn = nn.ModuleList(BertAttention(d_model, n_heads, dropout) for _ in self.widths)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D), mask (B, L) float 1 on real steps or None -> (B, L, D)."""
        seq_len = x.shape[1]
        lengths = mask.sum(dim=-1) if (mask is not None and self.length_mode == "valid") else None  # (B)
        outputs = []
        for width, attn in zip(self.widths, self.attn, strict=True):
            weights = None
            if width is not None:
                weights = gmm_weights(seq_len, width, lengths, device=x.device).to(x.dtype).unsqueeze(1)
            outputs.append(attn(x, mask, weights))
        return torch.stack(outputs, dim=0).mean(dim=0)
