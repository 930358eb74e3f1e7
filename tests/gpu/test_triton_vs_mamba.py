"""The Triton scan kernel (what the TensorRT plugin embeds) against mamba-ssm's CUDA kernel, on a GPU.

mamba-ssm is the implementation the models were designed against; where it is installed (GPU hosts with
the ``mamba`` extra) both must agree on the node's contract: fp32 to 1e-4, fp16/bf16 to the half types'
resolution. Skipped without a GPU, torch with CUDA, triton or mamba-ssm.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu("torch")
torch = pytest.importorskip("torch")
pytest.importorskip("triton")
interface = pytest.importorskip("mamba_ssm.ops.selective_scan_interface")

from prvr_plugins.scan_triton import selective_scan_fwd  # noqa: E402

TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def _problem(batch, dim, n, length, groups, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device="cuda")

    return dict(
        u=rand(batch, dim, length).to(dtype), delta=(0.5 * rand(batch, dim, length)).to(dtype),
        A=-(torch.rand(dim, n, generator=gen, device="cuda") + 0.1),
        B=rand(batch, groups, n, length).to(dtype), C=rand(batch, groups, n, length).to(dtype),
        D=rand(dim), delta_bias=0.1 * rand(dim),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("batch", "dim", "n", "length", "groups"),
                         [(1, 64, 16, 1, 1), (2, 128, 16, 257, 1), (3, 96, 8, 64, 2), (2, 512, 16, 1024, 1)])
@pytest.mark.parametrize("softplus", [True, False])
def test_triton_kernel_equals_mamba_ssm(dtype, batch, dim, n, length, groups, softplus):
    args = _problem(batch, dim, n, length, groups, dtype)
    want = interface.selective_scan_fn(args["u"], args["delta"], args["A"], args["B"], args["C"], args["D"],
                                       delta_bias=args["delta_bias"], delta_softplus=softplus)
    got = selective_scan_fwd(**args, delta_softplus=softplus)
    assert got.dtype == args["u"].dtype and got.shape == args["u"].shape
    scale = want.float().abs().max().clamp_min(1e-6)
    assert float((got.float() - want.float()).abs().max() / scale) <= TOLERANCE[dtype]
