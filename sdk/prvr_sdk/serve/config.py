"""What a ``prvr serve`` worker needs to start: the bundle, the index, the backend, and the request limits.

A plain dataclass that round-trips through JSON, because uvicorn starts each extra worker as a fresh
process that rebuilds the app from an import string: the parent puts the config in an environment variable
(``ENV_VAR``) and every worker reads it back (``ServeConfig.from_env``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from prvr_sdk.errors import InvalidInputError

__all__ = ["ENV_VAR", "ServeConfig", "ServeLimits"]

ENV_VAR = "PRVR_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeLimits:
    """Per-request bounds, so that one client cannot make a worker allocate or compute without limit.

    Attributes:
        max_batch: queries (sentences, feature arrays or embeddings) per request.
        max_query_chars: characters per sentence (the model reads only its first few dozen word pieces;
            longer texts are almost always a client bug).
        max_top_k: hits per query.
        max_body_bytes: size of a request body, checked before it is parsed (embeddings and features
            arrive as JSON numbers: 64 queries x 384 floats is about 0.5 MB).
    """

    max_batch: int = 64
    max_query_chars: int = 1000
    max_top_k: int = 1000
    max_body_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name}: expected a positive integer, got {value!r}")


@dataclass(frozen=True)
class ServeConfig:
    """How to open the service's Retriever and index (``SearchService.open``).

    Attributes:
        bundle: the bundle directory.
        index: the index directory (built with that bundle).
        backend / device / precision: as for ``Retriever.from_bundle``.
        trusted_keys: Ed25519 public key files; when given the bundle must be signed by one of them.
        limits: ``ServeLimits``.
        reload_interval: seconds between two looks at the index's ``CURRENT`` pointer (0: every request).
        batch_queries: most queries of overlapping requests searched in one pass (``serve.batching``);
            0 searches each request alone, in its own thread.
    """

    bundle: str
    index: str
    backend: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    trusted_keys: tuple[str, ...] = ()
    limits: ServeLimits = field(default_factory=ServeLimits)
    reload_interval: float = 1.0
    batch_queries: int = 64

    def __post_init__(self) -> None:
        batch = self.batch_queries
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
            raise InvalidInputError(f"batch_queries: expected an integer >= 0, got {batch!r}")
        interval = self.reload_interval
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 <= interval < 1e6:
            raise InvalidInputError(f"reload_interval: expected seconds >= 0, got {interval!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        try:
            data: dict[str, Any] = json.loads(text)
            limits = ServeLimits(**data.pop("limits", {}))
            data["trusted_keys"] = tuple(data.get("trusted_keys") or ())
            return cls(limits=limits, **data)
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise InvalidInputError(f"{ENV_VAR}: not a prvr serve config ({exc})") from None

    @classmethod
    def from_env(cls) -> ServeConfig:
        text = os.environ.get(ENV_VAR)
        if not text:
            raise InvalidInputError(f"{ENV_VAR} is not set; start workers with `prvr serve`")
        return cls.from_json(text)
