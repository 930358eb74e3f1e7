"""Remember which bundles were fully verified, so that a serving process starts without re-hashing them.

Hashing every byte of a bundle (hundreds of MB with a text front end) is most of a cold ``prvr search``.
After a full check ``bundle.load`` writes a stamp: the bundle's real path, its manifest digest, and the
size, mtime (ns) and inode of every listed file and of the manifest. A later ``load(verify=True)`` whose
stamp still matches all of them skips the hashing (sizes, names and headers are still checked);
``verify="full"`` always hashes. The stamp detects the accidents checksums are for (a file rewritten,
truncated or copied over changes its mtime or inode); it is not a defence against someone who edits a file
and restores its mtime -- that is what signatures are for, and a load with ``trusted_keys`` always hashes.

Stamps live in ``$PRVR_CACHE_DIR/verified`` (default ``~/.cache/prvr/verified``; ``PRVR_CACHE_DIR=off``
disables them). A cache that cannot be written is skipped silently: it only costs the next start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from prvr_sdk.fsutil import atomic_write, cache_root

__all__ = ["cache_dir", "is_verified", "remember"]

log = logging.getLogger(__name__)
_MAX_STAMP_BYTES = 1 << 20
_RACY_NS = 2_000_000_000  # files younger than this at stamp time are hashed again next time


def cache_dir() -> Path | None:
    """Where stamps go (``fsutil.cache_root()/verified``), or None when caching is off."""
    root = cache_root()
    return None if root is None else root / "verified"


def _stamp_path(directory: Path) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:32]
    return root / f"{key}.json"


def _fingerprint(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    files = {}
    for name in [*manifest["files"], "manifest.json"]:
        st = (directory / name).stat()
        files[name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    digest = manifest.get("manifest_sha256")
    return {"path": str(directory.resolve()), "manifest_sha256": digest, "files": files}


def is_verified(directory: Path, manifest: dict[str, Any]) -> bool:
    """Whether a stamp says this exact bundle (same manifest, same files untouched) was fully verified.

    A file modified less than ``_RACY_NS`` before the stamp was written is not trusted (filesystem
    timestamps are coarse, so a same-size rewrite just after the check could keep its mtime): as in git's
    "racily clean" rule, such a bundle is hashed again, and the new stamp is trusted once it is old enough.
    """
    path = _stamp_path(directory)
    if path is None:
        return False
    try:
        if path.stat().st_size > _MAX_STAMP_BYTES:
            return False
        stamp = json.loads(path.read_text(encoding="utf-8"))
        now = _fingerprint(directory, manifest)
        written = stamp.pop("written_ns", None) if isinstance(stamp, dict) else None
        if stamp != now or not isinstance(written, int):
            return False
        return all(mtime < written - _RACY_NS for _, mtime, _ in now["files"].values())
    except (OSError, ValueError, RecursionError, TypeError):
        return False


def remember(directory: Path, manifest: dict[str, Any]) -> None:
    """Write the stamp after a full verification (best effort)."""
    path = _stamp_path(directory)
    if path is None:
        return
    try:
        stamp = {**_fingerprint(directory, manifest), "written_ns": time.time_ns()}
        atomic_write(path, json.dumps(stamp, sort_keys=True))
    except OSError as exc:
        log.debug("cannot write the verification stamp %s (%s); the next start-up hashes again", path, exc)
