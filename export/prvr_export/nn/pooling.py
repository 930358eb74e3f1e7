"""Attention pooling over a masked sequence: GMMFormer's "modularized" queries and frames.

See docs/models.md §1.7.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["AttentionPool", "mask_logits"]

MASK_FILL = -1e10  # the official code's fill for masked logits


def mask_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits`` where ``mask`` is 1, ``-1e10`` where it is 0 (float mask, broadcastable)."""
    return logits * mask + (1.0 - mask) * MASK_FILL


class AttentionPool(nn.Module):
    """``a = softmax_L(mask_logits(w^T X))``, ``v = sum_L a_L X_L``, with a learned vector ``w`` (no bias).

    Args:
        d_model: width of X.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.score = nn.Linear(d_model, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D), mask (B, L) float with 1 on real steps (None = all real) -> (B, D)."""
        logits = self.score(x)  # (B L 1)
        if mask is not None:
            logits = mask_logits(logits, mask.to(logits.dtype).unsqueeze(-1))
        weights = torch.softmax(logits, dim=1)  # (B L 1)
        return (weights * x).sum(dim=1)  # (B D)
