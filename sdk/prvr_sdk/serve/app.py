"""The FastAPI app of ``prvr serve``: routes, request/response schemas, error mapping, body-size limit.

The only module of ``prvr_sdk`` that imports fastapi (``prvr_sdk.serve.create_app`` imports it lazily).
Endpoints are plain ``def`` functions: FastAPI runs them in its thread pool, where ONNX Runtime and the
index's matrix products release the GIL, so one worker serves several requests at once. Responses are
built as dicts and sent as ``JSONResponse`` (the declared models document them in ``/docs`` without a
second validation pass per hit).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from prvr_sdk import __version__
from prvr_sdk.errors import PrvrError
from prvr_sdk.serve.config import ENV_VAR, ServeConfig
from prvr_sdk.serve.errors import status_for
from prvr_sdk.serve.service import SearchService

__all__ = ["app_from_env", "create_app", "run"]

Features = list[list[float]] | list[list[list[float]]]

_FEATURES_DOC = (
    "Backbone features, one entry per query ([Dq] for sentence models, [Lq, Dq] for token models), for "
    "bundles without a text front end (like `prvr search --query-features`)."
)


class SearchRequest(BaseModel):
    """Exactly one of ``query``, ``features`` and ``embedding``."""

    model_config = ConfigDict(extra="forbid")

    query: str | list[str] | None = Field(None, description="A sentence or a list of sentences.")
    features: Features | None = Field(None, description=_FEATURES_DOC)
    embedding: list[float] | list[list[float]] | None = Field(
        None, description="Query embeddings [D] or [N, D] (unit vectors, e.g. from /encode_text)."
    )
    top_k: int = Field(10, ge=1, description="Hits per query (at most the server's --max-top-k).")
    filter: dict[str, Any] | None = Field(
        None,
        description='Metadata filter applied before top-k, e.g. {"duration": {"$gte": 60}} or '
        '{"video_id": ["a", "b"]}; operators $eq $ne $in $nin $gt $gte $lt $lte.',
    )
    group_by: Literal["video", "clip"] = Field("video", description="One hit per video, or per clip.")
    min_score: float | None = Field(None, description="Drop hits scoring below this.")


class EncodeTextRequest(BaseModel):
    """Exactly one of ``queries`` and ``features``."""

    model_config = ConfigDict(extra="forbid")

    queries: str | list[str] | None = Field(None, description="A sentence or a list of sentences.")
    features: Features | None = Field(None, description=_FEATURES_DOC)


class HitModel(BaseModel):
    video_id: str
    score: float
    start: float | None = Field(description="Start of the matching moment, seconds (null: unknown).")
    end: float | None = Field(description="End of the matching moment, seconds (null: unknown).")
    clip_index: int | None
    metadata: dict[str, Any]


class QueryResult(BaseModel):
    query_index: int
    query: str | None
    hits: list[HitModel]


class SearchResponse(BaseModel):
    model: str
    index_version: str = Field(description="The index version that answered (changes after a reload).")
    results: list[QueryResult] = Field(description="One entry per query, in request order.")


class EncodeTextResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]


class HealthResponse(BaseModel):
    status: str
    index_version: str
    pid: int


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong, as the CLI would print it.")
    error: str = Field(description="The prvr_sdk.errors class (or RequestValidationError).")


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 409, 413, 422, 500)
}


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413 before anything parses it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send, declared.decode("latin-1"))
            return
        chunks, size = [], 0
        while True:  # read the whole body (JSON needs it anyway), counting
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, f"more than {size}")
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any, size: str) -> None:
        response = JSONResponse(
            {"detail": f"request body of {size} bytes; this server takes at most {self.max_bytes}",
             "error": "LimitError"},
            status_code=413,
        )
        await response(scope, receive, send)


def _error(exc: PrvrError) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=status_for(exc))


def _schema_error(exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in exc.errors()
    ]
    shown = "; ".join(f"{'.'.join(e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors[:3])
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return JSONResponse(
        {"detail": f"invalid request: {shown}{more}", "error": "RequestValidationError", "errors": errors},
        status_code=422,
    )


def create_app(service: SearchService | ServeConfig) -> FastAPI:
    """The app for ``service`` (a ``ServeConfig`` is opened first: bundle and index loaded, verified)."""
    if isinstance(service, ServeConfig):
        service = SearchService.open(service)
    app = FastAPI(
        title="prvr serve",
        version=__version__,
        description="Partially relevant video retrieval: the videos, and the moment in each, that match a "
        "sentence. Errors carry the CLI's message in `detail`.",
    )
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=service.limits.max_body_bytes)
    app.add_exception_handler(PrvrError, lambda request, exc: _error(exc))  # type: ignore[arg-type]
    app.add_exception_handler(  # type: ignore[arg-type]
        RequestValidationError, lambda request, exc: _schema_error(exc)
    )

    @app.post("/search", response_model=SearchResponse, responses=_ERRORS)
    def search(body: SearchRequest) -> JSONResponse:
        """Search the index with sentences, backbone features or query embeddings."""
        return JSONResponse(service.search(**body.model_dump()))

    @app.post("/encode_text", response_model=EncodeTextResponse, responses=_ERRORS)
    def encode_text(body: EncodeTextRequest) -> JSONResponse:
        """Query embeddings ([N, D] unit vectors) for sentences or backbone features."""
        return JSONResponse(service.encode_text(**body.model_dump()))

    @app.get("/healthz", response_model=HealthResponse)
    def healthz() -> JSONResponse:
        """Liveness for load balancers: ok, and the index version this worker serves."""
        return JSONResponse(service.health())

    @app.get("/info")
    def info(request: Request) -> JSONResponse:
        """Bundle (path, digests, model), index (path, version, counts), backend, dim and limits."""
        return JSONResponse(service.info())

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the config comes from ``PRVR_SERVE_CONFIG`` (``run`` sets it)."""
    return create_app(SearchService.open(ServeConfig.from_env()))


def run(
    config: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = False,
    service: SearchService | None = None,
) -> None:
    """Serve until interrupted. One worker serves ``service`` (or opens ``config``) in this process;
    more are uvicorn worker processes, each opening its own Retriever and mapping the same index files
    (the OS page cache holds one copy of the clip matrix for all of them)."""
    import uvicorn

    options = {"host": host, "port": port, "log_level": log_level, "access_log": access_log}
    if workers == 1:
        uvicorn.run(create_app(service or config), **options)
        return
    os.environ[ENV_VAR] = config.to_json()
    uvicorn.run("prvr_sdk.serve.app:app_from_env", factory=True, workers=workers, **options)
