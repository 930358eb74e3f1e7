"""Indexes of video embeddings: the exact on-disk index today, engine adapters later.

Format: docs/architecture.md §4.

* ``ExactIndex``  -- exact max-over-clips search over float16 clip matrices, memory-mapped, with atomic
  versioned saves, a writer lock, metadata filters and the winning clip's time span (``exact.py``);
* ``Index``       -- the protocol adapters implement (``base.py``); ``ScoringRule`` -- how a query and a
  video's vectors make a score;
* input checks that make a segment (``ingest.py``), saving/loading/verifying versions (``persist.py``);
* filters (``filters.py``), the lock and its errors (``locking.py``), the on-disk format (``store.py``);
* ``QdrantEdgeIndex`` / ``QdrantRemoteIndex`` -- the same protocol on Qdrant, embedded or a server
  (``qdrant/``), exported lazily: the package loads on first use of a name, a Qdrant library only when
  an index is created or opened.

numpy only: nothing here imports torch.
"""

from __future__ import annotations

from prvr_sdk.index.base import NORM_TOLERANCE, Index, ScoringRule, check_vectors
from prvr_sdk.index.exact import ExactIndex
from prvr_sdk.index.filters import Filter, compile_filter
from prvr_sdk.index.locking import IndexConflictError, IndexLockedError, break_lock
from prvr_sdk.index.store import IndexFormatError

__all__ = [
    "NORM_TOLERANCE",
    "ExactIndex",
    "Filter",
    "Index",
    "IndexConflictError",
    "IndexFormatError",
    "IndexLockedError",
    "ScoringRule",
    "break_lock",
    "check_vectors",
    "compile_filter",
]

_QDRANT_NAMES = ("QdrantEdgeIndex", "QdrantIndex", "QdrantRemoteIndex")


def __getattr__(name: str):
    if name in _QDRANT_NAMES:
        from prvr_sdk.index import qdrant

        return getattr(qdrant, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
