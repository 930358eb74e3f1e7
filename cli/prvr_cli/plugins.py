"""`prvr plugins build`: compile our Triton selective-scan kernel to PTX (and cubin) for TensorRT, no GPU.

Writes, per (arch, dtype), ``<name>.ptx`` and ``<name>.cubin`` (when ptxas assembled one) and one
``index.json`` describing every kernel: Triton version, PTX ISA and the driver it needs, entry name,
launch geometry, shared memory, argument order. The TensorRT plugin reads that index; the fields are
those of ``prvr_plugins.aot.CompiledScan.index_entry``. Every file is written atomically, the index
last, so a reader never sees an index that names missing files.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from prvr_cli.common import fail
from prvr_sdk.errors import BackendUnavailableError, InvalidInputError, PrvrError

app = typer.Typer(help="Build-time kernels for the TensorRT plugin (Triton, compiled ahead of time).",
                  no_args_is_help=True)

DEFAULT_ARCHS = ["sm_80", "sm_86", "sm_89", "sm_90"]
DEFAULT_DTYPES = ["fp32", "fp16", "bf16"]
INDEX_FORMAT = 1


def _ptx_version(text: str) -> int | None | str:
    """``--ptx-version``: "default" (ISA 8.0 up to sm_90), "triton" (Triton's newest), or e.g. 80 / 8.0."""
    if text in ("default", "triton"):
        return "default" if text == "default" else None
    try:
        value = float(text)
    except ValueError:
        raise InvalidInputError(
            f"--ptx-version {text!r}: expected 'default', 'triton', or e.g. 80 or 8.0") from None
    return int(round(value * 10)) if value < 20 else int(value)


def build_kernels(out: Path, archs: list[str], dtypes: list[str], *, n_state: int, groups: int,
                  delta_softplus: bool, block_d: int | None, ptx_version: int | None | str) -> dict[str, Any]:
    """Compile every (arch, dtype) pair into ``out`` and write ``index.json``; returns the index."""
    try:
        import triton

        from prvr_plugins.aot import compile_scan
    except ImportError as exc:
        detail = f"prvr plugins build compiles Triton kernels: {exc}"
        raise BackendUnavailableError("triton", "plugins", detail) from None
    from prvr_sdk.fsutil import atomic_write

    kernels = []
    for arch in dict.fromkeys(archs):
        for dtype in dict.fromkeys(dtypes):
            try:
                k = compile_scan(arch, dtype, n_state=n_state, groups=groups, has_d=True, has_bias=True,
                                 delta_softplus=delta_softplus, block_d=block_d, ptx_version=ptx_version)
            except ValueError as exc:
                raise InvalidInputError(str(exc)) from None
            except Exception as exc:  # a Triton compile failure: report it as ours, with its cause
                raise PrvrError(f"compiling the scan kernel for {arch}/{dtype} failed: "
                                f"{type(exc).__name__}: {exc}") from None
            entry = k.index_entry()
            ptx = k.ptx.encode()
            atomic_write(out / f"{k.name}.ptx", ptx, mode=0o644)
            entry["files"] = {"ptx": f"{k.name}.ptx", "ptx_sha256": hashlib.sha256(ptx).hexdigest()}
            if k.cubin is not None:
                atomic_write(out / f"{k.name}.cubin", k.cubin, mode=0o644)
                entry["files"]["cubin"] = f"{k.name}.cubin"
                entry["files"]["cubin_sha256"] = hashlib.sha256(k.cubin).hexdigest()
            kernels.append(entry)
    index = {
        "format": INDEX_FORMAT,
        "kernel": "prvr::SelectiveScan forward (prvr_plugins.scan_triton.scan_fwd_kernel)",
        "triton_version": triton.__version__,
        "layout": {"u": "[B, D, L]", "delta": "[B, D, L]", "A": "[D, N] fp32", "B": "[B, G, N, L]",
                   "C": "[B, G, N, L]", "D": "[D] fp32", "delta_bias": "[D] fp32", "y": "[B, D, L]"},
        "kernels": kernels,
    }
    atomic_write(out / "index.json", json.dumps(index, indent=2) + "\n", mode=0o644)
    return index


@app.command("build")
def build(
    out: Annotated[Path, typer.Option("--out", help="Folder for the .ptx/.cubin files and index.json.")],
    arch: Annotated[list[str] | None, typer.Option(
        "--arch", help=f"GPU architecture, repeatable \\[default: {' '.join(DEFAULT_ARCHS)}].")] = None,
    dtype: Annotated[list[str] | None, typer.Option(
        "--dtype", help=f"Activation dtype, repeatable \\[default: {' '.join(DEFAULT_DTYPES)}].")] = None,
    n_state: Annotated[int, typer.Option("--n-state", help="State size N the model uses.")] = 16,
    groups: Annotated[int, typer.Option("--groups", help="Groups G of B and C (1 for Mamba-1).")] = 1,
    delta_softplus: Annotated[bool, typer.Option(
        "--delta-softplus/--no-delta-softplus", help="The node's delta_softplus attribute.")] = True,
    block_d: Annotated[int | None, typer.Option(
        "--block-d", help="Channels per program (power of 2).")] = None,
    ptx_version: Annotated[str, typer.Option(
        "--ptx-version", help="PTX ISA: 'default' (8.0 up to sm_90), 'triton' (newest), or e.g. 8.0.")
    ] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print index.json to stdout.")] = False,
) -> None:
    """Compile the selective-scan forward kernel for each --arch and --dtype (no GPU needed)."""
    try:
        index = build_kernels(out, arch or DEFAULT_ARCHS, dtype or DEFAULT_DTYPES, n_state=n_state,
                              groups=groups, delta_softplus=delta_softplus, block_d=block_d,
                              ptx_version=_ptx_version(ptx_version))
    except PrvrError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(index, indent=2) + "\n")
        return
    for k in index["kernels"]:
        cubin = "+cubin" if "cubin" in k["files"] else "no cubin"
        driver = k["min_driver"] or "unknown"
        typer.echo(f"{k['name']}: PTX ISA {k['ptx_isa']} (driver >= {driver}), {cubin}, "
                   f"{k['threads_per_block']} threads, {k['shared_mem']} B shared")
    typer.echo(f"wrote {len(index['kernels'])} kernels and {out / 'index.json'}")
