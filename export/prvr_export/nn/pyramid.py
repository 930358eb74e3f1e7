"""MUSE's multi-scale feature pyramid over a frame's patch-token map (docs/models.md §5.2 step 1).

Each scale branch resamples the ``[N, C, g, g]`` patch map (0.5: max-pool 2x2 stride 2; 1.0: identity; 2.0:
ConvTranspose2d to C/2 channels, kernel 2, stride 2; 0.25 and 4.0 as in the upstream code) and then applies
Conv1x1 (-> C) -> channel-LayerNorm -> GELU -> Conv3x3 (pad 1) -> channel-LayerNorm.

Upstream (hrtang22/MUSE, ``modules/modeling.py``) keeps the branches in a plain Python list, so they are not
registered: never optimised, absent from ``state_dict`` and redrawn at every rebuild (docs/models.md §5.5
item 1). Here they live in an ``nn.ModuleList`` and train like every other parameter. The grid is an
argument, not the hard-coded 7x7 of ViT-B/32 (§5.5 item 3), so ViT-B/16's 14x14 and the demo's 2x2 work
too.

Shape comments: N images (batch x frames), C channels, g input grid side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError

__all__ = ["SCALES", "ChannelLayerNorm", "FeaturePyramid", "scaled_grid"]

SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)  # the factors the upstream code implements


def scaled_grid(grid: int, scale: float) -> int:
    """Side of a branch's output map for a ``grid x grid`` input (pooling floors, as MaxPool2d does).

    Raises:
        InvalidInputError: unknown scale, or a pooled map that would be empty.
    """
    if scale not in SCALES:
        raise InvalidInputError(f"pyramid scale must be one of {SCALES}, got {scale!r}")
    side = grid * int(scale) if scale >= 1.0 else grid // round(1 / scale)
    if side < 1:
        raise InvalidInputError(
            f"pyramid scale {scale} needs a patch grid of at least {round(1 / scale)}, got {grid}"
        )
    return side


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``[N, C, H, W]`` map, computed in fp32 or wider (upstream casts to
    fp32 so that fp16 maps normalise safely); the output keeps the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        weight = self.weight.to(dtype) if self.weight is not None else None
        bias = self.bias.to(dtype) if self.bias is not None else None
        y = F.layer_norm(x.permute(0, 2, 3, 1).to(dtype), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype).permute(0, 3, 1, 2)  # (N C H W)


def _branch(d_model: int, scale: float) -> nn.Sequential:
    """Resampling for ``scale`` followed by the shared Conv1x1 -> LN -> GELU -> Conv3x3 -> LN head."""
    in_dim = d_model
    if scale == 4.0:
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(d_model, d_model // 2, kernel_size=2, stride=2),
            ChannelLayerNorm(d_model // 2),
            nn.GELU(),
            nn.ConvTranspose2d(d_model // 2, d_model // 4, kernel_size=2, stride=2),
        ]
        in_dim = d_model // 4
    elif scale == 2.0:
        layers = [nn.ConvTranspose2d(d_model, d_model // 2, kernel_size=2, stride=2)]
        in_dim = d_model // 2
    elif scale == 1.0:
        layers = []
    elif scale == 0.5:
        layers = [nn.MaxPool2d(kernel_size=2, stride=2)]
    else:  # 0.25
        layers = [nn.MaxPool2d(kernel_size=4, stride=4)]
    layers += [
        nn.Conv2d(in_dim, d_model, kernel_size=1),
        ChannelLayerNorm(d_model),
        nn.GELU(),
        nn.Conv2d(d_model, d_model, kernel_size=3, padding=1),
        ChannelLayerNorm(d_model),
    ]
    return nn.Sequential(*layers)


class FeaturePyramid(nn.Module):
    """Per-image multi-scale maps of a patch grid; every branch outputs ``d_model`` channels.

    Convolutions keep PyTorch's default initialisation (upstream never re-initialises them).

    Args:
        d_model: channels C of the input map and of every output map (a multiple of 4 when 4.0 is used,
            of 2 when 2.0 is used).
        grid: side g of the input patch map.
        scales: branch scale factors, each in ``SCALES``; outputs come in this order.

    Raises:
        InvalidInputError: unknown or duplicated scale, a grid too small for a pooling scale, or a width
            the transposed convolutions cannot halve.
    """

    def __init__(self, d_model: int, grid: int, scales: Sequence[float] = (0.5, 1.0, 2.0)):
        super().__init__()
        scales = tuple(float(s) for s in scales)
        if not scales or len(set(scales)) != len(scales):
            raise InvalidInputError(f"pyramid scales must be non-empty and distinct, got {scales}")
        if (4.0 in scales and d_model % 4) or (2.0 in scales and d_model % 2):
            raise InvalidInputError(f"d_model {d_model} cannot be split by the up-sampling branches {scales}")
        self.d_model = d_model
        self.grid = grid
        self.scales = scales
        self.grids = tuple(scaled_grid(grid, s) for s in scales)  # output side of each branch
        self.tokens_per_image = sum(side * side for side in self.grids)
        # registered, unlike upstream's plain list (docs/models.md §5.5 item 1)
        self.stages = nn.ModuleList(_branch(d_model, s) for s in scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, C, g, g) -> one (N, C, g_s, g_s) map per scale, in ``scales`` order."""
        if x.dim() != 4 or x.shape[1] != self.d_model or x.shape[2] != self.grid or x.shape[3] != self.grid:
            raise ShapeMismatchError(
                f"FeaturePyramid input must have shape (N, {self.d_model}, {self.grid}, {self.grid}), "
                f"got {tuple(x.shape)}"
            )
        return [stage(x) for stage in self.stages]
