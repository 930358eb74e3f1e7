"""The selective scan's forward pass as Triton kernels, and ``selective_scan_fwd`` for torch tensors.

Layout and meaning are those of the ONNX node ``prvr::SelectiveScan`` (see ``geometry``), semantics those of
``prvr_export.ops.reference.selective_scan_ref`` (the oracle the tests compare against)::

    dt = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
    h  = exp(dt * A) * h + dt * u * B          (state in float32, h = 0 before the first step)
    y  = sum_n h * C + D * u                   (written in u's dtype)

Two implementations:

- ``scan_fwd_kernel``, the *simple* kernel: one program per (batch row, block of channels), the
  ``[block_d, n_state]`` state in registers, a sequential loop over L. It is the kernel compiled ahead of
  time for TensorRT (``aot.compile_scan``) and the oracle of the chunked one.
- the *chunked* kernels, for long L with few (batch, channel-block) programs: L is cut into chunks and
  every chunk gets its own program. ``chunk_summary_kernel`` scans each chunk from a zero state and stores
  its end state and the chunk's sum of ``dt`` (the chunk's decay is ``exp(A * sum dt)``, exactly the
  product of its steps' decays, so no division ever appears); ``chunk_output_kernel`` folds the summaries
  of the earlier chunks into the carry and rescans its chunk from it, writing y. Twice the arithmetic,
  ``cdiv(L, chunk)`` times the parallelism.

The kernels are plain functions wrapped on demand (``_kernel``): as ``JITFunction`` for CUDA tensors and
ahead-of-time compilation, as Triton's interpreter for CPU tensors when ``TRITON_INTERPRET=1`` is set at
call time. Triton's own ``@triton.jit`` decides once, at import, which is why it is not used here: the
tests and ``compile_scan`` need both in one process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import triton
import triton.language as tl

from .geometry import (
    block_n,
    cdiv,
    check_block_d,
    chunked_grid,
    default_block_d,
    default_chunk,
    default_num_warps,
    launch_grid,
)

if TYPE_CHECKING:
    import torch

__all__ = ["Method", "chunk_output_kernel", "chunk_summary_kernel", "scan_fwd_kernel", "selective_scan_fwd"]

Method = Literal["auto", "simple", "chunked"]

# The kernels' softplus is torch.nn.functional.softplus's default: log(1 + exp(x)), and x itself above 20.


def _add_raw(a, b):
    """The combine function of the kernels' sums over the state axis."""
    return a + b


# Triton's library helpers (``tl.sum``, ``tl.zeros``, ``tl.cdiv``, ...) are themselves ``@triton.jit``
# functions, wrapped once when triton is imported: for the compiler, or for the interpreter if
# TRITON_INTERPRET was set by then. Either way one of the two modes this module serves in one process
# could not call them, so the kernels use only builtins (``tl.full``, ``tl.reduce``) and this combine
# function, built as a JITFunction, which both the compiler and the interpreter accept.
_add = triton.runtime.jit.JITFunction(_add_raw)


def scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr, y_ptr,
    dim, seqlen,
    N_STATE: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The simple kernel: program (b, j) scans channels j*BLOCK_D ... over all L steps."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < N_STATE)[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * N_STATE + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(delta_bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    # 64-bit offsets: B * D * L elements can pass 2**31 for long videos in large batches.
    row = (pid_b * dim + offs_d).to(tl.int64) * seqlen
    group = offs_d // (dim // GROUPS)
    bc_row = ((pid_b * GROUPS + group) * N_STATE).to(tl.int64)
    bc = (bc_row[:, None] + offs_n[None, :]) * seqlen
    h = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
    for t in range(0, seqlen):
        u_t = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if DELTA_SOFTPLUS:
            dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
        B_t = tl.load(B_ptr + bc + t, mask=mask_dn, other=0.0).to(tl.float32)
        C_t = tl.load(C_ptr + bc + t, mask=mask_dn, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * u_t)[:, None] * B_t
        y_t = tl.reduce(h * C_t, 1, _add)
        if HAS_D:
            y_t = y_t + Dv * u_t
        tl.store(y_ptr + row + t, y_t.to(y_ptr.dtype.element_ty), mask=mask_d)


