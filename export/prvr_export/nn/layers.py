"""Small layers shared by the PRVR models (docs/models.md §1.7), and the model-level initialisation policy.

``LinearLayer`` is the input projection of MS-SL / GMMFormer / MamFusion / AMDNet;
``MambaResidual`` is MamFusion's post-normalised Mamba branch (docs/models.md §3.2).
``bert_init_`` is the one re-initialisation those code bases apply after building a model (§1.7), and
``tag_no_weight_decay`` marks the parameters that BertAdam leaves undecayed (§1.8), so that the optimiser
builder in ``prvr_export.train`` reads tags instead of parsing names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mamba import Mamba

__all__ = ["LinearLayer", "MambaResidual", "bert_init_", "tag_no_weight_decay"]


class LinearLayer(nn.Module):
    """LayerNorm(d_in) -> Dropout -> Linear(d_in -> d_out) -> ReLU, applied to the last axis.

    Args:
        d_in, d_out: input and output widths.
        dropout: dropout probability (the configs' ``input_drop``).
        layer_norm: put the LayerNorm in front (all PRVR models do).
        relu: end with a ReLU (all PRVR models do).
    """

    def __init__(
        self, d_in: int, d_out: int, dropout: float = 0.1, layer_norm: bool = True, relu: bool = True
    ):
        super().__init__()
        self.d_in = d_in
        self.d_out = d_out
        self.layer_norm = nn.LayerNorm(d_in) if layer_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(d_in, d_out)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(*, d_in) -> (*, d_out)."""
        x = self.linear(self.dropout(self.layer_norm(x)))
        return F.relu(x) if self.relu else x


class MambaResidual(nn.Module):
    """MamFusion's Mamba branch ``MB(X) = X + LN(Mamba(X))``: Mamba first, LayerNorm on its output, then add.

    The scan is unidirectional and causal, so with right padding the valid steps never see the padding and
    no mask is needed (docs/models.md §3.2).

    Args:
        d_model: width of X.
        d_state, d_conv, expand: the Mamba mixer's sizes (MamFusion: 16, 4, 2).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.mamba = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, use_fast_path=False)
        self.layer_norm = nn.LayerNorm(d_model, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        return x + self.layer_norm(self.mamba(x))


def bert_init_(
    module: nn.Module,
    std: float = 0.02,
    skip: Callable[[nn.Module], bool] | None = None,
) -> None:
    """The GMMFormer-family ``reset_parameters`` (docs/models.md §1.7), applied in place to every sub-module.

    nn.Linear (including MultiheadAttention's ``out_proj``) and nn.Embedding weights ~ N(0, std); Linear
    biases = 0; LayerNorm weight 1, bias 0; Conv1d gets its default reset. Other parameters (Mamba's
    ``A_log`` and ``D``, MultiheadAttention's packed ``in_proj_weight``) keep their own init. The walk ignores
    ``_no_reinit`` tags on purpose: the official code zeroes Mamba's ``dt_proj`` bias too.

    Args:
        module: the model (or any sub-tree).
        std: the configs' ``initializer_range``.
        skip: sub-modules for which this returns True are left untouched, with everything below them.
    """
    skipped: set[int] = set()
    for sub in module.modules():
        if id(sub) in skipped:
            continue
        if skip is not None and skip(sub):
            skipped.update(id(m) for m in sub.modules())
            continue
        with torch.no_grad():
            if isinstance(sub, (nn.Linear, nn.Embedding)):
                sub.weight.normal_(mean=0.0, std=std)
            elif isinstance(sub, nn.LayerNorm):
                if sub.weight is not None:
                    sub.weight.fill_(1.0)
                if sub.bias is not None:
                    sub.bias.zero_()
            elif isinstance(sub, nn.Conv1d):
                sub.reset_parameters()
            if isinstance(sub, nn.Linear) and sub.bias is not None:
                sub.bias.zero_()


def tag_no_weight_decay(module: nn.Module) -> None:
    """Tag BertAdam's undecayed parameters (docs/models.md §1.8): every bias and every LayerNorm parameter.

    Sets ``param._no_weight_decay = True``, the tag mamba-ssm uses (and ``prvr_export.nn.mamba`` already sets
    on ``A_log`` and ``D``).
    """
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            if isinstance(sub, nn.LayerNorm) or name.endswith("bias"):
                param._no_weight_decay = True
