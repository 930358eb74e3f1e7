"""Tests for prvr_export/models/mamfusion.py (and the GMM parts of prvr_export/nn/attention.py it uses)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from prvr_export import losses
from prvr_export.models import registry
from prvr_export.models.mamfusion import MamFusion, MamFusionConfig
from prvr_export.nn.attention import BertAttention, gmm_weights
from prvr_export.nn.mamba import Mamba

DV, DQ, D = 12, 10, 32
DEAD_CONV = 5 * 15680 + 15680  # the official fusion module's unused Conv2d(5 -> 15680, 1x1), weight + bias


def tiny(**overrides) -> MamFusion:
    fields = dict(
        d_model=D,
        n_heads=4,
        video_feat_dim=DV,
        query_feat_dim=DQ,
        max_ctx_l=40,
        max_desc_l=8,
        num_clips=6,
        input_drop=0.1,
        drop=0.1,
    )
    fields.update(overrides)
    torch.manual_seed(0)
    return MamFusion(MamFusionConfig(**fields))


def make_batch(lengths=(7, 15, 4), queries_per_video=2, seed=1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    b, lf = len(lengths), max(lengths)
    frames = torch.randn(b, lf, DV, generator=gen)
    mask = torch.zeros(b, lf)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    nq = b * queries_per_video
    query_mask = torch.ones(nq, 5)
    query_mask[::2, 3:] = 0
    return {
        "clips": torch.randn(b, 6, DV, generator=gen),
        "frames": frames,
        "frame_mask": mask,
        "query": torch.randn(nq, 5, DQ, generator=gen),
        "query_mask": query_mask,
        "query_video": torch.arange(b).repeat_interleave(queries_per_video),
    }


def video_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MamFusion.video_inputs}


def unit(x: torch.Tensor) -> torch.Tensor:
    """Row normalisation with the SDK's convention, x / (||x|| + 1e-5) (docs/models.md §1.3)."""
    return x / (x.norm(dim=-1, keepdim=True) + 1e-5)


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ------------------------------------------------------------------ parameter counts (docs/models.md §6)
# (dataset, reference total in §6, inference path = total - 2 fusion modules of 0.59 M MHA + 0.094 M
# dead Conv2d).
# TVR's inference path is §6's breakdown: 13.14 M GMMFormer-style core + 3.86 M Mamba = 17.00 M.
PAPER_COUNTS = [("tvr", 18.37e6, 17.00e6), ("activitynet", 16.69e6, 15.32e6), ("charades", 17.28e6, 15.91e6)]


@pytest.mark.parametrize(("dataset", "total", "inference"), PAPER_COUNTS)
def test_parameter_counts_match_models_md(dataset, total, inference):
    model = registry.create_model("mamfusion", dataset)
    fusion = trainable(model.v2t_fusion) + trainable(model.t2v_fusion)
    # The dead Conv2d is dropped by default (config fusion_dead_conv = false), so the expected total is §6's
    # figure minus its 2 x 94,080 parameters; with the flag on, §6's figure itself.
    assert trainable(model) == pytest.approx(total - 2 * DEAD_CONV, rel=0.01)
    assert trainable(model) - fusion == pytest.approx(inference, rel=0.01)
    faithful = registry.create_model("mamfusion", dataset, overrides={"fusion_dead_conv": True})
    assert trainable(faithful) == pytest.approx(total, rel=0.01)
    assert trainable(faithful) - trainable(model) == 2 * DEAD_CONV


def test_inference_path_is_exactly_the_encoders():
    """The parameters encode_video + encode_text reach are all but the fusion modules (TVR config)."""
    model = registry.create_model("mamfusion", "tvr").eval()
    clips, frames = torch.randn(1, 32, 3072), torch.randn(1, 5, 3072)
    video = model.encode_video(clips, frames, torch.ones(1, 5))
    text = model.encode_text(torch.randn(2, 4, 768))
    (video["clip_emb"].sum() + video["video_emb"].sum() + text.sum()).backward()
    reached = sum(p.numel() for p in model.parameters() if p.grad is not None)
    fusion = trainable(model.v2t_fusion) + trainable(model.t2v_fusion)
    assert reached == trainable(model) - fusion
    assert reached == pytest.approx(17.00e6, rel=0.01)


