"""The exact index on disk: immutable versions, a ``CURRENT`` pointer, and crash-safe commits.

Layout of an index directory::

    my-index/
      CURRENT                 the live version's name, e.g. "v000004" (one line)
      LOCK                    present while a writer works on the index (locking.py)
      v000004/                a committed version; never modified once CURRENT may name it
        manifest.json         format, dim, scoring, model, bundle_sha256, counts, segments + file sizes/sha256
        seg-000001/           a segment: videos added together (immutable)
          clips.f16.npy       float16 [N_clips, D], C order, memory-mapped at load
          offsets.npy         int64 [N_videos + 1]; video i owns clip rows offsets[i]:offsets[i+1]
          spans.npy           float64 [N_clips, 2], seconds (NaN = unknown)
          video_vecs.f16.npy  float16 [N_videos, D] (scoring "weighted" and "video" only)
          ids.json            the N_videos ids, in row order
          metadata.jsonl      one JSON object per video, in row order
        seg-000007/ ...
      .tmp-v000005-1234/      a save in progress (or left by a killed one; the next save removes it)

A save (``ExactIndex.save``), holding the writer lock: writes new and compacted segments into a fresh
``.tmp-*`` directory; hard-links the files of unchanged segments into it (a copy where the filesystem
cannot link: then the save costs the whole index's bytes, logged once); writes ``manifest.json``; fsyncs
the files and the directory; renames it to ``vNNNNNN``; writes ``CURRENT.tmp``, fsyncs it and
``os.replace``s it over ``CURRENT`` (the commit point); then deletes the other versions. Killed at any
point before the replace, the directory still holds the previous ``CURRENT`` and its complete version;
after it, the new one. Readers holding mapped files of a deleted version keep valid mappings (POSIX
unlink semantics), and ``open_current`` retries when a version disappears under it.

Test hooks (used by ``tests/sdk/index/test_crash.py``, inert otherwise): ``PRVR_INDEX_CRASH_AT=<stage>``
makes the saving process SIGKILL itself at that stage; ``PRVR_INDEX_SAVE_PAUSE=<seconds>`` sleeps at
every stage, so a test can kill the writer from outside. Stages, in order: ``segment-file`` (after each
file of a new segment), ``segment``, ``linked``, ``manifest``, ``renamed``, ``pointer`` (``CURRENT.tmp``
written, not yet replaced), ``committed``, ``gc``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from prvr_sdk.bundle import file_digest
from prvr_sdk.errors import IndexFormatError  # defined there: one exit-code table

__all__ = [
    "CURRENT",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "IndexFormatError",
    "SegmentFiles",
    "commit",
    "crash_point",
    "open_current",
    "read_current",
]

log = logging.getLogger(__name__)

FORMAT = "prvr-index"
FORMAT_VERSION = 1
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
CLIPS, OFFSETS, SPANS, VECTORS = "clips.f16.npy", "offsets.npy", "spans.npy", "video_vecs.f16.npy"
IDS, METADATA = "ids.json", "metadata.jsonl"
_VERSION_RE = re.compile(r"^v(\d{6,})$")
_TMP_PREFIX = ".tmp-"
_CRASH_ENV, _PAUSE_ENV = "PRVR_INDEX_CRASH_AT", "PRVR_INDEX_SAVE_PAUSE"
_COPY_WARNED: set[str] = set()


def crash_point(stage: str) -> None:
    """Test hook: die (SIGKILL) or pause here when the environment asks; see the module docstring."""
    pause = os.environ.get(_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))
    if os.environ.get(_CRASH_ENV) == stage:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms (Windows); renames stay atomic
        return
    try:
        os.fsync(fd)
    except OSError:  # nor fsynced on some filesystems
        pass
    finally:
        os.close(fd)


def version_number(name: str) -> int | None:
    m = _VERSION_RE.match(name)
    return int(m.group(1)) if m else None


def read_current(root: Path) -> str | None:
    """The version ``CURRENT`` names, or None when the directory holds no committed index."""
    try:
        name = (root / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    if version_number(name) is None:
        raise IndexFormatError(f"{root / CURRENT} holds {name!r}, not a version name like 'v000001'")
    return name


def _read_manifest(vdir: Path) -> dict[str, Any]:
    path = vdir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IndexFormatError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a prvr index manifest (format {FORMAT!r} expected)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has format version {version!r}; this prvr-sdk reads up to "
            f"{FORMAT_VERSION} (upgrade prvr-sdk)"
        )
    return manifest


def open_current(root: Path, attempts: int = 5) -> tuple[str, dict[str, Any]]:
    """The live version's name and manifest, retrying when a concurrent save replaces it meanwhile.

    Raises:
        IndexFormatError: no index in ``root``, or the version ``CURRENT`` names is missing.
    """
    if not root.is_dir():
        raise IndexFormatError(f"index directory {root} does not exist")
    for _ in range(attempts):
        name = read_current(root)
        if name is None:
            raise IndexFormatError(
                f"{root} holds no index ({CURRENT} is missing); build one with ExactIndex(...).save(path)"
            )
        try:
            return name, _read_manifest(root / name)
        except FileNotFoundError:
            if read_current(root) != name:
                continue  # a writer committed and collected the old version while we read
            raise IndexFormatError(
                f"{root / CURRENT} names {name}, but {root / name / MANIFEST} is missing "
                "(files deleted by hand?)"
            ) from None
    raise IndexFormatError(f"{root} kept changing while being opened ({attempts} attempts)")


class SegmentFiles:
    """Reads and writes the files of one segment directory (see the module docstring)."""

    @staticmethod
    def write(
        directory: Path,
        *,
        dim: int,
        ids: list[str],
        metadata_lines: Iterable[bytes],
        offsets: np.ndarray | None,
        clip_chunks: Iterable[np.ndarray] | None,
        spans: np.ndarray | None,
        vector_chunks: Iterable[np.ndarray] | None,
        fsync: bool,
    ) -> dict[str, dict[str, Any]]:
        """Write a segment; returns its manifest ``files`` entry (bytes and sha256 of every file)."""
        directory.mkdir()
        num_videos = len(ids)
        written = []
        if offsets is not None:
            assert clip_chunks is not None and spans is not None
            num_clips = int(offsets[-1])
            _write_rows(directory / CLIPS, clip_chunks, (num_clips, dim))
            np.save(directory / OFFSETS, np.ascontiguousarray(offsets, dtype=np.int64))
            np.save(directory / SPANS, np.ascontiguousarray(spans, dtype=np.float64))
            written += [CLIPS, OFFSETS, SPANS]
            crash_point("segment-file")
        if vector_chunks is not None:
            _write_rows(directory / VECTORS, vector_chunks, (num_videos, dim))
            written.append(VECTORS)
            crash_point("segment-file")
        (directory / IDS).write_text(json.dumps(ids, ensure_ascii=False))
        with open(directory / METADATA, "wb") as f:
            for line in metadata_lines:
                f.write(line)
                f.write(b"\n")
        written += [IDS, METADATA]
        crash_point("segment-file")
        files = {}
        for name in written:
            path = directory / name
            if fsync:
                _fsync_path(path)
            files[name] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
        return files

    @staticmethod
    def link(src: Path, dst: Path, files: dict[str, dict[str, Any]]) -> None:
        """Hard-link (or, across filesystems, copy) an unchanged segment's files into ``dst``."""
        dst.mkdir()
        for name in files:
            try:
                os.link(src / name, dst / name)
            except OSError:
                key = str(dst.parent.parent)
                if key not in _COPY_WARNED:
                    _COPY_WARNED.add(key)
                    log.info(
                        "cannot hard-link index files into %s; copying them (saves cost the whole "
                        "index's bytes on this filesystem)",
                        key,
                    )
                shutil.copyfile(src / name, dst / name)

    @staticmethod
    def check(directory: Path, files: dict[str, Any], verify: bool) -> None:
        """Every listed file exists with its recorded size (and sha256 when ``verify``).

        Raises:
            IndexFormatError: a file is missing, truncated or (``verify``) corrupted.
        """
        for name, entry in files.items():
            path = directory / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise IndexFormatError(f"index file {path} is missing (listed in the manifest)") from None
            if size != entry.get("bytes"):
                raise IndexFormatError(
                    f"index file {path}: {size} bytes, manifest says {entry.get('bytes')} "
                    "(truncated or replaced)"
                )
            if verify and file_digest(path) != entry.get("sha256"):
                raise IndexFormatError(f"index file {path}: sha256 differs from the manifest (corrupted)")

    @staticmethod
    def load_array(path: Path, mmap: bool) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as exc:
            raise IndexFormatError(f"index file {path} is not a valid .npy file ({exc})") from None