def chunk_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, delta_bias_ptr, hend_ptr, dsum_ptr,
    dim, seqlen, chunk, n_chunks,
    N_STATE: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr,
    HAS_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Chunked pass 1: program (b, j, c) scans chunk c from h = 0; stores its end state
    ``hend[b, d, c, :]`` and ``dsum[b, d, c] = sum of dt`` over the chunk (both float32)."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_c = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < N_STATE)[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * N_STATE + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(delta_bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    row = (pid_b * dim + offs_d).to(tl.int64) * seqlen
    group = offs_d // (dim // GROUPS)
    bc_row = ((pid_b * GROUPS + group) * N_STATE).to(tl.int64)
    bc = (bc_row[:, None] + offs_n[None, :]) * seqlen
    h = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
    dsum = tl.full((BLOCK_D,), 0.0, tl.float32)
    t0 = pid_c * chunk
    t1 = tl.minimum(t0 + chunk, seqlen)
    for t in range(t0, t1):
        u_t = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if DELTA_SOFTPLUS:
            dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
        B_t = tl.load(B_ptr + bc + t, mask=mask_dn, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * u_t)[:, None] * B_t
        dsum = dsum + dt
    summary = (pid_b * dim + offs_d).to(tl.int64) * n_chunks + pid_c
    tl.store(hend_ptr + summary[:, None] * N_STATE + offs_n[None, :], h, mask=mask_dn)
    tl.store(dsum_ptr + summary, dsum, mask=mask_d)


def chunk_output_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr, hend_ptr, dsum_ptr, y_ptr,
    dim, seqlen, chunk, n_chunks,
    N_STATE: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Chunked pass 2: program (b, j, c) folds chunks 0..c-1 into its carry
    (``h = exp(A * dsum) * h + hend``), then scans chunk c from it and writes y."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_c = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < N_STATE)[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * N_STATE + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(delta_bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    summary_row = (pid_b * dim + offs_d).to(tl.int64) * n_chunks
    h = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
    for c in range(0, pid_c):
        dsum = tl.load(dsum_ptr + summary_row + c, mask=mask_d, other=0.0)
        hend = tl.load(hend_ptr + (summary_row + c)[:, None] * N_STATE + offs_n[None, :], mask=mask_dn,
                       other=0.0)
        h = tl.exp(dsum[:, None] * A) * h + hend
    row = (pid_b * dim + offs_d).to(tl.int64) * seqlen
    group = offs_d // (dim // GROUPS)
    bc_row = ((pid_b * GROUPS + group) * N_STATE).to(tl.int64)
    bc = (bc_row[:, None] + offs_n[None, :]) * seqlen
    t0 = pid_c * chunk
    t1 = tl.minimum(t0 + chunk, seqlen)
    for t in range(t0, t1):
        u_t = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if DELTA_SOFTPLUS:
            dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
        B_t = tl.load(B_ptr + bc + t, mask=mask_dn, other=0.0).to(tl.float32)
        C_t = tl.load(C_ptr + bc + t, mask=mask_dn, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * u_t)[:, None] * B_t
        y_t = tl.reduce(h * C_t, 1, _add)
        if HAS_D:
            y_t = y_t + Dv * u_t
        tl.store(y_ptr + row + t, y_t.to(y_ptr.dtype.element_ty), mask=mask_d)


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter now (read at every call)."""
    return triton.knobs.runtime.interpret


@functools.cache
def _jit(fn: Callable) -> triton.runtime.jit.JITFunction:
    """The compiling wrapper of a kernel (CUDA launches and ``aot.compile_scan``), built once."""
    return triton.runtime.jit.JITFunction(fn)


@functools.cache
def _interpreted(fn: Callable):
    """The interpreting wrapper of a kernel (CPU tensors under ``TRITON_INTERPRET=1``), built once."""
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction(fn)


def _kernel(fn: Callable, device_type: str):
    """The wrapper that can run ``fn`` on tensors of this device type, or a ValueError saying why none can."""
    if device_type == "cuda":
        return _jit(fn)
    if device_type == "cpu":
        if not interpreting():
            raise ValueError("selective_scan_fwd: CPU tensors run only under Triton's interpreter; set "
                             "TRITON_INTERPRET=1 (slow: meant for tests), or use prvr_export's CPU kernel")
        return _interpreted(fn)
    raise ValueError(f"selective_scan_fwd: no Triton backend for {device_type} tensors")


def _check(u, delta, A, B, C, D, delta_bias) -> tuple[int, int, int, int, int]:
    """(batch, dim, seqlen, n_state, groups) of consistent inputs, or a ValueError naming the culprit."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan_fwd: u must be (batch, dim, length), got {tuple(u.shape)}")
    batch, dim, seqlen = u.shape
    if tuple(delta.shape) != (batch, dim, seqlen):
        raise ValueError(f"selective_scan_fwd: delta must have u's shape {tuple(u.shape)}, "
                         f"got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan_fwd: A must be (dim, n_state) with dim = {dim}, "
                         f"got {tuple(A.shape)}")
    n_state = A.shape[1]
    groups = B.shape[1]
    for name, m in (("B", B), ("C", C)):
        if tuple(m.shape) != (batch, groups, n_state, seqlen) or groups < 1 or dim % groups:
            raise ValueError(f"selective_scan_fwd: {name} must be (batch, groups, n_state, length) = "
                             f"({batch}, G, {n_state}, {seqlen}) with G dividing {dim}, got {tuple(m.shape)}")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (dim,):
            raise ValueError(f"selective_scan_fwd: {name} must be None or ({dim},), got {tuple(v.shape)}")
    if seqlen < 1:
        raise ValueError("selective_scan_fwd: length must be >= 1")
    return batch, dim, seqlen, n_state, groups


