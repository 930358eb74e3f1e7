"""Ahead-of-time compilation (prvr_plugins.aot.compile_scan) on a machine without a GPU.

Oracles: the PTX text itself (its ``.entry``, ``.target``, ``.version`` lines and parameter list), the
geometry module (argument order, block sizes) and the driver table. Compiling needs triton only.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install 'prvr-sdk[plugins]')")

import triton  # noqa: E402

from prvr_plugins import aot, geometry  # noqa: E402


@pytest.fixture(scope="module")
def compiled():
    return {arch: aot.compile_scan(arch, "fp16") for arch in ("sm_80", "sm_90")}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_ptx_names_its_entry_and_target(compiled, arch):
    k = compiled[arch]
    assert re.search(rf"^\.visible \.entry {k.name}\(", k.ptx, re.MULTILINE)
    target = re.search(r"^\.target (\w+)", k.ptx, re.MULTILINE).group(1)
    assert target == {"sm_80": "sm_80", "sm_90": "sm_90a"}[arch]  # Triton builds sm_90 as sm_90a
    assert k.meta["ptx_target"] == target
    assert k.arch == arch and k.dtype == "fp16" and k.name.startswith(f"prvr_scan_fwd_{arch}_fp16_n16_g1")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cubin_is_an_elf_when_ptxas_exists(compiled, arch):
    # triton's wheel carries ptxas (triton/backends/nvidia/bin), so a cubin is expected wherever triton is.
    k = compiled[arch]
    assert k.cubin is not None and k.cubin[:4] == b"\x7fELF"
    assert k.name.encode() in k.cubin


def test_arguments_follow_the_geometry_contract(compiled):
    k = compiled["sm_80"]
    n_params = len(re.findall(r"\.param\s+\.\w+", re.search(rf"\.entry {k.name}\(([^)]*)\)", k.ptx).group(1)))
    assert len(k.arg_names) == len(k.arg_kinds) == n_params
    assert k.arg_names[: len(geometry.KERNEL_ARGS)] == geometry.KERNEL_ARGS
    assert k.scalar_names == geometry.SCALAR_ARGS
    assert set(k.arg_kinds) == {"pointer", "i32"}
    assert all(kind == "pointer" for kind in k.arg_kinds[len(geometry.KERNEL_ARGS):])


def test_launch_facts(compiled):
    k = compiled["sm_90"]
    assert k.block_d == geometry.default_block_d(1 << 30, 16) == 32
    assert k.num_warps == geometry.default_num_warps(32, 16) and k.threads_per_block == 32 * k.num_warps
    assert k.shared_mem >= 0
    assert k.grid(3, 100) == geometry.launch_grid(3, 100, 32) == (3, 4, 1)
    assert k.meta["global_scratch_size"] == 0 and k.meta["profile_scratch_size"] == 0


def test_default_ptx_isa_and_its_driver(compiled):
    for k in compiled.values():
        assert re.search(r"^\.version 8\.0$", k.ptx, re.MULTILINE)
        assert k.meta["ptx_isa"] == "8.0" and k.meta["min_driver"] == "525.60.13"
        assert k.meta["triton_version"] == triton.__version__


def test_triton_own_ptx_isa_is_reported_with_the_table():
    k = aot.compile_scan("sm_80", "fp32", ptx_version=None)
    isa = re.search(r"^\.version (\d+\.\d+)", k.ptx, re.MULTILINE).group(1)
    assert k.meta["ptx_isa"] == isa
    assert k.meta["min_driver"] == aot.min_driver_for_ptx(isa)  # None for an ISA newer than the table


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_variants_get_distinct_names(dtype):
    k = aot.compile_scan("sm_86", dtype, n_state=8, groups=2, has_d=False, has_bias=False,
                         delta_softplus=False, block_d=16)
    assert k.name == f"prvr_scan_fwd_sm_86_{dtype}_n8_g2_d0b0s0_bd16"
    assert f".entry {k.name}(" in k.ptx and k.block_d == 16


def test_bad_requests_raise_value_errors():
    with pytest.raises(ValueError, match="arch"):
        aot.compile_scan("sm_90a")
    with pytest.raises(ValueError, match="dtype"):
        aot.compile_scan("sm_80", "fp64")
    with pytest.raises(ValueError, match="power of two"):
        aot.compile_scan("sm_80", block_d=24)


def test_driver_table_is_monotonic():
    drivers = [tuple(int(x) for x in d.split(".")) for _, d in aot.MIN_DRIVER_BY_PTX_ISA.values()]
    assert drivers == sorted(drivers)
    assert aot.min_driver_for_ptx("99.9") is None
