"""HTTP status for each ``prvr_sdk.errors`` class, so a client gets the CLI's message with a fitting code.

One table, like ``EXIT_CODES``: the nearest class in an exception's MRO wins. Bad input is 400 (the
request's content: a bad filter, strings for a bundle without a text front end, wrong vector sizes);
requests that fail the schema itself are 422 (FastAPI's own validation); a request over a configured
limit is 413 (too many queries, too long a sentence, too large a body) or 422 (``top_k``); an index that
does not belong to the bundle is 409; everything else is the server's problem (500, 503 for a missing
backend).
"""

from __future__ import annotations

from prvr_sdk.errors import (
    BackendUnavailableError,
    BundleError,
    IndexConflictError,
    IndexFormatError,
    IndexLockedError,
    IndexMismatchError,
    InvalidInputError,
    PrvrError,
    ShapeMismatchError,
)

__all__ = ["HTTP_STATUS", "LimitError", "status_for"]


class LimitError(InvalidInputError):
    """A request over one of the server's limits (``ServeLimits``); ``status`` is 413 or 422.

    A subclass of ``InvalidInputError``, so outside HTTP it is ordinary bad input (exit code 2).
    """

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # picklable despite the extra argument
        return (type(self), (str(self), self.status))


HTTP_STATUS: dict[type[BaseException], int] = {
    PrvrError: 500,
    InvalidInputError: 400,
    ShapeMismatchError: 400,
    IndexMismatchError: 409,
    IndexLockedError: 409,
    IndexConflictError: 409,
    BackendUnavailableError: 503,
    BundleError: 500,
    IndexFormatError: 500,
}


def status_for(exc: BaseException) -> int:
    """HTTP status for ``exc``: its own ``status`` for a ``LimitError``, else the nearest class's entry."""
    if isinstance(exc, LimitError):
        return exc.status
    for klass in type(exc).__mro__:
        if klass in HTTP_STATUS:
            return HTTP_STATUS[klass]
    return 500
