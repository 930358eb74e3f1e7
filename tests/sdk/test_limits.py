"""Size limits: a tiny file that *declares* gigabytes is refused before anything is allocated.

Each hostile file is a few KB on disk. The read runs in a subprocess whose address space is capped at
~1.5 GB (``RLIMIT_AS``): code that trusted the declared size would die there with ``MemoryError``; the
limits must turn every case into ``InvalidInputError`` naming the file, the video and the limit (and the
flag that raises it). Oracle: the declared sizes, computed by hand in each test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from prvr_sdk.errors import InvalidInputError
from prvr_sdk.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_FRAMES, check_array, npy_header
from prvr_sdk.sources import open_features

h5py = pytest.importorskip("h5py")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS checks need Linux")

AS_LIMIT = 1536 * 1024**2  # far below every declared size here, far above what the checks need
GiB = 1024**3


def _read_capped(path, video_id: str | None = None, **kwargs) -> dict:
    """``open_features(path, **kwargs).read(video_id)`` in a subprocess capped at ``AS_LIMIT``; returns
    ``{"error": class name, "message": str}`` (or ``{"error": None}``)."""
    code = textwrap.dedent(
        f"""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({AS_LIMIT}, {AS_LIMIT}))
        from prvr_sdk.sources import open_features
        try:
            with open_features({str(path)!r}, **{kwargs!r}) as src:
                src.read({video_id!r} or src.ids()[0])
            out = {{"error": None, "message": ""}}
        except BaseException as exc:
            out = {{"error": type(exc).__name__, "message": str(exc)}}
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_refused(result: dict, *words: str) -> None:
    assert result["error"] == "InvalidInputError", result
    for word in words:
        assert word in result["message"], (word, result["message"])


def _npy_header_bytes(shape, descr="<f4") -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


# --- hdf5 --------------------------------------------------------------------------------------------


def _h5_declaring(path, shape, **kw):
    with h5py.File(path, "w") as f:  # chunked + compressed + fill value: nothing written, KBs on disk
        f.create_dataset("huge", shape=shape, dtype="f4", chunks=(64, shape[1]), compression="gzip",
                         fillvalue=1.0, **kw)
    assert path.stat().st_size < 64 * 1024
    return path


def test_hdf5_declaring_gigabytes_is_refused_before_reading(tmp_path):
    path = _h5_declaring(tmp_path / "bomb.h5", (50_000, 16_384))  # 3.05 GiB declared, 50k frames
    result = _read_capped(path)
    _assert_refused(result, str(path), "huge", "--max-bytes", "max_bytes=", "2.0 GiB")


def test_hdf5_declaring_too_many_frames_is_refused(tmp_path):
    path = _h5_declaring(tmp_path / "long.h5", (10**7, 256))  # 9.5 GiB, 10M frames
    result = _read_capped(path)
    _assert_refused(result, str(path), "huge", str(10**7), str(DEFAULT_MAX_FRAMES), "--max-frames")


def test_hdf5_limits_are_settable(tmp_path):
    path = tmp_path / "small.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=np.ones((50, 4), np.float32))
    with open_features(path) as src:  # defaults: fine
        assert src.read("v").shape == (50, 4)
    with open_features(path, max_frames=10) as src, pytest.raises(InvalidInputError, match="--max-frames"):
        src.read("v")
    with open_features(path, max_bytes=100) as src, pytest.raises(InvalidInputError, match="--max-bytes"):
        src.read("v")
    with open_features(path, max_frames=50, max_bytes=800) as src:  # limits are inclusive
        assert src.read("v").shape == (50, 4)


# --- .npy folder -------------------------------------------------------------------------------------


