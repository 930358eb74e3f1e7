"""The torch op ``prvr::selective_scan`` names the Triton kernel as its CUDA backend when mamba-ssm is absent
(prvr_export.ops.selective_scan), and the kernel really serves CUDA forwards (GPU hosts only)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install 'prvr-sdk[plugins]')")
torch = pytest.importorskip("torch")

from prvr_export.ops import selective_scan as ss  # noqa: E402

TRITON = "triton (prvr_plugins, forward only)"


@pytest.fixture
def fresh(monkeypatch):
    """Forget the cached probes and warnings, before and after."""
    for fn in (ss._mamba_ssm, ss._triton_scan, ss._resolve):
        fn.cache_clear()
    monkeypatch.setattr(ss, "_warned", set())
    yield
    for fn in (ss._mamba_ssm, ss._triton_scan, ss._resolve):
        fn.cache_clear()


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba-ssm serves CUDA here")
def test_cuda_is_served_by_triton_without_a_warning(fresh, caplog):
    assert ss.available_backends()["cuda"] == TRITON
    assert "cuda" not in ss.fallback_reasons()
    assert ss.backend_for("cuda") == "triton"
    assert not [r for r in caplog.records if r.name == ss.log.name]


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba-ssm serves CUDA here")
def test_without_triton_the_reason_names_both_missing_packages(fresh, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    why = ss.fallback_reasons()["cuda"]
    assert "mamba-ssm is not installed" in why and "triton is not installed" in why
    assert ss.backend_for("cuda") == "reference"


@pytest.mark.gpu("torch")
@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba-ssm serves CUDA here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_forward_runs_the_triton_kernel(dtype):
    from prvr_export.ops.reference import selective_scan_ref

    gen = torch.Generator().manual_seed(0)
    b, d, n, length = 2, 64, 16, 300
    u, delta = torch.randn(b, d, length, generator=gen), torch.randn(b, d, length, generator=gen)
    A = -(torch.rand(d, n, generator=gen) + 0.1)
    B, C = torch.randn(b, 1, n, length, generator=gen), torch.randn(b, 1, n, length, generator=gen)
    Dv, bias = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    args = [t.to("cuda") for t in (u, delta)] + [A.cuda()] + [t.to("cuda") for t in (B, C)]
    args = [t.to(dtype) if t is not args[2] else t for t in args]
    before = ss.backend_calls().get("cuda:triton", 0)
    y = ss.selective_scan_fn(*args, D=Dv.cuda(), delta_bias=bias.cuda(), delta_softplus=True)
    assert ss.backend_calls().get("cuda:triton", 0) == before + 1
    ref = selective_scan_ref(*[t.cpu() for t in args], Dv, None, bias, True)
    err = ((y.cpu().float() - ref.float()).abs().max() / ref.float().abs().max()).item()
    assert err <= (1e-5 if dtype == torch.float32 else 1e-2)
