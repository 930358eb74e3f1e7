"""Saving and loading: round trips, versions, compaction, hard links, expectations, corruption, conflicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prvr_sdk.errors import IndexMismatchError, InvalidInputError
from prvr_sdk.index import ExactIndex, IndexConflictError, IndexFormatError, IndexLockedError

BUNDLE = "ab" * 32
OTHER = "cd" * 32


def same_results(a, b, queries, **kw):
    ra, rb = a.search(queries, **kw), b.search(queries, **kw)
    for ha, hb in zip(ra, rb, strict=True):
        assert [(h.video_id, h.clip_index, h.start, h.end, h.metadata) for h in ha] == [
            (h.video_id, h.clip_index, h.start, h.end, h.metadata) for h in hb
        ]
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["max_clip", "weighted", "video"])
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(ix, tmp_path, kind, mmap):
    corpus = ix.make_corpus(num_videos=30, seed=21)
    index = ExactIndex(32, ix.RULES[kind], bundle_sha256=BUNDLE, model="m", bundle_path="/b/amdnet")
    index.add(**corpus.add_kwargs(kind))
    before = index.search(corpus.queries, top_k=7)
    assert index.save(tmp_path / "idx") == (tmp_path / "idx").absolute()
    loaded = ExactIndex.load(
        tmp_path / "idx", mmap=mmap, bundle_sha256=BUNDLE, model="m", dim=32, verify=True
    )
    assert len(loaded) == 30 and loaded.scoring == index.scoring and loaded.bundle_sha256 == BUNDLE
    assert loaded.bundle_path == "/b/amdnet" == loaded.info()["bundle_path"]
    if kind != "video":
        assert isinstance(loaded._segments[0].clips, np.memmap) == mmap
    same_results(loaded, index, corpus.queries, top_k=7)
    assert [[h.video_id for h in hits] for hits in before] == [
        [h.video_id for h in hits] for hits in loaded.search(corpus.queries, top_k=7)
    ]
    index.close()


def test_layout_versions_links_and_gc(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=30, seed=22)
    root = tmp_path / "idx"
    index = ExactIndex(32, "max_clip")
    index.add(**corpus.add_kwargs("max_clip", slice(0, 10)))
    index.save(root)
    assert (root / "CURRENT").read_text().strip() == "v000001"
    seg1 = root / "v000001" / "seg-000001"
    assert {p.name for p in seg1.iterdir()} == {
        "clips.f16.npy",
        "offsets.npy",
        "spans.npy",
        "ids.json",
        "metadata.jsonl",
    }
    inode = (seg1 / "clips.f16.npy").stat().st_ino
    index.add(**corpus.add_kwargs("max_clip", slice(10, 20)))
    index.save()
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("v")) == [
        "v000002"
    ]  # old version collected
    assert (root / "v000002" / "seg-000001" / "clips.f16.npy").stat().st_ino == inode  # unchanged: hard link
    manifest = json.loads((root / "v000002" / "manifest.json").read_text())
    assert manifest["previous"] == "v000001" and manifest["counts"] == {
        "videos": 20,
        "clips": manifest["counts"]["clips"],
        "segments": 2,
    }
    assert manifest["segments"][0]["files"]["clips.f16.npy"]["sha256"]
    index.remove(["vid0002"])  # compaction rewrites segment 1 only
    index.add(**corpus.add_kwargs("max_clip", slice(20, 30)))
    index.save()
    names = [e["name"] for e in json.loads((root / "v000003" / "manifest.json").read_text())["segments"]]
    assert names == ["seg-000003", "seg-000002", "seg-000004"]
    assert index.ids() == [v for v in corpus.ids if v != "vid0002"]
    index.save()  # unchanged: no new version
    assert (root / "CURRENT").read_text().strip() == "v000003"
    index.save(merge=True)
    assert ExactIndex.load(root).info()["segments"] == 1
    assert ExactIndex.load(root).ids() == index.ids()
    index.close()


def test_save_as_rebinds_and_copies(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=10, seed=23)
    index = ExactIndex(32, "max_clip")
    index.add(**corpus.add_kwargs("max_clip"))
    index.save(tmp_path / "a")
    index.save(tmp_path / "b")
    assert index.path == (tmp_path / "b").absolute()
    same_results(ExactIndex.load(tmp_path / "a"), ExactIndex.load(tmp_path / "b"), corpus.queries, top_k=4)
    with pytest.raises(InvalidInputError, match="never saved"):
        ExactIndex(32, "max_clip").save()


def test_expectations_are_checked_at_load(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=5, seed=24)
    index = ExactIndex(32, "max_clip", bundle_sha256=BUNDLE, model="amdnet-tvr")
    index.add(**corpus.add_kwargs("max_clip"))
    index.save(tmp_path / "idx")
    with pytest.raises(IndexMismatchError) as err:
        ExactIndex.load(tmp_path / "idx", bundle_sha256=OTHER)
    assert BUNDLE in str(err.value) and OTHER in str(err.value)
    with pytest.raises(IndexMismatchError, match="64"):
        ExactIndex.load(tmp_path / "idx", dim=64)
    with pytest.raises(IndexMismatchError, match="muse"):
        ExactIndex.load(tmp_path / "idx", model="muse-msrvtt")
    plain = ExactIndex(32, "max_clip")
    plain.add(**corpus.add_kwargs("max_clip"))
    plain.save(tmp_path / "plain")
    with pytest.raises(IndexMismatchError, match="without a bundle hash"):
        ExactIndex.load(tmp_path / "plain", bundle_sha256=BUNDLE)


def test_damaged_files_are_reported(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=8, seed=25)
    index = ExactIndex(32, "weighted")
    index.add(**corpus.add_kwargs("weighted"))
    index.save(tmp_path / "idx")
    seg = tmp_path / "idx" / "v000001" / "seg-000001"
    data = bytearray((seg / "clips.f16.npy").read_bytes())
    data[-1] ^= 0xFF
    (seg / "clips.f16.npy").unlink()  # break the hard link before editing (never edit a version in place)
    (seg / "clips.f16.npy").write_bytes(bytes(data))
    ExactIndex.load(tmp_path / "idx")  # sizes still match: only verify=True reads every byte
    with pytest.raises(IndexFormatError, match="sha256"):
        ExactIndex.load(tmp_path / "idx", verify=True)
    (seg / "video_vecs.f16.npy").write_bytes(b"short")
    with pytest.raises(IndexFormatError, match="truncated"):
        ExactIndex.load(tmp_path / "idx")
    (seg / "ids.json").unlink()
    with pytest.raises(IndexFormatError, match="missing"):
        ExactIndex.load(tmp_path / "idx")


def test_not_an_index(tmp_path):
    with pytest.raises(IndexFormatError, match="does not exist"):
        ExactIndex.load(tmp_path / "nothing")
    with pytest.raises(IndexFormatError, match="CURRENT is missing"):
        ExactIndex.load(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    index = ExactIndex(4, "video")
    index.add(["a"], video_embs=np.eye(4, dtype=np.float32)[:1])
    with pytest.raises(IndexFormatError, match="holds other files"):
        index.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_saving_over_another_index_needs_overwrite(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=6, seed=26)
    first, second = ExactIndex(32, "max_clip"), ExactIndex(32, "max_clip")
    first.add(**corpus.add_kwargs("max_clip", slice(0, 3)))
    second.add(**corpus.add_kwargs("max_clip", slice(3, 6)))
    first.save(tmp_path / "idx")
    with pytest.raises(IndexConflictError, match="overwrite=True"):
        second.save(tmp_path / "idx")
    second.save(tmp_path / "idx", overwrite=True)
    assert ExactIndex.load(tmp_path / "idx").ids() == corpus.ids[3:6]


def test_a_stale_copy_cannot_overwrite_newer_changes(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=6, seed=27)
    base = ExactIndex(32, "max_clip")
    base.add(**corpus.add_kwargs("max_clip", slice(0, 2)))
    base.save(tmp_path / "idx")
    a, b = ExactIndex.load(tmp_path / "idx"), ExactIndex.load(tmp_path / "idx")
    b.add(**corpus.add_kwargs("max_clip", slice(2, 4)))
    b.save()
    with pytest.raises(IndexConflictError, match="changed on disk"):
        a.add(**corpus.add_kwargs("max_clip", slice(4, 6)))
    assert len(a) == 2  # nothing was added
    with pytest.raises(IndexConflictError, match="another writer committed"):
        base.save()  # base still believes v000001 is current
    assert ExactIndex.load(tmp_path / "idx").ids() == corpus.ids[:4]


def test_one_writer_per_directory_within_a_process(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=6, seed=28)
    base = ExactIndex(32, "max_clip")
    base.add(**corpus.add_kwargs("max_clip", slice(0, 2)))
    base.save(tmp_path / "idx")
    a, b = ExactIndex.load(tmp_path / "idx"), ExactIndex.load(tmp_path / "idx")
    a.add(**corpus.add_kwargs("max_clip", slice(2, 4)))  # a now holds the lock until it saves
    assert (tmp_path / "idx" / "LOCK").exists()
    with pytest.raises(IndexLockedError, match="held by this process") as err:
        b.remove(["vid0000"])
    assert str(tmp_path / "idx" / "LOCK") in str(err.value)
    assert len(b) == 2
    a.search(corpus.queries, top_k=2)
    b.search(corpus.queries, top_k=2)  # readers never lock
    a.save()
    assert not (tmp_path / "idx" / "LOCK").exists()
    with ExactIndex.load(tmp_path / "idx") as c:
        c.remove(["vid0000"])
        assert (tmp_path / "idx" / "LOCK").exists()
    assert not (tmp_path / "idx" / "LOCK").exists()  # close() released it; the change stays unsaved


@pytest.mark.parametrize("kind", ["weighted", "video"])
def test_float32_load_gives_the_same_results_and_saves_float16(ix, tmp_path, kind):
    corpus = ix.make_corpus(num_videos=20, seed=29)
    index = ExactIndex(32, ix.RULES[kind])
    index.add(**corpus.add_kwargs(kind))
    index.save(tmp_path / "idx")
    fast = ExactIndex.load(tmp_path / "idx", float32=True)
    assert fast.info()["float32"] and fast._segments[0].video_emb.dtype == np.float32
    same_results(fast, ExactIndex.load(tmp_path / "idx"), corpus.queries, top_k=6)
    fast.remove(["vid0004"])  # compaction writes float16 from the float32 copy, exactly
    fast.save()
    again = ExactIndex.load(tmp_path / "idx", verify=True)
    assert again._segments[0].video_emb.dtype == np.float16
    np.testing.assert_array_equal(
        again._segments[0].video_emb, np.delete(corpus.video, 4, axis=0).astype(np.float16)
    )
    fast.close()
    index.close()


def test_a_reader_keeps_its_snapshot_after_a_writer_collects_it(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=12, seed=30)
    writer = ExactIndex(32, "weighted")
    writer.add(**corpus.add_kwargs("weighted", slice(0, 8)))
    writer.save(tmp_path / "idx")
    reader = ExactIndex.load(tmp_path / "idx")
    before = reader.search(corpus.queries, top_k=5)
    writer.add(**corpus.add_kwargs("weighted", slice(8, 12)))
    writer.remove(["vid0001"])
    writer.save()  # commits v000002 and deletes v000001, which the reader still maps
    assert not (tmp_path / "idx" / "v000001").exists()
    assert reader.search(corpus.queries, top_k=5) == before  # metadata included
    reader.save(tmp_path / "copy")  # its segment files are gone: written from the mapped data instead
    copy = ExactIndex.load(tmp_path / "copy", verify=True)
    assert copy.ids() == corpus.ids[:8]
    assert copy.search(corpus.queries, top_k=5) == before
    writer.close()
