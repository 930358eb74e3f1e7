"""Launch geometry and argument order of the selective-scan kernels, as plain integer functions.

Kept apart from the kernels (and from triton) because three consumers must agree on these numbers and
only one of them can run Triton: ``scan_triton`` launches the kernels from Python, ``aot.compile_scan``
records them next to the PTX, and the TensorRT plugin (C++/Python, no Triton at serve time) launches the
PTX with them. Tests check them on integers alone.

The simple kernel (``KERNEL_ARGS``) is the one compiled ahead of time. Its tensors are contiguous, in the
layout of the ONNX node ``prvr::SelectiveScan``: ``u, delta, y [B, D, L]`` and ``B, C [B, G, N, L]`` in the
activation dtype; ``A [D, N]``, ``D [D]``, ``delta_bias [D]`` in float32 (the node's contract). One program
handles one batch row and ``block_d`` consecutive channels; the grid is ``(batch, cdiv(D, block_d), 1)``.
"""

from __future__ import annotations

# Runtime arguments of the simple forward kernel, in the order the compiled kernel takes them. Pointers
# first, then 32-bit integer scalars. Compile-time constants (n_state, groups, has_d, has_bias,
# delta_softplus, block_d) are not arguments: they are baked into each compiled kernel. Triton may append
# its own trailing pointer parameters (scratch buffers); ``aot.CompiledScan.arg_names`` lists the full
# parameter list of the PTX entry, these included.
POINTER_ARGS: tuple[str, ...] = ("u", "delta", "A", "B", "C", "D", "delta_bias", "y")
SCALAR_ARGS: tuple[str, ...] = ("dim", "seqlen")
KERNEL_ARGS: tuple[str, ...] = POINTER_ARGS + SCALAR_ARGS

# Which pointers carry the activation dtype; the others are always float32.
ACTIVATION_ARGS: frozenset[str] = frozenset({"u", "delta", "B", "C", "y"})

# Triton's element-type spelling for each dtype name we accept.
TRITON_DTYPES: dict[str, str] = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}

# Elements of the [block_d, n_state] state tile one program holds in registers. 512 fp32 values over
# 4 warps is 4 registers per thread for the state: small enough that the loop over L never spills.
TILE_ELEMENTS = 512
MAX_WARPS = 4
# CUDA's limit on gridDim.y and gridDim.z (gridDim.x may reach 2**31 - 1, which is why batch goes there).
MAX_GRID_YZ = 65535


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1): Triton's block shapes must be powers of two."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative integers."""
    return -(-int(a) // int(b))


def block_n(n_state: int) -> int:
    """The register tile's state width: n_state rounded up to a power of two (extra lanes are masked)."""
    if n_state < 1:
        raise ValueError(f"n_state must be >= 1, got {n_state}")
    return next_power_of_2(n_state)


def default_block_d(channels: int, n_state: int) -> int:
    """Channels per program: fill a tile of about ``TILE_ELEMENTS`` states, never more than the channels
    (rounded up to a power of two) so small models do not launch mostly-masked programs."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    target = max(1, TILE_ELEMENTS // block_n(n_state))
    return min(target, next_power_of_2(channels))


def default_num_warps(block_d: int, n_state: int) -> int:
    """Warps per program: one per 128 tile elements, 1 to ``MAX_WARPS``."""
    tile = block_d * block_n(n_state)
    return max(1, min(MAX_WARPS, tile // 128))


def check_block_d(block_d: int) -> int:
    """block_d must be a positive power of two (Triton's ``tl.arange`` needs one)."""
    if block_d < 1 or block_d & (block_d - 1):
        raise ValueError(f"block_d must be a positive power of two, got {block_d}")
    return block_d


def launch_grid(batch: int, channels: int, block_d: int) -> tuple[int, int, int]:
    """Grid of the simple kernel: x = batch row, y = block of ``block_d`` channels, z = 1."""
    check_block_d(block_d)
    if batch < 1 or channels < 1:
        raise ValueError(f"batch and channels must be >= 1, got batch={batch}, channels={channels}")
    gy = cdiv(channels, block_d)
    if gy > MAX_GRID_YZ:
        raise ValueError(
            f"{channels} channels need {gy} blocks of {block_d} (> {MAX_GRID_YZ}): raise block_d")
    return (batch, gy, 1)


def default_chunk(seqlen: int) -> int:
    """Time steps per chunk of the chunked (long-L) kernels: at least 64, and at most about 64 chunks, so
    each program's sequential combine of the earlier chunks' carries stays short."""
    return max(64, next_power_of_2(cdiv(seqlen, 64)))


def chunked_grid(batch: int, channels: int, seqlen: int, block_d: int, chunk: int) -> tuple[int, int, int]:
    """Grid of both chunked kernels: the simple grid with z = chunk index."""
    gx, gy, _ = launch_grid(batch, channels, block_d)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    gz = cdiv(seqlen, chunk)
    if gz > MAX_GRID_YZ:
        raise ValueError(f"{seqlen} steps need {gz} chunks of {chunk} (> {MAX_GRID_YZ}); raise chunk")
    return (gx, gy, gz)


def kernel_signature(dtype: str) -> dict[str, str]:
    """Triton's signature of the simple kernel's runtime arguments for an activation dtype."""
    if dtype not in TRITON_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(TRITON_DTYPES)}, got {dtype!r}")
    sig = {name: "*" + (TRITON_DTYPES[dtype] if name in ACTIVATION_ARGS else "fp32") for name in POINTER_ARGS}
    sig.update({name: "i32" for name in SCALAR_ARGS})
    return sig
