"""``QdrantRemoteIndex``: the Qdrant index in a collection of a Qdrant server or cluster (``qdrant-client``).

Same points, payloads, filters and search as the embedded flavour (``translate.py``, ``core.py``); the
server shards, replicates and builds HNSW graphs. The index's record (format, dim, scoring rule, model,
bundle hash) is the collection's own ``metadata`` under the key ``"prvr"``, so it travels with the
collection (snapshots, other clients) and needs no reserved point.

Connecting: ``url=`` (``http://host:6333``; ``"local:PATH"`` or ``":memory:"`` for qdrant-client's
in-process local mode on a folder or in memory: no server, one process at a time, for tests),
the API key from ``api_key=`` or the environment variable ``QDRANT_API_KEY``; or a ready
``client=QdrantClient(...)`` (tests use the local mode, which runs this same code path without a server).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

from prvr_sdk.errors import (
    BackendUnavailableError,
    IndexConflictError,
    IndexFormatError,
    IndexLockedError,
    InvalidInputError,
    PrvrError,
)
from prvr_sdk.index.base import ScoringRule
from prvr_sdk.index.qdrant.core import Engine, QdrantIndex, Request, check_meta, new_meta
from prvr_sdk.index.qdrant.translate import CLIPS, VIDEO

__all__ = ["API_KEY_ENV", "DEFAULT_COLLECTION", "LOCAL_PREFIX", "QdrantRemoteIndex"]

API_KEY_ENV = "QDRANT_API_KEY"
LOCAL_PREFIX = "local:"  # url="local:PATH": qdrant-client's local mode on a folder (no server; tests)
DEFAULT_COLLECTION = "prvr"
_META_KEY = "prvr"


def _import_client():
    try:
        import qdrant_client
        from qdrant_client import models
    except ImportError as exc:
        raise BackendUnavailableError("qdrant-client", "qdrant", str(exc)) from None
    return qdrant_client, models


def _connect(url: str | None, api_key: str | None, client: Any):
    if client is not None:
        return client, False
    if not isinstance(url, str) or not url:
        raise InvalidInputError("Qdrant: expected url='http://host:6333' (or a client=QdrantClient(...))")
    qdrant_client, _ = _import_client()
    if url == ":memory:":
        return qdrant_client.QdrantClient(location=":memory:"), True
    if url.startswith(LOCAL_PREFIX):
        folder = url[len(LOCAL_PREFIX):]
        if not folder:
            raise InvalidInputError(f"Qdrant url {url!r}: expected {LOCAL_PREFIX}PATH (a folder)")
        try:
            return qdrant_client.QdrantClient(path=folder), True
        except RuntimeError as exc:  # "already accessed by another instance of Qdrant client"
            raise IndexLockedError(f"Qdrant local storage {folder} is in use ({exc})", Path(folder)) from None
    if not url.startswith(("http://", "https://")):
        raise InvalidInputError(
            f"Qdrant url {url!r}: expected http(s)://host:port, {LOCAL_PREFIX}PATH (qdrant-client's local "
            "mode, one process, for tests) or ':memory:'"
        )
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    return qdrant_client.QdrantClient(url=url, api_key=key), True


def _vector_params(models, meta: dict[str, Any]) -> dict[str, Any]:
    rule = ScoringRule.parse(meta["scoring"])
    dim, f16, dot = int(meta["dim"]), models.Datatype.FLOAT16, models.Distance.DOT
    params = {}
    if rule.uses_clips:
        params[CLIPS] = models.VectorParams(
            size=dim,
            distance=dot,
            datatype=f16,
            multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
        )
    if rule.uses_video_emb:
        params[VIDEO] = models.VectorParams(size=dim, distance=dot, datatype=f16)
    return params


class _ClientEngine(Engine):
    def __init__(self, client, models, collection: str, owned: bool) -> None:
        self._client, self._models, self._collection, self._owned = client, models, collection, owned

    def upsert(self, points) -> None:
        structs = [self._models.PointStruct(id=p, vector=v, payload=pl) for p, v, pl in points]
        self._client.upsert(self._collection, points=structs, wait=True)

    def delete(self, point_ids: list[str]) -> None:
        selector = self._models.PointIdsList(points=point_ids)
        self._client.delete(self._collection, points_selector=selector, wait=True)

    def existing(self, point_ids: list[str]) -> set[str]:
        records = self._client.retrieve(self._collection, point_ids, with_payload=False, with_vectors=False)
        return {str(r.id) for r in records}

    def query(self, requests: list[Request], exact: bool, hnsw_ef: int | None):
        m = self._models
        params = m.SearchParams(exact=exact, hnsw_ef=hnsw_ef)
        batch = [
            m.QueryRequest(
                query=r.vector,
                using=r.using,
                limit=r.limit,
                params=params,
                with_payload=False,
                with_vector=False,
                filter=None if r.filter is None else m.Filter.model_validate(r.filter),
            )
            for r in requests
        ]
        with warnings.catch_warnings():  # the local mode says it always scans (what exact asks anyway)
            warnings.filterwarnings("ignore", message="Local mode performs exact")
            found = self._client.query_batch_points(self._collection, batch)
        return [[(str(p.id), float(p.score)) for p in res.points] for res in found]

    def retrieve(self, point_ids: list[str]):
        records = self._client.retrieve(self._collection, point_ids, with_payload=True, with_vectors=True)
        return {str(r.id): (r.payload or {}, r.vector or {}) for r in records}

    def count(self) -> int:
        return int(self._client.count(self._collection, exact=True).count)

    def close(self) -> None:
        if self._owned:
            self._client.close()

    def describe(self) -> dict[str, Any]:
        return {"collection": self._collection}


def _read_meta(client, collection: str, where: str) -> dict[str, Any]:
    try:
        exists = client.collection_exists(collection)
    except Exception as exc:  # connection refused, TLS, auth: the client raises many kinds
        raise PrvrError(f"cannot reach Qdrant for {where} ({type(exc).__name__}: {exc})") from None
    if not exists:
        raise IndexFormatError(f"{where}: no such collection")
    config = client.get_collection(collection).config
    raw = (getattr(config, "metadata", None) or {}).get(_META_KEY)
    if raw is None:
        raise IndexFormatError(f"{where}: the collection is not a prvr index (no metadata {_META_KEY!r})")
    return check_meta(raw, where)


class QdrantRemoteIndex(QdrantIndex):
    """A new prvr index in a new collection of a Qdrant server or cluster (``load`` opens one).

    Args:
        dim, scoring, bundle_sha256, model, bundle_path: as ``ExactIndex``.
        url: the server (``http://host:6333``), ``"local:PATH"`` (local mode on a folder) or
            ``":memory:"``; the API key comes from ``api_key`` or ``$QDRANT_API_KEY``.
        collection: the collection's name (default ``"prvr"``); it must not exist yet.
        client: a ``qdrant_client.QdrantClient`` to use instead of ``url`` (not closed by ``close``).
        search, candidates, hnsw_ef: as ``QdrantEdgeIndex``.
        shard_number, replication_factor: passed to ``create_collection`` (a cluster's layout).

    Raises:
        BackendUnavailableError: ``qdrant-client`` is not installed (extra ``qdrant``).
        IndexConflictError: the collection exists.
    """

    engine_name = "qdrant"
    _batch_points = 64  # ~8 MB of JSON per request at 32 clips x 384 floats; servers cap requests at 32 MB

    def __init__(
        self,
        dim: int,
        scoring: ScoringRule | dict[str, Any] | str,
        bundle_sha256: str | None = None,
        model: str | None = None,
        bundle_path: str | None = None,
        *,
        url: str | None = None,
        collection: str = DEFAULT_COLLECTION,
        api_key: str | None = None,
        client: Any = None,
        search: Literal["exact", "hnsw"] = "exact",
        candidates: int | None = None,
        hnsw_ef: int | None = None,
        shard_number: int | None = None,
        replication_factor: int | None = None,
    ) -> None:
        meta = new_meta(dim, scoring, bundle_sha256, model, bundle_path)
        _, models = _import_client()
        client, owned = _connect(url, api_key, client)
        where = f"collection {collection!r}" + (f" at {url}" if url else "")
        try:
            exists = client.collection_exists(collection)
        except Exception as exc:
            raise PrvrError(f"cannot reach Qdrant for {where} ({type(exc).__name__}: {exc})") from None
        if exists:
            raise IndexConflictError(f"{where} already exists; open it with QdrantRemoteIndex.load")
        client.create_collection(
            collection,
            vectors_config=_vector_params(models, meta),
            metadata={_META_KEY: meta},
            shard_number=shard_number,
            replication_factor=replication_factor,
        )
        stored = getattr(client.get_collection(collection).config, "metadata", None) or {}
        if stored.get(_META_KEY) != meta:  # servers before collection metadata (1.16) drop it silently
            client.delete_collection(collection)
            raise PrvrError(
                f"{where}: the server did not keep the collection's metadata, where the index records its "
                "bundle and scoring rule; use Qdrant 1.16 or newer"
            )
        self._url, self._collection, self._where = url, collection, where
        self._setup(_ClientEngine(client, models, collection, owned), meta, search, candidates, hnsw_ef)

    @classmethod
    def load(
        cls,
        url: str | None = None,
        *,
        collection: str = DEFAULT_COLLECTION,
        api_key: str | None = None,
        client: Any = None,
        bundle_sha256: str | None = None,
        model: str | None = None,
        dim: int | None = None,
        search: Literal["exact", "hnsw"] = "exact",
        candidates: int | None = None,
        hnsw_ef: int | None = None,
    ) -> QdrantRemoteIndex:
        """Open the prvr index in ``collection``.

        Raises:
            IndexFormatError: no such collection, or one without a (well-formed) prvr record.
            IndexMismatchError: ``bundle_sha256``, ``model`` or ``dim`` differ from the index's.
            PrvrError: the server cannot be reached.
        """
        _, models = _import_client()
        client, owned = _connect(url, api_key, client)
        where = f"collection {collection!r}" + (f" at {url}" if url else "")
        meta = _read_meta(client, collection, where)
        self = cls.__new__(cls)
        self._url, self._collection, self._where = url, collection, where
        self.dim, self.model, self.bundle_sha256 = meta["dim"], meta["model"], meta["bundle_sha256"]
        try:
            self.check_expected(bundle_sha256, model, dim)
        except PrvrError:
            if owned:
                client.close()
            raise
        self._setup(_ClientEngine(client, models, collection, owned), meta, search, candidates, hnsw_ef)
        return self

    @classmethod
    def status(
        cls, url: str | None = None, *, collection: str = DEFAULT_COLLECTION, api_key: str | None = None,
        client: Any = None,
    ) -> Literal["absent", "prvr", "other"]:
        """Whether ``collection`` is absent, holds a prvr index (its record says so), or holds anything else
        (no record, or a malformed one): what ``prvr index build --overwrite`` asks before replacing it.

        Raises:
            PrvrError: the server cannot be reached.
        """
        _import_client()
        client, owned = _connect(url, api_key, client)
        where = f"collection {collection!r}" + (f" at {url}" if url else "")
        try:
            _read_meta(client, collection, where)
            return "prvr"
        except IndexFormatError:
            return "other" if client.collection_exists(collection) else "absent"
        finally:
            if owned:
                client.close()

    @classmethod
    def drop(
        cls, url: str | None = None, *, collection: str = DEFAULT_COLLECTION, api_key: str | None = None,
        client: Any = None,
    ) -> bool:
        """Delete ``collection`` if it holds a prvr index; ``False`` when there is no such collection.

        Raises:
            IndexFormatError: the collection exists but is not a prvr index (left alone).
            PrvrError: the server cannot be reached.
        """
        _import_client()
        client, owned = _connect(url, api_key, client)
        where = f"collection {collection!r}" + (f" at {url}" if url else "")
        try:
            try:
                _read_meta(client, collection, where)
            except IndexFormatError as exc:
                if not client.collection_exists(collection):
                    return False
                raise IndexFormatError(f"{exc}; not deleting it") from None
            client.delete_collection(collection)
            return True
        finally:
            if owned:
                client.close()

    @property
    def collection(self) -> str:
        return self._collection

    def _location(self, path: Any) -> str:
        if path is not None and path != self._collection:
            raise InvalidInputError(
                f"save: a remote Qdrant index lives in its collection ({self._collection!r}); "
                f"it cannot be saved to {path!r}"
            )
        return self._collection
