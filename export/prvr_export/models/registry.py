"""One model registry, with configs as data (after open_clip's ``factory.py``).

Each (model, dataset) pair is one JSON file, ``models/configs/<model>-<dataset>.json``, read onto the frozen
dataclass that the model registered (``MamFusionConfig``, ``AMDNetConfig``, ...). Every config class carries
the fields of ``PRVRConfig`` -- the training and data fields that ``prvr_export.train`` and
``prvr_export.data`` read -- usually by extending it, and adds its model's architecture and loss fields. A
JSON file may omit fields (the dataclass default applies) but may not carry unknown ones.

Public surface: ``list_configs``, ``list_models``, ``get_config`` (a fresh copy each call),
``resolve_config`` (config + ``key=value`` overrides, or a checkpoint's saved fields -> config;
``apply_overrides`` is its rule, for a config that did not come from ``get_config``),
``build_model``, ``create_model`` (config + overrides -> model) and ``register_model``. Building a model
never loads weights.
The override rule lives only in ``apply_overrides``: training, resume, evaluation and ``create_model`` all go
through it, so a field means the same thing wherever it is set.

Example:
    >>> from prvr_export.models import create_model, get_config
    >>> cfg = get_config("mamfusion", "demo")
    >>> model = create_model("mamfusion", "demo", overrides={"drop": 0.0})
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from prvr_sdk.data.layout import check_file_name
from prvr_sdk.errors import InvalidInputError

__all__ = [
    "CONFIG_DIR",
    "PRVRConfig",
    "apply_overrides",
    "build_model",
    "check_fields",
    "coerce_field",
    "config_to_dict",
    "create_model",
    "get_config",
    "list_configs",
    "list_models",
    "register_model",
    "resolve_config",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SCHEDULES = ("warmup_linear", "warmup_cosine")
METRICS = ("sumr", "r1")
QUERY_TYPES = ("tokens", "sentence")
VIDEO_SOURCES = ("bigfile", "hdf5", "patches")
_NAME = re.compile(r"^([a-z0-9_]+)-([a-z0-9_]+)$")


@dataclass(frozen=True)
class PRVRConfig:
    """Fields every model config carries: what the training loop and the data pipeline read.

    Sequences arrive from JSON as lists and are stored as tuples, so a config is immutable all the way down.
    """

    # --- training (prvr_export.train) ---
    lr: float = 2.5e-4  # peak learning rate
    batch_size: int = 128  # videos per training batch (each brings all its captions)
    n_epoch: int = 100  # upper bound on epochs
    max_es_cnt: int = 10  # early stop after this many epochs without a better validation metric
    lr_warmup_proportion: float = 0.01  # fraction of all steps spent warming up
    weight_decay: float = 0.01  # decoupled decay, not applied to biases and LayerNorm (tagged params)
    seed: int = 9527
    hard_negative_start_epoch: int = 20  # 0-based epoch from which triplet negatives are hard
    hard_pool_size: int = 20  # hard mode: a negative video is drawn from this many top-scoring ones
    margin: float = 0.2  # triplet margin
    eval_video_batch: int = 100  # videos per encode batch at evaluation
    eval_query_batch: int = 50  # queries per encode batch at evaluation
    schedule: str = "warmup_linear"  # "warmup_linear" (PRVR) | "warmup_cosine" (MUSE); docs/models.md §1.8
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    eps: float = 1e-6  # Adam epsilon
    global_grad_clip: float | None = None  # clip_grad_norm_ over all params before the step (MUSE: 1.0)
    lr_groups: tuple[tuple[str, float], ...] = ()  # (name substring, lr multiplier), first match wins
    metric: str = "sumr"  # model selection on validation: "sumr" | "r1"
    # --- data (prvr_export.data) ---
    video_feat_dim: int = 1024  # Dv of the frame features
    query_feat_dim: int = 1024  # Dq of the token (or sentence) features
    query_type: str = "tokens"  # "tokens" [Nq, Lq, Dq] | "sentence" [Nq, Dq]
    max_ctx_l: int = 128  # frame steps kept per video (longer videos are mean-pooled); positional rows
    max_desc_l: int = 30  # tokens kept per query
    num_clips: int = 32  # clips per video (average to fixed length)
    normalize_video: bool = True  # L2-normalise each clip / frame row
    normalize_query: bool = True  # L2-normalise each token row (or the sentence vector)
    video_source: str = "bigfile"  # "bigfile" | "hdf5" | "patches" (MUSE: raw frame patches)
    max_frames: int | None = None  # MUSE: frames sampled per video
    patch_grid: int | None = None  # MUSE: patches per frame = patch_grid ** 2
    # feature files, plain names; None = the collection's (prvr_sdk.data.layout.DATASETS)
    visual_feature: str | None = None  # BigFile folder under FeatureData/ (video_source "bigfile")
    clip_feature_file: str | None = None  # hdf5 under FeatureData/ (video_source "hdf5" / "patches")
    query_feature_file: str | None = None  # hdf5 under TextData/ (token or sentence features)
    # --- provenance ---
    notes: str = ""  # free text from the JSON file: sources, deliberate deviations from the official code

    def __post_init__(self) -> None:
        _freeze(self)
        _check_choice(self, "schedule", SCHEDULES)
        _check_choice(self, "metric", METRICS)
        _check_choice(self, "query_type", QUERY_TYPES)
        _check_choice(self, "video_source", VIDEO_SOURCES)
        for name in (
            "lr",
            "batch_size",
            "n_epoch",
            "video_feat_dim",
            "query_feat_dim",
            "max_ctx_l",
            "max_desc_l",
            "num_clips",
            "hard_pool_size",
            "eval_video_batch",
            "eval_query_batch",
        ):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"config.{name} = {getattr(self, name)!r}; expected a positive value")
        for name in ("visual_feature", "clip_feature_file", "query_feature_file"):
            if getattr(self, name) is not None:
                check_file_name(getattr(self, name), name)
        if len(self.betas) != 2:
            raise InvalidInputError(f"config.betas = {self.betas!r}; expected two floats")
        for group in self.lr_groups:
            if len(group) != 2 or not isinstance(group[0], str):
                raise InvalidInputError(
                    f"config.lr_groups entry {group!r}; expected [name_substring, lr_multiplier]"
                )


def _to_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuple(v) for v in value)
    return value


def _freeze(config: Any) -> None:
    """Turn every list field (from JSON) into a tuple, recursively."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, list):
            object.__setattr__(config, field.name, _to_tuple(value))


