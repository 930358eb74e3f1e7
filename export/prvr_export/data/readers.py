"""Readers for the PRVR file formats (MODELS.md §1.2–§1.3): caption files, BigFile, video2frames, hdf5.

Every reader validates what it reads and raises a ``prvr_sdk.errors`` class whose message names the file
(and the video or caption id) and the problem: a missing file, a size that disagrees with ``shape.txt``, a
frame id absent from ``id.txt``, a wrong feature width, an empty video, NaN or Inf values.

``video2frames.txt`` is a Python dict literal; upstream code ``eval``s it. Here it is parsed with
``ast.literal_eval``, which accepts literals only, so a file holding code is rejected and never run.
hdf5 files are opened lazily and reopened in a forked DataLoader worker (h5py handles do not survive fork).
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.features import validate_frames

__all__ = [
    "BigFile",
    "BigFileVideos",
    "Caption",
    "H5Features",
    "read_captions",
    "read_meta",
    "read_video2frames",
    "video_id_of",
]


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InvalidInputError(f"{path}: {what} not found")
    return path


# --- caption files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caption:
    cap_id: str
    video_id: str
    text: str


def video_id_of(cap_id: str) -> str:
    """The video id of a caption id: the part before the first ``#`` (the whole id when there is none)."""
    return cap_id.split("#", 1)[0]


def read_captions(path: str | os.PathLike) -> list[Caption]:
    """One ``<cap_id> <text>`` per line, split at the first space; blank lines are skipped.

    Returns:
        The captions in file order.
    Raises:
        InvalidInputError: the file is missing, a line has no text, a cap_id repeats, or the file is empty.
    """
    path = _require_file(Path(path), "caption file")
    captions: list[Caption] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            cap_id, _, text = line.partition(" ")
            text = text.strip()
            if not text:
                raise InvalidInputError(f"{path}:{lineno}: expected '<cap_id> <text>', got {line[:80]!r}")
            if cap_id in seen:
                raise InvalidInputError(f"{path}:{lineno}: caption id {cap_id!r} appears twice")
            seen.add(cap_id)
            captions.append(Caption(cap_id, video_id_of(cap_id), text))
    if not captions:
        raise InvalidInputError(f"{path}: caption file holds no captions")
    return captions


# --- BigFile + video2frames ---------------------------------------------------------------------------


def read_video2frames(path: str | os.PathLike) -> dict[str, list[str]]:
    """``video_id -> [frame_id, ...]`` (temporal order) from a ``video2frames.txt`` dict literal.

    Parsed with ``ast.literal_eval``: only Python literals are accepted, nothing in the file is executed.

    Raises:
        InvalidInputError: missing file, not a literal (e.g. code), or not a dict of str -> list of str.
    """
    path = _require_file(Path(path), "video2frames file")
    text = path.read_text(encoding="utf-8")
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise InvalidInputError(
            f"{path}: expected a Python dict literal {{video_id: [frame_id, ...]}}; "
            f"the file is not a plain literal ({type(exc).__name__}), so it was not used"
        ) from None
    if not isinstance(value, dict):
        raise InvalidInputError(f"{path}: expected a dict literal, got a {type(value).__name__}")
    for video_id, frames in value.items():
        if not isinstance(video_id, str):
            raise InvalidInputError(f"{path}: video id {video_id!r} is not a string")
        if not isinstance(frames, (list, tuple)) or not all(isinstance(f, str) for f in frames):
            raise InvalidInputError(f"{path}: video {video_id!r}: expected a list of frame-id strings")
    return {video_id: list(frames) for video_id, frames in value.items()}


