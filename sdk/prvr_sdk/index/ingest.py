"""Ingestion: user arrays -> a checked, in-memory ``Segment`` (what ``ExactIndex.add`` / ``upsert`` store).

Kept apart from the index façade (``exact.py``) because this is where every promise about inputs is kept:
ids are unique non-empty strings, vectors are finite unit rows of the index's ``D``, every video has at
least one clip, spans are ordered seconds, metadata is a JSON object -- and the embeddings a scoring rule
does not use are refused rather than silently dropped. Everything is checked before anything is stored,
so a bad call adds nothing; messages name the argument, the position and the video id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Container, Mapping, Sequence
from typing import Any

import numpy as np

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.index.base import ScoringRule, check_vectors
from prvr_sdk.index.segment import Segment

__all__ = ["build_segment", "check_ids"]


def check_ids(video_ids: Sequence[str], existing: Container[str] | None = None) -> list[str]:
    """``video_ids`` as a list of unique, non-empty strings, none of them in ``existing``.

    Args:
        video_ids: the ids of one ``add`` / ``upsert`` call.
        existing: the ids already live in the index (``add``), or None when they may be replaced (``upsert``).

    Raises:
        InvalidInputError: a bare string, a non-string or empty id, repeated ids, an id already live.
    """
    if isinstance(video_ids, str):
        raise InvalidInputError(
            f"video_ids: expected a list of ids, got the string {video_ids!r}; wrap it in a list"
        )
    ids = list(video_ids)
    for i, video_id in enumerate(ids):
        if not isinstance(video_id, str) or not video_id:
            raise InvalidInputError(f"video_ids[{i}]: expected a non-empty string, got {video_id!r}")
    repeated = [v for v, n in Counter(ids).items() if n > 1]
    if repeated:
        raise InvalidInputError(f"video_ids: duplicate ids in one call: {repeated[:5]}")
    if existing is not None:
        already = [v for v in ids if v in existing]
        if already:
            raise InvalidInputError(
                f"video_ids: already in the index: {already[:5]} "
                f"({len(already)} in all); remove them first or use upsert() (`prvr index add --upsert`)"
            )
    return ids


def build_segment(
    ids: list[str],
    clip_embs: Any,
    video_embs: Any,
    spans: Any,
    metadata: Any,
    *,
    dim: int,
    scoring: ScoringRule,
) -> Segment:
    """Check one call's embeddings, spans and metadata against ``scoring`` and ``dim``; the new segment.

    Clip and video vectors are stored as float16; spans as float64 (NaN where unknown); metadata as one
    compact JSON line per video. Arguments are those of ``ExactIndex.add`` (``ids`` already checked).

    Raises:
        InvalidInputError / ShapeMismatchError: as ``ExactIndex.add`` documents.
    """
    nv, rule = len(ids), scoring
    offsets = clips = span_rows = video_emb = None
    if rule.uses_clips:
        if clip_embs is None:
            raise InvalidInputError(f"clip_embs: scoring {rule.kind!r} needs clip embeddings, got None")
        if len(clip_embs) != nv:
            raise ShapeMismatchError(f"clip_embs: expected {nv} entries (one per id), got {len(clip_embs)}")
        array = _check_clip_array(clip_embs, nv, dim)
        if array is not None:  # one [Nv, Nc, D] array, checked at once
            counts = np.full(nv, array.shape[1], dtype=np.int64)
            clips = array.reshape(-1, dim).astype(np.float16)
        else:
            blocks = []
            for i, emb in enumerate(clip_embs):
                block = check_vectors(emb, dim, f"clip_embs[{i}] (video {ids[i]!r})")
                if len(block) == 0:
                    raise InvalidInputError(
                        f"clip_embs[{i}] (video {ids[i]!r}): expected at least one clip, got none"
                    )
                blocks.append(block)
            counts = np.array([len(b) for b in blocks], dtype=np.int64)
            clips = np.concatenate(blocks).astype(np.float16)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        span_rows = _check_spans(spans, ids, counts)
    elif clip_embs is not None:
        raise InvalidInputError(
            "clip_embs: scoring 'video' stores one vector per video and no clips; pass video_embs only"
        )
    elif spans is not None:
        raise InvalidInputError(
            "spans: scoring 'video' has no clips to give spans to; put the video's "
            "length in metadata['duration'] instead"
        )
    if rule.uses_video_emb:
        if video_embs is None:
            raise InvalidInputError(f"video_embs: scoring {rule.kind!r} needs video embeddings, got None")
        video_emb = check_vectors(video_embs, dim, "video_embs")
        if len(video_emb) != nv:
            raise ShapeMismatchError(f"video_embs: expected {nv} rows (one per id), got {len(video_emb)}")
        video_emb = video_emb.astype(np.float16)
    elif video_embs is not None:
        raise InvalidInputError(
            "video_embs: scoring 'max_clip' uses clip embeddings only; drop video_embs "
            "or use scoring 'weighted'"
        )
    lines = _check_metadata(metadata, nv)
    return Segment(ids, offsets, clips, span_rows, video_emb, metadata_lines=lines)


def _check_clip_array(clip_embs: Any, nv: int, dim: int) -> np.ndarray | None:
    """Fast path for one ``[Nv, Nc, D]`` array: check it at once (None: use the per-video checks,
    which also name the video of the first bad clip)."""
    if not isinstance(clip_embs, np.ndarray) or clip_embs.ndim != 3 or clip_embs.shape[1] == 0:
        return None
    try:
        flat = check_vectors(clip_embs.reshape(-1, clip_embs.shape[2]), dim, "clip_embs")
    except (InvalidInputError, ShapeMismatchError):
        return None
    return flat.reshape(nv, clip_embs.shape[1], dim)


def _check_spans(spans: Any, ids: list[str], counts: np.ndarray) -> np.ndarray:
    """``[sum(counts), 2]`` float64 (start, end) seconds per clip; NaN rows for videos without spans."""
    out = np.full((int(counts.sum()), 2), np.nan)
    if spans is None:
        return out
    if len(spans) != len(ids):
        raise ShapeMismatchError(f"spans: expected {len(ids)} entries (one per id), got {len(spans)}")
    row = 0
    for i, (span, count) in enumerate(zip(spans, counts, strict=True)):
        if span is not None:
            where = f"spans[{i}] (video {ids[i]!r})"
            arr = np.asarray(span, dtype=np.float64)
            if arr.shape != (count, 2):
                raise ShapeMismatchError(
                    f"{where}: expected shape {(int(count), 2)} (one [start, end] per "
                    f"clip), got {arr.shape}"
                )
            if not np.isfinite(arr).all():
                raise InvalidInputError(f"{where}: expected finite seconds, got NaN or Inf")
            if (arr[:, 0] > arr[:, 1]).any():
                bad = int(np.flatnonzero(arr[:, 0] > arr[:, 1])[0])
                raise InvalidInputError(f"{where}: clip {bad} starts after it ends ({arr[bad].tolist()})")
            out[row : row + count] = arr
        row += count
    return out


def _check_metadata(metadata: Any, nv: int) -> list[bytes]:
    """One compact JSON object line per video (``{}`` for None), refusing what JSON cannot carry."""
    if metadata is None:
        return [b"{}"] * nv
    if isinstance(metadata, Mapping) or len(metadata) != nv:
        got = "a single dict" if isinstance(metadata, Mapping) else f"{len(metadata)} entries"
        raise ShapeMismatchError(f"metadata: expected a list of {nv} dicts (one per id), got {got}")
    lines = []
    for i, record in enumerate(metadata):
        if record is None:
            lines.append(b"{}")
            continue
        if not isinstance(record, Mapping) or not all(isinstance(k, str) for k in record):
            raise InvalidInputError(f"metadata[{i}]: expected a dict with string keys, got {record!r:.80}")
        try:
            text = json.dumps(dict(record), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"metadata[{i}]: not JSON-serialisable ({exc})") from None
        lines.append(text.encode())
    return lines