def choose_method(batch: int, dim: int, seqlen: int, block_d: int) -> Literal["simple", "chunked"]:
    """``"auto"``'s choice: chunk only when L is long and the simple grid too small to fill a GPU (a guess
    from the work balance -- twice the arithmetic for ``cdiv(L, chunk)`` times the programs -- not a
    measurement)."""
    programs = batch * cdiv(dim, block_d)
    return "chunked" if seqlen >= 1024 and programs < 256 else "simple"


def selective_scan_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    method: Method = "auto",
    block_d: int | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """y r(B D L) in u's dtype, computed by the Triton kernels (forward only, no autograd).

    Args:
        u, delta: (batch, dim, L), float32/float16/bfloat16. A: (dim, N). B, C: (batch, G, N, L) or
            (batch, N, L), u's dtype. D, delta_bias: (dim,) or None. A, D and delta_bias are read as
            float32 (the ONNX node's contract), the state is float32.
        method: ``"simple"`` (the AOT kernel), ``"chunked"`` (long L), or ``"auto"`` (``choose_method``).
        block_d, chunk: override the geometry defaults (``geometry.default_block_d`` / ``default_chunk``).

    Tensors must be CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1`` set (Triton's interpreter).
    """
    import torch

    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    batch, dim, seqlen, n_state, groups = _check(u, delta, A, B, C, D, delta_bias)
    act = u.dtype
    if act not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"selective_scan_fwd: u must be float32, float16 or bfloat16, got {act}")
    u, delta, B, C = (t.to(act).contiguous() for t in (u, delta, B, C))
    A = A.to(torch.float32).contiguous()
    D_arg = A if D is None else D.to(torch.float32).contiguous()  # unread when HAS_D is off
    bias_arg = A if delta_bias is None else delta_bias.to(torch.float32).contiguous()
    y = torch.empty_like(u)
    block_d = check_block_d(block_d) if block_d is not None else default_block_d(dim, n_state)
    consts = dict(N_STATE=n_state, BLOCK_N=block_n(n_state), GROUPS=groups,
                  DELTA_SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d)
    # num_stages=1 as in aot.compile_scan: CUDA launches run the very program that is shipped as PTX.
    num_warps = default_num_warps(block_d, n_state)
    device_type = u.device.type
    if method == "auto":
        method = choose_method(batch, dim, seqlen, block_d)
    if method == "simple":
        kernel = _kernel(scan_fwd_kernel, device_type)
        kernel[launch_grid(batch, dim, block_d)](u, delta, A, B, C, D_arg, bias_arg, y, dim, seqlen,
                                                 HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
                                                 num_warps=num_warps, num_stages=1, **consts)
        return y
    if method != "chunked":
        raise ValueError(f"selective_scan_fwd: method must be 'auto', 'simple' or 'chunked', got {method!r}")
    chunk = default_chunk(seqlen) if chunk is None else int(chunk)
    grid = chunked_grid(batch, dim, seqlen, block_d, chunk)
    n_chunks = grid[2]
    hend = torch.empty(batch, dim, n_chunks, n_state, dtype=torch.float32, device=u.device)
    dsum = torch.empty(batch, dim, n_chunks, dtype=torch.float32, device=u.device)
    _kernel(chunk_summary_kernel, device_type)[grid](
        u, delta, A, B, bias_arg, hend, dsum, dim, seqlen, chunk, n_chunks,
        HAS_BIAS=delta_bias is not None, num_warps=num_warps, num_stages=1, **consts)
    _kernel(chunk_output_kernel, device_type)[grid](
        u, delta, A, B, C, D_arg, bias_arg, hend, dsum, y, dim, seqlen, chunk, n_chunks,
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, num_warps=num_warps, num_stages=1, **consts)
    return y
