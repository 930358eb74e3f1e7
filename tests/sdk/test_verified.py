"""Verification stamps: a bundle hashed once is not hashed again while nothing about it changed.

Oracle: counting the real hashing calls (``prvr_sdk.bundle.file_digest``) and the ChecksumError a damaged
file must still raise. Uses a committed golden bundle copied to a temporary folder (torch-free).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from prvr_sdk import bundle as bundle_io
from prvr_sdk.errors import ChecksumError

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "amdnet" / "bundle"


@pytest.fixture
def copy(tmp_path, monkeypatch):
    monkeypatch.setenv("PRVR_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bundle"
    shutil.copytree(GOLDEN, out)
    return out


@pytest.fixture
def hashed(monkeypatch):
    calls = []
    real = bundle_io.file_digest
    monkeypatch.setattr(bundle_io, "file_digest", lambda p: calls.append(Path(p).name) or real(p))
    return calls


def age(folder: Path, seconds: float = 60) -> None:
    """Make every file look written ``seconds`` ago (a freshly written bundle is 'racy' for a while)."""
    for p in folder.rglob("*"):
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_a_verified_bundle_is_not_hashed_again(copy, hashed):
    age(copy)
    bundle_io.load(copy)
    first = len(hashed)
    assert first == len(bundle_io.load(copy, verify=False).files)  # the first load hashed every file
    bundle_io.load(copy)
    assert len(hashed) == first  # the stamp matched: nothing hashed
    bundle_io.load(copy, verify="full")
    assert len(hashed) == 2 * first  # "full" always hashes


def test_files_written_just_before_the_check_are_hashed_again(copy, hashed):
    for p in copy.rglob("*"):
        os.utime(p)  # written just now: too young to trust a stamp made now
    bundle_io.load(copy)
    n = len(hashed)
    bundle_io.load(copy)
    assert len(hashed) == 2 * n


def test_a_rewritten_file_is_caught(copy, hashed):
    age(copy)
    bundle_io.load(copy)
    graph = copy / "video_encoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(ChecksumError, match="video_encoder.onnx"):
        bundle_io.load(copy)


def test_restored_mtimes_need_full_or_a_signature(copy, hashed):
    """The documented limit: an edit that restores size and mtime passes the stamp; "full" catches it."""
    age(copy)
    bundle_io.load(copy)
    graph = copy / "video_encoder.onnx"
    st = graph.stat()
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(st.st_atime_ns, st.st_mtime_ns))
    bundle_io.load(copy)  # the stamp matches (same size, mtime, inode)
    with pytest.raises(ChecksumError):
        bundle_io.load(copy, verify="full")


def test_stamps_can_be_turned_off(copy, hashed, monkeypatch):
    monkeypatch.setenv("PRVR_CACHE_DIR", "off")
    age(copy)
    bundle_io.load(copy)
    n = len(hashed)
    bundle_io.load(copy)
    assert len(hashed) == 2 * n
