"""`prvr eval`: score a trained checkpoint on a split with the PRVR protocol (docs/models.md §1.5, §5.4).

Prints R@1/5/10/100 and SumR (MUSE: R@1/5/10, MdR, MnR), plus moment localisation (mean IoU of the
winning clip's span with the true span, R@1 at IoU >= 0.5) when the collection records spans. A table on
stdout, or one JSON object with ``--json``. Without ``--checkpoint`` the newest ``runs/*/best.pt`` is used.
With ``--bundle`` the exported bundle is scored instead, through the runtime Retriever (ONNX Runtime or
TensorRT, no torch model): the same protocol and metrics code, so the two tables must agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prvr_cli.common import fail
from prvr_sdk.errors import PrvrError

RUNS_DIR = Path("runs")
SPLITS = ("train", "val", "test")
_EXTRA_KEYS = ("mAP", "mIoU", "R@1,IoU>=0.5")  # after the headline, when present


def render_table(result: dict) -> Table:
    """One row of headline metrics, then t2v mAP and moment localisation when present."""
    keys = list(result["headline"]) + [k for k in _EXTRA_KEYS if k in result and k not in result["headline"]]
    shown = f", {result['precision']}" if result.get("precision", "fp32") != "fp32" else ""
    runner = f" (bundle, {result['backend']}{shown}, query {result['text']})" if "backend" in result \
        else " (torch)"
    table = Table(
        title=f"{result['model']}{runner} on {result['dataset']} / {result['split']}: "
        f"{result['queries']} queries, {result['videos']} videos",
        title_justify="left",
    )
    for key in keys:
        table.add_column(key, justify="right")
    table.add_row(*(f"{result[k]:.2f}" if k in ("MdR", "MnR") else f"{result[k]:.1f}" for k in keys))
    return table


def evaluate(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="best.pt / last.pt, or a run directory \\[default: newest runs/*/best.pt]."
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help=f"Split to score: {', '.join(SPLITS)}.")] = "test",
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data-root", help="Folder holding <dataset>/ \\[default: the one the run trained on]."
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Collection \\[default: the run's].")
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", help="Score this exported bundle with the runtime Retriever instead (needs "
                     "--data-root)."),
    ] = None,
    text: Annotated[
        str,
        typer.Option("--text", help="With --bundle: 'features' (the stored query features) or 'strings' "
                     "(the captions through the bundle's text front end)."),
    ] = "features",
    backend: Annotated[
        str, typer.Option("--backend", help="With --bundle: auto, onnxruntime or tensorrt.")
    ] = "auto",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto.")] = "auto",
    precision: Annotated[
        str, typer.Option("--precision", help="With --bundle: fp32, fp16 or int8 graphs (prvr calibrate).")
    ] = "fp32",
    trusted_key: Annotated[
        list[Path] | None,
        typer.Option("--trusted-key", help="With --bundle: Ed25519 public key; repeatable. The bundle must "
                     "be signed by one of them or it is refused (exit 5)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object to stdout instead of a table.")
    ] = False,
) -> None:
    """Evaluate a trained checkpoint (or an exported bundle): R@K / SumR (or MdR/MnR) and moment finding."""
    err = Console(stderr=True)
    try:
        from prvr_sdk.errors import InvalidInputError

        if split not in SPLITS:
            raise InvalidInputError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
        if data_root is not None and not data_root.is_dir():
            raise InvalidInputError(f"--data-root {data_root}: folder not found")
        if bundle is not None:  # the runtime only: no torch needed (or imported)
            from prvr_sdk.evaluation import evaluate_bundle

            if data_root is None:
                raise InvalidInputError("--bundle needs --data-root (a bundle does not record its data)")
            result = evaluate_bundle(
                bundle, data_root, split, dataset=dataset, text=text, backend=backend, device=device,
                trusted_keys=trusted_key or None, precision=precision,
            )
        else:
            if precision != "fp32":
                raise InvalidInputError("--precision is for --bundle (checkpoints are scored by torch, fp32)")
            from prvr_export.train.checkpoint import resolve_checkpoint
            from prvr_export.train.evaluate import evaluate_checkpoint

            if checkpoint is None:
                checkpoint = resolve_checkpoint(None, runs_dir=RUNS_DIR)
                err.print(f"checkpoint: {escape(str(checkpoint))}", highlight=False, soft_wrap=True)
            result = evaluate_checkpoint(
                checkpoint, split, data_root=data_root, dataset=dataset, device=device
            )
    except PrvrError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        Console().print(render_table(result))
