"""Compile a C file with the system compiler on first use, cache the shared library, load it with ctypes.

Why this exists (and not a compiled wheel): the runtime ships as pure Python, yet a few hot loops (the
float16 scan of ``ExactIndex``, the selective scan) want SIMD and threads that numpy cannot give. A C file
without dependencies compiles in about a second, once per machine, and ctypes releases the GIL during a
call. Where no compiler exists or the build fails, ``load_library`` returns None and records why, and the
caller keeps its numpy (or torch) path: compiled code is an accelerator, never a requirement.

Cache: ``$PRVR_KERNEL_CACHE`` if set, else ``$PRVR_CACHE_DIR/kernels``, else ``$XDG_CACHE_HOME/prvr/kernels``
or ``~/.cache/prvr/kernels`` (``PRVR_CACHE_DIR=off`` -- which turns the other caches off -- builds into a
per-process temporary folder instead). The file name is keyed by the sha256 of the sources, the flags, the
compiler's path and version, and the CPU's feature flags (``-march=native`` code is only valid on a CPU
like the one that built it), so a changed source or compiler never loads a stale library. A build writes a
temporary file in the cache folder and renames it into place: concurrent first uses in several processes
each load a complete file, and the last rename wins harmlessly (same bytes).

Compiler: ``$PRVR_CC`` or ``$CC`` when set (used as given: a wrong value means no kernels, with that
reason, rather than a silent different compiler), else the first of ``cc``, ``gcc``, ``clang`` on PATH.
``PRVR_NATIVE=off`` (also ``0``/``false``/``no``) disables every library loaded through here; it is read on
each call, so tests can flip it in-process.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prvr_sdk.fsutil import cache_root, switched_off

__all__ = [
    "BuildResult",
    "cache_dir",
    "compiler",
    "enabled",
    "load_library",
    "results",
    "unavailable_reason",
]

log = logging.getLogger(__name__)

_BUILD_TIMEOUT_S = 180
_MAX_STDERR = 2000

_lock = threading.Lock()
_loaded: dict[str, BuildResult] = {}
_tmp_cache: Path | None = None


@dataclass(frozen=True)
class BuildResult:
    """What became of one named library in this process: the handle, or why there is none."""

    name: str
    lib: ctypes.CDLL | None
    reason: str | None  # None when ``lib`` is loaded
    path: Path | None  # the shared library file, when built


def enabled() -> bool:
    """False when ``PRVR_NATIVE`` turns compiled kernels off (read on every call)."""
    return not switched_off("PRVR_NATIVE")


def cache_dir() -> Path:
    """The folder compiled libraries go to (see the module docstring for the order of precedence)."""
    global _tmp_cache
    explicit = os.environ.get("PRVR_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    root = cache_root()
    if root is None:  # caching off: build into a folder of this process
        if _tmp_cache is None:
            _tmp_cache = Path(tempfile.mkdtemp(prefix="prvr-kernels-"))
            # A loaded library stays mapped after its file is deleted, so the folder can go at exit.
            atexit.register(shutil.rmtree, _tmp_cache, True)
        return _tmp_cache
    return root / "kernels"


def compiler() -> tuple[str | None, str | None]:
    """``(path of the C compiler, None)`` or ``(None, why there is none)``."""
    for var in ("PRVR_CC", "CC"):
        value = os.environ.get(var)
        if value:
            found = shutil.which(value)
            if found is None:
                return None, f"C compiler {value!r} (from ${var}) not found"
            return found, None
    for cand in ("cc", "gcc", "clang"):
        found = shutil.which(cand)
        if found:
            return found, None
    return None, "no C compiler found (install gcc, or set PRVR_CC)"


@functools.cache
def _compiler_version(cc: str) -> str:
    try:
        proc = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else "unknown"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _library_path(name: str, cc: str, sources: Sequence[Path], flags: Sequence[str],
                  libs: Sequence[str]) -> Path:
    digest = hashlib.sha256()
    for src in sources:
        digest.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    key = [name, cc, _compiler_version(cc), *flags, "|", *libs, platform.machine(), *sorted(cpu_flags())]
    digest.update("\0".join(key).encode())
    suffix = ".dylib" if platform.system() == "Darwin" else ".so"
    return cache_dir() / f"lib{name}-{digest.hexdigest()[:20]}{suffix}"


def _build(cc: str, source: Path, out: Path, flags: Sequence[str], libs: Sequence[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name in the same folder, then an atomic rename: no process ever loads a half-written file.
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}-", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    cmd = [cc, *flags, str(source), "-o", tmp, *libs]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip()[-_MAX_STDERR:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_library(
    name: str,
    source: Path,
    *,
    flags: list[str],
    depends: Sequence[Path] = (),
    libs: Sequence[str] = (),
    setup: Callable[[ctypes.CDLL], None] | None = None,
    log_level: int = logging.WARNING,
) -> ctypes.CDLL | None:
    """The shared library built from ``source``, compiling it on first use; None (reason logged once).

    Args:
        name: the library's name: the cache key in this process (the first call per name decides) and
            the stem of the file (``lib<name>-<key>.so``).
        source: the C file to compile.
        flags: compiler flags, e.g. ``["-O3", "-mavx2", "-fPIC", "-shared"]`` (``-shared -fPIC`` are the
            caller's to give, so nothing is implied).
        depends: other files the build reads (headers): hashed into the key so an edit rebuilds.
        libs: link arguments placed after the source (``["-lm", "-lpthread"]``).
        setup: called with the loaded library to declare argtypes and check an ABI version; an
            ``AttributeError``/``OSError``/``RuntimeError`` it raises makes the library unavailable.
        log_level: level of the one message saying why the library is unavailable (DEBUG for callers
            that announce the fallback themselves).

    Returns:
        The ``ctypes.CDLL``, or None when disabled (``PRVR_NATIVE=off``, not remembered: re-enabling
        works), no compiler exists, the build fails or ``setup`` rejects it (remembered for the process).
    """
    if not enabled():
        return None
    done = _loaded.get(name)
    if done is not None:
        return done.lib
    with _lock:
        done = _loaded.get(name)
        if done is not None:
            return done.lib
        lib, reason, path = None, None, None
        cc, reason = compiler()
        if cc is not None:
            try:
                path = _library_path(name, cc, [source, *depends], flags, libs)
                if not path.exists():
                    _build(cc, source, path, flags, libs)
                lib = ctypes.CDLL(str(path))
                if setup is not None:
                    setup(lib)
            except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as exc:
                lib, reason = None, f"could not build or load {source.name}: {exc}"
        _loaded[name] = BuildResult(name, lib, reason, path)
    if reason is not None:
        log.log(log_level, "native kernel %s unavailable (numpy fallback in use): %s", name, reason)
    return lib


def unavailable_reason(name: str) -> str | None:
    """Why library ``name`` is not in use, or None when it is loaded.

    Does not build anything: a library nobody asked for yet in this process says so.
    """
    if not enabled():
        return "disabled by PRVR_NATIVE=off"
    done = _loaded.get(name)
    if done is None:
        return "not built yet in this process (built on first use)"
    return done.reason


def results() -> dict[str, BuildResult]:
    """Every library requested in this process so far, by name."""
    return dict(_loaded)


def _forget(name: str | None = None) -> None:
    """Drop the remembered outcome (tests: build again after changing the environment)."""
    with _lock:
        if name is None:
            _loaded.clear()
        else:
            _loaded.pop(name, None)
