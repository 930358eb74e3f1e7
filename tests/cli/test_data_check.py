"""Tests for `prvr data check` (cli/prvr_cli/data.py) and the check `prvr train` runs first
(cli/prvr_cli/train.py), on tiny collections in the official layouts at the registry configs' real widths
(Charades-STA: MamFusion 1024-d I3D + 1024-d RoBERTa tokens; AMDNet 512-d CLIP), written by
tests/sdk/data/official_layout.py."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prvr_cli.app import app

pytest.importorskip("h5py")
runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # rich tables keep file names on one line


def _layout():  # tests run with --import-mode=importlib: the helper module is loaded by path
    name = "prvr_tests_official_layout"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "sdk" / "data" / "official_layout.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _write(root: Path, dv: int = 1024):
    return _layout().write_collection(root, "charades", dv=dv, dq=1024, dclip=512)


def _drop_from_video2frames(w, video_id: str) -> None:
    path = w.path("bigfile") / "video2frames.txt"
    video2frames = ast.literal_eval(path.read_text())
    del video2frames[video_id]
    path.write_text(repr(video2frames))


def _check(root: Path, *extra: str):
    return runner.invoke(app, ["data", "check", "--data-root", str(root), "--dataset", "charades", *extra],
                         env=WIDE)


def test_clean_collection_passes_for_every_model(tmp_path: Path) -> None:
    _write(tmp_path)
    result = _check(tmp_path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == [] and report["models"] == ["amdnet", "mamfusion"]
    text = _check(tmp_path)
    assert text.exit_code == 0 and "0 error(s), 0 warning(s) in charades" in text.stdout


def test_all_problems_at_once_exit_2_with_the_fix(tmp_path: Path) -> None:
    w = _write(tmp_path, dv=512)  # I3D folder holds 512-d rows; MamFusion's config says 1024
    _drop_from_video2frames(w, "v_test_b")
    train = w.text / "charadestrain.caption.txt"
    train.write_bytes(train.read_bytes() + b"v_train_a#5 \xff\xfe\n")  # line 7
    result = _check(tmp_path, "--json")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    rows = {(p["file"].rsplit("/", 1)[-1], p["problem"], p["count"], tuple(p["examples"]), p["fix"])
            for p in report["problems"]}
    assert rows == {
        ("charadestrain.caption.txt", "lines that are not UTF-8 text (save the file as UTF-8)", 1,
         ("line 7: not UTF-8 text (byte 0xff at column 13)",), None),
        ("shape.txt", "feature dim D = 512, the config expects video_feat_dim = 1024", 1, (),
         "--config video_feat_dim=512"),
        ("video2frames.txt", "test videos without an entry (every video of a caption file needs one)", 1,
         ("v_test_b",), None),
    }  # fmt: skip
    text = _check(tmp_path)
    assert text.exit_code == 2
    assert "fix (mamfusion): --config video_feat_dim=512" in text.stdout
    assert "3 error(s), 0 warning(s) in charades" in text.stdout
    assert "charades/FeatureData/i3d_rgb_lgi/video2frames.txt" in text.stdout and "v_test_b" in text.stdout
    # the printed fix works: with it (and one model), only the video2frames and caption errors remain
    fixed = _check(tmp_path, "--model", "mamfusion", "--config", "video_feat_dim=512", "--json")
    assert fixed.exit_code == 2 and json.loads(fixed.stdout)["errors"] == 2


def test_collection_folder_as_data_root_hints_at_the_parent(tmp_path: Path) -> None:
    _write(tmp_path)
    result = _check(tmp_path / "charades", "--json")
    assert result.exit_code == 2
    (problem,) = json.loads(result.stdout)["problems"]
    assert "looks like the collection folder itself" in problem["problem"]
    assert problem["problem"].endswith(f"pass its parent, --data-root {tmp_path}")


def test_missing_amdnet_clip_file_says_where_it_comes_from(tmp_path: Path) -> None:
    w = _write(tmp_path)
    w.path("sentences").unlink()
    result = _check(tmp_path, "--model", "amdnet", "--json")
    assert result.exit_code == 2
    (problem,) = json.loads(result.stdout)["problems"]
    assert problem["file"] == "charades/TextData/clip_ViT_B_32_charades_query_feat.hdf5"
    assert "not part of the MS-SL feature release" in problem["fix"]


def test_unknown_model_and_dataset(tmp_path: Path) -> None:
    assert _check(tmp_path, "--model", "bert").exit_code == 2
    result = runner.invoke(app, ["data", "check", "--data-root", str(tmp_path), "--dataset", "nope"])
    assert result.exit_code == 2 and "nope" in result.stderr


# --- prvr train runs the check first ----------------------------------------------------------------------

TINY = ["--config", "d_model=32", "--config", "batch_size=8", "--epochs", "1", "--no-progress"]


def _train(root: Path, out: Path, *extra: str):
    args = ["train", "--model", "mamfusion", "--dataset", "charades", "--data-root", str(root),
            "--out", str(out), *TINY, *extra]
    return runner.invoke(app, args, env=WIDE)


def test_train_stops_before_training_on_a_test_video_missing_from_video2frames(tmp_path: Path) -> None:
    w = _write(tmp_path / "data")
    _drop_from_video2frames(w, "v_test_b")  # training validates on val: only the check sees it
    out = tmp_path / "run"
    result = _train(tmp_path / "data", out)
    assert result.exit_code == 2, result.output
    assert not out.exists()  # nothing was built or written
    message = " ".join(result.stderr.split())
    assert "data check found 1 error(s)" in message and "video2frames.txt:v_test_b" in message
    assert "--skip-check" in message
    skipped = _train(tmp_path / "data", out, "--skip-check")
    assert skipped.exit_code == 0, skipped.output  # it trains; `prvr eval --split test` would fail later
    assert (out / "best.pt").is_file()


def test_train_reads_the_feature_folder_the_config_names(tmp_path: Path) -> None:
    import shutil

    w = _write(tmp_path / "data")
    shutil.move(w.path("bigfile"), w.features / "my_i3d")
    out = tmp_path / "run"
    result = _train(tmp_path / "data", out)
    assert result.exit_code == 2 and "i3d_rgb_lgi" in result.stderr and not out.exists()
    result = _train(tmp_path / "data", out, "--config", "visual_feature=my_i3d", "--json")
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["visual_feature"] == "my_i3d"
