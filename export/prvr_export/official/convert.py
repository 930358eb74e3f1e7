"""Turn a checkpoint trained with the authors' official code into a prvr run folder (``prvr import``).

The run folder holds what ``prvr train`` writes for ``prvr export`` / ``prvr eval`` to read
(``prvr_export.train.checkpoint``): ``best.pt`` (format, model_name, dataset, data_root, eval_split, config,
model) and ``config.json`` (the same metadata and config), plus an ``imported_from`` record (source path,
sha256, notes) in both. Loading is strict: every official tensor maps to exactly one of ours with the same
shape, and nothing is left over besides the documented dead tensors (``names.NameMap.drops``); otherwise
``InvalidInputError`` lists the missing, unexpected and mismatched names. The folder is built beside
``out`` and renamed into place, so a failure leaves ``out`` as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prvr_sdk.errors import InvalidInputError
from prvr_sdk.fsutil import swap_directory

from ..models.registry import build_model, config_to_dict, get_config
from ..train.checkpoint import CHECKPOINT_FORMAT, save_checkpoint, write_json
from .configs import from_official_config, infer_sizes, merge
from .loader import DEFAULT_MAX_BYTES, load_restricted
from .names import NameMap, name_map

__all__ = ["MODELS", "OfficialCheckpoint", "import_official", "load_mapped", "read_official"]

logger = logging.getLogger(__name__)

MODELS = ("mamfusion", "amdnet", "muse")
_SHOW = 5  # names listed per kind in an error message


@dataclass(frozen=True)
class OfficialCheckpoint:
    """What an official file holds: the state dict, the config (a plain dict) if any, and the epoch."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None
    epoch: int | None
    layout: str  # "wrapped" ({"model"/"state_dict": ..., "model_cfg"/"config": ...}) or "bare"


def _is_state_dict(value: Any) -> bool:
    if not isinstance(value, dict) or not value:
        return False
    return all(isinstance(v, torch.Tensor) for v in value.values())


