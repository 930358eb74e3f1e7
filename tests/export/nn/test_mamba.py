"""Tests for prvr_export/nn/mamba.py: mamba-ssm / Vim v2 structure, init, and maths.

The maths is checked against code written here, independently of the layer: a token-by-token recurrence
for Mamba, and an explicit two-direction composition around ``selective_scan_ref`` for BiMamba.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prvr_export.nn import BiMamba, Mamba
from prvr_export.ops.reference import selective_scan_ref

F64_TOL = {"rtol": 1e-10, "atol": 1e-12}


def _perturbed(cls, seed: int = 0, dtype=torch.float64, **kwargs):
    """A layer whose every parameter is moved off its init, so D, conv bias, A, ... all matter."""
    torch.manual_seed(seed)
    m = cls(**kwargs).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _shapes(m: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


# ---------------------------------------------------------------------------------------------
# Structure: names, shapes, order and counts as in mamba-ssm (mamba_simple.py) and Vim's v2 fork.


def test_mamba_state_dict_matches_mamba_ssm():
    # d_model 16, expand 2 -> d_inner 32; dt_rank ceil(16/16) = 1; d_state 16; d_conv 4.
    # Own parameters (A_log, D) come before submodules in a state_dict, as in mamba-ssm's.
    expected = [
        ("A_log", (32, 16)),
        ("D", (32,)),
        ("in_proj.weight", (64, 16)),
        ("conv1d.weight", (32, 1, 4)),
        ("conv1d.bias", (32,)),
        ("x_proj.weight", (33, 32)),  # dt_rank + 2 * d_state = 1 + 32
        ("dt_proj.weight", (32, 1)),
        ("dt_proj.bias", (32,)),
        ("out_proj.weight", (16, 32)),
    ]
    assert _shapes(Mamba(16)) == expected


def test_mamba_state_dict_with_biases_flipped():
    # bias=True adds in/out biases; conv_bias=False removes the conv bias. d_model 20, expand 1.5 -> 30.
    expected = [
        ("A_log", (30, 8)),
        ("D", (30,)),
        ("in_proj.weight", (60, 20)),
        ("in_proj.bias", (60,)),
        ("conv1d.weight", (30, 1, 3)),
        ("x_proj.weight", (2 + 16, 30)),
        ("dt_proj.weight", (30, 2)),
        ("dt_proj.bias", (30,)),
        ("out_proj.weight", (20, 30)),
        ("out_proj.bias", (20,)),
    ]
    m = Mamba(20, d_state=8, d_conv=3, expand=1.5, bias=True, conv_bias=False)
    assert _shapes(m) == expected


def test_bimamba_state_dict_matches_vim_v2():
    # d_model 24, expand 1 -> d_inner 24; dt_rank ceil(24/16) = 2; d_state 16.
    expected = [
        ("A_log", (24, 16)),
        ("D", (24,)),
        ("A_b_log", (24, 16)),
        ("D_b", (24,)),
        ("in_proj.weight", (48, 24)),
        ("conv1d.weight", (24, 1, 4)),
        ("conv1d.bias", (24,)),
        ("x_proj.weight", (34, 24)),  # 2 + 2 * 16
        ("dt_proj.weight", (24, 2)),
        ("dt_proj.bias", (24,)),
        ("conv1d_b.weight", (24, 1, 4)),
        ("conv1d_b.bias", (24,)),
        ("x_proj_b.weight", (34, 24)),
        ("dt_proj_b.weight", (24, 2)),
        ("dt_proj_b.bias", (24,)),
        ("out_proj.weight", (24, 24)),
    ]
    assert _shapes(BiMamba(24, expand=1)) == expected


def test_derived_sizes():
    m = Mamba(40, d_state=8, d_conv=3, expand=3)
    assert (m.d_model, m.d_inner, m.d_state, m.d_conv, m.dt_rank) == (40, 120, 8, 3, 3)
    assert Mamba(40, dt_rank=7).dt_rank == 7


@pytest.mark.parametrize(
    ("cls", "kwargs", "count"),
    [
        (Mamba, {"d_model": 384, "expand": 2}, 963_840),  # MamFusion's block, docs/models.md §6
        (BiMamba, {"d_model": 512, "expand": 1}, 908_288),  # MUSE's block, docs/models.md §6
    ],
)
def test_parameter_count(cls, kwargs, count):
    assert sum(p.numel() for p in cls(**kwargs).parameters()) == count


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_load_state_dict_round_trip(cls):
    src = _perturbed(cls, seed=0, d_model=12, bias=True)
    dst = _perturbed(cls, seed=1, d_model=12, bias=True)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    assert not torch.allclose(src(x), dst(x))
    dst.load_state_dict(src.state_dict(), strict=True)
    assert torch.equal(src(x), dst(x))


# ---------------------------------------------------------------------------------------------
# Initialisation.


def _dt_pairs(m):
    pairs = [(m.dt_proj, m.A_log, m.D)]
    if isinstance(m, BiMamba):
        pairs.append((m.dt_proj_b, m.A_b_log, m.D_b))
    return pairs


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_dt_bias_init_in_range(cls):
    torch.manual_seed(0)
    m = cls(64, dt_min=0.002, dt_max=0.05)
    for dt_proj, _, _ in _dt_pairs(m):
        dt = F.softplus(dt_proj.bias.detach().double())
        assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
        assert dt.std() > 0  # drawn, not constant
        assert dt_proj.bias._no_reinit is True


def test_dt_bias_init_respects_floor():
    # Log-uniform on [1e-5, 1e-1]: half the draws fall under 1e-3 and must be clamped to it.
    torch.manual_seed(0)
    m = BiMamba(128, dt_min=1e-5, dt_max=1e-1, dt_init_floor=1e-3)
    for dt_proj, _, _ in _dt_pairs(m):
        dt = F.softplus(dt_proj.bias.detach().double())
        torch.testing.assert_close(dt.min().item(), 1e-3, rtol=1e-5, atol=0)
        assert (dt < 1e-3 * (1 + 1e-5)).sum() > 10
        assert dt.max() <= 0.1 * (1 + 1e-5)


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_dt_weight_init(cls):
    torch.manual_seed(0)
    s = 4**-0.5 * 0.25  # dt_rank ** -0.5 * dt_scale; nn.Linear's default bound would be 4 ** -0.5
    m = cls(32, dt_rank=4, dt_scale=0.25)
    for dt_proj, _, _ in _dt_pairs(m):
        w = dt_proj.weight.detach()
        assert w.abs().max() <= s and w.abs().max() > 0.9 * s
    m = cls(32, dt_rank=4, dt_scale=0.25, dt_init="constant")
    for dt_proj, _, _ in _dt_pairs(m):
        assert torch.equal(dt_proj.weight.detach(), torch.full((64, 4), s))


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_A_and_D_init(cls):
    m = cls(16, d_state=5, dtype=torch.float64)
    assert m.in_proj.weight.dtype == torch.float64
    for _, A_log, D in _dt_pairs(m):
        assert A_log.dtype == torch.float32 and D.dtype == torch.float32  # kept fp32, as in mamba-ssm
        expected = -torch.tensor([1.0, 2, 3, 4, 5]).repeat(m.d_inner, 1)
        torch.testing.assert_close(-torch.exp(A_log.detach()), expected, rtol=1e-6, atol=0)
        assert torch.equal(D.detach(), torch.ones(m.d_inner))
        assert A_log._no_weight_decay is True and D._no_weight_decay is True


# ---------------------------------------------------------------------------------------------
# Maths.


def _silu(v):
    return v / (1 + torch.exp(-v))


def _softplus(v):
    return torch.log1p(torch.exp(v))


def _recurrent_mamba(m: Mamba, h: torch.Tensor) -> torch.Tensor:
    """One token at a time, with explicit conv and SSM states: (L, d_model) -> (L, d_model)."""
    p = {k: v.detach() for k, v in m.state_dict().items()}
    d_inner, d_state = p["A_log"].shape
    dt_rank = p["dt_proj.weight"].shape[1]
    kernel = p["conv1d.weight"][:, 0, :]  # (D K), kernel[:, -1] multiplies the newest input
    A = -torch.exp(p["A_log"])  # (D N)
    conv_state = h.new_zeros(d_inner, kernel.shape[1])  # last d_conv inputs, oldest first
    ssm_state = h.new_zeros(d_inner, d_state)
    outs = []
    for h_t in h:
        xz = p["in_proj.weight"] @ h_t + p.get("in_proj.bias", 0)
        x, z = xz[:d_inner], xz[d_inner:]
        conv_state = torch.cat([conv_state[:, 1:], x[:, None]], dim=1)
        x = _silu((conv_state * kernel).sum(1) + p.get("conv1d.bias", 0))
        x_dbl = p["x_proj.weight"] @ x
        dt, B, C = x_dbl[:dt_rank], x_dbl[dt_rank : dt_rank + d_state], x_dbl[dt_rank + d_state :]
        dt = _softplus(p["dt_proj.weight"] @ dt + p["dt_proj.bias"])  # (D)
        ssm_state = torch.exp(dt[:, None] * A) * ssm_state + (dt * x)[:, None] * B[None, :]
        y = ssm_state @ C + p["D"] * x
        y = y * _silu(z)
        outs.append(p["out_proj.weight"] @ y + p.get("out_proj.bias", 0))
    return torch.stack(outs)


@pytest.mark.parametrize("bias", [False, True])
def test_mamba_matches_recurrent_evaluation(bias):
    m = _perturbed(Mamba, d_model=12, d_state=6, d_conv=4, expand=2, bias=bias)
    torch.manual_seed(1)
    h = torch.randn(2, 15, 12, dtype=torch.float64)
    out = m(h)
    expected = torch.stack([_recurrent_mamba(m, h[b]) for b in range(2)])
    torch.testing.assert_close(out, expected, **F64_TOL)


def _explicit_bimamba(m: BiMamba, h: torch.Tensor) -> torch.Tensor:
    """Forward scan + flipped backward scan, summed, from m's parameters and selective_scan_ref."""
    xz = F.linear(h, m.in_proj.weight, m.in_proj.bias).transpose(1, 2)  # (B 2D L)
    x, z = xz.chunk(2, dim=1)
    seqlen = h.shape[1]

    def direction(x, z, conv1d, x_proj, dt_proj, A_log, D):
        x = F.conv1d(x, conv1d.weight, conv1d.bias, padding=m.d_conv - 1, groups=m.d_inner)[..., :seqlen]
        x = F.silu(x)
        dt, B, C = F.linear(x.transpose(1, 2), x_proj.weight).split([m.dt_rank, m.d_state, m.d_state], -1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)  # (B D L)
        return selective_scan_ref(
            x,
            delta,
            -torch.exp(A_log),
            B.transpose(1, 2),
            C.transpose(1, 2),
            D,
            z,
            delta_bias=dt_proj.bias,
            delta_softplus=True,
        )

    y_f = direction(x, z, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D)
    y_b = direction(x.flip(-1), z.flip(-1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b)
    return F.linear((y_f + y_b.flip(-1)).transpose(1, 2), m.out_proj.weight, m.out_proj.bias)


@pytest.mark.parametrize("bias", [False, True])
def test_bimamba_matches_explicit_two_direction_scan(bias):
    m = _perturbed(BiMamba, d_model=10, d_state=5, expand=1, bias=bias)
    torch.manual_seed(1)
    h = torch.randn(2, 13, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(h), _explicit_bimamba(m, h), **F64_TOL)
        # The backward direction is really there: it is not a causal layer.
        h2 = h.clone()
        h2[:, -1] += 1.0
        assert not torch.allclose(m(h2)[:, 0], m(h)[:, 0])


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_right_padding_leaves_valid_outputs_unchanged(cls):
    m = _perturbed(cls, d_model=8, d_state=4, expand=2)
    torch.manual_seed(2)
    lengths = [11, 7, 1]
    seqs = [torch.randn(n, 8, dtype=torch.float64) for n in lengths]
    batch = 5.0 * torch.randn(3, 11, 8, dtype=torch.float64)  # garbage in the padding, not zeros
    mask = torch.zeros(3, 11, dtype=torch.bool)
    for i, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
        batch[i, :n] = s
        mask[i, :n] = True
    with torch.no_grad():
        out = m(batch, mask=mask)
        for i, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
            torch.testing.assert_close(out[i, :n], m(s[None])[0], **F64_TOL)
            assert torch.equal(out[i, n:], torch.zeros_like(out[i, n:]))
        unmasked = m(batch)
    short_matches = torch.allclose(unmasked[1, :7], out[1, :7], **F64_TOL)
    # Causal Mamba needs no mask; BiMamba without it lets the garbage into the backward scan.
    assert short_matches == (cls is Mamba)


def test_bimamba_full_mask_equals_no_mask():
    m = _perturbed(BiMamba, d_model=8, d_state=4, expand=1)
    h = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(h, mask=torch.ones(2, 9, dtype=torch.bool)), m(h), **F64_TOL)


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_float32_forward(cls):
    torch.manual_seed(0)
    m = cls(16)
    out = m(torch.randn(2, 5, 16))
    assert out.shape == (2, 5, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_gradients_reach_every_parameter(cls):
    m = _perturbed(cls, d_model=8, d_state=4, bias=True)
    torch.manual_seed(3)
    h = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)
    (m(h) * torch.randn(2, 7, 8, dtype=torch.float64)).sum().backward()
    for name, p in list(m.named_parameters()) + [("hidden_states", h)]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_torch_export_with_dynamic_batch_and_length(cls):
    # No data-dependent Python control flow: one graph serves any (batch, seqlen), mask included.
    torch.manual_seed(0)
    m = cls(8, d_state=4).eval()
    h = torch.randn(2, 6, 8)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    batch, seqlen = torch.export.Dim("batch"), torch.export.Dim("seqlen")
    dims = {0: batch, 1: seqlen}
    exported = torch.export.export(
        m, (h,), {"mask": mask}, dynamic_shapes={"hidden_states": dims, "mask": dims}
    )
    h = torch.randn(3, 11, 8)
    mask = torch.arange(11) < torch.tensor([[11], [5], [1]])
    torch.testing.assert_close(exported.module()(h, mask=mask), m(h, mask=mask))


# ---------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
@pytest.mark.parametrize("shape", [(2, 5, 8), (5, 16), (1, 2, 5, 16)])
def test_bad_hidden_states_shape(cls, shape):
    m = cls(16)
    with pytest.raises(ValueError, match=r"hidden_states.*\(batch, seqlen, 16\)"):
        m(torch.randn(*shape))


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_bad_mask(cls):
    m = cls(8)
    h = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="mask"):
        m(h, mask=torch.ones(2, 5))  # not bool
    with pytest.raises(ValueError, match="mask"):
        m(h, mask=torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_bad_dt_init(cls):
    with pytest.raises(ValueError, match=r"dt_init.*random.*constant"):
        cls(16, dt_init="xavier")


def test_bad_dt_rank():
    with pytest.raises(ValueError, match="dt_rank"):
        Mamba(16, dt_rank="full")


def test_auto_dt_rank_rounds_up():
    assert Mamba(17).dt_rank == math.ceil(17 / 16) == 2
