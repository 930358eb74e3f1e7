"""Atomic file writes: the one temp-file-then-rename helper every writer in the project uses.

Why: a reader (or a crash) must never see a half-written manifest, signature, checkpoint, embeddings file
or output file. Writing to a temporary file in the target's own directory and renaming it over the target
gives that on POSIX filesystems (``os.replace`` within one directory is atomic), and removing the temporary
file on any failure -- Ctrl-C included -- leaves no debris beside the target.

``overwrite=False`` is the no-clobber variant (private keys): the finished temporary file is hard-linked to
the target, which fails if the target exists -- even one created a moment ago by someone else -- so an
existing file is never replaced and the new one still appears whole or not at all.

Not used by the index commit protocol (``prvr_sdk.index.store``), which writes, fsyncs and renames step by
step on purpose, so that the crash tests can stop it between any two steps.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "cache_root", "swap_directory", "switched_off"]

# Values of an environment switch that mean "off" (PRVR_CACHE_DIR, PRVR_NATIVE, PRVR_ORT_SCAN).
OFF_VALUES = ("0", "off", "false", "no", "none")


def switched_off(variable: str) -> bool:
    """Whether environment ``variable`` is set to an "off" value (unset or empty: not off)."""
    return os.environ.get(variable, "").strip().lower() in OFF_VALUES


def cache_root() -> Path | None:
    """prvr's per-user cache folder, or None when ``PRVR_CACHE_DIR`` turns caching off.

    ``$PRVR_CACHE_DIR``, else ``$XDG_CACHE_HOME/prvr``, else ``~/.cache/prvr``: one rule for verification
    stamps (``verified``) and compiled kernels (``native.build``).
    """
    root = os.environ.get("PRVR_CACHE_DIR")
    if root is not None:
        return None if root.strip().lower() in ("", *OFF_VALUES) else Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prvr"

_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it) and restored at once
os.umask(_UMASK)

# link() errors that mean "this filesystem has no hard links", not "the target exists".
_NO_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}

Content = bytes | str | Callable[[Path], None]


def atomic_write(
    path: str | os.PathLike,
    content: Content,
    *,
    encoding: str = "utf-8",
    mode: int | None = None,
    fsync: bool = False,
    overwrite: bool = True,
    parents: bool = True,
) -> Path:
    """Write ``content`` to ``path`` so that readers see the old file or the new one, never a mix.

    Args:
        path: the target file.
        content: bytes, text (encoded with ``encoding``), or ``write(tmp_path)``, a callable that writes
            the (already created, empty) temporary file by path -- for writers that want a path, such as
            ``torch.save``, or that stream their output.
        mode: permission bits of the new file; default: what ``open()`` would give (0666 minus the
            umask), so bundles, indexes and outputs are readable like any other file. Secrets pass 0600.
        fsync: flush the file (and, after the rename, its directory) to stable storage, so that the write
            survives a power cut and not only a crash of this process.
        overwrite: replace an existing ``path``; with False an existing file (or link) raises
            ``FileExistsError`` and is left untouched.
        parents: create missing parent directories (False: a missing directory raises
            ``FileNotFoundError``, for writers whose directory must already be there).

    Returns:
        ``path`` as a ``Path``.
    Raises:
        FileExistsError: ``overwrite=False`` and ``path`` exists.
        OSError: the directory or the file cannot be written (nothing is left behind).
    """
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        if callable(content):
            os.close(fd)
            fd = -1
            content(tmp)
        else:
            data = content.encode(encoding) if isinstance(content, str) else content
            with os.fdopen(fd, "wb") as f:
                fd = -1
                f.write(data)
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_UMASK)
        if fsync:
            _fsync_file(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except BaseException:
        if fd != -1:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return path


def _publish_new(tmp: Path, path: Path) -> None:
    """Make ``tmp`` appear as ``path`` only if ``path`` does not exist; ``tmp`` is removed either way."""
    try:
        os.link(tmp, path)  # atomic and exclusive: EEXIST if anything is at ``path``
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        # No hard links here: create the target exclusively and copy (not atomic, still never clobbers).
        with open(tmp, "rb") as src, open(path, "xb") as dst:
            try:
                shutil.copyfileobj(src, dst)
                shutil.copymode(tmp, path)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
    tmp.unlink()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def swap_directory(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move directory ``new`` to ``target`` (same parent), replacing what is there only once ``new`` is in.

    An existing ``target`` is renamed aside, ``new`` renamed in, then the old one deleted; if renaming
    ``new`` in fails, the old one is renamed back, so ``target`` always holds a whole directory (exports and
    imported runs are replaced this way).
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