def _check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise InvalidInputError(f"config.{name} = {value!r}; expected one of {choices}")


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON-ready dict (tuples become lists); ``type(config)(**d)`` rebuilds it."""
    return {f.name: _to_json(getattr(config, f.name)) for f in dataclasses.fields(config)}


@dataclass(frozen=True)
class _Entry:
    config_cls: type
    model_cls: type


_MODELS: dict[str, _Entry] = {}
_RAW: dict[str, dict[str, Any]] = {}  # "<model>-<dataset>" -> parsed JSON, read once


def register_model(name: str, config_cls: type, model_cls: type) -> None:
    """Make ``name`` buildable: its JSON configs load onto ``config_cls`` and build ``model_cls(config)``.

    ``config_cls`` is a frozen dataclass that carries every ``PRVRConfig`` field (subclassing ``PRVRConfig``
    is the easy way), so the training loop and the data pipeline find what they read.

    Raises:
        InvalidInputError: ``config_cls`` is not a dataclass, lacks some ``PRVRConfig`` field, or ``name`` is
            already taken by other classes.
    """
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise InvalidInputError(f"config class for {name!r} must be a dataclass, got {config_cls!r}")
    have = {f.name for f in dataclasses.fields(config_cls)}
    missing = [f.name for f in dataclasses.fields(PRVRConfig) if f.name not in have]
    if missing:
        raise InvalidInputError(
            f"config class {config_cls.__name__} for {name!r} lacks the training/data fields {missing}"
        )
    previous = _MODELS.get(name)
    if previous is not None and (previous.config_cls, previous.model_cls) != (config_cls, model_cls):
        raise InvalidInputError(
            f"model {name!r} is already registered to {previous.model_cls.__name__}; choose another name"
        )
    _MODELS[name] = _Entry(config_cls, model_cls)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def list_configs() -> list[str]:
    """Every ``<model>-<dataset>`` with a JSON file in ``models/configs``, sorted."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json") if _NAME.match(path.stem))


def _entry(model: str) -> _Entry:
    try:
        return _MODELS[model]
    except KeyError:
        raise InvalidInputError(f"unknown model {model!r}; registered models: {list_models()}") from None


