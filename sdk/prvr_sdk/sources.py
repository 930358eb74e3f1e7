"""Per-video frame features on disk, read without torch (``prvr encode``, ``prvr index build``, training).

``open_features(path)`` recognises the layouts users have:

* an ``.h5`` / ``.hdf5`` file with one dataset per video id, ``[T, Dv]`` (or ``[T, 1+P, C]`` patch tokens);
* an ``.npz`` file, one array per video id;
* a directory of ``<video_id>.npy`` files;
* an MS-SL "BigFile" directory: ``feature.bin`` (float32 rows), ``shape.txt`` ("N D"), ``id.txt`` (row ids)
  and ``video2frames.txt`` (a dict literal ``video_id -> [row id, ...]``, parsed with ``ast.literal_eval``:
  upstream code ``eval``s it; a file holding code is rejected here, never run).

Every read is validated (``prvr_sdk.features.validate_frames``): errors name the file, the video and the
problem (missing file, wrong width, an empty video, NaN or Inf). hdf5 handles reopen in forked workers.

Before anything is read, what a file *declares* (shape x itemsize, frame count, text-file size) is checked
against ``max_frames`` and ``max_bytes`` (``prvr_sdk.limits``): a few-KB file declaring gigabytes is refused
with ``InvalidInputError`` instead of exhausting memory.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from prvr_sdk.errors import BackendUnavailableError, InvalidInputError, ShapeMismatchError
from prvr_sdk.features import validate_frames
from prvr_sdk.limits import (
    check_array,
    check_limits,
    check_text_file,
    load_npy,
    npz_headers,
    read_npz_member,
)

__all__ = [
    "BigFile",
    "BigFileVideos",
    "FeatureSource",
    "H5Features",
    "open_features",
    "read_video2frames",
    "require_file",
]


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else ``InvalidInputError`` naming it and ``what`` it should hold."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: {what} not found")
    return path


# --- BigFile + video2frames ---------------------------------------------------------------------------


def read_video2frames(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, list[str]]:
    """``video_id -> [frame_id, ...]`` (temporal order) from a ``video2frames.txt`` dict literal.

    Parsed with ``ast.literal_eval``: only Python literals are accepted, nothing in the file is executed.
    The file may be at most ``max_bytes // limits.TEXT_FACTOR`` bytes (parsing costs several times that).

    Raises:
        InvalidInputError: missing, too large or not UTF-8, not a literal (e.g. code), or not a dict of
            str -> list of str.
    """
    path = check_text_file(require_file(Path(path), "video2frames file"), "video2frames.txt", max_bytes)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
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

    Rows are read through a read-only ``np.memmap``, so opening costs only ``id.txt``; ``feature.bin``'s size
    is checked against ``shape.txt`` before ``id.txt`` is read, and ``id.txt`` against ``max_bytes``.

    Raises (at construction):
        InvalidInputError: a missing file, a malformed ``shape.txt``, an id count other than N, a
            ``feature.bin`` whose size is not N*D*4 bytes, or an ``id.txt`` over the text-file limit.
    """

    def __init__(self, folder: str | os.PathLike, max_bytes: int | None = None) -> None:
        self.folder = Path(folder)
        shape_path = require_file(self.folder / "shape.txt", "BigFile shape.txt")
        id_path = require_file(self.folder / "id.txt", "BigFile id.txt")
        self.bin_path = require_file(self.folder / "feature.bin", "BigFile feature.bin")
        if shape_path.stat().st_size > 256:
            raise InvalidInputError(f"{shape_path}: expected 'N D' (two integers), got a larger file")
        parts = shape_path.read_text(encoding="ascii", errors="replace").split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise InvalidInputError(f"{shape_path}: expected 'N D' (two integers), got {' '.join(parts)!r}")
        self.num_rows, self.dim = int(parts[0]), int(parts[1])
        # size first: feature.bin is memory-mapped, never loaded, but a shape.txt claiming a huge N must
        # not make us read (and count) a huge id.txt
        expected = self.num_rows * self.dim * 4
        actual = self.bin_path.stat().st_size
        if actual != expected:
            raise InvalidInputError(
                f"{self.bin_path}: {actual} bytes, expected N*D*4 = {self.num_rows}*{self.dim}*4 = "
                f"{expected} (N, D from {shape_path})"
            )
        check_text_file(id_path, "id.txt", max_bytes)
        # MS-SL reads id.txt as bytes and decodes ISO-8859-1; ids are whitespace-separated.
        self.ids = id_path.read_bytes().decode("iso-8859-1").split()
        if len(self.ids) != self.num_rows:
            raise InvalidInputError(
                f"{id_path}: holds {len(self.ids)} ids, but {shape_path} says N = {self.num_rows}"
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
    """Frame sequences from a BigFile folder and its ``video2frames.txt``: ``read(video_id) -> [Nf, Dv]``.

    ``max_frames`` / ``max_bytes`` (``None`` = the ``prvr_sdk.limits`` defaults) cap one video's read and
    the size of the text files.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        expected_dim: int | None = None,
        *,
        max_frames: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.path = Path(folder)
        self.max_frames, self.max_bytes = check_limits(max_frames, max_bytes)
        self.bigfile = BigFile(self.path, max_bytes=self.max_bytes)
        if expected_dim is not None and self.bigfile.dim != expected_dim:
            raise ShapeMismatchError(
                f"{self.path / 'shape.txt'}: feature dim D = {self.bigfile.dim}, "
                f"but the config expects video_feat_dim = {expected_dim}"
            )
        self.video2frames = read_video2frames(self.path / "video2frames.txt", self.max_bytes)
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
        check_array((len(frames), self.dim), np.float32, name, max_frames=self.max_frames,
                    max_bytes=self.max_bytes)
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
        max_frames: most rows (first axis) of one entry; ``None`` = ``limits.DEFAULT_MAX_FRAMES``.
        max_bytes: most bytes of one entry, from its declared shape; ``None`` = ``limits.DEFAULT_MAX_BYTES``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        item_shape: tuple[int | None, ...],
        what: str,
        *,
        max_frames: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.path = require_file(Path(path), what)
        self.item_shape = tuple(item_shape)
        self.what = what
        self.max_frames, self.max_bytes = check_limits(max_frames, max_bytes)
        self._file = None
        self._pid = None

    def _h5(self):
        if self._file is None or self._pid != os.getpid():  # a forked worker needs its own handle
            try:
                import h5py
            except ImportError as exc:
                raise BackendUnavailableError("h5py", "onnx", str(exc)) from None
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

    def read_raw(self, key: str) -> np.ndarray:
        """The entry ``key`` as stored, after checking it is a numeric dataset within the limits.

        Raises:
            InvalidInputError: no such key, a group (or link) where a dataset belongs, a non-numeric dtype,
                a declared size over ``max_frames`` / ``max_bytes``, or an unreadable (corrupt) dataset.
        """
        h5 = self._h5()  # imports h5py, or raises BackendUnavailableError
        import h5py

        name = f"{self.path}:{key}"
        try:
            if key not in h5:
                raise InvalidInputError(f"{self.path}: no {self.what} for {key!r}")
            node = h5.get(key)
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            if isinstance(exc, InvalidInputError):
                raise
            raise InvalidInputError(f"{name}: cannot read ({exc})") from None
        if not isinstance(node, h5py.Dataset):
            raise InvalidInputError(
                f"{name}: expected a dataset of {self.what}, got a {type(node).__name__} "
                "(one dataset per id, at the top level of the file)"
            )
        check_array(node.shape or (), node.dtype, name, max_frames=self.max_frames, max_bytes=self.max_bytes)
        try:
            return np.asarray(node[()])
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise InvalidInputError(f"{name}: cannot read {self.what} ({exc})") from None

    def read(self, key: str) -> np.ndarray:
        """The entry ``key`` as float32, shape-checked against ``item_shape``, free of NaN/Inf."""
        value = np.asarray(self.read_raw(key), dtype=np.float32)
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


# --- any of the above, behind one interface -----------------------------------------------------------

FORMATS = "an .h5/.hdf5 file, an .npz file, a directory of <video_id>.npy files, or a BigFile directory"


class FeatureSource:
    """Videos of one feature file or folder: ``len``, ``ids()``, ``read(id)``, iteration of ``(id, frames)``.

    Args:
        path: see the module docstring for the formats.
        expected_dim: required last dimension (``Dv``), or ``None`` to accept any.
        max_frames: most frames one video may declare; ``None`` = ``limits.DEFAULT_MAX_FRAMES`` (100 000).
        max_bytes: most bytes one video's read may declare (shape x itemsize); ``None`` =
            ``limits.DEFAULT_MAX_BYTES`` (2 GiB). Checked before the read, from the file's headers.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        expected_dim: int | None = None,
        *,
        max_frames: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.expected_dim = expected_dim
        self.max_frames, self.max_bytes = check_limits(max_frames, max_bytes)
        limits = {"max_frames": self.max_frames, "max_bytes": self.max_bytes}
        self._npz_headers: dict = {}
        self._npz = None
        self._h5: H5Features | None = None
        self._bigfile: BigFileVideos | None = None
        p = self.path
        if not p.exists():
            raise InvalidInputError(f"{p}: feature source not found (expected {FORMATS})")
        if p.is_file() and p.suffix.lower() in (".h5", ".hdf5"):
            self.kind = "hdf5"
            self._h5 = H5Features(p, (None,), "video features", **limits)
            self._ids = sorted(self._h5.keys())
        elif p.is_file() and p.suffix.lower() == ".npz":
            self.kind = "npz"
            self._npz_headers = npz_headers(p)  # member headers only: a zip bomb is never inflated
            for key, (shape, dtype) in self._npz_headers.items():  # cheap here: fail before any work
                check_array(shape, dtype, f"{p}:{key}", max_frames=self.max_frames, max_bytes=self.max_bytes)
            try:
                self._npz = np.load(p, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"{p}: not a readable .npz file ({exc})") from None
            self._ids = sorted(self._npz.files)
        elif p.is_dir() and (p / "feature.bin").is_file():
            self.kind = "bigfile"
            self._bigfile = BigFileVideos(p, expected_dim, **limits)
            self._ids = list(self._bigfile.video2frames)
        elif p.is_dir() and any(p.glob("*.npy")):
            self.kind = "npy"
            self._ids = sorted(f.stem for f in p.glob("*.npy"))
        else:
            raise InvalidInputError(f"{p}: not a feature source; expected {FORMATS}")

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"FeatureSource({str(self.path)!r}, kind={self.kind!r}, videos={len(self)})"

    def ids(self) -> list[str]:
        return list(self._ids)

    def read(self, video_id: str) -> np.ndarray:
        """Validated float32 features of one video (``[T, Dv]``, or ``[T, 1+P, C]`` patch tokens)."""
        name = f"{self.path}:{video_id}"
        if self._bigfile is not None:
            return self._bigfile.read(video_id)
        if self._h5 is not None:
            if video_id not in self._h5:
                raise InvalidInputError(f"{self.path}: no video {video_id!r}")
            raw = self._h5.read_raw(video_id)
        elif self._npz is not None:
            if video_id not in self._npz.files:
                raise InvalidInputError(f"{self.path}: no video {video_id!r}")
            shape, dtype = self._npz_headers[video_id]
            check_array(shape, dtype, name, max_frames=self.max_frames, max_bytes=self.max_bytes)
            raw = read_npz_member(self._npz, self.path, video_id)
        else:
            file = self.path / f"{video_id}.npy"
            if not file.is_file():
                raise InvalidInputError(f"{self.path}: no video {video_id!r} ({file.name} not found)")
            raw = load_npy(file, str(file), max_frames=self.max_frames, max_bytes=self.max_bytes)
        if raw.ndim == 3:  # patch tokens: check them as rows of a flat matrix
            flat = validate_frames(raw.reshape(raw.shape[0], -1), None, name=name)
            if self.expected_dim is not None and raw.shape[2] != self.expected_dim:
                raise ShapeMismatchError(f"{name}: token dim {raw.shape[2]}, expected {self.expected_dim}")
            return flat.reshape(raw.shape)
        return validate_frames(raw, self.expected_dim, name=name)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for video_id in self._ids:
            yield video_id, self.read(video_id)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
        if self._npz is not None:
            self._npz.close()

    def __enter__(self) -> FeatureSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_features(
    path: str | os.PathLike,
    expected_dim: int | None = None,
    *,
    max_frames: int | None = None,
    max_bytes: int | None = None,
) -> FeatureSource:
    """Open per-video frame features (see the module docstring for the formats).

    Args:
        path, expected_dim: see ``FeatureSource``.
        max_frames: most frames per video (default 100 000; CLI ``--max-frames``).
        max_bytes: most bytes per video read, from the declared shape (default 2 GiB; CLI ``--max-bytes``).

    Raises:
        InvalidInputError: missing path, unknown format (the message lists the formats), or -- on open or
            on ``read`` -- a file declaring more than ``max_frames`` / ``max_bytes``, or a corrupt one.
        BackendUnavailableError: an hdf5 file without h5py installed.
    """
    return FeatureSource(path, expected_dim, max_frames=max_frames, max_bytes=max_bytes)
