"""Importing checkpoints written by the authors' official code (``prvr_export.official``).

Oracle: our own model. Each test builds a demo-sized model with a fixed seed, writes its weights under the
official names (the inverse name map) in the official file layout, imports that file, loads the produced
run with ``load_checkpoint`` and compares ``encode_video`` / ``encode_text`` / ``score`` with the original
on random inputs. The official config object (an ``easydict.EasyDict``) is pickled from a stand-in class
registered as ``easydict.EasyDict`` only while saving; the loader never imports easydict.
"""

from __future__ import annotations

import os
import sys
import types

import pytest

torch = pytest.importorskip("torch")

import prvr_export.models  # noqa: E402,F401
from prvr_export.models.registry import create_model  # noqa: E402
from prvr_export.official import import_official, load_restricted, read_official, to_official  # noqa: E402
from prvr_export.train.evaluate import load_checkpoint  # noqa: E402
from prvr_sdk.errors import InvalidInputError  # noqa: E402

ATOL = 1e-6


class EasyDict(dict):
    """Behaves like easydict's class for pickling: a dict subclass that mirrors its items as attributes."""

    def __init__(self, d=None, **kwargs):
        super().__init__()
        for k, v in {**(d or {}), **kwargs}.items():
            setattr(self, k, v)

    def __setattr__(self, name, value):
        if isinstance(value, dict) and not isinstance(value, EasyDict):
            value = EasyDict(value)
        super().__setattr__(name, value)
        super().__setitem__(name, value)


def save_official(path, payload, monkeypatch):
    """torch.save with ``EasyDict`` pickled as ``easydict.EasyDict``, the way the official code has it."""
    fake = types.ModuleType("easydict")
    fake.EasyDict = EasyDict
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "easydict", fake)
        m.setattr(EasyDict, "__module__", "easydict")
        torch.save(payload, path)
    return path


def build(model_name, seed=0, **overrides):
    torch.manual_seed(seed)
    return create_model(model_name, "demo", overrides or None).eval()


def official_cfg(model):
    """The official model config (GMMFormer code-base spellings) of one of our PRVR models."""
    c = model.config
    cfg = {
        "visual_input_size": c.video_feat_dim,
        "query_input_size": c.query_feat_dim,
        "hidden_size": c.d_model,
        "max_ctx_l": c.max_ctx_l,
        "max_desc_l": c.max_desc_l,
        "map_size": c.num_clips,
        "input_drop": c.input_drop,
        "drop": c.drop,
        "n_heads": c.n_heads,
        "initializer_range": c.initializer_range,
        "margin": c.margin,
        "use_hard_negative": False,
        "hard_pool_size": c.hard_pool_size,
        "data_root": "/home/someone/netdisk",
        "nested": {"unknown_knob": 1},
    }
    return EasyDict(cfg)


def inputs(model_name, gen):
    """Random video and query inputs of the demo sizes, with right padding."""
    if model_name == "muse":
        patches = torch.randn(3, 5, 5, 128, generator=gen)
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
        return {"patches": patches, "frame_mask": mask}, {"query": torch.randn(4, 128, generator=gen)}
    clips = torch.randn(3, 32, 128, generator=gen)
    if model_name == "amdnet":
        return {"clips": clips}, {"query": torch.randn(4, 384, generator=gen)}
    frames = torch.randn(3, 40, 128, generator=gen)
    mask = torch.ones(3, 40)
    mask[1, 25:] = 0
    mask[2, 7:] = 0
    qmask = torch.ones(4, 12)
    qmask[0, 5:] = 0
    video = {"clips": clips, "frames": frames, "frame_mask": mask}
    return video, {"query": torch.randn(4, 12, 384, generator=gen), "query_mask": qmask}


@torch.no_grad()
def assert_same_outputs(model_name, expected, got):
    gen = torch.Generator().manual_seed(1)
    video_in, text_in = inputs(model_name, gen)
    ve, vg = expected.encode_video(**video_in), got.encode_video(**video_in)
    assert ve.keys() == vg.keys()
    for key in ve:
        torch.testing.assert_close(vg[key], ve[key], atol=ATOL, rtol=0)
    te, tg = expected.encode_text(**text_in), got.encode_text(**text_in)
    torch.testing.assert_close(tg, te, atol=ATOL, rtol=0)
    (se, be), (sg, bg) = expected.score(te, ve), got.score(tg, vg)
    torch.testing.assert_close(sg, se, atol=ATOL, rtol=0)
    assert (be is None and bg is None) or torch.equal(be, bg)


