"""Export bundles: a directory with ``manifest.json`` and the files it lists (docs/architecture.md §3).

The manifest is the contract between export (torch) and serving (no torch): which model, which
inputs, which outputs, which scoring rule, and the sha256 of every file. Loading verifies the format
version, every file's size and sha256, and the manifest's own digest, so a truncated, corrupted,
missing or hand-edited file gives a clear error instead of a wrong answer.

A bundle is data, never code: loading reads JSON and hashes files, and nothing in it is executed or
unpickled. A manifest is untrusted input, so every name it lists is checked *before* any file is
touched (a plain relative POSIX path that stays inside the bundle directory, also after following
symlinks), its size is capped, and every malformation is a ``BundleError``. The sha256 seal is unkeyed:
it detects accidents (truncation, bit rot, hand edits), not tampering, since anyone can re-seal. For
authenticity pass ``trusted_keys`` (Ed25519 signatures, ``prvr_sdk.signing``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from .errors import BundleError, ChecksumError
from .fsutil import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "Bundle",
    "check_name",
    "embedding_space_id",
    "file_digest",
    "load",
    "manifest_digest",
    "read_manifest",
    "write_manifest",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # real manifests are a few kB; a bigger one is not ours
_SELF_DIGEST = "manifest_sha256"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DRIVE = re.compile(r"[A-Za-z]:")
# First byte of a serialized ONNX ModelProto: field 1 (ir_version), wire type 0 (varint) -> tag 0x08.
# Protobuf writers emit fields in number order and ONNX always sets ir_version, so a real graph starts so.
_ONNX_FIRST_BYTE = 0x08


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, streamed (bundles hold model files of hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own digest field."""
    body = {k: v for k, v in manifest.items() if k != _SELF_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_name(directory: str | os.PathLike, name: Any) -> Path:
    """The path of bundle entry ``name`` inside ``directory``, after checking the name is safe.

    Checked without touching the file: a non-empty ``str``, POSIX separators only (no backslash, no
    drive letter), relative, no empty, ``.`` or ``..`` component, no NUL or control character. Then the
    resolved path (symlinks followed) must still lie inside the resolved directory.

    Raises:
        BundleError: naming the entry and what is wrong with it.
    """
    directory = Path(directory)
    where = f"bundle {directory}: file entry {name!r}"
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where}: expected a non-empty relative file name, got {type(name).__name__}")
    if len(name) > 4096 or any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise BundleError(f"{where}: name too long or holds control characters")
    if "\\" in name or _DRIVE.match(name):
        raise BundleError(f"{where}: expected a POSIX relative name (no backslash or drive letter)")
    if name.startswith("/"):
        raise BundleError(f"{where}: absolute paths are not allowed, names are relative to the bundle")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BundleError(f"{where}: empty, '.' or '..' path components are not allowed")
    path = directory / name
    try:
        inside = path.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError) as exc:  # symlink loops, unreadable parents
        raise BundleError(f"{where}: cannot resolve ({exc})") from None
    if not inside:
        raise BundleError(f"{where}: resolves outside the bundle directory (symlink?)")
    return path


