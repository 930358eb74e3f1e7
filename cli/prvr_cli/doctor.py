"""`prvr doctor`: what is installed, which selective-scan backends work, and what will clash.

Most probes read distribution metadata instead of importing, so doctor answers in a second even on
a machine whose GPU stack is broken. Two exceptions: onnxruntime is imported (its execution providers
are only known at import), and the selective-scan backends are asked for in a child interpreter, so
this process never loads torch, prvr_export or mamba-ssm.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import prvr_sdk

# Distributions that all install the same top-level `onnxruntime` package: with two of them in one
# environment, the later install silently overwrites the other's files.
ONNXRUNTIME_VARIANTS = frozenset(
    {
        "onnxruntime",
        "onnxruntime-gpu",
        "onnxruntime-directml",
        "onnxruntime-openvino",
        "onnxruntime-qnn",
        "onnxruntime-rocm",
        "onnxruntime-training",
        "ort-nightly",
        "ort-nightly-gpu",
    }
)
NVCC_TIMEOUT_S = 5.0
BACKENDS_TIMEOUT_S = 120.0  # a cold torch import on a slow disk takes tens of seconds
_BACKENDS_MARKER = "PRVR_BACKENDS_JSON="
_BACKENDS_SCRIPT = f"""
import json
from prvr_export.ops.selective_scan import available_backends, fallback_reasons
report = {{"backends": available_backends(), "fallbacks": fallback_reasons()}}
print({_BACKENDS_MARKER!r} + json.dumps(report))
"""


def normalize_dist_name(name: str) -> str:
    """PEP 503 normalisation, so `ONNXRuntime_GPU` and `onnxruntime-gpu` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> list[str]:
    """Normalised names of every distribution visible to this interpreter, sorted, without repeats."""
    names = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            names.add(normalize_dist_name(name))
    return sorted(names)


def dist_version(*names: str) -> str | None:
    """Version of the first of ``names`` that is installed, or None. Reads metadata; imports nothing."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def onnxruntime_warnings(distributions: Iterable[str]) -> list[str]:
    """Warnings for an environment holding more than one onnxruntime distribution (they clash).

    Args:
        distributions: installed distribution names, in any spelling.
    Returns:
        One warning naming the clashing distributions, or an empty list.
    """
    found = sorted({normalize_dist_name(d) for d in distributions} & ONNXRUNTIME_VARIANTS)
    if len(found) < 2:
        return []
    both = "both" if len(found) == 2 else "all"
    return [
        f"{' and '.join(found)} are {both} installed; they overwrite each other's files in "
        "site-packages/onnxruntime. Uninstall all of them, then install one: "
        'pip install "prvr-sdk[onnx]" (CPU) or "prvr-sdk[gpu]" (GPU).'
    ]


def torch_build(version: str, requires: Iterable[str] | None = None) -> str:
    """Whether a torch build is CPU, CUDA or ROCm, from its version string, without importing it.

    Args:
        version: e.g. ``2.13.0+cpu``, ``2.5.1+cu121``, ``2.6.0+rocm6.2`` or plain ``2.6.0``.
        requires: torch's ``Requires-Dist`` lines; decide plain versions (PyPI's Linux wheels are CUDA
            builds that depend on ``nvidia-*`` wheels, other platforms' are CPU builds).
    Returns:
        ``"cpu"``, ``"cuda X.Y"``, ``"rocm X.Y"`` or ``"cuda"``.
    """
    local = version.partition("+")[2]
    if local == "cpu" or local.startswith("cpu."):
        return "cpu"
    cuda = re.fullmatch(r"cu(\d+)(\d)", local)
    if cuda:
        return f"cuda {cuda.group(1)}.{cuda.group(2)}"
    if local.startswith("rocm"):
        return f"rocm {local[4:]}".strip()
    if any(normalize_dist_name(r).startswith("nvidia-") for r in requires or ()):
        return "cuda"
    return "cpu"


def parse_nvcc_release(text: str) -> str | None:
    """``"13.0"`` from ``nvcc --version`` output (``... release 13.0, V13.0.88``), or None."""
    match = re.search(r"release (\d+\.\d+)", text)
    return match.group(1) if match else None


def find_nvcc() -> str | None:
    """Path of nvcc: PATH first, then $CUDA_HOME/bin and /usr/local/cuda/bin (often not on PATH)."""
    found = shutil.which("nvcc")
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for home in filter(None, homes):
        candidate = os.path.join(home, "bin", "nvcc")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def probe_nvcc(timeout: float = NVCC_TIMEOUT_S) -> dict[str, str | None]:
    """``{"path", "release", "error"}`` for nvcc; every value None when it is absent."""
    path = find_nvcc()
    if path is None:
        return {"path": None, "release": None, "error": None}
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"path": path, "release": None, "error": _one_line(str(exc))}
    release = parse_nvcc_release(done.stdout + done.stderr)
    error = None if release else _one_line(done.stderr or done.stdout or f"exit status {done.returncode}")
    return {"path": path, "release": release, "error": error}


def probe_torch() -> dict[str, str | None]:
    """torch's version and build from metadata; torch is not imported (it takes seconds)."""
    version = dist_version("torch")
    if version is None:
        return {"version": None, "build": None}
    return {"version": version, "build": torch_build(version, metadata.requires("torch"))}


