"""Ahead-of-time compilation of the simple selective-scan kernel to PTX (and cubin), without a GPU.

This module is the interface the TensorRT plugin consumes; keep it stable.

``compile_scan(arch="sm_90", dtype="fp16", *, n_state=16, groups=1, has_d=True, has_bias=True,
delta_softplus=True, block_d=None, ptx_version="default") -> CompiledScan`` compiles
``scan_triton.scan_fwd_kernel`` with Triton for one GPU architecture and one activation dtype, every
compile-time constant fixed. ``CompiledScan`` (frozen) holds:

- ``name``: the PTX entry symbol (``.entry <name>``), unique per (arch, dtype, constants), also used as
  the file stem by ``prvr plugins build``.
- ``ptx`` (str) and ``cubin`` (bytes, or None when no ptxas could assemble it).
- ``arch`` (``"sm_90"``), ``dtype`` (``"fp32" | "fp16" | "bf16"``), ``n_state``, ``groups``, ``has_d``,
  ``has_bias``, ``delta_softplus``: what the kernel was built for. The plugin must only launch it on inputs
  with exactly that N and G.
- ``num_warps``, ``threads_per_block`` (= 32 * num_warps: the launch's blockDim.x; blockDim.y = z = 1),
  ``shared_mem`` (bytes of dynamic shared memory to pass at launch), ``block_d`` (channels per program).
- ``arg_names``: the PTX entry's parameter names in order, one per PTX parameter; ``arg_kinds`` the
  parallel kinds, ``"pointer"`` or ``"i32"`` (``scalar_names`` lists the i32 ones). The first ten are
  ``geometry.KERNEL_ARGS`` (u, delta, A, B, C, D, delta_bias, y, dim, seqlen); Triton appends scratch
  pointers (``global_scratch``, ``profile_scratch`` with Triton 3.9): pass null when
  ``meta["global_scratch_size"]`` / ``meta["profile_scratch_size"]`` are 0. Tensors are contiguous in
  the ONNX node's layout; A, D and delta_bias are float32, the others ``dtype``. D and delta_bias are
  read only when ``has_d`` / ``has_bias`` (pass any valid pointer otherwise).
- ``meta``: ``triton_version``, ``ptx_isa`` (``"8.8"``, from the PTX ``.version`` line), ``ptx_target``
  (the ``.target`` line's first word), ``min_driver`` (the oldest Linux NVIDIA driver whose JIT accepts
  that PTX ISA, or None when the ISA is newer than ``MIN_DRIVER_BY_PTX_ISA`` knows), scratch sizes.

Launch: ``grid = geometry.launch_grid(batch, dim, block_d)`` (x = batch, y = channel blocks, z = 1),
``block = (threads_per_block, 1, 1)``, ``shared_mem`` bytes.

Which PTX ISA: left alone, Triton picks the newest its bundled ptxas knows (9.x for sm_90 with Triton
3.9), which needs a newer driver than most deployment hosts have. So ``ptx_version="default"`` pins ISA
8.0 (CUDA 12.0) up to sm_90 (``default_ptx_version``); an integer (``88`` = ISA 8.8) pins another, None
takes Triton's choice. ``meta["min_driver"]`` says what the result needs. Triton compiles sm_90 as
``sm_90a`` (``.target sm_90a``): that PTX and cubin run on compute capability 9.0 only.

triton is imported inside ``compile_scan`` only, so this module (and ``CompiledScan``) load without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .geometry import (
    KERNEL_ARGS,
    POINTER_ARGS,
    TRITON_DTYPES,
    block_n,
    check_block_d,
    default_block_d,
    default_num_warps,
    kernel_signature,
    launch_grid,
)

__all__ = [
    "KERNEL_ARGS",
    "MIN_DRIVER_BY_PTX_ISA",
    "CompiledScan",
    "compile_scan",
    "default_block_d",
    "default_ptx_version",
    "kernel_name",
    "launch_grid",
    "min_driver_for_ptx",
    "parse_arch",
]

# PTX ISA version -> oldest Linux x86_64 NVIDIA driver able to JIT it. Built from two NVIDIA tables: the
# PTX ISA manual's release history (which CUDA release introduced each ISA version) and the CUDA Toolkit
# release notes' "CUDA Toolkit and corresponding driver versions" (the minimum driver of each toolkit's GA
# release). PTX JIT is not covered by CUDA's minor-version compatibility, so the toolkit's own minimum
# applies. ISA 8.6 arrived with CUDA 12.7, which had no public toolkit; 12.8's driver is listed.
# Versions newer than the table map to None ("unknown"), never to a guess.
MIN_DRIVER_BY_PTX_ISA: dict[str, tuple[str, str]] = {
    # isa: (CUDA release, min driver)
    "7.8": ("11.8", "520.61.05"),
    "8.0": ("12.0", "525.60.13"),
    "8.1": ("12.1", "530.30.02"),
    "8.2": ("12.2", "535.54.03"),
    "8.3": ("12.3", "545.23.06"),
    "8.4": ("12.4", "550.54.14"),
    "8.5": ("12.5", "555.42.02"),
    "8.6": ("12.8", "570.26"),
    "8.7": ("12.8", "570.26"),
    "8.8": ("12.9", "575.51.03"),
    "9.0": ("13.0", "580.65.06"),
}

_ARCH = re.compile(r"^sm_(\d+)([a-z]?)$")


def parse_arch(arch: str) -> int:
    """Compute capability of ``"sm_86"`` as Triton's integer (86); a ValueError for anything else."""
    m = _ARCH.match(arch)
    if m is None or m.group(2):
        raise ValueError(f"arch must look like 'sm_80' (no a/f suffix), got {arch!r}")
    cc = int(m.group(1))
    if cc < 75:
        raise ValueError(f"arch {arch}: Triton's NVIDIA backend needs sm_75 or newer")
    return cc