# ------------------------------------------------------------------ shapes and the contract
def test_shapes_of_encoders_and_score():
    model = tiny().eval()
    batch = make_batch()
    video = model.encode_video(**video_inputs(batch))
    assert set(video) == {"clip_emb", "video_emb"}
    assert video["clip_emb"].shape == (3, 6, D) and video["video_emb"].shape == (3, D)
    text = model.encode_text(batch["query"], batch["query_mask"])
    assert text.shape == (6, D)
    scores, best = model.score(text, video)
    assert scores.shape == (6, 3) and best.shape == (6, 3) and best.dtype == torch.long
    # One video, one query: nothing squeezes the batch axis away.
    one = model.encode_video(batch["clips"][:1], batch["frames"][:1, :7], batch["frame_mask"][:1, :7])
    assert one["clip_emb"].shape == (1, 6, D) and one["video_emb"].shape == (1, D)
    assert model.encode_text(batch["query"][:1]).shape == (1, D)


def test_score_is_weighted_clip_max_plus_frame_cosine():
    model = tiny().eval()
    batch = make_batch()
    video = model.encode_video(**video_inputs(batch))
    q = model.encode_text(batch["query"], batch["query_mask"])
    scores, best = model.score(q, video)
    qn = unit(q)
    cn = unit(video["clip_emb"])
    vn = unit(video["video_emb"])
    per_clip = torch.einsum("qd,vcd->qvc", qn, cn)
    expected = 0.7 * per_clip.amax(dim=-1) + 0.3 * qn @ vn.t()
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    assert torch.equal(best, per_clip.argmax(dim=-1))


def test_video_path_never_sees_the_query():
    model = tiny().eval()
    params = list(inspect.signature(model.encode_video).parameters)
    assert params == list(MamFusion.video_inputs) == ["clips", "frames", "frame_mask"]
    batch = make_batch()
    first = model.encode_video(**video_inputs(batch))
    model.encode_text(batch["query"], batch["query_mask"])
    other = make_batch(queries_per_video=5, seed=7)
    model.encode_text(other["query"], other["query_mask"])
    again = model.encode_video(**video_inputs(batch))
    for key in first:
        assert torch.equal(first[key], again[key])


def test_fusion_modules_run_only_in_training_loss():
    model = tiny()
    calls = []
    for module in (model.v2t_fusion, model.t2v_fusion):
        module.register_forward_hook(lambda *_: calls.append(1))
    batch = make_batch()
    model.eval()
    model.score(
        model.encode_text(batch["query"], batch["query_mask"]), model.encode_video(**video_inputs(batch))
    )
    assert calls == []
    model.train()
    model.loss(batch, epoch=0)
    assert len(calls) == 2


