"""Tests for export/prvr_export/train/loop.py (``fit``) and checkpoint.py with a tiny model: run files,
exact resume, early stopping, NaN losses, atomic writes."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from prvr_export.train import checkpoint as ckpt_mod
from prvr_export.train.checkpoint import read_checkpoint, save_checkpoint
from prvr_export.train.loop import fit, seed_everything
from prvr_sdk.errors import InvalidInputError, PrvrError


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    lr: float = 5e-2
    batch_size: int = 4
    n_epoch: int = 3
    max_es_cnt: int = -1
    lr_warmup_proportion: float = 0.1
    weight_decay: float = 0.01
    seed: int = 7
    hard_negative_start_epoch: int = 1
    schedule: str = "warmup_linear"
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-6
    global_grad_clip: float | None = None
    lr_groups: tuple = ()
    metric: str = "sumr"


class TinySet(Dataset):
    """Pairs (x, target class); fixed data so only the loop's randomness varies."""

    def __init__(self, n: int = 22, dim: int = 6, classes: int = 3) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def collate(items: list[dict]) -> dict:
    return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}


class TinyModel(nn.Module):
    """A classifier whose loss consumes every RNG the loop must restore: dropout (torch), a numpy and a
    python random draw; the 'hard' branch switches on at hard_negative_start_epoch like the real models."""

    def __init__(self, dim: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, 8), nn.LayerNorm(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, classes)
        )

    def loss(self, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.net(batch["x"])
        ce = nn.functional.cross_entropy(logits, batch["y"])
        jitter = float(np.random.rand()) * 1e-3 + random.random() * 1e-3
        scale = 2.0 if epoch >= 1 else 1.0
        loss = scale * ce + jitter * logits.pow(2).mean()
        return loss, {"ce": float(ce.detach())}


def make_eval(data: TinySet):
    def eval_fn(model: nn.Module) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            acc = (model.net(data.x).argmax(1) == data.y).float().mean().item()
        return {"R@1": 100 * acc, "SumR": 100 * acc + float(model.net[0].weight.detach().sum())}

    return eval_fn


def run(out: Path, config: TinyConfig, *, resume: bool = False, max_epochs: int | None = None) -> dict:
    seed_everything(config.seed)
    model = TinyModel()
    data = TinySet()
    summary = fit(
        model,
        config,
        data,
        collate,
        make_eval(data),
        out,
        meta={"model_name": "tiny", "dataset": "synthetic"},
        resume=resume,
        progress=False,
        device="cpu",
        max_epochs=max_epochs,
    )
    return {"summary": summary, "model": model}


def _strip_times(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in rec.items() if not k.endswith("_s")} for rec in lines]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_directory_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run(out, TinyConfig())
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "metrics.jsonl",
        "last.pt",
        "best.pt",
        "best_metrics.json",
    }
    config = json.loads((out / "config.json").read_text())
    assert config["model_name"] == "tiny" and config["config"]["n_epoch"] == 3
    lines = _jsonl(out / "metrics.jsonl")
    assert [rec["epoch"] for rec in lines] == [1, 2, 3]
    assert lines[-1]["step"] == 3 * 6  # 22 items / batch 4 -> 6 steps per epoch
    assert {"loss", "parts", "lr", "SumR", "R@1", "best", "es_cnt", "improved"} <= set(lines[0])
    best = json.loads((out / "best_metrics.json").read_text())
    summary = result["summary"]
    assert summary["epoch"] == best["epoch"] and summary["SumR"] == best["SumR"]
    assert summary["score"] == max(rec["SumR"] for rec in lines)
    assert summary["epochs_run"] == 3 and summary["finished"] and not summary["stopped_early"]
    last = read_checkpoint(out / "last.pt")
    assert last["epoch"] == 3 and last["step"] == 18 and last["scheduler"]["last_epoch"] == 18
    assert set(last["rng"]) == {"python", "numpy", "torch", "cuda", "loader"}


def test_resume_is_bitwise_identical(tmp_path: Path) -> None:
    straight = run(tmp_path / "a", TinyConfig())
    run(tmp_path / "b", TinyConfig(), max_epochs=2)
    assert read_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    # scramble every global RNG: resume must restore them from the checkpoint
    seed_everything(12345)
    resumed = run(tmp_path / "b", TinyConfig(), resume=True)
    a = straight["model"].state_dict()
    b = resumed["model"].state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _strip_times(_jsonl(tmp_path / "a" / "metrics.jsonl")) == _strip_times(
        _jsonl(tmp_path / "b" / "metrics.jsonl")
    )
    opt_a = read_checkpoint(tmp_path / "a" / "last.pt")["optimizer"]["state"]
    opt_b = read_checkpoint(tmp_path / "b" / "last.pt")["optimizer"]["state"]
    for k in opt_a:
        assert torch.equal(opt_a[k]["next_v"], opt_b[k]["next_v"])


