"""The training loop: BertAdam + schedule, per-epoch validation, early stopping, exact resume.

``train(model, dataset, data_root, out_dir)`` resolves the registry config (plus overrides, with
``prvr_export.models.registry.resolve_config``), opens the data, builds the model and hands them to ``fit``,
which any ``nn.Module`` with a ``loss(batch, epoch)`` method can use (the tests train tiny models with it).

Per epoch (0-based index ``e``, shown 1-based in logs and files):

1. every batch: ``loss, parts = model.loss(batch, e)``; backward; ``BertAdam.step`` (per-tensor clip, and
   the global clip when ``config.global_grad_clip``); scheduler step; ``model.clamp_logit_scale()`` when the
   model has it (MUSE, CLIP's ``logit_scale <= ln 100``). Hard negatives are the model's business: its
   loss switches at ``e >= config.hard_negative_start_epoch`` (logged when it happens).
2. validation on the ``val`` split -- or on ``test`` when the collection ships no val captions (logged; the
   MS-SL bundles' val and test files hold the same set anyway, docs/models.md §1.5) -- selecting on SumR,
   or R@1 when ``config.metric == "r1"``;
3. a strictly better score resets the early-stopping counter and rewrites ``best.pt`` and
   ``best_metrics.json``; otherwise the counter grows and training stops once it *exceeds*
   ``config.max_es_cnt`` (the MS-SL / GMMFormer rule; -1 never stops);
4. one line appended to ``metrics.jsonl``, then ``last.pt``.

Seeding: python, numpy and torch from ``config.seed`` before the model is built; the DataLoader shuffles
with its own generator, also seeded from ``config.seed``. Checkpoints keep all of those states, so
``resume=True`` continues bit for bit (single process, ``num_workers=0``, same device and library
versions: the tests check it). Checkpoint layout: ``prvr_export.train.checkpoint``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

# resolve_config is the registry's (the one override rule); ``prvr_export.train`` and ``train.evaluate`` still
# import the name from here, so it stays importable from this module.
from prvr_export.models.registry import build_model, resolve_config
from prvr_sdk.errors import InvalidInputError, PrvrError

from . import distributed
from .checkpoint import (
    CHECKPOINT_FORMAT,
    append_jsonl,
    capture_rng,
    config_to_dict,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
    to_json_value,
    truncate_jsonl,
    write_json,
)
from .evaluate import evaluate, selection_key
from .optim import build_optimizer, build_scheduler

__all__ = ["fit", "seed_everything", "train"]

logger = logging.getLogger(__name__)

EvalFn = Callable[[nn.Module], dict[str, float]]


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _resolve_device(device: str | torch.device | None, info: distributed.DistInfo) -> torch.device:
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
        return torch.device("cpu")
    return torch.device(device)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        return batch
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def _plain(value: Any) -> int | float:
    """A metric as a plain JSON number (counts stay ints)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value)


def _fmt_metrics(metrics: dict[str, Any], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{k} {metrics[k]:.1f}" for k in keys if k in metrics)


class _Bar:
    """A rich progress bar on stderr with the running loss; does nothing when disabled."""

    def __init__(self, enabled: bool, steps: int) -> None:
        self.progress = None
        self.task = None
        self.steps = steps
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
            transient=True,
        )

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.steps, status="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def reset(self, description: str, total: int) -> None:
        if self.progress is not None:
            self.progress.reset(self.task, total=total, description=description, status="")

    def update(self, advance: int = 0, status: str | None = None, **kwargs: Any) -> None:
        if self.progress is not None:
            fields = {} if status is None else {"status": status}
            self.progress.update(self.task, advance=advance, **fields, **kwargs)


def _eval_split(data: Any) -> str:
    from prvr_export.data.layout import caption_path

    if caption_path(data.data_root, data.dataset, "val").is_file():
        return "val"
    logger.warning("%s has no val captions; validating (model selection) on the test split", data.root)
    return "test"