def _raw(key: str) -> dict[str, Any]:
    if key not in _RAW:
        path = CONFIG_DIR / f"{key}.json"
        if not path.is_file():
            raise InvalidInputError(f"no config {key!r} ({path} does not exist); available: {list_configs()}")
        with path.open(encoding="utf-8") as f:
            _RAW[key] = json.load(f)
    return _RAW[key]


def _check_keys(config_cls: type, keys: Any, where: str) -> None:
    valid = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown keys {unknown} for {config_cls.__name__}; valid keys: {valid}"
        )


def get_config(model: str, dataset: str) -> Any:
    """The config of ``model`` on ``dataset``, read from ``models/configs/<model>-<dataset>.json``.

    Returns a new object on every call, so callers can never change the registry's copy.

    Raises:
        InvalidInputError: unknown model, no such file, or a JSON key the config class does not have.
    """
    entry = _entry(model)
    key = f"{model}-{dataset}"
    raw = copy.deepcopy(_raw(key))
    _check_keys(entry.config_cls, raw, f"{CONFIG_DIR / key}.json")
    return entry.config_cls(**raw)


def build_model(model: str, config: Any) -> nn.Module:
    """Build (randomly initialised) ``model`` from a config object or a dict of its fields.

    Raises:
        InvalidInputError: unknown model, a config of another model's class, or unknown dict keys.
    """
    entry = _entry(model)
    if isinstance(config, dict):
        _check_keys(entry.config_cls, config, f"config for {model!r}")
        config = entry.config_cls(**config)
    elif not isinstance(config, entry.config_cls):
        raise InvalidInputError(
            f"model {model!r} needs a {entry.config_cls.__name__}, got {type(config).__name__}"
        )
    return entry.model_cls(config)


def resolve_config(model: str, dataset: str, overrides: dict[str, Any] | None = None) -> Any:
    """The config of ``<model>-<dataset>`` with ``overrides`` applied (``apply_overrides``).

    Used for ``--config key=value`` overrides (``prvr train``), for a checkpoint's saved fields (resume and
    evaluation rebuild the config this way, so a field added to the registry later gets its default) and
    by ``create_model``.

    Raises:
        InvalidInputError: unknown model/dataset pair, an unknown field (the message lists the valid ones),
            a value the config class rejects.
    """
    return apply_overrides(get_config(model, dataset), overrides, f"{model}-{dataset}")


def apply_overrides(config: Any, overrides: dict[str, Any] | None, where: str) -> Any:
    """A copy of the config dataclass ``config`` with ``overrides`` applied: the one override rule.

    Values are coerced to the type of the field they replace where that is unambiguous (a JSON list onto
    a tuple field, an int onto a float field), so ``--config betas=[0.9,0.98]`` works from the CLI and a JSON
    round trip gives back an equal config. ``where`` names the config in the error message.

    Raises:
        InvalidInputError: an unknown field (the message lists the valid ones); a value the config class
            rejects.
    """
    if not overrides:
        return config
    check_fields(config, overrides, where)
    coerced = {key: coerce_field(getattr(config, key), value) for key, value in overrides.items()}
    return dataclasses.replace(config, **coerced)


def check_fields(config: Any, keys: Any, where: str) -> None:
    """Refuse keys that name no field of the config dataclass (the message lists the valid ones)."""
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(keys) - fields)
    if unknown:
        raise InvalidInputError(
            f"unknown config field(s) {unknown} for {where}; valid fields: {', '.join(sorted(fields))}"
        )


def coerce_field(current: Any, value: Any) -> Any:
    """A JSON value onto the type of the field it replaces, where that is unambiguous: a list onto a tuple
    field (nested lists too), an int onto a float field, ints inside a tuple of floats."""
    if isinstance(value, list) and isinstance(current, tuple):
        value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, tuple) and current and isinstance(current[0], float):
        return tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
    return value


def create_model(model: str, dataset: str, overrides: dict[str, Any] | None = None) -> nn.Module:
    """``build_model(model, resolve_config(model, dataset, overrides))``.

    Args:
        model: registered model name ("mamfusion", "amdnet", "muse").
        dataset: config name ("tvr", "activitynet", "charades", "demo", ...).
        overrides: field -> value replacements applied before building (``resolve_config``'s rule).

    Raises:
        InvalidInputError: unknown model / config, or an override key that is not a config field (the
            message lists the valid keys).
    """
    return build_model(model, resolve_config(model, dataset, overrides))
