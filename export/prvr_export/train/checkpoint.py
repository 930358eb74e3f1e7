"""Run-directory files: checkpoints (written atomically), config and metrics JSON, RNG snapshots.

A run directory (``prvr train --out runs/NAME``) holds::

    config.json         the resolved model config, plus model name, dataset, data root, eval split
    metrics.jsonl       one JSON object per finished epoch (loss, lr, validation metrics, best so far)
    last.pt             everything needed to resume exactly (below), after the latest epoch
    best.pt             the same, taken after the epoch with the best validation score
    best_metrics.json   that epoch's validation metrics

A checkpoint is a ``torch.save``d dict that ``torch.load(weights_only=True)`` can read (tensors, numbers,
strings, lists, dicts only): ``format``, ``model_name``, ``dataset``, ``data_root``, ``eval_split``,
``config`` (a dict), ``model`` (state_dict), ``optimizer``, ``scheduler``, ``epoch`` (epochs finished),
``step``, ``best_score``, ``best_epoch``, ``best_metrics``, ``es_cnt``, ``finished``, ``train_time_s`` and
``rng`` (python, numpy, torch, cuda and DataLoader-generator states). Writes go to a temporary file in
the same directory and are renamed into place (``prvr_sdk.fsutil.atomic_write``), so a crash never leaves
a torn file.

``resolve_checkpoint`` turns what a user passes as ``--checkpoint`` (a file, a run directory, or nothing:
the newest run, optionally of one model) into a checkpoint path; ``prvr eval`` and ``prvr export`` share it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prvr_sdk.errors import InvalidInputError
from prvr_sdk.fsutil import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "append_jsonl",
    "capture_rng",
    "config_to_dict",
    "read_checkpoint",
    "resolve_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "to_json_value",
    "truncate_jsonl",
    "write_json",
]

CHECKPOINT_FORMAT = 1
_REQUIRED_KEYS = ("format", "model_name", "dataset", "config", "model")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Pretty JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line (flushed and synced: the line survives a crash right after)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl(path: str | os.PathLike, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite a JSONL file keeping only the records ``keep`` accepts (used on resume)."""
    path = Path(path)
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in lines if keep(json.loads(line))]
    atomic_write(path, "".join(f"{line}\n" for line in kept))


def to_json_value(value: Any) -> Any:
    """Tuples (how frozen configs hold sequences) as lists, recursively, so values compare equal to JSON."""
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass (or any object with ``__dict__``) as a plain JSON-able dict (lists, no tuples)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        raw = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    else:
        raw = dict(vars(config))
    return to_json_value(raw)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """``torch.save(payload)`` atomically; ``payload`` must carry the keys of the module docstring."""
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    assert not missing, f"checkpoint payload lacks {missing}"  # internal invariant: the loop builds it
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``.

    Raises:
        InvalidInputError: the file is missing, unreadable, not a prvr checkpoint, or of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise InvalidInputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or any(key not in payload for key in _REQUIRED_KEYS):
        raise InvalidInputError(
            f"{path}: not a prvr training checkpoint (expected keys {list(_REQUIRED_KEYS)})"
        )
    if payload["format"] != CHECKPOINT_FORMAT:
        raise InvalidInputError(
            f"{path}: checkpoint format {payload['format']!r}; this version reads format {CHECKPOINT_FORMAT}"
        )
    return payload


def capture_rng(loader_generator: torch.Generator | None) -> dict[str, Any]:
    """Every RNG the loop consumes, in a ``weights_only``-loadable form."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }


def restore_rng(state: dict[str, Any], loader_generator: torch.Generator | None) -> None:
    """Inverse of ``capture_rng``."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"].cpu())


def resolve_checkpoint(
    path: str | os.PathLike | None, model: str | None = None, runs_dir: str | os.PathLike = "runs"
) -> Path:
    """The checkpoint file that ``--checkpoint path`` (or its absence) names; shared by eval and export.

    Args:
        path: a checkpoint file (returned as is: reading it reports a missing one), a run directory (its
            ``best.pt``), or None for the newest run under ``runs_dir`` by modification time.
        model: with ``path=None``, only runs whose ``config.json`` records this model count.
        runs_dir: where ``prvr train`` put its runs.

    Raises:
        InvalidInputError: ``path`` is None and no (matching) run under ``runs_dir`` has a ``best.pt``; the
            message says how to make one with ``prvr train`` or to pass ``--checkpoint``.
    """
    if path is not None:
        path = Path(path)
        return path / "best.pt" if path.is_dir() else path
    runs_dir = Path(runs_dir)
    found = list(runs_dir.glob("*/best.pt")) if runs_dir.is_dir() else []
    if model is not None:
        found = [ckpt for ckpt in found if _run_model(ckpt.parent) == model]
        if not found:
            raise InvalidInputError(
                f"no trained {model} run under {runs_dir}/: train one with `prvr train --model {model} "
                f"--dataset demo --data-root DATA --out {runs_dir}/{model}-demo`, or pass --checkpoint PATH"
            )
    elif not found:
        raise InvalidInputError(f"no best.pt under {runs_dir}/ (train a model with `prvr train` first)")
    return max(found, key=lambda p: p.stat().st_mtime)


def _run_model(run: Path) -> str | None:
    """The model a run directory trained (its ``config.json``), or None when that file is unreadable."""
    try:
        meta = json.loads((run / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta.get("model_name") if isinstance(meta, dict) else None
