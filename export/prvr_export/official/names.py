"""Parameter-name maps between the authors' official code and our models, written as prefix rules.

Each official module path maps to one of ours (the leaf names ``weight``/``bias``/``A_log``... pass through
unchanged), so a map is a short list of ``(official prefix, our prefix)`` pairs built from a few
per-layer helpers, not a table of every tensor. A prefix ending in ``.`` renames a module subtree; one
without renames exactly that name. The longest matching prefix wins. The same rules read backwards give
``to_official`` (the tests build official-layout checkpoints with it, so their oracle is our own model).

What each official module is, is described in docs/models.md (MamFusion §3.2, AMDNet §4.2, MUSE §5.2):

* layer helpers (GMMFormer code base): ``LinearLayer`` = ``LayerNorm`` + ``net.1`` (the Linear after the
  dropout) -> our ``layer_norm`` / ``linear``; positional encodings keep ``position_embeddings`` and
  rename ``LayerNorm``; ``BertAttention`` = ``self.{query,key,value}`` + ``output.{dense,LayerNorm}`` ->
  our flat ``{query,key,value,dense,layer_norm}``; a ``GMMBlock``'s heads ``attn0..attn3`` -> ``attn.0..3``.
* MamFusion: the two GMM blocks of a branch are separate attributes (``clip_encoder``, ``clip_encoder_2``,
  ``frame_encoder_1``, ``frame_encoder_2``), each followed by a ``<block>_mamba`` list of ``[Mamba,
  LayerNorm]`` -> our ``clip_mamba.N.{mamba,layer_norm}``; the pooling vectors are
  ``modular_vector_mapping`` (queries) and ``modular_vector_mapping_2`` (frames); the fusion modules hold
  ``multihead_attn`` and the never-called 1x1 conv ``vid_embed_proj`` (dropped, docs/models.md §3.5 item 4).
* AMDNet: everything of the video side lives in the one block ``clip_encoder``: ``attn0`` (global) and
  ``attn1`` (moment-masked) attention, ``clip2video.{layernorm,fc_out1}`` (the video-level vector g) and
  ``fc_gauss`` (the span anchors).
* MUSE (CLIP4Clip layout, a bare state dict): residual blocks ``MS_mamba.N.{layer_norm1,mamba,temporal_fc}``
  -> our ``mamba_blocks.N.{norm,mamba,out}`` (BiMamba leaf names are Vim's, unchanged); CLIP's temperature
  ``clip.logit_scale`` -> ``logit_scale``; the rest of ``clip.*`` (the CLIP towers, outside our model) and
  CLIP4Clip's unused ``cross.*`` / ``similarity_dense.*`` are dropped. Upstream never registers the pyramid
  (docs/models.md §5.5 item 1), so it is absent; a fork that registered ``mamba_stages`` as a ModuleList
  has ``mamba_stages.S.K`` -> our ``pyramid.stages.S.K`` (same layer order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["NameMap", "amdnet_map", "mamfusion_map", "muse_map", "name_map", "to_official"]

Rule = tuple[str, str]


@dataclass(frozen=True)
class NameMap:
    """Prefix rules of one model.

    Attributes:
        renames: ``(official prefix, our prefix)`` pairs.
        drops: ``(official prefix, reason)``: official tensors with no counterpart, dropped with a note.
        optional: ``(our prefix, reason)``: our tensors an official file may lack; they keep their
            initial values, with a note.
    """

    renames: tuple[Rule, ...]
    drops: tuple[Rule, ...] = ()
    optional: tuple[Rule, ...] = ()
    _by_official: dict[str, str] = field(init=False, repr=False, compare=False)
    _by_ours: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_official", dict(self.renames))
        object.__setattr__(self, "_by_ours", {ours: off for off, ours in self.renames})

    @staticmethod
    def _match(name: str, prefixes: Any) -> str | None:
        """The longest prefix that matches ``name`` (a ``.``-terminated one as a subtree, else exactly)."""
        best = None
        for prefix in prefixes:
            hit = name.startswith(prefix) if prefix.endswith(".") else name == prefix
            if hit and (best is None or len(prefix) > len(best)):
                best = prefix
        return best

    def to_ours(self, name: str) -> str | None:
        """Our name for an official tensor name, or None when no rule covers it."""
        prefix = self._match(name, self._by_official)
        return None if prefix is None else self._by_official[prefix] + name[len(prefix):]

    def to_official(self, name: str) -> str | None:
        """The official name of one of our tensors, or None when no rule covers it."""
        prefix = self._match(name, self._by_ours)
        return None if prefix is None else self._by_ours[prefix] + name[len(prefix):]

    def drop_reason(self, name: str) -> str | None:
        """Why an official tensor is dropped, or None when it is not."""
        prefix = self._match(name, dict(self.drops))
        return None if prefix is None else dict(self.drops)[prefix]

    def optional_reason(self, name: str) -> str | None:
        """Why one of our tensors may be absent from an official file, or None when it must be present."""
        prefix = self._match(name, dict(self.optional))
        return None if prefix is None else dict(self.optional)[prefix]


# ------------------------------------------------------------------------------------------ layer helpers
def _linear_layer(off: str, ours: str) -> list[Rule]:
    return [(f"{off}.LayerNorm.", f"{ours}.layer_norm."), (f"{off}.net.1.", f"{ours}.linear.")]


def _positions(off: str, ours: str) -> list[Rule]:
    return [
        (f"{off}.position_embeddings.", f"{ours}.position_embeddings."),
        (f"{off}.LayerNorm.", f"{ours}.layer_norm."),
    ]


def _bert_attention(off: str, ours: str) -> list[Rule]:
    rules = [(f"{off}.self.{p}.", f"{ours}.{p}.") for p in ("query", "key", "value")]
    return rules + [
        (f"{off}.output.dense.", f"{ours}.dense."),
        (f"{off}.output.LayerNorm.", f"{ours}.layer_norm."),
    ]


def _gmm_block(off: str, ours: str, heads: int) -> list[Rule]:
    return [rule for i in range(heads) for rule in _bert_attention(f"{off}.attn{i}", f"{ours}.attn.{i}")]


def _mamba_branch(off: str, ours: str) -> list[Rule]:
    """MamFusion's ``[Mamba, LayerNorm]`` list -> our ``MambaResidual``; Mamba leaf names are mamba-ssm's."""
    return [(f"{off}.0.", f"{ours}.mamba."), (f"{off}.1.", f"{ours}.layer_norm.")]


# ------------------------------------------------------------------------------------------ per model
def mamfusion_map(config: Any) -> NameMap:
    """MamFusion (docs/models.md §3.2); ``config.fusion_dead_conv`` keeps the dead conv (else dropped)."""
    heads = 1 + len(config.gmm_widths)
    rules: list[Rule] = []
    for part in ("query", "clip", "frame"):
        rules += _linear_layer(f"{part}_input_proj", f"{part}_input_proj")
        rules += _positions(f"{part}_pos_embed", f"{part}_pos_embed")
    rules += _bert_attention("query_encoder", "query_encoder")
    blocks = {
        "clip_encoder": "clip_encoder.0",
        "clip_encoder_2": "clip_encoder.1",
        "frame_encoder_1": "frame_encoder.0",
        "frame_encoder_2": "frame_encoder.1",
    }
    for off, ours in blocks.items():
        rules += _gmm_block(off, ours, heads)
        rules += _mamba_branch(f"{off}_mamba", ours.replace("_encoder", "_mamba"))
    rules += [
        ("modular_vector_mapping.", "query_pool.score."),
        ("modular_vector_mapping_2.", "frame_pool.score."),
    ]
    drops: list[Rule] = []
    for fusion in ("v2t_fusion", "t2v_fusion"):
        rules.append((f"{fusion}.multihead_attn.", f"{fusion}.attn."))
        if config.fusion_dead_conv:
            rules.append((f"{fusion}.vid_embed_proj.", f"{fusion}.dead_conv."))
        else:
            drops.append(
                (
                    f"{fusion}.vid_embed_proj.",
                    "the fusion modules' 1x1 Conv2d(5 -> 15680) is never called (docs/models.md §3.5 "
                    "item 4); dropped (keep it with --config fusion_dead_conv=true)",
                )
            )
    return NameMap(tuple(rules), tuple(drops))


def amdnet_map(config: Any) -> NameMap:
    """AMDNet (docs/models.md §4.2). In ``score_mode="moments"`` the two attention blocks are not built, so
    their official weights are dropped."""
    rules = _linear_layer("query_input_proj", "query_input_proj")
    rules += _linear_layer("clip_input_proj", "clip_input_proj")
    rules += _positions("clip_pos_embed", "clip_pos_embed")
    rules += [
        ("clip_encoder.clip2video.layernorm.", "video_norm."),
        ("clip_encoder.clip2video.fc_out1.", "video_proj."),
        ("clip_encoder.fc_gauss.", "anchor_proj."),
    ]
    drops: list[Rule] = []
    attention = _bert_attention("clip_encoder.attn0", "global_attn")
    attention += _bert_attention("clip_encoder.attn1", "moment_attn")
    if config.score_mode == "clips":
        rules += attention
    else:
        reason = (
            "score_mode 'moments' ranks by the moment vectors and builds no attention blocks "
            "(docs/models.md §4.3)"
        )
        drops += [("clip_encoder.attn0.", reason), ("clip_encoder.attn1.", reason)]
    return NameMap(tuple(rules), tuple(drops))


MUSE_DROPS: tuple[Rule, ...] = (
    ("clip.", "the CLIP towers stay outside our model, which reads their outputs (docs/models.md §5.1)"),
    ("cross.", "CLIP4Clip's cross encoder is unused with --loose_type, as MUSE trains"),
    ("similarity_dense.", "CLIP4Clip's cross-encoder head is unused with --loose_type, as MUSE trains"),
)
PYRAMID_MISSING = (
    "upstream keeps the pyramid in a plain list, so its checkpoints never hold it (docs/models.md §5.5 "
    "item 1); the pyramid starts from a fixed-seed random draw, as upstream redraws it at every rebuild"
)


def muse_map(config: Any, allow_random_pyramid: bool = False) -> NameMap:
    """MUSE (docs/models.md §5.2), CLIP4Clip's bare state dict. ``allow_random_pyramid`` lets the pyramid
    (which upstream never saves) be absent."""
    rules: list[Rule] = []
    for i in range(config.n_blocks):
        rules += [
            (f"MS_mamba.{i}.layer_norm1.", f"mamba_blocks.{i}.norm."),
            (f"MS_mamba.{i}.mamba.", f"mamba_blocks.{i}.mamba."),
            (f"MS_mamba.{i}.temporal_fc.", f"mamba_blocks.{i}.out."),
        ]
    rules += [(f"mamba_stages.{s}.", f"pyramid.stages.{s}.") for s in range(len(config.pyramid_scales))]
    rules.append(("clip.logit_scale", "logit_scale"))
    optional = [("logit_scale", "no clip.logit_scale in the file; the temperature only matters for training")]
    if allow_random_pyramid:
        optional.append(("pyramid.", PYRAMID_MISSING))
    return NameMap(tuple(rules), MUSE_DROPS, tuple(optional))


def name_map(model_name: str, config: Any, allow_random_pyramid: bool = False) -> NameMap:
    """The ``NameMap`` of ``model_name`` for ``config`` (rules depend on a few architecture options)."""
    if model_name == "mamfusion":
        return mamfusion_map(config)
    if model_name == "amdnet":
        return amdnet_map(config)
    if model_name == "muse":
        return muse_map(config, allow_random_pyramid)
    raise ValueError(f"no official name map for model {model_name!r}")


def to_official(model_name: str, state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Our state dict under the official names (the inverse map); tensors without a rule are left out.

    Used by the tests to build official-layout checkpoints whose oracle is our own model.
    """
    names = name_map(model_name, config)
    out = {}
    for name, tensor in state_dict.items():
        official = names.to_official(name)
        if official is not None:
            out[official] = tensor
    return out