def test_resume_drops_metrics_lines_after_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, TinyConfig(), max_epochs=1)
    with open(out / "metrics.jsonl", "a") as f:  # as if the process died after logging epoch 2
        f.write(json.dumps({"epoch": 2, "SumR": 0.0}) + "\n")
    run(out, TinyConfig(), resume=True)
    assert [rec["epoch"] for rec in _jsonl(out / "metrics.jsonl")] == [1, 2, 3]


def test_finished_run_resumes_to_a_no_op(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run(out, TinyConfig(n_epoch=1))["summary"]
    again = run(out, TinyConfig(n_epoch=1), resume=True)["summary"]
    assert again["epochs_run"] == 1 and again["score"] == first["score"]


def test_refuses_to_overwrite_a_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, TinyConfig(n_epoch=1))
    with pytest.raises(InvalidInputError, match="already holds a run"):
        run(out, TinyConfig(n_epoch=1))


def test_early_stopping_after_more_than_max_es_cnt_bad_epochs(tmp_path: Path) -> None:
    scores = iter([5.0, 4.0, 6.0, 6.0, 1.0, 2.0, 9.0, 9.0])
    data = TinySet()
    summary = fit(
        TinyModel(),
        TinyConfig(n_epoch=8, max_es_cnt=2),
        data,
        collate,
        lambda m: {"SumR": next(scores)},
        tmp_path / "run",
        progress=False,
    )
    # epoch 3 is best (6.0); epochs 4, 5, 6 do not improve (a tie is no improvement) -> stop after 6
    assert summary["epoch"] == 3 and summary["score"] == 6.0
    assert summary["epochs_run"] == 6 and summary["stopped_early"]
    lines = _jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [rec["es_cnt"] for rec in lines] == [0, 1, 0, 1, 2, 3]
    assert read_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 3


def test_r1_selection_metric(tmp_path: Path) -> None:
    scores = iter([{"R@1": 1.0, "SumR": 50.0}, {"R@1": 2.0, "SumR": 10.0}])
    summary = fit(
        TinyModel(), TinyConfig(n_epoch=2, metric="r1"), TinySet(), collate, lambda m: next(scores),
        tmp_path / "run", progress=False,
    )  # fmt: skip
    assert summary["selection"] == "R@1" and summary["epoch"] == 2


def test_nan_loss_stops_with_a_message(tmp_path: Path) -> None:
    class NaNModel(TinyModel):
        def loss(self, batch, epoch):
            loss, parts = super().loss(batch, epoch)
            return loss * float("nan"), parts

    with pytest.raises(PrvrError, match="loss became nan at epoch 1, step 1"):
        fit(
            NaNModel(), TinyConfig(), TinySet(), collate, make_eval(TinySet()), tmp_path / "r", progress=False
        )


def test_clamp_logit_scale_runs_after_each_step(tmp_path: Path) -> None:
    class Clamped(TinyModel):
        calls = 0

        def clamp_logit_scale(self) -> None:
            Clamped.calls += 1

    fit(
        Clamped(),
        TinyConfig(n_epoch=1),
        TinySet(),
        collate,
        make_eval(TinySet()),
        tmp_path / "r",
        progress=False,
    )
    assert Clamped.calls == 6


def test_progress_bar_does_not_break_the_loop(tmp_path: Path) -> None:
    data = TinySet()
    fit(TinyModel(), TinyConfig(n_epoch=1), data, collate, make_eval(data), tmp_path / "r", progress=True)


def test_atomic_checkpoint_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    good = {"format": 1, "model_name": "m", "dataset": "d", "config": {}, "model": {"w": torch.ones(2)}}
    save_checkpoint(path, good)

    def torn_save(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {**good, "model": {"w": torch.zeros(2)}})
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_read_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="missing.pt: checkpoint not found"):
        read_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInputError, match="junk.pt: not a readable checkpoint"):
        read_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(InvalidInputError, match="foreign.pt: not a prvr training checkpoint"):
        read_checkpoint(foreign)
