"""Tests for sdk/prvr_sdk/data/check.py (``check_collection``) and the messages of the collection readers, on
tiny collections in the official MS-SL layouts (official_layout.py). Expected problems are derived by hand
from what each test breaks."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from prvr_sdk.data import open_collection, read_captions
from prvr_sdk.data.check import MAX_EXAMPLES, Problem, check_collection, check_error_message
from prvr_sdk.errors import InvalidInputError

h5py = pytest.importorskip("h5py")


def _load(path: Path):  # tests run with --import-mode=importlib: a helper module is loaded by path
    name = "prvr_tests_official_layout"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


_layout = _load(Path(__file__).with_name("official_layout.py"))
tiny_config, write_collection, write_h5 = _layout.tiny_config, _layout.write_collection, _layout.write_h5

CONFIGS = {"mamfusion": tiny_config("mamfusion"), "amdnet": tiny_config("amdnet")}
BOTH = ("mamfusion", "amdnet")


def _rows(report) -> set[tuple]:
    return {(p.file, p.problem, p.count, p.examples, p.severity, p.fix, p.models) for p in report.problems}


def test_clean_collection_has_no_problems_and_lists_what_it_read(tmp_path: Path) -> None:
    write_collection(tmp_path)
    report = check_collection("charades", tmp_path, CONFIGS)
    assert report.ok and report.problems == [] and report.fixes() == []
    c = "charades/"
    assert report.files == [
        c + "TextData/charadestrain.caption.txt", c + "TextData/charadesval.caption.txt",
        c + "TextData/charadestest.caption.txt", c + "TextData/roberta_charades_query_feat.hdf5",
        c + "FeatureData/i3d_rgb_lgi/shape.txt", c + "FeatureData/i3d_rgb_lgi/feature.bin",
        c + "FeatureData/i3d_rgb_lgi/id.txt", c + "FeatureData/i3d_rgb_lgi/video2frames.txt",
        c + "TextData/clip_ViT_B_32_charades_query_feat.hdf5",
        c + "FeatureData/new_clip_vit_32_charades_vid_features.hdf5", c + "TextData/charades_meta.json",
    ]  # fmt: skip


def _break_everything(w) -> None:
    """Eight problems in six files (see test_every_problem_is_reported_at_once)."""
    train = w.text / "charadestrain.caption.txt"
    lines = train.read_bytes().splitlines(keepends=True)
    train.write_bytes(b"".join(lines[:2]) + b"v_train_a#7 caf\xe9 noir\n" + b"".join(lines[2:]))
    val = w.text / "charadesval.caption.txt"
    val.write_text(val.read_text() + "v_val_a#0 the same id again\n")  # line 3
    v2f = w.path("bigfile") / "video2frames.txt"
    video2frames = ast.literal_eval(v2f.read_text())
    del video2frames["v_test_b"]
    v2f.write_text(repr(video2frames))
    ids = w.path("bigfile") / "id.txt"
    ids.write_text(ids.read_text().replace("v_train_b_3", "v_train_b_2"))
    binary = w.path("bigfile") / "feature.bin"
    binary.write_bytes(binary.read_bytes()[:-24])  # one 6-d row short
    tokens = dict(w.tokens)
    del tokens["v_val_b#0"], tokens["v_test_a#0"]
    w.path("tokens").unlink()
    write_h5(w.path("tokens"), tokens)
    with h5py.File(w.path("clip"), "a") as f:
        del f["v_val_a"]
        f.create_dataset("v_val_a", data=np.ones((4, 3), np.float32))
    meta = json.loads(w.path("meta").read_text())
    del meta["captions"]["v_test_b#0"]
    meta["captions"]["v_val_a#0"]["span"] = [5.0, 1.0]
    w.path("meta").write_text(json.dumps(meta))


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    w = write_collection(tmp_path)
    _break_everything(w)
    report = check_collection("charades", tmp_path, CONFIGS)
    text, bigfile = "charades/TextData/", "charades/FeatureData/i3d_rgb_lgi/"
    error, warning = "error", "warning"
    assert _rows(report) == {
        (text + "charadestrain.caption.txt", "lines that are not UTF-8 text (save the file as UTF-8)", 1,
         ("line 3: not UTF-8 text (byte 0xe9 at column 16)",), error, None, BOTH),
        (text + "charadesval.caption.txt", "caption ids that appear twice", 1,
         ("line 3: caption id 'v_val_a#0' appears twice",), error, None, BOTH),
        (text + "roberta_charades_query_feat.hdf5", "caption ids without an entry", 2,
         ("v_val_b#0", "v_test_a#0"), error, None, ("mamfusion",)),
        (bigfile + "feature.bin", "984 bytes (41 rows of D = 6), shape.txt says N*D*4 = 42*6*4 = 1008", 1, (),
         error, None, ("mamfusion",)),
        (bigfile + "id.txt", "frame ids that appear more than once (the reader refuses them)", 1,
         ("v_train_b_2 (x2)",), error, None, ("mamfusion",)),
        (bigfile + "video2frames.txt",
         "test videos without an entry (every video of a caption file needs one)", 1, ("v_test_b",), error,
         None, ("mamfusion",)),
        (bigfile + "video2frames.txt", "frame ids of train videos that id.txt lacks", 1,
         ("v_train_b: v_train_b_3",), error, None, ("mamfusion",)),
        ("charades/FeatureData/new_clip_vit_32_charades_vid_features.hdf5",
         "val video features of shape [*, 3], expected [*, 4] (video_feat_dim 4)", 1, ("v_val_a",), error,
         "--config video_feat_dim=3", ("amdnet",)),
        (text + "charades_meta.json", "val spans that are not [start, end] seconds with 0 <= start <= end", 1,
         ("v_val_a#0: [5.0, 1.0]",), error, None, BOTH),
        (text + "charades_meta.json", "test captions without a span (left out of the moment metrics)", 1,
         ("v_test_b#0",), warning, None, BOTH),
    }  # fmt: skip
    assert not report.ok and len(report.errors) == 9 and len(report.warnings) == 1
    assert [p.severity for p in report.problems] == ["error"] * 9 + ["warning"]  # errors first
    assert report.fixes() == ["--config video_feat_dim=3"]
    payload = report.to_dict()
    assert payload["errors"] == 9 and payload["ok"] is False and len(payload["problems"]) == 10
    message = check_error_message(report, limit=2)
    assert message.startswith("data check found 9 error(s): ") and message.endswith("; and 7 more")
    assert "charadestrain.caption.txt: lines that are not UTF-8" in message


def test_examples_are_capped_but_counts_are_not(tmp_path: Path) -> None:
    w = write_collection(tmp_path)
    w.path("tokens").unlink()
    write_h5(w.path("tokens"), {})  # no caption has token features
    report = check_collection("charades", tmp_path, {"mamfusion": CONFIGS["mamfusion"]})
    (problem,) = report.problems
    all_ids = [c for split in ("train", "val", "test") for c, _ in w.captions[split]]
    assert problem.count == len(all_ids) == 10
    assert problem.examples == tuple(all_ids[:MAX_EXAMPLES])


def test_width_mismatches_come_with_the_config_fix(tmp_path: Path) -> None:
    write_collection(tmp_path)  # BigFile 6-d, tokens 5-d, CLIP 4-d
    configs = {
        "mamfusion": tiny_config("mamfusion", video_feat_dim=1024, query_feat_dim=768),
        "amdnet": tiny_config("amdnet", query_feat_dim=512),
    }
    report = check_collection("charades", tmp_path, configs)
    by_file = {p.file.rsplit("/", 1)[-1]: p for p in report.problems}
    assert set(by_file) == {"shape.txt", "roberta_charades_query_feat.hdf5",
                            "clip_ViT_B_32_charades_query_feat.hdf5"}
    assert by_file["shape.txt"].problem == "feature dim D = 6, the config expects video_feat_dim = 1024"
    assert by_file["shape.txt"].fix == "--config video_feat_dim=6"
    tokens = by_file["roberta_charades_query_feat.hdf5"]
    assert tokens.problem == "tokens query features of shape [*, 5], expected [*, 768] (query_feat_dim 768)"
    assert tokens.count == 10 and tokens.fix == "--config query_feat_dim=5"
    assert by_file["clip_ViT_B_32_charades_query_feat.hdf5"].fix == "--config query_feat_dim=4"
    assert report.fixes() == ["--config query_feat_dim=5", "--config video_feat_dim=6",
                              "--config query_feat_dim=4"]  # in reading order
    # the suggested fixes make the check pass
    fixed = {"mamfusion": tiny_config("mamfusion", video_feat_dim=6, query_feat_dim=5),
             "amdnet": tiny_config("amdnet", query_feat_dim=4)}
    assert check_collection("charades", tmp_path, fixed).ok


def test_patch_grid_mismatch_does_not_suggest_a_width(tmp_path: Path) -> None:
    w = write_collection(tmp_path)
    write_h5(w.features / "patch_tokens.hdf5",
             {v: np.zeros((len(f), 5, 4), np.float32) for v, f in w.videos.items()})  # 1 + 2x2 patches
    muse = tiny_config("amdnet", video_source="patches", max_frames=4, patch_grid=3)  # expects 1 + 9
    report = check_collection("charades", tmp_path, {"muse": muse})
    rows = [p for p in report.problems if p.file.endswith("patch_tokens.hdf5")]
    assert [p.problem for p in rows] == [
        f"{split} patch tokens of shape [*, 5, 4], expected [*, 10, 4] (video_feat_dim 4)"
        for split in ("train", "val", "test")
    ]
    assert all(p.fix is None for p in rows)


def test_data_root_pointing_at_the_collection_hints_at_the_parent(tmp_path: Path) -> None:
    write_collection(tmp_path)
    report = check_collection("charades", tmp_path / "charades", CONFIGS)
    (problem,) = report.problems
    assert problem.file == str(tmp_path / "charades" / "charades")
    assert f"pass its parent, --data-root {tmp_path}" in problem.problem
    with pytest.raises(InvalidInputError, match="pass its parent"):
        open_collection("charades", tmp_path / "charades", CONFIGS["amdnet"])


def test_missing_clip_files_say_they_are_not_in_the_ms_sl_release(tmp_path: Path) -> None:
    w = write_collection(tmp_path)
    w.path("clip").unlink()
    report = check_collection("charades", tmp_path, CONFIGS)
    (problem,) = report.problems
    assert problem.file == "charades/FeatureData/new_clip_vit_32_charades_vid_features.hdf5"
    assert problem.problem == "video features not found (config field clip_feature_file)"
    assert "not part of the MS-SL feature release" in problem.fix and "AMDNet authors" in problem.fix
    assert problem.models == ("amdnet",)
    data = open_collection("charades", tmp_path, CONFIGS["amdnet"])
    with pytest.raises(InvalidInputError, match="not part of the MS-SL feature release") as info:
        data.raw_video("v_train_a")
    assert "new_clip_vit_32_charades_vid_features.hdf5" in str(info.value)


def test_no_moment_annotations_is_a_warning(tmp_path: Path) -> None:
    write_collection(tmp_path, meta=False)
    report = check_collection("charades", tmp_path, CONFIGS)
    assert report.ok
    (problem,) = report.problems
    assert (problem.file, problem.severity) == ("charades/TextData/charades_meta.json", "warning")
    assert "moment metrics" in problem.problem and problem.fix.startswith("prvr data annotations")


def test_missing_splits(tmp_path: Path) -> None:
    w = write_collection(tmp_path)
    (w.text / "charadesval.caption.txt").unlink()
    report = check_collection("charades", tmp_path, CONFIGS)
    assert report.ok and [(p.severity, p.problem) for p in report.problems] == [
        ("warning", "no val captions: validation (model selection) will use the test split")
    ]
    (w.text / "charadestest.caption.txt").unlink()
    report = check_collection("charades", tmp_path, CONFIGS)
    assert [(p.file, p.problem) for p in report.errors] == [
        ("charades/TextData/charadestest.caption.txt", "test caption file not found")
    ]


def test_malformed_bigfile_files(tmp_path: Path) -> None:
    w = write_collection(tmp_path)
    (w.path("bigfile") / "shape.txt").write_text("42 six")
    (w.path("bigfile") / "video2frames.txt").write_text("__import__('os').system('touch PWNED')")
    report = check_collection("charades", tmp_path, {"mamfusion": CONFIGS["mamfusion"]})
    problems = {p.file.rsplit("/", 1)[-1]: p.problem for p in report.problems}
    assert problems["shape.txt"] == "expected 'N D' (two integers), got '42 six'"
    assert problems["video2frames.txt"].startswith("expected a Python dict literal")
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_deep_check_finds_nan(tmp_path: Path) -> None:
    w = write_collection(tmp_path)
    with h5py.File(w.path("clip"), "a") as f:
        f["v_test_a"][2, 1] = np.nan
    assert check_collection("charades", tmp_path, CONFIGS).ok  # shapes only by default
    report = check_collection("charades", tmp_path, CONFIGS, deep=True)
    assert [(p.problem, p.examples) for p in report.problems] == [
        ("test video features holding NaN or Inf", ("v_test_a",))
    ]


def test_problem_is_a_plain_record() -> None:
    p = Problem("a/b.txt", "broken", 3, ("x", "y"), "warning", "--config lr=1", ("m",))
    assert p.to_dict() == {"file": "a/b.txt", "problem": "broken", "count": 3, "examples": ["x", "y"],
                           "severity": "warning", "fix": "--config lr=1", "models": ["m"]}


# --- reader messages ---------------------------------------------------------------------------------------


def test_non_utf8_caption_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "tvrtrain.caption.txt"
    path.write_bytes(b"v1#0 a man walks\nv1#1 caf\xe9\nv2#0 ok\nv2#1 \xff\n")
    with pytest.raises(InvalidInputError) as info:
        read_captions(path)
    assert str(info.value) == (
        f"{path}:2: not UTF-8 text (byte 0xe9 at column 9) (1 more bad lines; prvr data check lists them)"
    )


def test_bad_span_is_a_typed_error(tmp_path: Path) -> None:
    w = write_collection(tmp_path)
    meta = json.loads(w.path("meta").read_text())
    meta["captions"]["v_test_a#0"]["span"] = ["start", 3]
    w.path("meta").write_text(json.dumps(meta))
    data = open_collection("charades", tmp_path, CONFIGS["amdnet"])
    assert data.span("v_test_b#0") == (0.0, 1.0)
    expected = r"charades_meta.json: caption 'v_test_a#0': span \['start', 3\]"
    with pytest.raises(InvalidInputError, match=expected):
        data.span("v_test_a#0")
