"""Persistence of an ``ExactIndex``: save a new version, load the live one, verify every byte.

Kept apart from the index façade (``exact.py``): this is the code that decides what goes into a version
(hard-linked unchanged segments, rewritten compacted ones, one new segment for unsaved videos), what the
manifest records, and what a reader checks before trusting a directory. The crash-safe commit itself -- temp
directory, fsyncs, rename, ``CURRENT`` pointer -- is ``store.py``'s; locking is ``locking.py``'s.

The functions take the index (or, to build one, its class) and update its private state: they are the
façade's own methods, moved out, not an API of their own.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prvr_sdk import __version__
from prvr_sdk.errors import InvalidInputError
from prvr_sdk.index import store
from prvr_sdk.index.base import check_binding
from prvr_sdk.index.blocks import WRITE_CHUNK, clip_rows
from prvr_sdk.index.locking import IndexConflictError, WriterLock
from prvr_sdk.index.segment import Segment
from prvr_sdk.index.store import IndexFormatError, SegmentFiles
from prvr_sdk.progress import progress

if TYPE_CHECKING:
    from prvr_sdk.index.exact import ExactIndex

__all__ = ["load", "save", "verify"]


def save(
    index: ExactIndex, path: str | os.PathLike | None, overwrite: bool, merge: bool, fsync: bool
) -> Path:
    """``ExactIndex.save``: commit ``index`` to ``path`` as a new version and bind it there."""
    if path is None and index._path is None:
        raise InvalidInputError("save: this index was never saved; pass a directory path")
    root = Path(path).absolute() if path is not None else index._path
    assert root is not None
    if not store.is_index_dir_or_empty(root):
        raise IndexFormatError(
            f"cannot save index to {root}: it exists and holds other files (choose a new or empty directory)"
        )
    bound_here = index._path is not None and root.resolve() == index._path.resolve()
    if bound_here and not index._dirty and not merge and store.read_current(root) == index._version:
        return root  # nothing to commit
    lock = index._lock if bound_here and index._lock is not None else WriterLock(root)
    root.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    try:
        current = store.read_current(root)
        expected = index._version if bound_here else None
        if current is not None and current != expected and not overwrite:
            raise IndexConflictError(
                f"cannot save to {root}: it holds version {current}, but this index was "
                + (
                    f"loaded at version {expected}; another writer committed in between (load it "
                    "again and re-apply the changes)"
                    if bound_here
                    else "not loaded from there; pass overwrite=True (`--overwrite`) to replace it"
                )
            )
        store.remove_leftovers(root)
        name = store.new_version_name(root)
        tmp = store.temp_dir(root, name)
        tmp.mkdir()
        try:
            entries = _write_segments(index, tmp, merge, fsync)
            manifest = _manifest(index, name, current, entries)
            store.commit(root, tmp, name, manifest, fsync)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        vdir = root / name
        index._segments = [
            Segment.open(vdir / e["name"], e, index.scoring, index.dim, index._mmap, False, index._float32)
            for e in entries
        ]
        index._locate = None
        index._dirty = False
    finally:
        lock.release()
    index._bind(root, name)
    return root


def _write_segments(index: ExactIndex, tmp: Path, merge: bool, fsync: bool) -> list[dict[str, Any]]:
    """The new version's segment entries: link unchanged saved segments, rewrite the rest into ``tmp``."""
    entries: list[dict[str, Any]] = []
    pending: list[tuple[Segment, np.ndarray | None]] = []
    for seg in index._segments:
        live = int(np.count_nonzero(seg.alive))
        if live == 0:
            continue
        keep = None if live == len(seg) else np.flatnonzero(seg.alive)
        if merge or seg.source is None:
            pending.append((seg, keep))
        elif keep is not None:  # compaction: rewrite without the removed videos
            entries.append(_write_segment(index, tmp, [(seg, keep)], fsync))
        else:
            assert seg.name is not None
            try:
                SegmentFiles.link(seg.source, tmp / seg.name, seg.files)
            except FileNotFoundError:  # its version was collected meanwhile ("save as" elsewhere):
                shutil.rmtree(tmp / seg.name, ignore_errors=True)  # write it from our mapped copy
                entries.append(_write_segment(index, tmp, [(seg, None)], fsync))
                continue
            entries.append({"name": seg.name, "videos": len(seg), "clips": seg.num_clips, "files": seg.files})
    if pending:  # unsaved segments always come after saved ones, so appending keeps insertion order
        entries.append(_write_segment(index, tmp, pending, fsync))
    return entries


def _write_segment(
    index: ExactIndex, tmp: Path, parts: list[tuple[Segment, np.ndarray | None]], fsync: bool
) -> dict[str, Any]:
    """Write the kept rows of ``parts`` as one new segment (streamed in chunks); its manifest entry."""
    name = f"seg-{index._next_segment:06d}"
    index._next_segment += 1
    segs = [seg for seg, _ in parts]
    rows_of = [np.arange(len(seg)) if keep is None else keep for seg, keep in parts]
    ids = [seg.ids[i] for seg, rows in zip(segs, rows_of, strict=True) for i in rows]
    lines = (seg.metadata_line(int(i)) for seg, rows in zip(segs, rows_of, strict=True) for i in rows)
    offsets = clip_chunks = spans = video_emb_chunks = None
    if index.scoring.uses_clips:
        counts = np.concatenate([np.diff(seg.offsets)[rows] for seg, rows in zip(segs, rows_of, strict=True)])
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        clip_idx = [None if keep is None else clip_rows(seg.offsets, keep) for seg, keep in parts]
        pairs = list(zip(segs, clip_idx, strict=True))
        clip_chunks = itertools.chain.from_iterable(
            store.iter_chunks(seg.clips, idx, WRITE_CHUNK) for seg, idx in pairs
        )
        spans = np.concatenate(
            [np.asarray(seg.spans if idx is None else seg.spans[idx]) for seg, idx in pairs]
        )
    if index.scoring.uses_video_emb:
        video_emb_chunks = itertools.chain.from_iterable(
            store.iter_chunks(seg.video_emb, keep, WRITE_CHUNK) for seg, keep in parts
        )
    files = SegmentFiles.write(
        tmp / name,
        dim=index.dim,
        ids=ids,
        metadata_lines=lines,
        offsets=offsets,
        clip_chunks=clip_chunks,
        spans=spans,
        video_emb_chunks=video_emb_chunks,
        fsync=fsync,
    )
    return {
        "name": name,
        "videos": len(ids),
        "clips": 0 if offsets is None else int(offsets[-1]),
        "files": files,
    }


