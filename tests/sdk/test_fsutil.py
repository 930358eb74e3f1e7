"""Tests for sdk/prvr_sdk/fsutil.py: ``atomic_write`` leaves the old file or the new one, never a torn one,
never a temporary file beside the target, and with ``overwrite=False`` never replaces anything."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from prvr_sdk import fsutil
from prvr_sdk.fsutil import atomic_write


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("fsync", [False, True])
def test_writes_bytes_text_or_through_a_callable(tmp_path: Path, fsync: bool) -> None:
    assert atomic_write(tmp_path / "a.bin", b"\x00\x01", fsync=fsync) == tmp_path / "a.bin"
    atomic_write(tmp_path / "b.txt", "é\n", fsync=fsync)
    atomic_write(tmp_path / "sub" / "c.txt", lambda tmp: tmp.write_text("by path"), fsync=fsync)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "é\n".encode()
    assert (tmp_path / "sub" / "c.txt").read_text() == "by path"
    assert _names(tmp_path) == ["a.bin", "b.txt", "sub"]


def test_replaces_and_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    atomic_write(target, "new", mode=0o644)
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o644


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "f"
    target.write_text("old")

    def torn(tmp: Path) -> None:
        tmp.write_text("half")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, torn)
    assert target.read_text() == "old" and _names(tmp_path) == ["f"]


def test_no_clobber_refuses_an_existing_file_or_link(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_text("mine")
    with pytest.raises(FileExistsError):
        atomic_write(target, "theirs", overwrite=False)
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        atomic_write(dangling, "theirs", overwrite=False)
    assert target.read_text() == "mine" and not (tmp_path / "nowhere").exists()
    assert _names(tmp_path) == ["key", "link"]
    atomic_write(tmp_path / "new", "fresh", overwrite=False, mode=0o600)
    assert (tmp_path / "new").read_text() == "fresh"
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o600


def test_no_clobber_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filesystems without hard links: an exclusive create and a copy, still never over an existing file."""

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(fsutil.os, "link", no_links)
    atomic_write(tmp_path / "k", b"secret", overwrite=False, mode=0o600)
    assert (tmp_path / "k").read_bytes() == b"secret"
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        atomic_write(tmp_path / "k", b"other", overwrite=False)
    assert (tmp_path / "k").read_bytes() == b"secret" and _names(tmp_path) == ["k"]


def test_parents_false_needs_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "f", "x", parents=False)
    assert not (tmp_path / "missing").exists()


def test_temporary_file_sits_beside_the_target(tmp_path: Path) -> None:
    seen = []
    atomic_write(tmp_path / "out.json", lambda tmp: seen.append(tmp) or tmp.write_text("{}"))
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".out.json.")
    assert not os.path.exists(seen[0])


def test_default_mode_follows_the_umask_like_open(tmp_path: Path) -> None:
    """Oracle: a file made by plain ``open()`` in the same process gets the same permission bits."""
    atomic_write(tmp_path / "a", "x")
    with open(tmp_path / "b", "w") as f:
        f.write("x")
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == stat.S_IMODE((tmp_path / "b").stat().st_mode)