def min_driver_for_ptx(isa: str) -> str | None:
    """The oldest driver that JITs PTX of this ISA version (``"8.8"``), or None when unknown."""
    entry = MIN_DRIVER_BY_PTX_ISA.get(isa)
    return entry[1] if entry else None


def default_ptx_version(cc: int) -> int | None:
    """ISA 8.0 (CUDA 12.0, driver 525.60.13) up to sm_90: the kernel needs nothing newer, and Triton's own
    choice (its ptxas's newest ISA, 9.x for sm_90) would demand a driver few hosts have. Newer
    architectures need newer ISAs; there Triton's choice stands (None)."""
    return 80 if cc <= 90 else None


def kernel_name(arch: str, dtype: str, n_state: int, groups: int, has_d: bool, has_bias: bool,
                delta_softplus: bool, block_d: int) -> str:
    """The entry symbol: every compile-time choice spelt out, so two variants never share a name (or a
    file in one ``prvr plugins build`` folder)."""
    flags = f"d{int(has_d)}b{int(has_bias)}s{int(delta_softplus)}"
    return f"prvr_scan_fwd_{arch}_{dtype}_n{n_state}_g{groups}_{flags}_bd{block_d}"


@dataclass(frozen=True)
class CompiledScan:
    """One compiled variant of the simple forward kernel and everything needed to launch it."""

    name: str
    ptx: str
    cubin: bytes | None
    arch: str
    dtype: str
    n_state: int
    groups: int
    has_d: bool
    has_bias: bool
    delta_softplus: bool
    num_warps: int
    threads_per_block: int
    shared_mem: int
    block_d: int
    arg_names: tuple[str, ...]
    arg_kinds: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def scalar_names(self) -> tuple[str, ...]:
        """The i32 parameters, in kernel order (``("dim", "seqlen")``)."""
        return tuple(n for n, k in zip(self.arg_names, self.arg_kinds, strict=True) if k == "i32")

    def grid(self, batch: int, dim: int) -> tuple[int, int, int]:
        """The launch grid for a (batch, dim, L) input (L does not change it)."""
        return launch_grid(batch, dim, self.block_d)

    def index_entry(self) -> dict[str, Any]:
        """JSON-ready description (everything but the code), as ``prvr plugins build`` writes it."""
        return {
            "name": self.name, "arch": self.arch, "dtype": self.dtype, "n_state": self.n_state,
            "groups": self.groups, "has_d": self.has_d, "has_bias": self.has_bias,
            "delta_softplus": self.delta_softplus, "num_warps": self.num_warps,
            "threads_per_block": self.threads_per_block, "shared_mem": self.shared_mem,
            "block_d": self.block_d, "grid": "(batch, ceil(dim / block_d), 1)",
            "args": [{"name": n, "kind": k} for n, k in zip(self.arg_names, self.arg_kinds, strict=True)],
            **self.meta,
        }


_PTX_VERSION = re.compile(r"^\s*\.version\s+(\d+\.\d+)", re.MULTILINE)
_PTX_TARGET = re.compile(r"^\s*\.target\s+([\w.]+)", re.MULTILINE)


def _entry_params(ptx: str, name: str) -> list[str]:
    """The ``.param`` types of ``.entry name(...)``, in order (``u64``, ``u32``, ...)."""
    m = re.search(rf"\.entry\s+{re.escape(name)}\s*\(([^)]*)\)", ptx)
    if m is None:
        raise RuntimeError(f"compiled PTX has no entry {name!r}")
    return re.findall(r"\.param\s+\.(\w+)", m.group(1))


