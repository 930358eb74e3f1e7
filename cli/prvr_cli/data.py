"""`prvr data`: datasets. `prvr data demo --out DIR` writes the synthetic demo corpus.

Thin: parses, calls ``prvr_export.data.write_demo_corpus`` (imported inside the command, so the root app
starts without torch), shows progress on stderr and prints the summary (a table, or JSON with --json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(name="data", help="Datasets: generate the synthetic demo corpus.", no_args_is_help=True)


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