# ------------------------------------------------------------------------------------------ round trips
def test_amdnet_round_trip(tmp_path, monkeypatch):
    """Heads (= moments K) come from the tensors: 2 here, where the demo config says 4."""
    model = build("amdnet", n_heads=2)
    payload = {
        "model": to_official("amdnet", model.state_dict(), model.config),
        "model_cfg": official_cfg(model),
        "epoch": 7,
    }
    assert "clip_encoder.attn1.self.query.weight" in payload["model"]
    assert "query_input_proj.net.1.weight" in payload["model"]
    src = save_official(tmp_path / "amdnet.ckpt", payload, monkeypatch)
    summary = import_official("amdnet", src, "demo", tmp_path / "run")
    loaded, config = load_checkpoint(tmp_path / "run")
    assert config.n_heads == 2 and summary["epoch"] == 7
    assert any("nested" in note for note in summary["notes"])  # unknown official keys: a note, not an error
    assert_same_outputs("amdnet", model, loaded)


def test_mamfusion_round_trip_drops_the_dead_conv(tmp_path, monkeypatch):
    """Heads come from model_cfg (not inferable from shapes); the dead fusion conv is dropped with a note."""
    model = build("mamfusion", n_heads=8)
    state = to_official("mamfusion", model.state_dict(), model.config)
    assert "clip_encoder.attn0.self.query.weight" in state and "frame_encoder_2_mamba.0.A_log" in state
    for fusion in ("v2t_fusion", "t2v_fusion"):
        state[f"{fusion}.vid_embed_proj.weight"] = torch.randn(15680, 5, 1, 1)
        state[f"{fusion}.vid_embed_proj.bias"] = torch.randn(15680)
    payload = {"model": state, "model_cfg": official_cfg(model), "epoch": 3}
    src = save_official(tmp_path / "mamfusion.ckpt", payload, monkeypatch)
    summary = import_official("mamfusion", src, "demo", tmp_path / "run")
    loaded, config = load_checkpoint(tmp_path / "run")
    assert config.n_heads == 8 and not config.fusion_dead_conv
    assert any("dropped 4" in note and "vid_embed_proj" in note for note in summary["notes"])
    assert_same_outputs("mamfusion", model, loaded)


def test_mamfusion_released_layout_state_dict_and_config_keys(tmp_path, monkeypatch):
    """The released save_ckpt writes ``state_dict`` + a plain ``config`` dict (with numpy recalls)."""
    np = pytest.importorskip("numpy")
    model = build("mamfusion", seed=3)
    cfg = {"q_feat_size": 384, "visual_feat_dim": 128, "hidden_size": 128, "n_heads": 4, "max_ctx_l": 64}
    payload = {
        "config": cfg,
        "epoch": 0,
        "model_val": [np.float64(10.5)] * 5,
        "state_dict": to_official("mamfusion", model.state_dict(), model.config),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
    }
    src = save_official(tmp_path / "released.ckpt", payload, monkeypatch)
    import_official("mamfusion", src, "demo", tmp_path / "run")
    loaded, _ = load_checkpoint(tmp_path / "run")
    assert_same_outputs("mamfusion", model, loaded)


def test_muse_round_trip_bare_state_dict(tmp_path):
    """A bare CLIP4Clip state dict: sizes inferred from the tensors, clip.* dropped, logit_scale kept."""
    model = build("muse", query_feat_dim=128)
    state = to_official("muse", model.state_dict(), model.config)
    assert "MS_mamba.1.temporal_fc.weight" in state and "clip.logit_scale" in state
    state["clip.visual.proj"] = torch.randn(768, 128)
    state["clip.token_embedding.weight"] = torch.randn(10, 128)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "pytorch_model.bin.4")
    summary = import_official("muse", tmp_path / "pytorch_model.bin.4", "demo", tmp_path / "run")
    loaded, config = load_checkpoint(tmp_path / "run")
    assert config.query_feat_dim == 128 and config.n_blocks == 2
    assert any("dropped 2" in n and "CLIP" in n for n in summary["notes"])
    torch.testing.assert_close(loaded.logit_scale, model.logit_scale)
    assert_same_outputs("muse", model, loaded)


