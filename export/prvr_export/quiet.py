"""Silence third-party chatter that is not ours during export and model loading.

Why: ``prvr export`` printed a dozen ``torchvision is not installed. Skipping torchvision::…`` lines
(torch.onnx's op registry, once per graph; we never use torchvision ops) and transformers' "Loading
weights" tqdm bar even into a log file, burying the parity table and our own messages. These context
managers drop exactly those, for the duration of the call, and leave everything else -- real warnings and
errors from the same libraries included -- as it was.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_model_load", "quiet_onnx_export"]

# torch/onnx/_internal/exporter/_registration.py logs this once per torchvision op, on every export.
_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"
_NOT_OURS = ("torchvision is not installed",)


class _DropMessages(logging.Filter):
    """Drop records whose message starts with one of ``prefixes``; keep the rest."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextmanager
def quiet_onnx_export() -> Iterator[None]:
    """Around ``torch.onnx.export``: no "torchvision is not installed. Skipping torchvision::…" lines."""
    logger = logging.getLogger(_REGISTRY_LOGGER)
    dropper = _DropMessages(_NOT_OURS)
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


@contextmanager
def quiet_model_load() -> Iterator[None]:
    """Around a transformers / sentence-transformers model load: no "Loading weights" progress bar unless
    stderr is a terminal (a bar in a log file or a pipe is only noise)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # no transformers: nothing to quiet
        yield
        return
    if sys.stderr.isatty() or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
