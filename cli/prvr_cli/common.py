"""Helpers the runtime commands share: error exit, metadata files, opening a Retriever, atomic text output."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from prvr_sdk.errors import InvalidInputError, PrvrError, exit_code_for
from prvr_sdk.fsutil import atomic_write

err = Console(stderr=True)


def print_error(exc: BaseException) -> None:
    """Print ``error: …`` on stderr, the message escaped: paths and user text may hold ``[brackets]`` that
    rich would otherwise take for markup (and drop, or fail on)."""
    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)


def fail(exc: PrvrError) -> NoReturn:
    """Print ``error: …`` on stderr and exit with the error's documented code (the one error exit)."""
    print_error(exc)
    raise typer.Exit(code=exit_code_for(exc))


def read_text_file(path: Path, flag: str, max_bytes: int | None = None) -> str:
    """A user's UTF-8 text file, size-checked first (``prvr_sdk.limits``); a bad byte is reported with its
    line number and the CLI flag that named the file."""
    from prvr_sdk.limits import check_text_file

    if not path.is_file():
        raise InvalidInputError(f"{flag} {path}: file not found")
    try:
        check_text_file(path, f"the {flag} file", max_bytes)
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{flag} {path}: cannot read ({exc.strerror or exc})") from None
    except InvalidInputError as exc:
        raise InvalidInputError(f"{flag} {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidInputError(
            f"{flag} {path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); save the file as UTF-8"
        ) from None


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidInputError(f"{where}: JSON nested too deeply to parse") from None


def read_metadata(path: Path | None, max_bytes: int | None = None) -> dict[str, dict[str, Any]]:
    """``video_id -> metadata`` from a JSON object ``{id: {...}}`` or JSON lines each with ``"video_id"``.

    Raises:
        InvalidInputError: missing, too large, not UTF-8 or not JSON (messages give the line), or not of
            either shape.
    """
    if path is None:
        return {}
    text = read_text_file(path, "--metadata", max_bytes)
    if path.suffix == ".jsonl":
        rows = [
            _loads(line, f"--metadata {path}:{lineno}")
            for lineno, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
    else:
        value = _loads(text, f"--metadata {path}")
        if isinstance(value, dict):
            bad = [k for k, v in value.items() if not isinstance(v, dict)]
            if bad:
                raise InvalidInputError(f"--metadata {path}: the value of {bad[0]!r} is not an object")
            return value
        if not isinstance(value, list):
            raise InvalidInputError(f"--metadata {path}: expected a JSON object or a list of objects")
        rows = value
    out = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("video_id"), str):
            raise InvalidInputError(f"--metadata {path}: entry {i} is not an object with a 'video_id' string")
        out[row["video_id"]] = {k: v for k, v in row.items() if k != "video_id"}
    return out


def open_retriever(
    bundle: Path, backend: str, device: str, trusted_keys: list[Path] | None = None, precision: str = "fp32"
):
    """The bundle's Retriever; with ``--trusted-key`` given, only if one of those keys signed it.
    ``precision`` (``--precision``): which graphs run; fp16/int8 need ``prvr calibrate`` first."""
    from prvr_sdk import Retriever

    retriever = Retriever.from_bundle(
        bundle, backend=backend, device=device, precision=precision, trusted_keys=trusted_keys or None
    )
    shown = "" if precision == "fp32" else f", {precision}"
    err.print(
        f"{retriever.model_name}: {retriever.choice.backend} on {retriever.choice.device}{shown} "
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


def check_out(path: Path | str, flag: str = "--out", dir_ok: bool = False) -> None:
    """Fail fast, before hours of work, when ``path`` cannot be written: a folder where a file belongs
    (unless ``dir_ok``), a parent that is a file, or a nearest existing folder that is not writable."""
    path = Path(path)
    if path.is_dir():
        if not dir_ok:
            raise InvalidInputError(f"{flag} {path}: is a directory; expected a file path")
        path = path / "x"  # the file will go inside
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidInputError(f"{flag} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{flag} {path}: cannot write in {parent} (permission denied)")


def out_error(path: Path | str, exc: OSError, flag: str = "--out") -> InvalidInputError:
    """An ``OSError`` from writing ``flag``'s path as the CLI's bad-input error (exit 2)."""
    return InvalidInputError(f"{flag} {path}: cannot write ({exc.strerror or exc})")


def write_lines_atomic(path: Path, lines: Iterable[str], flag: str = "--out") -> None:
    """Write text lines to ``path`` atomically (``prvr_sdk.fsutil.atomic_write``), streaming them.

    Raises:
        InvalidInputError: the file cannot be written (the message names ``flag``).
    """

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")

    try:
        atomic_write(path, write)
    except OSError as exc:
        raise out_error(path, exc, flag) from None
