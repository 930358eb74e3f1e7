"""Training and evaluation: BertAdam (``optim``), the loop with early stopping and exact resume (``loop``),
PRVR evaluation and checkpoint loading (``evaluate``), run-directory files (``checkpoint``) and
data-parallel helpers for torchrun (``distributed``)."""

from __future__ import annotations

from .evaluate import evaluate, load_checkpoint
from .loop import fit, resolve_config, train
from .optim import BertAdam, build_optimizer, build_scheduler, param_groups, warmup_cosine, warmup_linear

__all__ = [
    "BertAdam",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "fit",
    "load_checkpoint",
    "param_groups",
    "resolve_config",
    "train",
    "warmup_cosine",
    "warmup_linear",
]
