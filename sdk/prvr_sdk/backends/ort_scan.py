"""The native ``prvr::SelectiveScan`` kernel for ONNX Runtime on the CPU: build, find, count.

Why: a bundle's scan node carries a portable body (a ``Scan`` over time) that any ONNX Runtime runs, but
at ~5x the naive reference where the torch op's C kernel does ~16x, so Mamba models encoded videos
1.5-3.5x slower through the Retriever than through torch. ``native/scan/ort_selective_scan.c`` wraps that
same C kernel (one source: ``native/scan/selective_scan_cpu.c``) as an ONNX Runtime custom op built
against ORT's stable C ABI; ``OnnxRuntimeSession`` registers it for graphs that contain the node, and
ORT then runs it instead of inlining the body.

The library is compiled with the system C compiler on first use (``prvr_sdk.native.build``: cached per
machine, never at import). Without a compiler, with ``PRVR_NATIVE=off`` or ``PRVR_ORT_SCAN=off`` (read on
each call, for benchmarks and tests), the portable body serves, with the same results, and the session
logs one line saying so.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
from pathlib import Path

from prvr_sdk.fsutil import switched_off
from prvr_sdk.native import build

__all__ = ["LIBRARY", "calls", "graph_uses_scan", "library_path", "unavailable_reason"]

log = logging.getLogger(__name__)

LIBRARY = "prvr_ort_scan"
SCAN_DIR = Path(__file__).resolve().parent.parent / "native" / "scan"
SOURCE = SCAN_DIR / "ort_selective_scan.c"
DEPENDS = (SCAN_DIR / "selective_scan_cpu.c", SCAN_DIR / "selective_scan_impl.h")
# The torch op's flags (prvr_export/ops/cpu_kernel.py): -fno-trapping-math lets the compiler if-convert the
# clamps in prvr_expf, which it needs to vectorise the recurrence on AVX2. Hidden visibility: only the
# entry points marked in the source are exported (the kernel's names are the torch op library's too).
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared",
         "-std=c11", "-fvisibility=hidden"]
_ABI_VERSION = 1
# The node's op_type as it is stored in a model file; its domain ("prvr") is a separate, shorter string.
_MARKER = b"SelectiveScan"


def _setup(lib: ctypes.CDLL) -> None:
    lib.prvr_ort_scan_abi_version.restype = ctypes.c_int
    lib.prvr_ort_scan_calls.restype = ctypes.c_int64
    if lib.prvr_ort_scan_abi_version() != _ABI_VERSION:
        raise RuntimeError("prvr_ort_scan ABI version mismatch")


def _switched_off() -> str | None:
    if switched_off("PRVR_ORT_SCAN"):
        return "disabled by PRVR_ORT_SCAN=off"
    if not build.enabled():
        return "disabled by PRVR_NATIVE=off"
    return None


def _load() -> ctypes.CDLL | None:
    if _switched_off():
        return None
    # DEBUG: the session announces the fallback itself, once, in words about the scan.
    return build.load_library(LIBRARY, SOURCE, flags=FLAGS, depends=DEPENDS, libs=["-lm"], setup=_setup,
                              log_level=logging.DEBUG)


def library_path() -> Path | None:
    """The custom-op library for ``SessionOptions.register_custom_ops_library``, building it on first use;
    None when it cannot be had (``unavailable_reason()`` says why)."""
    if _load() is None:
        return None
    return build.results()[LIBRARY].path


def unavailable_reason() -> str | None:
    """Why the native kernel cannot serve (building it on first use), or None when it can."""
    off = _switched_off()
    if off:
        return off
    if _load() is not None:
        return None
    return build.unavailable_reason(LIBRARY)


def calls() -> int:
    """SelectiveScan computes the native kernel completed in this process (0 if never loaded): evidence, for
    tests and benchmarks, that ORT ran the kernel and not the node's inlined body."""
    done = build.results().get(LIBRARY)
    if done is None or done.lib is None:
        return 0
    return int(done.lib.prvr_ort_scan_calls())


def graph_uses_scan(path: str | os.PathLike) -> bool:
    """Whether the ``.onnx`` file may contain a ``prvr::SelectiveScan`` node.

    A byte search of the memory-mapped file, not a parse: the runtime does not depend on ``onnx``, and a
    false positive only registers a library the graph does not use.
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(_MARKER) >= 0
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        return False