def _write_rows(path: Path, chunks: Iterable[np.ndarray], shape: tuple[int, int]) -> None:
    """Stream row chunks into a float16 .npy file without holding the whole matrix in memory."""
    if shape[0] == 0:
        np.save(path, np.zeros(shape, dtype=np.float16))
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    row = 0
    for chunk in chunks:
        out[row : row + len(chunk)] = chunk
        row += len(chunk)
    assert row == shape[0], (row, shape)
    out.flush()
    del out


def new_version_name(root: Path) -> str:
    numbers = [version_number(p.name) for p in root.iterdir()] if root.is_dir() else []
    current = read_current(root)
    if current is not None:
        numbers.append(version_number(current))
    return f"v{max([n for n in numbers if n is not None], default=0) + 1:06d}"


def temp_dir(root: Path, name: str) -> Path:
    return root / f"{_TMP_PREFIX}{name}-{os.getpid()}"


def remove_leftovers(root: Path) -> None:
    """Delete temp dirs of killed saves. Only call while holding the writer lock."""
    for path in root.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (root / f"{CURRENT}.tmp").unlink()


def is_index_dir_or_empty(root: Path) -> bool:
    """Whether ``root`` may receive a save: absent, empty, or holding only index files."""
    if not root.exists():
        return True
    if not root.is_dir():
        return False
    for p in root.iterdir():
        name = p.name
        if name in (CURRENT, f"{CURRENT}.tmp", "LOCK", "LOCK.break") or name.startswith(_TMP_PREFIX):
            continue
        if version_number(name) is not None and p.is_dir():
            continue
        return False
    return True


