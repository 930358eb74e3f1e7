"""Tests for prvr_export/models/registry.py: configs as data, copies, overrides, registration."""

from __future__ import annotations

import dataclasses
import json

import pytest

from prvr_export.models import registry
from prvr_export.models.amdnet import AMDNet, AMDNetConfig
from prvr_export.models.mamfusion import MamFusion, MamFusionConfig
from prvr_sdk.errors import InvalidInputError

# The fields prvr_export.train and prvr_export.data read (notes/issue3-plan.md: names fixed).
TRAINING_FIELDS = (
    "lr",
    "batch_size",
    "n_epoch",
    "max_es_cnt",
    "lr_warmup_proportion",
    "weight_decay",
    "seed",
    "hard_negative_start_epoch",
    "hard_pool_size",
    "margin",
    "eval_video_batch",
    "eval_query_batch",
    "schedule",
    "betas",
    "eps",
    "global_grad_clip",
    "lr_groups",
    "metric",
)
DATA_FIELDS = (
    "video_feat_dim",
    "query_feat_dim",
    "query_type",
    "max_ctx_l",
    "max_desc_l",
    "num_clips",
    "normalize_video",
    "normalize_query",
    "video_source",
    "max_frames",
    "patch_grid",
)
OWN_CONFIGS = [
    f"{m}-{d}" for m in ("amdnet", "mamfusion") for d in ("activitynet", "charades", "demo", "tvr")
]


def split(name: str) -> tuple[str, str]:
    model, dataset = name.split("-", 1)
    return model, dataset


def test_list_configs_holds_every_dataset_of_both_models():
    names = registry.list_configs()
    assert names == sorted(names)
    assert set(OWN_CONFIGS) <= set(names)
    assert {"amdnet", "mamfusion"} <= set(registry.list_models())


@pytest.mark.parametrize("name", registry.list_configs())
def test_every_config_file_loads_onto_its_registered_class(name):
    """Coverage follows the folder: a JSON file of an unregistered model, or with a stray key, fails here."""
    model, dataset = split(name)
    assert model in registry.list_models(), f"{name}.json has no registered model"
    config = registry.get_config(model, dataset)
    fields = {f.name for f in dataclasses.fields(config)}
    missing = [f for f in TRAINING_FIELDS + DATA_FIELDS if f not in fields]
    assert not missing
    with open(registry.CONFIG_DIR / f"{name}.json", encoding="utf-8") as f:
        raw = json.load(f)
    assert set(raw) <= fields


@pytest.mark.parametrize("model", ["amdnet", "mamfusion"])
def test_demo_configs_are_small_and_fit_the_demo_corpus(model):
    config = registry.get_config(model, "demo")
    assert (config.video_feat_dim, config.query_feat_dim, config.d_model, config.n_heads) == (
        128,
        384,
        128,
        4,
    )
    assert config.max_ctx_l <= 128 and config.num_clips == 32
    assert config.query_type == ("tokens" if model == "mamfusion" else "sentence")
    assert config.batch_size <= 128 and config.n_epoch <= 40 and config.max_es_cnt <= 10


def test_get_config_returns_frozen_fresh_copies():
    a = registry.get_config("mamfusion", "tvr")
    b = registry.get_config("mamfusion", "tvr")
    assert isinstance(a, MamFusionConfig)
    assert a == b and a is not b
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.lr = 1.0
    # JSON lists arrive as tuples, so nothing inside can be edited either.
    assert isinstance(a.betas, tuple) and isinstance(a.loss_factor, tuple) and isinstance(a.gmm_widths, tuple)


def test_paper_configs_carry_the_spec_values():
    tvr = registry.get_config("mamfusion", "tvr")
    assert (tvr.batch_size, tvr.lr, tvr.max_ctx_l, tvr.n_heads, tvr.drop) == (256, 4.5e-4, 512, 8, 0.45)
    assert tvr.loss_factor == (0.027, 0.045, 0.015) and tvr.neg_factor == (0.2, 32.0)
    cha = registry.get_config("mamfusion", "charades")
    assert (cha.n_heads, cha.max_ctx_l, cha.n_epoch, cha.max_es_cnt, cha.hard_negative_start_epoch) == (
        4,
        1024,
        400,
        10,
        100,
    )
    amd = registry.get_config("amdnet", "activitynet")
    assert isinstance(amd, AMDNetConfig)
    assert (amd.d_model, amd.lr, amd.seed, amd.loss_factor, amd.normalize_video) == (
        256,
        2.5e-4,
        3407,
        (0.02, 1.0),
        False,
    )