def probe_onnxruntime(distributions: Iterable[str]) -> dict[str, Any]:
    """onnxruntime's version, providers and installed distributions; imports onnxruntime lazily."""
    dists = sorted({normalize_dist_name(d) for d in distributions} & ONNXRUNTIME_VARIANTS)
    report: dict[str, Any] = {"version": None, "providers": [], "distributions": dists, "error": None,
                              "scan": None}
    if not dists:
        return report
    try:
        import onnxruntime  # lazy: ~0.3 s, and only doctor needs the provider list

        report["version"] = onnxruntime.__version__
        report["providers"] = list(onnxruntime.get_available_providers())
        from prvr_sdk.backends.onnxruntime import scan_backend

        report["scan"] = _one_line(scan_backend())  # what runs prvr::SelectiveScan on the CPU (builds it)
    except Exception as exc:  # a clashing or half-installed onnxruntime fails in many ways
        report["error"] = _one_line(f"{type(exc).__name__}: {exc}")
    return report


def probe_selective_scan(torch_installed: bool, timeout: float = BACKENDS_TIMEOUT_S) -> dict[str, Any]:
    """``{"backends", "fallbacks", "error"}`` of ``prvr_export.ops.selective_scan``, asked of a child.

    ``backends`` is ``available_backends()`` (device -> implementation); ``fallbacks`` is
    ``fallback_reasons()`` (device -> why the slow reference serves it), so a slow scan and its cause
    show in the table and in ``--json``. A child, so this process stays free of torch; any failure
    becomes a one-line ``error`` string.
    """
    empty: dict[str, Any] = {"backends": {}, "fallbacks": {}, "error": None}
    if not torch_installed:
        return {**empty, "error": 'torch is not installed (pip install "prvr-sdk[train]")'}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _BACKENDS_SCRIPT], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {**empty, "error": f"probe timed out after {timeout:g} s"}
    except OSError as exc:
        return {**empty, "error": _one_line(str(exc))}
    for line in done.stdout.splitlines():
        if line.startswith(_BACKENDS_MARKER):
            try:
                found = json.loads(line[len(_BACKENDS_MARKER) :])
                return {
                    "backends": {str(k): str(v) for k, v in found["backends"].items()},
                    "fallbacks": {str(k): str(v) for k, v in found["fallbacks"].items()},
                    "error": None,
                }
            except (ValueError, AttributeError, KeyError, TypeError) as exc:
                return {**empty, "error": _one_line(f"unreadable probe output: {exc}")}
    return {**empty, "error": _last_line(done.stderr) or f"probe exited with status {done.returncode}"}


def probe_runtime_choice() -> dict[str, Any]:
    """What ``Retriever.from_bundle(backend="auto", device="auto")`` picks here, for bundles with and
    without TensorRT engines, and why."""
    from prvr_sdk.backends import choose
    from prvr_sdk.errors import PrvrError

    report: dict[str, Any] = {}
    for key, has_engine in (("onnx_bundle", False), ("bundle_with_engines", True)):
        try:
            choice = choose("auto", "auto", has_engine=has_engine)
            report[key] = {"backend": choice.backend, "device": choice.device, "reason": choice.reason}
        except PrvrError as exc:
            report[key] = {"backend": None, "device": None, "reason": _one_line(str(exc))}
    return report


def collect() -> dict[str, Any]:
    """The whole report, as the JSON object ``prvr doctor --json`` prints. Absent things are null."""
    distributions = installed_distributions()
    torch = probe_torch()
    return {
        "prvr_sdk": prvr_sdk.__version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "numpy": dist_version("numpy"),
        "torch": torch,
        "onnxruntime": probe_onnxruntime(distributions),
        "tensorrt": dist_version("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"),
        "tokenizers": dist_version("tokenizers"),
        "nvcc": probe_nvcc(),
        "mamba_ssm": dist_version("mamba-ssm"),
        "selective_scan": probe_selective_scan(torch_installed=torch["version"] is not None),
        "runtime": probe_runtime_choice(),
        "index_kernel": probe_index_kernel(),
        "scale_out": {
            "qdrant_edge": dist_version("qdrant-edge-py"),
            "qdrant_client": dist_version("qdrant-client"),
            "ray": dist_version("ray"),
            "fastapi": dist_version("fastapi"),
            "uvicorn": dist_version("uvicorn"),
        },
        "warnings": onnxruntime_warnings(distributions),
    }


