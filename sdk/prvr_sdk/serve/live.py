"""``LiveIndex``: the index a server searches, following the versions that writers commit.

``prvr index add`` (or ``ExactIndex.save``) commits a new immutable version and flips the index's
``CURRENT`` pointer (``prvr_sdk.index.store``). A server must pick it up without a restart and without
failing a request, so:

- ``current()`` reads ``CURRENT`` (a few bytes) at most every ``interval`` seconds; when it names another
  version, one background thread opens it (memory-mapped: cheap, pages come from the OS page cache that
  every worker process shares) while requests go on with the old one;
- the swap is one reference assignment of an ``(index, version)`` pair, so a request sees either the old
  or the new version, never a mix; a request that took the old one finishes on it (its maps stay valid
  after the writer deletes that version's files: POSIX unlink semantics);
- a version that fails to open (corrupt, or built with another bundle) is logged once, and the old one
  keeps serving; ``status()`` reports the error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prvr_sdk.errors import PrvrError
from prvr_sdk.index import ExactIndex, store

__all__ = ["LiveIndex"]

log = logging.getLogger(__name__)


class LiveIndex:
    """The live version of an index directory, swapped atomically when a newer one is committed.

    Args:
        path: the index directory.
        open_index: opens the live version of ``path`` (e.g. ``Retriever``-bound ``ExactIndex.load`` with
            the bundle's hash and dim, so a version built with another bundle is refused).
        interval: seconds between two reads of ``CURRENT``; 0 reads it on every ``current()`` call.

    Raises:
        IndexFormatError / IndexMismatchError: from ``open_index`` on the first version (later versions
        that fail are logged and skipped, the previous one keeps serving).
    """

    def __init__(
        self, path: str | Path, open_index: Callable[[Path], ExactIndex], interval: float = 1.0
    ) -> None:
        self.path = Path(path).absolute()
        self.interval = float(interval)
        self._open = open_index
        self._live, self._seen = self._load()
        self._gate = threading.Lock()
        self._next_check = time.monotonic() + self.interval
        self._loader: threading.Thread | None = None
        self._error: str | None = None  # the last failed look or load, until a reload succeeds
        self._logged: set[str] = set()
        self.reloads = 0

    def _pointer(self) -> tuple[str, int, int] | None:
        """What ``CURRENT`` says, and which file says it (inode, mtime): every commit replaces the file, so
        an index rebuilt from scratch under a version name seen before is noticed too."""
        name = store.read_current(self.path)
        try:
            st = (self.path / store.CURRENT).stat()
        except FileNotFoundError:
            return None
        return None if name is None else (name, st.st_ino, st.st_mtime_ns)

    def _load(self) -> tuple[tuple[ExactIndex, str], tuple[str, int, int] | None]:
        """The live version, opened, and the pointer read before opening it (a commit racing the open is
        then seen as a change at the next look, and reloaded: harmless)."""
        pointer = self._pointer()
        index = self._open(self.path)
        return (index, str(index.info()["version"])), pointer

    def snapshot(self) -> tuple[ExactIndex, str]:
        """The ``(index, version)`` to serve one request with (checks for a new version first)."""
        if self.interval == 0 or time.monotonic() >= self._next_check:
            self._check()
        return self._live

    def current(self) -> ExactIndex:
        """The index to search (see ``snapshot``)."""
        return self.snapshot()[0]

    @property
    def version(self) -> str:
        return self._live[1]

    def _check(self) -> None:
        if not self._gate.acquire(blocking=False):
            return  # another thread is looking right now
        try:
            now = time.monotonic()
            if self.interval and now < self._next_check:
                return
            self._next_check = now + self.interval
            if self._loader is not None and self._loader.is_alive():
                return
            try:
                pointer = self._pointer()
            except PrvrError as exc:
                self._note_failure(store.CURRENT, exc)
                return
            if pointer is None or pointer == self._seen:
                return
            self._loader = threading.Thread(target=self.reload, name="prvr-index-reload", daemon=True)
            self._loader.start()
        finally:
            self._gate.release()

    def reload(self) -> bool:
        """Open the committed version now if it differs from the live one; True when it was swapped in."""
        name = store.CURRENT
        try:
            pointer = self._pointer()
            name = pointer[0] if pointer else name
            if pointer == self._seen:
                return False
            fresh, seen = self._load()
        except PrvrError as exc:
            self._note_failure(name, exc)
            return False
        old = self._live[1]
        self._live, self._seen = fresh, seen
        self.reloads += 1
        self._error = None
        log.info("index %s: now serving version %s (was %s; %d videos)", self.path, fresh[1], old,
                 len(fresh[0]))
        return True

    def _note_failure(self, what: str, exc: PrvrError) -> None:
        message = f"{what}: {type(exc).__name__}: {exc}"
        if message not in self._logged:  # once per version and error, not once per interval
            self._logged.add(message)
            log.warning("index %s: cannot open %s; still serving %s", self.path, message, self._live[1])
        self._error = message

    def status(self) -> dict[str, Any]:
        """JSON-ready: path, live version, reload count and the last failure (``None`` when none)."""
        index, version = self._live
        return {"path": str(self.path), "version": version, "videos": len(index), "reloads": self.reloads,
                "reload_error": self._error}
