"""Our config fields for an official checkpoint: from its saved config, from its tensor shapes, and the
options that make our model compute what the official code computes.

Precedence, lowest first: the registry config of ``<model>-<dataset>``; the official config keys we can
map (``OFFICIAL_KEYS``); sizes read off the tensors (they are what the weights are, so they win over a
config that says otherwise, with a note); the official-compatible options (``OFFICIAL_OPTIONS``); the
user's ``--config key=value`` overrides, which win over everything (a size that contradicts the tensors
then fails the strict load with the parameter's name).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from prvr_sdk.errors import InvalidInputError

from ..models.registry import check_fields, coerce_field

__all__ = ["OFFICIAL_KEYS", "OFFICIAL_OPTIONS", "from_official_config", "infer_sizes", "merge"]

# Official config key -> our field (docs/models.md §3.4, §4.5). A key maps only where our config class has
# the field; MamFusion's model_cfg and AMDNet's config use the GMMFormer code base's spellings.
OFFICIAL_KEYS: dict[str, str] = {
    "visual_input_size": "video_feat_dim",
    "visual_feat_dim": "video_feat_dim",
    "query_input_size": "query_feat_dim",
    "q_feat_size": "query_feat_dim",
    "hidden_size": "d_model",
    "max_ctx_l": "max_ctx_l",
    "max_desc_l": "max_desc_l",
    "map_size": "num_clips",
    "input_drop": "input_drop",
    "drop": "drop",
    "n_heads": "n_heads",
    "initializer_range": "initializer_range",
    "margin": "margin",
    "hard_pool_size": "hard_pool_size",
    "hard_negative_start_epoch": "hard_negative_start_epoch",
    "lr": "lr",
    "lr_warmup_proportion": "lr_warmup_proportion",
    "wd": "weight_decay",
    "n_epoch": "n_epoch",
    "max_es_cnt": "max_es_cnt",
    "seed": "seed",
    "batchsize": "batch_size",
    "eval_query_bsz": "eval_query_batch",
    "eval_context_bsz": "eval_video_batch",
    "loss_factor": "loss_factor",
    "neg_factor": "neg_factor",
    "clip_scale_w": "clip_scale_w",
    "frame_scale_w": "frame_scale_w",
}

# Keys the official configs carry that have no meaning for the model itself (paths, loader settings,
# training state); skipped without a note.
IGNORED_KEYS = frozenset(
    {
        "model_name", "dataset_name", "collection", "visual_feature", "root", "data_root", "model_root",
        "ckpt_path", "num_workers", "no_core_driver", "no_pin_memory", "pin_memory", "persistent_workers",
        "prefetch_factor", "use_hard_negative", "batch_size", "max_position_embeddings", "intermediate_size",
    }
)

# Options under which our model computes what the official code computes, for weights it trained.
# MamFusion keeps gmm_length "valid" (docs/models.md §2.2): the runtime batches videos with right padding,
# and for a video encoded alone both rules give the official result; pass --config gmm_length=padded for
# the official padded-batch rule. mamba_init / init_scheme only say how the weights would start.
OFFICIAL_OPTIONS: dict[str, dict[str, Any]] = {
    "mamfusion": {"gmm_widths": (0.5, 1.0, 5.0), "mamba_init": "official"},
    "amdnet": {"score_mode": "clips"},
    "muse": {"pyramid_scales": (0.5, 1.0, 2.0), "init_scheme": "clip4clip"},
}


def from_official_config(
    model_name: str, official: dict[str, Any] | None, fields: set[str]
) -> tuple[dict[str, Any], list[str]]:
    """Map an official config dict onto our fields.

    Returns:
        ``(values, notes)``: our field -> value, and one note per key that could not be used.
    """
    if not official:
        return {}, []
    values: dict[str, Any] = {}
    unused: list[str] = []
    for key, value in official.items():
        ours = OFFICIAL_KEYS.get(key)
        if key in IGNORED_KEYS:
            continue
        if key == "event_size":  # AMDNet: moments K, which must equal the heads (checked from the tensors)
            if model_name == "amdnet":
                values.setdefault("n_heads", value)
            continue
        if ours is None or ours not in fields:
            unused.append(key)
            continue
        values[ours] = value
    if not unused:
        return values, []
    return values, [f"official config keys without a counterpart, not used: {', '.join(sorted(unused))}"]


def _shape(state: dict[str, torch.Tensor], name: str, model_name: str) -> tuple[int, ...]:
    if name not in state:
        raise InvalidInputError(
            f"the official checkpoint has no tensor {name!r}, which every official {model_name} checkpoint "
            "holds; is --model right?"
        )
    return tuple(state[name].shape)


def infer_sizes(model_name: str, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The architecture sizes the official tensors fix (docs/models.md §3.2, §4.2, §5.2), keyed by our fields.

    Raises:
        InvalidInputError: a tensor every checkpoint of ``model_name`` holds is missing (wrong --model?).
    """

    def shape(name: str) -> tuple[int, ...]:
        return _shape(state, name, model_name)

    if model_name == "mamfusion":
        max_desc_l, d_model = shape("query_pos_embed.position_embeddings.weight")
        d_inner, d_state = shape("clip_encoder_mamba.0.A_log")
        return {
            "d_model": d_model,
            "max_desc_l": max_desc_l,
            "max_ctx_l": shape("clip_pos_embed.position_embeddings.weight")[0],
            "query_feat_dim": shape("query_input_proj.LayerNorm.weight")[0],
            "video_feat_dim": shape("clip_input_proj.LayerNorm.weight")[0],
            "d_state": d_state,
            "expand": d_inner // d_model,
            "d_conv": shape("clip_encoder_mamba.0.conv1d.weight")[-1],
        }
    if model_name == "amdnet":
        max_ctx_l, d_model = shape("clip_pos_embed.position_embeddings.weight")
        return {
            "d_model": d_model,
            "max_ctx_l": max_ctx_l,
            "query_feat_dim": shape("query_input_proj.LayerNorm.weight")[0],
            "video_feat_dim": shape("clip_input_proj.LayerNorm.weight")[0],
            "n_heads": shape("clip_encoder.fc_gauss.weight")[0] // 2,  # K moments = H heads
        }
    if model_name == "muse":
        width = shape("MS_mamba.0.layer_norm1.weight")[0]
        d_inner, d_state = shape("MS_mamba.0.mamba.A_log")
        parts = [k.split(".") for k in state if k.startswith("MS_mamba.")]
        blocks = {int(p[1]) for p in parts if p[1].isdigit()}
        return {
            "video_feat_dim": width,
            "query_feat_dim": width,  # CLIP's text projection already gives the width; no text_proj upstream
            "n_blocks": max(blocks) + 1,
            "d_state": d_state,
            "expand": d_inner // width,
            "d_conv": shape("MS_mamba.0.mamba.conv1d.weight")[-1],
        }
    raise InvalidInputError(f"no official import for model {model_name!r}")


def merge(
    base: Any,
    model_name: str,
    official: dict[str, Any],
    sizes: dict[str, Any],
    overrides: dict[str, Any],
) -> tuple[Any, list[str]]:
    """Apply the layers of the module docstring onto ``base`` (a registry config dataclass).

    Returns:
        ``(config, notes)``.

    Raises:
        InvalidInputError: an override names no field of the config, or the result fails validation.
    """
    check_fields(base, overrides, f"--config of {model_name}")
    fields = {f.name for f in dataclasses.fields(base)}
    notes = []
    for key, value in sizes.items():
        if key in official and official[key] != value:
            notes.append(
                f"official config says {key}={official[key]!r}, the tensors say {value!r}; using {value!r}"
            )
    layered: dict[str, Any] = {}
    for layer in (official, sizes, OFFICIAL_OPTIONS.get(model_name, {}), overrides):
        for key, value in layer.items():
            if key in fields:
                layered[key] = coerce_field(getattr(base, key), value)
    try:
        config = dataclasses.replace(base, **layered)
    except InvalidInputError as exc:
        raise InvalidInputError(f"the imported config is not valid for {model_name}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"the imported config is not valid for {model_name}: {exc}") from None
    return config, notes