def probe_index_kernel() -> dict[str, Any]:
    """Whether exact search runs the native float16 kernel (``prvr_sdk.native.f16dot``) or numpy: a
    single-query search over 1M clips is ~10x slower on the numpy path, so say which one serves."""
    from prvr_sdk.native import f16dot

    loaded = f16dot.load() is not None
    return {"loaded": loaded, "reason": None if loaded else f16dot.unavailable_reason()}


def render_table(report: dict[str, Any]) -> Table:
    """The report as a two-column rich table, absent things spelled out."""
    missing = "[dim]not installed[/dim]"
    table = Table(title="prvr doctor", show_header=True, header_style="bold")
    table.add_column("component")
    table.add_column("status", overflow="fold")

    def row(name: str, value: str | None, markup: str = "") -> None:
        # Values are escaped: versions, paths and messages may contain brackets (`prvr-sdk[onnx]`).
        table.add_row(escape(name), missing if value is None else f"{markup}{escape(value)}")

    row("prvr-sdk", report["prvr_sdk"])
    row("python", f"{report['python']['version']} ({report['python']['executable']})")
    row("platform", report["platform"])
    row("numpy", report["numpy"])
    torch = report["torch"]
    row("torch", f"{torch['version']} ({torch['build']} build)" if torch["version"] else None)
    ort = report["onnxruntime"]
    if ort["error"]:
        row("onnxruntime", ort["error"], markup="[red]import failed:[/red] ")
    elif ort["version"]:
        row("onnxruntime", f"{ort['version']} ({', '.join(ort['distributions'])})")
        row("  providers", ", ".join(ort["providers"]) or "none")
        if ort.get("scan"):
            slow = "[yellow]slow:[/yellow] " if ort["scan"].startswith("portable") else ""
            row("  selective scan", ort["scan"], markup=slow)
    else:
        row("onnxruntime", None)
    row("tensorrt", report["tensorrt"])
    row("tokenizers", report["tokenizers"])
    nvcc = report["nvcc"]
    if nvcc["release"]:
        row("nvcc", f"{nvcc['release']} ({nvcc['path']})")
    elif nvcc["path"]:
        row("nvcc", f"{nvcc['error']} ({nvcc['path']})", markup="[red]unusable:[/red] ")
    else:
        table.add_row("nvcc", "[dim]not found[/dim]")
    row("mamba-ssm", report["mamba_ssm"])
    scan = report["selective_scan"]
    if scan["error"]:
        row("selective scan", scan["error"], markup="[red]unavailable:[/red] ")
    slow = scan.get("fallbacks", {})
    for name, status in scan["backends"].items():
        # A device on the slow reference is flagged, with its reason (in the status text).
        row(f"selective scan: {name}", status, markup="[yellow]slow:[/yellow] " if name in slow else "")
    kernel = report.get("index_kernel") or {}
    if kernel.get("loaded"):
        row("exact search", "native float16 kernel (prvr_sdk.native.f16dot)")
    elif kernel:
        row("exact search", f"numpy decode + BLAS ({kernel.get('reason')})", markup="[yellow]slow:[/yellow] ")
    scale = report.get("scale_out") or {}
    for name, label in (("qdrant_edge", "qdrant-edge-py"), ("qdrant_client", "qdrant-client"), ("ray", "ray"),
                        ("fastapi", "fastapi (prvr serve)"), ("uvicorn", "uvicorn (prvr serve)")):
        if name in scale:
            row(label, scale[name])
    for key, label in (("onnx_bundle", "Retriever auto"), ("bundle_with_engines", "  with engines")):
        pick = report.get("runtime", {}).get(key)
        if pick:
            row(label, f"{pick['backend']} on {pick['device']} ({pick['reason']})")
    return table


def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout instead of a table."),
) -> None:
    """Report versions, accelerators and selective-scan backends; warn about clashing installs."""
    report = collect()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        Console().print(render_table(report))
    err = Console(stderr=True)
    for warning in report["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    raise typer.Exit(code=0)


def _one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace so a message fits one table cell / JSON string."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _last_line(text: str) -> str:
    """Last non-empty line (for a traceback: the exception itself), collapsed to one line."""
    lines = [line for line in text.splitlines() if line.strip()]
    return _one_line(lines[-1]) if lines else ""
