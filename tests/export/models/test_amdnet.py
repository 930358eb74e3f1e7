"""Tests for prvr_export/models/amdnet.py (and the moment masks of prvr_export/nn/attention.py)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from prvr_export import losses
from prvr_export.models import registry
from prvr_export.models.amdnet import AMDNet, AMDNetConfig
from prvr_export.nn.attention import BertAttention, moment_masks

DV, DQ, D, K, NC = 12, 10, 32, 4, 8


def tiny(**overrides) -> AMDNet:
    fields = dict(
        d_model=D,
        n_heads=K,
        video_feat_dim=DV,
        query_feat_dim=DQ,
        query_type="sentence",
        max_ctx_l=16,
        num_clips=NC,
        input_drop=0.1,
        drop=0.1,
    )
    fields.update(overrides)
    torch.manual_seed(0)
    return AMDNet(AMDNetConfig(**fields))


def make_batch(num_videos=3, queries_per_video=2, seed=1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    nq = num_videos * queries_per_video
    return {
        "clips": torch.randn(num_videos, NC, DV, generator=gen),
        "query": torch.randn(nq, DQ, generator=gen),
        "query_video": torch.arange(num_videos).repeat_interleave(queries_per_video),
    }


def unit(x: torch.Tensor) -> torch.Tensor:
    """Row normalisation with the SDK's convention, x / (||x|| + 1e-5) (docs/models.md §1.3)."""
    return x / (x.norm(dim=-1, keepdim=True) + 1e-5)


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ------------------------------------------------------------------ parameter counts (docs/models.md §6)
@pytest.mark.parametrize(
    ("dataset", "total"), [("tvr", 1.78e6), ("activitynet", 0.89e6), ("charades", 0.89e6)]
)
def test_parameter_counts_match_models_md(dataset, total):
    model = registry.create_model("amdnet", dataset)
    assert trainable(model) == pytest.approx(total, rel=0.01)
    # No training-only modules: the inference path (encode_video + encode_text) reaches every parameter.
    model.eval()
    video = model.encode_video(torch.randn(2, 32, 512))
    (video["clip_emb"].sum() + model.encode_text(torch.randn(3, 512)).sum()).backward()
    assert sum(p.numel() for p in model.parameters() if p.grad is not None) == trainable(model)


# ------------------------------------------------------------------ shapes and the contract
def test_shapes_of_encoders_and_score():
    model = tiny().eval()
    batch = make_batch()
    video = model.encode_video(batch["clips"])
    assert set(video) == {"clip_emb"} and video["clip_emb"].shape == (3, NC, D)
    text = model.encode_text(batch["query"])
    assert text.shape == (6, D)
    scores, best = model.score(text, video)
    assert scores.shape == (6, 3) and best.shape == (6, 3) and best.dtype == torch.long
    assert model.encode_video(batch["clips"][:1])["clip_emb"].shape == (1, NC, D)


def test_score_is_max_over_the_enhanced_clip_tokens():
    model = tiny().eval()
    batch = make_batch()
    video = model.encode_video(batch["clips"])
    q = model.encode_text(batch["query"])
    scores, best = model.score(q, video)
    qn = unit(q)
    cn = unit(video["clip_emb"])
    per_clip = torch.einsum("qd,vcd->qvc", qn, cn)
    torch.testing.assert_close(scores, per_clip.amax(dim=-1), atol=1e-6, rtol=0)
    assert torch.equal(best, per_clip.argmax(dim=-1))


def test_moments_variant_scores_max_over_moments():
    model = tiny(score_mode="moments").eval()
    assert not hasattr(model, "global_attn")  # Y is unused in this mode, so its attention is not built
    batch = make_batch()
    video = model.encode_video(batch["clips"])
    assert set(video) == {"moment_emb", "moment_anchor"}
    assert video["moment_emb"].shape == (3, K, D) and video["moment_anchor"].shape == (3, K, 2)
    parts = model.encode_parts(batch["clips"])
    torch.testing.assert_close(video["moment_emb"], parts["masks"] @ parts["tokens"])  # P = M X
    q = model.encode_text(batch["query"])
    scores, best = model.score(q, video)
    qn = unit(q)
    pn = unit(video["moment_emb"])
    per_moment = torch.einsum("qd,vkd->qvk", qn, pn)
    torch.testing.assert_close(scores, per_moment.amax(dim=-1), atol=1e-6, rtol=0)
    assert torch.equal(best, per_moment.argmax(dim=-1))


def test_video_path_never_sees_the_query():
    model = tiny().eval()
    assert list(inspect.signature(model.encode_video).parameters)[0] == "clips"
    assert AMDNet.video_inputs == ("clips",)
    batch = make_batch()
    first = model.encode_video(batch["clips"])["clip_emb"]
    model.encode_text(make_batch(queries_per_video=4, seed=9)["query"])
    assert torch.equal(first, model.encode_video(batch["clips"])["clip_emb"])


