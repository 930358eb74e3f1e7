"""Tests for prvr_export/models/muse.py and prvr_export/nn/pyramid.py (docs/models.md §5, §6).

Everything except the parameter count runs at toy sizes (C = 16, a 2x2 patch grid): the BiMamba scan over the
paper's 3,060-token sequence is slow on a CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prvr_export.losses import symmetric_infonce
from prvr_export.models import create_model, get_config, list_configs
from prvr_export.models.muse import (
    Muse,
    MuseConfig,
    pack_order,
    scale_wise_sequence,
    sequence_frame_index,
)
from prvr_export.nn.pyramid import ChannelLayerNorm, FeaturePyramid, scaled_grid
from prvr_export.train.optim import param_groups
from prvr_sdk.errors import InvalidInputError, ShapeMismatchError

TOY = {
    "video_feat_dim": 16,
    "query_feat_dim": 16,
    "patch_grid": 2,
    "max_frames": 12,
    "max_ctx_l": 12,
    "n_blocks": 2,
    "d_state": 4,
}


def _toy(seed: int = 0, perturb: bool = True, **overrides) -> Muse:
    """A toy MUSE in eval mode. ``perturb`` moves the zero-initialised block outputs off zero, so that the
    BiMamba blocks actually change the frame features (with the intended init every block is the identity)."""
    torch.manual_seed(seed)
    model = Muse(MuseConfig(**{**TOY, **overrides})).eval()
    if perturb:
        with torch.no_grad():
            for block in model.mamba_blocks:
                block.out.weight.normal_(0.0, 0.3)
                block.out.bias.normal_(0.0, 0.3)
    return model


def _patches(batch: int, frames: int, grid: int = 2, c: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 1 + grid * grid, c, generator=g)


# ---------------------------------------------------------------------------------------------
# Parameter counts (docs/models.md §6): 4.69 M registered ResMamba blocks + 8.27 M pyramid convs at C = 512.


def _bimamba_params(c: int, expand: int, d_state: int, d_conv: int) -> int:
    d_inner = expand * c
    dt_rank = math.ceil(c / 16)
    per_direction = (
        d_inner * d_conv + d_inner  # conv1d (depthwise) + bias
        + d_inner * (dt_rank + 2 * d_state)  # x_proj, no bias
        + dt_rank * d_inner + d_inner  # dt_proj
        + d_inner * d_state + d_inner  # A_log, D
    )
    return c * 2 * d_inner + 2 * per_direction + d_inner * c  # in_proj + both directions + out_proj


def _pyramid_params(c: int) -> int:
    """The three branches from their layer shapes (conv weight + bias, channel-LN weight + bias)."""
    conv1 = lambda cin: cin * c + c  # noqa: E731  (1x1 conv)
    conv3 = c * c * 9 + c
    ln = 2 * c
    head = lambda cin: conv1(cin) + ln + conv3 + ln  # noqa: E731
    up = c * (c // 2) * 2 * 2 + c // 2  # ConvTranspose2d(C -> C/2, k 2): weight [C, C/2, 2, 2] + bias
    return head(c) + head(c) + (up + head(c // 2))  # 0.5 (max-pool, no params), 1.0, 2.0


def test_paper_config_parameter_count_matches_models_md():
    model = create_model("muse", "msrvtt")
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    c = 512
    block = 2 * c + _bimamba_params(c, expand=1, d_state=16, d_conv=4) + c * c + c  # LN + BiMamba + Linear
    assert _bimamba_params(512, 1, 16, 4) == 908_288  # docs/models.md §6 per-block figure
    # Analytic pyramid: 2,624,512 (0.5) + 2,624,512 (1.0) + 3,017,984 (2.0) = 8,267,008 = §6's 8.27 M.
    assert _pyramid_params(c) == 8_267_008
    assert count(model.pyramid) == _pyramid_params(c)
    assert count(model.mamba_blocks) == 4 * block == 4_687_872
    assert model.text_proj is None  # CLIP text features are already C = 512
    # The whole model: blocks + pyramid + logit_scale. Nothing is dropped.
    total = count(model)
    inference = total - model.logit_scale.numel()  # logit_scale only scales the training logits
    assert total == 12_954_881
    assert abs(inference - 12.96e6) / 12.96e6 < 0.01
    assert abs(total - 12.96e6) / 12.96e6 < 0.01
    assert abs(count(model.mamba_blocks) - 4.69e6) / 4.69e6 < 0.01
    assert abs(count(model.pyramid) - 8.27e6) / 8.27e6 < 0.01


def test_pyramid_is_registered_and_saved():
    # docs/models.md §5.5 item 1: upstream's branches sit in a plain list; here they are in state_dict and
    # named_parameters.
    model = _toy(perturb=False)
    keys = model.state_dict().keys()
    assert any(k.startswith("pyramid.stages.2.0.") for k in keys)  # the 2.0 branch's ConvTranspose2d
    names = [n for n, _ in model.named_parameters()]
    # 3 heads x (2 convs + 2 LNs) x (weight, bias), plus the ConvTranspose2d's weight and bias.
    assert sum(n.startswith("pyramid.") for n in names) == 3 * 8 + 2


# ---------------------------------------------------------------------------------------------
# Registry and configs.


def test_configs_are_registered_and_complete():
    assert {"muse-demo", "muse-msrvtt"} <= set(list_configs())
    paper = get_config("muse", "msrvtt")
    assert isinstance(paper, MuseConfig)
    expected = {
        "video_feat_dim": 512, "query_feat_dim": 512, "max_frames": 12, "patch_grid": 7, "expand": 1,
        "d_state": 16, "d_conv": 4, "n_blocks": 4, "lr": 1e-4, "lr_groups": (("mamba", 10.0),),
        "batch_size": 128, "n_epoch": 5, "schedule": "warmup_cosine", "lr_warmup_proportion": 0.1,
        "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.2, "global_grad_clip": 1.0, "metric": "r1",
        "seed": 42, "query_type": "sentence", "video_source": "patches", "pyramid_scales": (0.5, 1.0, 2.0),
        "logit_scale_init": math.log(100.0),  # pretrained CLIP's value, which upstream keeps (lr 1e-7)
    }
    assert {k: getattr(paper, k) for k in expected} == expected
    demo = get_config("muse", "demo")
    assert (demo.video_feat_dim, demo.query_feat_dim, demo.patch_grid) == (128, 384, 2)
    model = create_model("muse", "demo")
    assert model.text_proj is not None and model.text_proj.in_features == 384


def test_config_rejects_bad_values():
    with pytest.raises(InvalidInputError, match="init_scheme"):
        MuseConfig(init_scheme="xavier")
    with pytest.raises(InvalidInputError, match="pyramid_scales"):
        MuseConfig(pyramid_scales=(0.5, 3.0))
    with pytest.raises(InvalidInputError, match="video_source"):
        MuseConfig(video_source="bigfile")


def test_lr_groups_and_decay_tags():
    # "mamba" (10x) reaches every tensor of the residual blocks and nothing of the pyramid; logit_scale
    # never decays.
    model = _toy(perturb=False)
    groups = param_groups(model, lr=1e-4, weight_decay=0.2, lr_groups=model.config.lr_groups)
    fast = {n for g in groups if g["lr"] == pytest.approx(1e-3) for n in g["names"]}
    assert fast == {n for n, _ in model.named_parameters() if n.startswith("mamba_blocks.")}
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    assert "logit_scale" in no_decay


# ---------------------------------------------------------------------------------------------
# Pyramid and sequence layout.


@pytest.mark.parametrize(
    ("grid", "sides", "tokens"),
    [(7, (3, 7, 14), 254), (2, (1, 2, 4), 21), (14, (7, 14, 28), 1029)],
)
def test_pyramid_output_sizes(grid, sides, tokens):
    pyramid = FeaturePyramid(8, grid)
    out = pyramid(torch.randn(3, 8, grid, grid))
    assert [tuple(o.shape) for o in out] == [(3, 8, s, s) for s in sides]
    assert pyramid.grids == sides and pyramid.tokens_per_image == tokens


def test_pyramid_rejects_bad_inputs():
    with pytest.raises(InvalidInputError, match="at least 2"):
        FeaturePyramid(8, 1)
    with pytest.raises(ShapeMismatchError, match=r"\(N, 8, 2, 2\)"):
        FeaturePyramid(8, 2)(torch.randn(1, 8, 3, 3))
    assert scaled_grid(7, 0.25) == 1 and scaled_grid(7, 4.0) == 28


def test_scale_wise_sequence_order():
    # B = 1, T = 2 frames, C = 1; token values encode where they come from, so the order is readable:
    # CLS of frame t = 1000 + t; scale s, frame t, row r, col q = 100 s + 10 t + (r * side + q).
    t_frames = 2
    cls = torch.tensor([[[1000.0], [1001.0]]])  # (1 2 1)
    maps = []
    for s, side in enumerate((1, 2, 3)):
        vals = [100 * s + 10 * t + torch.arange(side * side, dtype=torch.float32) for t in range(t_frames)]
        maps.append(torch.stack(vals).reshape(t_frames, 1, side, side))  # (B*T C h w)
    seq = scale_wise_sequence(cls, maps)[0, :, 0].tolist()
    expected = [1000, 1001]
    for s, side in enumerate((1, 2, 3)):
        for t in range(t_frames):
            expected += [100 * s + 10 * t + k for k in range(side * side)]
    assert seq == expected
    frame_of = [0, 1] + [0, 1] + [0] * 4 + [1] * 4 + [0] * 9 + [1] * 9
    assert sequence_frame_index(2, (1, 2, 3)).tolist() == frame_of


def test_pack_order_is_a_stable_partition():
    valid = torch.tensor([[True, False, True, True, False], [True, True, True, True, True]])
    dest, prefix = pack_order(valid)
    assert dest.tolist() == [[0, 3, 1, 2, 4], [0, 1, 2, 3, 4]]
    assert prefix.tolist() == [[True, True, True, False, False], [True] * 5]


# ---------------------------------------------------------------------------------------------
# Encoders, score, padding.


def test_shapes_and_unit_norms():
    model = _toy()
    mask = torch.ones(3, 12)
    mask[1, 7:] = 0
    video = model.encode_video(patches=_patches(3, 12), frame_mask=mask)
    assert set(video) == {"video_emb"} and video["video_emb"].shape == (3, 16)
    text = model.encode_text(torch.randn(5, 16))
    assert text.shape == (5, 16)
    torch.testing.assert_close(video["video_emb"].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(5))
    scores, best = model.score(text, video)
    assert scores.shape == (5, 3) and best is None
    assert model.frame_features(_patches(3, 12), mask).shape == (3, 12, 16)


def test_input_shape_errors_name_the_tensor():
    model = _toy()
    with pytest.raises(ShapeMismatchError, match="patches"):
        model.encode_video(patches=torch.randn(2, 12, 10, 16))  # 1 + 3*3 tokens, grid is 2
    with pytest.raises(ShapeMismatchError, match="frame_mask"):
        model.encode_video(patches=_patches(2, 12), frame_mask=torch.ones(2, 11))
    with pytest.raises(ShapeMismatchError, match="query"):
        model.encode_text(torch.randn(4, 17))


def test_score_is_dot_product_of_unit_vectors():
    model = _toy()
    patches, mask = _patches(4, 6), torch.ones(4, 6)
    mask[2, 3:] = 0
    query = torch.randn(7, 16)
    scores, _ = model.score(model.encode_text(query), model.encode_video(patches=patches, frame_mask=mask))
    # Independently: normalise frames, masked mean over valid frames, normalise; cosine with the query.
    feats = model.frame_features(patches, mask)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    pooled = torch.stack([feats[b, mask[b] > 0].mean(0) for b in range(4)])
    v = pooled / pooled.norm(dim=-1, keepdim=True)
    t = query / query.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(scores, t @ v.T, rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_valid_outputs():
    model = _toy()
    clip = _patches(1, 5, seed=3)
    alone = model.encode_video(patches=clip, frame_mask=torch.ones(1, 5))["video_emb"]
    # The same 5 frames padded to T = 12 (random padding content), batched with a full-length video.
    padded = torch.cat([clip, 5.0 * _patches(1, 7, seed=4)], dim=1)
    batch = torch.cat([padded, _patches(1, 12, seed=5)])
    mask = torch.ones(2, 12)
    mask[0, 5:] = 0
    together = model.encode_video(patches=batch, frame_mask=mask)["video_emb"]
    torch.testing.assert_close(together[0:1], alone, rtol=0, atol=1e-5)
    # Frame features of the valid slots agree too.
    torch.testing.assert_close(
        model.frame_features(batch, mask)[0, :5], model.frame_features(clip)[0], rtol=0, atol=1e-5
    )
    # Padding need not be a suffix: frames scattered among padded slots behave like the valid frames alone.
    scattered = 5.0 * _patches(1, 12, seed=6)
    slots = torch.tensor([0, 2, 3, 7, 11])
    scattered[0, slots] = clip[0]
    smask = torch.zeros(1, 12)
    smask[0, slots] = 1
    moved = model.encode_video(patches=scattered, frame_mask=smask)["video_emb"]
    torch.testing.assert_close(moved, alone, rtol=0, atol=1e-5)
    # The test is sensitive: running the scan over the padded sequence (upstream) changes the result.
    leaky = F.normalize(F.normalize(model.frame_features(padded)[0, :5], dim=-1).mean(0), dim=0)
    assert (leaky - alone[0]).abs().max() > 1e-3


def test_intended_init_starts_as_clip_mean_pooling():
    # Zero-initialised block outputs: each block is the identity, so the model is CLIP4Clip's meanP.
    model = _toy(perturb=False)
    patches, mask = _patches(2, 4), torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    cls = F.normalize(patches[:, :, 0], dim=-1)
    expected = F.normalize((cls * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    torch.testing.assert_close(model.encode_video(patches=patches, frame_mask=mask)["video_emb"], expected)


def test_clip4clip_init_reproduces_upstream_reinit():
    model = _toy(perturb=False, init_scheme="clip4clip", video_feat_dim=64, query_feat_dim=64)
    block = model.mamba_blocks[0]
    assert torch.all(block.mamba.dt_proj.bias == 0) and torch.all(block.out.bias == 0)
    assert abs(block.out.weight.std().item() - 0.02) < 0.003
    intended = _toy(perturb=False, video_feat_dim=64, query_feat_dim=64).mamba_blocks[0]
    assert torch.all(intended.out.weight == 0)
    dt = F.softplus(intended.mamba.dt_proj.bias)  # mamba-ssm's init: softplus(bias) in [dt_min, dt_max]
    assert torch.all(dt >= 1e-3 - 1e-7) and torch.all(dt <= 0.1 + 1e-7)


# ---------------------------------------------------------------------------------------------
# Loss, gradients, temperature.


def _loss_with_embeddings(model, text, video, query_video, scale):
    """Model.loss with encode_text / encode_video replaced by fixed embeddings."""
    model.encode_text = lambda query, query_mask=None: text
    model.encode_video = lambda patches, frame_mask=None: {"video_emb": video}
    with torch.no_grad():
        model.logit_scale.fill_(math.log(scale))
    batch = {"patches": None, "frame_mask": None, "query": None, "query_video": torch.tensor(query_video)}
    return model.loss(batch, epoch=0)


def test_loss_hand_computed_two_by_two():
    model = _toy(perturb=False)
    eye = torch.eye(2)
    loss, parts = _loss_with_embeddings(model, eye, eye, [0, 1], scale=2.0)
    # logits = [[2, 0], [0, 2]]: all four cross-entropy terms are -log(e^2 / (e^2 + 1)) = log(1 + e^-2).
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    assert parts["logit_scale"] == pytest.approx(2.0) and parts["infonce"] == pytest.approx(loss.item())
    # With one caption per video the loss is CLIP4Clip's 1/2 [CE(logits) + CE(logits^T)].
    t, v = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    loss, _ = _loss_with_embeddings(model, t, v, [0, 1, 2], scale=5.0)
    torch.testing.assert_close(loss, symmetric_infonce(5.0 * t @ v.T))


def test_loss_multi_positive_hand_computed():
    # Captions 0 and 1 belong to video 0, caption 2 to video 1; scale 1, so logits = t @ v^T = t.
    model = _toy(perturb=False)
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    loss, _ = _loss_with_embeddings(model, text, torch.eye(2), [0, 0, 1], scale=1.0)
    lse = lambda *xs: math.log(sum(math.exp(x) for x in xs))  # noqa: E731
    t2v = ((lse(1, 0) - 1) + (lse(0.6, 0.8) - 0.6) + (lse(0, 1) - 1)) / 3
    v2t = ((lse(1, 0.6, 0) - lse(1, 0.6)) + (lse(0, 0.8, 1) - 1)) / 2
    assert loss.item() == pytest.approx(0.5 * (t2v + v2t), rel=1e-6)


def test_backward_reaches_every_parameter():
    model = _toy().train()
    mask = torch.ones(3, 4)
    mask[2, 2:] = 0
    batch = {
        "patches": _patches(3, 4),
        "frame_mask": mask,
        "query": torch.randn(4, 16),
        "query_video": torch.tensor([0, 1, 1, 2]),
    }
    loss, _ = model.loss(batch, epoch=0)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []
    # the fix of docs/models.md §5.5 item 1
    assert any(n.startswith("pyramid.") for n, _ in model.named_parameters())


def test_text_projection_only_when_widths_differ():
    model = _toy(query_feat_dim=24)
    out = model.encode_text(torch.randn(3, 24))
    assert out.shape == (3, 16) and model.text_proj is not None
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_clamp_logit_scale():
    model = _toy(perturb=False)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == 0.0
    assert model.logit_scale.requires_grad


def test_channel_layer_norm_normalises_channels_and_keeps_dtype():
    norm = ChannelLayerNorm(6)
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    y = norm.double()(x)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), eps=1e-5).permute(0, 3, 1, 2)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, expected)
    assert ChannelLayerNorm(6)(x.half()).dtype == torch.float16