# ------------------------------------------------------------------ padding invariance (deliberate fix)
def _alone_vs_padded(model: MamFusion) -> float:
    """Max |difference| of a video's entry encoded alone vs right-padded in a batch with a longer video.

    At the N(0, 0.02) init the attention logits are nearly 0, so a multiplicative Gaussian barely matters;
    the query/key projections are scaled up first, so that the attention (and any padding leak) is sharp.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BertAttention):
                m.query.weight.mul_(40.0)
                m.key.weight.mul_(40.0)
    gen = torch.Generator().manual_seed(3)
    short, long = torch.randn(1, 7, DV, generator=gen), torch.randn(1, 19, DV, generator=gen)
    clips = torch.randn(2, 6, DV, generator=gen)
    alone = model.encode_video(clips[:1], short, torch.ones(1, 7))
    padding = torch.randn(1, 12, DV, generator=gen)  # garbage, not zeros: it must not leak either
    frames = torch.cat([torch.cat([short, padding], dim=1), long])
    mask = torch.ones(2, 19)
    mask[0, 7:] = 0
    batched = model.encode_video(clips, frames, mask)
    return max((alone[k][0] - batched[k][0]).abs().max().item() for k in alone)


def test_encode_video_does_not_depend_on_batch_padding():
    assert _alone_vs_padded(tiny().eval()) < 1e-5


def test_official_padded_gaussians_do_depend_on_padding():
    """The official rule (gmm_length="padded") fails the same check, so the check can tell the two apart."""
    assert _alone_vs_padded(tiny(gmm_length="padded").eval()) > 1e-3


def test_gmm_weights_by_hand_padded_rule():
    # L = 3, width 1.0: centres i/3, positions j/2, sigma = 1/9; each row divided by its maximum.
    sigma = 1.0 / 9
    expected = []
    for i in range(3):
        row = [math.exp(-((j / 2 - i / 3) ** 2) / (2 * sigma**2)) for j in range(3)]
        expected.append([g / max(row) for g in row])
    got = gmm_weights(3, 1.0)
    assert got.shape == (1, 3, 3)
    torch.testing.assert_close(got[0], torch.tensor(expected), atol=1e-6, rtol=1e-5)
    assert got[0, 1, 1].item() == 1.0 and got[0, 1, 0].item() == pytest.approx(math.exp(-3.375), rel=1e-5)


def test_gmm_weights_by_hand_valid_length_rule():
    # Video 0 has 2 valid steps of 3: centres i/2 = (0, .5, 1), positions j/1 = (0, 1), key 2 is padding.
    # Width 5: 2 sigma^2 = 2 (5/9)^2 = 50/81; a unit distance gives exp(-81/50).
    w = math.exp(-81 / 50)
    got = gmm_weights(3, 5.0, lengths=torch.tensor([2, 3]))
    assert got.shape == (2, 3, 3)
    expected0 = torch.tensor([[1.0, w, 0.0], [1.0, 1.0, 0.0], [w, 1.0, 0.0]])
    torch.testing.assert_close(got[0], expected0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[1], gmm_weights(3, 5.0)[0])  # a full-length video gets the padded rule


# ------------------------------------------------------------------ training loss
def test_loss_backward_reaches_every_trainable_parameter():
    model = tiny().train()
    loss, parts = model.loss(make_batch(), epoch=0)
    assert set(parts) == {"clip_nce", "clip_trip", "frame_nce", "frame_trip", "query_div"}
    assert loss.item() == pytest.approx(sum(parts.values()), rel=1e-5)
    loss.backward()
    missed = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missed == []


def test_dead_conv_is_registered_but_off_every_path():
    model = tiny(fusion_dead_conv=True).train()
    model.loss(make_batch(), epoch=0)[0].backward()
    missed = sorted(n for n, p in model.named_parameters() if p.grad is None)
    assert missed == [f"{m}.dead_conv.{p}" for m in ("t2v_fusion", "v2t_fusion") for p in ("bias", "weight")]


def test_loss_terms_in_eval_mode_match_an_independent_computation(monkeypatch):
    model = tiny().eval()
    batch = make_batch()
    seen = {}
    real_qd = losses.query_diversity

    def spy_qd(queries, query_video, delta, alpha):
        seen["q_fused"] = queries
        return real_qd(queries, query_video, delta, alpha)

    monkeypatch.setattr(losses, "query_diversity", spy_qd)
    _, parts = model.loss(batch, epoch=0)
    video = model.encode_video(**video_inputs(batch))
    q = model.encode_text(batch["query"], batch["query_mask"])
    clip_dot = torch.einsum("qd,vcd->qvc", q, video["clip_emb"]).amax(dim=-1)
    qv = batch["query_video"]
    assert parts["clip_nce"] == pytest.approx(0.027 * losses.clip_nce(clip_dot, qv).item(), rel=1e-5)
    frame_dot = q @ video["video_emb"].t()
    assert parts["frame_nce"] == pytest.approx(0.045 * losses.clip_nce(frame_dot, qv).item(), rel=1e-5)
    # The query-diversity loss reads the fused q', not q.
    q_fused = model.fuse_queries(q, video["video_emb"])
    torch.testing.assert_close(seen["q_fused"], q_fused)
    assert not torch.allclose(q_fused, q)
    assert parts["query_div"] == pytest.approx(0.015 * real_qd(q_fused, qv, 0.2, 32.0).item(), rel=1e-5)


def test_fusion_equals_the_official_four_fold_repeat():
    model = tiny().eval()
    gen = torch.Generator().manual_seed(5)
    q, f = torch.randn(6, D, generator=gen), torch.randn(3, D, generator=gen)
    v = f.repeat(4, 1)  # the official code fuses 4 copies of f
    v = v * model.v2t_fusion.attn(v, q, q)[0]
    official = q * model.t2v_fusion.attn(q, v, v)[0]
    torch.testing.assert_close(model.fuse_queries(q, f), official, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("epoch", "hard"), [(9, False), (10, True), (30, True)])
def test_hard_negatives_switch_on_at_the_configured_epoch(monkeypatch, epoch, hard):
    model = tiny(hard_negative_start_epoch=10, hard_pool_size=3)
    modes = []
    real = losses.triplet_sampled

    def spy(scores, query_video, margin, hard_mode=False, pool=20, generator=None):
        modes.append((hard_mode, pool, margin))
        return real(scores, query_video, margin, hard_mode, pool, generator)

    monkeypatch.setattr(losses, "triplet_sampled", spy)
    model.loss(make_batch(), epoch=epoch)
    assert modes == [(hard, 3, model.config.margin)] * 2  # clip and frame triplets


# ------------------------------------------------------------------ modes, init
def test_eval_mode_is_deterministic_and_train_mode_is_not():
    model = tiny()
    batch = make_batch()
    model.eval()
    a, b = model.encode_video(**video_inputs(batch)), model.encode_video(**video_inputs(batch))
    assert torch.equal(a["clip_emb"], b["clip_emb"]) and torch.equal(a["video_emb"], b["video_emb"])
    assert torch.equal(model.encode_text(batch["query"]), model.encode_text(batch["query"]))
    model.train()
    c, d = model.encode_video(**video_inputs(batch)), model.encode_video(**video_inputs(batch))
    assert not torch.equal(c["video_emb"], d["video_emb"])


def test_official_init_reaches_into_mamba_and_stock_init_does_not():
    official = tiny()
    mambas = [m for m in official.modules() if isinstance(m, Mamba)]
    assert len(mambas) == 4
    for m in mambas:
        assert torch.count_nonzero(m.dt_proj.bias) == 0  # softplus(0) ~ 0.69 initial step, as the code
        assert m.in_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    stock = tiny(mamba_init="stock")
    for m in (m for m in stock.modules() if isinstance(m, Mamba)):
        dt = F.softplus(m.dt_proj.bias)
        assert dt.min().item() >= 1e-4 - 1e-7 and dt.max().item() <= 0.1 + 1e-6
    # The rest of the model gets the N(0, 0.02) / zero-bias init either way.
    assert torch.count_nonzero(stock.query_encoder.query.bias) == 0
    assert stock.clip_input_proj.linear.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_no_weight_decay_tags_cover_biases_and_norms():
    model = tiny()
    tagged = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert "query_encoder.layer_norm.weight" in tagged and "query_encoder.query.bias" in tagged
    assert "clip_mamba.0.mamba.A_log" in tagged
    assert (
        "query_encoder.query.weight" not in tagged
        and "clip_pos_embed.position_embeddings.weight" not in tagged
    )
