"""``QdrantEdgeIndex``: the Qdrant index embedded in this process (``qdrant_edge``), in one folder.

Qdrant's own storage engine as a Python wheel, no server: the one-machine option for indexes larger than
RAM (vectors and payloads are memory-mapped from disk). Folder layout::

    DIR/prvr-qdrant.json   the index's record: format, dim, scoring rule, model, bundle hash (written last,
                           atomically; without it the folder is not an index)
    DIR/shard/             the Qdrant Edge shard (segments, write-ahead log)

Only one process may open the folder at a time (the shard locks its write-ahead log): a second one gets
``IndexLockedError``, readers included.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from prvr_sdk.errors import (
    BackendUnavailableError,
    IndexConflictError,
    IndexFormatError,
    IndexLockedError,
    InvalidInputError,
)
from prvr_sdk.fsutil import atomic_write
from prvr_sdk.index import store
from prvr_sdk.index.base import ScoringRule
from prvr_sdk.index.qdrant.core import Engine, QdrantIndex, Request, check_meta, new_meta
from prvr_sdk.index.qdrant.translate import CLIPS, VIDEO

__all__ = ["RECORD", "SHARD", "QdrantEdgeIndex"]

RECORD, SHARD = "prvr-qdrant.json", "shard"
_RECORD_MAX_BYTES = 1 << 20


def _import_edge():
    try:
        import qdrant_edge
    except ImportError as exc:
        raise BackendUnavailableError("qdrant-edge", "qdrant", str(exc)) from None
    return qdrant_edge


def _edge_config(qe, meta: dict[str, Any], hnsw: dict[str, int] | None):
    rule = ScoringRule.parse(meta["scoring"])
    dim, f16 = int(meta["dim"]), qe.VectorStorageDatatype.Float16
    vectors = {}
    if rule.uses_clips:
        vectors[CLIPS] = qe.EdgeVectorParams(
            dim,
            qe.Distance.Dot,
            datatype=f16,
            multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
        )
    if rule.uses_video_emb:
        vectors[VIDEO] = qe.EdgeVectorParams(dim, qe.Distance.Dot, datatype=f16)
    hnsw_config = None
    if hnsw:
        hnsw_config = qe.HnswIndexConfig(
            m=hnsw.get("m", 16),
            ef_construct=hnsw.get("ef_construct", 100),
            full_scan_threshold=hnsw.get("full_scan_threshold", 10_000),
        )
    return qe.EdgeConfig(vectors=vectors, hnsw_config=hnsw_config)


def _filter(qe, spec: dict[str, Any] | None):
    """A filter in Qdrant's JSON form (``translate.py``) as ``qdrant_edge`` objects."""
    if spec is None:
        return None

    def condition(c: dict[str, Any]):
        if "has_id" in c:
            return qe.HasIdCondition(set(c["has_id"]))
        if "match" in c:
            return qe.FieldCondition(c["key"], match=qe.MatchValue(c["match"]["value"]))
        if "range" in c:
            return qe.FieldCondition(c["key"], range=qe.RangeFloat(**c["range"]))
        return build(c)

    def build(f: dict[str, Any]):
        parts = {
            part: [condition(c) for c in f[part]] for part in ("must", "should", "must_not") if part in f
        }
        return qe.Filter(**parts)

    return build(spec)


class _EdgeEngine(Engine):
    def __init__(self, qe, shard, where: str) -> None:
        self._qe, self._shard, self._where = qe, shard, where

    def _live(self):
        if self._shard is None:
            raise InvalidInputError(f"index {self._where} is closed; load it again")
        return self._shard

    def upsert(self, points) -> None:
        qe = self._qe
        self._live().update(qe.UpdateOperation.upsert_points([qe.Point(p, v, pl) for p, v, pl in points]))

    def delete(self, point_ids: list[str]) -> None:
        self._live().update(self._qe.UpdateOperation.delete_points(point_ids))

    def existing(self, point_ids: list[str]) -> set[str]:
        records = self._live().retrieve(point_ids, with_payload=False, with_vector=False)
        return {str(r.id) for r in records}

    def query(self, requests: list[Request], exact: bool, hnsw_ef: int | None):
        qe = self._qe
        params = qe.SearchParams(hnsw_ef=hnsw_ef, exact=exact)
        batch = qe.QueryBatchRequest(
            [
                qe.QueryRequest(
                    limit=r.limit,
                    query=qe.Query.Nearest(r.vector, using=r.using),
                    filter=_filter(qe, r.filter),
                    params=params,
                    with_payload=False,
                    with_vector=False,
                )
                for r in requests
            ]
        )
        return [[(str(p.id), float(p.score)) for p in found] for found in self._live().query_batch(batch)]

    def retrieve(self, point_ids: list[str]):
        records = self._live().retrieve(point_ids, with_payload=True, with_vector=True)
        return {str(r.id): (r.payload or {}, r.vector or {}) for r in records}

    def count(self) -> int:
        return int(self._live().count(self._qe.CountRequest(exact=True)))

    def flush(self) -> None:
        self._live().flush()

    def close(self) -> None:
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None

    def describe(self) -> dict[str, Any]:
        info = self._live().info()
        return {
            "path": self._where,
            "segments": info.segments_count,
            "indexed_vectors": info.indexed_vectors_count,
        }

    def optimize(self) -> bool:
        return bool(self._live().optimize())