def train(
    model_name: str,
    dataset: str,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    *,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """Train ``model_name`` on ``dataset`` and keep the best epoch; see the module docstring.

    Args:
        model_name: a registry model ("mamfusion", "amdnet", "muse").
        dataset: a collection under ``data_root`` ("tvr", "activitynet", "charades", "msrvtt", "demo").
        data_root: the folder holding ``<dataset>/``.
        out_dir: the run directory (created); ``prvr train`` defaults to ``runs/<model>-<dataset>-<time>``.
        overrides: config fields to replace (``{"lr": 1e-4, "n_epoch": 5}``); not allowed to change a
            field when resuming.
        resume: continue the run in ``out_dir`` from its ``last.pt`` (its saved config is used).
        progress: show a rich progress bar on stderr (rank 0 only).
        device: "cpu", "cuda", "cuda:1"...; default CUDA when available.
        num_workers: DataLoader worker processes (exact resume is guaranteed with 0).
        max_epochs: stop this call after that many epochs even if the schedule runs longer (the run can
            be resumed later; the schedule still spans ``config.n_epoch``).
    Returns:
        The best epoch's validation metrics plus ``epoch`` (1-based), ``split``, ``selection`` (the metric
        name), ``score``, ``epochs_run``, ``stopped_early``, ``finished``, ``train_time_s``, ``out_dir``.
        Ranks other than 0 of a distributed run return ``{}``.
    Raises:
        InvalidInputError: bad names/overrides, missing data, an occupied ``out_dir`` without ``resume``.
        PrvrError: the loss became NaN/Inf.
    """
    from prvr_export.data import collate_train, open_dataset

    out_dir = Path(out_dir)
    had_group = torch.distributed.is_available() and torch.distributed.is_initialized()
    info = distributed.init_distributed()
    owns_group = info.enabled and not had_group
    try:
        if resume:
            saved = read_checkpoint(out_dir / "last.pt")
            if (saved["model_name"], saved["dataset"]) != (model_name, dataset):
                raise InvalidInputError(
                    f"{out_dir / 'last.pt'} holds a {saved['model_name']}-{saved['dataset']} run, "
                    f"not {model_name}-{dataset}"
                )
            config = resolve_config(model_name, dataset, dict(saved["config"]))
            changed = {
                k: v
                for k, v in (overrides or {}).items()
                if saved["config"].get(k, object()) != to_json_value(v)
            }
            if changed:
                raise InvalidInputError(
                    f"resume keeps the run's saved config ({out_dir / 'config.json'}); these overrides would "
                    f"change it: {changed}"
                )
        else:
            config = resolve_config(model_name, dataset, overrides)
        seed_everything(int(config.seed))
        data = open_dataset(dataset, data_root, config)
        model = build_model(model_name, config)
        split = _eval_split(data) if info.is_main else "val"

        def eval_fn(m: nn.Module) -> dict[str, float]:
            return evaluate(m, data, split, config)

        meta = {
            "model_name": model_name,
            "dataset": dataset,
            "data_root": str(Path(data_root).resolve()),
            "eval_split": split,
        }
        return fit(
            model,
            config,
            data.train_set(),
            collate_train,
            eval_fn,
            out_dir,
            meta=meta,
            resume=resume,
            progress=progress,
            device=device,
            num_workers=num_workers,
            max_epochs=max_epochs,
        )
    finally:
        if owns_group:
            distributed.cleanup()


def fit(
    model: nn.Module,
    config: Any,
    train_set: Dataset,
    collate_fn: Callable[[list], dict[str, Any]],
    eval_fn: EvalFn,
    out_dir: str | os.PathLike,
    *,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` (any module with ``loss(batch, epoch)``) with ``config``'s training fields.

    Args:
        model: the model; moved to ``device``.
        config: reads ``lr, batch_size, n_epoch, max_es_cnt, lr_warmup_proportion, weight_decay, seed,
            schedule, betas, eps, global_grad_clip, lr_groups, metric, hard_negative_start_epoch``.
        train_set: map-style dataset; batches come from ``collate_fn``.
        eval_fn: ``eval_fn(model) -> metrics`` (must contain the selection metric), run on rank 0.
        out_dir: the run directory.
        meta: extra checkpoint fields (``model_name``, ``dataset``, ``data_root``, ``eval_split``).
        resume, progress, device, num_workers, max_epochs: as in ``train``.
    Returns:
        As ``train``.
    """
    run = _setup(model, config, train_set, collate_fn, Path(out_dir), meta, resume, device, num_workers)
    if resume:
        _resume(run)
    elif run.info.is_main:
        _start(run, len(train_set))
    epochs_this_call = 0
    with _Bar(progress and run.info.is_main, run.steps_per_epoch) as bar:
        while not run.state["finished"] and run.state["epoch"] < run.n_epoch:
            if max_epochs is not None and epochs_this_call >= max_epochs:
                break
            epoch = run.state["epoch"]
            t0 = time.perf_counter()
            stats = _train_epoch(run, epoch, bar)
            train_s = time.perf_counter() - t0
            outcome = _validate(run, eval_fn, epoch, bar) if run.info.is_main else None
            stop = distributed.broadcast_flag(outcome is not None and outcome.stop, run.info)
            state = run.state
            state["epoch"] = epoch + 1
            epochs_this_call += 1
            state["stopped_early"] = stop
            state["finished"] = stop or state["epoch"] >= run.n_epoch
            state["train_time_s"] += time.perf_counter() - t0
            if outcome is not None:
                _record_epoch(run, epoch, stats, outcome, train_s, t0)
    return _summary(run) if run.info.is_main else {}


@dataclasses.dataclass
class _Run:
    """What one ``fit`` call trains with: the model, its data loader and optimiser, and the resumable
    ``state`` (the counters a checkpoint saves and ``resume`` restores)."""

    model: nn.Module
    wrapped: nn.Module  # the model as the loss is called (DDP-wrapped in a distributed run)
    config: Any
    info: distributed.DistInfo
    out_dir: Path
    meta: dict[str, Any]
    key: str  # the selection metric
    device: torch.device
    loader: DataLoader
    sampler: DistributedSampler | None
    generator: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    n_epoch: int
    state: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The checkpoint of this moment (``prvr_export.train.checkpoint`` lists the keys)."""
        return {
            "format": CHECKPOINT_FORMAT,
            **self.meta,
            "config": config_to_dict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **self.state,
            "rng": capture_rng(self.generator),
        }


@dataclasses.dataclass
class _EpochStats:
    """Running sums of one epoch's training losses."""

    loss_sum: float = 0.0
    parts_sum: dict[str, float] = dataclasses.field(default_factory=dict)
    n_steps: int = 0


@dataclasses.dataclass
class _Outcome:
    """Rank 0's validation of one epoch: its metrics, whether they beat the best, whether to stop."""

    metrics: dict[str, Any]
    improved: bool
    stop: bool


def _setup(
    model: nn.Module,
    config: Any,
    train_set: Dataset,
    collate_fn: Callable[[list], dict[str, Any]],
    out_dir: Path,
    meta: dict[str, Any] | None,
    resume: bool,
    device: str | torch.device | None,
    num_workers: int,
) -> _Run:
    """Check the run directory and the data, then build the loader, optimiser and schedule (fresh state)."""
    info = distributed.current()
    meta = {
        "model_name": type(model).__name__,
        "dataset": "",
        "data_root": "",
        "eval_split": "",
        **(meta or {}),
    }
    key = selection_key(config)
    if not resume and info.is_main and (out_dir / "last.pt").exists():
        raise InvalidInputError(
            f"{out_dir} already holds a run (last.pt); resume it or choose another output directory"
        )
    if len(train_set) == 0:
        raise InvalidInputError("the training set is empty (no train captions?)")
    device = _resolve_device(device, info)
    model.to(device)

    generator = torch.Generator()
    generator.manual_seed(int(config.seed))
    sampler = None
    batch_size = int(config.batch_size)
    if info.enabled:
        batch_size = distributed.per_rank_batch(batch_size, info)
        sampler = DistributedSampler(
            train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=int(config.seed)
        )
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        generator=generator if sampler is None else None,
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = len(loader)
    n_epoch = int(config.n_epoch)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(
        optimizer, config.schedule, steps_per_epoch * n_epoch, float(config.lr_warmup_proportion)
    )
    wrapped = distributed.wrap_model(model, info, device)
    state: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "best_score": -math.inf,
        "best_epoch": 0,
        "best_metrics": {},
        "es_cnt": 0,
        "finished": False,
        "stopped_early": False,
        "train_time_s": 0.0,
    }
    return _Run(
        model, wrapped, config, info, out_dir, meta, key, device, loader, sampler, generator, optimizer,
        scheduler, steps_per_epoch, n_epoch, state,
    )


def _resume(run: _Run) -> None:
    """Load ``last.pt``: weights, optimiser, schedule, counters and every RNG: training continues exactly."""
    ckpt = read_checkpoint(run.out_dir / "last.pt", map_location=run.device)
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    for name in run.state:
        run.state[name] = ckpt[name]
    restore_rng(ckpt["rng"], run.generator)
    if run.info.is_main:
        truncate_jsonl(run.out_dir / "metrics.jsonl", lambda rec: rec.get("epoch", 0) <= run.state["epoch"])
    logger.info(
        "resumed %s after epoch %d (best %s %.2f at epoch %d)",
        run.out_dir,
        run.state["epoch"],
        run.key,
        run.state["best_score"],
        run.state["best_epoch"],
    )


def _start(run: _Run, n_items: int) -> None:
    """Create the run directory with ``config.json`` and an empty ``metrics.jsonl`` (rank 0)."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(run.out_dir / "config.json", {**run.meta, "config": config_to_dict(run.config)})
    (run.out_dir / "metrics.jsonl").write_text("", encoding="utf-8")
    logger.info(
        "training %s on %s: %d train items, %d steps/epoch, up to %d epochs, out %s",
        run.meta["model_name"],
        run.meta["dataset"] or "data",
        n_items,
        run.steps_per_epoch,
        run.n_epoch,
        run.out_dir,
    )


def _train_epoch(run: _Run, epoch: int, bar: _Bar) -> _EpochStats:
    """One pass over the loader: loss, backward, optimiser and schedule step per batch.

    Raises:
        PrvrError: the loss became NaN/Inf (names the epoch, the step and the loss parts).
    """
    hard_start = getattr(run.config, "hard_negative_start_epoch", None)
    if hard_start is not None and epoch == hard_start and epoch > 0:
        logger.info("epoch %d: hard negatives on from here (hard_negative_start_epoch %d)", epoch + 1, epoch)
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    clamp = getattr(run.model, "clamp_logit_scale", None)
    run.model.train()
    bar.reset(f"epoch {epoch + 1}/{run.n_epoch}", run.steps_per_epoch)
    stats = _EpochStats()
    for batch in run.loader:
        batch = _to_device(batch, run.device)
        loss, parts = run.wrapped(batch, epoch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise PrvrError(
                f"the training loss became {value} at epoch {epoch + 1}, step {stats.n_steps + 1} "
                f"(parts {parts}); check the inputs for NaN/Inf or lower the learning rate"
            )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        if clamp is not None:
            clamp()
        run.state["step"] += 1
        stats.n_steps += 1
        stats.loss_sum += value
        for name, part in (parts or {}).items():
            part = part.detach() if isinstance(part, torch.Tensor) else part
            stats.parts_sum[name] = stats.parts_sum.get(name, 0.0) + float(part)
        bar.update(1, status=f"loss {stats.loss_sum / stats.n_steps:.4f}")
    return stats


def _validate(run: _Run, eval_fn: EvalFn, epoch: int, bar: _Bar) -> _Outcome:
    """Rank 0: score the epoch, update the best score and the early-stopping counter in ``run.state``."""
    bar.update(status="validating")
    metrics = eval_fn(run.model)
    if run.key not in metrics:
        raise InvalidInputError(f"eval_fn returned {sorted(metrics)}; expected a {run.key!r} entry")
    score = float(metrics[run.key])
    state = run.state
    improved = score > state["best_score"]
    state["epoch"] = epoch + 1
    stop = False
    if improved:
        state.update(best_score=score, best_epoch=epoch + 1, es_cnt=0)
        state["best_metrics"] = {k: _plain(v) for k, v in metrics.items()}
    else:
        state["es_cnt"] += 1
        max_es_cnt = int(getattr(run.config, "max_es_cnt", -1))
        stop = max_es_cnt != -1 and state["es_cnt"] > max_es_cnt
    return _Outcome(metrics, improved, stop)


def _record_epoch(
    run: _Run, epoch: int, stats: _EpochStats, outcome: _Outcome, train_s: float, t0: float
) -> None:
    """Rank 0, after the epoch's state is final: ``best.pt`` + ``best_metrics.json`` when it improved, one
    ``metrics.jsonl`` line, ``last.pt``, and the log line."""
    state, meta, metrics, improved = run.state, run.meta, outcome.metrics, outcome.improved
    steps = max(stats.n_steps, 1)
    record = {
        "epoch": epoch + 1,
        "step": state["step"],
        "lr": run.optimizer.param_groups[0]["lr"],
        "loss": stats.loss_sum / steps,
        "parts": {k: v / steps for k, v in stats.parts_sum.items()},
        "split": meta["eval_split"],
        **{k: _plain(v) for k, v in metrics.items()},
        "improved": improved,
        "best": state["best_score"],
        "best_epoch": state["best_epoch"],
        "es_cnt": state["es_cnt"],
        "train_s": round(train_s, 3),
        "epoch_s": round(time.perf_counter() - t0, 3),
    }
    if improved:
        save_checkpoint(run.out_dir / "best.pt", run.payload())
        write_json(
            run.out_dir / "best_metrics.json",
            {"epoch": epoch + 1, "split": meta["eval_split"], "selection": run.key, **state["best_metrics"]},
        )
    append_jsonl(run.out_dir / "metrics.jsonl", record)
    save_checkpoint(run.out_dir / "last.pt", run.payload())
    logger.info(
        "epoch %d/%d  loss %.4f  %s %s  best %s %.2f (epoch %d)%s  %.1fs",
        epoch + 1,
        run.n_epoch,
        record["loss"],
        meta["eval_split"] or "eval",
        _fmt_metrics(metrics, ("R@1", "R@5", "R@10", "R@100", "SumR", "mIoU")),
        run.key,
        state["best_score"],
        state["best_epoch"],
        "  *" if improved else "",
        record["epoch_s"],
    )
    if state["stopped_early"]:
        logger.info(
            "early stop: %d epochs without a better %s (max_es_cnt %d)",
            state["es_cnt"],
            run.key,
            int(getattr(run.config, "max_es_cnt", -1)),
        )


def _summary(run: _Run) -> dict[str, Any]:
    """What ``fit`` returns: the best epoch's metrics and how the run went."""
    state = run.state
    return {
        **state["best_metrics"],
        "epoch": state["best_epoch"],
        "split": run.meta["eval_split"],
        "selection": run.key,
        "score": state["best_score"],
        "epochs_run": state["epoch"],
        "stopped_early": state["stopped_early"],
        "finished": state["finished"],
        "train_time_s": round(state["train_time_s"], 3),
        "out_dir": str(run.out_dir),
    }
