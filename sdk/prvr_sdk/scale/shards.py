"""Sharded embeddings: a folder with one ``VideoEmbeddings`` file per input feature shard and a manifest.

Why shards: a large collection is encoded as many independent units (one feature file or folder each), by
several workers, over hours; one file per unit lets a rerun skip what is finished and lets a reader check
each file on its own. The folder holds::

    manifest.json          {"format", "kind", "bundle_sha256", "bundle_manifest_sha256", "model",
                            "precision", "dim", "videos", "shards": [entry, ...]}
    <stem>-<hash>.npz      VideoEmbeddings.save of one shard

Each entry: ``source`` (absolute path of the feature shard), ``source_stamp`` ([bytes, mtime_ns]),
``file``, ``done``, and once done ``sha256``, ``bytes``, ``videos``, ``clips``. ``bundle_sha256`` is the
embedding space (``Retriever.bundle_sha256``), the identity an index checks. Every write is atomic
(``fsutil.atomic_write``); the manifest is rewritten as shards finish (at most once a second, and at the
end), so a crash loses at most the shards finished since, and those are encoded again.

``load_sharded`` (behind ``VideoEmbeddings.load`` for such a folder) verifies names, sizes and sha256s
against the manifest, checks every shard's bundle hash and the declared sizes before reading, and
concatenates the shards in manifest order. Engine-free: ``prvr_sdk.scale.ray_encode`` fills the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prvr_sdk.bundle import file_digest
from prvr_sdk.embeddings import VideoEmbeddings
from prvr_sdk.errors import IndexMismatchError, InvalidInputError
from prvr_sdk.fsutil import atomic_write
from prvr_sdk.limits import check_limits, npz_headers

__all__ = [
    "FORMAT",
    "KIND",
    "MANIFEST",
    "EmbeddingSpace",
    "ShardWriter",
    "encode_shard",
    "is_sharded",
    "load_sharded",
    "read_manifest",
    "shard_name",
]

MANIFEST = "manifest.json"
FORMAT = 1
KIND = "prvr-sharded-embeddings"
MAX_MANIFEST_BYTES = 256 * 1024**2  # ~1M shards; checked before the file is read
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}\.npz")
_HEX = re.compile(r"[0-9a-f]{64}")
_FLUSH_SECONDS = 1.0


@dataclass(frozen=True)
class EmbeddingSpace:
    """Which bundle (and precision) made a folder's embeddings; a folder holds one space only."""

    bundle_sha256: str
    bundle_manifest_sha256: str
    model: str
    precision: str
    dim: int

    @classmethod
    def of(cls, retriever: Any) -> EmbeddingSpace:
        """The space of a ``Retriever``'s video embeddings."""
        return cls(
            bundle_sha256=retriever.bundle_sha256,
            bundle_manifest_sha256=str(retriever.manifest["manifest_sha256"]),
            model=retriever.model_name,
            precision=retriever.precision,
            dim=int(retriever.dim),
        )


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with a sharded-embeddings ``manifest.json``."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def shard_name(source: str | os.PathLike) -> str:
    """The output file of one feature shard: its stem (made safe) and a hash of its absolute path, so two
    shards named alike in different folders never collide and a rerun finds the same file."""
    source = Path(source)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", source.name.split(".")[0] or "shard")[:60].lstrip(".-") or "shard"
    digest = hashlib.sha256(str(source).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{stem}-{digest}.npz"


def source_stamp(source: Path) -> list[int]:
    """``[bytes, newest mtime_ns]`` of a feature file, or of the files directly inside a feature folder: a
    shard changed since it was encoded is encoded again on resume."""
    files = [source] if source.is_file() else [p for p in source.iterdir() if p.is_file()]
    stats = [p.stat() for p in files]
    return [sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]


# --- manifest -----------------------------------------------------------------------------------------


def _bad(directory: Path, what: str) -> InvalidInputError:
    return InvalidInputError(f"{directory / MANIFEST}: {what} (not a sharded-embeddings manifest written by "
                             "`prvr encode --engine ray`?)")


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The folder's manifest, size-checked before reading and validated field by field.

    Raises:
        InvalidInputError: missing, too large, not UTF-8 JSON, a newer format, or a malformed field (each
            shard's file name must be a plain ``*.npz`` name inside the folder).
    """
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise _bad(directory, f"{size} bytes, over the {MAX_MANIFEST_BYTES} a manifest may hold")
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: not found (written by `prvr encode --engine ray`)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _bad(directory, f"not valid JSON ({type(exc).__name__})") from None
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise _bad(directory, f"expected an object with kind {KIND!r}")
    if not isinstance(manifest.get("format"), int) or manifest["format"] > FORMAT:
        raise _bad(directory, f"format {manifest.get('format')!r}, this prvr-sdk reads up to {FORMAT}")
    for key in ("bundle_sha256", "bundle_manifest_sha256", "model", "precision"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise _bad(directory, f"{key!r} must be a non-empty string")
    if not isinstance(manifest.get("dim"), int) or manifest["dim"] < 1:
        raise _bad(directory, "'dim' must be a positive integer")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise _bad(directory, "'shards' must be a list")
    files, sources = set(), set()
    for i, entry in enumerate(shards):
        _check_entry(directory, i, entry)
        if entry["file"] in files or entry["source"] in sources:
            raise _bad(directory, f"shard {i} repeats file {entry['file']!r} or source {entry['source']!r}")
        files.add(entry["file"])
        sources.add(entry["source"])
    return manifest


def _check_entry(directory: Path, i: int, entry: Any) -> None:
    if not isinstance(entry, dict):
        raise _bad(directory, f"shard {i} is not an object")
    if not isinstance(entry.get("source"), str) or not isinstance(entry.get("done"), bool):
        raise _bad(directory, f"shard {i} needs a 'source' string and a 'done' flag")
    name = entry.get("file")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == MANIFEST:
        raise _bad(directory, f"shard {i}: file name {name!r} is not a plain '<name>.npz' inside the folder")
    stamp = entry.get("source_stamp")
    if not (isinstance(stamp, list) and len(stamp) == 2 and all(isinstance(v, int) for v in stamp)):
        raise _bad(directory, f"shard {i}: 'source_stamp' must be [bytes, mtime_ns]")
    if entry["done"]:
        if not isinstance(entry.get("sha256"), str) or not _HEX.fullmatch(entry["sha256"]):
            raise _bad(directory, f"shard {i}: 'sha256' must be 64 hex digits")
        for key in ("bytes", "videos", "clips"):
            if not isinstance(entry.get(key), int) or isinstance(entry[key], bool) or entry[key] < 0:
                raise _bad(directory, f"shard {i}: {key!r} must be a non-negative integer")


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def _intact(directory: Path, entry: dict[str, Any]) -> bool:
    """A done entry's file is there with the recorded size and sha256."""
    path = directory / entry["file"]
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size != entry["bytes"]:
            return False
        return file_digest(path) == entry["sha256"]
    except OSError:
        return False


def _recorded_space(path: Path) -> str | None:
    """The bundle hash an existing ``VideoEmbeddings`` file records; None when it is not a readable one."""
    try:
        headers = npz_headers(path)
        shape, dtype = headers["bundle_sha256"]
        if shape != () or dtype.kind != "U" or dtype.itemsize > 4096:
            return None
        with np.load(path, allow_pickle=False) as z:
            return str(z["bundle_sha256"]) or None
    except Exception:  # any unreadable file is simply "not one of ours": it gets rewritten
        return None


# --- encoding one shard ---------------------------------------------------------------------------------


def encode_shard(
    retriever: Any,
    source: str | os.PathLike,
    *,
    fps: float | None = None,
    batch_size: int = 16,
    max_frames: int | None = None,
    max_bytes: int | None = None,
) -> tuple[bytes, int, int]:
    """Encode every video of one feature shard; returns ``(the .npz bytes VideoEmbeddings.save writes,
    videos, clip vectors)``. Bytes, so a worker can hand the file to whoever writes the folder."""
    from prvr_sdk.sources import open_features

    with open_features(source, max_frames=max_frames, max_bytes=max_bytes) as features:
        if len(features) == 0:
            raise InvalidInputError(f"{source}: feature shard holds no videos")
        emb = retriever.encode_video(features, fps=fps, batch_size=batch_size, show_progress=False)
    with tempfile.TemporaryDirectory(prefix="prvr-shard-") as tmp:
        data = emb.save(Path(tmp) / "shard.npz").read_bytes()
    return data, len(emb), 0 if emb.clip_emb is None else len(emb.clip_emb)


# --- writing a folder -----------------------------------------------------------------------------------


class ShardWriter:
    """Plans and writes one sharded-embeddings folder: which shards to (re)encode, then each shard's file
    and the manifest, atomically.

    Resume rule: a shard is skipped when the manifest marks it done, its file has the recorded size and
    sha256, and its source has the recorded stamp; otherwise it is encoded again and its file replaced.
    Shards of earlier runs not named now stay in the folder and the manifest.

    Raises (at construction):
        IndexMismatchError: the folder holds embeddings of another bundle or precision, or a file this
            run would replace was written by another bundle.
        InvalidInputError: ``out`` is a file, a non-empty folder without a manifest, a source is missing
            or named twice, or no source is given.
    """

    def __init__(self, out: str | os.PathLike, space: EmbeddingSpace, sources: Sequence[str | os.PathLike]):
        self.out = Path(out)
        self.space = space
        if not sources:
            raise InvalidInputError("--features: give at least one feature shard")
        paths = [Path(s).resolve() for s in sources]
        missing = [str(s) for s, p in zip(sources, paths, strict=True) if not p.exists()]
        if missing:
            raise InvalidInputError(f"--features: feature shard not found: {', '.join(missing)}")
        if len(set(paths)) != len(paths):
            raise InvalidInputError("--features: a feature shard is named twice")
        self.entries: dict[str, dict[str, Any]] = {}
        if self.out.exists() and not self.out.is_dir():
            raise InvalidInputError(f"--out {self.out}: is a file; sharded embeddings are a folder")
        if is_sharded(self.out):
            manifest = read_manifest(self.out)
            self._check_space(manifest)
            self.entries = {e["source"]: e for e in manifest["shards"]}
        elif self.out.is_dir() and any(self.out.iterdir()):
            raise InvalidInputError(
                f"--out {self.out}: folder is not empty and has no {MANIFEST}; refusing to write into it "
                "(give a new or empty folder)"
            )
        self.todo: list[Path] = []
        self.skipped: list[Path] = []
        for path in paths:
            key, stamp = str(path), source_stamp(path)
            entry = self.entries.get(key)
            name = shard_name(path)
            same = bool(entry) and entry["done"] and (entry["file"], entry["source_stamp"]) == (name, stamp)
            if same and _intact(self.out, entry):
                self.skipped.append(path)
                continue
            self._check_overwrite(self.out / name)
            self.entries[key] = {"source": key, "source_stamp": stamp, "file": name, "done": False}
            self.todo.append(path)
        self._last_flush = 0.0
        self.out.mkdir(parents=True, exist_ok=True)
        self.flush(force=True)  # the folder names its bundle before any shard is written

    def _check_space(self, manifest: dict[str, Any]) -> None:
        mine = self.space
        if (manifest["bundle_sha256"], manifest["precision"]) != (mine.bundle_sha256, mine.precision):
            raise IndexMismatchError(
                f"--out {self.out} holds embeddings of bundle {manifest['bundle_sha256'][:12]}… "
                f"({manifest['model']}, {manifest['precision']}), not of this bundle "
                f"{mine.bundle_sha256[:12]}… ({mine.model}, {mine.precision}); use another --out"
            )

    def _check_overwrite(self, path: Path) -> None:
        if not path.exists():
            return
        recorded = _recorded_space(path)
        if recorded is not None and recorded != self.space.bundle_sha256:
            raise IndexMismatchError(
                f"{path}: shard written by bundle {recorded[:12]}…, not this bundle "
                f"{self.space.bundle_sha256[:12]}…; refusing to replace it (use another --out)"
            )

    def manifest(self) -> dict[str, Any]:
        """The manifest as it stands (entries in first-seen order)."""
        s = self.space
        shards = list(self.entries.values())
        return {
            "format": FORMAT,
            "kind": KIND,
            "bundle_sha256": s.bundle_sha256,
            "bundle_manifest_sha256": s.bundle_manifest_sha256,
            "model": s.model,
            "precision": s.precision,
            "dim": s.dim,
            "videos": sum(e.get("videos", 0) for e in shards if e["done"]),
            "shards": shards,
        }

    def flush(self, force: bool = False) -> None:
        """Rewrite the manifest (atomically); without ``force`` at most once per second."""
        now = time.monotonic()
        if force or now - self._last_flush >= _FLUSH_SECONDS:
            _write_manifest(self.out, self.manifest())
            self._last_flush = now

    def write(self, source: str | os.PathLike, data: bytes, videos: int, clips: int) -> Path:
        """Store one encoded shard (``encode_shard``'s bytes) and mark it done."""
        entry = self.entries[str(Path(source))]
        path = atomic_write(self.out / entry["file"], data)
        entry.update(done=True, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), videos=int(videos),
                     clips=int(clips))
        self.flush()
        return path

    def close(self) -> dict[str, Any]:
        """Write the final manifest; returns it."""
        self.flush(force=True)
        return self.manifest()


# --- reading a folder -----------------------------------------------------------------------------------


def load_sharded(directory: str | os.PathLike, *, max_bytes: int | None = None) -> VideoEmbeddings:
    """All shards of a folder as one ``VideoEmbeddings``, in manifest order, after verifying them.

    ``max_bytes`` (``None``: ``limits.DEFAULT_MAX_BYTES``) caps each shard as ``VideoEmbeddings.load`` does;
    the shards together may declare no more bytes than they occupy on disk (``save`` does not compress)
    unless that is within ``max_bytes``, so compressed members cannot inflate past what was verified.

    Raises:
        InvalidInputError: a bad manifest; an unfinished encode (shards not done); a shard missing, of
            another size or sha256 than recorded, unreadable, or from another model; an id in two shards.
        IndexMismatchError: a shard records another bundle hash than the manifest.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    _, limit = check_limits(None, max_bytes)
    shards = manifest["shards"]
    if not shards:
        raise InvalidInputError(f"{directory}: the manifest lists no shards")
    pending = [e["source"] for e in shards if not e["done"]]
    if pending:
        raise InvalidInputError(
            f"{directory}: encoding unfinished, {len(pending)} of {len(shards)} shards not written "
            f"(first: {pending[0]}); rerun `prvr encode --engine ray` with the same --out to finish"
        )
    declared = on_disk = 0
    for entry in shards:
        path = directory / entry["file"]
        if not path.is_file() or path.is_symlink():
            raise InvalidInputError(f"{path}: shard listed in {MANIFEST} is missing (or not a plain file)")
        size = path.stat().st_size
        if size != entry["bytes"] or file_digest(path) != entry["sha256"]:
            raise InvalidInputError(
                f"{path}: {size} bytes / sha256 differ from {MANIFEST} (corrupted or replaced); rerun "
                "`prvr encode --engine ray` with the same --out to rewrite it"
            )
        on_disk += size
        declared += sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in npz_headers(path).values())
    if declared > max(limit, on_disk):
        raise InvalidInputError(
            f"{directory}: shards declare {declared} bytes but occupy {on_disk} on disk, over the limit of "
            f"{limit} (raise it with --max-bytes, or max_bytes= in the API)"
        )
    parts, owner = [], {}
    for entry in shards:
        path = directory / entry["file"]
        part = VideoEmbeddings.load(path, max_bytes=limit)
        if part.bundle_sha256 != manifest["bundle_sha256"]:
            raise IndexMismatchError(
                f"{path}: made by bundle {(part.bundle_sha256 or '?')[:12]}…, but {MANIFEST} says "
                f"{manifest['bundle_sha256'][:12]}…"
            )
        if part.model != manifest["model"] or part.dim != manifest["dim"] or len(part) != entry["videos"]:
            raise InvalidInputError(f"{path}: model, size or video count differ from {MANIFEST}")
        for vid in part.ids:
            if vid in owner:
                raise InvalidInputError(
                    f"{directory}: video id {vid!r} is in two shards ({owner[vid]} and {entry['file']})"
                )
            owner[vid] = entry["file"]
        parts.append(part)
    return VideoEmbeddings.concat(parts)
