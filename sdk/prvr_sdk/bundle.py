"""Export bundles: a directory with ``manifest.json`` and the files it lists (DESIGN.md §3.3).

The manifest is the contract between export (torch) and serving (no torch): which model, which
inputs, which outputs, which scoring rule, and the sha256 of every file. Loading verifies the format
version, every file's size and sha256, and the manifest's own digest, so a truncated, corrupted,
missing or hand-edited file gives a clear error instead of a wrong answer.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError, ChecksumError

__all__ = ["FORMAT_VERSION", "MANIFEST", "Bundle", "file_digest", "load", "manifest_digest", "write_manifest"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SELF_DIGEST = "manifest_sha256"


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


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record size and sha256 of every file listed in ``manifest["files"]``, seal and write atomically.

    ``manifest["files"]`` maps a bundle-relative file name to a dict (extra keys are kept). Returns the
    sealed manifest.
    """
    directory = Path(directory)
    sealed = copy.deepcopy(manifest)
    sealed["format_version"] = FORMAT_VERSION
    for name, entry in sealed.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"cannot seal bundle {directory}: listed file {name!r} does not exist")
        entry["bytes"] = path.stat().st_size
        entry["sha256"] = file_digest(path)
    sealed[_SELF_DIGEST] = manifest_digest(sealed)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=directory)
    with os.fdopen(fd, "w") as f:
        json.dump(sealed, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, directory / MANIFEST)
    return sealed


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory and manifest. ``file(name)`` resolves a listed file."""

    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        if name not in self.manifest.get("files", {}):
            raise BundleError(f"bundle {self.path} has no file {name!r} (has: {sorted(self.files)})")
        return self.path / name

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.manifest.get("files", {})

    @property
    def model_name(self) -> str:
        return self.manifest.get("model", {}).get("name", "?")


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} does not exist")
    if not path.is_file():
        raise BundleError(f"{path} is missing: {directory} is not an export bundle (run `prvr export`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    return manifest


def load(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Open a bundle directory and check it.

    Args:
        path: the bundle directory.
        verify: check every listed file's size and sha256 (reads every byte; turn off only for
            bundles already verified in this process).

    Raises:
        BundleError: missing directory, manifest or file; invalid or hand-edited manifest; format
            newer than this prvr-sdk.
        ChecksumError: a file's size or sha256 differs from the manifest.
    """
    directory = Path(path)
    manifest = _read_manifest(directory)
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{directory / MANIFEST} has no integer format_version")
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle {directory} has format version {version}, newer than this prvr-sdk "
                          f"supports ({FORMAT_VERSION}); upgrade prvr-sdk")
    if manifest.get(_SELF_DIGEST) != manifest_digest(manifest):
        raise BundleError(f"{directory / MANIFEST} was modified after export (its digest does not match); "
                          "re-export the bundle")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{directory / MANIFEST} lists no files")
    for name, entry in files.items():
        file = directory / name
        if not file.is_file():
            raise BundleError(f"bundle {directory} is missing {name!r}, listed in its manifest")
        if not verify:
            continue
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise ChecksumError(f"{file}: {size} bytes, manifest says {entry.get('bytes')} (truncated or "
                                "replaced file)")
        digest = file_digest(file)
        if digest != entry.get("sha256"):
            raise ChecksumError(f"{file}: sha256 {digest[:12]}…, manifest says "
                                f"{str(entry.get('sha256'))[:12]}… (corrupted or replaced file)")
    return Bundle(directory, manifest)
