"""One writer at a time: the ``LOCK`` file of an index directory, and the errors around concurrent writes.

A writer creates ``<index>/LOCK`` with ``O_CREAT | O_EXCL`` (atomic on local filesystems and NFSv3+) and
writes its pid, host name, start time and a random token into it; it removes the file when it is done,
after checking the token is still its own. A second writer finds the file and gets ``IndexLockedError``
naming the file and the owner. Readers never lock: they read whatever version ``CURRENT`` names, and a
save never changes a version in place (``store.py``).

Stale locks -- the owner was killed (``SIGKILL``, OOM, power loss) before it could remove the file -- are
broken automatically when the lock names *this* host and its pid no longer runs. Breaking is itself
serialised by a second ``O_EXCL`` file, ``LOCK.break``, and the breaker re-reads ``LOCK`` under it, so two
processes that both see the same stale lock cannot both end up holding a fresh one. A lock from another
host cannot be checked; the error then says how to remove it by hand. A pid reused by an unrelated
process makes a stale lock look alive (the safe direction: the error asks a human).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from prvr_sdk.errors import IndexConflictError, IndexLockedError  # defined there: one exit-code table

__all__ = ["LOCK_NAME", "IndexConflictError", "IndexLockedError", "WriterLock", "break_lock"]

log = logging.getLogger(__name__)

LOCK_NAME = "LOCK"
_BREAK_SUFFIX = ".break"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True  # cannot tell (e.g. a platform without signal 0): assume alive, the safe side
    return True


def _read_owner(path: Path) -> dict[str, Any] | None:
    """The lock file's JSON, ``{}`` when it is empty or unreadable (being written), None when absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _is_stale(owner: dict[str, Any]) -> bool:
    pid = owner.get("pid")
    return isinstance(pid, int) and owner.get("host") == socket.gethostname() and not _pid_alive(pid)


def _break_if_stale(path: Path, owner: dict[str, Any]) -> bool:
    """Remove ``path`` if it still holds ``owner``; True when the lock is gone afterwards."""
    breaker = path.with_name(path.name + _BREAK_SUFFIX)
    try:
        fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False  # someone else is breaking it right now
    try:
        again = _read_owner(path)
        if again is None:
            return True
        if again != owner:
            return False  # replaced since we looked: a live writer's lock now
        path.unlink()
        log.warning(
            "broke stale index lock %s (pid %s on %s no longer runs)",
            path,
            owner.get("pid"),
            owner.get("host"),
        )
        return True
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            breaker.unlink()


def _locked_message(path: Path, owner: dict[str, Any] | None) -> str:
    owner = owner or {}
    pid, host, since = owner.get("pid", "?"), owner.get("host", "?"), owner.get("since", "?")
    who = f"pid {pid} on host {host}, since {since}"
    if pid == os.getpid() and host == socket.gethostname():
        hint = (
            "it is held by this process: another index object has unsaved changes to this directory; "
            "save() or close() that one first"
        )
    elif host != socket.gethostname() and host != "?":
        hint = (
            f"this host cannot check whether that process still runs; if it does not, remove the lock "
            f"file: rm {path}"
        )
    elif path.with_name(path.name + _BREAK_SUFFIX).exists() and owner and _is_stale(owner):
        hint = (
            f"the owner no longer runs but {path.name}{_BREAK_SUFFIX} is left over from an interrupted "
            f"clean-up; remove both: rm {path} {path}{_BREAK_SUFFIX}"
        )
    else:
        hint = (
            f"wait for it to save or close; if that process no longer exists, remove the lock file: rm {path}"
        )
    return f"index {path.parent} is locked by another writer ({who}); lock file {path}. {hint}"


class WriterLock:
    """The writer lock of one index directory. Not reentrant; ``release`` is idempotent."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._token: str | None = None

    @property
    def held(self) -> bool:
        return self._token is not None

    def acquire(self) -> None:
        """Create the lock file or raise ``IndexLockedError`` (after breaking a stale lock once).

        Raises:
            IndexLockedError: another live writer holds it, or its owner cannot be checked.
        """
        if self._token is not None:
            return
        for attempt in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_owner(self.path)
                if owner is None:
                    continue  # released between our open and our read
                if attempt < 2 and owner and _is_stale(owner) and _break_if_stale(self.path, owner):
                    continue
                raise IndexLockedError(_locked_message(self.path, owner), self.path, owner) from None
            token = secrets.token_hex(8)
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "token": token,
            }
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            self._token = token
            return
        owner = _read_owner(self.path)
        raise IndexLockedError(_locked_message(self.path, owner), self.path, owner or {})

    def release(self) -> None:
        """Remove the lock file if this object still owns it."""
        if self._token is None:
            return
        owner = _read_owner(self.path)
        if owner is not None and owner.get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        elif owner is not None:
            log.warning(
                "index lock %s was taken over by pid %s while we held it; leaving it",
                self.path,
                owner.get("pid"),
            )
        self._token = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def break_lock(directory: str | os.PathLike, force: bool = False) -> bool:
    """Remove an index's lock file by hand; without ``force`` only a stale one (owner gone, this host).

    Returns:
        True when a lock file was removed.

    Raises:
        IndexLockedError: without ``force``, the lock's owner runs or cannot be checked.
    """
    path = Path(directory) / LOCK_NAME
    owner = _read_owner(path)
    if owner is None:
        return False
    if not force and not (owner and _is_stale(owner)):
        raise IndexLockedError(_locked_message(path, owner), path, owner)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(FileNotFoundError):
        path.with_name(path.name + _BREAK_SUFFIX).unlink()
    return True