def _open_shard(qe, folder: Path, config):
    try:
        return qe.EdgeShard.load(str(folder), config)
    except Exception as exc:  # the bindings raise plain Exception with the engine's message
        text = str(exc)
        if "WouldBlock" in text or "lock" in text.lower():
            raise IndexLockedError(
                f"index {folder.parent} is open in another process (Qdrant Edge locks its folder: {text})",
                folder / "wal",
            ) from None
        raise IndexFormatError(f"index {folder.parent}: Qdrant Edge cannot open its shard ({text})") from None


class QdrantEdgeIndex(QdrantIndex):
    """A new embedded Qdrant index in folder ``path`` (``load`` opens an existing one).

    Args:
        path: a folder that does not exist or is empty.
        dim, scoring, bundle_sha256, model, bundle_path: as ``ExactIndex``.
        search: ``"exact"`` (default; results equal ``ExactIndex``) or ``"hnsw"`` (approximate, after
            ``optimize()`` built the graph).
        candidates: engine top-``k'`` per term before exact re-scoring (``core.DEFAULT_CANDIDATES``).
        hnsw_ef: HNSW search breadth (``search="hnsw"``).
        hnsw: HNSW build settings ``{"m", "ef_construct", "full_scan_threshold"}`` (Qdrant's defaults).

    Raises:
        BackendUnavailableError: ``qdrant-edge-py`` is not installed (extra ``qdrant``).
        IndexConflictError: ``path`` already holds an index. InvalidInputError: ``path`` holds other files.
    """

    engine_name = "qdrant-edge"

    def __init__(
        self,
        path: str | os.PathLike,
        dim: int,
        scoring: ScoringRule | dict[str, Any] | str,
        bundle_sha256: str | None = None,
        model: str | None = None,
        bundle_path: str | None = None,
        *,
        search: Literal["exact", "hnsw"] = "exact",
        candidates: int | None = None,
        hnsw_ef: int | None = None,
        hnsw: dict[str, int] | None = None,
    ) -> None:
        meta = new_meta(dim, scoring, bundle_sha256, model, bundle_path)
        qe = _import_edge()
        root = Path(path).absolute()
        if (root / RECORD).exists():
            raise IndexConflictError(
                f"{root} already holds a Qdrant index; open it with QdrantEdgeIndex.load"
            )
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise InvalidInputError(f"{root}: expected a new or empty folder for the Qdrant index")
        shard = qe.EdgeShard.create(str(root / SHARD), _edge_config(qe, meta, hnsw))
        atomic_write(root / RECORD, json.dumps(meta, indent=1, sort_keys=True) + "\n", fsync=True)
        self._root = root
        self._where = str(root)
        self._setup(_EdgeEngine(qe, shard, str(root)), meta, search, candidates, hnsw_ef)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        bundle_sha256: str | None = None,
        model: str | None = None,
        dim: int | None = None,
        search: Literal["exact", "hnsw"] = "exact",
        candidates: int | None = None,
        hnsw_ef: int | None = None,
    ) -> QdrantEdgeIndex:
        """Open the index in ``path``.

        Raises:
            IndexFormatError: no record, a malformed record, or a shard that does not fit it.
            IndexMismatchError: ``bundle_sha256``, ``model`` or ``dim`` differ from the index's.
            IndexLockedError: another process has the folder open.
        """
        root = Path(path).absolute()
        record = root / RECORD
        try:
            raw = store.read_json(record, max_bytes=_RECORD_MAX_BYTES)
        except FileNotFoundError:
            raise IndexFormatError(f"{root} is not a Qdrant index (no {RECORD})") from None
        meta = check_meta(raw, str(record))
        self = cls.__new__(cls)
        self._root, self._where = root, str(root)
        self.dim, self.model, self.bundle_sha256 = meta["dim"], meta["model"], meta["bundle_sha256"]
        self.check_expected(bundle_sha256, model, dim)
        qe = _import_edge()
        shard = _open_shard(qe, root / SHARD, _edge_config(qe, meta, None))
        self._setup(_EdgeEngine(qe, shard, str(root)), meta, search, candidates, hnsw_ef)
        return self

    @property
    def path(self) -> Path:
        return self._root

    def _location(self, path: Any) -> Path:
        if path is not None and Path(path).absolute() != self._root:
            raise InvalidInputError(
                f"save: a Qdrant Edge index lives in its folder ({self._root}); it cannot be saved to {path}"
            )
        return self._root

    def optimize(self) -> bool:
        """Run Qdrant's optimizers now (merges segments, builds the HNSW graph); True if anything changed."""
        return self._engine.optimize()  # type: ignore[attr-defined]
