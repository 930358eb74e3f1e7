"""``prvr serve``: the Retriever and an exact index behind HTTP, for applications.

FastAPI on uvicorn, because it gives the OpenAPI schema and the ``/docs`` page for free and validates
request bodies with pydantic before our code runs, and because it is the Python ecosystem's default
for ML inference services (one ASGI app, any ASGI server or process manager in front). The pieces:

- ``config``: ``ServeConfig`` (bundle, index, backend, limits) and ``ServeLimits``; the config travels to
  uvicorn's worker processes as JSON in an environment variable.
- ``live``: ``LiveIndex``, the index a worker searches, swapped for a newer committed version without
  stopping requests (requests in flight finish on the version they started with).
- ``service``: ``SearchService``: request dicts in, JSON-ready dicts out, ``prvr_sdk.errors`` raised;
  no web framework involved, so it is testable and reusable behind any server.
- ``app``: the FastAPI app (``create_app``), the one module that imports fastapi; ``status_for`` maps
  error classes to HTTP codes.

Only ``create_app`` and ``run`` need the ``serve`` extra; importing this package does not import fastapi.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prvr_sdk.serve.config import ServeConfig, ServeLimits
from prvr_sdk.serve.errors import LimitError, status_for
from prvr_sdk.serve.live import LiveIndex
from prvr_sdk.serve.service import SearchService

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "LimitError",
    "LiveIndex",
    "SearchService",
    "ServeConfig",
    "ServeLimits",
    "create_app",
    "require_fastapi",
    "run",
    "status_for",
]

_EXTRA = "serve"


def require_fastapi() -> None:
    """Raise ``BackendUnavailableError`` naming ``pip install 'prvr-sdk[serve]'`` when fastapi or uvicorn
    is missing (checked before any bundle is loaded)."""
    from prvr_sdk.errors import BackendUnavailableError

    for module in ("fastapi", "uvicorn"):
        try:
            __import__(module)
        except ImportError as exc:
            raise BackendUnavailableError(module, _EXTRA, str(exc)) from None


def create_app(service: SearchService | ServeConfig | Any) -> FastAPI:
    """The FastAPI app serving ``service`` (a ``SearchService``, or a ``ServeConfig`` to open one).

    Raises:
        BackendUnavailableError: fastapi is not installed (``pip install 'prvr-sdk[serve]'``).
    """
    require_fastapi()
    from prvr_sdk.serve.app import create_app as _create

    return _create(service)


def run(config: ServeConfig, **options: Any) -> None:
    """Serve ``config`` with uvicorn until interrupted (``prvr_sdk.serve.app.run``: host, port, workers...).

    Raises:
        BackendUnavailableError: fastapi or uvicorn is not installed.
    """
    require_fastapi()
    from prvr_sdk.serve.app import run as _run

    _run(config, **options)
