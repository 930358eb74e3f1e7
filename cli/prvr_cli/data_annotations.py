"""`prvr data annotations`: the public moment annotations -> ``TextData/<collection>_meta.json``.

Thin: parses, calls ``prvr_sdk.data.annotations.convert_annotations`` (imported inside the command; no
torch), prints the match report (a table, or JSON with --json). Moment metrics in ``prvr eval`` read the
file it writes (docs/models.md §1.6).
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

FROM_HELP = (
    "Annotation release file; repeatable. tvr: tvr_{train,val,test_public}_release.jsonl; activitynet: "
    "train.json, val_1.json, val_2.json; charades: charades_sta_{train,test}.txt, plus "
    "Charades_v1_{train,test}.csv for the video durations."
)


def annotations(
    dataset: Annotated[str, typer.Option("--dataset", help="tvr, activitynet or charades.")],
    sources: Annotated[list[Path], typer.Option("--from", help=FROM_HELP, dir_okay=False)],
    data_root: Annotated[
        Path, typer.Option("--data-root", help="Folder holding <dataset>/TextData/ with the caption files.")
    ],
    fps: Annotated[
        float | None,
        typer.Option("--fps", help="Video feature rows per second \\[default: TVR 1/1.5; else estimated "
                     "from the BigFile's video2frames.txt and the durations]."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing <dataset>_meta.json.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Match and report only; write nothing.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object to stdout.")
    ] = False,
) -> None:
    """Convert the public moment annotations into the collection's metadata file (spans for moment metrics).

    Each caption id of TextData/<dataset>{train,val,test}.caption.txt is matched to an annotation of its
    video: by caption text (case, whitespace and a trailing period ignored), else by the caption id's number
    as position in the video, else as the one caption and annotation left in it. Captions that match none
    are listed, never guessed.
    """
    from prvr_sdk.data.annotations import convert_annotations

    try:
        if not data_root.is_dir():
            from prvr_sdk.errors import InvalidInputError

            raise InvalidInputError(f"--data-root {data_root}: folder not found")
        result = convert_annotations(
            dataset, list(sources), data_root, fps=fps, overwrite=overwrite, write=not dry_run
        )
    except PrvrError as exc:
        fail(exc)
    report = result.to_dict()
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    out = Console()
    out.print(_split_table(report))
    for line in _report_lines(report):
        out.print(escape(line), highlight=False, soft_wrap=True)


def _split_table(report: dict) -> Table:
    verb = "wrote" if report["written"] else "would write (dry run)"
    table = Table(title=f"{report['dataset']} annotations: {verb} {report['path']}", title_justify="left")
    for name in ("split", "captions", "by text", "by position", "pair left", "unmatched", "no span"):
        table.add_column(name, justify="left" if name == "split" else "right")
    keys = ("captions", "text", "position", "remaining", "unmatched", "no_span")
    for split, counts in report["splits"].items():
        table.add_row(split, *(str(counts[k]) for k in keys))
    table.add_row("all", *(str(report["counts"][k]) for k in keys), style="bold")
    return table


def _report_lines(report: dict) -> list[str]:
    fps = "unknown" if report["fps"] is None else f"{report['fps']:.6g}"
    d = report["durations"]
    lines = [
        f"fps: {fps} ({report['fps_source']}); durations: {d['annotations']} from the annotations, "
        f"{d['video2frames']} from video2frames.txt, {d['missing']} missing",
    ]
    if report["missing_splits"]:
        lines.append(f"no caption file for: {', '.join(report['missing_splits'])}")
    if report["position_examples"]:
        lines.append("matched by position or as the pair left (texts differ), first examples:")
        lines += [f"  {e['cap_id']} [{e['match']}]: {e['caption']!r} <- {e['annotation']!r} ({e['where']})"
                  for e in report["position_examples"]]
    if report["unmatched"]:
        lines.append(f"{report['unmatched']} captions not matched, first examples:")
        lines += [f"  [{e['split']}] {e['cap_id']}: {e['reason']}" for e in report["unmatched_examples"]]
    if report["no_span_examples"]:
        lines.append(f"{report['counts']['no_span']} matched captions have no usable span, first examples:")
        lines += [f"  {e}" for e in report["no_span_examples"]]
    if report["problems"]:
        lines.append(f"{report['problems']} annotation problems, first examples:")
        lines += [f"  {e}" for e in report["problem_examples"]]
    lines += [f"note: {n}" for n in report["notes"]]
    return lines
