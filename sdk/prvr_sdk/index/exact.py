"""``ExactIndex``: exact PRVR search over memory-mapped clip embeddings (docs/architecture.md §4).

Every video is a run of unit clip vectors (and, for some models, one video vector). They are stored
once, as float16 rows of one matrix per segment, with ``offsets`` marking where each video's clips
start and ``spans`` giving each clip's time span in seconds. A search multiplies the clip matrix by the
query batch a block of rows at a time -- each cache-sized piece decoded to float32 (``decode_f16``) and
multiplied by BLAS in float32, so memory stays bounded for millions of clips and the float16 matrix is
read once -- takes the max over each video's clips, adds the video-vector term when the model's rule
has one (``ScoringRule``), and keeps a running top-k; for the videos that make it, the winning clip (hence
the span of the matching moment) is read off the same scores. Results are those of ``prvr_sdk.scoring``
over the whole corpus stored in float16: same scores up to float32 summation order, same ranking, ties
broken by insertion order (earlier videos first). ``load(float32=True)`` trades twice the memory for
skipping the decode (bench/index.py measures both).

Writes are incremental: ``add`` appends a segment, ``remove`` marks videos dead (dropped at the next
``save``), ``save`` commits a new immutable version atomically (``store.py``), holding the writer lock
(``locking.py``). An index bound to a directory (loaded from it, or saved to it) takes the lock at its
first ``add`` / ``remove`` / ``upsert`` and keeps it until ``save`` or ``close`` -- so a second writer
hears about the conflict before it does any work, not after. Searching never locks.

This module is the façade: bookkeeping, the writer-lock protocol and the search driver. Turning user
arrays into a checked segment is ``ingest.py``'s; writing, loading and verifying versions is
``persist.py``'s (the methods here call them).

Thread safety: ``search`` may run from several threads at once (numpy releases the GIL in the matrix
products); ``add``, ``remove``, ``upsert`` and ``save`` need the caller's own synchronisation.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prvr_sdk.errors import InvalidInputError
from prvr_sdk.hits import Hit
from prvr_sdk.index import persist, store
from prvr_sdk.index.base import ScoringRule, check_vectors
from prvr_sdk.index.blocks import clip_rows, dot_f16, max_per_video, video_blocks
from prvr_sdk.index.filters import Filter, compile_filter
from prvr_sdk.index.ingest import build_segment, check_ids
from prvr_sdk.index.locking import IndexConflictError, WriterLock
from prvr_sdk.index.segment import Segment, SegmentView
from prvr_sdk.index.topk import TopK
from prvr_sdk.scoring import weighted_score

__all__ = ["ExactIndex"]

# Search memory bounds. Clip rows are decoded to float32 and multiplied a cache-sized piece at a time
# (the float32 copy of one piece is ~4 MiB), into a score block of at most ~64 MiB [queries, rows] that the
# per-video max and the top-k then consume; at most 2**18 rows per block keeps the per-block top-k cheap.
_PIECE_BYTES = 4 << 20
_SCORE_BYTES = 64 << 20
_MAX_BLOCK_ROWS = 1 << 18
# Queries scored together; more are split into chunks (each chunk reads the clip matrix once).
_QUERY_CHUNK = 1024
_SHA256_HEX = frozenset("0123456789abcdef")


def _finite_span(start: float, end: float) -> tuple[float | None, float | None]:
    if math.isnan(start) or math.isnan(end):
        return None, None
    return float(start), float(end)


class ExactIndex:
    """Exact max-over-clips search over float16 clip embeddings, on disk and memory-mapped.

    Args:
        dim: embedding size ``D`` of every stored and query vector.
        scoring: the model's rule (``ScoringRule``, the bundle manifest's dict, or a kind string):
            ``"max_clip"`` (AMDNet), ``"weighted"`` (MamFusion, 0.7 / 0.3), ``"video"`` (MUSE).
        bundle_sha256: the export bundle's hash, recorded so that ``load(bundle_sha256=...)`` can refuse
            an index built with another model.
        model: model name, recorded likewise (e.g. ``"amdnet-tvr"``).
        bundle_path: where that bundle lives, recorded so that ``prvr search --index`` finds it without
            ``--bundle`` (a hint only: the bundle's hash is what binds).

    Example:
        >>> index = ExactIndex(256, {"kind": "weighted", "clip_weight": 0.7, "frame_weight": 0.3})
        >>> index.add(["v1", "v2"], clip_embs=[c1, c2], video_embs=vv, spans=[s1, s2])
        >>> index.search(query, top_k=5, filter={"split": "test"})   # -> list[Hit]
        >>> index.save("my-index"); index = ExactIndex.load("my-index")

    Raises:
        InvalidInputError: a non-positive ``dim``, an unknown scoring rule, a malformed ``bundle_sha256``.
    """

    def __init__(
        self,
        dim: int,
        scoring: ScoringRule | Mapping[str, Any] | str,
        bundle_sha256: str | None = None,
        model: str | None = None,
        bundle_path: str | None = None,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise InvalidInputError(f"dim: expected a positive integer, got {dim!r}")
        if bundle_sha256 is not None and (
            not isinstance(bundle_sha256, str) or len(bundle_sha256) != 64 or set(bundle_sha256) - _SHA256_HEX
        ):
            raise InvalidInputError(f"bundle_sha256: expected 64 lowercase hex digits, got {bundle_sha256!r}")
        if model is not None and not isinstance(model, str):
            raise InvalidInputError(f"model: expected a model name (str) or None, got {model!r}")
        if bundle_path is not None and not isinstance(bundle_path, str):
            raise InvalidInputError(f"bundle_path: expected a path (str) or None, got {bundle_path!r}")
        self.dim = int(dim)
        self.scoring = ScoringRule.parse(scoring)
        self.bundle_sha256 = bundle_sha256
        self.model = model
        self.bundle_path = bundle_path
        self._segments: list[Segment] = []
        self._locate: dict[str, tuple[Segment, int]] | None = None  # id -> (segment, row), built lazily
        self._path: Path | None = None
        self._version: str | None = None
        self._mmap = True
        self._float32 = False
        self._next_segment = 1
        self._dirty = False
        self._lock: WriterLock | None = None
        self._finalizer: weakref.finalize | None = None

    # ------------------------------------------------------------------ bookkeeping

    def __len__(self) -> int:
        return int(sum(np.count_nonzero(seg.alive) for seg in self._segments))

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and video_id in self._id_map()

    def __repr__(self) -> str:
        where = f", path={str(self._path)!r}" if self._path else ""
        return (
            f"ExactIndex(dim={self.dim}, scoring={self.scoring.kind!r}, videos={len(self)}, "
            f"segments={len(self._segments)}{where})"
        )

    def ids(self) -> list[str]:
        """Live video ids in internal order (insertion order, which also breaks score ties)."""
        return [seg.ids[i] for seg in self._segments for i in np.flatnonzero(seg.alive)]

    @property
    def path(self) -> Path | None:
        """The directory this index was loaded from or last saved to (None for a never-saved index)."""
        return self._path

    def info(self) -> dict[str, Any]:
        """Counts, sizes and bindings, JSON-ready (``prvr index info`` prints this)."""
        return {
            "path": str(self._path) if self._path else None,
            "version": self._version,
            "dim": self.dim,
            "scoring": self.scoring.to_dict(),
            "model": self.model,
            "bundle_sha256": self.bundle_sha256,
            "bundle_path": self.bundle_path,
            "videos": len(self),
            "removed_unsaved": int(sum(len(s) - np.count_nonzero(s.alive) for s in self._segments)),
            "clips": int(sum(s.num_clips for s in self._segments)),
            "segments": len(self._segments),
            "unsaved_changes": self._dirty,
            "bytes": int(sum(s.nbytes for s in self._segments)),
            "mmap": self._mmap,
            "float32": self._float32,
        }

    def _id_map(self) -> dict[str, tuple[Segment, int]]:
        if self._locate is None:
            self._locate = {}
            for seg in self._segments:
                for row in np.flatnonzero(seg.alive):
                    self._locate[seg.ids[row]] = (seg, int(row))
        return self._locate

    def close(self) -> None:
        """Release the writer lock if held (unsaved changes stay in memory; a later save re-locks)."""
        if self._lock is not None:
            self._lock.release()

    def lock(self) -> None:
        """Take the writer lock of the bound directory now instead of at the first change.

        For callers about to do long work before their first ``add`` (``prvr index add`` encodes every
        video first): a second writer then learns at once that the index is busy, not after encoding.

        Raises:
            IndexLockedError: another writer holds the directory.
            IndexConflictError: the directory changed on disk since this index was loaded.
        """
        self._begin_write()

    @classmethod
    def verify(cls, path: str | os.PathLike, show_progress: bool | None = None) -> dict[str, Any]:
        """Full check of the live version: every file's sha256, every id list and metadata line.

        Reads every byte once (``load`` checks only sizes and headers). Returns a JSON-ready report.

        Raises:
            IndexFormatError: the first problem, naming the file (and line).
        """
        return persist.verify(cls, path, show_progress)

    def __enter__(self) -> ExactIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bind(self, root: Path, version: str) -> None:
        if self._finalizer is not None:
            self._finalizer()  # releases the old directory's lock, if held
        self._path, self._version = root, version
        self._lock = WriterLock(root)
        self._finalizer = weakref.finalize(self, self._lock.release)

    def _begin_write(self) -> None:
        """Take the writer lock of the bound directory before the first change (no-op if unbound)."""
        if self._path is None or self._lock is None or self._lock.held:
            return
        self._lock.acquire()
        current = store.read_current(self._path)
        if current != self._version:
            self._lock.release()
            raise IndexConflictError(
                f"index {self._path} changed on disk since this object read it (it holds version "
                f"{self._version}, the directory now {current}); load it again and re-apply the changes"
            )

    # ------------------------------------------------------------------ writes

    def add(
        self,
        video_ids: Sequence[str],
        clip_embs: Sequence[np.ndarray] | np.ndarray | None = None,
        video_embs: np.ndarray | None = None,
        spans: Sequence[np.ndarray | None] | np.ndarray | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Add videos as a new segment (in memory until ``save``). All-or-nothing: a bad input adds nothing.

        Args:
            video_ids: ``Nv`` unique, non-empty string ids, none already live in the index.
            clip_embs: per video a unit-vector array ``[Nc_i, D]`` with ``Nc_i >= 1`` (or one
                ``[Nv, Nc, D]`` array); required by ``"max_clip"`` and ``"weighted"``, refused by
                ``"video"``.
            video_embs: ``[Nv, D]`` unit vectors; required by ``"weighted"`` and ``"video"``, refused by
                ``"max_clip"``.
            spans: per video ``[Nc_i, 2]`` clip (start, end) seconds, or None for unknown (hits then carry
                ``start = end = None``). ``"video"`` scoring takes no spans: a hit spans
                ``(0, metadata["duration"])`` when the metadata has a duration.
            metadata: per video a JSON-serialisable dict (or None), returned with hits and used by filters.

        Raises:
            InvalidInputError: duplicate or existing ids (use ``upsert``), non-string ids, a video with no
                clips, NaN/Inf, vectors that are not unit length, embeddings the scoring rule does not use,
                bad spans, metadata that is not a JSON object.
            ShapeMismatchError: wrong ``D``, or lengths that disagree with ``video_ids``.
            IndexLockedError: another writer holds the bound directory.
            IndexConflictError: the bound directory changed on disk since this index was loaded.
        """
        self._add(video_ids, clip_embs, video_embs, spans, metadata, replace=False)

    def upsert(
        self,
        video_ids: Sequence[str],
        clip_embs: Sequence[np.ndarray] | np.ndarray | None = None,
        video_embs: np.ndarray | None = None,
        spans: Sequence[np.ndarray | None] | np.ndarray | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Like ``add``, but ids already in the index are replaced (removed, then added at the end)."""
        self._add(video_ids, clip_embs, video_embs, spans, metadata, replace=True)

    def _add(self, video_ids, clip_embs, video_embs, spans, metadata, replace: bool) -> None:
        ids = check_ids(video_ids, existing=None if replace else self._id_map())
        if not ids:
            return
        segment = build_segment(
            ids, clip_embs, video_embs, spans, metadata, dim=self.dim, scoring=self.scoring
        )
        self._begin_write()
        if replace:
            self._remove_ids(ids)
        self._segments.append(segment)
        if self._locate is not None:
            for row, video_id in enumerate(ids):
                self._locate[video_id] = (segment, row)
        self._dirty = True

    def remove(self, video_ids: Sequence[str] | str) -> int:
        """Remove videos by id; unknown ids are ignored (like faiss ``remove_ids`` and Qdrant deletes).

        Removed videos vanish from searches at once and from disk at the next ``save`` (compaction).

        Returns:
            How many videos were removed.

        Raises:
            IndexLockedError / IndexConflictError: as for ``add``.
        """
        ids = [video_ids] if isinstance(video_ids, str) else list(video_ids)
        if not any(video_id in self._id_map() for video_id in ids):
            return 0
        self._begin_write()
        removed = self._remove_ids(ids)
        self._dirty = True
        return removed

    def _remove_ids(self, ids: Sequence[str]) -> int:
        locate, removed = self._id_map(), 0
        for video_id in ids:
            where = locate.pop(video_id, None)
            if where is not None:
                where[0].alive[where[1]] = False
                removed += 1
        return removed

    # ------------------------------------------------------------------ search

    def search(
        self,
        queries: np.ndarray,
        top_k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
        group_by: Literal["video", "clip"] = "video",
        *,
        min_score: float | None = None,
        block_size: int | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Best videos (or clips) for each query, with the matching moment.

        Args:
            queries: one unit query vector ``[D]`` or a batch ``[Nq, D]`` (``Retriever.encode_text`` output).
            top_k: how many hits per query (fewer when fewer videos pass the filter).
            filter: metadata filter applied before top-k (``prvr_sdk.index.filters``), e.g.
                ``{"video_id": [...]}``, ``{"split": "test", "duration": {"$gte": 60}}``.
            group_by: ``"video"`` -- one hit per video, at its best clip; ``"clip"`` -- clips ranked on
                their own (clip score plus the video term), so a video can appear several times.
            min_score: drop hits scoring below this.
            block_size: clip rows scored per block (default: as many as keep the block's float32 scores
                under ~64 MiB, at most 2**18); results do not depend on it.

        Returns:
            For ``[D]``: ``list[Hit]``, best first. For ``[Nq, D]``: one such list per query.

        Raises:
            ShapeMismatchError: queries not ``[D]`` / ``[Nq, D]`` with this index's ``D``.
            InvalidInputError: NaN/Inf or non-unit queries, ``top_k < 1``, an unknown ``group_by``, a bad
                filter, ``group_by="clip"`` with scoring ``"video"``.
        """
        single = np.ndim(queries) == 1
        q = check_vectors(np.reshape(queries, (1, -1)) if single else queries, self.dim, "queries")
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
            raise InvalidInputError(f"top_k: expected a positive integer, got {top_k!r}")
        if group_by not in ("video", "clip"):
            raise InvalidInputError(f"group_by: expected 'video' or 'clip', got {group_by!r}")
        by_clip = group_by == "clip"
        if by_clip and not self.scoring.uses_clips:
            raise InvalidInputError("group_by='clip': scoring 'video' stores no clips; use group_by='video'")
        if block_size is not None and (
            isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
        ):
            raise InvalidInputError(f"block_size: expected a positive integer, got {block_size!r}")
        compiled = compile_filter(filter)

        masks = []
        for seg in self._segments:
            mask = seg.alive
            if compiled is not None and mask.any():
                mask = mask & compiled.mask(SegmentView(seg, self._id_map))
            masks.append(mask if mask.any() else None)
        video_base = np.cumsum([0] + [len(s) for s in self._segments])
        clip_base = np.cumsum([0] + [s.num_clips for s in self._segments])

        results: list[list[Hit]] = []
        piece = np.empty((max(1, _PIECE_BYTES // (4 * self.dim)), self.dim), dtype=np.float32)
        for q0 in range(0, len(q), _QUERY_CHUNK):
            chunk = q[q0 : q0 + _QUERY_CHUNK]
            rows = block_size or max(len(piece), min(_MAX_BLOCK_ROWS, _SCORE_BYTES // (4 * len(chunk))))
            acc = TopK(len(chunk), int(top_k))
            for i, (seg, mask) in enumerate(zip(self._segments, masks, strict=True)):
                if mask is None:
                    continue
                if self.scoring.uses_clips:
                    base = (int(video_base[i]), int(clip_base[i]))
                    self._scan_clips(seg, chunk, mask, acc, base, by_clip, rows, piece)
                else:
                    self._scan_videos(seg, chunk, mask, acc, int(video_base[i]), rows, piece)
            for scores, keys, extra in acc.results(min_score):
                results.append(self._hits(scores, keys, extra, by_clip, video_base, clip_base))
        return results[0] if single else results

    def _scan_clips(
        self,
        seg: Segment,
        q: np.ndarray,
        mask: np.ndarray,
        acc: TopK,
        base: tuple[int, int],
        by_clip: bool,
        rows: int,
        piece: np.ndarray,
    ) -> None:
        """Score one segment's videos (or clips) in blocks of about ``rows`` clip rows into ``acc``.

        ``base`` is the segment's first global (video, clip) row: the keys that order ties.
        """
        offsets, rule = seg.offsets, self.scoring
        assert offsets is not None and seg.clips is not None
        counts = np.diff(offsets)
        for v0, v1 in video_blocks(offsets, rows):
            keep = mask[v0:v1]
            selected = int(np.count_nonzero(keep))
            if selected == 0:
                continue
            # Mostly-live block: read it whole and mask; sparse (a selective filter): gather the live rows.
            dense = 2 * selected >= v1 - v0
            if dense:
                vids, rows_kept = np.arange(v0, v1), None
                scores = dot_f16(seg.clips[offsets[v0] : offsets[v1]], q, piece)
            else:
                vids = v0 + np.flatnonzero(keep)
                rows_kept = clip_rows(offsets, vids)
                scores = dot_f16(seg.clips[rows_kept], q, piece)
            frame = None  # [videos, queries] like scores
            if rule.uses_video_emb:
                assert seg.video_emb is not None
                frame = dot_f16(seg.video_emb[v0:v1] if dense else seg.video_emb[vids], q, piece)
            cnt = counts[vids]
            hidden = ~keep if dense and selected < v1 - v0 else None
            if not by_clip:
                best, clip_of = max_per_video(scores, cnt)
                total = weighted_score(best, frame, rule.clip_weight, rule.frame_weight)
                if hidden is not None:
                    total[hidden] = -np.inf
                acc.push(total.T, base[0] + vids, clip_of)
            else:
                total = weighted_score(
                    scores,
                    None if frame is None else np.repeat(frame, cnt, axis=0),
                    rule.clip_weight,
                    rule.frame_weight,
                )
                if hidden is not None:
                    total[np.repeat(hidden, cnt)] = -np.inf
                if rows_kept is None:
                    rows_kept = np.arange(offsets[v0], offsets[v1])
                within = rows_kept - np.repeat(offsets[vids], cnt)
                acc.push(total.T, base[1] + rows_kept, lambda cols, within=within: within[cols])

    def _scan_videos(
        self, seg: Segment, q: np.ndarray, mask: np.ndarray, acc: TopK, video_base: int, rows: int, piece
    ) -> None:
        """Scoring 'video': one product with the video vectors, in blocks of ``rows`` videos."""
        assert seg.video_emb is not None
        for v0 in range(0, len(seg), rows):
            v1 = min(len(seg), v0 + rows)
            keep = mask[v0:v1]
            selected = int(np.count_nonzero(keep))
            if selected == 0:
                continue
            dense = 2 * selected >= v1 - v0
            vids = np.arange(v0, v1) if dense else v0 + np.flatnonzero(keep)
            total = dot_f16(seg.video_emb[v0:v1] if dense else seg.video_emb[vids], q, piece)
            if dense and selected < v1 - v0:
                total[~keep] = -np.inf
            acc.push(total.T, video_base + vids)

    def _hits(
        self, scores, keys, extra, by_clip: bool, video_base: np.ndarray, clip_base: np.ndarray
    ) -> list[Hit]:
        hits = []
        bases = clip_base if by_clip else video_base
        for score, key, clip in zip(scores.tolist(), keys.tolist(), extra.tolist(), strict=True):
            i = int(np.searchsorted(bases, key, side="right")) - 1
            seg, local = self._segments[i], key - int(bases[i])
            if by_clip:
                assert seg.offsets is not None
                row = int(np.searchsorted(seg.offsets, local, side="right")) - 1
            else:
                row = local
            meta = seg.metadata(row)
            if clip >= 0:
                assert seg.offsets is not None and seg.spans is not None
                start, end = _finite_span(*seg.spans[int(seg.offsets[row]) + clip].tolist())
                clip_index: int | None = clip
            else:
                clip_index, start, end = None, None, None
                duration = meta.get("duration")
                if isinstance(duration, int | float) and not isinstance(duration, bool) and duration >= 0:
                    start, end = 0.0, float(duration)
            hits.append(Hit(seg.ids[row], score, start, end, clip_index, meta))
        return hits

    # ------------------------------------------------------------------ persistence

    def save(
        self,
        path: str | os.PathLike | None = None,
        *,
        overwrite: bool = False,
        merge: bool = False,
        fsync: bool = True,
    ) -> Path:
        """Commit the index to a directory as a new version, atomically.

        Unchanged saved segments are hard-linked into the new version (a copy where the filesystem cannot
        link), new videos become one new segment, and segments with removed videos are rewritten without
        them. A crash at any point leaves the previous version loadable and complete (``store.py``).
        Afterwards this object is bound to ``path`` (like "Save as") and reads its saved segments from
        disk (memory-mapped unless loaded with ``mmap=False``; in RAM as float32 with ``float32=True``).

        Args:
            path: target directory; default: the one this index was loaded from or last saved to.
            overwrite: replace an index in ``path`` that this object was not loaded from.
            merge: rewrite everything as one segment (fewer, larger blocks; costs a full rewrite).
                Without it, saving an unchanged index to where it was loaded from does nothing.
            fsync: flush files and directories to stable storage (survives power loss, not only crashes).

        Returns:
            The directory.

        Raises:
            InvalidInputError: no ``path`` and the index was never saved.
            IndexFormatError: ``path`` exists and holds something other than an index.
            IndexLockedError: another writer holds ``path``.
            IndexConflictError: ``path`` holds another index (``overwrite=True`` replaces it) or a version
                newer than the one this object was loaded from.
        """
        return persist.save(self, path, overwrite, merge, fsync)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        mmap: bool = True,
        bundle_sha256: str | None = None,
        model: str | None = None,
        dim: int | None = None,
        verify: bool = False,
        float32: bool = False,
    ) -> ExactIndex:
        """Open the live version of an index directory.

        Args:
            path: the index directory.
            mmap: map clip and video-vector files instead of reading them (pages load on first search and
                are shared between processes).
            bundle_sha256: refuse the index unless it was built for this bundle (the Retriever passes its
                bundle's hash).
            model: refuse the index unless it records this model name.
            dim: refuse the index unless its embeddings have this size.
            verify: check every file's sha256 (reads every byte); sizes are always checked.
            float32: keep a decoded float32 copy of the vectors in RAM (twice the float16 size, built at
                load) instead of decoding float16 blocks during every search. Same results; faster when
                BLAS runs several threads and queries come one at a time (``bench/index.py``).

        Raises:
            IndexFormatError: not an index; a file missing, truncated or (``verify``) corrupted.
            IndexMismatchError: ``bundle_sha256``, ``model`` or ``dim`` differ from the index's.
        """
        return persist.load(
            cls, path, mmap=mmap, bundle_sha256=bundle_sha256, model=model, dim=dim, verify=verify,
            float32=float32,
        )
