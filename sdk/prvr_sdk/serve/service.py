"""``SearchService``: what ``prvr serve`` does per request, without the web framework.

Request fields in, JSON-ready dicts out, ``prvr_sdk.errors`` raised for bad input (the HTTP layer maps
them with ``status_for``). A search is ``Retriever.search`` split in its two steps -- ``encode_text`` then
``ExactIndex.search`` -- so that the index comes from ``LiveIndex`` (one snapshot per request) instead of
the Retriever's attribute, which a reload would change under concurrent requests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.index import ExactIndex
from prvr_sdk.index.filters import compile_filter
from prvr_sdk.retriever import Retriever
from prvr_sdk.serve.batching import Coalescer
from prvr_sdk.serve.config import ServeConfig, ServeLimits
from prvr_sdk.serve.errors import LimitError
from prvr_sdk.serve.live import LiveIndex

__all__ = ["SearchService"]

_SOURCES = ("query", "features", "embedding")


class SearchService:
    """A Retriever plus a ``LiveIndex`` under ``ServeLimits``. Build it with ``SearchService.open``.

    Thread-safe for concurrent ``search`` / ``encode_text`` calls (ONNX Runtime sessions and
    ``ExactIndex.search`` are; the index reference is swapped atomically).
    """

    def __init__(
        self, retriever: Retriever, live: LiveIndex, limits: ServeLimits | None = None,
        config: ServeConfig | None = None,
    ) -> None:
        self.retriever = retriever
        self.live = live
        self.limits = limits or ServeLimits()
        self.config = config
        batch = 64 if config is None else config.batch_queries
        self.coalescer = Coalescer(batch) if batch > 0 else None

    @classmethod
    def open(cls, config: ServeConfig) -> SearchService:
        """Load the bundle (verified; signed by ``trusted_keys`` when given) and the index built with it.

        Raises:
            BundleError / ChecksumError / IndexFormatError: a missing or corrupt bundle or index.
            IndexMismatchError: the index was built with another bundle.
            BackendUnavailableError / InvalidInputError: as ``Retriever.from_bundle``.
        """
        retriever = Retriever.from_bundle(
            config.bundle, backend=config.backend, device=config.device, precision=config.precision,  # type: ignore[arg-type]
            trusted_keys=list(config.trusted_keys) or None,
        ).open()  # every graph now: no request pays for opening one, and a broken graph fails the start

        def open_index(path: os.PathLike) -> ExactIndex:
            return ExactIndex.load(path, bundle_sha256=retriever.bundle_sha256, dim=retriever.dim)

        live = LiveIndex(config.index, open_index, config.reload_interval)
        return cls(retriever, live, config.limits, config)

    # ------------------------------------------------------------------ checks
    def _check_count(self, n: int, what: str) -> None:
        if n == 0:
            raise InvalidInputError(f"{what}: no queries given (an empty list)")
        if n > self.limits.max_batch:
            raise LimitError(
                f"{what}: {n} queries in one request; this server takes at most {self.limits.max_batch} "
                "(--max-batch): split the batch"
            )

    def _texts(self, query: str | Sequence[str]) -> list[str]:
        texts = [query] if isinstance(query, str) else list(query)
        self._check_count(len(texts), "query")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"query {i}: expected a string, got {type(text).__name__}")
            if len(text) > self.limits.max_query_chars:
                raise LimitError(
                    f"query {i}: {len(text)} characters; this server takes at most "
                    f"{self.limits.max_query_chars} (--max-query-chars)"
                )
        return texts

    def _features(self, features: Sequence[Any]) -> list[np.ndarray]:
        self._check_count(len(features), "features")
        arrays = []
        for i, item in enumerate(features):
            try:
                arrays.append(np.asarray(item, dtype=np.float32))
            except (ValueError, TypeError):
                raise ShapeMismatchError(
                    f"features {i}: not a rectangular array of numbers (token features are [Lq, Dq] rows "
                    "of equal length)"
                ) from None
        return arrays

    def _embeddings(self, embedding: Sequence[Any]) -> np.ndarray:
        try:
            emb = np.asarray(embedding, dtype=np.float32)
        except (ValueError, TypeError):
            raise ShapeMismatchError("embedding: not a rectangular array of numbers") from None
        if emb.ndim == 1:
            emb = emb[None, :]
        if emb.ndim != 2 or emb.shape[1] != self.retriever.dim:
            raise ShapeMismatchError(
                f"embedding: expected [{self.retriever.dim}] or [N, {self.retriever.dim}] unit vectors (this "
                f"bundle's embedding size), got shape {list(np.shape(embedding))}"
            )
        self._check_count(len(emb), "embedding")
        return emb

    def _check_top_k(self, top_k: int) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidInputError(f"top_k: expected a positive integer, got {top_k!r}")
        if top_k > self.limits.max_top_k:
            raise LimitError(
                f"top_k: {top_k} is above this server's limit of {self.limits.max_top_k} (--max-top-k)",
                status=422,
            )

    def _encode(
        self, query: Any, features: Any, embedding: Any, allowed: tuple[str, ...] = _SOURCES
    ) -> tuple[list[str | None], np.ndarray]:
        """``(texts, [N, D] embeddings)`` from exactly one of the query sources."""
        given = {k: v for k, v in zip(_SOURCES, (query, features, embedding), strict=True) if v is not None}
        if len(given) != 1 or next(iter(given)) not in allowed:
            names = " and ".join(f"'{name}'" for name in allowed)
            raise InvalidInputError(f"give exactly one of {names} (got {sorted(given) or 'none'})")
        if query is not None:
            texts: list[str | None] = list(self._texts(query))
            emb = self.retriever.encode_text(texts, show_progress=False)
        elif features is not None:
            arrays = self._features(features)
            texts = [None] * len(arrays)
            emb = self.retriever.encode_text(arrays, show_progress=False)
        else:
            emb = self._embeddings(embedding)
            texts = [None] * len(emb)
        return texts, np.atleast_2d(emb)

    # ------------------------------------------------------------------ requests
    def search(
        self,
        query: str | Sequence[str] | None = None,
        features: Sequence[Any] | None = None,
        embedding: Sequence[Any] | None = None,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: str = "video",
        min_score: float | None = None,
    ) -> dict[str, Any]:
        """Hits (with moments) for one or more queries; always one result per query, in order.

        Args:
            query: a sentence or a list of sentences (bundles with a text front end).
            features: backbone features, one entry per query (``[Dq]`` for sentence models, ``[Lq, Dq]``
                for token models): bundles without a text front end, like ``prvr search --query-features``.
            embedding: query embeddings ``[D]`` or ``[N, D]`` (unit vectors from ``/encode_text``).
            top_k / filter / group_by / min_score: as ``Retriever.search``.

        Raises:
            InvalidInputError / ShapeMismatchError: bad input (message as the CLI's).
            LimitError: over a ``ServeLimits`` bound.
        """
        self._check_top_k(top_k)
        if filter is not None:
            compile_filter(filter)  # a bad filter fails before any encoding work
        texts, emb = self._encode(query, features, embedding)
        index, version = self.live.snapshot()
        if self.coalescer is not None:  # overlapping requests share one pass over the clips
            found = self.coalescer.search(index, emb, top_k, filter, group_by, min_score)
        else:
            found = index.search(emb, top_k=top_k, filter=filter, group_by=group_by, min_score=min_score)  # type: ignore[arg-type]
        return {
            "model": self.retriever.model_name,
            "index_version": version,
            "results": [
                {"query_index": i, "query": text, "hits": [hit.to_dict() for hit in hits]}
                for i, (text, hits) in enumerate(zip(texts, found, strict=True))
            ],
        }

    def encode_text(
        self, queries: str | Sequence[str] | None = None, features: Sequence[Any] | None = None
    ) -> dict[str, Any]:
        """Unit query embeddings ``[N, D]`` (one row per query, also for a single string)."""
        _, emb = self._encode(queries, features, None, allowed=("query", "features"))
        return {"model": self.retriever.model_name, "dim": self.retriever.dim, "embeddings": emb.tolist()}

    def health(self) -> dict[str, Any]:
        """Cheap liveness: the live index version (looking for a newer one, as a search does)."""
        _, version = self.live.snapshot()
        return {"status": "ok", "index_version": version, "pid": os.getpid()}

    def info(self) -> dict[str, Any]:
        """Bundle, index, backend and limits, JSON-ready."""
        from prvr_sdk import __version__

        r = self.retriever
        index, _ = self.live.snapshot()
        details = index.info()
        return {
            "prvr_sdk": __version__,
            "pid": os.getpid(),
            "bundle": {
                "path": str(Path(r.bundle.path).resolve()),
                "manifest_sha256": r.manifest.get("manifest_sha256"),
                "embedding_space": r.bundle_sha256,
                "model": r.model_name,
                "dataset": r.manifest.get("model", {}).get("dataset"),
                "precision": r.precision,
            },
            "index": {
                **self.live.status(),
                "clips": details["clips"],
                "segments": details["segments"],
                "scoring": details["scoring"],
            },
            "backend": {
                "backend": r.choice.backend,
                "device": r.choice.device,
                "provider": r.provider,
                "reason": r.choice.reason,
            },
            "dim": r.dim,
            "text": {
                "accepts_strings": r.accepts_strings, "kind": r.text_spec.kind, "feature_dim": r.text_spec.dim
            },
            "limits": asdict(self.limits),
            "reload_interval": self.live.interval,
            "batching": None if self.coalescer is None else {
                "max_queries": self.coalescer.max_queries,
                "passes": self.coalescer.batches,
                "requests": self.coalescer.requests,
            },
        }
