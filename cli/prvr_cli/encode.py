"""`prvr encode`: per-video frame features -> VideoEmbeddings (.npz), with the bundle's video encoder.

Batch encoding for large collections: encode once, then build or extend any number of indexes from the
file (`prvr index build --embeddings`). Torch-free: ONNX Runtime (or TensorRT) runs the encoder.
`--engine ray` spreads many feature shards over a Ray cluster (local by default) and writes a resumable
folder of sharded embeddings (`prvr_sdk.scale`), which `--embeddings` accepts as well.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from prvr_cli.common import check_out, err, fail, open_retriever, out_error
from prvr_sdk.errors import InvalidInputError, PrvrError
from prvr_sdk.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_FRAMES

BundleOpt = Annotated[Path, typer.Option("--bundle", help="Export bundle directory (prvr export).")]
FeaturesOpt = Annotated[
    list[Path],
    typer.Option("--features", help="Per-video frame features: .h5/.hdf5, .npz, a folder of <id>.npy, or a "
                 "BigFile folder. With --engine ray: one feature shard each, repeatable; more shards may "
                 "follow as arguments (--features a.h5 b.h5 ...)."),
]
ShardsArg = Annotated[
    list[Path] | None,
    typer.Argument(help="More feature shards (--engine ray), e.g. a shell glob after --features.",
                   show_default=False),
]
EngineOpt = Annotated[
    str,
    typer.Option("--engine", help="local: this process, one output file. ray: a Ray cluster, one output "
                 "file per shard plus manifest.json in the --out folder; resumable."),
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="--engine ray: a running Ray cluster (host:6379 or ray://host:10001) "
                 "\\[default: start a local one]."),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="--engine ray: encoder actors, one ONNX Runtime session each "
                 "\\[default: the cluster's CPUs]."),
]
FpsOpt = Annotated[
    float | None,
    typer.Option("--fps", help="Frame features per second, for clip times \\[default: the bundle's]."),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Videos per encoder call.")]
BackendOpt = Annotated[str, typer.Option("--backend", help="auto, onnxruntime or tensorrt.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
TrustedKeyOpt = Annotated[
    list[Path] | None,
    typer.Option("--trusted-key", help="Ed25519 public key (prvr keys generate); repeatable. The bundle must "
                 "be signed by one of them (prvr export --sign-key) or it is refused (exit 5)."),
]
PrecisionOpt = Annotated[
    str,
    typer.Option("--precision", help="fp32, fp16 or int8: which encoder graphs run (fp16/int8 come from "
                 "prvr calibrate; an index accepts only embeddings of a precision its bundle records as "
                 "interchangeable with fp32)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary to stdout.")]
MaxFramesOpt = Annotated[
    int,
    typer.Option("--max-frames", min=1, help="Refuse a video declaring more frame features than this "
                 "(checked before reading it)."),
]
MaxBytesOpt = Annotated[
    int,
    typer.Option("--max-bytes", min=1, help="Refuse a read declaring more bytes than this (one video's "
                 "shape x itemsize; text files get 1/8 of it), checked before reading: hostile files "
                 "cannot exhaust memory."),
]


def encode_source(
    retriever,
    features,
    fps: float | None,
    batch_size: int,
    max_frames: int | None = None,
    max_bytes: int | None = None,
):
    """Encode every video of a feature source with a progress bar on stderr.

    ``features`` is a path (opened here with the limits) or a ``FeatureSource`` already opened.
    """
    from prvr_sdk.sources import FeatureSource, open_features

    if isinstance(features, FeatureSource):
        source = features
    else:
        source = open_features(features, max_frames=max_frames, max_bytes=max_bytes)
    with source:
        err.print(f"encoding {len(source)} videos from {source.path} ({source.kind})", highlight=False)
        return retriever.encode_video(source, fps=fps, batch_size=batch_size)


def encode(
    bundle: BundleOpt,
    features: FeaturesOpt,
    out: Annotated[
        str, typer.Option("--out", help="Output .npz file, or a directory (embeddings.npz inside); atomic. "
                          "--engine ray: the shard folder.")
    ],
    shards: ShardsArg = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    fps: FpsOpt = None,
    batch_size: BatchOpt = 16,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    trusted_key: TrustedKeyOpt = None,
    precision: PrecisionOpt = "fp32",
    as_json: JsonOpt = False,
    max_frames: MaxFramesOpt = DEFAULT_MAX_FRAMES,
    max_bytes: MaxBytesOpt = DEFAULT_MAX_BYTES,
) -> None:
    """Encode videos from their frame features into clip embeddings with time spans (.npz).

    Progress goes to stderr (on a terminal), then a summary line, or the summary as JSON on stdout.

    --engine ray: each feature shard is encoded by one of --workers actors into its own file in the --out
    folder, listed with its sha256 in manifest.json. Rerun the same command to resume: shards already
    written (and intact) are skipped. `prvr index build|add --embeddings FOLDER` takes the folder.

    Exit codes: 0 done; 2 bad input (unknown feature format, NaN frames, wrong feature width, a file over
    --max-frames / --max-bytes, an unwritable --out); 3 backend not installed (e.g. h5py for .h5, ray for
    --engine ray); 5 bundle missing or corrupt (checksum); 6 --out holds another bundle's embeddings.
    """
    sources = list(features) + list(shards or [])
    if engine == "ray":
        _encode_ray(bundle, sources, out, address, workers, fps, batch_size, backend, device, trusted_key,
                    precision, as_json, max_frames, max_bytes)
        return
    started = time.perf_counter()
    try:
        if engine != "local":
            raise InvalidInputError(f"--engine: expected local or ray, got {engine!r}")
        if len(sources) != 1 or address is not None or workers is not None:
            raise InvalidInputError("--engine local encodes one --features source into one file; several "
                                    "shards, --address and --workers need --engine ray")
        features = sources[0]
        check_out(out, dir_ok=True)  # before hours of encoding
        retriever = open_retriever(bundle, backend, device, trusted_key, precision)
        embeddings = encode_source(retriever, features, fps, batch_size, max_frames, max_bytes)
        try:
            path = embeddings.save(out)
        except OSError as exc:
            raise out_error(out, exc) from None
    except PrvrError as exc:
        fail(exc)
    summary = {
        "out": str(path),
        "videos": len(embeddings),
        "clips": 0 if embeddings.clip_emb is None else len(embeddings.clip_emb),
        "dim": embeddings.dim,
        "model": embeddings.model,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        err.print(
            f"{summary['videos']} videos, {summary['clips']} clip vectors ({summary['dim']}-d) -> {path} "
            f"in {summary['seconds']:.1f} s",
            highlight=False,
        )


def _encode_ray(bundle, sources, out, address, workers, fps, batch_size, backend, device, trusted_key,
                precision, as_json, max_frames, max_bytes) -> None:
    """`prvr encode --engine ray`: ``prvr_sdk.scale.ray_encode.encode_with_ray``, then the summary."""
    from prvr_sdk.scale.ray_encode import encode_with_ray

    try:
        check_out(out, dir_ok=True)
        summary = encode_with_ray(
            bundle, sources, out, address=address, workers=workers, fps=fps, batch_size=batch_size,
            backend=backend, device=device, precision=precision, trusted_keys=trusted_key,
            max_frames=max_frames, max_bytes=max_bytes,
        )
    except PrvrError as exc:
        fail(exc)
    except OSError as exc:
        fail(out_error(out, exc))
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        err.print(
            f"{summary['shards']} shards ({summary['encoded']} encoded, {summary['skipped']} already done), "
            f"{summary['videos']} videos, {summary['clips']} clip vectors ({summary['dim']}-d) -> "
            f"{summary['out']} in {summary['seconds']:.1f} s",
            highlight=False,
        )
