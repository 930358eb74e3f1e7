"""A crafted or damaged index directory gives a typed error and never makes us read or write elsewhere.

Each case edits a saved index the way an attacker (or a flipped bit) would -- re-sealing the manifest's
own digest where an attacker could, since that digest is unkeyed -- and checks that loading, searching
and saving raise ``IndexFormatError`` naming the problem, and that files outside the index are untouched.
"""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from prvr_sdk.errors import PrvrError
from prvr_sdk.index import ExactIndex, IndexFormatError, store
from prvr_sdk.index.store import SegmentFiles, manifest_digest


@pytest.fixture
def built(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=12, seed=5)
    index = ExactIndex(32, ix.RULES["weighted"])
    index.add(**corpus.add_kwargs("weighted"))
    index.save(tmp_path / "idx")
    index.close()
    return tmp_path / "idx", corpus


def version_dir(root):
    return root / (root / "CURRENT").read_text().strip()


def edit_manifest(root, change, reseal=True):
    path = version_dir(root) / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    if reseal:
        manifest["manifest_sha256"] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


def rewrite_entry(root, segment_file, data: bytes):
    """Replace a segment file and fix its size/sha256 in the manifest, as a careful attacker would."""
    vdir = version_dir(root)
    (vdir / "seg-000001" / segment_file).write_bytes(data)

    def fix(m):
        m["segments"][0]["files"][segment_file] = {"bytes": len(data), "sha256": store.file_digest(
            vdir / "seg-000001" / segment_file)}

    edit_manifest(root, fix)


def snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_absolute_segment_name_cannot_read_another_index(ix, built, tmp_path):
    root, corpus = built
    other = ExactIndex(32, ix.RULES["weighted"])
    other.add(**ix.make_corpus(num_videos=12, seed=99).add_kwargs("weighted"))
    other.save(tmp_path / "other")
    foreign = version_dir(tmp_path / "other") / "seg-000001"
    edit_manifest(root, lambda m: m["segments"][0].update(name=str(foreign)))
    with pytest.raises(IndexFormatError, match="seg-NNNNNN"):
        ExactIndex.load(root)


@pytest.mark.parametrize("name", ["../idx2/seg-000001", "seg-000001/..", "..", "seg-1", "", 7, None])
def test_segment_names_outside_the_vocabulary_are_refused(built, name):
    root, _ = built
    edit_manifest(root, lambda m: m["segments"][0].update(name=name))
    with pytest.raises(IndexFormatError):
        ExactIndex.load(root)


@pytest.mark.parametrize("key", ["../../victim.txt", "/etc/hostname", "sub/ids.json", "ids.json/.."])
def test_file_keys_outside_the_vocabulary_are_refused_before_any_open(built, tmp_path, key):
    root, _ = built
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")

    def plant(m):
        m["segments"][0]["files"][key] = {"bytes": 8, "sha256": "0" * 64}

    edit_manifest(root, plant)
    before = snapshot(tmp_path)
    with pytest.raises(IndexFormatError, match="not one of"):
        ExactIndex.load(root, verify=True)
    assert victim.read_text() == "precious" and snapshot(tmp_path) == before


def test_symlinked_segment_file_leaving_the_folder_is_refused(built, tmp_path):
    root, _ = built
    seg = version_dir(root) / "seg-000001"
    outside = tmp_path / "outside.json"
    outside.write_bytes((seg / "ids.json").read_bytes())  # same size and hash: only the link is wrong
    (seg / "ids.json").unlink()
    os.symlink(outside, seg / "ids.json")
    with pytest.raises(IndexFormatError, match="link"):
        ExactIndex.load(root, verify=True)


def test_symlinked_segment_directory_is_refused(ix, built, tmp_path):
    root, _ = built
    other = ExactIndex(32, ix.RULES["weighted"])
    other.add(**ix.make_corpus(num_videos=12, seed=5).add_kwargs("weighted"))
    other.save(tmp_path / "other")
    seg = version_dir(root) / "seg-000001"
    os.rename(seg, tmp_path / "moved-away")
    os.symlink(version_dir(tmp_path / "other") / "seg-000001", seg)
    with pytest.raises(IndexFormatError, match="link"):
        ExactIndex.load(root)


