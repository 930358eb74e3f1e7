"""`prvr index build | add | info | verify`: an index of a bundle's video embeddings.

`build` encodes a feature source (or loads `prvr encode` output) and writes a new index; `add` appends
videos to an existing one as a new segment (`--upsert` replaces ids already there); `info` describes one;
`verify` checks every byte of one against its recorded checksums.

`--engine exact` (default): prvr's on-disk exact index; writes are atomic (a new version directory, then a
pointer swap) and one writer at a time holds the lock. `--engine qdrant-edge`: Qdrant embedded in this
process, in a folder (built in a staging folder beside it and renamed into place; the shard locks its
folder while open). `--engine qdrant`: a collection on a Qdrant server (`--url`, `--collection`; API key
from `$QDRANT_API_KEY` only). Both qdrant engines search exactly by default (the same hits as `exact`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from prvr_cli.common import (
    CollectionOpt,
    EngineOpt,
    IndexTarget,
    UrlOpt,
    attach_index,
    create_index,
    default_collection,
    err,
    fail,
    index_target,
    open_index,
    open_retriever,
    read_metadata,
)
from prvr_cli.encode import (
    BackendOpt,
    BatchOpt,
    DeviceOpt,
    FpsOpt,
    JsonOpt,
    MaxBytesOpt,
    MaxFramesOpt,
    PrecisionOpt,
    TrustedKeyOpt,
    encode_source,
)
from prvr_sdk.errors import IndexFormatError, IndexMismatchError, InvalidInputError, PrvrError
from prvr_sdk.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_FRAMES

app = typer.Typer(help="Build, extend and inspect indexes of video embeddings.", no_args_is_help=True)

FeaturesOpt = Annotated[
    Path | None,
    typer.Option("--features", help="Frame features to encode: .h5/.hdf5, .npz, <id>.npy folder, BigFile."),
]
EmbeddingsOpt = Annotated[
    Path | None, typer.Option("--embeddings", help="Output of `prvr encode`, instead of --features.")
]
MetadataOpt = Annotated[
    Path | None,
    typer.Option("--metadata", help="Per-video metadata: JSON {video_id: {...}} or JSON lines with "
                 "'video_id'. Returned with hits and usable in --filter."),
]


def _embeddings(retriever, features: Path | None, embeddings: Path | None, fps, batch_size):
    from prvr_sdk import VideoEmbeddings

    if (features is None) == (embeddings is None):
        raise InvalidInputError("give exactly one of --features and --embeddings")
    if embeddings is not None:
        emb = VideoEmbeddings.load(embeddings)
        if not emb.bundle_sha256:  # provenance unknown: they could come from any model
            raise IndexMismatchError(
                f"--embeddings {embeddings} records no bundle hash, so nothing says which model made them; "
                f"encode the videos with `prvr encode --bundle {retriever.bundle.path}`"
            )
        return emb
    return encode_source(retriever, features, fps, batch_size)


def _add(retriever, emb, meta: dict, metadata: Path | None, upsert: bool) -> None:
    from prvr_sdk.index import ExactIndex

    # qdrant indexes check ids themselves, in one request (a lookup per id would be one round trip each)
    if not upsert and isinstance(retriever.index, ExactIndex):
        existing = [v for v in emb.ids if v in retriever.index]
        if existing:
            raise InvalidInputError(
                f"{len(existing)} videos are already in the index (first: {existing[:3]}); pass --upsert "
                "to replace them"
            )
    missing = [v for v in emb.ids if v not in meta]
    if metadata is not None and missing:
        err.print(f"warning: {len(missing)} videos have no entry in {metadata} (first: {missing[0]})",
                  highlight=False, markup=False)
    retriever.add(emb, [meta.get(v, {}) for v in emb.ids], upsert=upsert)


def _add_and_save(retriever, features, embeddings, fps, batch_size, meta, metadata, upsert, **save) -> dict:
    """Encode (or load) the videos, add them to the retriever's index, save it (``save``: ``path``,
    ``overwrite`` for a new index) and release the lock; returns the saved index's info."""
    emb = _embeddings(retriever, features, embeddings, fps, batch_size)
    _add(retriever, emb, meta, metadata, upsert=upsert)
    retriever.index.save(**save)
    info = retriever.index.info()
    retriever.index.close()
    return info


def _report(info: dict, as_json: bool, action: str) -> None:
    if as_json:
        typer.echo(json.dumps({"action": action, **info}))
    elif info.get("engine", "exact") == "exact":
        err.print(f"{action}: {info['path']} ({info['videos']} videos, {info['clips']} clips, "
                  f"version {info['version']})", highlight=False, markup=False)
    else:
        where = info.get("path") or f"collection {info.get('collection')!r}"
        err.print(f"{action}: {where} ({info['engine']}, {info['videos']} videos)", highlight=False,
                  markup=False)


