"""ONNX Runtime sessions: CPU everywhere, CUDA where onnxruntime-gpu and a GPU are present.

The bundle's graphs carry the selective scan as a ``prvr::SelectiveScan`` node *with* a local function
body of standard ops, so ONNX Runtime runs them with no custom-op library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from prvr_sdk.errors import BackendUnavailableError, InvalidInputError

__all__ = ["OnnxRuntimeSession", "available_providers", "cuda_available"]


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError("onnxruntime", "onnx", str(exc)) from None
    return onnxruntime


def available_providers() -> list[str]:
    """ONNX Runtime's execution providers on this machine ([] when onnxruntime is not installed)."""
    try:
        return list(_ort().get_available_providers())
    except BackendUnavailableError:
        return []


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in available_providers()


def _device_index(device: str) -> int:
    if device == "cuda":
        return 0
    try:
        return int(device.split(":", 1)[1])
    except (IndexError, ValueError):
        raise InvalidInputError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None


class OnnxRuntimeSession:
    """An ``onnxruntime.InferenceSession`` behind the ``Session`` interface.

    Args:
        path: the ``.onnx`` file.
        device: ``"cpu"`` or ``"cuda:N"``; CUDA needs onnxruntime-gpu (extra ``gpu``).
        threads: intra-op threads (default: ONNX Runtime's choice, all cores).

    Raises:
        BackendUnavailableError: onnxruntime missing, or CUDA asked for but its provider is absent.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> None:
        ort = _ort()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers etc. are noise to users
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        if device == "cpu":
            providers: list = ["CPUExecutionProvider"]
        else:
            if not cuda_available():
                raise BackendUnavailableError(
                    "onnxruntime CUDAExecutionProvider", "gpu",
                    f"device {device!r} needs onnxruntime-gpu; this onnxruntime has {available_providers()}",
                )
            cuda = ("CUDAExecutionProvider", {"device_id": _device_index(device)})
            providers = [cuda, "CPUExecutionProvider"]
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.device = device
        self.provider = self._session.get_providers()[0]
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else list(self.output_names)
        values = self._session.run(names, {k: feeds[k] for k in self.input_names})
        return dict(zip(names, values, strict=True))

    def __repr__(self) -> str:
        return f"OnnxRuntimeSession(device={self.device!r}, provider={self.provider!r})"