def test_encode_text_rejects_token_features():
    from prvr_sdk.errors import ShapeMismatchError

    with pytest.raises(ShapeMismatchError, match="sentence"):
        tiny().encode_text(torch.randn(2, 5, DQ))


# ------------------------------------------------------------------ moment masks and masked attention
def test_moment_masks_by_hand():
    # 3 positions (0, .5, 1); centre .5, width .9 -> sigma .1: the ends are 0.5 away -> exp(-12.5).
    # Centre 0, width 0.001 -> clamped to 0.01, sigma 1/900: only position 0 survives.
    # Centre 1, width 9 -> sigma 1: exp(-d^2 / 2) over d = (1, .5, 0).
    got = moment_masks(torch.tensor([[0.5, 0.0, 1.0]]), torch.tensor([[0.9, 0.001, 9.0]]), 3)
    expected = torch.tensor(
        [[[math.exp(-12.5), 1.0, math.exp(-12.5)], [1.0, 0.0, 0.0], [math.exp(-0.5), math.exp(-0.125), 1.0]]]
    )
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-5)


def test_masked_attention_weights_head_k_by_moment_k():
    torch.manual_seed(2)
    attn = BertAttention(D, K, dropout=0.0).eval()
    x = torch.randn(2, NC, D)
    masks = torch.rand(2, K, NC)
    got = attn(x, weights=masks.unsqueeze(2))
    # Independent computation, head by head.
    q, k, v = attn.query(x), attn.key(x), attn.value(x)
    dh = D // K
    heads = []
    for h in range(K):
        sl = slice(h * dh, (h + 1) * dh)
        logits = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh) * masks[:, h, None, :]
        heads.append(torch.softmax(logits, dim=-1) @ v[..., sl])
    expected = attn.layer_norm(attn.dense(torch.cat(heads, dim=-1)) + x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_enhanced_tokens_average_global_and_moment_attention():
    model = tiny().eval()
    parts = model.encode_parts(make_batch()["clips"])
    o0 = model.global_attn(parts["tokens"])
    o1 = model.moment_attn(o0, weights=parts["masks"].unsqueeze(2))
    torch.testing.assert_close(parts["enhanced"], (o0 + o1) / 2)
    # Anchors come from g through a sigmoid; the masks peak at 1.
    assert parts["anchors"].min() > 0 and parts["anchors"].max() < 1
    torch.testing.assert_close(parts["masks"].amax(dim=-1), torch.ones(3, K))


# ------------------------------------------------------------------ training loss
@pytest.mark.parametrize("score_mode", ["clips", "moments"])
def test_loss_backward_reaches_every_trainable_parameter(score_mode):
    model = tiny(score_mode=score_mode).train()
    loss, parts = model.loss(make_batch(), epoch=0)
    assert set(parts) == {"clip_nce", "moment_div", "moment_rel"}
    assert loss.item() == pytest.approx(sum(parts.values()), rel=1e-5)
    loss.backward()
    missed = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missed == []


@pytest.mark.parametrize("score_mode", ["clips", "moments"])
def test_loss_terms_in_eval_mode_match_an_independent_computation(score_mode):
    model = tiny(score_mode=score_mode, loss_factor=(0.04, 1.0)).eval()
    batch = make_batch()
    _, parts = model.loss(batch, epoch=0)
    p = model.encode_parts(batch["clips"])
    q = model.encode_text(batch["query"])
    qv = batch["query_video"]
    tokens = p["enhanced"] if score_mode == "clips" else p["moments"]
    dot = torch.einsum("qd,vcd->qvc", q, tokens).amax(dim=-1)
    assert parts["clip_nce"] == pytest.approx(0.04 * losses.clip_nce(dot, qv).item(), rel=1e-5)
    assert parts["moment_div"] == pytest.approx(losses.moment_diversity(p["masks"], 0.15).item(), rel=1e-5)
    rel = losses.moment_relevance(q, p["moments"], p["video_vec"], qv, 0.02)
    assert parts["moment_rel"] == pytest.approx(25 * rel.item(), rel=1e-5, abs=1e-7)


def test_eval_mode_is_deterministic_and_train_mode_is_not():
    model = tiny()
    clips = make_batch()["clips"]
    model.eval()
    assert torch.equal(model.encode_video(clips)["clip_emb"], model.encode_video(clips)["clip_emb"])
    model.train()
    assert not torch.equal(model.encode_video(clips)["clip_emb"], model.encode_video(clips)["clip_emb"])


def test_heads_must_divide_width():
    from prvr_sdk.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="n_heads"):
        AMDNetConfig(d_model=30, n_heads=4, query_type="sentence")
    with pytest.raises(InvalidInputError, match="sentence"):
        AMDNetConfig(query_type="tokens")
