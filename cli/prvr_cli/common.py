"""Helpers the runtime commands share: error exit, metadata files, opening a Retriever, atomic text output."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from prvr_sdk.errors import InvalidInputError, PrvrError, exit_code_for

err = Console(stderr=True)


def fail(exc: PrvrError) -> NoReturn:
    """Print ``error: …`` on stderr and exit with the error's documented code."""
    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=exit_code_for(exc))


def read_metadata(path: Path | None) -> dict[str, dict[str, Any]]:
    """``video_id -> metadata`` from a JSON object ``{id: {...}}`` or JSON lines each with ``"video_id"``."""
    if path is None:
        return {}
    if not path.is_file():
        raise InvalidInputError(f"--metadata {path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            value = json.loads(text)
            if isinstance(value, dict):
                bad = [k for k, v in value.items() if not isinstance(v, dict)]
                if bad:
                    raise InvalidInputError(f"--metadata {path}: the value of {bad[0]!r} is not an object")
                return value
            rows = value
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"--metadata {path}: not valid JSON ({exc})") from None
    out = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("video_id"), str):
            raise InvalidInputError(f"--metadata {path}: entry {i} is not an object with a 'video_id' string")
        out[row["video_id"]] = {k: v for k, v in row.items() if k != "video_id"}
    return out


def open_retriever(bundle: Path, backend: str, device: str):
    from prvr_sdk import Retriever

    retriever = Retriever.from_bundle(bundle, backend=backend, device=device)
    err.print(
        f"{retriever.model_name}: {retriever.choice.backend} on {retriever.choice.device} "
        f"({retriever.choice.reason})",
        highlight=False,
        markup=False,
    )
    return retriever


def recorded_bundle(index: Path) -> Path:
    """The bundle path an index recorded at build time (``--bundle`` overrides it)."""
    from prvr_sdk.index import ExactIndex

    loaded = ExactIndex.load(index)
    recorded = loaded.bundle_path
    loaded.close()
    if not recorded:
        raise InvalidInputError(f"index {index} records no bundle path; pass --bundle")
    if not Path(recorded).is_dir():
        raise InvalidInputError(f"index {index} was built with bundle {recorded}, which no longer exists; "
                                "pass --bundle")
    return Path(recorded)


def write_lines_atomic(path: Path, lines: Iterable[str]) -> None:
    """Write text lines to a temp file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
