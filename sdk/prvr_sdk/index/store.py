"""The exact index on disk: immutable versions, a ``CURRENT`` pointer, and crash-safe commits.

Layout of an index directory::

    my-index/
      CURRENT                 the live version's name, e.g. "v000004" (one line)
      LOCK                    present while a writer works on the index (locking.py)
      v000004/                a committed version; never modified once CURRENT may name it
        manifest.json         format, dim, scoring, model, bundle_sha256, counts, segments + file
                              sizes/sha256, and ``manifest_sha256`` (its own digest)
        seg-000001/           a segment: videos added together (immutable)
          clips.f16.npy       float16 [N_clips, D], C order, memory-mapped at load
          offsets.npy         int64 [N_videos + 1]; video i owns clip rows offsets[i]:offsets[i+1]
          spans.npy           float64 [N_clips, 2], seconds (NaN = unknown)
          video_vecs.f16.npy  float16 [N_videos, D]: the video_emb rows (scoring "weighted" and "video"; the
                              file keeps its first name so that existing indexes load)
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

An index directory is untrusted input (it may come from elsewhere): every name read from a manifest is
checked against the fixed vocabulary below (``seg-NNNNNN``, the six file names) and must resolve inside
the version directory before anything is opened, linked or copied; text files are size-capped and
decoded strictly; ``.npy`` headers are checked against the file's size before any array is read; and a
save creates every file exclusively (``O_EXCL``), so it never writes through a planted file or link.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from prvr_sdk.bundle import file_digest
from prvr_sdk.errors import IndexFormatError  # defined there: one exit-code table
from prvr_sdk.limits import read_npy_header

__all__ = [
    "CURRENT",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "IndexFormatError",
    "SegmentFiles",
    "commit",
    "manifest_digest",
    "open_current",
    "read_current",
    "read_json",
    "segment_dir",
]

log = logging.getLogger(__name__)

FORMAT = "prvr-index"
FORMAT_VERSION = 1
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
CLIPS, OFFSETS, SPANS, VIDEO_EMB = "clips.f16.npy", "offsets.npy", "spans.npy", "video_vecs.f16.npy"
IDS, METADATA = "ids.json", "metadata.jsonl"
SEGMENT_FILES = frozenset({CLIPS, OFFSETS, SPANS, VIDEO_EMB, IDS, METADATA})
SELF_DIGEST = "manifest_sha256"
# Expected dtype and rank of each array file; anything else in a header is refused before reading.
NPY_LAYOUT = {CLIPS: ("<f2", 2), OFFSETS: ("<i8", 1), SPANS: ("<f8", 2), VIDEO_EMB: ("<f2", 2)}
_VERSION_RE = re.compile(r"^v(\d{6,})$")
_SEGMENT_RE = re.compile(r"^seg-\d{6,}$")
_TMP_PREFIX = ".tmp-"
_MAX_MANIFEST_BYTES = 64 << 20  # a manifest lists segments, not videos: megabytes at most
_MAX_CURRENT_BYTES = 64
_COPY_WARNED: set[str] = set()


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


# --- untrusted names and text ----------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError, RuntimeError):  # outside, or a symlink loop
        return False
    return True


def segment_dir(vdir: Path, name: object) -> Path:
    """The directory of segment ``name`` in version ``vdir``, after checking the name is one of ours.

    Raises:
        IndexFormatError: ``name`` is not ``seg-NNNNNN`` (an absolute path, ``..``, anything else), or
            the directory is a link that leaves the version.
    """
    if not isinstance(name, str) or not _SEGMENT_RE.match(name):
        raise IndexFormatError(
            f"{vdir / MANIFEST}: segment name {name!r:.80} is not of the form 'seg-NNNNNN' (refused: "
            "names in a manifest may not point elsewhere)"
        )
    path = vdir / name
    if path.is_symlink() or not _inside(path, vdir):
        raise IndexFormatError(f"index segment {path} is a link that leaves {vdir} (refused)")
    return path


def segment_file(directory: Path, name: object) -> Path:
    """A file of a segment, after checking its name is one of the six and it stays in the folder."""
    if not isinstance(name, str) or name not in SEGMENT_FILES:
        raise IndexFormatError(
            f"index segment {directory}: file name {name!r:.80} is not one of "
            f"{sorted(SEGMENT_FILES)} (refused)"
        )
    path = directory / name
    if path.is_symlink() or not _inside(path, directory):
        raise IndexFormatError(f"index file {path} is a link that leaves {directory} (refused)")
    return path


def read_json(path: Path, max_bytes: int) -> Any:
    """Parse a JSON file of at most ``max_bytes``; every failure is an ``IndexFormatError`` naming it."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise IndexFormatError(f"{path}: {size} bytes, more than the {max_bytes} an index file may hold")
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as exc:
        raise IndexFormatError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise IndexFormatError(f"{path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise IndexFormatError(f"{path}: JSON nested too deeply") from None
    except OSError as exc:
        raise IndexFormatError(f"{path} cannot be read ({exc.strerror or exc})") from None


def parse_metadata_line(line: bytes, path: Path, row: int) -> dict[str, Any]:
    """One ``metadata.jsonl`` line as a dict; a broken line is an ``IndexFormatError`` naming the line."""
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise IndexFormatError(f"{path}, line {row + 1}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise IndexFormatError(f"{path}, line {row + 1}: not valid JSON ({exc})") from None
    except RecursionError:
        raise IndexFormatError(f"{path}, line {row + 1}: JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise IndexFormatError(f"{path}, line {row + 1}: expected a JSON object, got {type(value).__name__}")
    return value


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own digest (catches edits and flipped bytes)."""
    body = {k: v for k, v in manifest.items() if k != SELF_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_current(root: Path) -> str | None:
    """The version ``CURRENT`` names, or None when the directory holds no committed index."""
    path = root / CURRENT
    try:
        if path.stat().st_size > _MAX_CURRENT_BYTES:
            raise IndexFormatError(f"{path} is {path.stat().st_size} bytes; it should hold one version name")
        name = path.read_bytes().decode("ascii").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise IndexFormatError(f"{path} holds non-ASCII bytes, not a version name like 'v000001'") from None
    except OSError as exc:
        raise IndexFormatError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if version_number(name) is None:
        raise IndexFormatError(f"{path} holds {name!r:.80}, not a version name like 'v000001'")
    return name


def _read_manifest(vdir: Path) -> dict[str, Any]:
    path = vdir / MANIFEST
    if vdir.is_symlink() or not _inside(vdir, vdir.parent):
        raise IndexFormatError(f"index version {vdir} is a link that leaves {vdir.parent} (refused)")
    manifest = read_json(path, _MAX_MANIFEST_BYTES)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a prvr index manifest (format {FORMAT!r} expected)")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has format version {version!r:.40}; this prvr-sdk reads versions 1 to "
            f"{FORMAT_VERSION} (upgrade prvr-sdk for newer ones)"
        )
    if SELF_DIGEST in manifest and manifest[SELF_DIGEST] != manifest_digest(manifest):
        raise IndexFormatError(f"{path} was modified after it was written (its digest does not match)")
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
                f"{root} holds no index ({CURRENT} is missing); build one with `prvr index build` or "
                "ExactIndex.save"
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


def npy_shape(path: Path, name: str) -> tuple[int, ...]:
    """Shape declared by an array file's header, after checking dtype, order and the file's exact size.

    Reads only the header, so a file that declares 10**12 elements is refused before anything is
    allocated; a file whose header and size agree can then be loaded in memory bounded by its size.
    """
    dtype_str, ndim = NPY_LAYOUT[name]
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            shape, fortran, dtype = read_npy_header(f)
            data_start = f.tell()
    except Exception as exc:  # numpy's header parser raises many kinds (ValueError, TokenError ...)
        raise IndexFormatError(f"index file {path} is not a valid .npy file ({exc})") from None
    if dtype.str != dtype_str or fortran or len(shape) != ndim:
        raise IndexFormatError(
            f"index file {path}: header says {dtype.str}{' Fortran-order' if fortran else ''} with "
            f"{len(shape)} dimensions, expected {dtype_str} with {ndim}"
        )
    expected = data_start + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if expected != size:
        raise IndexFormatError(
            f"index file {path}: header declares shape {shape} ({expected} bytes with the header), but "
            f"the file has {size} bytes (truncated or forged)"
        )
    return shape


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
        video_emb_chunks: Iterable[np.ndarray] | None,
        fsync: bool,
    ) -> dict[str, dict[str, Any]]:
        """Write a segment into a new directory; returns its manifest ``files`` entry (bytes, sha256)."""
        directory.mkdir()  # never an existing one: every file below is new
        num_videos = len(ids)
        written = []
        if offsets is not None:
            assert clip_chunks is not None and spans is not None
            num_clips = int(offsets[-1])
            _write_rows(directory / CLIPS, clip_chunks, (num_clips, dim))
            _save_new(directory / OFFSETS, np.ascontiguousarray(offsets, dtype=np.int64))
            _save_new(directory / SPANS, np.ascontiguousarray(spans, dtype=np.float64))
            written += [CLIPS, OFFSETS, SPANS]
        if video_emb_chunks is not None:
            _write_rows(directory / VIDEO_EMB, video_emb_chunks, (num_videos, dim))
            written.append(VIDEO_EMB)
        with open(directory / IDS, "x", encoding="utf-8") as f:
            f.write(json.dumps(ids, ensure_ascii=False))
        with open(directory / METADATA, "xb") as f:
            for line in metadata_lines:
                f.write(line)
                f.write(b"\n")
        written += [IDS, METADATA]
        files = {}
        for name in written:
            path = directory / name
            if fsync:
                _fsync_path(path)
            files[name] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
        return files

    @staticmethod
    def link(src: Path, dst: Path, files: dict[str, dict[str, Any]]) -> None:
        """Hard-link (or, where links are impossible, copy) an unchanged segment's files into new ``dst``."""
        dst.mkdir()
        for name in files:
            source, target = segment_file(src, name), dst / name
            try:
                os.link(source, target, follow_symlinks=False)
            except FileExistsError:
                raise IndexFormatError(f"{target} already exists; a save never overwrites a file") from None
            except FileNotFoundError:
                raise
            except OSError:  # another filesystem, or links not supported: copy into a new file
                key = str(dst.parent.parent)
                if key not in _COPY_WARNED:
                    _COPY_WARNED.add(key)
                    log.info(
                        "cannot hard-link index files into %s; copying them (saves cost the whole "
                        "index's bytes on this filesystem)",
                        key,
                    )
                with open(source, "rb") as fin, open(target, "xb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)

    @staticmethod
    def check(directory: Path, files: dict[str, Any], verify: bool) -> None:
        """Every listed file is one of ours, present, of its recorded size, with a consistent ``.npy``
        header (cheap: reads a few hundred bytes per file); with ``verify`` also its sha256.

        Raises:
            IndexFormatError: a bad name, a file missing, truncated, forged or (``verify``) corrupted.
        """
        for name, entry in files.items():
            path = segment_file(directory, name)
            if not isinstance(entry, dict) or isinstance(entry.get("bytes"), bool) or not isinstance(
                entry.get("bytes"), int
            ):
                raise IndexFormatError(f"index manifest entry of {path} has no integer 'bytes'")
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise IndexFormatError(f"index file {path} is missing (listed in the manifest)") from None
            if size != entry["bytes"]:
                raise IndexFormatError(
                    f"index file {path}: {size} bytes, manifest says {entry['bytes']} (truncated or replaced)"
                )
            if name in NPY_LAYOUT:
                npy_shape(path, name)
            if verify and file_digest(path) != entry.get("sha256"):
                raise IndexFormatError(f"index file {path}: sha256 differs from the manifest (corrupted)")

    @staticmethod
    def load_array(path: Path, mmap: bool) -> np.ndarray:
        """An array file whose header ``check`` accepted (so its size bounds what is allocated)."""
        npy_shape(path, path.name)
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise IndexFormatError(f"index file {path} is not a valid .npy file ({exc})") from None


def _save_new(path: Path, array: np.ndarray) -> None:
    with open(path, "xb") as f:
        np.save(f, array)


def _write_rows(path: Path, chunks: Iterable[np.ndarray], shape: tuple[int, int]) -> None:
    """Stream row chunks into a new float16 .npy file without holding the whole matrix in memory."""
    if shape[0] == 0:
        _save_new(path, np.zeros(shape, dtype=np.float16))
        return
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))  # refuse an existing file
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


def _remove(path: Path) -> None:
    """Delete a file, a link (never what it points to) or a directory tree."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_leftovers(root: Path) -> None:
    """Delete temp dirs of killed saves. Only call while holding the writer lock."""
    for path in root.glob(f"{_TMP_PREFIX}*"):
        _remove(path)
    _remove(root / f"{CURRENT}.tmp")


def is_index_dir_or_empty(root: Path) -> bool:
    """Whether ``root`` may receive a save: absent, empty, or holding only index files."""
    if not root.exists():
        return not root.is_symlink()
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
    sealed = {**manifest, SELF_DIGEST: manifest_digest(manifest)}
    path = tmp / MANIFEST
    with open(path, "x", encoding="utf-8") as f:
        f.write(json.dumps(sealed, indent=1, sort_keys=True) + "\n")
    if fsync:
        _fsync_path(path)
        for seg in tmp.iterdir():
            if seg.is_dir():
                _fsync_path(seg)
        _fsync_path(tmp)
    final = root / name
    if final.exists() or final.is_symlink():  # rename() would replace an empty directory silently
        raise IndexFormatError(f"cannot commit {final}: it already exists (a save never overwrites)")
    os.rename(tmp, final)
    if fsync:
        _fsync_path(root)
    pointer = root / f"{CURRENT}.tmp"
    fd = os.open(pointer, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(name + "\n")
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(pointer, root / CURRENT)
    if fsync:
        _fsync_path(root)
    for p in root.iterdir():
        if p.name != name and version_number(p.name) is not None:
            _remove(p)


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
