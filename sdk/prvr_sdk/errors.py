"""Every error prvr-sdk raises on purpose, and the CLI exit code of each.

One module so that callers can catch ``PrvrError`` (or a precise subclass) instead of guessing, and
so that the CLI maps each class to exactly one documented exit code. ``prvr_export`` raises these
same classes. Messages say what was expected, what arrived, and which tensor or file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT_CODES",
    "BackendUnavailableError",
    "BundleError",
    "ChecksumError",
    "IndexConflictError",
    "IndexFormatError",
    "IndexLockedError",
    "IndexMismatchError",
    "InvalidInputError",
    "ParityError",
    "PrvrError",
    "ShapeMismatchError",
    "exit_code_for",
]


class PrvrError(Exception):
    """Base class of every error prvr-sdk raises on purpose; raised directly for no specific cause."""


class BundleError(PrvrError):
    """Raised when an export bundle is missing, malformed, or of an unsupported format version."""


class ChecksumError(BundleError):
    """Raised when a bundle file's sha256 differs from the one recorded in its manifest."""


class ShapeMismatchError(PrvrError, ValueError):
    """Raised when an array or tensor has a shape other than the one the contract expects."""


class InvalidInputError(PrvrError, ValueError):
    """Raised when an argument has a disallowed value (wrong dtype, NaN, unknown keyword, empty batch)."""


class ParityError(PrvrError, ValueError):
    """Raised when a fast op, ONNX graph or engine differs from its reference beyond tolerance."""


class BackendUnavailableError(PrvrError, ImportError):
    """Raised when an optional backend (onnxruntime, tensorrt, mamba-ssm ...) is asked for but missing."""

    def __init__(self, backend: str, extra: str, detail: str | None = None) -> None:
        self.backend = backend
        self.extra = extra
        self.detail = detail
        message = f'backend {backend!r} is not available; install it with: pip install "prvr-sdk[{extra}]"'
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message)

    def __reduce__(self):  # keep the exception picklable (multiprocessing) despite the custom __init__
        return (type(self), (self.backend, self.extra, self.detail))


class IndexMismatchError(PrvrError):
    """Raised when an index was built for another model, bundle or embedding size than the searcher's."""


class IndexLockedError(PrvrError):
    """Raised when another writer holds an index directory's ``LOCK`` file.

    Attributes:
        lock_path: the lock file.
        owner: what the file says about its owner (``pid``, ``host``, ``since``), ``{}`` if unreadable.
    """

    def __init__(
        self, message: str, lock_path: os.PathLike | str = "", owner: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.lock_path = Path(lock_path)
        self.owner = dict(owner or {})

    def __reduce__(self):  # picklable despite the extra arguments
        return (type(self), (str(self), str(self.lock_path), self.owner))


class IndexConflictError(PrvrError):
    """Raised when saving would overwrite changes this object has not seen.

    Either another writer committed a new version after this index was loaded or last saved (reload it
    and apply the changes again), or ``save`` targets a directory holding an unrelated index (pass
    ``overwrite=True`` to replace it).
    """


class IndexFormatError(PrvrError):
    """Raised when a directory is not an index, or an index file is missing, truncated or corrupted."""


# CLI exit codes. 0 is success; 2 is shared with Click's usage errors on purpose (both mean "bad input").
EXIT_CODES: dict[type[BaseException], int] = {
    PrvrError: 1,
    InvalidInputError: 2,
    ShapeMismatchError: 2,
    BackendUnavailableError: 3,
    ParityError: 4,
    BundleError: 5,
    ChecksumError: 5,
    IndexMismatchError: 6,
    IndexFormatError: 5,
    IndexLockedError: 7,
    IndexConflictError: 7,
}


def exit_code_for(exc: BaseException | type[BaseException]) -> int:
    """Exit code for an exception (instance or class): the entry of the nearest class in its MRO.

    Subclasses inherit their parent's code; exceptions outside prvr-sdk get the generic code 1.
    """
    cls = exc if isinstance(exc, type) else type(exc)
    for klass in cls.__mro__:
        if klass in EXIT_CODES:
            return EXIT_CODES[klass]
    return EXIT_CODES[PrvrError]
