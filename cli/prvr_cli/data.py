"""`prvr data`: datasets. `prvr data demo --out DIR` writes the synthetic demo corpus; `prvr data check
--data-root ROOT --dataset D [--model M]` checks every file the models will read, before any training.

Thin: parses, calls ``prvr_export.data.write_demo_corpus`` / ``prvr_sdk.data.check.check_collection`` (torch
and the model registry are imported inside the commands, so the root app starts without torch), shows
progress on stderr and prints the result (a table, or JSON with --json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from prvr_cli.common import fail
from prvr_sdk.errors import InvalidInputError, PrvrError

app = typer.Typer(
    name="data", help="Datasets: check a collection before training; the synthetic demo corpus.",
    no_args_is_help=True,
)


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Data root; the corpus goes to OUT/demo.", file_okay=False)
    ],
    num_videos: Annotated[
        int, typer.Option("--num-videos", min=3, max=4000, help="Number of videos.")
    ] = 1500,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed writes the same files.")
    ] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT/demo.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object to stdout.")
    ] = False,
) -> None:
    """Write a synthetic PRVR corpus (videos with captioned events, MiniLM text features) in the real layouts.

    Read it back with prvr_export.data.open_dataset("demo", OUT, config).
    """
    from prvr_export.data import write_demo_corpus  # lazy: imports torch

    err = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, TimeElapsedColumn(), console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        summary = write_demo_corpus(
            out, num_videos=num_videos, seed=seed, overwrite=overwrite, progress=report
        )
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    out_console = Console()
    out_console.print(_summary_table(summary.to_dict()))
    out_console.print(_summary_line(summary.to_dict()), highlight=False)


def _summary_table(summary: dict) -> Table:
    table = Table(title=f"demo corpus -> {summary['root']}", show_header=True, header_style="bold")
    table.add_column("split")
    table.add_column("videos", justify="right")
    table.add_column("captions", justify="right")
    for split, count in summary["videos"].items():
        table.add_row(split, str(count), str(summary["captions"][split]))
    return table


def _summary_line(summary: dict) -> str:
    total_mb = sum(summary["files"].values()) / 2**20
    return (
        f"{summary['frames']} frames x {summary['video_dim']}-d, text {summary['text_dim']}-d; "
        f"{len(summary['files'])} files, {total_mb:.1f} MiB; {summary['seconds']:.1f} s "
        f"(text encoder {summary['encode_seconds']:.1f} s); seed {summary['seed']}"
    )



# --- prvr data check ----------------------------------------------------------------------------------------


def check_configs(dataset: str, models: list[str] | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """model name -> its registry config for ``dataset`` with ``overrides`` (the one override rule);
    ``models`` None or empty = every model with a config for ``dataset``.

    Raises:
        InvalidInputError: no model supports ``dataset``, an unknown model or config, a bad override.
    """
    from prvr_export.models import list_configs, list_models  # lazy: torch; registers the models
    from prvr_export.models.registry import resolve_config

    if not models:
        models = [m for m in list_models() if f"{m}-{dataset}" in list_configs()]
        if not models:
            raise InvalidInputError(f"no registered model has a config for dataset {dataset!r}")
    return {m: resolve_config(m, dataset, overrides) for m in dict.fromkeys(models)}


def problems_table(report: Any, title: str | None = None) -> Table:
    """The report's problems as a rich table: severity, file, problem, how many, first examples, fix."""
    table = Table(title=title, show_header=True, header_style="bold", show_lines=True)
    fixes = any(p.fix for p in report.problems)
    columns = (("", None), ("file", "cyan"), ("problem", None), ("count", None), ("examples", "dim"))
    for name, style in columns + ((("fix", "green"),) if fixes else ()):
        table.add_column(name, style=style, justify="right" if name == "count" else "left",
                         overflow="fold")
    for p in report.problems:
        mark = "[red]error[/red]" if p.severity == "error" else "[yellow]warning[/yellow]"
        row = [mark, escape(p.file), escape(p.problem), str(p.count), escape("\n".join(p.examples[:3]))]
        table.add_row(*row, *([escape(p.fix or "")] if fixes else []))
    return table


def print_report(report: Any, console: Console) -> None:
    """Table (when there are problems), the ``--config`` fixes, and the summary line."""
    if report.problems:
        console.print(problems_table(report, f"prvr data check: {report.dataset}"))
    several = len(report.models) > 1
    for fix in report.fixes():
        models = sorted({m for p in report.problems if p.fix == fix for m in p.models})
        who = f" ({', '.join(models)})" if several and models else ""
        console.print(f"fix{who}: {escape(fix)}", highlight=False, soft_wrap=True)
    style = "red" if not report.ok else "green"
    console.print(f"[{style}]{escape(report.summary())}[/{style}]", highlight=False, soft_wrap=True)


@app.command()
def check(
    data_root: Annotated[
        Path, typer.Option("--data-root", help="Folder holding <dataset>/ (TextData, FeatureData).")
    ],
    dataset: Annotated[str, typer.Option("--dataset", help="Collection: tvr, activitynet, charades, ...")],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Model whose files to check; repeatable \\[default: every model with "
                                     "a config for the dataset]."),
    ] = None,
    config: Annotated[
        list[str] | None,
        typer.Option("--config", help="Override a config field, key=value (JSON value), as prvr train; "
                                      "repeatable."),
    ] = None,
    deep: Annotated[
        bool, typer.Option("--deep", help="Also read every feature value and report NaN/Inf (slow).")
    ] = False,
    max_frames: Annotated[
        int | None, typer.Option("--max-frames", min=1, help="Most frames per video \\[default: 100000].")
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option("--max-bytes", min=1, help="Most bytes per read \\[default: 2 GiB].")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object to stdout.")
    ] = False,
) -> None:
    """Check every file the models will read, for every split, and report all problems at once.

    Exit status 2 on any error (warnings alone exit 0). Width mismatches print the --config fix.
    """
    from prvr_cli.train import parse_overrides
    from prvr_sdk.data.check import check_collection

    try:
        configs = check_configs(dataset, model, parse_overrides(config or []))
        report = check_collection(dataset, data_root, configs, deep=deep, max_frames=max_frames,
                                  max_bytes=max_bytes)
    except PrvrError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, Console())
    if not report.ok:
        raise typer.Exit(code=2)


from prvr_cli import data_annotations  # noqa: E402

app.command(name="annotations")(data_annotations.annotations)
