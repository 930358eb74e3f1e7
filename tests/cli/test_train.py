"""Tests for cli/prvr_cli/train.py and cli/prvr_cli/evaluate.py (`prvr train`, `prvr eval`) on a tiny demo
corpus: every model trains one epoch with a tiny config, the run directory is complete, `prvr eval` reads it
back, and bad inputs stop with exit code 2 and a message naming the file and the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prvr_cli.app import app
from prvr_cli.train import parse_overrides
from prvr_export.models.registry import list_models
from prvr_sdk.errors import BackendUnavailableError, InvalidInputError

h5py = pytest.importorskip("h5py")

runner = CliRunner()



def tiny_flags(model: str) -> list[str]:
    """``--config`` flags for a fast run of any registered model: one epoch, small widths, 8 videos a batch
    (the caps of tests/conftest.py's ``tiny_overrides``, applied to the fields the model's config has)."""
    from prvr_export.models.registry import get_config

    config = get_config(model, "demo")
    small = {"d_model": 32, "n_blocks": 1, "batch_size": 8}
    return [arg for k, v in small.items() if hasattr(config, k) for arg in ("--config", f"{k}={v}")]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prvr_export.data import write_demo_corpus

    root = tmp_path_factory.mktemp("demo_data")
    try:
        write_demo_corpus(root, num_videos=30, seed=0)
    except BackendUnavailableError as exc:
        pytest.skip(f"demo corpus needs the MiniLM text encoder: {exc}")
    return root


@pytest.fixture(scope="module")
def amdnet_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("runs") / "amdnet"
    args = [
        "train",
        "--model",
        "amdnet",
        "--dataset",
        "demo",
        "--data-root",
        str(demo_root),
        "--out",
        str(out),
    ]
    result = runner.invoke(app, [*args, "--epochs", "1", *tiny_flags("amdnet"), "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout), result.stderr


def _train(demo_root: Path, out: Path, model: str = "amdnet", *extra: str, data_root: Path | None = None):
    args = [
        "train", "--model", model, "--dataset", "demo", "--data-root", str(data_root or demo_root),
        "--out", str(out), "--epochs", "1", *tiny_flags(model), "--no-progress",
    ]  # fmt: skip
    return runner.invoke(app, [*args, *extra])


def test_train_writes_a_complete_run(amdnet_run) -> None:
    out, summary, stderr = amdnet_run
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "last.pt",
        "best.pt",
        "best_metrics.json",
    }
    assert summary["selection"] == "SumR" and summary["epoch"] == 1 and summary["epochs_run"] == 1
    assert {"R@1", "R@5", "R@10", "R@100", "SumR", "mIoU", "R@1,IoU>=0.5"} <= set(summary)
    assert "epoch 1/1" in stderr and "SumR" in stderr  # the per-epoch metrics line
    config = json.loads((out / "config.json").read_text())
    assert config["model_name"] == "amdnet" and config["config"]["d_model"] == 32
    assert config["config"]["n_epoch"] == 1  # --epochs
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_eval_prints_a_table_or_json(amdnet_run) -> None:
    out, _, _ = amdnet_run
    result = runner.invoke(app, ["eval", "--checkpoint", str(out), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "test" and report["model"] == "amdnet"
    assert report["headline"] == ["R@1", "R@5", "R@10", "R@100", "SumR"]
    assert report["SumR"] == pytest.approx(sum(report[k] for k in ("R@1", "R@5", "R@10", "R@100")))
    assert 0.0 <= report["mIoU"] <= 100.0
    table = runner.invoke(app, ["eval", "--checkpoint", str(out / "best.pt"), "--split", "val"])
    assert table.exit_code == 0, table.output
    assert "SumR" in table.stdout and "mIoU" in table.stdout


@pytest.mark.parametrize("model", [m for m in list_models() if m != "amdnet"])  # amdnet: the tests above
def test_other_models_train_one_epoch(demo_root: Path, tmp_path: Path, model: str) -> None:
    result = _train(demo_root, tmp_path / model, model, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # The demo configs select on SumR (muse-demo too: R@1 alone is noisy on ~150 val videos).
    from prvr_export.models.registry import get_config

    expected = "R@1" if get_config(model, "demo").metric == "r1" else "SumR"
    assert summary["selection"] == expected
    report = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / model), "--json"])
    assert report.exit_code == 0, report.output
    if model == "muse":
        assert json.loads(report.stdout)["headline"] == ["R@1", "R@5", "R@10", "MdR", "MnR"]


def test_resume_of_a_finished_run_is_a_no_op(amdnet_run, demo_root: Path) -> None:
    out, summary, _ = amdnet_run
    result = _train(demo_root, out, "amdnet", "--resume", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["score"] == summary["score"]


def test_resume_refuses_changed_overrides(amdnet_run, demo_root: Path) -> None:
    out, _, _ = amdnet_run
    result = _train(demo_root, out, "amdnet", "--resume", "--config", "lr=0.5")
    assert result.exit_code == 2
    assert "would change it" in result.stderr and "lr" in result.stderr


def test_occupied_out_dir_needs_resume(amdnet_run, demo_root: Path) -> None:
    out, _, _ = amdnet_run
    result = _train(demo_root, out)
    assert result.exit_code == 2 and "already holds a run" in result.stderr


def test_missing_data_root(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "--model", "amdnet", "--dataset", "demo", "--data-root", str(tmp_path / "nope")]
    )
    assert result.exit_code == 2 and "nope: folder not found" in result.stderr


def test_unknown_model_and_config_key(demo_root: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "--model", "bert", "--dataset", "demo", "--data-root", str(demo_root)]
    )
    assert result.exit_code == 2 and "--model 'bert'" in result.stderr
    result = _train(demo_root, tmp_path / "r", "amdnet", "--config", "learning_rate=1")
    assert result.exit_code == 2
    assert "learning_rate" in result.stderr and "valid fields" in result.stderr


def test_parse_overrides() -> None:
    assert parse_overrides(
        ["lr=1e-4", "betas=[0.9, 0.98]", "schedule=warmup_cosine", "global_grad_clip=null"]
    ) == {
        "lr": 1e-4,
        "betas": [0.9, 0.98],
        "schedule": "warmup_cosine",
        "global_grad_clip": None,
    }
    with pytest.raises(InvalidInputError, match="expected key=value"):
        parse_overrides(["lr"])


def test_wrong_feature_dim_names_the_file(demo_root: Path, tmp_path: Path) -> None:
    result = _train(demo_root, tmp_path / "r", "amdnet", "--config", "video_feat_dim=64")
    assert result.exit_code == 2, result.output
    assert "demo_frames_vid_features.hdf5" in result.stderr and "expected [*, 64]" in result.stderr


def _copy(demo_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(demo_root / "demo", root / "demo")
    return root


def _first_train_video(root: Path) -> str:
    line = (root / "demo" / "TextData" / "demotrain.caption.txt").read_text().splitlines()[0]
    return line.split(" ", 1)[0].split("#", 1)[0]


def test_missing_feature_file_is_named(demo_root: Path, tmp_path: Path) -> None:
    root = _copy(demo_root, tmp_path)
    (root / "demo" / "TextData" / "minilm_sent_demo_query_feat.hdf5").unlink()
    result = _train(demo_root, tmp_path / "r", "amdnet", data_root=root)
    assert result.exit_code == 2, result.output
    assert "minilm_sent_demo_query_feat.hdf5" in result.stderr


@pytest.mark.parametrize("problem", ["nan", "empty"])
def test_bad_video_features_are_named(demo_root: Path, tmp_path: Path, problem: str) -> None:
    root = _copy(demo_root, tmp_path)
    video = _first_train_video(root)
    path = root / "demo" / "FeatureData" / "demo_frames_vid_features.hdf5"
    with h5py.File(path, "a") as f:
        frames = f[video][()]
        del f[video]
        if problem == "nan":
            frames[3, 5] = np.nan
        else:
            frames = frames[:0]
        f.create_dataset(video, data=frames)
    result = _train(demo_root, tmp_path / "r", "amdnet", data_root=root)
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert f"demo_frames_vid_features.hdf5:{video}" in message
    assert ("NaN" in message) if problem == "nan" else ("0 rows" in message)


def test_eval_missing_checkpoint(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "none.pt")])
    assert result.exit_code == 2 and "none.pt: checkpoint not found" in result.stderr
    result = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "none.pt"), "--split", "dev"])
    assert result.exit_code == 2 and "--split 'dev'" in result.stderr
