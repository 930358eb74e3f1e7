"""Tests for export/prvr_export/data/readers.py on files written in the real layouts (conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prvr_export.data import (
    BigFile,
    BigFileVideos,
    H5Features,
    read_captions,
    read_meta,
    read_video2frames,
    video_id_of,
)
from prvr_sdk.errors import InvalidInputError, ShapeMismatchError

h5py = pytest.importorskip("h5py")


# --- captions -------------------------------------------------------------------------------------


def test_read_captions_splits_at_first_space(tiny_tvr) -> None:
    captions = read_captions(tiny_tvr.collection / "TextData" / "tvrtrain.caption.txt")
    assert [(c.cap_id, c.text) for c in captions] == [
        (cap, text.strip()) for cap, text in tiny_tvr.captions["train"]
    ]
    assert captions[1].text == "Ross sits on the couch   and   talks."  # inner spacing kept
    assert captions[0].video_id == "castle_s01e01_seg00_clip_00"


def test_video_id_is_the_part_before_the_first_hash() -> None:
    assert video_id_of("v1#enc#0") == "v1"
    assert video_id_of("v1#a#b#c") == "v1"
    assert video_id_of("plain") == "plain"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "no captions"),
        ("\n\n", "no captions"),
        ("v1#0\n", "expected '<cap_id> <text>'"),
        ("v1#0 a man\nv1#0 a woman\n", "appears twice"),
    ],
)
def test_bad_caption_file_names_file_and_problem(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "tvrtrain.caption.txt"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=problem) as info:
        read_captions(path)
    assert str(path) in str(info.value)


def test_missing_caption_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.caption.txt"
    with pytest.raises(InvalidInputError, match="not found") as info:
        read_captions(path)
    assert str(path) in str(info.value)


# --- video2frames ---------------------------------------------------------------------------------


def test_video2frames_round_trip(tmp_path: Path) -> None:
    written = {"v1": ["v1_0", "v1_1"], "v2": ["v2_0"], "v3": []}
    path = tmp_path / "video2frames.txt"
    path.write_text(repr(written))
    assert read_video2frames(path) == written


@pytest.mark.parametrize(
    "content",
    [
        "__import__('os').system('touch PWNED')",
        "{'v1': [__import__('os').system('touch PWNED')]}",
        "{'v1': ['a']} if __import__('os').system('touch PWNED') else {}",
        "(lambda: __import__('os').system('touch PWNED'))()",
        "open('PWNED', 'w')",
    ],
)
def test_video2frames_with_code_is_rejected_and_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "video2frames.txt"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match="not a plain literal") as info:
        read_video2frames(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("['v1_0', 'v1_1']", "expected a dict literal"),
        ("{1: ['a']}", "is not a string"),
        ("{'v1': 'v1_0 v1_1'}", "list of frame-id strings"),
        ("{'v1': [0, 1]}", "list of frame-id strings"),
    ],
)
def test_video2frames_wrong_structure(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "video2frames.txt"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=problem):
        read_video2frames(path)


# --- BigFile --------------------------------------------------------------------------------------


def test_bigfile_rows_match_what_was_written(tiny_tvr) -> None:
    videos = BigFileVideos(tiny_tvr.collection / "FeatureData" / "i3d_resnet", expected_dim=tiny_tvr.dv)
    assert videos.dim == tiny_tvr.dv
    for video_id, frames in tiny_tvr.videos.items():
        got = videos.read(video_id)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, frames)


def test_bigfile_id_txt_may_use_any_whitespace(tmp_path: Path) -> None:
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    (tmp_path / "feature.bin").write_bytes(rows.tobytes())
    (tmp_path / "id.txt").write_text("a_0\nb_0\t b_1\n")
    (tmp_path / "shape.txt").write_text("3 2\n")
    big = BigFile(tmp_path)
    np.testing.assert_array_equal(big.read_rows(["b_1", "a_0"], "x"), rows[[2, 0]])


@pytest.fixture
def bigfile_dir(tiny_tvr) -> Path:
    return tiny_tvr.collection / "FeatureData" / "i3d_resnet"


@pytest.mark.parametrize("name", ["feature.bin", "id.txt", "shape.txt", "video2frames.txt"])
def test_bigfile_missing_file_is_named(bigfile_dir: Path, name: str) -> None:
    (bigfile_dir / name).unlink()
    with pytest.raises(InvalidInputError, match="not found") as info:
        BigFileVideos(bigfile_dir)
    assert str(bigfile_dir / name) in str(info.value)


def test_bigfile_size_must_match_shape(bigfile_dir: Path) -> None:
    path = bigfile_dir / "feature.bin"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(InvalidInputError, match=r"bytes, expected N\*D\*4") as info:
        BigFile(bigfile_dir)
    assert str(path) in str(info.value)


def test_bigfile_id_count_must_match_shape(bigfile_dir: Path) -> None:
    path = bigfile_dir / "id.txt"
    path.write_text(path.read_text() + " extra_id")
    with pytest.raises(InvalidInputError, match="ids, but") as info:
        BigFile(bigfile_dir)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ["", "12", "12 x", "12 6 7"])
def test_bigfile_malformed_shape(bigfile_dir: Path, content: str) -> None:
    (bigfile_dir / "shape.txt").write_text(content)
    with pytest.raises(InvalidInputError, match="expected 'N D'"):
        BigFile(bigfile_dir)


def test_bigfile_wrong_dim_for_config(bigfile_dir: Path) -> None:
    with pytest.raises(ShapeMismatchError, match="video_feat_dim = 3072") as info:
        BigFileVideos(bigfile_dir, expected_dim=3072)
    assert str(bigfile_dir / "shape.txt") in str(info.value)


def test_frame_missing_from_id_txt_names_video_and_frame(bigfile_dir: Path) -> None:
    (bigfile_dir / "video2frames.txt").write_text(repr({"v9": ["bbt_s01e01_clip_01_0", "ghost_frame"]}))
    videos = BigFileVideos(bigfile_dir)
    with pytest.raises(InvalidInputError, match="'v9'.*'ghost_frame'"):
        videos.read("v9")


def test_empty_video_names_file_and_video(bigfile_dir: Path) -> None:
    (bigfile_dir / "video2frames.txt").write_text(repr({"v_empty": []}))
    with pytest.raises(InvalidInputError, match="0 frames") as info:
        BigFileVideos(bigfile_dir).read("v_empty")
    assert f"{bigfile_dir}:v_empty" in str(info.value)


def test_unknown_video(bigfile_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="no entry for video 'nope'"):
        BigFileVideos(bigfile_dir).read("nope")


def test_nan_frame_names_file_video_and_row(tiny_tvr, bigfile_dir: Path) -> None:
    video_id = "met_s03e01_clip_07"
    order = list(tiny_tvr.videos)
    offset = sum(len(tiny_tvr.videos[v]) for v in order[: order.index(video_id)])
    data = np.fromfile(bigfile_dir / "feature.bin", dtype="<f4").reshape(-1, tiny_tvr.dv)
    data[offset + 5, 2] = np.nan
    data.tofile(bigfile_dir / "feature.bin")
    videos = BigFileVideos(bigfile_dir)
    with pytest.raises(InvalidInputError, match="NaN in row 5") as info:
        videos.read(video_id)
    assert f"{bigfile_dir}:{video_id}" in str(info.value)
    videos.read(order[0])  # the other videos stay readable


# --- hdf5 -----------------------------------------------------------------------------------------


def test_token_and_sentence_hdf5_round_trip(tiny_tvr) -> None:
    text = tiny_tvr.collection / "TextData"
    tokens = H5Features(text / "roberta_tvr_query_feat.hdf5", (None, tiny_tvr.dq), "token features")
    sentences = H5Features(text / "clip_ViT_B_32_tvr_query_feat.hdf5", (tiny_tvr.dclip,), "sentence features")
    for cap_id, value in tiny_tvr.tokens.items():
        np.testing.assert_array_equal(tokens.read(cap_id), value)
        np.testing.assert_array_equal(sentences.read(cap_id), tiny_tvr.sentences[cap_id])
    assert set(tokens.keys()) == set(tiny_tvr.tokens)


def test_clip_video_and_patch_hdf5_round_trip(tiny_tvr) -> None:
    feat = tiny_tvr.collection / "FeatureData"
    videos = H5Features(
        feat / "new_clip_vit_32_tvr_vid_features.hdf5", (None, tiny_tvr.dclip), "video features"
    )
    patches = H5Features(feat / "patch_tokens.hdf5", (None, 5, tiny_tvr.dclip), "patch tokens")
    for video_id, value in tiny_tvr.clip_videos.items():
        np.testing.assert_array_equal(videos.read(video_id), value)
        np.testing.assert_array_equal(patches.read(video_id), tiny_tvr.patches[video_id])


def test_sentence_stored_as_row_is_squeezed(tmp_path: Path) -> None:
    path = tmp_path / "clip.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("v#0", data=np.ones((1, 4), np.float64))
    np.testing.assert_array_equal(H5Features(path, (4,), "sentence features").read("v#0"), np.ones(4))


def test_hdf5_wrong_dim_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "roberta_tvr_query_feat.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("v#0", data=np.ones((7, 1024), np.float32))
    with pytest.raises(ShapeMismatchError, match=r"shape \[7, 1024\], expected \[\*, 768\]") as info:
        H5Features(path, (None, 768), "token features").read("v#0")
    assert f"{path}:v#0" in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_hdf5_non_finite_names_file_and_key(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "q.hdf5"
    value = np.ones((3, 4), np.float32)
    value[1, 1] = bad
    with h5py.File(path, "w") as f:
        f.create_dataset("v#0", data=value)
    with pytest.raises(InvalidInputError, match="NaN or Inf") as info:
        H5Features(path, (None, 4), "token features").read("v#0")
    assert f"{path}:v#0" in str(info.value)


def test_hdf5_empty_entry_and_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "v.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("v_empty", data=np.zeros((0, 4), np.float32))
    store = H5Features(path, (None, 4), "video features")
    with pytest.raises(InvalidInputError, match="0 rows") as info:
        store.read("v_empty")
    assert f"{path}:v_empty" in str(info.value)
    with pytest.raises(InvalidInputError, match="no video features for 'v_other'"):
        store.read("v_other")


def test_hdf5_missing_or_not_hdf5(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not found"):
        H5Features(tmp_path / "absent.hdf5", (None, 4), "token features")
    path = tmp_path / "text.hdf5"
    path.write_text("not hdf5")
    with pytest.raises(InvalidInputError, match="cannot open as hdf5") as info:
        H5Features(path, (None, 4), "token features").read("x")
    assert str(path) in str(info.value)


def test_read_meta(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text('{"fps": 1.0, "captions": {"v#0": {"span": [1.0, 2.5]}}}')
    assert read_meta(path)["captions"]["v#0"]["span"] == [1.0, 2.5]
    path.write_text("{not json")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        read_meta(path)


# --- hostile or corrupt files: typed errors naming the file (and line), never a traceback -----------------


def test_caption_file_with_a_non_utf8_byte_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.caption.txt"
    path.write_bytes(b"v1#0 a person walks\nv1#1 caf\xe9 scene\n")
    with pytest.raises(InvalidInputError, match=r"c\.caption\.txt:2: not UTF-8 .*0xe9"):
        read_captions(path)


def test_oversized_caption_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.caption.txt"
    path.write_text("v1#0 a person walks\n")
    with open(path, "r+b") as f:
        f.truncate(1024**3)  # sparse: 1 GiB declared
    with pytest.raises(InvalidInputError, match=r"big\.caption\.txt: caption file is 1\.0 GiB.*--max-bytes"):
        read_captions(path)
    small = tmp_path / "small.caption.txt"
    small.write_text("v1#0 a person walks\n")
    assert len(read_captions(small, max_bytes=4096)) == 1
    with pytest.raises(InvalidInputError, match="--max-bytes"):
        read_captions(small, max_bytes=64)  # text limit = 64 / 8 bytes


@pytest.mark.parametrize(
    "content, problem",
    [(b"{\"captions\": \xff}", "not UTF-8"), (b"[" * 100_000, "JSON nested too deeply")],
)
def test_bad_meta_json_is_a_typed_error(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "meta.json"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=rf"meta\.json: ({problem})"):
        read_meta(path)


def test_hdf5_group_and_huge_dataset_in_a_training_store(tmp_path: Path) -> None:
    path = tmp_path / "q.hdf5"
    with h5py.File(path, "w") as f:
        f.create_group("cap#0")
        f.create_dataset("cap#1", shape=(10**6, 1024), dtype="f4", chunks=(64, 1024), compression="gzip")
    store = H5Features(path, (None, 1024), "token features")
    with pytest.raises(InvalidInputError, match=r"q\.hdf5:cap#0: expected a dataset of token features"):
        store.read("cap#0")
    with pytest.raises(InvalidInputError, match=r"q\.hdf5:cap#1: declares .*--max-frames"):
        store.read("cap#1")  # 3.8 GiB declared, never allocated
