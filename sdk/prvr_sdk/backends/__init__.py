"""Inference backends behind one ``Session`` interface, and the rule that picks one.

``backend="auto"`` picks TensorRT when the bundle lists an engine for the graph and ``tensorrt`` imports,
else ONNX Runtime on CUDA when onnxruntime-gpu sees a GPU, else ONNX Runtime on the CPU; ``choose``
returns the decision with the reason, which ``Retriever.__repr__`` and ``prvr doctor`` show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prvr_sdk.backends.base import BackendFallbackWarning, Session
from prvr_sdk.backends.onnxruntime import OnnxRuntimeSession, available_providers, cuda_available
from prvr_sdk.backends.tensorrt import TensorRTSession, tensorrt_available
from prvr_sdk.errors import BackendUnavailableError, InvalidInputError

__all__ = [
    "BACKENDS",
    "BackendFallbackWarning",
    "Choice",
    "OnnxRuntimeSession",
    "Session",
    "TensorRTSession",
    "available_providers",
    "choose",
    "cuda_available",
    "open_session",
    "tensorrt_available",
]

BACKENDS = ("auto", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class Choice:
    """Which backend and device run the graphs, and why (shown to users)."""

    backend: str
    device: str
    reason: str


def _check_device(device: str) -> str:
    if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise InvalidInputError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def choose(backend: str = "auto", device: str = "auto", has_engine: bool = False) -> Choice:
    """Resolve ``backend`` / ``device`` (either may be ``"auto"``) on this machine.

    Args:
        has_engine: whether the bundle carries TensorRT engines.

    Raises:
        InvalidInputError: unknown backend or device string, or tensorrt on the CPU.
        BackendUnavailableError: an explicitly requested backend or device that this machine lacks.
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")
    device = _check_device(device)
    if backend == "tensorrt":
        if device == "cpu":
            raise InvalidInputError("backend 'tensorrt' needs a GPU device, got device 'cpu'")
        if not tensorrt_available():
            raise BackendUnavailableError("tensorrt", "gpu", "the tensorrt package is not installed")
        if not has_engine:
            raise BackendUnavailableError(
                "tensorrt", "gpu", "the bundle has no TensorRT engines (engines/*.plan); build them first"
            )
        return Choice("tensorrt", "cuda:0" if device in ("auto", "cuda") else device, "requested")
    if backend == "auto" and device != "cpu" and has_engine and tensorrt_available():
        return Choice("tensorrt", "cuda:0" if device in ("auto", "cuda") else device,
                      "auto: the bundle has TensorRT engines and tensorrt is installed")
    if device == "auto":
        if cuda_available():
            return Choice("onnxruntime", "cuda:0", "auto: onnxruntime-gpu sees a CUDA device")
        why = "no TensorRT engines in the bundle" if not has_engine else "tensorrt is not installed"
        return Choice("onnxruntime", "cpu", f"auto: {why}, and onnxruntime has no CUDA provider")
    if device.startswith("cuda") and not cuda_available():
        raise BackendUnavailableError(
            "onnxruntime CUDAExecutionProvider", "gpu",
            f"device {device!r} asked for, but onnxruntime offers only {available_providers()}",
        )
    return Choice("onnxruntime", "cuda:0" if device == "cuda" else device, "requested")


def open_session(
    path: str | os.PathLike,
    choice: Choice,
    strict: bool = False,
    threads: int | None = None,
    prepack: bool = True,
) -> Session:
    """Load one graph (``.onnx`` for onnxruntime, ``.plan`` for tensorrt) as the choice says.

    The session's ``device`` is where the graph really runs: if ONNX Runtime cannot load its CUDA
    provider it runs on the CPU, with a ``BackendFallbackWarning`` (``strict=True``: an error instead).
    ``threads``: ONNX Runtime's intra-op threads (``None``: its default, every core); a process that runs
    several sessions side by side (Ray actors, server workers) gives each its share. ``prepack``: see
    ``OnnxRuntimeSession`` (TensorRT ignores it).
    """
    if choice.backend == "tensorrt":
        return TensorRTSession(path, choice.device)
    return OnnxRuntimeSession(path, choice.device, threads=threads, strict=strict, prepack=prepack)