class BigFile:
    """MS-SL's feature store: ``shape.txt`` "N D", ``id.txt`` N ids, ``feature.bin`` N x D float32 row-major.

    Rows are read through a read-only ``np.memmap``, so opening costs only ``id.txt``.

    Raises (at construction):
        InvalidInputError: a missing file, a malformed ``shape.txt``, an id count other than N, or a
            ``feature.bin`` whose size is not N*D*4 bytes.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        shape_path = _require_file(self.folder / "shape.txt", "BigFile shape.txt")
        id_path = _require_file(self.folder / "id.txt", "BigFile id.txt")
        self.bin_path = _require_file(self.folder / "feature.bin", "BigFile feature.bin")
        parts = shape_path.read_text(encoding="ascii", errors="replace").split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise InvalidInputError(f"{shape_path}: expected 'N D' (two integers), got {' '.join(parts)!r}")
        self.num_rows, self.dim = int(parts[0]), int(parts[1])
        # MS-SL reads id.txt as bytes and decodes ISO-8859-1; ids are whitespace-separated.
        self.ids = id_path.read_bytes().decode("iso-8859-1").split()
        if len(self.ids) != self.num_rows:
            raise InvalidInputError(
                f"{id_path}: holds {len(self.ids)} ids, but {shape_path} says N = {self.num_rows}"
            )
        expected = self.num_rows * self.dim * 4
        actual = self.bin_path.stat().st_size
        if actual != expected:
            raise InvalidInputError(
                f"{self.bin_path}: {actual} bytes, expected N*D*4 = {self.num_rows}*{self.dim}*4 = "
                f"{expected} (N, D from {shape_path})"
            )
        self.row_of = {name: row for row, name in enumerate(self.ids)}
        if len(self.row_of) != len(self.ids):
            raise InvalidInputError(f"{id_path}: frame ids are not unique")
        self._data: np.memmap | None = None

    @property
    def data(self) -> np.ndarray:
        if self._data is None:  # np.memmap refuses a zero-byte file
            if self.num_rows == 0:
                return np.zeros((0, self.dim), np.float32)
            self._data = np.memmap(self.bin_path, dtype="<f4", mode="r", shape=(self.num_rows, self.dim))
        return self._data

    def read_rows(self, names: list[str], owner: str) -> np.ndarray:
        """Rows ``names`` stacked, float32 ``[len(names), D]``; ``owner`` names the video in errors."""
        rows = []
        for name in names:
            row = self.row_of.get(name)
            if row is None:
                raise InvalidInputError(
                    f"{self.folder / 'id.txt'}: video {owner!r} lists frame {name!r}, which is not in id.txt"
                )
            rows.append(row)
        return np.asarray(self.data[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


class BigFileVideos:
    """Frame sequences from a BigFile folder and its ``video2frames.txt``: ``read(video_id) -> [Nf, Dv]``."""

    def __init__(self, folder: str | os.PathLike, expected_dim: int | None = None) -> None:
        self.path = Path(folder)
        self.bigfile = BigFile(self.path)
        if expected_dim is not None and self.bigfile.dim != expected_dim:
            raise ShapeMismatchError(
                f"{self.path / 'shape.txt'}: feature dim D = {self.bigfile.dim}, "
                f"but the config expects video_feat_dim = {expected_dim}"
            )
        self.video2frames = read_video2frames(self.path / "video2frames.txt")
        self.dim = self.bigfile.dim

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.video2frames

    def read(self, video_id: str) -> np.ndarray:
        """Validated float32 ``[Nf, Dv]`` frames of ``video_id``, in temporal order."""
        frames = self.video2frames.get(video_id)
        if frames is None:
            raise InvalidInputError(f"{self.path / 'video2frames.txt'}: no entry for video {video_id!r}")
        name = f"{self.path}:{video_id}"
        if not frames:
            raise InvalidInputError(f"{name}: video has 0 frames in video2frames.txt")
        return validate_frames(self.bigfile.read_rows(frames, video_id), expected_dim=self.dim, name=name)


# --- hdf5 feature files -------------------------------------------------------------------------------


class H5Features:
    """One hdf5 file holding one dataset per key (cap_id or video_id), read lazily and validated.

    Args:
        path: the hdf5 file.
        item_shape: expected trailing shape of every entry, ``None`` for a free axis. Token features:
            ``(None, Dq)``; sentence features: ``(Dq,)`` (a stored ``[1, Dq]`` is squeezed); frame features:
            ``(None, Dv)``; patch tokens: ``(None, 1+P, C)``.
        what: a word for messages ("token features", "video features" ...).
    """

    def __init__(self, path: str | os.PathLike, item_shape: tuple[int | None, ...], what: str) -> None:
        self.path = _require_file(Path(path), what)
        self.item_shape = tuple(item_shape)
        self.what = what
        self._file = None
        self._pid = None

    def _h5(self):
        if self._file is None or self._pid != os.getpid():  # a forked worker needs its own handle
            try:
                import h5py
            except ImportError as exc:
                from prvr_sdk.errors import BackendUnavailableError

                raise BackendUnavailableError("h5py", "train", str(exc)) from None
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise InvalidInputError(f"{self.path}: cannot open as hdf5 ({exc})") from None
            self._pid = os.getpid()
        return self._file

    def __contains__(self, key: str) -> bool:
        return key in self._h5()

    def keys(self) -> Iterator[str]:
        return iter(self._h5().keys())

    def read(self, key: str) -> np.ndarray:
        """The entry ``key`` as float32, shape-checked against ``item_shape``, free of NaN/Inf."""
        h5 = self._h5()
        if key not in h5:
            raise InvalidInputError(f"{self.path}: no {self.what} for {key!r}")
        value = np.asarray(h5[key][()], dtype=np.float32)
        name = f"{self.path}:{key}"
        shape = self.item_shape
        if len(shape) == 1 and value.ndim == 2 and value.shape[0] == 1:
            value = value[0]  # a sentence vector stored as [1, Dq]
        if value.ndim != len(shape) or any(
            e is not None and e != a for e, a in zip(shape, value.shape, strict=True)
        ):
            expected = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
            raise ShapeMismatchError(f"{name}: {self.what} of shape {list(value.shape)}, expected {expected}")
        if value.ndim >= 2 and value.shape[0] == 0:
            raise InvalidInputError(f"{name}: {self.what} have 0 rows")
        if not np.isfinite(value).all():
            raise InvalidInputError(f"{name}: {self.what} contain NaN or Inf")
        return value

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self):  # picklable for spawn-based DataLoader workers; the handle is reopened there
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        return state


# --- metadata (spans) ---------------------------------------------------------------------------------


def read_meta(path: str | os.PathLike) -> dict:
    """The optional metadata JSON: ``{"fps", "videos": {id: {"duration"}}, "captions": {cap_id: {"span"}}}``.

    Raises:
        InvalidInputError: the file is not JSON, or lacks the ``videos`` / ``captions`` objects.
    """
    path = _require_file(Path(path), "metadata file")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("captions", {}), dict):
        raise InvalidInputError(f"{path}: expected an object with a 'captions' object")
    return meta