def read_official(path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_BYTES) -> OfficialCheckpoint:
    """Read an official checkpoint through the restricted loader (``loader.load_restricted``).

    Accepts MamFusion / AMDNet's ``{"model" or "state_dict": ..., "model_cfg" or "config": ..., "epoch":
    ...}`` and MUSE's bare state dict. A uniform ``module.`` prefix (a DistributedDataParallel save) is
    stripped.

    Raises:
        InvalidInputError: unreadable or unsafe file, or no state dict in it.
    """
    obj = load_restricted(path, max_bytes)
    config = epoch = None
    if _is_state_dict(obj):
        state, layout = obj, "bare"
    elif isinstance(obj, dict) and any(_is_state_dict(obj.get(k)) for k in ("model", "state_dict")):
        state = obj["model"] if _is_state_dict(obj.get("model")) else obj["state_dict"]
        layout = "wrapped"
        for key in ("model_cfg", "config"):
            if isinstance(obj.get(key), dict):
                config = obj[key]
                break
        if isinstance(obj.get("epoch"), (int, float)) and not isinstance(obj.get("epoch"), bool):
            epoch = int(obj["epoch"])
    else:
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise InvalidInputError(
            f"--official {path}: expected a state dict, or a dict with one under 'model' or 'state_dict' "
            f"(tensors only); found {keys}"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return OfficialCheckpoint(dict(state), config, epoch, layout)


def _listing(kind: str, names: list[str]) -> str:
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
    return f"{len(names)} {kind}: {', '.join(names[:_SHOW])}{more}"


def load_mapped(
    model: torch.nn.Module, official: dict[str, torch.Tensor], names: NameMap, source: str = "checkpoint"
) -> list[str]:
    """Load ``official`` into ``model`` through ``names``, strictly (see the module docstring).

    Returns:
        Notes: dropped tensors (with the reason), tensors kept at their initial value, dtype casts.

    Raises:
        InvalidInputError: missing, unexpected or shape-mismatched names (the first few of each).
    """
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    unexpected, mismatched = [], []
    dropped: dict[str, list[str]] = defaultdict(list)
    cast = 0
    for name, tensor in official.items():
        target = names.to_ours(name)
        if target is None:
            reason = names.drop_reason(name)
            if reason is None:
                unexpected.append(name)
            else:
                dropped[reason].append(name)
        elif target not in ours:
            unexpected.append(f"{name} (would be {target}, which the model does not have)")
        elif target in mapped:
            unexpected.append(f"{name} (maps to {target}, already given by {source_of[target]})")
        elif tuple(tensor.shape) != tuple(ours[target].shape):
            mismatched.append(
                f"{name} {tuple(tensor.shape)} -> {target} expects {tuple(ours[target].shape)}"
            )
        else:
            if tensor.dtype != ours[target].dtype:
                cast += 1
            mapped[target] = tensor.to(ours[target].dtype)
            source_of[target] = name
    absent = [k for k in ours if k not in mapped]
    missing = [k for k in absent if names.optional_reason(k) is None]
    if unexpected or missing or mismatched:
        parts = []
        if missing:
            parts.append(_listing("missing (our names, no official tensor maps to them)", missing))
        if unexpected:
            parts.append(_listing("unexpected (official names no rule maps)", unexpected))
        if mismatched:
            parts.append(_listing("with another shape", mismatched))
        raise InvalidInputError(
            f"{source} does not fit {type(model).__name__} ({'; '.join(parts)}). Check --model, and "
            "pass --config key=value for sizes the file does not fix (docs/models.md §9)"
        )
    model.load_state_dict({**ours, **mapped}, strict=True)
    notes = [f"dropped {len(v)} official tensor(s) ({v[0]}, ...): {reason}" for reason, v in dropped.items()]
    kept = defaultdict(list)
    for name in absent:
        kept[names.optional_reason(name)].append(name)
    notes += [f"kept {len(v)} tensor(s) at their initial value ({v[0]}, ...): {r}" for r, v in kept.items()]
    if cast:
        notes.append(f"cast {cast} tensor(s) to the model's dtype (float32)")
    return notes


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite`` and it is a run folder (config.json + best.pt)."""
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out}: is a file; expected a run folder path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise InvalidInputError(f"--out {out}: not empty; pass --overwrite to replace the run folder there")
    if not ((out / "config.json").is_file() and (out / "best.pt").is_file()):
        raise InvalidInputError(
            f"--out {out}: not a prvr run folder (no config.json + best.pt); refusing to overwrite it"
        )


def _sha256(path: Path) -> str:
    from prvr_sdk.bundle import file_digest

    return file_digest(path)


def import_official(
    model_name: str,
    official: str | os.PathLike,
    dataset: str,
    out: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
    allow_random_pyramid: bool = False,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """Convert an official checkpoint into a run folder that ``prvr export --checkpoint out`` accepts.

    Args:
        model_name: "mamfusion", "amdnet" or "muse".
        official: the official checkpoint file.
        dataset: a collection with a registry config for the model (``<model>-<dataset>.json``); its values
            fill whatever neither the file nor ``overrides`` sets.
        out: the run folder to write.
        overrides: config field -> value, applied last.
        overwrite: replace an existing run folder at ``out``.
        allow_random_pyramid: MUSE: accept a file without pyramid weights (upstream never saves them) and
            draw them from ``config.seed``.
        max_bytes: refuse larger files unread (None: no limit).

    Returns:
        A summary: out, model, dataset, source, sha256, layout, epoch, tensors, config, notes.

    Raises:
        InvalidInputError: bad arguments, an unsafe or unreadable file, or weights that do not fit.
    """
    if model_name not in MODELS:
        raise InvalidInputError(f"--model {model_name!r}: expected one of {', '.join(MODELS)}")
    import prvr_export.models  # noqa: F401  (registers the models)

    out, source = Path(out), Path(official)
    _check_target(out, overwrite)
    base = get_config(model_name, dataset)
    ckpt = read_official(source, max_bytes)
    fields = set(config_to_dict(base))
    official_values, notes = from_official_config(model_name, ckpt.config, fields)
    sizes = infer_sizes(model_name, ckpt.state_dict)
    config, merge_notes = merge(base, model_name, official_values, sizes, dict(overrides or {}))
    notes = merge_notes + notes
    if ckpt.config is None:
        notes.append(
            f"no config in the file: sizes read from the tensors, the rest from {model_name}-{dataset}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))  # anything kept at its initial value is reproducible
        model = build_model(model_name, config)
    names = name_map(model_name, config, allow_random_pyramid)
    try:
        notes += load_mapped(model, ckpt.state_dict, names, source=f"--official {source}")
    except InvalidInputError as exc:
        if model_name == "muse" and not any(k.startswith("mamba_stages.") for k in ckpt.state_dict):
            raise InvalidInputError(
                f"{exc}. The file holds no pyramid weights: upstream never saves them (docs/models.md §5.5 "
                "item 1); pass --random-pyramid to draw them from the config's seed"
            ) from None
        raise
    for note in notes:
        logger.info("import: %s", note)

    record = {
        "path": str(source.resolve()),
        "sha256": _sha256(source),
        "layout": ckpt.layout,
        "epoch": ckpt.epoch,
        "notes": notes,
    }
    meta = {"model_name": model_name, "dataset": dataset, "data_root": "", "eval_split": ""}
    payload = {
        "format": CHECKPOINT_FORMAT,
        **meta,
        "config": config_to_dict(config),
        "model": model.state_dict(),
        "epoch": 0 if ckpt.epoch is None else ckpt.epoch + 1,  # epochs finished; official epochs are 0-based
        "imported_from": record,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_checkpoint(tmp / "best.pt", payload)
        write_json(tmp / "config.json", {**meta, "config": config_to_dict(config), "imported_from": record})
        _check_target(out, overwrite)  # again: something may have appeared meanwhile
        swap_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "model": model_name,
        "dataset": dataset,
        "source": str(source),
        "sha256": record["sha256"],
        "layout": ckpt.layout,
        "epoch": ckpt.epoch,
        "tensors": len(ckpt.state_dict),
        "config": config_to_dict(config),
        "notes": notes,
    }
