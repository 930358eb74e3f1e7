"""The one interface every inference backend offers the Retriever: named numpy arrays in, named out.

ONNX Runtime and TensorRT differ in everything else (providers, engines, CUDA buffers); keeping them behind
``Session`` lets the Retriever, the text front end and the tests treat them alike, and lets a test swap in
a naive session without touching the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["BackendFallbackWarning", "Session"]


class BackendFallbackWarning(RuntimeWarning):
    """A session runs on another device than the one asked for (e.g. CUDA requested, the CPU runs it).

    A category of its own so that callers can filter it, or turn it into an error
    (``warnings.simplefilter("error", BackendFallbackWarning)``) without touching other warnings.
    """


@runtime_checkable
class Session(Protocol):
    """One loaded graph.

    Attributes:
        input_names: the graph's inputs, in order.
        output_names: the graph's outputs, in order.
        backend: ``"onnxruntime"`` or ``"tensorrt"``.
        device: ``"cpu"`` or ``"cuda:N"``: the device that really runs the graph, not the one asked for.
        provider: what actually runs it, for ``repr`` and ``prvr doctor`` (e.g. ``CPUExecutionProvider``).
    """

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    backend: str
    device: str
    provider: str

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the graph on ``feeds`` (every input, float32/int64 as the graph declares); return the
        requested outputs (all when ``None``) as numpy arrays on the host."""
        ...
