"""``prvr::SelectiveScan`` as a TensorRT Quickly Deployable Plugin with an ahead-of-time (PTX) kernel.

Why this shape (docs/deploy-notes.md §1, §4):

- The exported graphs carry each scan as one node ``prvr::SelectiveScan`` with ``plugin_namespace="prvr"``.
  TensorRT's ONNX parser (>= 10.7, 11.x) uses a registered plugin of that name and namespace for such a node
  and imports the node's local function body otherwise. ``register()`` makes the plugin exist.
- The implementation is ``@tensorrt.plugin.aot_impl`` only: TensorRT calls it while *building* and embeds
  the returned PTX and launch rule in the engine, so a serialized engine runs in ``trtexec`` or C++ with no
  Python and no plugin library. (A JIT ``@impl`` would need this module in every serving process.)
- AOT kernels get, in this order: the input pointers, 32-bit scalar arguments given as symbolic shape
  expressions, the output pointers. Plugin attributes are not serialized, so ``delta_softplus`` (and the
  state size, groups and channel block) are baked into the compiled kernel variant.

Everything that decides numbers -- output shape and dtype, the kernel's scalar arguments, the launch grid,
the PTX entry's parameter list -- is a plain function of integers and strings below, tested without
TensorRT. ``tensorrt`` is imported only inside ``register()``.

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` inspects the decorated functions'
annotations as objects (``TensorDesc`` classes, ``int``) and rejects string annotations.
"""

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INPUTS",
    "MIN_TENSORRT",
    "OUTPUTS",
    "PLUGIN_ID",
    "KernelPlan",
    "ScanDims",
    "adapt_ptx_params",
    "autotune_types",
    "check_tensorrt_version",
    "dtype_name",
    "entry_params",
    "grid_for",
    "output_dtype",
    "output_shape",
    "plan_kernel",
    "register",
    "registered_arch",
    "scalar_args",
    "scan_dims",
    "sm_arch",
    "tensorrt_order",
]

NAMESPACE, NAME = "prvr", "SelectiveScan"
PLUGIN_ID = f"{NAMESPACE}::{NAME}"
# The node's inputs and output, in the order of the ONNX contract (scan_function.INPUTS).
INPUTS: tuple[str, ...] = ("u", "delta", "A", "B", "C", "D", "delta_bias")
OUTPUTS: tuple[str, ...] = ("y",)
ACTIVATIONS = frozenset({"u", "delta", "B", "C", "y"})  # in u's dtype; A, D, delta_bias stay float32
# AOT plugins exist from 10.9; 10.12 is the oldest we support (parser plugin preference, strong typing).
MIN_TENSORRT = (10, 12)

# TensorRT DataType names -> our dtype names (the ones compile_scan takes).
_TRT_DTYPES = {"FLOAT": "fp32", "HALF": "fp16", "BF16": "bf16"}
# Our dtype names -> AutoTuneCombination spelling.
_TUNE_DTYPES = {"fp32": "FP32", "fp16": "FP16", "bf16": "BF16"}


