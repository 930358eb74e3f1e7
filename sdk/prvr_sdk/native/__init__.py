"""Optional compiled kernels of the runtime, built with the system C compiler on first use.

``build.load_library`` is the one loader (also used by ``prvr_export.ops.cpu_kernel`` for the selective
scan): it compiles a C file into a per-machine cache, loads it with ctypes and, where that is impossible,
returns None with a reason so that callers keep their numpy path. Nothing is compiled when this package
is imported; ``status()`` (for ``prvr doctor``) builds the runtime's kernels to report on them.
Set ``PRVR_NATIVE=off`` to run without any compiled code.
"""

from __future__ import annotations

from typing import Any

from prvr_sdk.native.build import cache_dir, compiler, enabled, load_library, unavailable_reason

__all__ = ["cache_dir", "compiler", "enabled", "load_library", "status", "unavailable_reason"]


def status() -> dict[str, Any]:
    """Which runtime kernels serve calls here and, for the others, why not (builds them if needed).

    Returns:
        ``{"enabled": bool, "compiler": path | None, "cache": dir, "kernels": {name: {"loaded": bool,
        "reason": str | None, "path": str | None, "threads": int}}}``; also lists any other library
        loaded through ``load_library`` in this process (e.g. the selective scan when torch is in use).
    """
    from prvr_sdk.native import build, f16dot

    f16dot.load()
    cc, cc_reason = compiler()
    kernels: dict[str, dict[str, Any]] = {}
    for name, result in sorted(build.results().items()):
        kernels[name] = {
            "loaded": result.lib is not None and unavailable_reason(name) is None,
            "reason": unavailable_reason(name),
            "path": str(result.path) if result.path else None,
        }
    entry = kernels.setdefault(f16dot.NAME, {"path": None})
    entry.update(loaded=f16dot.unavailable_reason() is None, reason=f16dot.unavailable_reason(),
                 threads=f16dot.threads())
    return {
        "enabled": enabled(),
        "compiler": cc if cc else cc_reason,
        "cache": str(cache_dir()),
        "kernels": kernels,
    }