def test_npy_header_claiming_1e12_elements_is_refused(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    (folder / "liar.npy").write_bytes(_npy_header_bytes((1_000, 10**9)) + b"\0" * 4096)
    result = _read_capped(folder, "liar")
    _assert_refused(result, "liar.npy", "liar", "--max-bytes")


# --- .npz --------------------------------------------------------------------------------------------


def test_npz_member_declaring_gigabytes_is_not_inflated(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("bomb.npy", "w", force_zip64=True) as member:
            member.write(_npy_header_bytes((90_000, 8_192)))  # 2.75 GiB declared, 90k frames
            member.write(b"\0" * (1 << 20))
    assert path.stat().st_size < 64 * 1024
    result = _read_capped(path)
    _assert_refused(result, str(path), "bomb", "--max-bytes")


def test_npz_zip_bomb_is_refused_by_its_header(tmp_path):
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, zeros=np.zeros((8_192, 1_024), np.float32))  # 32 MiB in, ~32 KB on disk
    assert path.stat().st_size < 200 * 1024
    with pytest.raises(InvalidInputError, match=r"zeros.*32\.0 MiB.*16\.0 MiB.*--max-bytes"):
        open_features(path, max_bytes=16 * 1024**2)  # npz headers are all checked on open
    with open_features(path) as src:  # within the default limit it reads
        assert src.read("zeros").shape == (8_192, 1_024)


# --- BigFile -----------------------------------------------------------------------------------------


def _bigfile(root, n_frames=10, dim=4):
    root.mkdir()
    names = [f"f{t}" for t in range(n_frames)]
    np.ones((n_frames, dim), "<f4").tofile(root / "feature.bin")
    (root / "id.txt").write_text(" ".join(names))
    (root / "shape.txt").write_text(f"{n_frames} {dim}")
    (root / "video2frames.txt").write_text(repr({"vid": names}))
    return root


def test_huge_video2frames_is_refused_by_its_size(tmp_path):
    root = _bigfile(tmp_path / "big")
    with open(root / "video2frames.txt", "r+b") as f:  # sparse: 1 GiB declared, nothing on disk
        f.truncate(GiB)
    result = _read_capped(root, "vid")
    _assert_refused(result, "video2frames.txt", "1.0 GiB", "256.0 MiB", "--max-bytes")


def test_bigfile_shape_claiming_huge_n_is_refused_before_id_txt_is_read(tmp_path):
    root = _bigfile(tmp_path / "big")
    (root / "shape.txt").write_text(f"{10**12} 4096")
    with open(root / "id.txt", "r+b") as f:  # a huge id.txt must not be read once the sizes disagree
        f.truncate(GiB)
    result = _read_capped(root, "vid")
    _assert_refused(result, "feature.bin", "shape.txt")


def test_huge_id_txt_is_refused_by_its_size(tmp_path):
    root = _bigfile(tmp_path / "big")
    with open(root / "id.txt", "r+b") as f:
        f.truncate(GiB)
    result = _read_capped(root, "vid")
    _assert_refused(result, "id.txt", "--max-bytes")


def test_bigfile_video_over_the_frame_limit(tmp_path):
    root = _bigfile(tmp_path / "big", n_frames=10, dim=64)
    with open_features(root, max_frames=5) as src, pytest.raises(InvalidInputError) as info:
        src.read("vid")
    message = str(info.value)
    assert "vid" in message and "10 frames" in message and "5" in message and "--max-frames" in message
    with open_features(root, max_bytes=2_000) as src, pytest.raises(InvalidInputError, match="--max-bytes"):
        src.read("vid")  # 10 x 64 x 4 = 2560 bytes
    with open_features(root, max_frames=10, max_bytes=2_560) as src:
        assert src.read("vid").shape == (10, 64)


# --- the helpers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2G"])
def test_limits_must_be_positive_integers(tmp_path, bad):
    path = tmp_path / "f.npz"
    np.savez(path, v=np.ones((2, 2), np.float32))
    with pytest.raises(InvalidInputError, match="max_frames"):
        open_features(path, max_frames=bad)
    with pytest.raises(InvalidInputError, match="max_bytes"):
        open_features(path, max_bytes=bad)


def test_check_array_and_header_reader(tmp_path):
    assert DEFAULT_MAX_BYTES == 2 * GiB and DEFAULT_MAX_FRAMES == 100_000
    check_array((100_000, 5_368), np.float32, "ok")  # 2.0 GiB - a little: inside
    with pytest.raises(InvalidInputError, match="object"):
        check_array((1,), np.dtype(object), "x")
    with pytest.raises(InvalidInputError, match="real-valued"):
        check_array((1, 2), np.dtype("U3"), "x")
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((3, 7), np.float16))
    with open(path, "rb") as f:
        assert npy_header(f, "a") == ((3, 7), np.dtype(np.float16))


