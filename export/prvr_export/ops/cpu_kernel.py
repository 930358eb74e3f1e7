"""Build, load and call the C selective-scan kernel (``prvr_sdk/native/scan/selective_scan_cpu.c``) through
ctypes. The source lives with the runtime, which compiles the same file into its ONNX Runtime custom op
(``prvr_sdk.backends.ort_scan``): one kernel for torch and for ORT.

Why ctypes and not a torch C++ extension: the C file needs no torch headers, compiles in about a
second with the system's C compiler on first use, and is cached per machine (``prvr_sdk.native.build``,
the loader the runtime's own kernels use: cache folder, compiler choice and atomic builds live there).
ctypes releases the GIL during the call, so a small thread pool gives multi-core speed without an
OpenMP runtime fighting torch's. When no compiler is present the op falls back to the reference:
``available_backends()`` says why, and ``selective_scan.backend_for`` logs it once per device (this
module only records the reason, so the warning is not printed twice). ``calls()`` counts kernel
invocations, so tests can prove it ran.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import prvr_sdk
from prvr_sdk.native import build as native_build

log = logging.getLogger(__name__)

_SRC_DIR = Path(prvr_sdk.__file__).resolve().parent / "native" / "scan"
_SOURCES = ("selective_scan_cpu.c", "selective_scan_impl.h")
# -fno-trapping-math lets the compiler if-convert the clamps in prvr_expf (needed to vectorise on AVX2).
_CFLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC",
           "-shared", "-std=c11"]
_ABI_VERSION = 1
_LIB_NAME = "prvr_scan"
MAX_DSTATE = 256  # PRVR_MAX_N in the C source: the per-row state lives on the stack.
_BLOCK = 16  # PRVR_W in the C source: channels per vector block in the forward kernel.
# Below this much work (rows * L * N), thread hand-off costs more than it saves.
_MIN_WORK_PER_THREAD = 1 << 16

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_pool: ThreadPoolExecutor | None = None
_calls = {"forward": 0, "backward": 0}


def _declare(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for sfx in ("f32", "f64"):
        fwd = getattr(lib, f"prvr_scan_fwd_{sfx}")
        fwd.argtypes = [p] * 10 + [i64] * 8
        fwd.restype = None
        bwd = getattr(lib, f"prvr_scan_bwd_{sfx}")
        bwd.argtypes = [p] * 15 + [i64] * 7
        bwd.restype = None
    lib.prvr_scan_abi_version.restype = ctypes.c_int
    if lib.prvr_scan_abi_version() != _ABI_VERSION:
        raise RuntimeError("kernel ABI version mismatch")


def load() -> ctypes.CDLL | None:
    """The kernel library, building it on first use; None (and a logged reason) if it cannot be had."""
    global _lib, _error
    if _lib is not None or _error is not None:
        return _lib
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        if os.environ.get("PRVR_DISABLE_CPU_KERNEL"):
            _error = "disabled by PRVR_DISABLE_CPU_KERNEL"
            return None
        # Compiling, caching (keyed by sources, flags, compiler and CPU) and loading are the runtime's
        # loader, shared with prvr_sdk's kernels; the reason is logged at DEBUG because
        # selective_scan.backend_for announces the fallback itself.
        lib = native_build.load_library(
            _LIB_NAME, _SRC_DIR / _SOURCES[0], flags=_CFLAGS, depends=[_SRC_DIR / n for n in _SOURCES[1:]],
            libs=["-lm"], setup=_declare, log_level=logging.DEBUG,
        )
        if lib is None:
            _error = native_build.unavailable_reason(_LIB_NAME) or "the CPU kernel could not be loaded"
            log.debug("selective scan: %s", _error)
            return None
        _lib = lib
        return _lib


def unavailable_reason() -> str | None:
    """Why the kernel cannot be used (building it on first use), or None when it can."""
    load()
    return _error


def calls() -> dict[str, int]:
    """Completed kernel calls in this process, ``{"forward": n, "backward": m}``: evidence, for tests and
    benchmarks, that the compiled code (not the reference) produced a result."""
    with _lock:
        return dict(_calls)


def _count(kind: str) -> None:
    with _lock:
        _calls[kind] += 1


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _run_parallel(fn, total: int, work_per_item: int) -> None:
    """Split [0, total) into contiguous ranges across torch's thread count and call fn(begin, end)."""
    global _pool
    threads = max(1, min(torch.get_num_threads(), total, (total * work_per_item) // _MIN_WORK_PER_THREAD))
    if threads == 1:
        fn(0, total)
        return
    if _pool is None or _pool._max_workers < threads:  # noqa: SLF001 - grow the pool once per size
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prvr-scan")
    bounds = [total * k // threads for k in range(threads + 1)]
    futures = [_pool.submit(fn, bounds[k], bounds[k + 1]) for k in range(threads)]
    for f in futures:
        f.result()


def _suffix(dtype: torch.dtype) -> str:
    return {torch.float32: "f32", torch.float64: "f64"}[dtype]


def forward(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, want_state: bool):
    """y r(Bt D L) and optionally last state r(Bt D N). Inputs already validated, one dtype (f32|f64),
    contiguous, with B and C time-major r(Bt G L N); bias and softplus are applied to delta inside."""
    lib = load()
    assert lib is not None
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    y = torch.empty_like(u)
    state = u.new_empty(batch, dim, dstate) if want_state else None
    fn = getattr(lib, f"prvr_scan_fwd_{_suffix(u.dtype)}")
    args = [_ptr(t) for t in (u, delta, A, B, C, D, delta_bias, y, state)]
    blocks = batch * groups * -(-(dim // groups) // _BLOCK)

    def run(begin: int, end: int) -> None:
        scratch = u.new_empty(3 * length * _BLOCK)
        fn(*args, scratch.data_ptr(), batch, dim, length, dstate, groups, int(delta_softplus), begin, end)

    _run_parallel(run, blocks, length * dstate * _BLOCK)
    _count("forward")
    return y, state


def backward(u, delta, A, B, C, D, dy, dstate):
    """Gradients (du, ddelta, dA, dB r(Bt G L N), dC, dD | None); same input contract as ``forward``
    plus dy r(Bt D L) and an optional dstate r(Bt D N). ddelta is w.r.t. the final step size."""
    lib = load()
    assert lib is not None
    batch, dim, length = u.shape
    groups, dstate_n = B.shape[1], A.shape[1]
    du, ddelta = torch.empty_like(u), torch.empty_like(u)
    dA = torch.empty_like(A)
    dD = torch.empty_like(D) if D is not None else None
    fn = getattr(lib, f"prvr_scan_bwd_{_suffix(u.dtype)}")
    partial_dB: list[torch.Tensor] = []
    partial_dC: list[torch.Tensor] = []
    lock = threading.Lock()

    def run(begin: int, end: int) -> None:
        # Channels of one group share B and C, so each task accumulates into buffers of its own.
        dB_part, dC_part = torch.zeros_like(B), torch.zeros_like(C)
        hist = u.new_empty(length * dstate_n)
        fn(*[_ptr(t) for t in (u, delta, A, B, C, D, dy, dstate, du, ddelta, dA, dB_part, dC_part, dD,
                               hist)],
           batch, dim, length, dstate_n, groups, begin, end)
        with lock:
            partial_dB.append(dB_part)
            partial_dC.append(dC_part)

    _run_parallel(run, dim, batch * length * dstate_n * 3)
    dB = torch.stack(partial_dB).sum(0) if len(partial_dB) > 1 else partial_dB[0]
    dC = torch.stack(partial_dC).sum(0) if len(partial_dC) > 1 else partial_dC[0]
    _count("backward")
    return du, ddelta, dA, dB, dC, dD