def test_link_fallback_never_overwrites_an_existing_file(built, tmp_path, monkeypatch):
    root, _ = built
    seg = version_dir(root) / "seg-000001"
    files = json.loads((version_dir(root) / "manifest.json").read_text())["segments"][0]["files"]
    dst = tmp_path / "copy"
    dst.mkdir()
    planted = dst / "seg-000001"
    planted.mkdir()
    (planted / "ids.json").write_text("precious")

    def no_links(src, dst, **kwargs):
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(store.os, "link", no_links)
    with pytest.raises(FileExistsError):  # the segment directory must be new
        SegmentFiles.link(seg, planted, files)
    assert (planted / "ids.json").read_text() == "precious"
    fresh = dst / "seg-000002"
    SegmentFiles.link(seg, fresh, files)  # the copy path works where links are impossible
    assert {p.name for p in fresh.iterdir()} == set(files)
    assert all(store.file_digest(fresh / n) == e["sha256"] for n, e in files.items())


def test_a_save_through_a_planted_file_refuses_instead_of_overwriting(built, tmp_path, monkeypatch):
    root, _ = built
    index = ExactIndex.load(root)
    index.remove(["vid0003"])
    nxt = store.new_version_name(root)
    tmp = store.temp_dir(root, nxt)
    real_mkdir = type(tmp).mkdir

    def mkdir_then_plant(self, *args, **kwargs):  # a file appears in the new segment right after mkdir
        real_mkdir(self, *args, **kwargs)
        if self.parent == tmp:
            (self / store.IDS).write_text("planted")

    monkeypatch.setattr(type(tmp), "mkdir", mkdir_then_plant)
    with pytest.raises(FileExistsError):
        index.save()
    monkeypatch.undo()
    assert ExactIndex.load(root, verify=True).info()["version"] == "v000001"


def test_npy_header_declaring_huge_arrays_is_refused_before_allocating(built):
    root, _ = built
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (10**12,)})
    rewrite_entry(root, "offsets.npy", buf.getvalue() + b"\0" * 64)
    with pytest.raises(IndexFormatError, match=r"offsets.npy: header declares shape \(1000000000000,\)"):
        ExactIndex.load(root)


def test_object_dtype_and_wrong_dtype_headers_are_refused(built):
    root, _ = built
    import io

    buf = io.BytesIO()
    np.save(buf, np.arange(13, dtype=np.int32))  # offsets must be int64
    rewrite_entry(root, "offsets.npy", buf.getvalue())
    with pytest.raises(IndexFormatError, match="expected <i8"):
        ExactIndex.load(root)


@pytest.mark.parametrize("target", ["CURRENT", "manifest.json", "ids.json"])
def test_non_utf8_text_files_are_index_format_errors(built, target):
    root, _ = built
    if target == "CURRENT":
        (root / "CURRENT").write_bytes(b"v00\xff001\n")
    elif target == "manifest.json":
        path = version_dir(root) / "manifest.json"
        path.write_bytes(path.read_bytes().replace(b'"weighted"', b'"weigh\xffed"'))
    else:
        data = (version_dir(root) / "seg-000001" / "ids.json").read_bytes().replace(b"vid0000", b"vid\xff000")
        rewrite_entry(root, "ids.json", data)
    with pytest.raises(IndexFormatError, match="UTF-8|ASCII"):
        ExactIndex.load(root)