def test_create_model_applies_overrides():
    model = registry.create_model("amdnet", "demo", overrides={"d_model": 64, "score_mode": "moments"})
    assert isinstance(model, AMDNet)
    assert model.config.d_model == 64 and model.config.score_mode == "moments"
    assert registry.get_config("amdnet", "demo").d_model == 128  # the registry's copy is untouched


def test_resolve_config_applies_and_checks_overrides():
    config = registry.resolve_config(
        "amdnet", "demo", {"betas": [0.9, 0.98], "lr": 1, "lr_groups": [["mamba", 10]]}
    )
    assert config.betas == (0.9, 0.98) and isinstance(config.lr, float) and config.lr == 1.0
    assert config.lr_groups == (("mamba", 10),)
    with pytest.raises(
        InvalidInputError, match=r"unknown config field\(s\) \['learning_rate'\].*valid fields"
    ):
        registry.resolve_config("amdnet", "demo", {"learning_rate": 1.0})


def test_apply_overrides_works_on_any_config_and_names_it():
    base = registry.get_config("amdnet", "demo")
    assert registry.apply_overrides(base, None, "x") is base
    assert registry.apply_overrides(base, {"lr": 2}, "x").lr == 2.0 and base.lr != 2.0
    with pytest.raises(InvalidInputError, match=r"unknown config field\(s\) \['nope'\] for my checkpoint"):
        registry.apply_overrides(base, {"nope": 1}, "my checkpoint")


def test_create_model_uses_the_same_override_rule():
    """One rule: an override means the same to create_model as to training (JSON ints onto float fields)."""
    model = registry.create_model("amdnet", "demo", overrides={"lr": 1})
    assert model.config == registry.resolve_config("amdnet", "demo", {"lr": 1})
    assert isinstance(model.config.lr, float)


def test_unknown_override_key_lists_valid_keys():
    with pytest.raises(InvalidInputError) as info:
        registry.create_model("mamfusion", "demo", overrides={"hidden_size": 64})
    message = str(info.value)
    assert "hidden_size" in message and "d_model" in message and "lr" in message


def test_bad_override_value_is_rejected():
    with pytest.raises(InvalidInputError, match="mamba_init"):
        registry.create_model("mamfusion", "demo", overrides={"mamba_init": "xavier"})


def test_unknown_model_and_dataset():
    with pytest.raises(InvalidInputError, match="registered models"):
        registry.get_config("gmmformer", "tvr")
    with pytest.raises(InvalidInputError, match="available"):
        registry.get_config("mamfusion", "msrvtt")


def test_build_model_accepts_dict_and_rejects_other_config_class():
    config = registry.get_config("mamfusion", "demo")
    model = registry.build_model("mamfusion", registry.config_to_dict(config))
    assert isinstance(model, MamFusion) and model.config == config
    with pytest.raises(InvalidInputError, match="MamFusionConfig"):
        registry.build_model("mamfusion", registry.get_config("amdnet", "demo"))


def test_config_to_dict_round_trips_through_json():
    config = registry.get_config("amdnet", "tvr")
    rebuilt = AMDNetConfig(**json.loads(json.dumps(registry.config_to_dict(config))))
    assert rebuilt == config


def test_register_model_checks_classes():
    registry.register_model("mamfusion", MamFusionConfig, MamFusion)  # idempotent
    with pytest.raises(InvalidInputError, match="already registered"):
        registry.register_model("mamfusion", AMDNetConfig, AMDNet)

    @dataclasses.dataclass(frozen=True)
    class Partial:
        lr: float = 1e-3

    with pytest.raises(InvalidInputError, match="batch_size"):
        registry.register_model("partial", Partial, MamFusion)
    assert "partial" not in registry.list_models()
