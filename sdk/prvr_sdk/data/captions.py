"""Caption and metadata readers of the PRVR layouts (docs/models.md §1.2–§1.3), plus the feature readers.

Every reader validates what it reads and raises a ``prvr_sdk.errors`` class whose message names the file
(and the video or caption id) and the problem: a missing file, a size that disagrees with ``shape.txt``, a
frame id absent from ``id.txt``, a wrong feature width, an empty video, NaN or Inf values.

``video2frames.txt`` is a Python dict literal; upstream code ``eval``s it. Here it is parsed with
``ast.literal_eval``, which accepts literals only, so a file holding code is rejected and never run.
hdf5 files are opened lazily and reopened in a forked DataLoader worker (h5py handles do not survive fork).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from prvr_sdk.errors import InvalidInputError
from prvr_sdk.limits import check_text_file
from prvr_sdk.sources import BigFile, BigFileVideos, H5Features, read_video2frames, require_file

__all__ = [
    "BigFile",
    "BigFileVideos",
    "Caption",
    "CaptionIssue",
    "H5Features",
    "read_captions",
    "read_meta",
    "read_video2frames",
    "scan_captions",
    "video_id_of",
]


# --- caption files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caption:
    cap_id: str
    video_id: str
    text: str


def video_id_of(cap_id: str) -> str:
    """The video id of a caption id: the part before the first ``#`` (the whole id when there is none)."""
    return cap_id.split("#", 1)[0]


@dataclass(frozen=True)
class CaptionIssue:
    """One bad line of a caption file: ``kind`` is ``"utf8"``, ``"no_text"``, ``"duplicate"`` or ``"empty"``
    (the file holds no captions; ``line`` 0)."""

    line: int
    kind: str
    detail: str


def scan_captions(
    path: str | os.PathLike, max_bytes: int | None = None
) -> tuple[list[Caption], list[CaptionIssue]]:
    """Every good caption of a file and every bad line, without stopping at the first (``prvr data check``).

    One ``<cap_id> <text>`` per line, split at the first space; blank lines are skipped; a line is decoded
    on its own, so a bad byte is reported with its line number.

    Raises:
        InvalidInputError: the file is missing or larger than ``max_bytes // TEXT_FACTOR``.
    """
    path = check_text_file(require_file(Path(path), "caption file"), "caption file", max_bytes)
    captions: list[Caption] = []
    issues: list[CaptionIssue] = []
    seen: set[str] = set()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                detail = f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
                issues.append(CaptionIssue(lineno, "utf8", detail))
                continue
            if not line:
                continue
            cap_id, _, text = line.partition(" ")
            text = text.strip()
            if not text:
                detail = f"expected '<cap_id> <text>', got {line[:80]!r}"
                issues.append(CaptionIssue(lineno, "no_text", detail))
                continue
            if cap_id in seen:
                issues.append(CaptionIssue(lineno, "duplicate", f"caption id {cap_id!r} appears twice"))
                continue
            seen.add(cap_id)
            captions.append(Caption(cap_id, video_id_of(cap_id), text))
    if not captions and not issues:
        issues.append(CaptionIssue(0, "empty", "caption file holds no captions"))
    return captions, issues


def read_captions(path: str | os.PathLike, max_bytes: int | None = None) -> list[Caption]:
    """The captions of a file in file order (``scan_captions``), refusing a file with any bad line.

    Args:
        path: the caption file (UTF-8).
        max_bytes: see ``prvr_sdk.limits``; the file may be at most ``max_bytes // TEXT_FACTOR`` bytes.

    Raises:
        InvalidInputError: the file is missing or too large, a line is not UTF-8 or has no text, a cap_id
            repeats, or the file is empty. Messages give ``<file>:<line>`` of the first bad line and how many
            more there are (``prvr data check`` lists them all).
    """
    captions, issues = scan_captions(path, max_bytes)
    if issues:
        first = issues[0]
        where = f"{path}:{first.line}" if first.line else f"{path}"
        more = f" ({len(issues) - 1} more bad lines; prvr data check lists them)" if len(issues) > 1 else ""
        raise InvalidInputError(f"{where}: {first.detail}{more}")
    return captions


# --- metadata (spans) ---------------------------------------------------------------------------------


def read_meta(path: str | os.PathLike, max_bytes: int | None = None) -> dict:
    """The optional metadata JSON: ``{"fps", "videos": {id: {"duration"}}, "captions": {cap_id: {"span"}}}``.

    Raises:
        InvalidInputError: the file is too large (``max_bytes // TEXT_FACTOR``), not UTF-8, not JSON (or
            nested too deeply to parse), or lacks the ``videos`` / ``captions`` objects.
    """
    path = check_text_file(require_file(Path(path), "metadata file"), "metadata file", max_bytes)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except ValueError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidInputError(f"{path}: JSON nested too deeply to parse") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("captions", {}), dict):
        raise InvalidInputError(f"{path}: expected an object with a 'captions' object")
    return meta