def embedding_space_id(manifest: dict[str, Any], digests: dict[str, str]) -> str:
    """The id of the embedding space a bundle's encoders map into (manifest key ``embedding_space``).

    A digest of what decides the embeddings: the serving spec, the input preparation (clip count, frame
    cap, normalisation, query length) and the sha256 of the fp32 video and text graphs (``digests``:
    ``{"video_encoder": ..., "text_encoder": ...}``). Unlike ``manifest_sha256`` it does not change when
    ``prvr build-engine`` or ``prvr calibrate`` add files and re-seal, so indexes and embeddings stay bound
    to the model, not to one version of the folder.
    """
    vi, ti = manifest.get("video_input", {}), manifest.get("text_input", {})
    video_keys = ("feature_dim", "num_clips", "max_frames", "normalize", "source")
    body = {
        "serving": manifest.get("serving"),
        "video_input": {k: vi.get(k) for k in video_keys},
        "text_input": {k: ti.get(k) for k in ("kind", "dim", "max_tokens", "normalize")},
        "graphs": {role: digests[role] for role in ("video_encoder", "text_encoder")},
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record size and sha256 of every file listed in ``manifest["files"]``, seal and write atomically.

    ``manifest["files"]`` maps a bundle-relative file name to a dict (extra keys are kept). Returns the
    sealed manifest. Names are checked like ``load`` checks them, so no bundle is sealed that would not load.
    """
    directory = Path(directory)
    sealed = copy.deepcopy(manifest)
    sealed["format_version"] = FORMAT_VERSION
    files = sealed.get("files", {})
    if not isinstance(files, dict):
        raise BundleError(f"cannot seal bundle {directory}: 'files' must map names to dicts")
    for name, entry in files.items():
        path = check_name(directory, name)
        if not isinstance(entry, dict):
            raise BundleError(f"cannot seal bundle {directory}: entry {name!r} must be a dict")
        if not path.is_file():
            raise BundleError(f"cannot seal bundle {directory}: listed file {name!r} does not exist")
        entry["bytes"] = path.stat().st_size
        entry["sha256"] = file_digest(path)
    sealed[_SELF_DIGEST] = manifest_digest(sealed)
    atomic_write(directory / MANIFEST, json.dumps(sealed, indent=2, sort_keys=True) + "\n", parents=False)
    return sealed


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory and manifest. ``file(name)`` resolves a listed file."""

    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        if name not in self.files:
            raise BundleError(f"bundle {self.path} has no file {name!r} (has: {sorted(self.files)})")
        check_name(self.path, name)
        return self.path / name

    def graph(self, name: str) -> Path:
        """``file(name)`` for an ``.onnx`` graph about to be opened, after checking the files it names for
        external tensor data (``prvr_sdk.onnx_refs``): each must be a file of this bundle, listed in the
        manifest, in the graph's own folder -- so a hostile graph cannot make a session read other files.

        Raises:
            ChecksumError: the graph names a file outside that set, or is not a well-formed ONNX model.
        """
        path = self.file(name)
        if not name.endswith(".onnx"):
            return path
        from .onnx_refs import external_data_locations

        folder = PurePosixPath(name).parent
        for location in sorted(external_data_locations(path)):
            listed = str(folder / location) if str(folder) != "." else location
            try:
                safe = check_name(self.path, listed) and listed in self.files
            except BundleError:
                safe = False
            if not safe or "/" in location or location in ("", ".", ".."):
                raise ChecksumError(
                    f"{path}: names external tensor data {location!r}, which is not a file of this bundle "
                    f"beside {name!r} listed in its manifest; refusing to open a graph that reads other files"
                )
        return path

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        files = self.manifest.get("files")
        return files if isinstance(files, dict) else {}

    @property
    def model_name(self) -> str:
        model = self.manifest.get("model")
        name = model.get("name", "?") if isinstance(model, dict) else "?"
        return name if isinstance(name, str) else "?"


def _read_json(path: Path) -> Any:
    """Parse ``path`` as UTF-8 JSON, refusing more than ``MAX_MANIFEST_BYTES`` before reading it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_MANIFEST_BYTES:
                raise BundleError(f"{path} is {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} grew past {MAX_MANIFEST_BYTES} bytes while being read")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON (not UTF-8: {exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise BundleError(f"{path} is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, and ints longer than Python's digit limit
        raise BundleError(f"{path} is not valid JSON ({exc})") from None


def _check_entries(directory: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    where = directory / MANIFEST
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{where} lists no files ('files' must be a non-empty object)")
    for name, entry in files.items():
        check_name(directory, name)
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: entry {name!r} must be an object, got {type(entry).__name__}")
        size = entry.get("bytes")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BundleError(f"{where}: entry {name!r} 'bytes' must be a non-negative integer, got {size!r}")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise BundleError(f"{where}: entry {name!r} 'sha256' must be 64 lowercase hex digits")
    return files


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a bundle's manifest without touching the files it lists.

    Checks: ``manifest.json`` exists, is at most ``MAX_MANIFEST_BYTES``, is UTF-8 JSON holding an object,
    its ``format_version`` is one this prvr-sdk reads, its self digest matches, and every file entry has
    a safe name (``check_name``), an integer size and a sha256. Used by ``load`` and by export to decide
    whether a directory is a prvr bundle.

    Raises:
        BundleError: on any of the above.
    """
    directory = Path(path)
    where = directory / MANIFEST
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} does not exist")
    if not where.is_file():
        raise BundleError(f"{where} is missing: {directory} is not an export bundle (run `prvr export`)")
    check_name(directory, MANIFEST)  # a manifest symlinked from elsewhere is not this bundle's
    manifest = _read_json(where)
    if not isinstance(manifest, dict):
        raise BundleError(f"{where} must hold a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(f"{where} has no integer format_version (got {version!r:.40})")
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle {directory} has format version {version}, newer than this prvr-sdk "
                          f"supports ({FORMAT_VERSION}); upgrade prvr-sdk")
    if version < 1:
        raise BundleError(f"{where}: format_version {version} is not valid (expected 1..{FORMAT_VERSION})")
    try:
        sealed = manifest.get(_SELF_DIGEST) == manifest_digest(manifest)
    except (RecursionError, ValueError, TypeError):
        sealed = False
    if not sealed:
        raise BundleError(f"{where} was modified after export (its digest does not match); "
                          "re-export the bundle")
    _check_entries(directory, manifest)
    return manifest


