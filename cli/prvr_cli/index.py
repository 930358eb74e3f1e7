"""`prvr index build | add | info | verify`: the exact on-disk index of a bundle's video embeddings.

`build` encodes a feature source (or loads `prvr encode` output) and writes a new index; `add` appends
videos to an existing one as a new segment (`--upsert` replaces ids already there); `info` describes one;
`verify` checks every byte of one against its recorded checksums.
Writes are atomic (a new version directory, then a pointer swap) and one writer at a time holds the lock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from prvr_cli.common import err, fail, open_retriever, read_metadata, recorded_bundle
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
from prvr_sdk.errors import IndexMismatchError, InvalidInputError, PrvrError
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
    if not upsert and retriever.index is not None:
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
    else:
        err.print(f"{action}: {info['path']} ({info['videos']} videos, {info['clips']} clips, "
                  f"version {info['version']})", highlight=False, markup=False)


@app.command("build")
def build(
    bundle: Annotated[Path, typer.Option("--bundle", help="Export bundle directory (prvr export).")],
    out: Annotated[Path, typer.Option("--out", help="Index directory to create.")],
    features: FeaturesOpt = None,
    embeddings: EmbeddingsOpt = None,
    metadata: MetadataOpt = None,
    fps: FpsOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an index at --out.")] = False,
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

    Exit codes: 0 built; 2 bad input (--out exists without --overwrite, bad metadata or features);
    3 backend not installed; 5 bundle corrupt; 6 --embeddings made with another bundle.
    """
    try:
        if out.exists() and not overwrite:
            raise InvalidInputError(f"--out {out} exists; pass --overwrite to replace it")
        meta = read_metadata(metadata, max_bytes)  # before encoding: a bad file fails fast
        if features is not None:  # opened here so that --max-frames / --max-bytes apply
            from prvr_sdk.sources import open_features

            features = open_features(features, max_frames=max_frames, max_bytes=max_bytes)
        retriever = open_retriever(bundle, backend, device, trusted_key, precision)
        info = _add_and_save(retriever, features, embeddings, fps, batch_size, meta, metadata, False,
                             path=out, overwrite=overwrite)
    except PrvrError as exc:
        fail(exc)
    _report(info, as_json, "built")


@app.command("add")
def add(
    index: Annotated[Path, typer.Option("--index", help="Index directory to extend.")],
    features: FeaturesOpt = None,
    embeddings: EmbeddingsOpt = None,
    metadata: MetadataOpt = None,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="Bundle \\[default: the one the index records].")
    ] = None,
    upsert: Annotated[bool, typer.Option("--upsert", help="Replace videos already in the index.")] = False,
    fps: FpsOpt = None,
    batch_size: BatchOpt = 16,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    trusted_key: TrustedKeyOpt = None,
    precision: PrecisionOpt = "fp32",
    as_json: JsonOpt = False,
) -> None:
    """Add videos to an index as a new segment (atomic; the index must have been built with the bundle).

    Exit codes: 0 added; 2 bad input (an id already in the index without --upsert, no bundle to use);
    3 backend not installed; 5 bundle or index corrupt; 6 index built with another bundle; 7 index busy
    (another writer holds its lock, or it changed since it was read: retry).
    """
    try:
        meta = read_metadata(metadata)
        retriever = open_retriever(bundle or recorded_bundle(index), backend, device, trusted_key, precision)
        retriever.load_index(index)
        try:
            retriever.index.lock()  # before encoding: a busy index fails now, not after all the work
            info = _add_and_save(retriever, features, embeddings, fps, batch_size, meta, metadata, upsert)
        finally:
            retriever.index.close()
    except PrvrError as exc:
        fail(exc)
    _report(info, as_json, "updated")


@app.command("verify")
def verify(
    index: Annotated[Path, typer.Option("--index", help="Index directory.")],
    as_json: JsonOpt = False,
) -> None:
    """Check every byte of an index: each file's sha256 against its manifest, every id and metadata line.

    `prvr index info`, `search` and loading check only sizes and headers (cheap); run this after copying
    an index, on a schedule, or when results look wrong.

    Exit codes: 0 intact; 5 not an index, or a file missing, truncated or corrupted (the message names it).
    """
    from prvr_sdk.index import ExactIndex

    try:
        report = ExactIndex.verify(index)
    except PrvrError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(f"ok: {index} version {report['version']}: {report['segments']} segments, "
                   f"{report['videos']} videos, {report['files']} files, {report['bytes']} bytes verified")


@app.command("info")
def info(
    index: Annotated[Path, typer.Option("--index", help="Index directory.")],
    as_json: JsonOpt = False,
) -> None:
    """Describe an index: videos, clips, size, scoring rule, the bundle it belongs to.

    Exit codes: 0 ok; 5 not an index, or a corrupt one.
    """
    from prvr_sdk.index import ExactIndex

    try:
        loaded = ExactIndex.load(index)
        details = loaded.info()
        loaded.close()
    except PrvrError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(details, indent=2))
        return
    table = Table(title=f"index {index}", show_header=False, title_justify="left")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in details.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    Console().print(table)

