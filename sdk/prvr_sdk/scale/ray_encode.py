"""Batch encoding on Ray: feature shards in, a sharded-embeddings folder (``prvr_sdk.scale.shards``) out.

Why Ray: a large collection is many independent feature shards; Ray Data spreads them over the cores of
one machine or the nodes of a cluster with back-pressure and retries, and the code is the same for both.
The plan: a Ray dataset of shard paths (one row, one block, one task unit per shard) is mapped by a pool of
actors (``map_batches`` with a callable class and ``ActorPoolStrategy``), each holding ONE encoder session
for its whole life; an actor reads its shard with the ordinary feature readers and their size limits
(``prvr_sdk.sources``) and returns the ``.npz`` bytes ``VideoEmbeddings.save`` writes. The driver writes
each file and the manifest atomically (``ShardWriter``), so the output folder need not be shared with the
workers; the bundle and the feature shards must be readable under the same paths on every node.

Ray is imported here only, inside functions (``pip install 'prvr-sdk[ray]'``); its logs are kept off the
driver's stderr, and a progress bar counts shards.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prvr_sdk import errors
from prvr_sdk.errors import BackendUnavailableError, IndexMismatchError, InvalidInputError, PrvrError
from prvr_sdk.progress import progress
from prvr_sdk.scale.shards import EmbeddingSpace, ShardWriter, encode_shard

__all__ = ["encode_with_ray", "import_ray"]

def import_ray() -> Any:
    """``ray`` with Ray Data, or ``BackendUnavailableError`` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError("ray", "ray", str(exc)) from None
    return ray


class ShardEncoder:
    """The Ray Data actor: one ``Retriever`` (one encoder session) per actor, one shard per call.

    Typed errors come back as data (``error_type``/``error_args``) so the driver raises the same
    ``PrvrError`` class the single-process encoder would, with its exit code.
    """

    def __init__(self, bundle: str, config: dict[str, Any], space: dict[str, Any]) -> None:
        from prvr_sdk import Retriever

        logging.getLogger("prvr_sdk").setLevel(logging.ERROR)  # worker logs never reach the user anyway
        self.config = config
        self.error: tuple[str, str] | None = None  # a failed start is reported on the first shard
        try:
            self.retriever = Retriever.from_bundle(
                bundle, backend=config["backend"], device=config["device"], precision=config["precision"],
                threads=1,  # one CPU per actor (ActorPoolStrategy): sessions that take every core collide
            )
            got = EmbeddingSpace.of(self.retriever)
            if (got.bundle_manifest_sha256, got.bundle_sha256) != (
                space["bundle_manifest_sha256"], space["bundle_sha256"]
            ):
                raise IndexMismatchError(
                    f"bundle {bundle} on this worker is not the bundle the driver checked "
                    f"({got.bundle_manifest_sha256[:12]}… vs {space['bundle_manifest_sha256'][:12]}…)"
                )
        except PrvrError as exc:
            self.error = _describe(exc)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        keys = ("index", "data", "videos", "clips", "error_type", "error_args")
        rows: dict[str, list] = {k: [] for k in keys}
        c = self.config
        for index, source in zip(batch["index"], batch["source"], strict=True):
            data, videos, clips, (etype, eargs) = b"", 0, 0, self.error or ("", "")
            try:
                if not etype:
                    data, videos, clips = encode_shard(
                        self.retriever, str(source), fps=c["fps"], batch_size=c["batch_size"],
                        max_frames=c["max_frames"], max_bytes=c["max_bytes"],
                    )
            except PrvrError as exc:
                etype, eargs = _describe(exc)
            except OSError as exc:
                message = f"{source}: cannot read ({exc.strerror or exc})"
                etype, eargs = "InvalidInputError", json.dumps([message])
            for key, value in zip(rows, (int(index), data, videos, clips, etype, eargs), strict=True):
                rows[key].append(value)
        out = {k: np.array(v) for k, v in rows.items() if k != "data"}
        out["data"] = np.array(rows["data"], dtype=object)
        return out


def _describe(exc: PrvrError) -> tuple[str, str]:
    """A typed error as plain data: its class name and its constructor arguments as JSON."""
    if isinstance(exc, BackendUnavailableError):
        return type(exc).__name__, json.dumps([exc.backend, exc.extra, exc.detail])
    return type(exc).__name__, json.dumps([str(exc)])


def _rebuild(error_type: str, error_args: str) -> PrvrError:
    """The worker's typed error, raised again in the driver (never unpickled: a class name and its args)."""
    cls = getattr(errors, error_type, None)
    args = json.loads(error_args)
    if not (isinstance(cls, type) and issubclass(cls, PrvrError)) or cls is errors.IndexLockedError:
        return PrvrError(str(args[-1]))
    return cls(*args)


@contextmanager
def _quiet(ray: Any) -> Iterator[None]:
    """Keep Ray Data's progress bars, INFO logs and deprecation warnings off the driver's stderr while we
    run (our own bar counts shards); the caller's settings are restored after."""
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"ray(\.|$)")  # Ray's own deprecations, not the user's
        warnings.filterwarnings("ignore", message=".*ray_remote_args")  # how max_restarts gets passed
        ctx = ray.data.DataContext.get_current()  # made on first use, warning about Ray's own fields
        names = [a for a in ("enable_progress_bars", "print_on_execution_start", "enable_auto_log_stats")
                 if hasattr(ctx, a)]
        saved = {a: getattr(ctx, a) for a in names}
        for a in names:
            setattr(ctx, a, False)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for a, value in saved.items():
                setattr(ctx, a, value)
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _start(ray: Any, address: str | None, workers: int | None) -> bool:
    """Connect to (``address``) or start a local Ray cluster; False when one is already up in-process."""
    if ray.is_initialized():
        return False
    common = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, **common)
    except ConnectionError as exc:
        raise InvalidInputError(f"--address {address}: cannot connect to a Ray cluster ({exc})") from None
    return True