def _edge_target_free(out: Path, overwrite: bool) -> None:
    """A qdrant-edge --out: new, or (with --overwrite) empty or a prvr Qdrant folder, never anything else."""
    from prvr_sdk.index.qdrant.edge import RECORD

    if not out.exists():
        return
    if not overwrite:
        raise InvalidInputError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.is_dir() or not (out / RECORD).is_file() and any(out.iterdir()):
        raise IndexFormatError(
            f"cannot replace {out}: it holds other files, not a prvr Qdrant index (no {RECORD}); choose a "
            "new or empty directory"
        )


def _remote_target_free(target: IndexTarget, overwrite: bool) -> None:
    """A qdrant --collection: new, or (with --overwrite) one whose record says it is a prvr index."""
    from prvr_sdk.index.qdrant import QdrantRemoteIndex

    state = QdrantRemoteIndex.status(target.url, collection=target.collection)
    if state != "absent" and not overwrite:
        raise InvalidInputError(f"{target} exists; pass --overwrite to replace it")
    if state == "other":
        raise IndexFormatError(f"cannot replace {target}: it is not a prvr index (no prvr record)")


def _build_qdrant(target: IndexTarget, retriever, emb, meta: dict, metadata: Path | None,
                  overwrite: bool) -> dict:
    """Fill a new qdrant index with ``emb``. qdrant-edge: in a staging folder beside --out, renamed into
    place at the end (a failed build leaves nothing); qdrant: straight into the collection, deleted again
    if the build fails (a replaced collection is gone from the start: not atomic)."""
    from prvr_sdk.fsutil import swap_directory

    if target.engine == "qdrant-edge":
        out = target.path.absolute()
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            index = create_index(target, retriever, stage)
            try:
                retriever.load_index(index)
                _add(retriever, emb, meta, metadata, upsert=False)
                index.save()
                info = index.info()
            finally:
                index.close()
            _edge_target_free(out, overwrite)  # again: something may have appeared meanwhile
            swap_directory(stage, out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return {**info, "path": str(out)}
    from prvr_sdk.index.qdrant import QdrantRemoteIndex

    if overwrite:
        QdrantRemoteIndex.drop(target.url, collection=target.collection)
    index = create_index(target, retriever)
    try:
        retriever.load_index(index)
        _add(retriever, emb, meta, metadata, upsert=False)
        index.save()
        info = index.info()
    except BaseException:
        index.close()
        with contextlib.suppress(Exception):  # keep the first error; a retry then finds no collection
            QdrantRemoteIndex.drop(target.url, collection=target.collection)
        raise
    index.close()
    return info


OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "--path", help="Index directory to create (--engine exact or qdrant-edge)."),
]
IndexDirOpt = Annotated[
    Path | None,
    typer.Option("--index", "--path", help="Index directory (--engine exact or qdrant-edge)."),
]


@app.command("build")
def build(
    bundle: Annotated[Path, typer.Option("--bundle", help="Export bundle directory (prvr export).")],
    out: OutOpt = None,
    features: FeaturesOpt = None,
    embeddings: EmbeddingsOpt = None,
    metadata: MetadataOpt = None,
    fps: FpsOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an index at --out (or the --collection).")
    ] = False,
    engine: EngineOpt = "exact",
    url: UrlOpt = None,
    collection: CollectionOpt = None,
    batch_size: BatchOpt = 16,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    trusted_key: TrustedKeyOpt = None,
    precision: PrecisionOpt = "fp32",
    as_json: JsonOpt = False,
    max_frames: MaxFramesOpt = DEFAULT_MAX_FRAMES,
    max_bytes: MaxBytesOpt = DEFAULT_MAX_BYTES,
) -> None:
    """Create an index from frame features (or `prvr encode` output) with the bundle's video encoder.

    Every video's metadata gets "duration" (seconds) unless --metadata gives one. The index records the
    bundle's path, so `prvr search` and `prvr index add` find the bundle without --bundle.
    --overwrite replaces only an index of the same engine (a prvr Qdrant folder or collection).

    Exit codes: 0 built; 2 bad input (--out or the collection exists without --overwrite, bad metadata or
    features); 3 backend (or the qdrant extra) not installed; 5 bundle corrupt, or --overwrite of something
    that is not an index; 6 --embeddings made with another bundle.
    """
    try:
        target = index_target(engine, out, url, collection, "--out")
        if target.engine == "qdrant-edge":
            _edge_target_free(target.path, overwrite)
        elif target.engine == "exact" and out.exists() and not overwrite:
            raise InvalidInputError(f"--out {out} exists; pass --overwrite to replace it")
        meta = read_metadata(metadata, max_bytes)  # before encoding: a bad file fails fast
        if features is not None:  # opened here so that --max-frames / --max-bytes apply
            from prvr_sdk.sources import open_features

            features = open_features(features, max_frames=max_frames, max_bytes=max_bytes)
        retriever = open_retriever(bundle, backend, device, trusted_key, precision)
        if target.engine == "exact":
            info = _add_and_save(retriever, features, embeddings, fps, batch_size, meta, metadata, False,
                                 path=out, overwrite=overwrite)
        else:
            if target.engine == "qdrant" and target.collection is None:
                from dataclasses import replace

                target = replace(target, collection=default_collection(retriever))
            if target.engine == "qdrant":
                _remote_target_free(target, overwrite)  # before encoding
            emb = _embeddings(retriever, features, embeddings, fps, batch_size)
            info = _build_qdrant(target, retriever, emb, meta, metadata, overwrite)
    except PrvrError as exc:
        fail(exc)
    _report(info, as_json, "built")