def commit(root: Path, tmp: Path, name: str, manifest: dict[str, Any], fsync: bool) -> None:
    """Seal ``tmp`` as version ``name`` and point ``CURRENT`` at it; then delete the other versions."""
    path = tmp / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if fsync:
        _fsync_path(path)
        for seg in tmp.iterdir():
            if seg.is_dir():
                _fsync_path(seg)
        _fsync_path(tmp)
    crash_point("manifest")
    final = root / name
    os.rename(tmp, final)
    if fsync:
        _fsync_path(root)
    crash_point("renamed")
    pointer = root / f"{CURRENT}.tmp"
    with open(pointer, "w") as f:
        f.write(name + "\n")
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    crash_point("pointer")
    os.replace(pointer, root / CURRENT)
    if fsync:
        _fsync_path(root)
    crash_point("committed")
    for p in root.iterdir():
        if p.name != name and version_number(p.name) is not None and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    crash_point("gc")


def iter_chunks(array: np.ndarray, rows: np.ndarray | None, chunk: int) -> Iterator[np.ndarray]:
    """Yield ``array[rows]`` (every row when ``rows`` is None) in pieces of at most ``chunk`` rows.

    Bounded memory for memory-mapped inputs: only one piece is ever read at a time.
    """
    if rows is None:
        for start in range(0, len(array), chunk):
            yield np.asarray(array[start : start + chunk])
        return
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        if part[-1] - part[0] + 1 == len(part):  # contiguous (rows are increasing): a slice reads less
            yield np.asarray(array[part[0] : part[-1] + 1])
        else:
            yield array[part]
