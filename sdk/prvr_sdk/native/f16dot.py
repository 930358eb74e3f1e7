"""ctypes front of ``f16dot.c``: float16 rows times a few float32 queries, and float16 decoding.

Why a kernel: one query against a million clips reads 768 MB of float16 and does one multiply-add per
value, so it should run at memory speed; numpy decodes float16 in four passes and then runs a GEMV,
single-threaded, several times slower (bench/RESULTS.md). The library is built on first use
(``build.load_library``), never at import, and only called on a CPU with AVX2, FMA and F16C (checked with
CPUID inside the library before any SIMD code runs). Every function returns None when the kernel cannot
serve the call, and the caller keeps numpy: same results up to float32 summation order.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

import numpy as np

from prvr_sdk.native import build

__all__ = ["MAX_NQ", "NAME", "calls", "decode", "dot", "load", "threads", "unavailable_reason"]

NAME = "prvr_f16dot"
# Up to this many queries the kernel beats decode + BLAS (bench/search_1m.py: 3.6x at 64 on the loaded
# 2-core VM, 1.1x at 256; left to BLAS above 64, where an idle machine's AVX-512 GEMM should win).
# The kernel itself takes any number.
MAX_NQ = 64
_ABI_VERSION = 1
_SOURCE = Path(__file__).with_name("f16dot.c")
# Vector code is marked with target attributes in the source; no -march=native, so the library is valid
# on any x86-64 and the cache key does not depend on the exact CPU model.
_FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-pthread", "-fno-math-errno"]
_LIBS = ["-lpthread"]

_lock = threading.Lock()
_calls = {"dot": 0, "decode": 0}
_cpu_reason: str | None = None


def _setup(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.prvr_f16dot_abi_version.restype = ctypes.c_int
    lib.prvr_f16dot_cpu_ok.restype = ctypes.c_int
    lib.prvr_f16dot.argtypes = [p, i64, i64, p, i64, p, i64]
    lib.prvr_f16dot.restype = ctypes.c_int
    lib.prvr_f16_decode.argtypes = [p, p, i64, i64]
    lib.prvr_f16_decode.restype = ctypes.c_int
    if lib.prvr_f16dot_abi_version() != _ABI_VERSION:
        raise RuntimeError("f16dot library ABI mismatch")


def load() -> ctypes.CDLL | None:
    """The library when it can serve calls here (enabled, built, CPU supported), else None."""
    global _cpu_reason
    lib = build.load_library(NAME, _SOURCE, flags=_FLAGS, libs=_LIBS, setup=_setup)
    if lib is None:
        return None
    if _cpu_reason is None:
        _cpu_reason = "" if lib.prvr_f16dot_cpu_ok() else "the CPU (or OS) lacks AVX2, FMA or F16C"
        if _cpu_reason:
            logging.getLogger(__name__).info("native kernel %s unused: %s", NAME, _cpu_reason)
    return None if _cpu_reason else lib


def unavailable_reason() -> str | None:
    """Why the kernel is not serving searches (building it if needed), or None when it is."""
    if load() is not None:
        return None
    return _cpu_reason or build.unavailable_reason(NAME)


def threads() -> int:
    """Threads per call: ``PRVR_NATIVE_THREADS`` if set, else the CPUs this process may run on."""
    env = os.environ.get("PRVR_NATIVE_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_threads = threads


def calls() -> dict[str, int]:
    """Completed kernel calls in this process: evidence for tests that the kernel (not numpy) ran."""
    with _lock:
        return dict(_calls)


def _count(kind: str) -> None:
    with _lock:
        _calls[kind] += 1


def dot(rows: np.ndarray, q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | None:
    """``rows @ q.T`` as float32 ``[n, nq]`` for float16 ``rows [n, D]`` (any ``nq``; beyond ``MAX_NQ``
    decode + BLAS is faster, which ``blocks.dot_f16`` takes care of).

    None when the kernel cannot take the call (not loaded, ``nq`` too large, not float16): the caller
    falls back to numpy. Non-contiguous ``rows`` are copied first (a gather already produced a copy).
    """
    if rows.dtype != np.float16 or rows.ndim != 2 or q.ndim != 2 or len(q) < 1:
        return None
    lib = load()
    if lib is None:
        return None
    n, d = rows.shape
    if q.shape[1] != d or d < 1:
        return None
    rows = np.ascontiguousarray(rows)
    q = np.ascontiguousarray(q, dtype=np.float32)
    if out is None:
        out = np.empty((n, len(q)), dtype=np.float32)
    elif out.shape != (n, len(q)) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out: expected C-contiguous float32 {(n, len(q))}, got {out.dtype} {out.shape}")
    if n and lib.prvr_f16dot(rows.ctypes.data, n, d, q.ctypes.data, len(q), out.ctypes.data, threads()):
        return None
    _count("dot")
    return out


def decode(src: np.ndarray, out: np.ndarray, threads: int | None = None) -> np.ndarray | None:
    """``out[...] = src`` (float16 -> float32) with F16C; None when the kernel is unused.

    ``threads`` defaults to ``threads()``; a decode feeding BLAS passes 1, leaving the cores to BLAS.
    """
    if src.dtype != np.float16 or out.dtype != np.float32 or src.shape != out.shape:
        return None
    if not (src.flags.c_contiguous and out.flags.c_contiguous):
        return None
    lib = load()
    if lib is None:
        return None
    nthreads = _threads() if threads is None else threads
    if src.size and lib.prvr_f16_decode(src.ctypes.data, out.ctypes.data, src.size, nthreads):
        return None
    _count("decode")
    return out
