"""ONNX Runtime sessions: CPU everywhere, CUDA where onnxruntime-gpu and a GPU are present.

The bundle's graphs carry the selective scan as a ``prvr::SelectiveScan`` node *with* a local function
body of standard ops, so any ONNX Runtime runs them with no custom-op library. On the CPU a session
registers the native kernel for that node (``prvr_sdk.backends.ort_scan``: the torch op's C kernel as an
ORT custom op, 2-3x faster than the body) when the graph contains it; where the kernel cannot be built
the body serves, with the same results, and the process logs one line saying so. ``scan_backend()`` says
which one serves here (``prvr doctor`` shows it).

ONNX Runtime does not fail when a requested provider cannot be created (CUDA or cuDNN libraries missing,
a CPU onnxruntime shadowing onnxruntime-gpu): it logs a line and runs on the CPU. A session here therefore
reports what ``get_providers()`` says really runs, and warns (``BackendFallbackWarning``), or raises with
``strict=True``, when that is not what was asked for.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from prvr_sdk.backends import ort_scan
from prvr_sdk.backends.base import BackendFallbackWarning
from prvr_sdk.errors import BackendUnavailableError, InvalidInputError

__all__ = ["OnnxRuntimeSession", "available_providers", "cuda_available", "scan_backend"]

log = logging.getLogger(__name__)

SCAN_NATIVE = "native"
SCAN_PORTABLE = "portable"
_announce_lock = threading.Lock()
_announced: set[str] = set()


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


CUDA_PROVIDER = "CUDAExecutionProvider"


def cuda_available() -> bool:
    """Whether this onnxruntime build offers CUDA. Not a promise that it loads: see ``OnnxRuntimeSession``."""
    return CUDA_PROVIDER in available_providers()


def _device_index(device: str) -> int:
    if device == "cuda":
        return 0
    try:
        return int(device.split(":", 1)[1])
    except (IndexError, ValueError):
        raise InvalidInputError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None


def scan_backend() -> str:
    """Which implementation runs ``prvr::SelectiveScan`` in CPU sessions here, and why, in one line (builds
    the native kernel on first use). CUDA sessions always run the node's portable body, on the GPU."""
    reason = ort_scan.unavailable_reason()
    if reason is None:
        return f"{SCAN_NATIVE} C kernel as an ONNX Runtime custom op ({ort_scan.library_path()})"
    return f"{SCAN_PORTABLE} ONNX body, 2-3x slower than the native kernel ({reason})"


def _announce_portable_scan(reason: str) -> None:
    """Log, once per process and reason, that the slow body serves: otherwise visible only as a slower
    encode."""
    with _announce_lock:
        if reason in _announced:
            return
        _announced.add(reason)
    log.warning("selective scan: ONNX Runtime runs the portable prvr::SelectiveScan body, 2-3x slower than "
                "the native kernel (%s); `prvr doctor` shows the scan backend", reason)


def _register_scan(options, device: str) -> str:
    """Register the native scan kernel on ``options`` for a CPU session; returns what will serve the node."""
    if device != "cpu":
        return SCAN_PORTABLE  # the body's standard ops run on the GPU; the kernel is CPU code
    path = ort_scan.library_path()
    if path is None:
        _announce_portable_scan(ort_scan.unavailable_reason() or "the kernel library is unavailable")
        return SCAN_PORTABLE
    try:
        options.register_custom_ops_library(str(path))
    except Exception as exc:  # noqa: BLE001 - any ORT refusal leaves the body, which is correct, to serve
        _announce_portable_scan(f"onnxruntime refused {path.name}: {' '.join(str(exc).split())}")
        return SCAN_PORTABLE
    return SCAN_NATIVE


