"""`prvr encode --engine ray` on a 2-CPU local Ray cluster, and the sharded-embeddings folder it writes.

Oracle: the single-process `prvr encode` (engine local) run on each feature shard; its own equality with
the torch model is tested in tests/sdk/test_golden.py on the same golden bundle. One Ray cluster serves
the whole module (start-up costs seconds); the folder format's checks run without Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
ray = pytest.importorskip("ray")
h5py = pytest.importorskip("h5py")

from prvr_cli.app import app  # noqa: E402
from prvr_sdk import Retriever, VideoEmbeddings  # noqa: E402
from prvr_sdk.errors import IndexMismatchError, InvalidInputError  # noqa: E402
from prvr_sdk.index import ExactIndex  # noqa: E402
from prvr_sdk.scale.ray_encode import ShardEncoder, _rebuild  # noqa: E402
from prvr_sdk.scale.shards import (  # noqa: E402
    MANIFEST,
    EmbeddingSpace,
    ShardWriter,
    encode_shard,
    load_sharded,
    shard_name,
)
from prvr_sdk.sources import open_features  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
BUNDLE = GOLDEN / "mamfusion" / "bundle"  # clip and video vectors: both arrays go through the folder
OTHER = GOLDEN / "amdnet" / "bundle"
runner = CliRunner()


def _ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _videos(rng, prefix: str, n: int) -> dict[str, np.ndarray]:
    return {f"{prefix}{i}": rng.standard_normal((int(rng.integers(1, 40)), 32)).astype(np.float32)
            for i in range(n)}


def _write_shards(root: Path) -> list[Path]:
    """One shard per reader: .npz, .h5, a folder of .npy, a BigFile folder."""
    rng = np.random.default_rng(0)
    np.savez(root / "a.npz", **_videos(rng, "a", 5))
    with h5py.File(root / "b.h5", "w") as f:
        for k, v in _videos(rng, "b", 4).items():
            f.create_dataset(k, data=v)
    (root / "c").mkdir()
    for k, v in _videos(rng, "c", 3).items():
        np.save(root / "c" / f"{k}.npy", v)
    big = root / "d"
    big.mkdir()
    videos = _videos(rng, "d", 3)
    rows = np.concatenate(list(videos.values()))
    rows.astype("<f4").tofile(big / "feature.bin")
    (big / "shape.txt").write_text(f"{len(rows)} 32")
    (big / "id.txt").write_text(" ".join(f"r{i}" for i in range(len(rows))))
    frames, start = {}, 0
    for k, v in videos.items():
        frames[k] = [f"r{i}" for i in range(start, start + len(v))]
        start += len(v)
    (big / "video2frames.txt").write_text(repr(frames))
    return [root / "a.npz", root / "b.h5", root / "c", big]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def encoded(cluster, tmp_path_factory):
    """The shards, the folder written by 2 Ray workers, its summary, and the local encoder's files."""
    root = tmp_path_factory.mktemp("ray")
    shards = _write_shards(root)
    out = _ok(["encode", "--engine", "ray", "--workers", "2", "--bundle", BUNDLE, "--fps", "2",
               "--batch-size", "3", "--features", *shards, "--out", root / "out", "--json"])
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    local = []
    for i, shard in enumerate(shards):
        _ok(["encode", "--bundle", BUNDLE, "--fps", "2", "--batch-size", "3", "--features", shard,
             "--out", root / f"local{i}.npz"])
        local.append(VideoEmbeddings.load(root / f"local{i}.npz"))
    return root, shards, root / "out", summary, local


def _assert_same(got: VideoEmbeddings, want: VideoEmbeddings) -> None:
    assert got.ids == want.ids and got.model == want.model and got.bundle_sha256 == want.bundle_sha256
    np.testing.assert_array_equal(got.offsets, want.offsets)
    for name in ("clip_emb", "video_emb", "spans", "durations"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got.num_frames, want.num_frames)


def test_ray_output_equals_the_single_process_encoder(encoded):
    root, shards, out, summary, local = encoded
    assert summary["workers"] == 2 and summary["encoded"] == 4 and summary["skipped"] == 0
    assert summary["videos"] == 15 == sum(len(e) for e in local)
    manifest = json.loads((out / MANIFEST).read_text())
    assert [e["source"] for e in manifest["shards"]] == [str(s.resolve()) for s in shards]
    for entry, want in zip(manifest["shards"], local, strict=True):  # file by file
        _assert_same(VideoEmbeddings.load(out / entry["file"]), want)
    _assert_same(VideoEmbeddings.load(out), VideoEmbeddings.concat(local))  # the folder as one


