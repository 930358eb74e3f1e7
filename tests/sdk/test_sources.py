"""open_features: every on-disk layout returns exactly the arrays that were written, and bad files are named.

Oracle: the arrays themselves, written in each format by the test.
"""

from __future__ import annotations

import numpy as np
import pytest

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.sources import open_features

h5py = pytest.importorskip("h5py")

VIDEOS = {
    "a": np.arange(12, dtype=np.float32).reshape(3, 4),
    "b": np.linspace(-1, 1, 20, dtype=np.float32).reshape(5, 4),
    "c": np.ones((1, 4), dtype=np.float32),
}


def _write(kind: str, root, videos=VIDEOS):
    if kind == "hdf5":
        path = root / "f.h5"
        with h5py.File(path, "w") as f:
            for k, v in videos.items():
                f.create_dataset(k, data=v)
    elif kind == "npz":
        path = root / "f.npz"
        np.savez(path, **videos)
    elif kind == "npy":
        path = root / "npy"
        path.mkdir()
        for k, v in videos.items():
            np.save(path / f"{k}.npy", v)
    else:  # BigFile: rows of all videos in one matrix, video2frames maps ids to row names
        path = root / "big"
        path.mkdir()
        names, rows, v2f = [], [], {}
        for k, v in videos.items():
            v2f[k] = [f"{k}_{t}" for t in range(len(v))]
            names += v2f[k]
            rows.append(v)
        np.concatenate(rows).astype("<f4").tofile(path / "feature.bin")
        (path / "id.txt").write_text(" ".join(names))
        (path / "shape.txt").write_text(f"{len(names)} 4")
        (path / "video2frames.txt").write_text(repr(v2f))
    return path


@pytest.mark.parametrize("kind", ["hdf5", "npz", "npy", "bigfile"])
def test_each_format_round_trips(tmp_path, kind):
    with open_features(_write(kind, tmp_path), expected_dim=4) as source:
        assert source.kind == kind and len(source) == 3 and sorted(source.ids()) == ["a", "b", "c"]
        got = dict(source)
    assert got.keys() == VIDEOS.keys()
    for k, v in VIDEOS.items():
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], v)


@pytest.mark.parametrize("kind", ["hdf5", "npz", "npy", "bigfile"])
def test_bad_rows_and_dims_name_the_video(tmp_path, kind):
    bad = dict(VIDEOS, b=VIDEOS["b"].copy())
    bad["b"][3, 1] = np.nan
    source = open_features(_write(kind, tmp_path, bad))
    with pytest.raises(InvalidInputError, match=r"b.*NaN in row 3"):
        source.read("b")
    if kind != "bigfile":  # BigFile checks its width against the whole file at open
        with pytest.raises(ShapeMismatchError, match="a"):
            open_features(source.path, expected_dim=7).read("a")
    with pytest.raises(InvalidInputError, match="zzz"):
        source.read("zzz")


def test_unknown_or_missing_sources_list_the_formats(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InvalidInputError, match="npz"):
        open_features(tmp_path / "x.txt")
    with pytest.raises(InvalidInputError, match="not found"):
        open_features(tmp_path / "nothing.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="BigFile"):
        open_features(tmp_path / "empty")


def test_video2frames_holding_code_is_refused(tmp_path):
    path = _write("bigfile", tmp_path)
    (path / "video2frames.txt").write_text("__import__('os').system('echo pwned')")
    with pytest.raises(InvalidInputError, match="not a plain literal"):
        open_features(path)


# --- corrupt files: typed errors naming the file and the video, never a numpy/h5py exception -----------


def test_hdf5_group_where_a_dataset_belongs(tmp_path):
    path = tmp_path / "g.h5"
    with h5py.File(path, "w") as f:
        f.create_group("vid").create_dataset("inner", data=np.ones((2, 4), np.float32))
    with open_features(path) as src, pytest.raises(InvalidInputError) as info:
        src.read("vid")
    assert str(path) in str(info.value) and "vid" in str(info.value) and "Group" in str(info.value)


def test_hdf5_string_dataset_is_refused(tmp_path):
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("vid", data=np.array([b"abc", b"def"]))
    with open_features(path) as src, pytest.raises(InvalidInputError, match=r"s\.h5:vid.*real-valued"):
        src.read("vid")


def test_object_dtype_npy_is_refused_without_unpickling(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "vid.npy", np.array([[1.0, None]], dtype=object), allow_pickle=True)
    with open_features(folder) as src, pytest.raises(InvalidInputError) as info:
        src.read("vid")
    assert "vid.npy" in str(info.value) and "objects" in str(info.value)


def test_object_dtype_npz_member_is_refused(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, vid=np.array([[1.0, None]], dtype=object), ok=np.ones((2, 4), np.float32))
    with pytest.raises(InvalidInputError, match=r"o\.npz:vid.*objects"):
        open_features(path)  # every member's header is checked on open, nothing unpickled


def test_truncated_npy_and_not_a_zip(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    data = (folder / "x.npy")
    np.save(data, np.ones((100, 4), np.float32))
    data.write_bytes(data.read_bytes()[:300])  # header intact, data cut short
    with open_features(folder) as src, pytest.raises(InvalidInputError, match=r"x\.npy"):
        src.read("x")
    fake = tmp_path / "fake.npz"
    fake.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InvalidInputError, match=r"fake\.npz: not a readable \.npz"):
        open_features(fake)


def test_non_utf8_video2frames(tmp_path):
    root = _write("bigfile", tmp_path)
    (root / "video2frames.txt").write_bytes(b"{'a': ['a_0']}\xff")
    with pytest.raises(InvalidInputError, match=r"video2frames\.txt: not UTF-8"):
        open_features(root)