def _arg_table(params: list[str]) -> tuple[tuple[str, str], ...]:
    """Name and kind of every entry parameter: ours first, then Triton's trailing scratch pointers."""
    ours = [(n, "pointer" if n in POINTER_ARGS else "i32") for n in KERNEL_ARGS]
    extra = params[len(ours):]
    if len(params) < len(ours) or any(p != "u64" for p in extra):
        raise RuntimeError(f"unexpected PTX parameters {params} (expected {len(ours)} of ours + pointers)")
    names = ["global_scratch", "profile_scratch"]
    tail = [(names[i] if i < len(names) else f"triton_extra_{i}", "pointer") for i in range(len(extra))]
    return tuple(ours + tail)


def _kernel_params(params: list[str], dtype: str) -> dict[str, str]:
    """Triton's signature keyed by the kernel's parameter names, which are ``KERNEL_ARGS`` with ``_ptr``
    on the pointers; a mismatch means the kernel and ``geometry`` disagree on the order, a bug."""
    ours = [p.removesuffix("_ptr") for p in params[: len(KERNEL_ARGS)]]
    if tuple(ours) != KERNEL_ARGS:
        raise RuntimeError(f"scan_fwd_kernel's parameters {params} do not start with {KERNEL_ARGS}")
    sig = kernel_signature(dtype)
    return {param: sig[name] for param, name in zip(params, KERNEL_ARGS, strict=False)}


def compile_scan(
    arch: str = "sm_90",
    dtype: str = "fp16",
    *,
    n_state: int = 16,
    groups: int = 1,
    has_d: bool = True,
    has_bias: bool = True,
    delta_softplus: bool = True,
    block_d: int | None = None,
    ptx_version: int | None | Literal["default"] = "default",
) -> CompiledScan:
    """Compile the simple forward kernel for ``arch`` and activation ``dtype`` (see the module docstring).

    ``block_d`` defaults to ``geometry.default_block_d(n_state * 32, n_state)``: the channel count is a
    runtime argument, so the default assumes a model wide enough to fill a full tile.

    Raises:
        ValueError: a bad arch, dtype, n_state, groups or block_d.
        ImportError: triton is not installed.
    """
    cc = parse_arch(arch)
    if dtype not in TRITON_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(TRITON_DTYPES)}, got {dtype!r}")
    if n_state < 1 or groups < 1:
        raise ValueError(f"n_state and groups must be >= 1, got n_state={n_state}, groups={groups}")
    block_d = check_block_d(block_d) if block_d is not None else default_block_d(1 << 30, n_state)
    num_warps = default_num_warps(block_d, n_state)
    name = kernel_name(arch, dtype, n_state, groups, has_d, has_bias, delta_softplus, block_d)

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from . import scan_triton

    fn = JITFunction(scan_triton.scan_fwd_kernel, repr=lambda _spec: name)
    constexprs = dict(N_STATE=n_state, BLOCK_N=block_n(n_state), GROUPS=groups, HAS_D=bool(has_d),
                      HAS_BIAS=bool(has_bias), DELTA_SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d)
    signature = {**_kernel_params(fn.arg_names, dtype), **{k: "constexpr" for k in constexprs}}
    # fp fusion (FMA contraction) on: Triton 3.9's default, stated so later versions keep the same code.
    options: dict[str, Any] = {"num_warps": num_warps, "num_stages": 1, "enable_fp_fusion": True}
    if ptx_version == "default":
        ptx_version = default_ptx_version(cc)
    if ptx_version is not None:
        options["ptx_version"] = int(ptx_version)
    compiled = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", cc, 32),
                              options=options)
    ptx = compiled.asm["ptx"]
    cubin = compiled.asm.get("cubin")
    md = compiled.metadata
    if md.name != name:
        raise RuntimeError(f"Triton named the kernel {md.name!r}, expected {name!r}")
    args = _arg_table(_entry_params(ptx, name))
    isa_m, target_m = _PTX_VERSION.search(ptx), _PTX_TARGET.search(ptx)
    isa = isa_m.group(1) if isa_m else None
    meta = {
        "triton_version": triton.__version__,
        "ptx_isa": isa,
        "ptx_target": target_m.group(1) if target_m else None,
        "min_driver": min_driver_for_ptx(isa) if isa else None,
        "cuda_for_ptx_isa": MIN_DRIVER_BY_PTX_ISA[isa][0] if isa in MIN_DRIVER_BY_PTX_ISA else None,
        "global_scratch_size": int(getattr(md, "global_scratch_size", 0) or 0),
        "profile_scratch_size": int(getattr(md, "profile_scratch_size", 0) or 0),
    }
    return CompiledScan(
        name=name, ptx=ptx, cubin=bytes(cubin) if cubin else None, arch=arch, dtype=dtype, n_state=n_state,
        groups=groups, has_d=bool(has_d), has_bias=bool(has_bias), delta_softplus=bool(delta_softplus),
        num_warps=md.num_warps, threads_per_block=32 * md.num_warps, shared_mem=int(md.shared),
        block_d=block_d, arg_names=tuple(n for n, _ in args), arg_kinds=tuple(k for _, k in args), meta=meta,
    )
