"""The index on Qdrant: embedded (``QdrantEdgeIndex``, ``qdrant_edge``) or a server/cluster
(``QdrantRemoteIndex``, ``qdrant-client``), over one translation layer (docs/architecture.md §4).

* ``translate.py`` -- point ids, payloads and filters in Qdrant's JSON terms (no qdrant import);
* ``core.py``      -- ``QdrantIndex``: add/upsert/remove, the two-stage search (engine candidates, certified
  bound, local exact re-scoring and the winning clip), hits;
* ``edge.py``, ``remote.py`` -- the two engines and where each keeps the index's record.

Importing this package imports no Qdrant library: that happens when an index is created or opened, and a
missing one raises ``BackendUnavailableError`` naming the extra (``pip install "prvr-sdk[qdrant]"``).
"""

from __future__ import annotations

from prvr_sdk.index.qdrant.core import DEFAULT_CANDIDATES, QdrantIndex
from prvr_sdk.index.qdrant.edge import QdrantEdgeIndex
from prvr_sdk.index.qdrant.remote import API_KEY_ENV, QdrantRemoteIndex

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_CANDIDATES",
    "QdrantEdgeIndex",
    "QdrantIndex",
    "QdrantRemoteIndex",
    "require_engine",
]


def require_engine(engine: str) -> None:
    """Import the library ``engine`` (``"qdrant-edge"`` or ``"qdrant"``) needs now, so that a command fails
    before its long work rather than after.

    Raises:
        BackendUnavailableError: not installed (names ``pip install "prvr-sdk[qdrant]"``).
    """
    from prvr_sdk.index.qdrant.edge import _import_edge
    from prvr_sdk.index.qdrant.remote import _import_client

    (_import_edge if engine == "qdrant-edge" else _import_client)()