def encode_with_ray(
    bundle: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    address: str | None = None,
    workers: int | None = None,
    fps: float | None = None,
    batch_size: int = 16,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    trusted_keys: Sequence[Any] | None = None,
    max_frames: int | None = None,
    max_bytes: int | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Encode feature shards into the sharded-embeddings folder ``out``; resumable.

    Args:
        bundle: export bundle, opened (and verified, against ``trusted_keys`` when given) once here; each
            actor opens it again and must find the same manifest hash.
        sources: feature shards (``.h5``/``.hdf5``, ``.npz``, a folder of ``.npy`` or a BigFile folder).
        out: the folder; shards a previous run finished (checked) are skipped.
        address: a running Ray cluster (``ray://host:10001`` or ``host:6379``); ``None``: a local cluster of
            ``workers`` CPUs, started here and stopped at the end (one already running in this process
            is reused and left running).
        workers: actors, one encoder session and one CPU each (default: the cluster's CPUs); never more
            than the cluster's CPUs or the shards left.
        fps, batch_size, backend, device, precision: as ``Retriever.encode_video`` / ``from_bundle``.
        max_frames, max_bytes: the feature readers' limits (``prvr_sdk.limits``).
        show_progress: a bar over shards on stderr (``None``: when stderr is a terminal).

    Returns:
        A summary: ``out``, ``shards``, ``encoded``, ``skipped``, ``videos``, ``clips``, ``workers``, ``dim``,
        ``model``, ``seconds`` (all of it) and ``encode_seconds`` (from the first shard handed out).

    Raises:
        BackendUnavailableError: ray not installed. IndexMismatchError: ``out`` holds another bundle's
        embeddings. InvalidInputError: bad shards or ``out`` (see ``ShardWriter``), an unreachable address,
        or any error a worker met on a shard (re-raised with its own class; finished shards are kept).
    """
    started = time.perf_counter()
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidInputError(f"workers: expected a positive integer, got {workers!r}")
    ray = import_ray()
    from prvr_sdk import Retriever

    retriever = Retriever.from_bundle(bundle, backend=backend, device=device, precision=precision,
                                      trusted_keys=trusted_keys or None)
    space = EmbeddingSpace.of(retriever)
    del retriever  # the driver encodes nothing: free its session
    writer = ShardWriter(out, space, sources)
    summary: dict[str, Any] = {"out": str(writer.out), "shards": len(writer.todo) + len(writer.skipped),
                               "encoded": 0, "skipped": len(writer.skipped), "workers": 0,
                               "model": space.model, "dim": space.dim, "encode_seconds": 0.0}
    try:
        if writer.todo:
            config = {"fps": fps, "batch_size": batch_size, "backend": backend, "device": device,
                      "precision": precision, "max_frames": max_frames, "max_bytes": max_bytes}
            bundle_path = str(Path(bundle).resolve())
            summary.update(_run(ray, writer, bundle_path, space, address, workers, show_progress, config))
    finally:
        manifest = writer.close()
    done = [e for e in manifest["shards"] if e["done"]]
    summary.update(videos=sum(e["videos"] for e in done), clips=sum(e["clips"] for e in done),
                   seconds=round(time.perf_counter() - started, 3))
    return summary


def _run(ray, writer: ShardWriter, bundle: str, space: EmbeddingSpace, address, workers, show_progress,
         config: dict[str, Any]) -> dict[str, Any]:
    own = _start(ray, address, workers)
    try:
        with _quiet(ray):
            return _execute(ray, writer, bundle, space, workers, show_progress, config)
    finally:
        if own:
            ray.shutdown()


def _execute(ray, writer: ShardWriter, bundle: str, space: EmbeddingSpace, workers, show_progress,
             config: dict[str, Any]) -> dict[str, Any]:
    """One Ray Data pass over the shards still to do; the driver writes each result as it arrives."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))  # more actors than CPUs would wait forever
    size = max(1, min(workers or cpus, cpus, len(writer.todo)))
    items = [{"index": i, "source": str(s)} for i, s in enumerate(writer.todo)]
    mapped = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ShardEncoder,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size),
        fn_constructor_kwargs={"bundle": bundle, "config": config, "space": asdict(space)},
        num_cpus=1,
        max_restarts=0,  # constructor args live in the object store: a restart could not use them
    )
    t0 = time.perf_counter()
    encoded = 0
    with progress(len(writer.todo) + len(writer.skipped), f"encode shards (ray, {size} workers)",
                  show_progress) as advance:
        advance(len(writer.skipped))
        try:
            for row in mapped.iter_rows():
                if row["error_type"]:
                    raise _rebuild(row["error_type"], row["error_args"])
                writer.write(writer.todo[int(row["index"])], row["data"], row["videos"], row["clips"])
                encoded += 1
                advance(1)
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise PrvrError(f"Ray encode failed: {first}") from None
    return {"encoded": encoded, "workers": size, "encode_seconds": round(time.perf_counter() - t0, 3)}
