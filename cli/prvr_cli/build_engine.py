"""`prvr build-engine`: TensorRT engines for a bundle's encoders, built for this machine's GPU.

Does its work in ``prvr_plugins.build.build_engines``; this module parses options and prints. Without
TensorRT or a GPU it exits 3 (``BackendUnavailableError``) with the install hint, before touching the
bundle.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from prvr_cli.common import err, fail
from prvr_sdk.errors import BackendUnavailableError, PrvrError

SHAPES_HELP = "Per-input {} shapes, trtexec style: NAME:AxBxC (repeat, or comma-separate)."


def build_engine(
    bundle: Annotated[Path, typer.Argument(help="The bundle directory (prvr export).")],
    precision: Annotated[
        str, typer.Option("--precision", help="fp32, or fp16 (graph converted to float16; scan stays fp32).")
    ] = "fp32",
    min_shapes: Annotated[
        list[str] | None, typer.Option("--min-shapes", help=SHAPES_HELP.format("minimum"))
    ] = None,
    opt_shapes: Annotated[
        list[str] | None, typer.Option("--opt-shapes", help=SHAPES_HELP.format("tuned (opt)"))
    ] = None,
    max_shapes: Annotated[
        list[str] | None, typer.Option("--max-shapes", help=SHAPES_HELP.format("maximum"))
    ] = None,
    workspace: Annotated[float, typer.Option("--workspace", help="TensorRT workspace limit, GiB.")] = 4.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the engines and the new manifest digest as JSON.")
    ] = False,
) -> None:
    """Build TensorRT engines (both encoders) for this GPU, add them to the bundle and re-seal its manifest.

    Batch and length ranges come from the bundle's serving spec; override them per input. Needs TensorRT
    and a GPU (pip install "prvr-sdk\\[gpu]"); exits 3 without them, leaving the bundle unchanged.
    """
    try:
        from prvr_plugins.build import build_engines, parse_shapes
    except ImportError as exc:  # a partial install without the plugins package
        fail(BackendUnavailableError("tensorrt", "gpu", f"prvr_plugins does not import: {exc}"))
    try:
        result = build_engines(
            bundle,
            precision=precision,
            min_shapes=parse_shapes(min_shapes, "--min-shapes"),
            opt_shapes=parse_shapes(opt_shapes, "--opt-shapes"),
            max_shapes=parse_shapes(max_shapes, "--max-shapes"),
            workspace_gib=workspace,
        )
    except PrvrError as exc:
        fail(exc)
    if result.signature_invalidated:
        err.print(f"warning: {bundle}/signature.json signs the previous manifest; sign the bundle again "
                  "(prvr_sdk.signing.sign_manifest(..., overwrite=True)) or loading with trusted keys fails",
                  highlight=False, markup=False)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    for name, entry in result.engines.items():
        engine = entry["engine"]
        typer.echo(f"{name}  {entry['bytes']} bytes  {engine['gpu']} (sm {engine['compute_capability']}), "
                   f"TensorRT {engine['tensorrt']}, scan: {engine['scan'] or 'none'}")
    typer.echo(f"manifest re-sealed: {result.manifest_sha256}")