def _manifest(
    index: ExactIndex, name: str, previous: str | None, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    """The version's manifest (docs/architecture.md §4); ``store.commit`` seals it."""
    return {
        "format": store.FORMAT,
        "format_version": store.FORMAT_VERSION,
        "created_by": f"prvr-sdk {__version__}",
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "version": name,
        "previous": previous,
        "dim": index.dim,
        "scoring": index.scoring.to_dict(),
        "model": index.model,
        "bundle_sha256": index.bundle_sha256,
        "bundle_path": index.bundle_path,
        "dtypes": {"clips": "float16", "video_vecs": "float16", "spans": "float64", "offsets": "int64"},
        "counts": {
            "videos": sum(e["videos"] for e in entries),
            "clips": sum(e["clips"] for e in entries),
            "segments": len(entries),
        },
        "next_segment": index._next_segment,
        "segments": entries,
    }


def load(
    cls: type[ExactIndex],
    path: str | os.PathLike,
    *,
    mmap: bool,
    bundle_sha256: str | None,
    model: str | None,
    dim: int | None,
    verify: bool,
    float32: bool,
) -> ExactIndex:
    """``ExactIndex.load``: open the live version of ``path``, retrying if a writer replaces it meanwhile."""
    root = Path(path).absolute()
    for attempt in range(3):
        name, manifest = store.open_current(root)
        index = from_manifest(cls, manifest, root)
        check_binding(index, f"index {root}", bundle_sha256, model, dim)
        index._mmap, index._float32 = mmap, float32
        try:
            index._segments = [
                Segment.open(
                    store.segment_dir(root / name, e["name"]), e, index.scoring, index.dim, mmap,
                    verify, float32,
                )
                for e in manifest["segments"]
            ]
        except (FileNotFoundError, IndexFormatError):
            if attempt < 2 and store.read_current(root) != name:
                continue  # a writer replaced the version while we opened it
            raise
        index._next_segment = manifest.get("next_segment", len(index._segments) + 1)
        index._bind(root, name)
        return index
    raise AssertionError("unreachable")


def from_manifest(cls: type[ExactIndex], manifest: dict[str, Any], root: Path) -> ExactIndex:
    """An empty index with the manifest's settings, after checking the manifest's shape.

    Raises:
        IndexFormatError: a missing key, a malformed segment list or ``next_segment``, bad settings.
    """
    try:
        index = cls(
            manifest["dim"],
            manifest["scoring"],
            manifest.get("bundle_sha256"),
            manifest.get("model"),
            manifest.get("bundle_path"),
        )
        segments = manifest["segments"]
        if not isinstance(segments, list) or not all(isinstance(e, dict) and "name" in e for e in segments):
            raise TypeError("segments must be a list of objects with a name")
        names = [e["name"] for e in segments]
        if len(set(map(repr, names))) != len(names):
            raise TypeError(f"segment names repeat: {names}")
        following = manifest.get("next_segment", len(segments) + 1)
        if isinstance(following, bool) or not isinstance(following, int) or following < 1:
            raise TypeError(f"next_segment must be a positive integer, got {following!r:.40}")
    except KeyError as exc:
        raise IndexFormatError(f"{root}: malformed index manifest (no key {exc})") from None
    except (TypeError, ValueError, InvalidInputError) as exc:
        raise IndexFormatError(f"{root}: malformed index manifest ({exc})") from None
    return index


def verify(cls: type[ExactIndex], path: str | os.PathLike, show_progress: bool | None) -> dict[str, Any]:
    """``ExactIndex.verify``: read and hash every file of the live version; a JSON-ready report."""
    root = Path(path).absolute()
    name, manifest = store.open_current(root)
    index = from_manifest(cls, manifest, root)
    files = bytes_ = videos = 0
    with progress(len(manifest["segments"]), "verify segments", show_progress) as advance:
        for entry in manifest["segments"]:
            seg = Segment.open(
                store.segment_dir(root / name, entry["name"]), entry, index.scoring, index.dim,
                mmap=True, verify=True,
            )
            for row in range(len(seg)):
                seg.metadata(row)
            files += len(seg.files)
            bytes_ += sum(int(f["bytes"]) for f in seg.files.values())  # checked ints (Segment.open)
            videos += len(seg)  # counted from the files, not from the manifest's own claim
            advance(1)
    sealed = store.SELF_DIGEST in manifest
    return {"path": str(root), "version": name, "ok": True, "segments": len(manifest["segments"]),
            "videos": videos, "files": files, "bytes": bytes_, "manifest_sealed": sealed}
