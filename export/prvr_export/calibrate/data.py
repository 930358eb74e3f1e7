"""Calibration data: the user's real videos and queries, prepared exactly as the Retriever prepares them.

Why here and not random tensors: int8 ranges are learned from activations, and activations depend on the
input distribution (pooled clips, normalised rows, padded batches). Feeding anything but what serving feeds
gives scales for the wrong distribution, so the inputs go through ``prvr_sdk.inputs`` (``prepare_video`` /
``pad_videos``, ``prepare_query`` / ``pad_queries``), the code training and the Retriever share.

Every sample is either a calibration sample or a held-out one, never both: the accuracy report compares
fp32 and reduced-precision embeddings on held-out samples only, so it measures generalisation of the
calibrated ranges, not their fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from prvr_sdk.bundle import Bundle
from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.inputs import TextSpec, VideoSpec, pad_queries, pad_videos, prepare_query, prepare_video

__all__ = [
    "MAX_HELD_OUT",
    "FeedReader",
    "Samples",
    "batches",
    "read_queries",
    "read_videos",
    "split_samples",
]

MAX_HELD_OUT = 512  # held-out samples compared fp32 vs reduced precision; more adds time, not information
SPLIT_SEED = 0  # the calibration / held-out split is reproducible from the data alone

Feeds = dict[str, np.ndarray]


@dataclass
class Samples:
    """Prepared encoder inputs of one kind (videos or queries), split into calibration and held-out.

    Attributes:
        source: the path the samples came from (recorded in the report).
        kind: ``"videos"`` or ``"queries"``.
        calibration / held_out: prepared single-sample inputs (``prepare_video`` / ``prepare_query`` output).
        calibration_ids / held_out_ids: their ids, same order.
    """

    source: str
    kind: str
    calibration: list[Any] = field(default_factory=list)
    held_out: list[Any] = field(default_factory=list)
    calibration_ids: list[str] = field(default_factory=list)
    held_out_ids: list[str] = field(default_factory=list)


def split_samples(ids: Sequence[str], max_samples: int, flag: str) -> tuple[list[str], list[str]]:
    """Calibration and held-out ids: a seeded shuffle, then up to ``max_samples`` for calibration while at
    least a quarter of the data (one sample at least) stays held out, capped at ``MAX_HELD_OUT``.

    Raises:
        InvalidInputError: fewer than two samples (one to calibrate, one to check), naming ``flag``.
    """
    if len(ids) < 2:
        raise InvalidInputError(
            f"{flag}: {len(ids)} sample(s); calibration needs at least 2 (some to calibrate on, some held "
            "out to measure the accuracy on)"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    n_cal = min(max_samples, len(ids) - max(1, len(ids) // 4))
    return shuffled[:n_cal], shuffled[n_cal : n_cal + MAX_HELD_OUT]


def read_videos(path: str | Path, spec: VideoSpec, max_samples: int, flag: str = "--data") -> Samples:
    """Real video features from a feature source (``prvr_sdk.sources.open_features``), checked against the
    bundle's ``feature_dim`` (``ShapeMismatchError`` naming ``flag`` and the file) and prepared."""
    from prvr_sdk.sources import open_features

    samples = Samples(str(Path(path).resolve()), "videos")
    try:
        with open_features(path) as source:
            cal, held = split_samples(source.ids(), max_samples, f"{flag} {path}")
            for ids, out in ((cal, samples.calibration), (held, samples.held_out)):
                for vid in ids:
                    out.append(prepare_video(spec.check(source.read(vid), name=f"video {vid!r}"), spec))
    except ShapeMismatchError as exc:
        raise ShapeMismatchError(
            f"{flag} {path}: {exc} (the bundle's video encoder takes Dv = {spec.feature_dim} features)"
        ) from None
    except InvalidInputError as exc:
        raise InvalidInputError(f"{flag} {path}: {exc}") from None
    samples.calibration_ids, samples.held_out_ids = cal, held
    return samples


def _query_arrays(path: Path, spec: TextSpec, flag: str) -> tuple[list[str], list[np.ndarray]]:
    """Query backbone features from ``.npy`` (``[N, Dq]`` / ``[N, Lq, Dq]``), ``.npz`` (one array per query)
    or ``.h5``/``.hdf5`` (one dataset per query id)."""
    from prvr_sdk.limits import check_array, load_npy, npz_headers, read_npz_member

    item = (spec.dim,) if spec.kind == "sentence" else (None, spec.dim)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        from prvr_sdk.sources import H5Features

        h5 = H5Features(path, item, "query features")
        try:
            keys = sorted(h5.keys())
            return keys, [h5.read(k) for k in keys]
        finally:
            h5.close()
    if suffix == ".npz":
        for key, (shape, dtype) in npz_headers(path).items():
            check_array(shape, dtype, f"{path}:{key}")
        with np.load(path, allow_pickle=False) as z:
            keys = sorted(z.files)
            return keys, [np.asarray(read_npz_member(z, path, k), dtype=np.float32) for k in keys]
    if suffix == ".npy":
        batch = np.asarray(load_npy(path), dtype=np.float32)
        if batch.ndim != len(item) + 1:
            want = "[N, Dq]" if spec.kind == "sentence" else "[N, Lq, Dq]"
            raise ShapeMismatchError(
                f"{flag} {path}: expected {want} query features, got {list(batch.shape)}"
            )
        return [str(i) for i in range(len(batch))], list(batch)
    raise InvalidInputError(
        f"{flag} {path}: expected a .txt file of sentences (one per line) or query features "
        ".npy / .npz / .h5 / .hdf5"
    )


