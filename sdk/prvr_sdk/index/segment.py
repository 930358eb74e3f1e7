"""A segment of an exact index: videos stored together, in memory or mapped from a segment directory.

``add`` makes one segment per call; ``save`` writes new segments and hard-links unchanged ones
(``exact.py``, ``store.py``). A segment holds the arrays (float16 clips, offsets, spans, video_emb), the
ids, and the metadata lines -- parsed lazily into the filter columns that ``filters.py`` evaluates.
"""

from __future__ import annotations

import json
import mmap as mmaplib
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prvr_sdk.index import store
from prvr_sdk.index.base import ScoringRule
from prvr_sdk.index.blocks import decode_all
from prvr_sdk.index.filters import ABSENT, ID_FIELD, Column, build_column
from prvr_sdk.index.store import IndexFormatError, SegmentFiles

__all__ = ["Segment", "SegmentView"]

_PARSE_LOCK = threading.Lock()  # first parse of a segment's metadata (rare, short)


class Segment:
    """Videos stored together: arrays (in memory, or mapped from a segment directory), ids, metadata."""

    def __init__(
        self,
        ids: list[str],
        offsets: np.ndarray | None,
        clips: np.ndarray | None,
        spans: np.ndarray | None,
        video_emb: np.ndarray | None,
        metadata_lines: list[bytes] | None = None,
        source: Path | None = None,
        name: str | None = None,
        files: dict[str, Any] | None = None,
    ) -> None:
        self.ids = ids
        self.offsets = offsets
        self.clips = clips
        self.spans = spans
        self.video_emb = video_emb
        self.source = source  # directory of a saved segment; None while it exists in memory only
        self.name = name
        self.files = files or {}
        self.alive = np.ones(len(ids), dtype=bool)
        self._lines = metadata_lines
        # A saved segment's metadata is parsed on first use, from a map opened at load: the map keeps the
        # file readable even after a writer commits a newer version and deletes this one.
        self._metadata_map: mmaplib.mmap | None = None
        self._records: list[dict[str, Any]] | None = None
        self._columns: dict[str, Column] = {}
        self._id_column: Column | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_clips(self) -> int:
        return 0 if self.offsets is None else int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        arrays = (self.clips, self.offsets, self.spans, self.video_emb)
        return sum(int(a.nbytes) for a in arrays if a is not None)

    def metadata_line(self, row: int) -> bytes:
        if self._lines is None:
            # Searches run concurrently (prvr serve); the first reads of a segment must not both parse and
            # one of them find the map already dropped by the other.
            with _PARSE_LOCK:
                if self._lines is None:
                    assert self.source is not None
                    data = self._metadata_map[:] if self._metadata_map is not None else b""
                    lines = data.split(b"\n")[:-1]
                    if len(lines) != len(self.ids) or (data and not data.endswith(b"\n")):
                        raise IndexFormatError(
                            f"{self.source / store.METADATA}: {len(lines)} lines for {len(self.ids)} videos"
                        )
                    self._lines, self._metadata_map = lines, None
        return self._lines[row]

    def metadata(self, row: int) -> dict[str, Any]:
        if self._records is not None:
            return dict(self._records[row])
        return self._parse(row)

    def _parse(self, row: int) -> dict[str, Any]:
        """Row ``row``'s metadata; a saved segment's broken line is an ``IndexFormatError`` naming it."""
        line = self.metadata_line(row)
        if self.source is None:
            return json.loads(line)  # written by ``add`` from checked dicts
        return store.parse_metadata_line(line, self.source / store.METADATA, row)

    def column(self, field: str) -> Column:
        """Filter column of ``field`` over this segment (built on first use, then cached)."""
        if field == ID_FIELD:
            if self._id_column is None:
                self._id_column = build_column(self.ids)
            return self._id_column
        if field not in self._columns:
            if self._records is None:
                self._records = [self._parse(i) for i in range(len(self.ids))]
            self._columns[field] = build_column([r.get(field, ABSENT) for r in self._records])
        return self._columns[field]

    @classmethod
    def open(
        cls,
        directory: Path,
        entry: Mapping[str, Any],
        rule: ScoringRule,
        dim: int,
        mmap: bool,
        verify: bool,
        float32: bool = False,
    ) -> Segment:
        files = entry.get("files")
        if not isinstance(files, dict):
            raise IndexFormatError(f"manifest entry of segment {directory} lists no files")
        needed = {store.IDS, store.METADATA}
        needed |= {store.CLIPS, store.OFFSETS, store.SPANS} if rule.uses_clips else set()
        needed |= {store.VIDEO_EMB} if rule.uses_video_emb else set()
        if needed - set(files):
            raise IndexFormatError(
                f"manifest entry of segment {directory} does not list {sorted(needed - set(files))}"
            )
        SegmentFiles.check(directory, files, verify)
        ids = store.read_json(directory / store.IDS, max_bytes=files[store.IDS]["bytes"])
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise IndexFormatError(f"{directory / store.IDS} must hold a list of non-empty strings")
        nv = len(ids)
        offsets = clips = spans = video_emb = None
        where = f"index segment {directory}"
        if rule.uses_clips:
            offsets = SegmentFiles.load_array(directory / store.OFFSETS, mmap=False)
            clips = SegmentFiles.load_array(directory / store.CLIPS, mmap)
            spans = SegmentFiles.load_array(directory / store.SPANS, mmap=False)
            if offsets.shape != (nv + 1,) or offsets[0] != 0 or (np.diff(offsets) < 1).any():
                raise IndexFormatError(f"{where}: offsets must be {nv + 1} increasing row numbers from 0")
            if clips.dtype != np.float16 or clips.shape != (int(offsets[-1]), dim):
                raise IndexFormatError(
                    f"{where}: clips are {clips.dtype} {clips.shape}, expected float16 "
                    f"{(int(offsets[-1]), dim)}"
                )
            if spans.shape != (len(clips), 2):
                raise IndexFormatError(f"{where}: spans have shape {spans.shape}, expected {(len(clips), 2)}")
        if rule.uses_video_emb:
            video_emb = SegmentFiles.load_array(directory / store.VIDEO_EMB, mmap)
            if video_emb.dtype != np.float16 or video_emb.shape != (nv, dim):
                raise IndexFormatError(
                    f"{where}: video embeddings are {video_emb.dtype} {video_emb.shape}, expected "
                    f"float16 {(nv, dim)}"
                )
        if float32:
            clips = None if clips is None else decode_all(clips)
            video_emb = None if video_emb is None else decode_all(video_emb)
        segment = cls(
            ids, offsets, clips, spans, video_emb, source=directory, name=directory.name, files=files
        )
        if files[store.METADATA]["bytes"] > 0:  # mmap refuses an empty file
            with open(directory / store.METADATA, "rb") as f:
                segment._metadata_map = mmaplib.mmap(f.fileno(), 0, access=mmaplib.ACCESS_READ)
        return segment


class SegmentView:
    """The segment as a filter sees it: columns, plus id lookups through the index's id map."""

    def __init__(self, segment: Segment, locate: Callable[[], Mapping[str, tuple[Segment, int]]]) -> None:
        self._segment, self._locate = segment, locate  # the id map is built only if a filter asks for ids

    def __len__(self) -> int:
        return len(self._segment)

    def column(self, field: str) -> Column:
        return self._segment.column(field)

    def id_mask(self, ids: Sequence[str]) -> np.ndarray:
        mask = np.zeros(len(self._segment), dtype=bool)
        locate = self._locate()
        for video_id in ids:
            where = locate.get(video_id)
            if where is not None and where[0] is self._segment:
                mask[where[1]] = True
        return mask
