"""`prvr eval`: score a trained checkpoint on a split with the PRVR protocol (docs/models.md §1.5, §5.4).

Prints R@1/5/10/100 and SumR (MUSE: R@1/5/10, MdR, MnR), plus moment localisation (mean IoU of the
winning clip's span with the true span, R@1 at IoU >= 0.5) when the collection records spans. A table on
stdout, or one JSON object with ``--json``. Without ``--checkpoint`` the newest ``runs/*/best.pt`` is used.
With ``--bundle`` the exported bundle is scored instead, through the runtime Retriever (ONNX Runtime or
TensorRT, no torch model): the same protocol and metrics code, so the two tables must agree.
When moment metrics are skipped (wholly or partly) the reason is printed under the table and given as
``moment_skipped_reason`` in the JSON. ``--compare-published`` adds the published figures of the model on
the collection (``prvr_sdk.published``) and the run's deltas to them (JSON key ``published``).
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


def render_comparison(comparison: dict) -> Table | str:
    """Run, published and delta rows over the headline metrics; a sentence when nothing is published."""
    if not comparison["available"]:
        return comparison["note"]
    rows = comparison["rows"]
    table = Table(
        title=f"{comparison['model']} on {comparison['dataset']}: this run vs published",
        caption=f"published: {comparison['source']}; {comparison['features']}"
        + (f". Note: {comparison['note']}" if comparison["note"] else ""),
        title_justify="left", caption_justify="left",
    )
    table.add_column("")
    for row in rows:
        table.add_column(row["metric"], justify="right")

    def cell(value: float | None, key: str, signed: bool = False) -> str:
        if value is None:
            return "-"
        digits = 2 if key in ("MdR", "MnR") else 1
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"

    table.add_row("run", *(cell(r["run"], r["metric"]) for r in rows))
    table.add_row("published", *(cell(r["published"], r["metric"]) for r in rows))
    table.add_row("delta", *(cell(r["delta"], r["metric"], signed=True) for r in rows))
    return table


def _run_data_root(checkpoint: Path, data_root: Path | None) -> Path | None:
    """The data root a checkpoint was scored on: --data-root, else the run's config.json record."""
    if data_root is not None:
        return data_root
    config = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "config.json"
    try:
        recorded = json.loads(config.read_text(encoding="utf-8")).get("data_root")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(recorded) if isinstance(recorded, str) and recorded else None


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
    compare_published: Annotated[
        bool, typer.Option("--compare-published", help="Also show the published figures of the model on "
                           "this collection and the run's deltas to them (docs/models.md §7).")
    ] = False,
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
            result = {**result, **_skip_reason(result, _run_data_root(Path(checkpoint), data_root))}
    except PrvrError as exc:
        fail(exc)
    if compare_published:
        from prvr_sdk.published import compare_published as compare

        result = {**result, "published": compare(result)}
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    out = Console()
    out.print(render_table(result))
    if "moment_skipped_reason" in result:
        out.print(f"moment metrics skipped: {escape(result['moment_skipped_reason'])}", highlight=False,
                  soft_wrap=True)
    if compare_published:
        shown = render_comparison(result["published"])
        out.print(escape(shown) if isinstance(shown, str) else shown, highlight=False, soft_wrap=True)


def _skip_reason(result: dict, data_root: Path | None) -> dict:
    """``{"moment_skipped_reason": ...}`` for a checkpoint's result, or ``{}`` when nothing was skipped."""
    from prvr_sdk.evaluation import meta_hint, moment_skip_reason

    reason = moment_skip_reason(result)
    if reason is not None and result.get("moment_capable") and data_root is not None:
        reason = moment_skip_reason(result, meta_hint(result["dataset"], data_root, result["split"]))
    return {} if reason is None else {"moment_skipped_reason": reason}