# --- VideoEmbeddings files ---------------------------------------------------------------------------


def _embeddings(tmp_path):
    from prvr_sdk import VideoEmbeddings

    emb = VideoEmbeddings(
        ids=["a", "b"],
        clip_emb=np.ones((5, 8), np.float32),
        offsets=np.array([0, 2, 5]),
        spans=np.zeros((5, 2)),
        video_emb=None,
        durations=np.array([1.0, 2.0]),
        num_frames=np.array([4, 6]),
        model="m",
    )
    path = emb.save(tmp_path / "emb.npz")
    with np.load(path) as z:
        return VideoEmbeddings, path, {k: z[k] for k in z.files}


def test_embeddings_round_trip_and_max_bytes(tmp_path):
    VideoEmbeddings, path, _ = _embeddings(tmp_path)
    assert VideoEmbeddings.load(path).ids == ["a", "b"]
    with pytest.raises(InvalidInputError, match=r"emb\.npz.*--max-bytes"):
        VideoEmbeddings.load(path, max_bytes=100)


def test_embeddings_member_declaring_gigabytes_is_not_inflated(tmp_path):
    VideoEmbeddings, path, arrays = _embeddings(tmp_path)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            if key != "clip_emb":
                with zf.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, value)
        with zf.open("clip_emb.npy", "w", force_zip64=True) as member:
            member.write(_npy_header_bytes((5_000_000, 512)))  # 9.5 GiB declared
            member.write(b"\0" * (1 << 20))
    with pytest.raises(InvalidInputError, match=r"bomb\.npz:clip_emb.*--max-bytes"):
        VideoEmbeddings.load(bomb)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda a: a.pop("ids"), ["lacks ids"]),
        (lambda a: a.pop("durations"), ["lacks durations"]),
        (lambda a: a.update(ids=np.arange(2)), ["ids", "kind 'U'"]),
        (lambda a: a.update(offsets=np.array([[0, 2, 5]])), ["offsets", "1-d"]),
        (lambda a: a.update(offsets=np.array([0.0, 2.0, 5.0])), ["offsets", "kind 'iu'"]),
        (lambda a: a.update(offsets=np.array([0, 4, 2])), ["offsets", "never decrease"]),
        (lambda a: a.update(offsets=np.array([0, 2, 9])), ["inconsistent", "clip_emb"]),
        (lambda a: a.update(clip_emb=np.array(["x"] * 5)), ["clip_emb", "kind 'f'"]),
        (lambda a: a.update(spans=np.zeros((5, 3))), ["spans", "[N, 2]"]),
        (lambda a: a.update(num_frames=np.array([1.5, 2.0])), ["num_frames"]),
    ],
)
def test_embeddings_with_missing_or_mistyped_members_are_refused(tmp_path, change, words):
    VideoEmbeddings, _, arrays = _embeddings(tmp_path)
    change(arrays)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(InvalidInputError) as info:
        VideoEmbeddings.load(bad)
    assert "bad.npz" in str(info.value)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_embeddings_with_an_object_member_are_refused(tmp_path):
    VideoEmbeddings, _, arrays = _embeddings(tmp_path)
    arrays["ids"] = np.array(["a", None], dtype=object)
    bad = tmp_path / "obj.npz"
    np.savez(bad, **arrays)
    with pytest.raises(InvalidInputError, match=r"obj\.npz:ids.*objects"):
        VideoEmbeddings.load(bad)
