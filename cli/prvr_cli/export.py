"""`prvr export`: a trained checkpoint -> a validated ONNX bundle (video and text encoder + manifest).

Without --checkpoint it takes the newest run of that model under --runs-dir (and says which). The
parity table goes to stderr; a parity failure exits with code 4 and leaves --out as it was. An existing,
non-empty --out is refused (exit 2) unless --overwrite, which replaces only a prvr bundle, atomically.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from prvr_cli.common import fail
from prvr_sdk.errors import InvalidInputError, PrvrError

MODELS = ("mamfusion", "amdnet", "muse")


def export(
    model: Annotated[str, typer.Option("--model", help=f"One of {', '.join(MODELS)}.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="best.pt / last.pt or a run directory \\[default: newest run of --model]."
        ),
    ] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where to look for runs.")] = Path("runs"),
    out: Annotated[
        Path | None, typer.Option("--out", help="Bundle directory \\[default: bundles/<model>-<dataset>].")
    ] = None,
    opset: Annotated[int, typer.Option("--opset", min=18, help="ONNX opset of the graphs.")] = 18,
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Check ONNX Runtime against torch.")
    ] = True,
    text_frontend: Annotated[
        str,
        typer.Option("--text-frontend", help="Bundle a text front end so strings work without torch: auto "
                     "(MiniLM for the demo collection), minilm, or none."),
    ] = "auto",
    fps: Annotated[
        float | None,
        typer.Option("--fps", help="Frame features per second of the video features, for clip times in "
                     "seconds \\[default: known per collection: demo 1, tvr 1/1.5]."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an existing bundle at --out (only a prvr "
                     "bundle is replaced, atomically; anything else is refused)."),
    ] = False,
    sign_key: Annotated[
        Path | None,
        typer.Option("--sign-key", help="Sign the bundle with this Ed25519 private key (`prvr keys "
                     "generate`); writes signature.json."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest summary as JSON.")] = False,
) -> None:
    """Export a trained model to an ONNX bundle and check ONNX Runtime against torch (exit 4 on mismatch)."""
    err = Console(stderr=True)
    try:
        if model not in MODELS:
            raise InvalidInputError(f"--model {model!r}: expected one of {', '.join(MODELS)}")
        from prvr_export.train.checkpoint import resolve_checkpoint

        newest = checkpoint is None
        checkpoint = resolve_checkpoint(checkpoint, model=model, runs_dir=runs_dir)
        if newest:
            err.print(f"using the newest {model} checkpoint: {escape(str(checkpoint))}", highlight=False)
        from prvr_export.onnx_export.bundle import check_target, export_bundle, parity_table

        if out is not None:
            check_target(out, overwrite)  # before loading anything: refusing should be instant
        from prvr_export.train.evaluate import load_checkpoint

        net, config = load_checkpoint(checkpoint)
        if net.name != model:
            raise InvalidInputError(f"{checkpoint} holds a {net.name} model, not {model}")
        meta = json.loads((checkpoint.parent / "config.json").read_text())
        dataset = meta.get("dataset", "demo")
        out = out or Path("bundles") / f"{model}-{dataset}"
        err.print(f"exporting {model} ({dataset}) to {escape(str(out))} …", highlight=False)
        manifest = export_bundle(
            net,
            config,
            out,
            model_name=model,
            dataset=dataset,
            opset=opset,
            validate=validate,
            checkpoint=checkpoint,
            text_frontend=None if text_frontend == "none" else text_frontend,
            fps=fps,
            overwrite=overwrite,
            sign_key=sign_key,
        )
    except PrvrError as exc:
        fail(exc)  # escapes the message: paths may hold [brackets]
    if validate:
        err.print(parity_table(manifest), highlight=False, markup=False)
    summary = {
        "bundle": str(out),
        "model": model,
        "dataset": dataset,
        "checkpoint": str(checkpoint),
        "scoring": manifest["scoring"],
        "outputs": manifest["outputs"],
        "parity": {g: r["max_abs_diff"] for g, r in manifest.get("parity", {}).items()},
        "text_frontend": (manifest["text_input"].get("frontend") or {}).get("kind"),
        "signed": sign_key is not None,
    }
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        typer.echo(f"bundle written to {out}")