def test_manifest_records_each_shard(encoded):
    root, shards, out, summary, local = encoded
    manifest = json.loads((out / MANIFEST).read_text())
    r = Retriever.from_bundle(BUNDLE, device="cpu")
    assert manifest["bundle_sha256"] == r.bundle_sha256 == local[0].bundle_sha256
    assert manifest["bundle_manifest_sha256"] == r.manifest["manifest_sha256"]
    assert (manifest["model"], manifest["dim"], manifest["precision"]) == ("mamfusion", 32, "fp32")
    listed = [MANIFEST, *(e["file"] for e in manifest["shards"])]
    assert sorted(p.name for p in out.iterdir()) == sorted(listed)
    for entry, shard, want in zip(manifest["shards"], shards, local, strict=True):
        data = (out / entry["file"]).read_bytes()
        assert entry["done"] and entry["file"] == shard_name(shard.resolve())
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        assert entry["videos"] == len(want) and entry["clips"] == len(want.clip_emb)


def test_resume_skips_intact_shards_and_rewrites_a_corrupted_one(encoded, tmp_path):
    root, shards, out, _, local = encoded
    work = tmp_path / "out"
    shutil.copytree(out, work)  # copy2: mtimes kept
    files = [e["file"] for e in json.loads((work / MANIFEST).read_text())["shards"]]
    before = {f: (work / f).stat().st_mtime_ns for f in files}
    original = (work / files[1]).read_bytes()
    broken = bytearray(original)
    broken[len(broken) // 2] ^= 0xFF  # same size, other sha256
    (work / files[1]).write_bytes(bytes(broken))
    with pytest.raises(InvalidInputError, match="sha256"):
        VideoEmbeddings.load(work)
    args = ["encode", "--engine", "ray", "--bundle", BUNDLE, "--fps", "2", "--batch-size", "3", "--features",
            *shards, "--out", work, "--json"]
    summary = json.loads(_ok(args).stdout.strip().splitlines()[-1])
    assert (summary["encoded"], summary["skipped"], summary["videos"]) == (1, 3, 15)
    assert (work / files[1]).read_bytes() == original  # rewritten, byte for byte
    for f in files[:1] + files[2:]:
        assert (work / f).stat().st_mtime_ns == before[f]  # untouched
    _assert_same(VideoEmbeddings.load(work), VideoEmbeddings.concat(local))
    again = json.loads(_ok(args).stdout.strip().splitlines()[-1])  # nothing left: no worker starts
    assert (again["encoded"], again["skipped"], again["workers"]) == (0, 4, 0)


def test_another_bundle_is_refused(encoded, tmp_path):
    root, shards, out, _, _ = encoded
    work = tmp_path / "out"
    shutil.copytree(out, work)
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    result = runner.invoke(app, ["encode", "--engine", "ray", "--bundle", str(OTHER), "--features",
                                 str(shards[0]), "--out", str(work)])
    assert result.exit_code == 6 and "another --out" in result.output
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before


def test_index_add_takes_the_folder(encoded, tmp_path):
    root, shards, out, _, local = encoded
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "first.npz", **_videos(rng, "z", 3))
    idx = tmp_path / "idx"
    _ok(["index", "build", "--bundle", BUNDLE, "--fps", "2", "--features", tmp_path / "first.npz",
         "--out", idx])
    info = json.loads(_ok(["index", "add", "--index", idx, "--embeddings", out, "--json"]).stdout.strip()
                      .splitlines()[-1])
    assert info["videos"] == 3 + 15
    # oracle: the same videos added in process from the single-process encoder's files
    r = Retriever.from_bundle(BUNDLE, device="cpu")
    with open_features(tmp_path / "first.npz") as first:
        r.add(r.encode_video(first, fps=2.0))
    r.add(VideoEmbeddings.concat(local))
    queries = rng.standard_normal((2, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = ExactIndex.load(idx)
    for got, want in zip(index.search(queries, top_k=18), r.index.search(queries, top_k=18), strict=True):
        assert len(got) == 18
        assert [(h.video_id, h.clip_index) for h in got] == [(h.video_id, h.clip_index) for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=0, atol=1e-6)
    index.close()


def test_worker_errors_come_back_typed(tmp_path):
    """The actor class in this process (Ray only carries its rows): a shard with NaN frames, and a worker
    that finds another bundle than the driver checked, come back as the typed errors of the local path."""
    bad = {"x0": np.ones((3, 32), np.float32), "x1": np.full((2, 32), np.nan, np.float32)}
    np.savez(tmp_path / "bad.npz", **bad)
    config = {"fps": None, "batch_size": 4, "backend": "auto", "device": "cpu", "precision": "fp32",
              "max_frames": None, "max_bytes": None}
    space = asdict(EmbeddingSpace.of(Retriever.from_bundle(BUNDLE, device="cpu")))
    batch = {"index": np.array([0]), "source": np.array([str(tmp_path / "bad.npz")], dtype=object)}
    row = ShardEncoder(str(BUNDLE), config, space)(batch)
    assert row["error_type"].tolist() == ["InvalidInputError"] and row["data"].tolist() == [b""]
    error = _rebuild(row["error_type"][0], row["error_args"][0])
    assert type(error) is InvalidInputError and "NaN" in str(error) and "x1" in str(error)
    with pytest.raises(InvalidInputError) as local:  # the single-process encoder's message, word for word
        encode_shard(Retriever.from_bundle(BUNDLE, device="cpu"), tmp_path / "bad.npz", batch_size=4)
    assert str(error) == str(local.value)
    row = ShardEncoder(str(OTHER), config, space)(batch)
    assert row["error_type"].tolist() == ["IndexMismatchError"]
    assert type(_rebuild(row["error_type"][0], row["error_args"][0])) is IndexMismatchError


# --- the folder format, without Ray -------------------------------------------------------------------

SPACE = EmbeddingSpace("a" * 64, "b" * 64, "mamfusion", "fp32", 32)


def _emb(ids, bundle="a" * 64) -> VideoEmbeddings:
    n = len(ids)
    v = np.eye(n, 32, dtype=np.float32)
    return VideoEmbeddings(ids=list(ids), clip_emb=v, offsets=np.arange(n + 1, dtype=np.int64),
                           spans=np.zeros((n, 2)), video_emb=v, durations=np.ones(n),
                           num_frames=np.ones(n, np.int64), model="mamfusion", bundle_sha256=bundle)


def _bytes(emb: VideoEmbeddings, tmp: Path) -> bytes:
    return emb.save(tmp / "tmp.npz").read_bytes()


def test_folder_checks(tmp_path):
    src = [tmp_path / "s1.npz", tmp_path / "s2.npz"]
    for s in src:
        s.write_bytes(b"x")
    out = tmp_path / "out"
    w = ShardWriter(out, SPACE, src)
    assert w.todo == [s.resolve() for s in src]
    w.write(w.todo[0], _bytes(_emb(["v1", "v2"]), tmp_path), 2, 2)
    w.close()
    with pytest.raises(InvalidInputError, match="unfinished, 1 of 2"):
        load_sharded(out)
    w = ShardWriter(out, SPACE, src)
    assert w.skipped == [src[0].resolve()] and w.todo == [src[1].resolve()]
    w.write(w.todo[0], _bytes(_emb(["v2"]), tmp_path), 1, 1)
    w.close()
    with pytest.raises(InvalidInputError, match="'v2' is in two shards"):
        load_sharded(out)
    src[0].write_bytes(b"changed")  # a changed source is encoded again
    assert ShardWriter(out, SPACE, src).todo == [src[0].resolve()]

    other = tmp_path / "other"  # a file this run would replace, written by another bundle
    w = ShardWriter(other, SPACE, src[:1])
    _emb(["v1"], bundle="c" * 64).save(other / w.entries[str(src[0].resolve())]["file"])
    with pytest.raises(IndexMismatchError, match="another --out"):
        ShardWriter(other, SPACE, src[:1])

    manifest = json.loads((out / MANIFEST).read_text())
    manifest["shards"][0]["file"] = "../escape.npz"
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InvalidInputError, match="plain"):
        load_sharded(out)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not empty"):
        ShardWriter(stray, SPACE, src)


def test_import_is_lazy_and_missing_ray_names_the_extra():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ImportError("No module named 'ray' (blocked)")
        sys.meta_path.insert(0, Block())
        import prvr_sdk.scale.ray_encode as m
        from prvr_sdk import VideoEmbeddings
        assert "ray" not in sys.modules
        try:
            m.encode_with_ray("b", ["x"], "o")
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("BackendUnavailableError") and "prvr-sdk[ray]" in out.stdout