def test_muse_without_pyramid_needs_consent(tmp_path):
    """Upstream never saves the pyramid: refused by default, loaded with a note when allowed."""
    model = build("muse", query_feat_dim=128)
    state = to_official("muse", model.state_dict(), model.config)
    state = {k: v for k, v in state.items() if not k.startswith("mamba_stages.")}
    torch.save(state, tmp_path / "muse.bin")
    with pytest.raises(InvalidInputError, match=r"missing .*pyramid\.stages\.0.*--random-pyramid"):
        import_official("muse", tmp_path / "muse.bin", "demo", tmp_path / "run")
    assert not (tmp_path / "run").exists()
    summary = import_official(
        "muse", tmp_path / "muse.bin", "demo", tmp_path / "run", allow_random_pyramid=True
    )
    assert any("pyramid" in n and "initial value" in n for n in summary["notes"])
    loaded, _ = load_checkpoint(tmp_path / "run")
    torch.testing.assert_close(loaded.mamba_blocks[0].out.weight, model.mamba_blocks[0].out.weight)


# ------------------------------------------------------------------------------------------ strictness
def _amdnet_file(tmp_path, monkeypatch, edit):
    model = build("amdnet")
    state = to_official("amdnet", model.state_dict(), model.config)
    edit(state)
    payload = {"model": state, "model_cfg": official_cfg(model)}
    return save_official(tmp_path / "edited.ckpt", payload, monkeypatch)


def test_missing_official_tensor_is_named(tmp_path, monkeypatch):
    src = _amdnet_file(tmp_path, monkeypatch, lambda s: s.pop("clip_encoder.attn1.output.dense.weight"))
    with pytest.raises(InvalidInputError, match=r"1 missing .*moment_attn\.dense\.weight"):
        import_official("amdnet", src, "demo", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unexpected_official_tensor_is_named(tmp_path, monkeypatch):
    extra = {"clip_encoder.extra.weight": torch.ones(3)}
    src = _amdnet_file(tmp_path, monkeypatch, lambda s: s.update(extra))
    with pytest.raises(InvalidInputError, match=r"1 unexpected .*clip_encoder\.extra\.weight"):
        import_official("amdnet", src, "demo", tmp_path / "run")


def test_shape_mismatch_from_an_override_is_named(tmp_path, monkeypatch):
    src = _amdnet_file(tmp_path, monkeypatch, lambda s: None)
    with pytest.raises(InvalidInputError, match=r"with another shape: .*query_input_proj"):
        import_official("amdnet", src, "demo", tmp_path / "run", {"query_feat_dim": 512})


def test_wrong_model_says_so(tmp_path, monkeypatch):
    src = _amdnet_file(tmp_path, monkeypatch, lambda s: None)
    with pytest.raises(InvalidInputError, match=r"no tensor .*mamfusion.*--model"):
        import_official("mamfusion", src, "demo", tmp_path / "run")


def test_existing_out_needs_overwrite_and_a_run_folder(tmp_path, monkeypatch):
    src = _amdnet_file(tmp_path, monkeypatch, lambda s: None)
    import_official("amdnet", src, "demo", tmp_path / "run")
    with pytest.raises(InvalidInputError, match="--overwrite"):
        import_official("amdnet", src, "demo", tmp_path / "run")
    import_official("amdnet", src, "demo", tmp_path / "run", overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not a prvr run folder"):
        import_official("amdnet", src, "demo", tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ------------------------------------------------------------------------------------------ safety
class Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    model = build("amdnet")
    payload = {
        "model": to_official("amdnet", model.state_dict(), model.config),
        "model_cfg": official_cfg(model),
        "epoch": Evil(marker),
    }
    src = save_official(tmp_path / "evil.ckpt", payload, monkeypatch)
    with pytest.raises(InvalidInputError, match=r"refusing to load (posix|nt|os)\.system"):
        import_official("amdnet", src, "demo", tmp_path / "run")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_easydict_config_loads_as_a_plain_dict(tmp_path, monkeypatch):
    cfg = EasyDict(hidden_size=128, sub={"a": 1})
    src = save_official(tmp_path / "cfg.ckpt", {"model": {"w": torch.ones(2)}, "model_cfg": cfg}, monkeypatch)
    assert "easydict" not in sys.modules
    obj = load_restricted(src)
    assert type(obj["model_cfg"]) is dict and obj["model_cfg"] == {"hidden_size": 128, "sub": {"a": 1}}
    assert type(obj["model_cfg"]["sub"]) is dict
    assert read_official(src).config == {"hidden_size": 128, "sub": {"a": 1}}


def test_size_limit_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    with pytest.raises(InvalidInputError, match="above the limit"):
        load_restricted(path, max_bytes=100)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a zip and not a pickle")
    with pytest.raises(InvalidInputError, match="not a readable torch checkpoint"):
        load_restricted(path)