# --------------------------------------------------------------------------- plain rules (no TensorRT)
def check_tensorrt_version(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a TensorRT version string, or ``ValueError`` if older than ``MIN_TENSORRT``."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"cannot read a TensorRT version from {version!r}")
    found = (int(match[1]), int(match[2]))
    if found < MIN_TENSORRT:
        need = ".".join(map(str, MIN_TENSORRT))
        raise ValueError(f"TensorRT {version} is too old for the prvr::SelectiveScan AOT plugin "
                         f"(needs >= {need})")
    return found


def sm_arch(major: int, minor: int) -> str:
    """``"sm_90"`` for compute capability 9.0: the build target the kernel is compiled for."""
    if major < 1 or minor < 0 or minor > 9:
        raise ValueError(f"not a compute capability: {major}.{minor}")
    return f"sm_{major}{minor}"


def dtype_name(trt_dtype: str) -> str:
    """Our dtype name for a TensorRT ``DataType`` name (``"FLOAT"`` -> ``"fp32"``); others are refused."""
    try:
        return _TRT_DTYPES[trt_dtype]
    except KeyError:
        raise ValueError(f"prvr::SelectiveScan takes float32, float16 or bfloat16 activations, "
                         f"got {trt_dtype}") from None


def output_shape(u_shape: Sequence[int]) -> tuple[int, ...]:
    """``y`` has ``u``'s shape ``[B, D, L]``."""
    if len(u_shape) != 3:
        raise ValueError(f"u must be [B, D, L], got rank {len(u_shape)}")
    return tuple(u_shape)


def output_dtype(u_dtype: str) -> str:
    """``y`` has ``u``'s dtype (one of fp32, fp16, bf16)."""
    if u_dtype not in _TUNE_DTYPES:
        raise ValueError(f"u's dtype must be one of {sorted(_TUNE_DTYPES)}, got {u_dtype!r}")
    return u_dtype


@dataclass(frozen=True)
class ScanDims:
    """The sizes of one scan call: ``u [batch, channels, length]``, ``A [channels, n_state]``,
    ``B, C [batch, groups, n_state, length]``. Fields may be ints or TensorRT shape expressions."""

    batch: Any
    channels: Any
    length: Any
    groups: Any
    n_state: Any


def scan_dims(shapes: dict[str, Sequence[int]]) -> ScanDims:
    """Check concrete input shapes against the node's contract and return its sizes.

    Raises:
        ValueError: a missing input, a wrong rank, or sizes that disagree (naming the input).
    """
    missing = [n for n in INPUTS if n not in shapes]
    if missing:
        raise ValueError(f"missing inputs {missing}")
    u, a, b = shapes["u"], shapes["A"], shapes["B"]
    if len(u) != 3 or len(a) != 2 or len(b) != 4:
        raise ValueError(f"ranks: u [B,D,L], A [D,N], B [B,G,N,L]; got {list(u)}, {list(a)}, {list(b)}")
    dims = ScanDims(batch=u[0], channels=u[1], length=u[2], groups=b[1], n_state=a[1])
    expected = {
        "u": (dims.batch, dims.channels, dims.length),
        "delta": (dims.batch, dims.channels, dims.length),
        "A": (dims.channels, dims.n_state),
        "B": (dims.batch, dims.groups, dims.n_state, dims.length),
        "C": (dims.batch, dims.groups, dims.n_state, dims.length),
        "D": (dims.channels,),
        "delta_bias": (dims.channels,),
    }
    for name, want in expected.items():
        if tuple(shapes[name]) != want:
            raise ValueError(f"{name}: expected shape {list(want)}, got {list(shapes[name])}")
    if dims.groups < 1 or dims.channels % dims.groups:
        raise ValueError(f"channels ({dims.channels}) must be a multiple of groups ({dims.groups})")
    return dims


# Where each scalar argument a kernel may take comes from. Works on ints and on TensorRT shape
# expressions alike (only attribute access and ``//``), so the AOT plan and the tests share it.
_SCALARS: dict[str, Callable[[ScanDims], Any]] = {
    "batch": lambda d: d.batch,
    "dim": lambda d: d.channels,
    "channels": lambda d: d.channels,
    "seqlen": lambda d: d.length,
    "length": lambda d: d.length,
    "groups": lambda d: d.groups,
    "n_state": lambda d: d.n_state,
    "dim_per_group": lambda d: d.channels // d.groups,
}


def tensorrt_order(arg_names: Sequence[str]) -> tuple[str, ...]:
    """The kernel's parameters in the order an AOT plugin passes them: inputs, scalars, outputs.

    ``arg_names`` is the compiled kernel's parameter list; names that are neither node inputs/outputs nor
    known scalars (Triton's hidden scratch pointers) are left out -- ``adapt_ptx_params`` drops them.
    """
    names = list(arg_names)
    for needed in INPUTS + OUTPUTS:
        if needed not in names:
            raise ValueError(f"the kernel has no parameter {needed!r} (parameters: {names})")
    scalars = tuple(n for n in names if n in _SCALARS)
    return INPUTS + scalars + OUTPUTS


def scalar_args(arg_names: Sequence[str], dims: ScanDims) -> list[Any]:
    """Values of the kernel's scalar parameters, in kernel order (ints, or shape expressions in TensorRT)."""
    return [_SCALARS[n](dims) for n in arg_names if n in _SCALARS]


def grid_for(batch: Any, channels: int, block_d: int) -> tuple[Any, int, int]:
    """The launch grid ``(batch, cdiv(channels, block_d), 1)`` with ``batch`` possibly symbolic.

    Mirrors ``prvr_plugins.geometry.launch_grid`` (tested equal on integers); only the batch axis may be
    dynamic in an engine, the channel count is a build-time constant (``A``'s first dimension).
    """
    if channels < 1 or block_d < 1:
        raise ValueError(f"channels and block_d must be >= 1, got {channels}, {block_d}")
    return (batch, -(-channels // block_d), 1)


def autotune_types(dtypes: Sequence[str]) -> str:
    """The ``AutoTuneCombination`` type string: activations (u, delta, B, C, y) share one of ``dtypes``;
    A, D and delta_bias are always float32. ``"|"`` makes the activation positions dependent."""
    if not dtypes or any(d not in _TUNE_DTYPES for d in dtypes):
        raise ValueError(f"dtypes must be a non-empty subset of {sorted(_TUNE_DTYPES)}, got {list(dtypes)}")
    act = "|".join(_TUNE_DTYPES[d] for d in dtypes)
    fp32 = "|".join(["FP32"] * len(dtypes))
    return ", ".join(act if n in ACTIVATIONS else fp32 for n in INPUTS + OUTPUTS)


_ENTRY = r"\.entry\s+{name}\s*\((?P<params>[^)]*)\)"


def entry_params(ptx: str, kernel_name: str) -> list[tuple[str, str]]:
    """``[(param name, declaration)]`` of the PTX entry ``kernel_name``, in declaration order."""
    match = re.search(_ENTRY.format(name=re.escape(kernel_name)), ptx)
    if match is None:
        raise ValueError(f"the PTX has no entry {kernel_name!r}")
    decls = [d.strip() for d in match["params"].split(",") if d.strip()]
    return [(re.sub(r"\[\d*\]$", "", d.split()[-1]), d) for d in decls]


def adapt_ptx_params(ptx: str, kernel_name: str, arg_names: Sequence[str]) -> str:
    """The PTX with its entry's parameters in TensorRT's AOT order, unused extra parameters removed.

    A PTX entry's parameter list *is* its calling convention and the body reads parameters by name, so
    reordering declarations changes only the order a launcher must pass them in. This lets a kernel whose
    source order is ``pointers, y, scalars`` (natural for Triton) be launched by TensorRT, which passes
    ``inputs, scalars, outputs``; and it drops the trailing scratch pointers Triton appends to every kernel
    (TensorRT passes nothing for them) -- but only when the body never reads them.

    Args:
        arg_names: the entry's parameters, one name per PTX parameter, in declaration order.

    Raises:
        ValueError: parameter count differs from ``arg_names``; an extra parameter the body reads.
    """
    params = entry_params(ptx, kernel_name)
    if len(params) != len(arg_names):
        raise ValueError(f"PTX entry {kernel_name!r} declares {len(params)} parameters; arg_names has "
                         f"{len(arg_names)}: {list(arg_names)}")
    match = re.search(_ENTRY.format(name=re.escape(kernel_name)), ptx)
    assert match is not None  # entry_params found it
    body = ptx[match.end():]
    by_name = dict(zip(arg_names, params, strict=True))
    order = tensorrt_order(arg_names)
    for extra in (n for n in arg_names if n not in order):
        ptx_name = by_name[extra][0]
        if re.search(rf"\b{re.escape(ptx_name)}\b", body):
            raise ValueError(f"kernel {kernel_name!r} reads its parameter {extra!r} ({ptx_name}); a TensorRT "
                             "AOT plugin cannot pass it")
    decls = ",\n\t".join(by_name[n][1] for n in order)
    return ptx[: match.start("params")] + f"\n\t{decls}\n" + ptx[match.end("params"):]


@dataclass(frozen=True)
class KernelPlan:
    """What the AOT implementation hands TensorRT for one kernel variant (all plain values)."""

    name: str
    ptx: str
    arg_order: tuple[str, ...]  # parameter order after ``adapt_ptx_params``
    scalar_names: tuple[str, ...]
    threads_per_block: int
    shared_mem: int
    block_d: int

    def grid(self, batch: Any, channels: int) -> tuple[Any, int, int]:
        return grid_for(batch, channels, self.block_d)


@functools.lru_cache(maxsize=64)
def plan_kernel(arch: str, dtype: str, *, channels: int, n_state: int, groups: int,
                delta_softplus: bool) -> KernelPlan:
    """Compile (once per variant: TensorRT asks again for every format combination it times) the scan
    kernel for ``arch`` and ``dtype`` and return its PTX in TensorRT's parameter order."""
    from prvr_plugins.aot import compile_scan, default_block_d

    block_d = default_block_d(channels, n_state)
    compiled = compile_scan(arch, dtype, n_state=n_state, groups=groups, has_d=True, has_bias=True,
                            delta_softplus=bool(delta_softplus), block_d=block_d)
    order = tensorrt_order(compiled.arg_names)
    ptx = compiled.ptx.decode() if isinstance(compiled.ptx, bytes) else compiled.ptx
    return KernelPlan(
        name=compiled.name,
        ptx=adapt_ptx_params(ptx, compiled.name, compiled.arg_names),
        arg_order=order,
        scalar_names=tuple(n for n in order if n not in INPUTS + OUTPUTS),
        threads_per_block=int(compiled.threads_per_block),
        shared_mem=int(compiled.shared_mem),
        block_d=int(compiled.block_d),
    )


# --------------------------------------------------------------------------- TensorRT registration
_state: dict[str, Any] = {"arch": None, "registered": False}


def registered_arch() -> str | None:
    """The build target kernels are compiled for (set by ``register``), or None before it."""
    return _state["arch"]


def _constant(expr: Any, what: str) -> int:
    if expr.is_fake or not expr.is_constant:
        raise ValueError(f"prvr::SelectiveScan needs {what} known when the engine is built")
    return int(expr.constant_value())


def register(arch: str | None = None) -> str:
    """Register ``prvr::SelectiveScan`` (shape/type rule, one type combination, AOT kernel) with TensorRT.

    Idempotent; a later call may change the build target. Returns the target (``"sm_90"``).

    Args:
        arch: the GPU architecture kernels are compiled for; default: device 0's compute capability.

    Raises:
        ImportError: tensorrt (or ``tensorrt.plugin``'s AOT support) is missing.
        ValueError: TensorRT older than ``MIN_TENSORRT``; no GPU to take the architecture from.
    """
    import tensorrt as trt
    import tensorrt.plugin as trtp

    check_tensorrt_version(trt.__version__)
    if not hasattr(trtp, "aot_impl"):
        raise ImportError(f"TensorRT {trt.__version__} has no tensorrt.plugin.aot_impl")
    if arch is None:
        from prvr_sdk.backends.tensorrt import device_compute_capability

        cc = device_compute_capability(0)
        if cc is None:
            raise ValueError("no CUDA device to take the kernel architecture from; pass arch='sm_XX'")
        arch = sm_arch(*cc)
    _state["arch"] = arch
    if _state["registered"]:
        return arch

    @trtp.register(PLUGIN_ID)
    def scan_desc(u: trtp.TensorDesc, delta: trtp.TensorDesc, A: trtp.TensorDesc, B: trtp.TensorDesc,
                  C: trtp.TensorDesc, D: trtp.TensorDesc, delta_bias: trtp.TensorDesc,
                  delta_softplus: int) -> trtp.TensorDesc:
        return u.like()  # output_shape / output_dtype: y is u's shape and dtype

    @trtp.autotune(PLUGIN_ID)
    def scan_autotune(u, delta, A, B, C, D, delta_bias, delta_softplus: int,
                      outputs) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(autotune_types(("fp32", "fp16", "bf16")))]

    @trtp.aot_impl(PLUGIN_ID)
    def scan_aot(u: trtp.TensorDesc, delta: trtp.TensorDesc, A: trtp.TensorDesc, B: trtp.TensorDesc,
                 C: trtp.TensorDesc, D: trtp.TensorDesc, delta_bias: trtp.TensorDesc, delta_softplus: int,
                 outputs, tactic: int
                 ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        channels = _constant(A.shape_expr[0], "the channel count (A's first dimension)")
        n_state = _constant(A.shape_expr[1], "the state size (A's second dimension)")
        groups = _constant(B.shape_expr[1], "the group count (B's second dimension)")
        plan = plan_kernel(_state["arch"], dtype_name(u.dtype.name), channels=channels, n_state=n_state,
                           groups=groups, delta_softplus=bool(delta_softplus))
        dims = ScanDims(batch=u.shape_expr[0], channels=u.shape_expr[1], length=u.shape_expr[2],
                        groups=B.shape_expr[1], n_state=A.shape_expr[1])
        launch = trtp.KernelLaunchParams()
        launch.grid_x, launch.grid_y, launch.grid_z = plan.grid(u.shape_expr[0], channels)
        launch.block_x = plan.threads_per_block
        launch.shared_mem = plan.shared_mem
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in scalar_args(plan.scalar_names, dims)])
        return plan.name, plan.ptx, launch, extra

    _state["registered"] = True
    return arch
