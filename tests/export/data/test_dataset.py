"""Tests for export/prvr_export/data/dataset.py: PRVRData, its torch datasets and the collate functions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from prvr_export.data import (
    DATASETS,
    collate_queries,
    collate_train,
    collate_videos,
    open_dataset,
    uniform_frame_indices,
)
from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.features import l2_normalize, pool_clips, sample_frames

TRAIN_VIDEOS = ["castle_s01e01_seg00_clip_00", "friends_s02e03_seg01_clip_04"]


def test_train_items_are_videos_with_all_their_captions(tiny_tvr, make_config) -> None:
    train = open_dataset("tvr", tiny_tvr.root, make_config()).train_set()
    assert len(train) == 2
    assert train.video_ids == TRAIN_VIDEOS  # first appearance in the caption file
    item = train[1]
    assert item["video_id"] == TRAIN_VIDEOS[1]
    assert item["caption_ids"] == [f"{TRAIN_VIDEOS[1]}#enc#{k}" for k in range(3)]
    assert len(item["queries"]) == 3


def test_video_inputs_are_features_pooling_of_the_raw_rows(tiny_tvr, make_config) -> None:
    data = open_dataset("tvr", tiny_tvr.root, make_config(max_ctx_l=16))
    for video_id, raw in tiny_tvr.videos.items():
        item = data.video(video_id)
        np.testing.assert_array_equal(item["clips"], l2_normalize(pool_clips(raw, 32)))
        np.testing.assert_array_equal(item["frames"], l2_normalize(sample_frames(raw, 16)))
        assert item["clips"].shape == (32, tiny_tvr.dv)
        assert item["frames"].shape == (min(len(raw), 16), tiny_tvr.dv)


def test_no_normalisation_when_the_config_says_so(tiny_tvr, make_config) -> None:
    config = make_config(normalize_video=False, normalize_query=False, max_ctx_l=128)
    data = open_dataset("tvr", tiny_tvr.root, config)
    raw = tiny_tvr.videos[TRAIN_VIDEOS[1]]
    np.testing.assert_array_equal(data.video(TRAIN_VIDEOS[1])["clips"], pool_clips(raw, 32))
    np.testing.assert_array_equal(data.video(TRAIN_VIDEOS[1])["frames"], raw)  # 70 <= 128: all rows kept
    cap_id = f"{TRAIN_VIDEOS[1]}#enc#0"
    np.testing.assert_array_equal(data.query(cap_id), tiny_tvr.tokens[cap_id][:30])


def test_token_queries_normalised_then_truncated(tiny_tvr, make_config) -> None:
    data = open_dataset("tvr", tiny_tvr.root, make_config(max_desc_l=30))
    for cap_id, written in tiny_tvr.tokens.items():
        got = data.query(cap_id)
        expected = written / (np.linalg.norm(written, axis=-1, keepdims=True) + 1e-5)
        np.testing.assert_allclose(got, expected[:30], rtol=1e-6, atol=1e-7)
        assert got.shape == (min(len(written), 30), tiny_tvr.dq)


def test_sentence_queries_and_hdf5_videos(tiny_tvr, make_config) -> None:
    # AMDNet: CLIP video hdf5 and CLIP sentence vectors, no normalisation on either side.
    config = make_config(
        query_type="sentence",
        video_source="hdf5",
        video_feat_dim=tiny_tvr.dclip,
        query_feat_dim=tiny_tvr.dclip,
        normalize_video=False,
        normalize_query=False,
    )
    data = open_dataset("tvr", tiny_tvr.root, config)
    for video_id, raw in tiny_tvr.clip_videos.items():
        np.testing.assert_array_equal(data.video(video_id)["clips"], pool_clips(raw, 32))
    batch = collate_queries([data.queries("test")[i] for i in range(2)])
    assert set(batch) == {"query", "query_video", "caption_ids", "video_ids", "spans"}
    test_caps = [c for c, _ in tiny_tvr.captions["test"]]
    np.testing.assert_array_equal(
        batch["query"].numpy(), np.stack([tiny_tvr.sentences[c] for c in test_caps])
    )


def test_patches_keep_whole_frames_chosen_by_linspace(tiny_tvr, make_config) -> None:
    config = make_config(
        video_source="patches",
        video_feat_dim=tiny_tvr.dclip,
        max_frames=12,
        patch_grid=2,
        normalize_video=False,
    )
    data = open_dataset("tvr", tiny_tvr.root, config)
    for video_id, raw in tiny_tvr.patches.items():
        expected = raw[np.linspace(0, len(raw) - 1, num=12, dtype=int)] if len(raw) > 12 else raw
        np.testing.assert_array_equal(data.video(video_id)["patches"], expected)
    batch = collate_videos([data.videos("train")[i] for i in range(2)])
    assert batch["patches"].shape == (2, 12, 5, tiny_tvr.dclip)
    assert batch["frame_mask"].tolist() == [[1.0] * 3 + [0.0] * 9, [1.0] * 12]
    assert "clips" not in batch


@pytest.mark.parametrize(("n", "m"), [(1, 12), (12, 12), (13, 12), (70, 12), (1000, 7)])
def test_uniform_frame_indices_match_clip4clip(n: int, m: int) -> None:
    expected = np.arange(n) if n <= m else np.linspace(0, n - 1, num=m, dtype=int)
    np.testing.assert_array_equal(uniform_frame_indices(n, m), expected)


def test_collate_train_sorts_by_length_and_keeps_captions_contiguous(tiny_tvr, make_config) -> None:
    data = open_dataset("tvr", tiny_tvr.root, make_config(max_ctx_l=16))
    train = data.train_set()
    batch = collate_train([train[0], train[1]])  # 3 frames (2 captions), then 70 frames (3 captions)
    assert batch["video_ids"] == [TRAIN_VIDEOS[1], TRAIN_VIDEOS[0]]  # longest first
    assert batch["query_video"].tolist() == [0, 0, 0, 1, 1]
    assert batch["caption_ids"][:3] == [f"{TRAIN_VIDEOS[1]}#enc#{k}" for k in range(3)]
    assert batch["clips"].shape == (2, 32, tiny_tvr.dv)
    assert batch["frames"].shape == (2, 16, tiny_tvr.dv)
    assert batch["frame_mask"].sum(1).tolist() == [16.0, 3.0]
    assert torch.all(batch["frames"][1, 3:] == 0)
    lengths = [min(len(tiny_tvr.tokens[c]), 30) for c in batch["caption_ids"]]
    assert batch["query"].shape == (5, max(lengths), tiny_tvr.dq)
    assert batch["query_mask"].sum(1).tolist() == [float(n) for n in lengths]
    for k, cap_id in enumerate(batch["caption_ids"]):
        np.testing.assert_array_equal(batch["query"][k, : lengths[k]].numpy(), data.query(cap_id))
    assert batch["query"].dtype == torch.float32 and batch["query_video"].dtype == torch.long


def test_dataloader_round_trip(tiny_tvr, make_config) -> None:
    data = open_dataset("tvr", tiny_tvr.root, make_config())
    batches = list(DataLoader(data.train_set(), batch_size=2, collate_fn=collate_train))
    assert len(batches) == 1 and len(batches[0]["caption_ids"]) == 5


def test_eval_split_videos_and_ground_truth(tiny_tvr, make_config) -> None:
    data = open_dataset("tvr", tiny_tvr.root, make_config())
    videos, queries = data.videos("test"), data.queries("test")
    assert videos.video_ids == ["house_s02e02_clip_02"]
    batch = collate_queries([queries[0], queries[1]])
    assert batch["query_video"].tolist() == [0, 0]
    assert batch["spans"] == [None, None]  # tvr ships no metadata
    vbatch = collate_videos([videos[0]])
    assert vbatch["video_ids"] == ["house_s02e02_clip_02"] and vbatch["frame_mask"].shape == (1, 16)


def test_spans_come_from_the_metadata_json(tiny_tvr, make_config) -> None:
    meta = {"fps": 1.0, "captions": {"house_s02e02_clip_02#enc#1": {"span": [3, 8.5]}}, "videos": {}}
    (tiny_tvr.collection / "TextData" / DATASETS["tvr"].meta).write_text(json.dumps(meta))
    queries = open_dataset("tvr", tiny_tvr.root, make_config()).queries("test")
    assert [queries[i]["span"] for i in range(2)] == [None, (3.0, 8.5)]


def test_cache_returns_the_same_arrays(tiny_tvr, make_config) -> None:
    data = open_dataset("tvr", tiny_tvr.root, make_config())
    assert data.video(TRAIN_VIDEOS[0]) is data.video(TRAIN_VIDEOS[0])
    uncached = open_dataset("tvr", tiny_tvr.root, make_config(), cache=False)
    assert uncached.video(TRAIN_VIDEOS[0]) is not uncached.video(TRAIN_VIDEOS[0])


# --- bad inputs -----------------------------------------------------------------------------------


def test_config_dims_must_match_the_files(tiny_tvr, make_config) -> None:
    data = open_dataset("tvr", tiny_tvr.root, make_config(video_feat_dim=3072))
    with pytest.raises(ShapeMismatchError, match="shape.txt"):
        data.video(TRAIN_VIDEOS[0])
    data = open_dataset("tvr", tiny_tvr.root, make_config(query_feat_dim=768))
    with pytest.raises(ShapeMismatchError, match="roberta_tvr_query_feat.hdf5"):
        data.query(f"{TRAIN_VIDEOS[0]}#enc#0")
    data = open_dataset(
        "tvr", tiny_tvr.root, make_config(video_source="patches", max_frames=12, patch_grid=7)
    )
    with pytest.raises(ShapeMismatchError, match=r"patch_tokens.hdf5:.*expected \[\*, 50, 6\]"):
        data.video(TRAIN_VIDEOS[0])


def test_missing_files_are_named(tiny_tvr, make_config) -> None:
    (tiny_tvr.collection / "TextData" / "tvrval.caption.txt").unlink()
    (tiny_tvr.collection / "TextData" / "roberta_tvr_query_feat.hdf5").unlink()
    data = open_dataset("tvr", tiny_tvr.root, make_config())
    with pytest.raises(InvalidInputError, match="tvrval.caption.txt: caption file not found"):
        data.videos("val")
    with pytest.raises(
        InvalidInputError, match="roberta_tvr_query_feat.hdf5: tokens query features not found"
    ):
        data.query(f"{TRAIN_VIDEOS[0]}#enc#0")
    with pytest.raises(InvalidInputError, match="collection folder"):
        open_dataset("charades", tiny_tvr.root, make_config())


def test_video_missing_from_the_feature_store(tiny_tvr, make_config) -> None:
    with open(tiny_tvr.collection / "TextData" / "tvrtest.caption.txt", "a") as f:
        f.write("unseen_video#enc#0 nobody\n")
    data = open_dataset("tvr", tiny_tvr.root, make_config())
    with pytest.raises(InvalidInputError, match="no entry for video 'unseen_video'"):
        data.videos("test")[1]


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"query_type": "words"}, "query_type"),
        ({"video_source": "mp4"}, "video_source"),
        ({"video_source": "patches"}, "max_frames"),
        ({"max_ctx_l": 0}, "max_ctx_l"),
    ],
)
def test_bad_config(tiny_tvr, make_config, overrides: dict, problem: str) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        open_dataset("tvr", tiny_tvr.root, make_config(**overrides))


def test_config_missing_fields_and_unknown_dataset(tiny_tvr, make_config) -> None:
    config = make_config()
    del config.max_desc_l
    with pytest.raises(InvalidInputError, match="max_desc_l"):
        open_dataset("tvr", tiny_tvr.root, config)
    with pytest.raises(InvalidInputError, match="unknown dataset 'tvr2'.*activitynet"):
        open_dataset("tvr2", tiny_tvr.root, make_config())
    with pytest.raises(InvalidInputError, match="no video features for video_source 'bigfile'"):
        (tiny_tvr.root / "msrvtt").mkdir()
        open_dataset("msrvtt", tiny_tvr.root, make_config()).video("x")


def test_empty_batches_are_rejected() -> None:
    for collate in (collate_train, collate_videos, collate_queries):
        with pytest.raises(InvalidInputError, match="empty batch"):
            collate([])
