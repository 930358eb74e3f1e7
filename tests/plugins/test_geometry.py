"""Launch geometry and argument order on plain integers (prvr_plugins.geometry): no triton, no torch.

These numbers are a contract between the Python launcher, ``aot.compile_scan`` and the TensorRT plugin,
so they are pinned here by value.
"""

from __future__ import annotations

import pytest

from prvr_plugins import geometry as g


def test_argument_order_is_pointers_then_scalars():
    assert g.KERNEL_ARGS == ("u", "delta", "A", "B", "C", "D", "delta_bias", "y", "dim", "seqlen")
    assert g.SCALAR_ARGS == ("dim", "seqlen")
    assert set(g.ACTIVATION_ARGS) == {"u", "delta", "B", "C", "y"}


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_signature_keeps_A_D_bias_in_fp32(dtype):
    sig = g.kernel_signature(dtype)
    assert list(sig) == list(g.KERNEL_ARGS)
    assert [sig[n] for n in ("u", "delta", "B", "C", "y")] == [f"*{dtype}"] * 5
    assert [sig[n] for n in ("A", "D", "delta_bias")] == ["*fp32"] * 3
    assert [sig[n] for n in g.SCALAR_ARGS] == ["i32", "i32"]
    with pytest.raises(ValueError, match="dtype"):
        g.kernel_signature("fp64")


@pytest.mark.parametrize(("channels", "n_state", "block_d", "warps"), [
    (1536, 16, 32, 4),   # Mamba-1 widths: 32 x 16 = 512-state tile
    (1536, 4, 128, 4),
    (1536, 64, 8, 4),
    (4, 16, 4, 1),       # tiny model: never more channels per program than the model has
    (5, 3, 8, 1),        # rounded up to powers of two
    (512, 256, 2, 4),
    (64, 1000, 1, 4),    # state wider than a whole tile
])
def test_default_block_d_and_warps(channels, n_state, block_d, warps):
    assert g.default_block_d(channels, n_state) == block_d
    assert g.default_num_warps(block_d, n_state) == warps


def test_launch_grid_puts_batch_on_x():
    assert g.launch_grid(1, 1536, 32) == (1, 48, 1)
    assert g.launch_grid(7, 33, 32) == (7, 2, 1)
    assert g.launch_grid(100_000, 8, 8) == (100_000, 1, 1)  # x may exceed 65535, y may not
    with pytest.raises(ValueError, match="power of two"):
        g.launch_grid(1, 64, 24)
    with pytest.raises(ValueError, match="raise block_d"):
        g.launch_grid(1, 65536 * 2, 1)
    with pytest.raises(ValueError, match=">= 1"):
        g.launch_grid(0, 8, 8)


def test_chunked_geometry():
    assert g.default_chunk(1) == 64
    assert g.default_chunk(4096) == 64
    assert g.default_chunk(4097) == 128  # at most ~64 chunks
    assert g.chunked_grid(2, 64, 130, 32, 64) == (2, 2, 3)


def test_small_helpers():
    assert [g.next_power_of_2(n) for n in (0, 1, 2, 3, 16, 17)] == [1, 1, 2, 4, 16, 32]
    assert [g.cdiv(a, 4) for a in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert g.block_n(16) == 16 and g.block_n(5) == 8