@app.command("add")
def add(
    index: IndexDirOpt = None,
    features: FeaturesOpt = None,
    embeddings: EmbeddingsOpt = None,
    metadata: MetadataOpt = None,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="Bundle \\[default: the one the index records].")
    ] = None,
    upsert: Annotated[bool, typer.Option("--upsert", help="Replace videos already in the index.")] = False,
    engine: EngineOpt = "exact",
    url: UrlOpt = None,
    collection: CollectionOpt = None,
    fps: FpsOpt = None,
    batch_size: BatchOpt = 16,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    trusted_key: TrustedKeyOpt = None,
    precision: PrecisionOpt = "fp32",
    as_json: JsonOpt = False,
) -> None:
    """Add videos to an index (the index must have been built with the bundle).

    exact: one new segment, atomic. qdrant-edge / qdrant: written to the engine as they are added (each
    batch durable), flushed at the end.

    Exit codes: 0 added; 2 bad input (an id already in the index without --upsert, no bundle to use);
    3 backend (or the qdrant extra) not installed; 5 bundle or index corrupt; 6 index built with another
    bundle; 7 index busy (another writer holds its lock, or it changed since it was read: retry; a
    qdrant-edge folder open in another process).
    """
    try:
        target = index_target(engine, index, url, collection)
        meta = read_metadata(metadata)
        retriever = attach_index(target, bundle, backend, device, trusted_key, precision)
        try:
            if target.engine == "exact":
                retriever.index.lock()  # before encoding: a busy index fails now, not after all the work
            info = _add_and_save(retriever, features, embeddings, fps, batch_size, meta, metadata, upsert)
        finally:
            retriever.index.close()
    except PrvrError as exc:
        fail(exc)
    _report(info, as_json, "updated")


@app.command("verify")
def verify(
    index: IndexDirOpt = None,
    engine: EngineOpt = "exact",
    url: UrlOpt = None,
    collection: CollectionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every byte of an index: each file's sha256 against its manifest, every id and metadata line.

    `prvr index info`, `search` and loading check only sizes and headers (cheap); run this after copying
    an index, on a schedule, or when results look wrong. Exact indexes only: a Qdrant index keeps no
    checksums of its own (Qdrant checks its storage itself); `prvr index info --engine ...` opens it and
    checks its record.

    Exit codes: 0 intact; 2 a qdrant engine (not supported); 5 not an index, or a file missing, truncated
    or corrupted (the message names it).
    """
    from prvr_sdk.index import ExactIndex

    try:
        if engine in ("qdrant-edge", "qdrant"):
            raise InvalidInputError(
                f"index verify is not supported for --engine {engine}: a Qdrant index keeps no checksums of "
                f"its own (Qdrant checks its storage); `prvr index info --engine {engine} ...` opens it and "
                "checks its record"
            )
        target = index_target(engine, index, url, collection)
        report = ExactIndex.verify(target.path)
    except PrvrError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(f"ok: {index} version {report['version']}: {report['segments']} segments, "
                   f"{report['videos']} videos, {report['files']} files, {report['bytes']} bytes verified")


@app.command("info")
def info(
    index: IndexDirOpt = None,
    engine: EngineOpt = "exact",
    url: UrlOpt = None,
    collection: CollectionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Describe an index: engine, videos (exact: clips, size), scoring rule, the bundle it belongs to.

    --engine qdrant needs --collection (there is no bundle here to name the default one).

    Exit codes: 0 ok; 2 bad flags; 3 the qdrant extra not installed; 5 not an index, or a corrupt one;
    7 a qdrant-edge folder open in another process.
    """
    try:
        target = index_target(engine, index, url, collection)
        loaded = open_index(target)
        try:
            details = loaded.info()
        finally:
            loaded.close()
    except PrvrError as exc:
        fail(exc)
    if target.engine == "exact":
        details = {"engine": "exact", **details}
    if as_json:
        typer.echo(json.dumps(details, indent=2))
        return
    table = Table(title=f"index {target}", show_header=False, title_justify="left")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in details.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    Console().print(table)
