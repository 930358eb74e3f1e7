"""``VideoEmbeddings``: what the video encoder made of a batch of videos, ready for an index or ``score``.

PRVR stores several vectors per video (one per clip, or per moment for AMDNet's moment mode) and a time
span per vector, so a search can say *where* in the video the sentence matches. The clip vectors of all
videos sit in one contiguous matrix with per-video offsets -- the layout of the on-disk index
(docs/architecture.md §4) -- so handing them to ``ExactIndex.add`` copies nothing per video.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.fsutil import atomic_write
from prvr_sdk.limits import check_array, check_limits, npz_headers, read_npz_member

__all__ = ["VideoEmbeddings"]

_FORMAT = 1
DEFAULT_NAME = "embeddings.npz"  # the file inside a directory given as the path


@dataclass(frozen=True, eq=False)
class VideoEmbeddings:
    """Embeddings of ``Nv`` videos.

    Attributes:
        ids: video ids, in input order.
        clip_emb: float32 ``[N_clips, D]`` unit vectors of every video's clips (moments), concatenated;
            ``None`` for video-level models (MUSE).
        offsets: int64 ``[Nv + 1]``: video ``i`` owns rows ``offsets[i]:offsets[i+1]`` of ``clip_emb``
            and ``spans``.
        spans: float64 ``[N_clips, 2]`` (start, end) seconds of each clip; NaN where unknown.
        video_emb: float32 ``[Nv, D]`` one unit vector per video (MamFusion's frame branch, MUSE) or None.
        durations: float64 ``[Nv]`` seconds (NaN where unknown).
        num_frames: int64 ``[Nv]``, frame features each video had.
        model: model name of the bundle that made them.
        bundle_sha256: that bundle's hash; an index refuses embeddings of another bundle.
    """

    ids: list[str]
    clip_emb: np.ndarray | None
    offsets: np.ndarray
    spans: np.ndarray | None
    video_emb: np.ndarray | None
    durations: np.ndarray
    num_frames: np.ndarray
    model: str | None = None
    bundle_sha256: str | None = None

    def __post_init__(self) -> None:
        nv = len(self.ids)
        if self.offsets.shape != (nv + 1,):
            raise ShapeMismatchError(f"offsets: expected shape ({nv + 1},), got {self.offsets.shape}")
        if self.clip_emb is not None and (self.clip_emb.ndim != 2 or len(self.clip_emb) != self.offsets[-1]):
            raise ShapeMismatchError(
                f"clip_emb: expected [{int(self.offsets[-1])}, D], got {self.clip_emb.shape}"
            )
        if self.video_emb is not None and self.video_emb.shape[0] != nv:
            raise ShapeMismatchError(f"video_emb: expected [{nv}, D], got {self.video_emb.shape}")
        if self.clip_emb is None and self.video_emb is None:
            raise InvalidInputError("VideoEmbeddings needs clip_emb, video_emb or both")
        object.__setattr__(self, "_where", {vid: i for i, vid in enumerate(self.ids)})

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        parts = [f"videos={len(self)}", f"dim={self.dim}"]
        if self.clip_emb is not None:
            parts.append(f"clips={len(self.clip_emb)}")
        if self.video_emb is not None:
            parts.append("video_emb")
        return f"VideoEmbeddings({', '.join(parts)}, model={self.model!r})"

    @property
    def dim(self) -> int:
        return int((self.clip_emb if self.clip_emb is not None else self.video_emb).shape[1])

    def _position(self, video: int | str) -> int:
        if isinstance(video, str):
            where = self._where.get(video)  # type: ignore[attr-defined]
            if where is None:
                raise InvalidInputError(f"no video {video!r} in these embeddings")
            return where
        if not -len(self) <= video < len(self):
            raise InvalidInputError(f"video index {video} out of range for {len(self)} videos")
        return int(video) % len(self)

    def clips(self, video: int | str) -> np.ndarray:
        """``[Nc_i, D]`` clip vectors of one video (by position or id)."""
        if self.clip_emb is None:
            raise InvalidInputError(f"model {self.model!r} makes one vector per video; it has no clips")
        i = self._position(video)
        return self.clip_emb[self.offsets[i] : self.offsets[i + 1]]

    def clip_spans(self, video: int | str) -> np.ndarray:
        """``[Nc_i, 2]`` (start, end) seconds of one video's clips."""
        if self.spans is None:
            raise InvalidInputError(f"model {self.model!r} makes one vector per video; it has no clip spans")
        i = self._position(video)
        return self.spans[self.offsets[i] : self.offsets[i + 1]]

    def per_video(self) -> Iterator[tuple[str, np.ndarray | None, np.ndarray | None]]:
        """``(id, clips [Nc_i, D] or None, spans [Nc_i, 2] or None)`` per video."""
        for i, vid in enumerate(self.ids):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            yield (
                vid,
                None if self.clip_emb is None else self.clip_emb[lo:hi],
                None if self.spans is None else self.spans[lo:hi],
            )

    def padded_clips(self) -> tuple[np.ndarray, np.ndarray]:
        """``(clips [Nv, max Nc, D], mask [Nv, max Nc] bool)`` for ``scoring.max_over_clips``."""
        counts = np.diff(self.offsets)
        width = int(counts.max(initial=1))
        out = np.zeros((len(self), width, self.dim), dtype=np.float32)
        mask = np.arange(width)[None, :] < counts[:, None]
        if self.clip_emb is not None:
            out[mask] = self.clip_emb
        return out, mask

    def select(self, videos: Sequence[int | str]) -> VideoEmbeddings:
        """A new ``VideoEmbeddings`` holding ``videos`` (positions or ids), in that order."""
        pos = [self._position(v) for v in videos]
        counts = np.diff(self.offsets)[pos] if pos else np.zeros(0, dtype=np.int64)
        rows = (
            np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in pos])
            if pos
            else np.zeros(0, dtype=np.int64)
        )
        return VideoEmbeddings(
            ids=[self.ids[i] for i in pos],
            clip_emb=None if self.clip_emb is None else self.clip_emb[rows],
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            spans=None if self.spans is None else self.spans[rows],
            video_emb=None if self.video_emb is None else self.video_emb[pos],
            durations=self.durations[pos],
            num_frames=self.num_frames[pos],
            model=self.model,
            bundle_sha256=self.bundle_sha256,
        )

    @classmethod
    def concat(cls, parts: Sequence[VideoEmbeddings]) -> VideoEmbeddings:
        """Join embeddings made by one bundle, in order."""
        if not parts:
            raise InvalidInputError("concat: no embeddings to join")
        first = parts[0]
        for p in parts[1:]:
            if (p.model, p.bundle_sha256, p.clip_emb is None, p.video_emb is None) != (
                first.model, first.bundle_sha256, first.clip_emb is None, first.video_emb is None
            ):
                raise InvalidInputError("concat: embeddings come from different bundles or models")
        counts = np.concatenate([np.diff(p.offsets) for p in parts])

        def cat(name: str) -> np.ndarray | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else np.concatenate(values)

        return cls(
            ids=[i for p in parts for i in p.ids],
            clip_emb=cat("clip_emb"),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            spans=cat("spans"),
            video_emb=cat("video_emb"),
            durations=np.concatenate([p.durations for p in parts]),
            num_frames=np.concatenate([p.num_frames for p in parts]),
            model=first.model,
            bundle_sha256=first.bundle_sha256,
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` (no pickles) atomically: a temp file renamed into place. A directory (an existing
        one, or a path ending in ``/``) gets ``embeddings.npz`` inside. Returns the file written."""
        if Path(path).is_dir() or str(path).endswith(("/", os.sep)):
            path = Path(path) / DEFAULT_NAME
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays = {
            "format": np.array(_FORMAT),
            "ids": np.array(self.ids, dtype=str),
            "offsets": self.offsets,
            "durations": self.durations,
            "num_frames": self.num_frames,
            "model": np.array(self.model or ""),
            "bundle_sha256": np.array(self.bundle_sha256 or ""),
        }
        for name in ("clip_emb", "spans", "video_emb"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
                np.savez(f, **arrays)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike, *, max_bytes: int | None = None) -> VideoEmbeddings:
        """Read what ``save`` wrote, or a folder of sharded embeddings (``prvr encode --engine ray``).

        A folder with a sharded-embeddings ``manifest.json`` is verified and concatenated by
        ``prvr_sdk.scale.shards.load_sharded`` (each shard's size and sha256 against the manifest, one bundle
        hash, ``max_bytes`` per shard); any other folder means its ``embeddings.npz``.

        Every member's ``.npy`` header is checked before anything is inflated: known members must have
        their dtype kind and rank, and all members together may declare at most ``max_bytes`` (``None`` =
        ``limits.DEFAULT_MAX_BYTES``, 2 GiB; CLI ``--max-bytes``), so a zip bomb is refused unread.

        Raises:
            InvalidInputError: missing file, not a VideoEmbeddings file (a required member missing, a
                member of the wrong dtype or shape, offsets out of order), over ``max_bytes``, or a newer
                format.
        """
        path = Path(path)
        if path.is_dir():
            from prvr_sdk.scale.shards import MANIFEST, load_sharded

            if (path / MANIFEST).is_file():
                return load_sharded(path, max_bytes=max_bytes)
            path = path / DEFAULT_NAME
        if not path.is_file():
            raise InvalidInputError(f"{path}: embeddings file not found (write one with `prvr encode`)")
        _, limit = check_limits(None, max_bytes)
        headers = npz_headers(path)
        _check_members(path, headers, limit)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: read_npz_member(z, path, k) for k in _MEMBERS if k in z.files}
        except (OSError, ValueError) as exc:
            if isinstance(exc, InvalidInputError):
                raise
            raise InvalidInputError(f"{path}: not a readable .npz file ({exc})") from None
        if int(data["format"]) > _FORMAT:
            raise InvalidInputError(f"{path}: format {int(data['format'])} is newer than this prvr-sdk reads")
        offsets = data["offsets"].astype(np.int64)
        if offsets.size == 0 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise InvalidInputError(f"{path}: offsets must start at 0 and never decrease")
        try:
            return cls(
                ids=[str(i) for i in data["ids"]],
                clip_emb=data.get("clip_emb"),
                offsets=offsets,
                spans=data.get("spans"),
                video_emb=data.get("video_emb"),
                durations=data["durations"],
                num_frames=data["num_frames"],
                model=str(data["model"]) or None,
                bundle_sha256=str(data["bundle_sha256"]) or None,
            )
        except (ShapeMismatchError, InvalidInputError) as exc:
            raise InvalidInputError(f"{path}: inconsistent VideoEmbeddings file ({exc})") from None


# member -> (dtype kinds allowed, rank, required); kinds: i int, u uint, f float, U str
_MEMBERS: dict[str, tuple[str, int, bool]] = {
    "format": ("iu", 0, True),
    "ids": ("U", 1, True),
    "offsets": ("iu", 1, True),
    "durations": ("f", 1, True),
    "num_frames": ("iu", 1, True),
    "model": ("U", 0, True),
    "bundle_sha256": ("U", 0, True),
    "clip_emb": ("f", 2, False),
    "spans": ("f", 2, False),
    "video_emb": ("f", 2, False),
}


def _check_members(path: Path, headers: dict, max_bytes: int) -> None:
    """Refuse an embeddings file from its member headers alone: required members, dtypes, ranks, size."""
    if "format" not in headers or "offsets" not in headers:
        raise InvalidInputError(f"{path}: not a VideoEmbeddings file (written by `prvr encode`)")
    missing = [k for k, (_, _, required) in _MEMBERS.items() if required and k not in headers]
    if missing:
        raise InvalidInputError(f"{path}: VideoEmbeddings file lacks {', '.join(missing)}")
    total = 0
    for key, (shape, dtype) in headers.items():
        # rows here are clips of all videos, not frames of one: only the byte limit applies
        check_array(shape, dtype, f"{path}:{key}", max_frames=2**62, max_bytes=max_bytes, numeric=False)
        total += math.prod(shape) * dtype.itemsize
        if key not in _MEMBERS:
            continue
        kinds, rank, _ = _MEMBERS[key]
        if dtype.kind not in kinds or len(shape) != rank:
            raise InvalidInputError(
                f"{path}:{key}: expected a {rank}-d array of kind {kinds!r}, got shape {list(shape)} {dtype}"
            )
    if headers.get("spans", ((0, 2),))[0][1:] != (2,):
        raise InvalidInputError(f"{path}:spans: expected [N, 2], got {list(headers['spans'][0])}")
    if total > max_bytes:
        raise InvalidInputError(
            f"{path}: members declare {total} bytes in all, over the limit of {max_bytes} "
            "(raise it with --max-bytes, or max_bytes= in the API)"
        )
