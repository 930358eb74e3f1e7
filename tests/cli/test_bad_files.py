"""Hostile or corrupt user files through the CLI: exit code 2 with a message naming the file (and line,
video or limit) and the flag to use -- never a traceback, never exit 1, never gigabytes of memory.

Oracle: the exit-code contract in prvr_sdk.errors (InvalidInputError -> 2) and the file the test wrote.
Bundles: the session's demo AMDNet bundle with a text front end (tests/conftest.py ``frontend_bundle``).
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
h5py = pytest.importorskip("h5py")

from prvr_cli.app import app  # noqa: E402

runner = CliRunner()


def _run(args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += f"\nTraceback: {result.exception!r}"
    return result.exit_code, " ".join(output.split())  # rich wraps long lines


def _refused(args, *words: str) -> str:
    code, output = _run(args)
    assert code == 2, output
    assert "Traceback" not in output, output
    for word in words:
        assert word in output, (word, output)
    return output


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    videos = {f"vid{i}": rng.standard_normal((n, 128)).astype(np.float32) for i, n in enumerate([8, 20, 5])}
    np.savez(root / "feats.npz", **videos)
    return root, videos


@pytest.fixture(scope="module")
def index(frontend_bundle, files):
    root, _ = files
    out = root / "index"
    code, output = _run(["index", "build", "--bundle", frontend_bundle, "--features", root / "feats.npz",
                         "--out", out])
    assert code == 0, output
    return out


# --- size limits ------------------------------------------------------------------------------------


def _h5_bomb(path):
    with h5py.File(path, "w") as f:  # ~KBs on disk, 9.5 GiB and 10M frames declared
        f.create_dataset("bomb", shape=(10**7, 256), dtype="f4", chunks=(64, 256), compression="gzip",
                         fillvalue=1.0)
    return path


def test_encode_refuses_an_hdf5_declaring_gigabytes(frontend_bundle, tmp_path):
    bomb = _h5_bomb(tmp_path / "bomb.h5")
    _refused(["encode", "--bundle", frontend_bundle, "--features", bomb, "--out", tmp_path / "e.npz"],
             "bomb.h5", "bomb", "100000", "--max-frames")


def test_encode_max_frames_and_max_bytes_flags(frontend_bundle, files, tmp_path):
    root, _ = files
    feats = root / "feats.npz"
    _refused(["encode", "--bundle", frontend_bundle, "--features", feats, "--out", tmp_path / "e.npz",
              "--max-frames", "10"], "feats.npz", "vid1", "20 frames", "--max-frames")
    _refused(["encode", "--bundle", frontend_bundle, "--features", feats, "--out", tmp_path / "e.npz",
              "--max-bytes", "4096"], "feats.npz", "vid1", "10.0 KiB", "--max-bytes")
    code, output = _run(["encode", "--bundle", frontend_bundle, "--features", feats, "--out",
                         tmp_path / "e.npz", "--max-frames", "20", "--max-bytes", str(20 * 128 * 4)])
    assert code == 0, output


def test_index_build_refuses_a_zip_bomb_member(tmp_path):
    bomb = tmp_path / "bomb.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (90_000, 8_192)}  # 2.75 GiB declared
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("v.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            member.write(b"\0" * (1 << 20))
    # the limits apply when the features are opened, before the bundle is even looked at
    _refused(["index", "build", "--bundle", tmp_path / "no-bundle", "--features", bomb, "--out",
              tmp_path / "idx"], "bomb.npz", "--max-bytes")


def test_index_build_flags(frontend_bundle, files, tmp_path):
    root, _ = files
    _refused(["index", "build", "--bundle", frontend_bundle, "--features", root / "feats.npz", "--out",
              tmp_path / "idx", "--max-frames", "6"], "vid0", "--max-frames")
    _refused(["index", "build", "--bundle", frontend_bundle, "--features", root / "feats.npz", "--out",
              tmp_path / "idx", "--max-bytes", "1000"], "--max-bytes")


# --- corrupt metadata -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("meta.jsonl", b'{"video_id": "vid0"}\n{"video_id": "vid1", "t": "caf\xe9"}\n',
         ["meta.jsonl:2", "not UTF-8", "0xe9"]),
        ("meta.jsonl", b'{"video_id": "vid0"}\n\n{"video_id": vid1}\n', ["meta.jsonl:3", "not valid JSON"]),
        ("meta.jsonl", b"[" * 100_000 + b"\n", ["meta.jsonl:1", "nested too deeply"]),
        ("meta.json", b"[" * 100_000, ["meta.json", "nested too deeply"]),
        ("meta.json", b'"just a string"', ["meta.json", "expected a JSON object"]),
    ],
)
def test_index_build_refuses_corrupt_metadata(tmp_path, files, name, content, words):
    root, _ = files
    meta = tmp_path / name
    meta.write_bytes(content)
    _refused(["index", "build", "--bundle", tmp_path / "no-bundle", "--features", root / "feats.npz",
              "--metadata", meta, "--out", tmp_path / "idx"], "--metadata", *words)


def test_index_build_refuses_embeddings_without_ids(frontend_bundle, tmp_path):
    bad = tmp_path / "emb.npz"
    np.savez(bad, format=np.array(1), offsets=np.array([0, 1]), clip_emb=np.ones((1, 4), np.float32))
    _refused(["index", "build", "--bundle", frontend_bundle, "--embeddings", bad, "--out",
              tmp_path / "idx"], "emb.npz", "lacks", "ids")


# --- search inputs and outputs ----------------------------------------------------------------------


def test_search_refuses_a_non_utf8_queries_file(index, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_bytes(b"a person walks\n\xff\xfe dog\n")
    _refused(["search", "--index", index, "--queries", queries], "--queries", "q.txt:2", "not UTF-8")


def test_search_refuses_object_query_features(index, tmp_path):
    feats = tmp_path / "qf.npy"
    np.save(feats, np.array([1.0, None], dtype=object), allow_pickle=True)
    _refused(["search", "--index", index, "--query-features", feats], "--query-features", "qf.npy",
             "objects")


@pytest.mark.parametrize("where", ["parent_is_file", "proc", "directory"])
def test_search_and_encode_refuse_an_unwritable_out(index, frontend_bundle, files, tmp_path, where):
    root, _ = files
    queries = tmp_path / "q.txt"
    queries.write_text("a person walks\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    out = {"parent_is_file": blocker / "hits.jsonl", "proc": "/proc/x.jsonl", "directory": tmp_path}[where]
    _refused(["search", "--index", index, "--queries", queries, "--out", out], "--out", str(out))
    if where != "directory":  # a directory is a valid encode --out (embeddings.npz inside)
        out_npz = str(out).replace(".jsonl", ".npz")
        _refused(["encode", "--bundle", frontend_bundle, "--features", root / "feats.npz", "--out",
                  out_npz], "--out", out_npz)


def test_search_writes_to_a_good_out(index, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("a person walks\n")
    out = tmp_path / "new" / "hits.jsonl"
    code, output = _run(["search", "--index", index, "--queries", queries, "--out", out, "--top-k", "2"])
    assert code == 0, output
    assert len([json.loads(line) for line in out.read_text().splitlines()]) == 2
