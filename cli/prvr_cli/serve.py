"""`prvr serve`: the bundle and an index behind HTTP (FastAPI on uvicorn), for applications.

The bundle and index are opened here first, so a bad path, a corrupt file or an index built with another
bundle fails with the CLI's message and exit code before any port is bound; then uvicorn serves (extra
workers are processes that open their own Retriever and map the same index files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prvr_cli.common import err, fail, recorded_bundle
from prvr_cli.encode import BackendOpt, DeviceOpt, PrecisionOpt, TrustedKeyOpt
from prvr_sdk.errors import PrvrError


def serve(
    index: Annotated[Path, typer.Option("--index", help="Index directory (prvr index build).")] = Path(
        "index"
    ),
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="Bundle \\[default: the one the index records].")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: all interfaces).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Worker processes; each maps the same index files.")
    ] = 1,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    trusted_key: TrustedKeyOpt = None,
    precision: PrecisionOpt = "fp32",
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Queries per request.")] = 64,
    max_query_chars: Annotated[
        int, typer.Option("--max-query-chars", min=1, help="Characters per sentence.")
    ] = 1000,
    max_top_k: Annotated[int, typer.Option("--max-top-k", min=1, help="Hits per query.")] = 1000,
    reload_interval: Annotated[
        float,
        typer.Option("--reload-interval", min=0.0, help="Seconds between looks for a newly committed index "
                     "version (prvr index add); 0: on every request."),
    ] = 1.0,
    batch_queries: Annotated[
        int,
        typer.Option("--batch-queries", min=0, help="Most queries of overlapping requests searched in one "
                     "pass over the index (0: each request searches alone)."),
    ] = 64,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's: debug, info, warning, error.")] = (
        "info"
    ),
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
) -> None:
    """Serve search over HTTP: POST /search, POST /encode_text, GET /healthz, GET /info; docs at /docs.

    A version committed to the index (prvr index add) is picked up within --reload-interval without
    dropping requests. Bad requests get 400/422 with the CLI's message, requests over a limit 413 (or
    422 for --max-top-k), an index of another bundle 409.

    Exit codes (before serving): 2 bad input; 3 fastapi/uvicorn not installed (pip install
    'prvr-sdk\\[serve]'); 5 bundle or index corrupt; 6 index built with another bundle.
    """
    from prvr_sdk.serve import SearchService, ServeConfig, ServeLimits, require_fastapi, run

    try:
        require_fastapi()
        config = ServeConfig(
            bundle=str(bundle or recorded_bundle(index)),
            index=str(index),
            backend=backend,
            device=device,
            precision=precision,
            trusted_keys=tuple(str(p) for p in trusted_key or ()),
            limits=ServeLimits(max_batch=max_batch, max_query_chars=max_query_chars, max_top_k=max_top_k),
            reload_interval=reload_interval,
            batch_queries=batch_queries,
        )
        service = SearchService.open(config)  # fail here, with an exit code, not inside a worker
    except PrvrError as exc:
        fail(exc)
    r = service.retriever
    err.print(
        f"prvr serve: {r.model_name} ({r.choice.backend} on {r.choice.device}), index {service.live.path} "
        f"version {service.live.version} ({len(service.live.current())} videos); http://{host}:{port} "
        f"(docs: /docs), {workers} worker{'s' if workers > 1 else ''}",
        highlight=False,
        markup=False,
    )
    if workers > 1:
        service = None  # type: ignore[assignment]  # each worker opens its own
    run(config, host=host, port=port, workers=workers, log_level=log_level, access_log=access_log,
        service=service)
