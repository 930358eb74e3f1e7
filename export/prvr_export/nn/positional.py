"""Learned absolute positions, as in MS-SL / GMMFormer / MamFusion / AMDNet (docs/models.md §1.7)."""

from __future__ import annotations

import torch
import torch.nn as nn

from prvr_sdk.errors import ShapeMismatchError

__all__ = ["TrainablePositionalEncoding"]


class TrainablePositionalEncoding(nn.Module):
    """``y = Dropout(LayerNorm(x + E[0:L]))`` with a learned table ``E [n_pos, d_model]``.

    Args:
        n_pos: rows of the table, i.e. the longest sequence accepted (queries: ``max_desc_l``; clips and
            frames: ``max_ctx_l``).
        d_model: width.
        dropout: dropout probability (the configs' ``input_drop``).
        name: what the sequence is, for error messages.
    """

    def __init__(self, n_pos: int, d_model: int, dropout: float = 0.1, name: str = "sequence"):
        super().__init__()
        self.n_pos = n_pos
        self.d_model = d_model
        self.name = name
        self.position_embeddings = nn.Embedding(n_pos, d_model)
        self.layer_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model), L <= n_pos.

        Raises:
            ShapeMismatchError: L exceeds the table.
        """
        seq_len = x.shape[1]
        if seq_len > self.n_pos:
            raise ShapeMismatchError(
                f"{self.name} has {seq_len} steps; the positional table holds at most {self.n_pos} "
                f"(raise max_ctx_l / max_desc_l or pool the input to fewer steps)"
            )
        positions = self.position_embeddings.weight[:seq_len]  # (L d_model)
        return self.dropout(self.layer_norm(x + positions))
