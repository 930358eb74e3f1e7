"""``QdrantIndex``: the ``Index`` protocol on a Qdrant engine, either flavour (``edge.py``, ``remote.py``).

The engine ranks, the SDK decides. Per query, the engine returns its top-``k'`` videos by each term of
the scoring rule -- ``MaxSim`` over the clip multivector, the dot product with the video vector -- under
the payload filter; the missing term of every candidate is fetched by id; candidates are ranked by the
rule's weighted sum (``prvr_sdk.scoring.weighted_score``). A video outside every list scores at most
``sum(weight * last score of its list)``, so when the ``k``-th candidate beats that bound the candidates
provably hold the true top-``k``; otherwise ``k'`` grows (``search="exact"``: engine scans, results equal
``ExactIndex``). The few winners' vectors are then fetched and re-scored locally in float32 -- the same
arithmetic as the exact index -- which gives the final scores, the order (ties by insertion order), and
the winning clip, whose span is the moment. ``search="hnsw"`` uses the engine's HNSW graph with a fixed
``k'`` and no certificate (approximate; ``bench/qdrant.py`` measures recall).

Writes go to the engine at once (Qdrant's write-ahead log makes each batch durable); ``save`` flushes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from prvr_sdk.errors import IndexFormatError, InvalidInputError
from prvr_sdk.hits import Hit
from prvr_sdk.index.base import ScoringRule, check_binding, check_vectors
from prvr_sdk.index.filters import Filter
from prvr_sdk.index.ingest import build_segment, check_ids
from prvr_sdk.index.qdrant.translate import CLIPS, VIDEO, point_id, point_payload, qdrant_filter, with_ids
from prvr_sdk.scoring import weighted_score

__all__ = ["DEFAULT_CANDIDATES", "FORMAT", "Engine", "QdrantIndex", "Request", "check_meta", "new_meta"]

FORMAT, FORMAT_VERSION = "prvr-qdrant-index", 1
# Engine top-k' per query and term before exact re-scoring (at least top_k). bench/qdrant.py, weighted
# rule, top-10, MaxSim and video-vector lists together: recall@10 is 1.0 from k' = 20 (0.98 at 10), and
# the certificate holds for 87% (500 videos) / 100% (3000 videos) of queries at 20 and for all at 32 --
# so the exact mode ends after one round; the MaxSim list alone needs k' = 64 for recall 1.0.
DEFAULT_CANDIDATES = 32
# How far an engine score may be from the float32 score of the same float16-stored vectors (summation
# order, SIMD): bench/qdrant.py measures < 1e-6 for qdrant_edge; the margin widens the certificate and the
# near-tie window that goes to local re-scoring.
ENGINE_TOLERANCE = 1e-4
_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Request:
    """One engine search: the ``limit`` best points by the named vector, under a filter (JSON form)."""

    using: str
    vector: list  # [D] floats, or [[D floats]] for the clip multivector
    limit: int
    filter: dict[str, Any] | None


class Engine:
    """What a flavour provides: the few Qdrant operations ``QdrantIndex`` needs, on point id strings."""

    exact_search = True  # whether search params may ask for a full scan

    def upsert(self, points: list[tuple[str, dict[str, list], dict[str, Any]]]) -> None:
        raise NotImplementedError

    def delete(self, point_ids: list[str]) -> None:
        raise NotImplementedError

    def existing(self, point_ids: list[str]) -> set[str]:
        raise NotImplementedError

    def query(
        self, requests: list[Request], exact: bool, hnsw_ef: int | None
    ) -> list[list[tuple[str, float]]]:
        """Per request, ``(point id, engine score)`` best first."""
        raise NotImplementedError

    def retrieve(self, point_ids: list[str]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """``{point id: (payload, vectors)}`` for the points that exist."""
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {}


def new_meta(
    dim: int,
    scoring: ScoringRule | Mapping[str, Any] | str,
    bundle_sha256: str | None,
    model: str | None,
    bundle_path: str | None,
) -> dict[str, Any]:
    """The index's own record (dim, rule, bundle binding), after checking the arguments.

    Raises:
        InvalidInputError: like ``ExactIndex``'s constructor.
    """
    from prvr_sdk import __version__

    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise InvalidInputError(f"dim: expected a positive integer, got {dim!r}")
    if bundle_sha256 is not None and (
        not isinstance(bundle_sha256, str) or len(bundle_sha256) != 64 or set(bundle_sha256) - _SHA256_HEX
    ):
        raise InvalidInputError(f"bundle_sha256: expected 64 lowercase hex digits, got {bundle_sha256!r}")
    for name, value in (("model", model), ("bundle_path", bundle_path)):
        if value is not None and not isinstance(value, str):
            raise InvalidInputError(f"{name}: expected a string or None, got {value!r}")
    rule = ScoringRule.parse(scoring)
    if rule.uses_clips and rule.clip_weight <= 0 or rule.kind == "weighted" and rule.frame_weight < 0:
        raise InvalidInputError(
            f"scoring {rule.to_dict()}: the Qdrant index needs a positive clip_weight and a non-negative "
            "frame_weight (the engine ranks by each term); use the exact index for other weights"
        )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"prvr-sdk {__version__}",
        "dim": int(dim),
        "scoring": rule.to_dict(),
        "model": model,
        "bundle_sha256": bundle_sha256,
        "bundle_path": bundle_path,
    }


def check_meta(meta: Any, where: str) -> dict[str, Any]:
    """A stored record, checked (``IndexFormatError`` naming ``where`` otherwise)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexFormatError(f"{where}: not a prvr Qdrant index record (no format {FORMAT!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise IndexFormatError(f"{where}: malformed format_version {version!r:.40}")
    if version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{where}: format_version {version} is newer than this prvr-sdk reads ({FORMAT_VERSION}); upgrade"
        )
    try:
        checked = new_meta(
            meta["dim"],
            meta["scoring"],
            meta.get("bundle_sha256"),
            meta.get("model"),
            meta.get("bundle_path"),
        )
    except KeyError as exc:
        raise IndexFormatError(f"{where}: malformed index record (no key {exc})") from None
    except (InvalidInputError, TypeError) as exc:
        raise IndexFormatError(f"{where}: malformed index record ({exc})") from None
    checked["created_by"] = meta.get("created_by")
    return checked