def _session_options(ort, threads: int | None, prepack: bool = True):
    """Fresh options each time: a custom-op library registered on them cannot be taken back."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers etc. are noise to users
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


class OnnxRuntimeSession:
    """An ``onnxruntime.InferenceSession`` behind the ``Session`` interface.

    Args:
        path: the ``.onnx`` file.
        device: ``"cpu"`` or ``"cuda:N"``; CUDA needs onnxruntime-gpu (extra ``gpu``).
        threads: intra-op threads (default: ONNX Runtime's choice, all cores).
        strict: raise instead of warning when ONNX Runtime falls back from CUDA to the CPU.
        prepack: let ONNX Runtime repack weight matrices for its GEMM at load. ``False`` for the text front
            end: repacking MiniLM's 90 MB costs ~50 ms per start and bought no measurable speed on a batch
            of 64 sentences (bench/RESULTS.md, "prvr search cold start").

    Attributes:
        device: the device that runs the graph (``"cpu"`` after a fallback), ``requested_device`` the one
            asked for; ``provider`` / ``providers``: what ``get_providers()`` reports, first one first.
        scan: ``"native"`` or ``"portable"``: what runs the graph's ``prvr::SelectiveScan`` nodes (None
            when it has none).

    Raises:
        BackendUnavailableError: onnxruntime missing, CUDA asked for but its provider is absent, or (with
            ``strict=True``) the CUDA provider failed to load.

    Warns:
        BackendFallbackWarning: CUDA was asked for but the CPU runs the graph (``strict=False``).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        strict: bool = False,
        prepack: bool = True,
    ) -> None:
        ort = _ort()
        if device == "cpu":
            providers: list = ["CPUExecutionProvider"]
        else:
            if not cuda_available():
                raise BackendUnavailableError(
                    "onnxruntime CUDAExecutionProvider", "gpu",
                    f"device {device!r} needs onnxruntime-gpu; this onnxruntime has {available_providers()}",
                )
            cuda = (CUDA_PROVIDER, {"device_id": _device_index(device)})
            providers = [cuda, "CPUExecutionProvider"]
        options = _session_options(ort, threads, prepack)
        self.scan: str | None = _register_scan(options, device) if ort_scan.graph_uses_scan(path) else None
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            if self.scan != SCAN_NATIVE:
                raise
            # The kernel's schema is float32-only: ORT rejects e.g. a float16 graph's scan nodes at load.
            # Without the library the body serves (and a graph that is bad anyway raises here as before).
            options = _session_options(ort, threads, prepack)
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
            self.scan = SCAN_PORTABLE
            why = " ".join(str(exc).split())[:200]
            name = os.path.basename(path)
            _announce_portable_scan(f"onnxruntime rejected the native kernel for {name}: {why}")
        self.requested_device = device
        self.providers: tuple[str, ...] = tuple(self._session.get_providers())
        self.provider = self.providers[0]
        self.device = device if device == "cpu" or CUDA_PROVIDER in self.providers else "cpu"
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        if self.device != device:
            self._fell_back(path, strict)

    def _fell_back(self, path: str | os.PathLike, strict: bool) -> None:
        """Say loudly that CUDA was asked for and the CPU runs the graph: 10-100x slower, and otherwise
        visible only in onnxruntime's log."""
        detail = (
            f"{os.path.basename(path)}: device {self.requested_device!r} was asked for, but ONNX Runtime "
            f"could not load {CUDA_PROVIDER} and runs the graph with {list(self.providers)} on the CPU "
            "(usually CUDA/cuDNN libraries that onnxruntime-gpu needs are missing, or the CPU onnxruntime "
            "is installed over onnxruntime-gpu; onnxruntime's log says which, `prvr doctor` shows what is "
            "installed)"
        )
        if strict:
            raise BackendUnavailableError(f"onnxruntime {CUDA_PROVIDER}", "gpu", detail)
        advice = "Pass device='cpu' to ask for the CPU, or strict=True to make this an error."
        warnings.warn(f"{detail}. {advice}", BackendFallbackWarning, stacklevel=3)

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else list(self.output_names)
        values = self._session.run(names, {k: feeds[k] for k in self.input_names})
        return dict(zip(names, values, strict=True))

    def __repr__(self) -> str:
        asked = self.requested_device
        fallback = f", requested_device={asked!r}" if self.device != asked else ""
        return f"OnnxRuntimeSession(device={self.device!r}, provider={self.provider!r}{fallback})"
