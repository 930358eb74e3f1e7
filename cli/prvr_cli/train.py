"""`prvr train`: train a model on a PRVR collection, keep the best epoch, resume exactly.

Runs live under ``runs/`` by default (``runs/<model>-<dataset>-<YYYYmmdd-HHMMSS>``); ``prvr export`` and
``prvr eval`` look for the newest ``best.pt`` there. Progress and one metrics line per epoch go to stderr;
``--json`` prints the best epoch's metrics to stdout at the end. Data-parallel: run the same command
under ``torchrun --nproc_per_node=N "$(which prvr)" train ...`` (see ``prvr_export.train.distributed``).

Before anything is built, ``prvr data check``'s check runs on the files the model will read (every split, so
a test video missing from ``video2frames.txt`` stops the run now, not after the last epoch); errors exit 2
with the table on stderr, warnings are shown and training goes on. ``--skip-check`` opts out.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from prvr_cli.common import fail, read_text_file
from prvr_sdk.errors import InvalidInputError, PrvrError

RUNS_DIR = Path("runs")
MODELS = ("mamfusion", "amdnet", "muse")
DATASETS = ("tvr", "activitynet", "charades", "msrvtt", "demo")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "betas=[0.9,0.98]", "schedule=warmup_cosine"]`` -> a dict; values are JSON when they
    parse as JSON, else kept as strings.

    Raises:
        InvalidInputError: an item without ``=`` or with an empty key.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInputError(f"--config {item!r}: expected key=value (e.g. --config lr=1e-4)")
        try:
            overrides[key] = json.loads(raw)
        except ValueError:
            overrides[key] = raw
    return overrides


def default_out_dir(model: str, dataset: str) -> Path:
    """``runs/<model>-<dataset>-<YYYYmmdd-HHMMSS>`` (local time)."""
    return RUNS_DIR / f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


class _StderrHandler(logging.Handler):
    """Log records as plain lines on stderr.

    Writes go to ``sys.stderr`` as it is at emit time: while rich's progress bar is live that is rich's proxy,
    which prints the line above the bar (a second rich Console would bypass the proxy and garble the bar).
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prefix = "warning: " if record.levelno >= logging.WARNING else ""
            sys.stderr.write(f"{prefix}{record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # a logging handler must never raise
            self.handleError(record)


def attach_stderr_logging(name: str = "prvr_export") -> tuple[logging.Handler, int]:
    """Route INFO logs of logger ``name`` to stderr; returns what ``detach_logging`` needs."""
    log = logging.getLogger(name)
    handler = _StderrHandler()
    log.addHandler(handler)
    previous = log.level
    if previous == logging.NOTSET or previous > logging.INFO:
        log.setLevel(logging.INFO)
    return handler, previous


def detach_logging(attached: tuple[logging.Handler, int], name: str = "prvr_export") -> None:
    log = logging.getLogger(name)
    log.removeHandler(attached[0])
    log.setLevel(attached[1])


def run_data_check(
    model: str, dataset: str, data_root: Path, overrides: dict[str, Any], saved: Path | None,
    progress: bool, console: Console,
) -> None:
    """``prvr data check`` for the config this run will use (``saved``: a resumed run's ``config.json``).

    Raises:
        InvalidInputError: the check found errors (the table went to ``console`` first).
    """
    from prvr_cli.data import check_configs, print_report
    from prvr_sdk.data.check import check_collection, check_error_message

    if saved is not None and saved.is_file():
        try:
            overrides = dict(json.loads(read_text_file(saved, "--resume"))["config"])
        except (ValueError, KeyError, TypeError):
            pass  # the training loop reads the checkpoint and says what is wrong with it
    configs = check_configs(dataset, [model], overrides)
    report = check_collection(dataset, data_root, configs, show_progress=progress and console.is_terminal)
    if os.environ.get("RANK", "0") != "0":  # torchrun: every rank checks (and stops) alike, rank 0 prints
        console = Console(stderr=True, quiet=True)
    if report.problems:
        print_report(report, console)
    if not report.ok:
        raise InvalidInputError(
            check_error_message(report) + "; fix the data (or the --config shown), or pass --skip-check"
        )


def train(
    model: Annotated[str, typer.Option("--model", help=f"Model: {', '.join(MODELS)}.")],
    dataset: Annotated[str, typer.Option("--dataset", help=f"Collection: {', '.join(DATASETS)}.")],
    data_root: Annotated[
        Path, typer.Option("--data-root", help="Folder holding <dataset>/ (TextData, FeatureData).")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Run directory \\[default: runs/<model>-<dataset>-<YYYYmmdd-HHMMSS>]."),
    ] = None,
    config: Annotated[
        list[str] | None,
        typer.Option("--config", help="Override a config field, key=value (JSON value); repeatable."),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Shortcut for --config n_epoch=N.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto.")] = "auto",
    num_workers: Annotated[
        int, typer.Option("--num-workers", min=0, help="DataLoader worker processes.")
    ] = 0,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar on stderr.")
    ] = True,
    skip_check: Annotated[
        bool, typer.Option("--skip-check", help="Start without checking the data files (prvr data check).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the best epoch's metrics as JSON to stdout.")
    ] = False,
) -> None:
    """Train a model; write last.pt, best.pt, config.json, metrics.jsonl and best_metrics.json to --out."""
    err = Console(stderr=True)
    try:
        if model not in MODELS:
            raise InvalidInputError(f"--model {model!r}: expected one of {', '.join(MODELS)}")
        if dataset not in DATASETS:
            raise InvalidInputError(f"--dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
        if not data_root.is_dir():
            raise InvalidInputError(f"--data-root {data_root}: folder not found")
        overrides = parse_overrides(config or [])
        if epochs is not None:
            overrides["n_epoch"] = epochs
        if out is None:
            if resume:
                raise InvalidInputError("--resume needs --out (the run directory to continue)")
            out = default_out_dir(model, dataset)
        if not skip_check:
            saved = out / "config.json" if resume else None
            run_data_check(model, dataset, data_root, overrides, saved, progress, err)
        from prvr_export.train.loop import train as run_training

        attached = attach_stderr_logging()
        try:
            summary = run_training(
                model,
                dataset,
                data_root,
                out,
                overrides=overrides or None,
                resume=resume,
                progress=progress,
                device=device,
                num_workers=num_workers,
            )
        finally:
            detach_logging(attached)
    except PrvrError as exc:
        fail(exc)
    if not summary:  # a non-zero rank of a distributed run
        raise typer.Exit(code=0)
    err.print(
        f"best {summary['selection']} {summary['score']:.2f} at epoch {summary['epoch']} "
        f"({summary['split']}), {summary['epochs_run']} epochs in {summary['train_time_s']:.1f}s; "
        f"run in {escape(str(out))}",
        highlight=False,
        soft_wrap=True,
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