def test_deeply_nested_manifest_is_an_index_format_error(built):
    root, _ = built
    (version_dir(root) / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(IndexFormatError):
        ExactIndex.load(root)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("dim"),
        lambda m: m.pop("segments"),
        lambda m: m["segments"][0].pop("files"),
        lambda m: m["segments"][0]["files"].pop("clips.f16.npy"),
        lambda m: m["segments"][0]["files"].update({"ids.json": "not a dict"}),
        lambda m: m["segments"][0]["files"]["ids.json"].update(bytes="12"),
        lambda m: m.update(next_segment="x"),
        lambda m: m.update(format_version=0),
        lambda m: m["segments"].append(dict(m["segments"][0])),
        lambda m: m.update(scoring={"kind": "weighted", "clip_weight": "heavy", "frame_weight": 0.3}),
    ],
    ids=["no-dim", "no-segments", "no-files", "no-clips-entry", "entry-not-dict", "bytes-string",
         "next-segment", "format-0", "duplicate-segment", "bad-weight"],
)
def test_malformed_manifests_are_index_format_errors(built, change):
    root, _ = built
    edit_manifest(root, change)
    with pytest.raises(IndexFormatError):
        ExactIndex.load(root)


def test_an_edited_manifest_is_caught_by_its_digest(built):
    root, _ = built
    edit_manifest(root, lambda m: m.update(model="someone-else"), reseal=False)
    with pytest.raises(IndexFormatError, match="modified"):
        ExactIndex.load(root)


def test_broken_metadata_lines_are_index_format_errors_at_search_time(built):
    root, corpus = built
    seg = version_dir(root) / "seg-000001"
    lines = (seg / "metadata.jsonl").read_bytes().split(b"\n")
    for bad, pattern in [(b"{not json", "line 3: not valid JSON"), (b'{"a": "\xff"}', "line 3: not UTF-8"),
                         (b"[1, 2]", "line 3: expected a JSON object"), (b"[" * 50_000, "line 3")]:
        rewrite_entry(root, "metadata.jsonl", b"\n".join(lines[:2] + [bad] + lines[3:]))
        index = ExactIndex.load(root)
        with pytest.raises(IndexFormatError, match=pattern):
            index.search(corpus.queries, top_k=12)  # every video is a hit: its metadata is read
        with pytest.raises(IndexFormatError, match=pattern):
            ExactIndex.load(root).search(corpus.queries[:1], top_k=1, filter={"split": "test"})


def test_a_flipped_byte_in_the_clip_matrix_is_found_by_verify(built):
    root, _ = built
    path = version_dir(root) / "seg-000001" / "clips.f16.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    ExactIndex.load(root)  # sizes and headers are fine: the cheap load does not read every byte
    with pytest.raises(IndexFormatError, match=r"clips\.f16\.npy: sha256 differs"):
        ExactIndex.verify(root)
    with pytest.raises(IndexFormatError, match="sha256"):
        ExactIndex.load(root, verify=True)


def test_verify_reports_a_healthy_index(built):
    root, corpus = built
    report = ExactIndex.verify(root)
    assert report["ok"] and report["videos"] == 12 and report["segments"] == 1
    assert report["files"] == 6 and report["manifest_sealed"]
    assert report["bytes"] == sum(p.stat().st_size for p in (version_dir(root) / "seg-000001").iterdir())


def test_truncated_header_files_are_typed(built):
    root, _ = built
    path = version_dir(root) / "seg-000001" / "spans.npy"
    rewrite_entry(root, "spans.npy", path.read_bytes()[:40])
    with pytest.raises(IndexFormatError, match="spans.npy"):
        ExactIndex.load(root)


def test_loading_never_writes(built):
    root, corpus = built
    before = snapshot(root)
    index = ExactIndex.load(root, verify=True)
    index.search(corpus.queries, top_k=5, filter={"split": "test"})
    ExactIndex.verify(root)
    index.close()
    assert snapshot(root) == before


def test_every_error_is_a_prvr_error(built):
    """The classes above are what the CLI maps to exit codes; a plain OSError would print a traceback."""
    root, _ = built
    (root / "CURRENT").write_bytes(b"x" * 10_000)
    with pytest.raises(PrvrError):
        ExactIndex.load(root)
