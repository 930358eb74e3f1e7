"""``Retriever``: a sealed export bundle, ready to encode videos and sentences, score and search.

The Retriever owns the two encoder sessions (ONNX Runtime or TensorRT, chosen by ``prvr_sdk.backends``),
the optional text front end (tokenizer + text backbone, so strings work without torch), and optionally an
index. Everything the model needs around its graphs -- pooling frames into clips, normalising, cutting
queries, padding batches -- comes from ``prvr_sdk.inputs``, the code training used, so embeddings served
here equal the ones the model was evaluated with.

    >>> r = Retriever.from_bundle("bundle/")
    >>> videos = r.encode_video({"v1": frames_1, "v2": frames_2}, fps=1.0)
    >>> r.add(videos)
    >>> r.search("a man opens a door", top_k=5)      # -> [Hit(video_id, score, start, end, ...)]
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prvr_sdk import bundle as bundle_io
from prvr_sdk import scoring
from prvr_sdk.backends import Choice, Session, choose, open_session
from prvr_sdk.backends.lazy import LazySession
from prvr_sdk.embeddings import VideoEmbeddings
from prvr_sdk.errors import BundleError, IndexMismatchError, InvalidInputError, ShapeMismatchError
from prvr_sdk.features import anchor_spans, uniform_clip_spans, validate_frames
from prvr_sdk.hits import Hit
from prvr_sdk.index import ExactIndex, Index, ScoringRule
from prvr_sdk.index.base import check_binding
from prvr_sdk.inputs import TextSpec, VideoSpec, pad_queries, pad_videos, prepare_query, prepare_video
from prvr_sdk.progress import progress
from prvr_sdk.serving import ServingSpec

__all__ = ["PRECISIONS", "Retriever"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
_SORT_WINDOW = 8  # batches' worth of videos sorted by length before batching (bounded memory)
_MAX_CALL_ROWS = 4096  # padded token rows per video-encoder call (see Retriever._encode_window)


def _graph_file(
    bundle: bundle_io.Bundle, role: str, precision: str, fmt: str, compute_capability: str | None = None
) -> str | None:
    """The bundle file for ``role`` ("video_encoder"/"text_encoder") in ``precision`` and ``fmt``.

    A TensorRT engine runs only on the GPU architecture it was built for, and a bundle may carry engines
    for several: the one whose ``engine.compute_capability`` is this GPU's (``compute_capability``, default
    CUDA device 0's, e.g. "9.0") wins; engines recorded for another architecture are never picked (so
    ``backend="auto"`` falls back to ONNX Runtime); an engine without the record is taken when none
    matches. Without a visible GPU the first engine is returned (nothing to match against).
    """
    found = [
        (name, entry) for name, entry in bundle.files.items()
        if entry.get("role") == role
        and entry.get("format", "onnx") == fmt
        and entry.get("precision", "fp32") == precision
    ]
    if fmt != "tensorrt" or not found:
        return found[0][0] if found else None
    if compute_capability is None:
        from prvr_sdk.backends.tensorrt import device_compute_capability

        cc = device_compute_capability(0)
        compute_capability = f"{cc[0]}.{cc[1]}" if cc else None
    if compute_capability is None:  # no GPU visible: nothing to match (the backend choice fails later)
        return found[0][0]
    recorded = {name: (entry.get("engine") or {}).get("compute_capability") for name, entry in found}
    matching = [name for name, cc in recorded.items() if cc == compute_capability]
    unrecorded = [name for name, cc in recorded.items() if cc is None]
    return (matching + unrecorded + [None])[0]


def _precision_space(manifest: Mapping[str, Any], space: str, precision: str) -> str:
    """``space`` for fp32 and for reduced precisions recorded ``compatible`` in ``manifest["precisions"]``
    (fp32 and reduced embeddings interchangeable: cosine >= 0.99 on held-out data); otherwise the sha256 of
    ``"<space>:<precision>"`` -- unmeasured precisions (e.g. engines built without calibration) included."""
    if precision == "fp32":
        return space
    entry = (manifest.get("precisions") or {}).get(precision)
    if isinstance(entry, Mapping) and entry.get("compatible") is True:
        return space
    return hashlib.sha256(f"{space}:{precision}".encode()).hexdigest()


class Retriever:
    """Encode, score and search with one exported model. Build it with ``Retriever.from_bundle``.

    Attributes:
        bundle: the verified ``prvr_sdk.bundle.Bundle``.
        choice: backend, device and the reason they were picked.
        precision: "fp32", "fp16" or "int8".
        dim: embedding size ``D``.
        spec: the model's ``ServingSpec`` (graphs, outputs, what a clip means in time, headline metrics).
        scoring: the model's ``ScoringRule`` (how a query and a video's vectors make a score).
        index: the attached index (``add``, ``load_index``): an ``ExactIndex`` or any other ``Index`` (e.g.
            ``prvr_sdk.index.qdrant.QdrantEdgeIndex``), or ``None``.
        fps: frame features per second assumed when ``encode_video`` gets neither ``fps`` nor timestamps
            (from the bundle; ``None`` when the bundle does not know, and clip times are then unknown).
    """

    def __init__(
        self,
        bundle: bundle_io.Bundle,
        choice: Choice,
        precision: str,
        video_session: Session,
        text_session: Session,
        frontend: Any = None,
    ) -> None:
        self.bundle = bundle
        self.choice = choice
        self.precision = precision
        self._video = video_session
        self._text = text_session
        self._frontend = frontend
        m = bundle.manifest
        self.spec = ServingSpec.from_manifest(m, where=f"bundle {bundle.path}")
        self.video_spec = VideoSpec.from_manifest(m)
        self.text_spec = TextSpec.from_manifest(m)
        try:
            self.scoring = ScoringRule.parse(self.spec.scoring)
        except InvalidInputError as exc:
            raise BundleError(f"bundle {bundle.path}: manifest 'serving' scoring: {exc}") from None
        self.video_outputs: tuple[str, ...] = self.spec.video.outputs
        self.fps: float | None = m["video_input"].get("fps")
        self.index: Index | None = None
        self._warned_fps = False
        self.dim: int = int(self.spec.dim)  # type: ignore[arg-type]  # from_manifest requires it

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        backend: Literal["auto", "onnxruntime", "tensorrt"] = "auto",
        device: str = "auto",
        precision: Literal["fp32", "fp16", "int8"] = "fp32",
        index: str | os.PathLike | Index | None = None,
        verify: bool = True,
        trusted_keys: Iterable[Any] | None = None,
        threads: int | None = None,
    ) -> Retriever:
        """Load a bundle written by ``prvr export``.

        Args:
            path: the bundle directory.
            backend: ``"auto"`` -- TensorRT when the bundle has engines and ``tensorrt`` is installed, else
                ONNX Runtime (CUDA when onnxruntime-gpu sees a GPU, else CPU); or force one.
            device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            precision: which graphs to run; ``"fp16"``/``"int8"`` need such graphs in the bundle.
            index: an exact-index directory, or an open ``Index`` (e.g. a ``QdrantEdgeIndex``), to attach;
                either must have been built with this bundle (``load_index``).
            verify: check every bundle file's sha256 (reads every byte once); ``False`` still checks names,
                sizes and ONNX headers (``prvr_sdk.bundle.load``).
            trusted_keys: Ed25519 public keys (paths, bytes or key objects); when given, the bundle must be
                signed by one of them (``prvr_sdk.signing``). ``None``: signatures are not checked.
            threads: ONNX Runtime intra-op threads per session (``None``: every core); processes that run
                side by side on one machine (Ray actors, server workers) pass their share.

        Raises:
            BundleError / ChecksumError: missing, corrupt or newer-format bundle; no graphs of ``precision``;
                unsigned or untrusted bundle when ``trusted_keys`` is given.
            BackendUnavailableError: the backend or device asked for is not available here.
            InvalidInputError: unknown backend, device or precision.
            IndexMismatchError: ``index`` was built with another bundle, or for another embedding size or
                scoring rule.
        """
        if precision not in PRECISIONS:
            raise InvalidInputError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InvalidInputError(f"threads: expected a positive integer or None, got {threads!r}")
        bundle = bundle_io.load(path, verify=verify, trusted_keys=trusted_keys)
        has_engine = _graph_file(bundle, "video_encoder", precision, "tensorrt") is not None
        choice = choose(backend, device, has_engine=has_engine)
        fmt = "tensorrt" if choice.backend == "tensorrt" else "onnx"
        names = {}
        for role in ("video_encoder", "text_encoder"):
            name = _graph_file(bundle, role, precision, fmt)
            if name is None:
                hint = {
                    "tensorrt": f"run `prvr build-engine {bundle.path} --precision {precision}`",
                    "onnx": "run `prvr calibrate`" if precision != "fp32" else "export it again",
                }[fmt]
                raise BundleError(
                    f"bundle {bundle.path} has no {precision} {fmt} {role} (files: {sorted(bundle.files)}); "
                    f"use precision='fp32' or {hint}"
                )
            names[role] = name
        # Each graph opens on first use (backends.lazy): a search never pays for the video encoder.
        def lazy(role: str) -> LazySession:
            return LazySession(lambda: open_session(bundle.graph(names[role]), choice, threads=threads), role)

        video, text = lazy("video_encoder"), lazy("text_encoder")
        from prvr_sdk.text import TextFrontend

        # The front end's backbone is a plain ONNX graph (no TensorRT engine): ONNX Runtime, same device.
        ort_choice = Choice("onnxruntime", choice.device if choice.backend == "onnxruntime" else "cpu", "")
        def lazy_frontend(path: Path) -> LazySession:
            def opener() -> Session:
                graph = bundle.graph(path.relative_to(bundle.path).as_posix())  # external data confined
                # No weight repacking: ~50 ms less per start, no measurable cost per sentence.
                return open_session(graph, ort_choice, threads=threads, prepack=False)

            return LazySession(opener, "text_frontend")

        frontend = TextFrontend.from_bundle(bundle, lazy_frontend)
        retriever = cls(bundle, choice, precision, video, text, frontend)
        if index is not None:
            retriever.load_index(index)
        return retriever

    def open(self) -> Retriever:
        """Open every graph now rather than at first use: a server calls it at start so that no request pays
        for it, and settings read when a session opens (``PRVR_ORT_SCAN``, threads) apply as they are now."""
        frontend_session = getattr(self._frontend, "_session", None)
        for session in (self._video, self._text, frontend_session):
            if isinstance(session, LazySession):
                session.get()
        return self

    @property
    def manifest(self) -> dict[str, Any]:
        return self.bundle.manifest

    @property
    def model_name(self) -> str:
        return self.bundle.model_name

    @property
    def bundle_sha256(self) -> str:
        """The identity that embeddings and indexes are bound to: the manifest's ``embedding_space`` (the
        model's graphs, spec and input preparation; unchanged when engines or reduced-precision graphs are
        added and the manifest re-sealed), or the manifest digest for bundles exported before it existed.
        A reduced precision that ``prvr calibrate`` did not find interchangeable with fp32 is a space of its
        own (``_precision_space``), so fp32 indexes refuse its embeddings."""
        space = self.manifest.get("embedding_space")
        space = str(space) if isinstance(space, str) and space else str(self.manifest["manifest_sha256"])
        return _precision_space(self.manifest, space, self.precision)

    @property
    def accepts_strings(self) -> bool:
        """Whether ``encode_text`` takes sentences (the bundle carries a text front end)."""
        return self._frontend is not None

    @property
    def provider(self) -> str:
        """What runs the video graph (e.g. ``CPUExecutionProvider``): the session's own report, so a CUDA
        request that ONNX Runtime serves on the CPU shows as such. Opens the graph if it was not yet."""
        return self._video.provider

    def _provider(self) -> str:
        """``provider`` once the graph is open; before that, what was chosen (``repr`` opens nothing)."""
        session = self._video
        if isinstance(session, LazySession) and not session.opened:
            return f"{self.choice.backend} on {self.choice.device} (not opened yet)"
        return session.provider

    def __repr__(self) -> str:
        text = f"strings via {self._frontend.kind}" if self._frontend is not None else "features only"
        index = f", index={len(self.index)} videos" if self.index is not None else ""
        return (
            f"Retriever(model={self.model_name!r}, dataset={self.manifest['model'].get('dataset')!r}, "
            f"backend={self.choice.backend!r}, device={self.choice.device!r}, "
            f"provider={self._provider()!r}, precision={self.precision!r}, dim={self.dim}, "
            f"text={text!r}{index})"
        )

    # ------------------------------------------------------------------ videos
    def encode_video(
        self,
        videos: Any,
        *,
        video_ids: Sequence[str] | None = None,
        fps: float | None = None,
        timestamps: Any = None,
        batch_size: int = 16,
        show_progress: bool | None = None,
    ) -> VideoEmbeddings:
        """Embed videos from their raw frame features.

        Args:
            videos: one video ``[T, Dv]`` (MUSE: ``[T, 1+P, C]`` tokens), a list of them, a mapping
                ``{video_id: frames}``, or an iterable of ``(video_id, frames)`` pairs (e.g.
                ``prvr_sdk.sources.open_features(path)``). Any ``T >= 1``: pooling to clips and sampling
                of frames happen here, as in training.
            video_ids: ids for a single array or a list (default ``"0"``, ``"1"``, ...).
            fps: frame features per second, for clip time spans (default ``self.fps``).
            timestamps: per video ``[T]`` start second of each frame (one array, a list, or a mapping by
                id), instead of ``fps`` (``fps`` given too is ignored, with a warning).
            batch_size: videos per encoder call, at most (a call also holds at most 4096 padded token rows,
                e.g. 6 MUSE videos of 12 frames x 50 tokens: more only costs memory and cache).
            show_progress: progress bar on stderr (``None``: when stderr is a terminal).

        Returns:
            ``VideoEmbeddings`` (ids, clip vectors and spans, per-video vectors, durations).

        Raises:
            ShapeMismatchError: wrong rank or feature dim. InvalidInputError: NaN/Inf, zero frames,
            duplicate ids, bad timestamps, no videos.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if fps is not None and not (isinstance(fps, int | float) and np.isfinite(fps) and fps > 0):
            raise InvalidInputError(f"fps: expected a positive number, got {fps!r}")
        if fps is not None and timestamps is not None:
            log.warning("encode_video: both fps and timestamps given; fps is ignored, clip times come from "
                        "the timestamps")
        items, total = self._video_items(videos, video_ids)
        fps = fps if fps is not None else self.fps
        parts: list[VideoEmbeddings] = []
        seen: set[str] = set()
        pending: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        window = batch_size * _SORT_WINDOW
        with progress(total, f"encode videos ({self.model_name})", show_progress) as advance:
            for position, (vid, raw) in enumerate(items):
                if vid in seen:
                    raise InvalidInputError(f"video id {vid!r} given twice")
                seen.add(vid)
                frames = self.video_spec.check(raw, name=f"video {vid!r}")
                ts = self._timestamps_for(timestamps, vid, position, len(frames))
                pending.append((vid, frames, ts))
                if len(pending) == window:
                    parts.append(self._encode_window(pending, batch_size, fps, advance))
                    pending = []
            if pending:
                parts.append(self._encode_window(pending, batch_size, fps, advance))
        if not parts:
            raise InvalidInputError("encode_video: no videos given")
        return VideoEmbeddings.concat(parts)

    def _encode_window(self, pending, batch_size: int, fps: float | None, advance) -> VideoEmbeddings:
        """Encode up to ``_SORT_WINDOW`` batches with videos of similar length batched together (a batch
        costs as much as its longest video: the Mamba scan runs over the padded length), in input order.

        A call also holds at most ``_MAX_CALL_ROWS`` padded token rows: past that, batching only moves the
        activations out of cache (MUSE at 600 tokens per video: 16 videos per call cost more per video than
        one, bench/RESULTS.md), and memory stays bounded whatever ``batch_size`` asks for."""
        order = sorted(range(len(pending)), key=lambda i: -len(pending[i][1]))
        spec = self.video_spec
        parts = []
        start = 0
        while start < len(order):
            longest = min(len(pending[order[start]][1]), spec.max_frames)  # sorted: the first is longest
            rows = longest * (spec.patches or 1) + spec.num_clips
            take = max(1, min(batch_size, _MAX_CALL_ROWS // rows))
            chunk = [pending[i] for i in order[start : start + take]]
            parts.append(self._encode_video_batch(chunk, fps))
            advance(len(chunk))
            start += take
        return VideoEmbeddings.concat(parts).select([vid for vid, _, _ in pending])

    def _video_items(self, videos: Any, video_ids: Sequence[str] | None) -> tuple[Iterator, int | None]:
        single_rank = 2 if self.video_spec.patches is None else 3
        if isinstance(videos, np.ndarray) and videos.ndim == single_rank:
            videos = [videos]
        elif isinstance(videos, np.ndarray) and videos.ndim == single_rank + 1:
            videos = list(videos)
        elif isinstance(videos, np.ndarray):
            what = "[T, Dv] frames" if self.video_spec.patches is None else "[T, 1+P, C] patch tokens"
            raise ShapeMismatchError(f"videos: expected {what} (or a batch), got shape {videos.shape}")
        if isinstance(videos, Mapping):
            if video_ids is not None:
                raise InvalidInputError("video_ids: not allowed with a mapping (its keys are the ids)")
            return iter(videos.items()), len(videos)
        if isinstance(videos, list | tuple) and all(isinstance(v, np.ndarray) for v in videos):
            if video_ids is None:
                video_ids = [str(i) for i in range(len(videos))]
            if len(video_ids) != len(videos):
                raise ShapeMismatchError(f"video_ids: {len(video_ids)} ids for {len(videos)} videos")
            return iter(zip([str(v) for v in video_ids], videos, strict=True)), len(videos)
        if isinstance(videos, Iterable) and not isinstance(videos, str | bytes):
            total = len(videos) if hasattr(videos, "__len__") else None

            def pairs() -> Iterator[tuple[str, Any]]:
                for item in videos:
                    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                        raise InvalidInputError(
                            "videos: expected arrays, a mapping of id -> array, or (id, array) pairs; got "
                            f"an item of type {type(item).__name__}"
                        )
                    yield item

            return pairs(), total
        raise InvalidInputError(f"videos: expected frame features, got {type(videos).__name__}")

    @staticmethod
    def _timestamps_for(timestamps: Any, vid: str, position: int, num_frames: int) -> np.ndarray | None:
        if timestamps is None:
            return None
        if isinstance(timestamps, Mapping):
            ts = timestamps.get(vid)
        elif isinstance(timestamps, np.ndarray) and timestamps.ndim == 1 and position == 0:
            ts = timestamps
        elif isinstance(timestamps, list | tuple) and position < len(timestamps):
            ts = timestamps[position]
        else:
            raise InvalidInputError(f"timestamps: none given for video {vid!r}")
        if ts is None:
            return None
        ts = np.asarray(ts, dtype=np.float64)
        if ts.shape != (num_frames,):
            raise ShapeMismatchError(f"timestamps of video {vid!r}: expected [{num_frames}], got {ts.shape}")
        if not np.isfinite(ts).all() or (np.diff(ts) <= 0).any() or ts[0] < 0:
            raise InvalidInputError(
                f"timestamps of video {vid!r}: expected finite, non-negative, increasing seconds"
            )
        return ts

    def _encode_video_batch(
        self, batch: list[tuple[str, np.ndarray, np.ndarray | None]], fps: float | None
    ) -> VideoEmbeddings:
        feeds = pad_videos([prepare_video(frames, self.video_spec) for _, frames, _ in batch])
        out = self._video.run({name: feeds[name] for name in self._video.input_names}, self.video_outputs)
        spec = self.spec
        ids = [vid for vid, _, _ in batch]
        num_frames = np.array([len(frames) for _, frames, _ in batch], dtype=np.int64)
        times = [self._frame_times(len(frames), ts, fps) for _, frames, ts in batch]
        durations = np.array([t[-1] for t in times], dtype=np.float64)
        clip_emb = spans = None
        counts = np.zeros(len(batch), dtype=np.int64)
        if spec.clip_output is not None:
            vectors = out[spec.clip_output].astype(np.float32, copy=False)  # [B, Nc, D]
            counts[:] = vectors.shape[1]
            clip_emb = vectors.reshape(-1, vectors.shape[-1])
            if spec.clip_time == "anchors":  # learned moments: (centre, width) as fractions of the video
                spans = np.concatenate([
                    anchor_spans(anchor, duration)
                    for anchor, duration in zip(out[spec.anchor_output], durations, strict=True)
                ])
            else:
                spans = np.concatenate([uniform_clip_spans(t, vectors.shape[1]) for t in times])
        video_emb = None
        if spec.video_output is not None:
            video_emb = out[spec.video_output].astype(np.float32, copy=False)
        return VideoEmbeddings(
            ids=ids,
            clip_emb=clip_emb,
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            spans=spans,
            video_emb=video_emb,
            durations=durations,
            num_frames=num_frames,
            model=self.model_name,
            bundle_sha256=self.bundle_sha256,
        )

    def _frame_times(self, num_frames: int, ts: np.ndarray | None, fps: float | None) -> np.ndarray:
        """``[T + 1]`` seconds: start of every frame and the end of the last one (NaN when unknown)."""
        if ts is not None:
            step = ts[-1] - ts[-2] if num_frames > 1 else (1.0 / fps if fps else 0.0)
            return np.append(ts, ts[-1] + step)
        if fps is None:
            if not self._warned_fps:
                log.warning(
                    "the bundle does not record the frame rate of its features: pass fps= or timestamps= to "
                    "encode_video to get clip times (hits will have start = end = None)"
                )
                self._warned_fps = True
            return np.full(num_frames + 1, np.nan)
        return np.arange(num_frames + 1, dtype=np.float64) / float(fps)

    # ------------------------------------------------------------------ text
    def encode_text(
        self, queries: Any, batch_size: int = 64, show_progress: bool | None = None
    ) -> np.ndarray:
        """Embed queries: sentences (when the bundle has a text front end) or precomputed features.

        Args:
            queries: a string or list of strings; or features of the bundle's text backbone -- for token
                models one ``[Lq, Dq]`` array, a list of them or ``[N, Lq, Dq]``; for sentence models one
                ``[Dq]`` vector or ``[N, Dq]``.
            batch_size: queries per encoder call.
            show_progress: progress bar on stderr (``None``: when stderr is a terminal).

        Returns:
            float32 unit vectors: ``[D]`` for a single query, ``[N, D]`` for a list or batch.

        Raises:
            InvalidInputError: strings for a bundle without a front end (the message names the backbone
                whose features it expects), an empty query or list, NaN/Inf features.
            ShapeMismatchError: features of the wrong rank or dim.
        Logs:
            a warning (logger ``prvr_sdk.retriever``) for a query longer than the model reads
            (``max_tokens``); its tail is dropped.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size: expected a positive integer, got {batch_size!r}")
        single, features = self._query_features(queries, batch_size)
        spec = self.text_spec
        long = [i for i, f in enumerate(features) if spec.kind == "tokens" and len(f) > spec.max_tokens]
        if long:
            log.warning(
                f"{len(long)} quer{'y' if len(long) == 1 else 'ies'} (first: #{long[0]}, "
                f"{len(features[long[0]])} tokens) exceed the {spec.max_tokens} tokens the model reads; "
                "the rest is ignored, as in training"
            )
        prepared = [prepare_query(f, spec) for f in features]
        out = []
        with progress(len(prepared), "encode queries", show_progress) as advance:
            for start in range(0, len(prepared), batch_size):
                chunk = prepared[start : start + batch_size]
                feeds = pad_queries(chunk)
                (emb,) = self._text.run({n: feeds[n] for n in self._text.input_names}, ["text_emb"]).values()
                out.append(emb.astype(np.float32, copy=False))
                advance(len(chunk))
        emb = np.concatenate(out)
        return emb[0] if single else emb

    def _query_features(self, queries: Any, batch_size: int) -> tuple[bool, list[np.ndarray]]:
        spec = self.text_spec
        if isinstance(queries, str) or (
            isinstance(queries, list | tuple) and queries and all(isinstance(q, str) for q in queries)
        ):
            single = isinstance(queries, str)
            texts = [queries] if single else list(queries)
            if self._frontend is None:
                from prvr_sdk.text import missing_frontend_message

                raise InvalidInputError(missing_frontend_message(self.manifest))
            feats = self._frontend.encode(texts, batch_size=batch_size)
            features = list(feats) if spec.kind == "tokens" else [f for f in np.asarray(feats)]
            return single, [np.asarray(f, dtype=np.float32) for f in features]
        one_rank = 2 if spec.kind == "tokens" else 1
        if isinstance(queries, np.ndarray) and queries.ndim == one_rank:
            single, items = True, [queries]
        elif isinstance(queries, np.ndarray) and queries.ndim == one_rank + 1:
            single, items = False, list(queries)
        elif isinstance(queries, list | tuple) and len(queries) == 0:
            raise InvalidInputError("encode_text: no queries given")
        elif isinstance(queries, list | tuple) and all(isinstance(x, np.ndarray) for x in queries):
            single, items = False, list(queries)
        else:
            shape = getattr(queries, "shape", None)
            want = "[Lq, Dq] token features" if spec.kind == "tokens" else "[Dq] sentence features"
            raise ShapeMismatchError(
                f"queries: expected strings or {want} with Dq = {spec.dim} (or a batch); got "
                f"{type(queries).__name__}{'' if shape is None else f' of shape {shape}'}"
            )
        features = []
        for i, q in enumerate(items):
            want = (spec.dim,) if spec.kind == "sentence" else (None, spec.dim)
            if q.ndim != len(want) or q.shape[-1] != spec.dim:
                layout = f"[{spec.dim}] sentence" if spec.kind == "sentence" else f"[Lq, {spec.dim}] token"
                raise ShapeMismatchError(
                    f"query {i}: expected {layout} features (Dq = {spec.dim}: "
                    f"{self.manifest['text_input'].get('expects', '')}), got shape {q.shape}"
                )
            checked = validate_frames(q.reshape(-1, spec.dim), spec.dim, name=f"query {i}")
            features.append(checked.reshape(q.shape))
        return single, features

    # ------------------------------------------------------------------ scores
    def score(self, text_emb: np.ndarray, videos: VideoEmbeddings) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's score of every query against every video, and the winning clip.

        Args:
            text_emb: ``[D]`` or ``[Nq, D]`` from ``encode_text``.
            videos: from ``encode_video``.

        Returns:
            ``(scores, best_clip)``: float32 ``[Nq, Nv]`` (``[Nv]`` for one query) and the winning clip's
            index in its video, int64 of the same shape (``None`` for video-level models).
        """
        self._check_same_bundle(videos)
        single = np.ndim(text_emb) == 1
        q = np.atleast_2d(np.asarray(text_emb, dtype=np.float32))
        if q.shape[1] != self.dim or videos.dim != self.dim:
            raise ShapeMismatchError(
                f"score: expected [Nq, {self.dim}] queries and {self.dim}-d videos, got {q.shape} and "
                f"{videos.dim}-d"
            )
        rule = self.scoring
        best = None
        if rule.kind == "video":
            scores = scoring.cosine(q, videos.video_emb)
        else:
            clips, mask = videos.padded_clips()
            clip_scores, best = scoring.max_over_clips(q, clips, clip_mask=mask)
            frame = scoring.cosine(q, videos.video_emb) if rule.kind == "weighted" else None
            scores = scoring.weighted_score(clip_scores, frame, rule.clip_weight, rule.frame_weight)
        if single:
            return scores[0], None if best is None else best[0]
        return scores, best

    # ------------------------------------------------------------------ index and search
    def new_index(self) -> ExactIndex:
        """An empty exact index bound to this bundle (dim, scoring rule, bundle hash, model)."""
        return ExactIndex(
            self.dim,
            self.scoring,
            bundle_sha256=self.bundle_sha256,
            model=self.model_name,
            bundle_path=str(Path(self.bundle.path).resolve()),
        )

    def add(
        self,
        videos: VideoEmbeddings,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        upsert: bool = False,
    ) -> None:
        """Add encoded videos to ``self.index`` (a new in-memory exact index when there is none; attach
        another kind, e.g. a ``QdrantEdgeIndex``, with ``load_index`` first).

        Each video's metadata gets ``"duration"`` (seconds) unless given; hits return it and filters can
        use it. Call ``self.index.save(path)`` to write the index (atomically).

        Raises:
            IndexMismatchError: ``videos`` were encoded by another bundle.
            InvalidInputError / ShapeMismatchError: from the index's ``add`` (duplicate ids, ...).
        """
        self._check_same_bundle(videos)
        if metadata is not None and len(metadata) != len(videos):
            raise ShapeMismatchError(f"metadata: {len(metadata)} entries for {len(videos)} videos")
        merged = []
        for i in range(len(videos)):
            meta = dict(metadata[i] or {}) if metadata is not None else {}
            if np.isfinite(videos.durations[i]):
                meta.setdefault("duration", float(videos.durations[i]))
            merged.append(meta)
        clip_embs = spans = None
        if self.scoring.uses_clips:
            clip_embs, spans = [], []
            for _, clips, clip_spans in videos.per_video():
                clip_embs.append(clips)
                spans.append(None if clip_spans is None or np.isnan(clip_spans).any() else clip_spans)
        if self.index is None:
            self.index = self.new_index()
        (self.index.upsert if upsert else self.index.add)(  # both part of the Index protocol
            list(videos.ids),
            clip_embs=clip_embs,
            video_embs=videos.video_emb if self.scoring.uses_video_emb else None,
            spans=spans,
            metadata=merged,
        )

    def _check_same_bundle(self, videos: VideoEmbeddings) -> None:
        if videos.bundle_sha256 not in (None, self.bundle_sha256):
            raise IndexMismatchError(
                f"these embeddings were made by bundle {videos.bundle_sha256[:12]}…, not this retriever's "
                f"{self.bundle_sha256[:12]}…; encode them again with this bundle"
            )

    def load_index(self, path: str | os.PathLike | Index, **kwargs: Any) -> Index:
        """Attach an index built with this bundle: open the exact index in directory ``path``
        (``ExactIndex.load`` keywords pass through), or take an already open ``Index`` -- a
        ``QdrantEdgeIndex``, ``QdrantRemoteIndex`` or ``ExactIndex`` -- after checking it against the bundle.

        Raises:
            IndexMismatchError: built with another bundle, or for another embedding size or scoring rule.
            IndexFormatError: not an index / corrupt. InvalidInputError: neither a path nor an ``Index``,
                or keywords given with an open index.
        """
        if isinstance(path, str | os.PathLike):
            self.index = ExactIndex.load(path, bundle_sha256=self.bundle_sha256, dim=self.dim, **kwargs)
            return self.index
        if not isinstance(path, Index):
            raise InvalidInputError(
                f"load_index: expected an index directory or an open Index, got {type(path).__name__}"
            )
        if kwargs:
            raise InvalidInputError(
                f"load_index: keywords {sorted(kwargs)} are for opening a directory; this index is open"
            )
        self._check_index(path)
        self.index = path
        return self.index

    def _check_index(self, index: Index) -> None:
        """What ``ExactIndex.load(bundle_sha256=, dim=)`` checks, for an index opened elsewhere -- plus the
        scoring rule, which a loaded index reads from disk but an object could have been given any."""
        place = getattr(index, "path", None) or getattr(index, "collection", None)
        where = f"index {place}" if place else f"the given {type(index).__name__}"
        check_binding(index, where, bundle_sha256=self.bundle_sha256, dim=self.dim)
        if ScoringRule.parse(index.scoring) != self.scoring:
            raise IndexMismatchError(
                f"{where} scores by {ScoringRule.parse(index.scoring).to_dict()}, the bundle by "
                f"{self.scoring.to_dict()}"
            )

    def search(
        self,
        query: str | Sequence[str] | np.ndarray,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: Literal["video", "clip"] = "video",
        min_score: float | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Find the videos -- and the moments in them -- that match ``query``.

        Args:
            query: a sentence, a list of sentences, or query embeddings from ``encode_text`` (``[D]`` /
                ``[Nq, D]``; arrays are embeddings here, not backbone features).
            top_k: hits per query.
            filter: metadata filter applied before top-k, e.g. ``{"video_id": ["a", "b"]}`` or
                ``{"duration": {"$gte": 60}}`` (``prvr_sdk.index.filters``).
            group_by: ``"video"`` (one hit per video, at its best clip) or ``"clip"``.
            min_score: drop hits below this score.

        Returns:
            ``list[Hit]`` best first for one query; one such list per query for a list or batch.

        Raises:
            InvalidInputError: no index attached (``add`` or ``load_index`` first), bad filter or top_k.
        """
        if self.index is None:
            raise InvalidInputError("search: no index attached; call add(...) or load_index(path) first")
        if isinstance(query, np.ndarray):
            if query.shape[-1] != self.dim or query.ndim not in (1, 2):
                raise ShapeMismatchError(
                    f"query: arrays are query embeddings [D] or [Nq, {self.dim}], got shape {query.shape}; "
                    "pass backbone features through encode_text first"
                )
            emb = query
        else:
            emb = self.encode_text(query)
        return self.index.search(emb, top_k=top_k, filter=filter, group_by=group_by, min_score=min_score)