def _check_onnx_header(file: Path, name: str) -> None:
    """Cheap plausibility check of an ``.onnx`` file: non-empty, first byte is the ir_version tag."""
    with open(file, "rb") as f:
        head = f.read(1)
    if not head or head[0] != _ONNX_FIRST_BYTE:
        raise ChecksumError(f"{file}: does not start like an ONNX model (first byte "
                            f"{head.hex() or 'none'}, expected 08); corrupted or replaced file {name!r}")


def load(
    path: str | os.PathLike,
    verify: bool | Literal["full"] = True,
    trusted_keys: Iterable[Any] | None = None,
) -> Bundle:
    """Open a bundle directory and check it.

    Args:
        path: the bundle directory.
        verify: check every listed file's sha256. ``True`` skips the hashing when a stamp from an earlier
            full check still matches (``prvr_sdk.verified``: same manifest, every file's size, mtime and
            inode unchanged); ``"full"`` always hashes; ``False`` never does. In every mode the manifest is
            fully checked, and every file must exist with its recorded size; ``.onnx`` files must start
            with byte 0x08 (the protobuf tag of ModelProto.ir_version) -- plausibility, not integrity.
        trusted_keys: Ed25519 public keys (file paths, raw/PEM bytes or key objects). When given, the
            bundle must carry a signature (``signature.json``) by one of them over this manifest's digest
            (``prvr_sdk.signing``); an empty list trusts nobody. ``None``: signatures are not checked.
            The signature covers the files through their sha256, so use it with ``verify=True``.

    Raises:
        BundleError: missing directory, manifest or file; invalid, unsafe or hand-edited manifest; format
            newer than this prvr-sdk; missing, untrusted or invalid signature when ``trusted_keys`` given.
        ChecksumError: a file's size or sha256 differs from the manifest (or, unverified, an ``.onnx``
            file does not look like one).
    """
    from . import verified

    directory = Path(path)
    manifest = read_manifest(directory)
    if verify is True and trusted_keys is None and verified.is_verified(directory, manifest):
        verify = False  # hashed before, and nothing changed since (the signature path always hashes)
        stamped = True
    else:
        stamped = False
    for name, entry in manifest["files"].items():
        file = directory / name  # name checked by read_manifest
        if not file.is_file():
            raise BundleError(f"bundle {directory} is missing {name!r}, listed in its manifest")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise ChecksumError(f"{file}: {size} bytes, manifest says {entry['bytes']} (truncated or "
                                "replaced file)")
        if not verify:
            if name.endswith(".onnx"):
                _check_onnx_header(file, name)
            continue
        digest = file_digest(file)
        if digest != entry["sha256"]:
            raise ChecksumError(f"{file}: sha256 {digest[:12]}…, manifest says "
                                f"{entry['sha256'][:12]}… (corrupted or replaced file)")
    if verify and not stamped:
        verified.remember(directory, manifest)
    if trusted_keys is not None:
        from .signing import verify_bundle_signature

        verify_bundle_signature(directory, manifest, trusted_keys)
    return Bundle(directory, manifest)
