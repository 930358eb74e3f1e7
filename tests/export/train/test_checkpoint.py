"""Tests for ``resolve_checkpoint`` (export/prvr_export/train/checkpoint.py): what ``--checkpoint`` means to
``prvr eval`` and ``prvr export`` -- a file, a run directory, or the newest run (of one model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prvr_export.train.checkpoint import resolve_checkpoint
from prvr_sdk.errors import InvalidInputError


def _run(runs: Path, name: str, model: str | None, mtime: int) -> Path:
    """A run directory with a stand-in ``best.pt`` at ``mtime`` (and a config.json naming ``model``)."""
    (runs / name).mkdir(parents=True)
    ckpt = runs / name / "best.pt"
    ckpt.write_bytes(b"x")
    if model is not None:
        (runs / name / "config.json").write_text(json.dumps({"model_name": model, "dataset": "demo"}))
    os.utime(ckpt, (mtime, mtime))
    return ckpt


def test_a_given_file_or_run_directory(tmp_path: Path) -> None:
    ckpt = _run(tmp_path, "r", "amdnet", 1000)
    assert resolve_checkpoint(ckpt) == ckpt
    assert resolve_checkpoint(tmp_path / "r") == ckpt
    missing = tmp_path / "none.pt"
    assert resolve_checkpoint(missing) == missing  # reading it reports "checkpoint not found"


def test_newest_run(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"no best.pt under .*train a model with `prvr train` first"):
        resolve_checkpoint(None, runs_dir=tmp_path)
    _run(tmp_path, "old", "amdnet", 1000)
    new = _run(tmp_path, "new", None, 1001)  # no config.json: still a run when no model is asked for
    assert resolve_checkpoint(None, runs_dir=tmp_path) == new


def test_newest_run_of_a_model(tmp_path: Path) -> None:
    amdnet = _run(tmp_path, "a", "amdnet", 1000)
    _run(tmp_path, "m", "mamfusion", 1002)
    _run(tmp_path, "x", None, 1003)  # unreadable config: never matches a model
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "best.pt").write_bytes(b"x")
    (tmp_path / "bad" / "config.json").write_text("{not json")
    assert resolve_checkpoint(None, model="amdnet", runs_dir=tmp_path) == amdnet
    with pytest.raises(InvalidInputError) as info:
        resolve_checkpoint(None, model="muse", runs_dir=tmp_path)
    message = str(info.value)
    assert "no trained muse run" in message and "`prvr train --model muse" in message
    assert "--checkpoint PATH" in message


def test_missing_runs_dir(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no trained amdnet run"):
        resolve_checkpoint(None, model="amdnet", runs_dir=tmp_path / "nowhere")
