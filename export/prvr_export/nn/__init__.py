"""Layers (``nn.Module``s); the ops they call live in ``prvr_export.ops``."""

from .mamba import BiMamba, Mamba

__all__ = ["BiMamba", "Mamba"]