def _finite(start: float, end: float) -> tuple[float | None, float | None]:
    if math.isnan(start) or math.isnan(end):
        return None, None
    return float(start), float(end)


class QdrantIndex:
    """The ``Index`` protocol on a Qdrant engine; use ``QdrantEdgeIndex`` or ``QdrantRemoteIndex``.

    Attributes:
        dim, scoring, bundle_sha256, model, bundle_path: as ``ExactIndex``.
        search_mode: ``"exact"`` (engine full scans + certificate: results equal ``ExactIndex``) or
            ``"hnsw"`` (engine HNSW, fixed ``candidates``; approximate).
        candidates: engine top-``k'`` per term before exact re-scoring (at least ``top_k``).
    """

    _engine: Engine
    _where: str
    _batch_points = 256

    def _setup(
        self,
        engine: Engine,
        meta: dict[str, Any],
        search: Literal["exact", "hnsw"],
        candidates: int | None,
        hnsw_ef: int | None,
    ) -> None:
        if search not in ("exact", "hnsw"):
            raise InvalidInputError(f"search: expected 'exact' or 'hnsw', got {search!r}")
        for name, value in (("candidates", candidates), ("hnsw_ef", hnsw_ef)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"{name}: expected a positive integer, got {value!r}")
        self._engine = engine
        self.dim = int(meta["dim"])
        self.scoring = ScoringRule.parse(meta["scoring"])
        self.bundle_sha256 = meta.get("bundle_sha256")
        self.model = meta.get("model")
        self.bundle_path = meta.get("bundle_path")
        self._meta = meta
        self.search_mode = search
        self.candidates = candidates or DEFAULT_CANDIDATES
        self.hnsw_ef = hnsw_ef
        self._last_seq = 0

    # ------------------------------------------------------------------ bookkeeping

    def __len__(self) -> int:
        return self._engine.count()

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and bool(self._engine.existing([point_id(video_id)]))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dim={self.dim}, scoring={self.scoring.kind!r}, videos={len(self)}, "
            f"{self._where}, search={self.search_mode!r})"
        )

    def __enter__(self) -> QdrantIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and release the engine (the embedded shard's folder lock; the client's connections)."""
        self._engine.close()

    def info(self) -> dict[str, Any]:
        """Counts and bindings, JSON-ready (like ``ExactIndex.info``)."""
        return {
            "engine": self.engine_name,
            **self._engine.describe(),
            "dim": self.dim,
            "scoring": self.scoring.to_dict(),
            "model": self.model,
            "bundle_sha256": self.bundle_sha256,
            "bundle_path": self.bundle_path,
            "videos": len(self),
            "search": self.search_mode,
            "candidates": self.candidates,
            "hnsw_ef": self.hnsw_ef,
            "format": self._meta.get("format"),
            "format_version": self._meta.get("format_version"),
            "created_by": self._meta.get("created_by"),
        }

    engine_name = "qdrant"

    def check_expected(
        self, bundle_sha256: str | None = None, model: str | None = None, dim: int | None = None
    ) -> None:
        """Refuse an index built for another bundle, model or embedding size than the caller expects.

        Raises:
            IndexMismatchError: naming what differs.
        """
        check_binding(self, f"index {self._where}", bundle_sha256, model, dim)

    def save(self, path: Any = None) -> Any:
        """Make every change durable (the engine already holds them); returns where the index lives.

        Raises:
            InvalidInputError: ``path`` names another place (a Qdrant index cannot be saved elsewhere).
        """
        self._engine.flush()
        return self._location(path)

    def _location(self, path: Any) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ writes

    def add(
        self,
        video_ids: Sequence[str],
        clip_embs: Sequence[np.ndarray] | np.ndarray | None = None,
        video_embs: np.ndarray | None = None,
        spans: Sequence[np.ndarray | None] | np.ndarray | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Add videos (arguments and checks as ``ExactIndex.add``); nothing is written if a check fails.

        Raises:
            InvalidInputError / ShapeMismatchError: as ``ExactIndex.add``, including ids already present.
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
        """Like ``add``, but present ids are replaced (and count as added last, for score ties)."""
        self._add(video_ids, clip_embs, video_embs, spans, metadata, replace=True)

    def _add(self, video_ids, clip_embs, video_embs, spans, metadata, replace: bool) -> None:
        ids = check_ids(video_ids)
        if not ids:
            return
        seg = build_segment(ids, clip_embs, video_embs, spans, metadata, dim=self.dim, scoring=self.scoring)
        pids = [point_id(v) for v in ids]
        if not replace:
            present = self._engine.existing(pids)
            if present:
                already = [v for v, p in zip(ids, pids, strict=True) if p in present]
                raise InvalidInputError(
                    f"video_ids: already in the index: {already[:5]} ({len(already)} in all); remove them "
                    "first or use upsert() (`prvr index add --upsert`)"
                )
        seq0 = max(time.time_ns(), self._last_seq + 1)  # insertion order across processes and reopenings
        self._last_seq = seq0 + len(ids) - 1
        points = []
        for row, (video_id, pid) in enumerate(zip(ids, pids, strict=True)):
            vectors: dict[str, list] = {}
            span_rows = None
            if seg.offsets is not None and seg.clips is not None and seg.spans is not None:
                a, b = int(seg.offsets[row]), int(seg.offsets[row + 1])
                vectors[CLIPS] = seg.clips[a:b].astype(np.float32).tolist()
                span_rows = seg.spans[a:b]
            if seg.video_emb is not None:
                vectors[VIDEO] = seg.video_emb[row].astype(np.float32).tolist()
            points.append(
                (pid, vectors, point_payload(video_id, seq0 + row, seg.metadata_line(row), span_rows))
            )
        for i in range(0, len(points), self._batch_points):
            self._engine.upsert(points[i : i + self._batch_points])

    def remove(self, video_ids: Sequence[str] | str) -> int:
        """Remove videos by id; unknown ids are ignored. Returns how many were removed."""
        ids = [video_ids] if isinstance(video_ids, str) else list(video_ids)
        pids = sorted({point_id(v) for v in ids if isinstance(v, str)})
        present = sorted(self._engine.existing(pids)) if pids else []
        if present:
            self._engine.delete(present)
        return len(present)

    # ------------------------------------------------------------------ search

    def _terms(self) -> list[tuple[str, float]]:
        """The named vectors the engine ranks by, with their weights in the score."""
        rule = self.scoring
        terms = []
        if rule.uses_clips:
            terms.append((CLIPS, rule.clip_weight))
        if rule.kind == "video":
            terms.append((VIDEO, 1.0))
        elif rule.uses_video_emb and rule.frame_weight > 0:
            terms.append((VIDEO, rule.frame_weight))
        return terms

    def search(
        self,
        queries: np.ndarray,
        top_k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
        group_by: Literal["video", "clip"] = "video",
        *,
        min_score: float | None = None,
        candidates: int | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Best videos (or clips) for each query, with the matching moment (as ``ExactIndex.search``).

        Args:
            queries, top_k, filter, group_by, min_score: as ``ExactIndex.search`` (string range bounds in
                filters are refused: Qdrant compares numbers only).
            candidates: engine top-``k'`` for this call (default ``self.candidates``).

        Raises:
            ShapeMismatchError / InvalidInputError: as ``ExactIndex.search``.
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
        if candidates is not None and (
            isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1
        ):
            raise InvalidInputError(f"candidates: expected a positive integer, got {candidates!r}")
        flt = qdrant_filter(filter)
        k = int(top_k)
        start = max(k, candidates or self.candidates)
        results = [self._search_one(row, k, start, flt, by_clip) for row in q]
        if min_score is not None:
            results = [[h for h in hits if h.score >= min_score] for hits in results]
        return results[0] if single else results

    def _search_one(self, q: np.ndarray, k: int, limit: int, flt, by_clip: bool) -> list[Hit]:
        exact = self.search_mode == "exact"
        terms = self._terms()
        vectors = {CLIPS: [q.tolist()], VIDEO: q.tolist()}
        cache: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        while True:
            lists = self._engine.query(
                [Request(name, vectors[name], limit, flt) for name, _ in terms], exact, self.hnsw_ef
            )
            engine_scores = self._fill(lists, terms, vectors, exact)
            complete = any(len(found) < limit for found in lists)
            bound = (
                -math.inf
                if complete
                else sum(w * found[-1][1] for (_, w), found in zip(terms, lists, strict=True))
            )
            ranked = sorted(engine_scores.items(), key=lambda item: -item[1])
            if by_clip:
                top = [pid for pid, _ in ranked[:k]]
                self._fetch(top, cache)
                clip_scores = np.concatenate(
                    [self._rescore(q, cache[p])[1] for p in top if p in cache] or [[]]
                )
                threshold = float(np.sort(clip_scores)[::-1][k - 1]) if len(clip_scores) >= k else -math.inf
            else:
                threshold = ranked[k - 1][1] if len(ranked) >= k else -math.inf
            if not exact or complete or threshold > bound + 2 * ENGINE_TOLERANCE:
                break
            limit *= 4
        chosen = [pid for pid, s in ranked if s >= threshold - 2 * ENGINE_TOLERANCE]
        self._fetch(chosen, cache)
        return self._hits(q, k, [cache[p] for p in chosen if p in cache], by_clip)

    def _fill(self, lists, terms, vectors, exact: bool) -> dict[str, float]:
        """Engine scores of every candidate under the whole rule (missing terms fetched by id)."""
        per_term = [dict(found) for found in lists]
        union = set().union(*per_term)
        requests, which = [], []
        for j, (name, _) in enumerate(terms):
            missing = sorted(union - per_term[j].keys())
            if missing:
                requests.append(Request(name, vectors[name], len(missing), with_ids(None, missing)))
                which.append(j)
        if requests:
            for j, found in zip(which, self._engine.query(requests, exact, self.hnsw_ef), strict=True):
                per_term[j].update(found)
        return {
            pid: sum(w * per_term[j].get(pid, -math.inf) for j, (_, w) in enumerate(terms)) for pid in union
        }

    def _fetch(self, pids: list[str], cache: dict) -> None:
        wanted = [p for p in pids if p not in cache]
        if wanted:
            cache.update(self._engine.retrieve(wanted))

    def _rescore(self, q: np.ndarray, record) -> tuple[float, np.ndarray, float | None]:
        """Local float32 scores of one video: ``(video score, clip scores [Nc] or empty, frame term)``."""
        _, vecs = record
        rule = self.scoring
        frame = None
        if rule.uses_video_emb:
            frame = np.float32(np.asarray(vecs[VIDEO], dtype=np.float32) @ q)
        if not rule.uses_clips:
            return float(frame), np.empty(0, np.float32), frame
        clips = np.asarray(vecs[CLIPS], dtype=np.float32).reshape(-1, self.dim)
        raw = clips @ q
        per_clip = weighted_score(
            raw, None if frame is None else np.full_like(raw, frame), rule.clip_weight, rule.frame_weight
        )
        best = weighted_score(
            raw.max(keepdims=True),
            None if frame is None else np.array([frame]),
            rule.clip_weight,
            rule.frame_weight,
        )
        return float(best[0]), per_clip, frame

    def _hits(self, q: np.ndarray, k: int, records: list, by_clip: bool) -> list[Hit]:
        rows = []  # (score, seq, clip, record)
        for record in records:
            payload, vecs = record
            score, per_clip, _ = self._rescore(q, record)
            seq = int(payload.get("seq", 0))
            if by_clip:
                rows.extend((float(s), seq, c, record) for c, s in enumerate(per_clip.tolist()))
            else:
                clip = int(np.argmax(per_clip)) if per_clip.size else -1
                rows.append((score, seq, clip, record))
        rows.sort(key=lambda r: (-r[0], r[1], r[2]))
        return [self._hit(score, clip, record) for score, _, clip, record in rows[:k]]

    def _hit(self, score: float, clip: int, record) -> Hit:
        payload, _ = record
        try:
            meta = json.loads(payload["metadata"])
            video_id = payload["video_id"]
            spans = json.loads(payload["spans"]) if payload.get("spans") is not None else None
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{self._where}: a point's payload is malformed ({exc})") from None
        if clip >= 0:
            start = end = None
            if isinstance(spans, list) and clip < len(spans):
                start, end = _finite(*spans[clip])
            return Hit(video_id, score, start, end, clip, meta)
        start = end = None
        duration = meta.get("duration")
        if isinstance(duration, int | float) and not isinstance(duration, bool) and duration >= 0:
            start, end = 0.0, float(duration)
        return Hit(video_id, score, start, end, None, meta)
