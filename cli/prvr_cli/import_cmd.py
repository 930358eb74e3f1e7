"""`prvr import`: a checkpoint trained with the authors' official code -> a prvr run folder.

The run folder is what `prvr train` writes (best.pt, config.json), so `prvr export --checkpoint runs/NAME`
and `prvr eval --checkpoint runs/NAME --data-root DATA` take it as they take a trained run. The file is read
without running any code from it (prvr_export.official.loader); names are mapped strictly
(docs/models.md §9, "Import a checkpoint trained with the official code"). Notes and the summary go to
stderr; --json prints the summary to stdout. Bad input exits with code 2 and leaves --out as it was.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from prvr_cli.common import fail
from prvr_sdk.errors import InvalidInputError, PrvrError

MODELS = ("mamfusion", "amdnet", "muse")


def import_official(
    model: Annotated[
        str, typer.Option("--model", help=f"Which official code trained it: {', '.join(MODELS)}.")
    ],
    official: Annotated[
        Path,
        typer.Option("--official", help="The official checkpoint (MamFusion/AMDNet .ckpt, MUSE state dict)."),
    ],
    dataset: Annotated[
        str,
        typer.Option("--dataset", help="Collection whose config fills what the file does not fix "
                     "(tvr, activitynet, charades, msrvtt, demo)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder to write, e.g. runs/NAME.")],
    config: Annotated[
        list[str] | None,
        typer.Option("--config", help="Set a config field, key=value (JSON value); wins over the file; "
                     "repeatable."),
    ] = None,
    allow_random_pyramid: Annotated[
        bool,
        typer.Option("--random-pyramid", help="MUSE: accept a file without pyramid weights (upstream "
                     "never saves them) and draw them from the config's seed."),
    ] = False,
    max_gib: Annotated[
        float, typer.Option("--max-gib", min=0.0, help="Refuse checkpoint files larger than this (GiB).")
    ] = 4.0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run folder at --out (only a run folder).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the import summary as JSON.")] = False,
) -> None:
    """Import a MamFusion / AMDNet / MUSE checkpoint trained with the authors' code, for `prvr export`."""
    err = Console(stderr=True)
    try:
        if model not in MODELS:
            raise InvalidInputError(f"--model {model!r}: expected one of {', '.join(MODELS)}")
        from prvr_cli.train import parse_overrides

        overrides = parse_overrides(config or [])
        from prvr_export.official import import_official as run_import

        summary = run_import(
            model,
            official,
            dataset,
            out,
            overrides,
            overwrite=overwrite,
            allow_random_pyramid=allow_random_pyramid,
            max_bytes=int(max_gib * 1024**3),
        )
    except PrvrError as exc:
        fail(exc)
    for note in summary["notes"]:
        err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    err.print(
        f"imported {model} ({summary['tensors']} official tensors, {summary['layout']} layout) from "
        f"{official} into {out}; export it with: prvr export --model {model} --checkpoint {out}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
