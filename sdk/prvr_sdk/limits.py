"""Size limits checked *before* a user-supplied file is read, so a hostile file cannot exhaust memory.

A few kilobytes on disk can declare gigabytes: an hdf5 dataset with a fill value, an ``.npz`` zip bomb, an
``.npy`` header claiming 10**12 elements. Every reader here compares what a file *declares* (shape x
itemsize, frame count, file size) with two limits and raises ``InvalidInputError`` before allocating:

* ``max_frames`` -- frames (first axis) of one video, default ``DEFAULT_MAX_FRAMES``;
* ``max_bytes`` -- bytes of one array read, default ``DEFAULT_MAX_BYTES``. Text files parsed into Python
  objects (``video2frames.txt``, ``id.txt``, captions, metadata, queries) cost several times their size, so
  they are capped at ``max_bytes // TEXT_FACTOR``.

Messages name the file, the video and the limit, and how to raise it (CLI flag and API keyword).
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from prvr_sdk.errors import InvalidInputError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FRAMES",
    "TEXT_FACTOR",
    "check_array",
    "check_limits",
    "check_text_file",
    "load_npy",
    "npy_header",
    "npz_headers",
    "read_npy_header",
    "read_npz_member",
]

DEFAULT_MAX_FRAMES = 100_000  # ~55 h at 0.5 fps; far beyond any PRVR video
DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB per array read
TEXT_FACTOR = 8  # a text file parsed into Python objects may cost ~TEXT_FACTOR x its size


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def check_limits(max_frames: int | None, max_bytes: int | None) -> tuple[int, int]:
    """``(max_frames, max_bytes)`` with ``None`` replaced by the defaults; rejects non-positive values."""
    frames = DEFAULT_MAX_FRAMES if max_frames is None else max_frames
    size = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    for name, value in (("max_frames", frames), ("max_bytes", size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInputError(f"{name}: expected a positive integer, got {value!r}")
    return int(frames), int(size)


def check_array(
    shape: tuple[int, ...],
    dtype: np.dtype,
    name: str,
    *,
    max_frames: int | None = None,
    max_bytes: int | None = None,
    numeric: bool = True,
) -> None:
    """Refuse an array from its declared ``shape`` and ``dtype``, before any of it is read.

    Args:
        shape, dtype: what the file declares.
        name: ``<file>:<video id>`` for messages.
        max_frames: limit on ``shape[0]`` (frames of a video); ``None`` = the default.
        max_bytes: limit on ``prod(shape) * itemsize``; ``None`` = the default.
        numeric: also require a real numeric dtype (int, uint or float), as frame features are.

    Raises:
        InvalidInputError: object / string / compound dtype, or a limit exceeded.
    """
    frames_limit, bytes_limit = check_limits(max_frames, max_bytes)
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise InvalidInputError(f"{name}: holds Python objects (dtype {dtype}); expected numbers")
    if numeric and dtype.kind not in "iuf":
        raise InvalidInputError(f"{name}: expected real-valued features (float or int), got dtype {dtype}")
    if shape and shape[0] > frames_limit:
        raise InvalidInputError(
            f"{name}: declares {shape[0]} frames, over the limit of {frames_limit} "
            f"(raise it with --max-frames, or max_frames= in the API)"
        )
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
    if nbytes > bytes_limit:
        raise InvalidInputError(
            f"{name}: declares shape {list(shape)} {dtype} = {_size(nbytes)}, over the limit of "
            f"{_size(bytes_limit)} (raise it with --max-bytes, or max_bytes= in the API)"
        )


def check_text_file(path: Path, what: str, max_bytes: int | None = None) -> Path:
    """Refuse a text file larger than ``max_bytes // TEXT_FACTOR`` before reading it; returns ``path``."""
    _, bytes_limit = check_limits(None, max_bytes)
    limit = max(bytes_limit // TEXT_FACTOR, 1)
    size = Path(path).stat().st_size
    if size > limit:
        raise InvalidInputError(
            f"{path}: {what} is {_size(size)}, over the limit of {_size(limit)} for text files "
            f"(max_bytes / {TEXT_FACTOR}; raise it with --max-bytes, or max_bytes= in the API)"
        )
    return Path(path)


def read_npy_header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` from an ``.npy`` stream's header; reads the header only.

    Raises whatever numpy's parser raises on a damaged header (callers turn it into their typed error).
    """
    fmt = np.lib.format
    version = fmt.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(stream)
    else:  # (3, 0): utf-8 field names; numpy has no public reader for it
        shape, fortran, dtype = fmt._read_array_header(stream, version)
    return tuple(int(d) for d in shape), bool(fortran), np.dtype(dtype)


def npy_header(stream: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from the header of an ``.npy`` stream; reads the header only, never the data."""
    try:
        shape, _, dtype = read_npy_header(stream)
    except Exception as exc:  # numpy's header parser raises many kinds (ValueError, TokenError ...)
        raise InvalidInputError(f"{name}: not a readable .npy array ({exc})") from None
    return shape, dtype


def load_npy(
    path: str | os.PathLike,
    name: str | None = None,
    *,
    max_frames: int | None = None,
    max_bytes: int | None = None,
    numeric: bool = True,
) -> np.ndarray:
    """``np.load`` of an ``.npy`` file after ``check_array`` on its header: no pickles, no oversized reads."""
    path = Path(path)
    name = name or str(path)
    try:
        with open(path, "rb") as f:
            shape, dtype = npy_header(f, name)
            check_array(shape, dtype, name, max_frames=max_frames, max_bytes=max_bytes, numeric=numeric)
            f.seek(0)
            return np.load(f, allow_pickle=False)
    except OSError as exc:
        raise InvalidInputError(f"{name}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:  # truncated data, a bad header numpy rejects late
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"{name}: not a readable .npy array ({exc})") from None


def npz_headers(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``key -> (shape, dtype)`` of every array of an ``.npz``, from the member headers alone.

    Opens each zip member and reads its few-hundred-byte ``.npy`` header: a zip bomb is never inflated.

    Raises:
        InvalidInputError: not a zip file, or a member that is not an ``.npy`` array.
    """
    path = Path(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                key = member[:-4] if member.endswith(".npy") else member
                with zf.open(member) as stream:
                    out[key] = npy_header(stream, f"{path}:{key}")
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise InvalidInputError(f"{path}: not a readable .npz file ({exc})") from None
    return out


def read_npz_member(npz, path: Path, key: str) -> np.ndarray:
    """``npz[key]`` of an open ``np.load`` result, with read errors turned into ``InvalidInputError``.

    Call ``check_array`` on the member's header (``npz_headers``) first; this only guards the read itself.
    """
    try:
        return npz[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
        raise InvalidInputError(f"{path}:{key}: not a readable .npy array ({exc})") from None