def _sentences(path: Path, bundle: Bundle, flag: str) -> tuple[list[str], list[np.ndarray]]:
    """Sentences through the bundle's text front end (``prvr_sdk.text.TextFrontend``), the path
    ``Retriever.encode_text`` takes for strings, on ONNX Runtime CPU."""
    from prvr_sdk.backends import Choice, open_session
    from prvr_sdk.limits import check_text_file
    from prvr_sdk.text import TextFrontend, missing_frontend_message

    frontend = TextFrontend.from_bundle(bundle, lambda p: open_session(p, Choice("onnxruntime", "cpu", "")))
    if frontend is None:
        raise InvalidInputError(f"{flag} {path}: sentences need a text front end; " +
                                missing_frontend_message(bundle.manifest))
    check_text_file(path, f"the {flag} file")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{flag} {path}: not UTF-8 text (byte {exc.start})") from None
    texts = [line for line in lines if line]
    feats = frontend.encode(texts)
    return [str(i) for i in range(len(texts))], [np.asarray(f, dtype=np.float32) for f in feats]


def read_queries(path: str | Path, bundle: Bundle, max_samples: int, flag: str = "--queries") -> Samples:
    """Real queries: sentences (``.txt``, one per line, through the bundle's text front end) or backbone
    features; every query is checked against the bundle's ``Dq`` (``ShapeMismatchError`` naming ``flag``)."""
    path = Path(path)
    spec = TextSpec.from_manifest(bundle.manifest)
    if not path.is_file():
        raise InvalidInputError(f"{flag} {path}: file not found")
    if path.suffix.lower() == ".txt":
        keys, arrays = _sentences(path, bundle, flag)
    else:
        keys, arrays = _query_arrays(path, spec, flag)
    want = (spec.dim,) if spec.kind == "sentence" else (None, spec.dim)
    for key, q in zip(keys, arrays, strict=True):
        if q.ndim != len(want) or q.shape[-1] != spec.dim or (q.ndim == 2 and len(q) == 0):
            layout = f"[{spec.dim}] sentence" if spec.kind == "sentence" else f"[Lq, {spec.dim}] token"
            raise ShapeMismatchError(
                f"{flag} {path}: query {key!r} has shape {list(q.shape)}; the bundle's text encoder takes "
                f"{layout} features ({bundle.manifest['text_input'].get('expects', '')})"
            )
        if not np.isfinite(q).all():
            raise InvalidInputError(f"{flag} {path}: query {key!r} holds NaN or Inf")
    position = {k: i for i, k in enumerate(keys)}
    cal, held = split_samples(keys, max_samples, f"{flag} {path}")
    samples = Samples(str(path.resolve()), "queries", calibration_ids=cal, held_out_ids=held)
    samples.calibration = [prepare_query(arrays[position[k]], spec) for k in cal]
    samples.held_out = [prepare_query(arrays[position[k]], spec) for k in held]
    return samples


_SEQUENCE_INPUTS = ("frames", "frame_mask", "patches", "query", "query_mask")  # axis 1 = time / tokens


def batches(
    items: Sequence[Any], kind: str, input_names: Sequence[str], batch_size: int, uniform: bool = False
) -> list[Feeds]:
    """Padded encoder feeds (``pad_videos`` / ``pad_queries``), only the graph's own inputs, items of similar
    length batched together (less padding, as the Retriever's length-sorted windows).

    ``uniform``: every batch the same shape -- ``batch_size`` items (the last one filled up with the first
    items again) padded to the longest item of all. ONNX Runtime's histogram calibrators (entropy,
    percentile) stack all batches of a tensor into one array and fail on ragged shapes.
    """
    def length(x: Any) -> int:
        if kind == "videos":
            return len(x["patches"] if "patches" in x else x["frames"])
        return len(x) if np.ndim(x) == 2 else 1

    order = sorted(range(len(items)), key=lambda i: -length(items[i]))
    if uniform and len(order) % batch_size:
        order += (order * batch_size)[: batch_size - len(order) % batch_size]
    longest = max(length(x) for x in items) if items else 0
    pad = pad_videos if kind == "videos" else pad_queries
    out = []
    for start in range(0, len(order), batch_size):
        feeds = pad([items[i] for i in order[start : start + batch_size]])
        feeds = {name: feeds[name] for name in input_names}
        if uniform:
            for name, value in feeds.items():
                if name in _SEQUENCE_INPUTS and value.ndim >= (3 if name == "query" else 2):
                    widths = [(0, 0)] * value.ndim
                    widths[1] = (0, longest - value.shape[1])
                    feeds[name] = np.pad(value, widths)
        out.append(feeds)
    return out


class FeedReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over prepared feeds; ``advance`` ticks the progress bar."""

    def __init__(self, feeds: Sequence[Feeds], advance: Callable[[int], None] = lambda n=1: None) -> None:
        self._feeds = list(feeds)
        self._next = 0
        self._advance = advance

    def get_next(self) -> Feeds | None:
        if self._next >= len(self._feeds):
            return None
        feeds = self._feeds[self._next]
        self._next += 1
        self._advance(1)
        return feeds

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self._feeds)
