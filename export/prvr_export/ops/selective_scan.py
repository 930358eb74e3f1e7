"""Mamba's selective scan as one torch op, ``prvr::selective_scan``, plus its reference.

One op with four implementations behind it, chosen per call:
- CUDA tensors with mamba-ssm installed: mamba-ssm's fused kernel (imported lazily, never required);
- CUDA tensors without mamba-ssm but with triton: our Triton kernel (``prvr_plugins.scan_triton``, the
  one shipped to TensorRT as PTX) for the forward of ``prvr::selective_scan`` in float32/16/bfloat16.
  It is forward only: backwards, calls that want the last state, and float64 use the reference;
- CPU float32/float64: the C kernel of ``cpu_kernel`` (forward and backward, multi-threaded);
- anything else (no compiler, CUDA without mamba-ssm and triton, ``PRVR_DISABLE_CPU_KERNEL``): the reference,
  announced by one warning per device type (``backend_for``) and listed by ``available_backends()``.
The op has a fake kernel, so ``torch.export`` records a single ``prvr.selective_scan`` node that the
ONNX exporter maps to ``prvr::SelectiveScan``. The gate ``y * silu(z)`` is kept outside the op (as in
the ONNX graph), in ``selective_scan_fn``, which has mamba-ssm's signature.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError

from . import cpu_kernel
from .reference import selective_scan_ref

__all__ = [
    "FAST_BACKENDS",
    "available_backends",
    "backend_calls",
    "backend_for",
    "check_inputs",
    "fallback_reasons",
    "selective_scan_fn",
    "selective_scan_ref",
]

log = logging.getLogger(__name__)
Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------
# Input validation: every message names the argument, the expected shape and what arrived.


def _fail(name: str, expected: str, got: object) -> None:
    """Shape problems raise ShapeMismatchError, others InvalidInputError; both are ValueErrors."""
    cls = ShapeMismatchError if "shape" in expected or "length" in expected else InvalidInputError
    raise cls(f"selective_scan: `{name}` must be {expected}, got {got}")


def check_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    """Raise a ValueError (ShapeMismatchError / InvalidInputError) naming the first argument whose
    shape, dtype or device does not fit.

    Expected: u, delta, z r(B D L); A r(D N); B, C r(B N L) or r(B G N L) with G dividing D; D,
    delta_bias r(D). u, delta, B, C, z share one floating dtype and every tensor one device.
    """
    if not isinstance(u, Tensor) or u.dim() != 3:
        _fail("u", "a tensor of shape (batch, dim, length)", getattr(u, "shape", type(u).__name__))
    if not u.is_floating_point():
        _fail("u", "a floating-point tensor", u.dtype)
    batch, dim, length = u.shape
    if length == 0:
        _fail("u", "a sequence of at least one step (length > 0)", tuple(u.shape))
    bdl = f"of shape (batch, dim, length) = {(batch, dim, length)}"
    if not isinstance(delta, Tensor) or tuple(delta.shape) != (batch, dim, length):
        _fail("delta", f"a tensor {bdl}", getattr(delta, "shape", delta))
    if not isinstance(A, Tensor) or A.dim() != 2 or A.shape[0] != dim:
        _fail("A", f"a tensor of shape (dim, d_state) with dim = {dim}", getattr(A, "shape", A))
    if A.is_complex():
        _fail("A", "real-valued (complex A is not supported)", A.dtype)
    dstate = A.shape[1]
    if not 1 <= dstate <= cpu_kernel.MAX_DSTATE:
        _fail("A", f"of shape (dim, d_state) with 1 <= d_state <= {cpu_kernel.MAX_DSTATE}", tuple(A.shape))
    for name, m in (("B", B), ("C", C)):
        shape = getattr(m, "shape", m)
        expected = (f"a tensor of shape (batch, d_state, length) = {(batch, dstate, length)} or grouped "
                    f"(batch, groups, d_state, length) with groups dividing dim = {dim}")
        if not isinstance(m, Tensor) or m.dim() not in (3, 4):
            _fail(name, expected, shape)
        if m.dim() == 3 and tuple(m.shape) != (batch, dstate, length):
            _fail(name, expected, tuple(shape))
        if m.dim() == 4 and (
            (m.shape[0], m.shape[2], m.shape[3]) != (batch, dstate, length)
            or m.shape[1] == 0 or dim % m.shape[1] != 0
        ):
            _fail(name, expected, tuple(shape))
    groups_B = B.shape[1] if B.dim() == 4 else 1
    groups_C = C.shape[1] if C.dim() == 4 else 1
    if groups_B != groups_C:  # the kernels index C with B's grouping (mamba-ssm rejects this too)
        _fail("C", f"grouped like B ({groups_B} groups)", f"{groups_C} groups, shape {tuple(C.shape)}")
    if z is not None and (not isinstance(z, Tensor) or tuple(z.shape) != (batch, dim, length)):
        _fail("z", f"None or a tensor {bdl}", getattr(z, "shape", z))
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and (not isinstance(v, Tensor) or tuple(v.shape) != (dim,)):
            _fail(name, f"None or a tensor of shape (dim,) = ({dim},)", getattr(v, "shape", v))
    for name, t in (("delta", delta), ("B", B), ("C", C), ("z", z)):
        if t is not None and t.dtype != u.dtype:
            _fail(name, f"of u's dtype {u.dtype}", t.dtype)
    for name, t in (("A", A), ("D", D), ("delta_bias", delta_bias)):
        if t is not None and not t.is_floating_point():
            _fail(name, "a floating-point tensor", t.dtype)
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if t is not None and t.device != u.device:
            _fail(name, f"on u's device {u.device}", t.device)


# ----------------------------------------------------------------------------------------------
# Backend selection.


# The fast implementation per device type; any other device type has none.
FAST_BACKENDS = {"cpu": "cpu_kernel", "cuda": "mamba_ssm"}
_DESCRIPTIONS = {"cpu_kernel": "cpu_kernel (C, ctypes)", "mamba_ssm": "mamba_ssm",
                 "triton": "triton (prvr_plugins, forward only)"}
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DEVICE_LABELS = {"cpu": "CPU", "cuda": "CUDA"}

_state_lock = threading.Lock()
_warned: set[str] = set()  # device types whose slow fallback was already logged
_calls: Counter[str] = Counter()  # "device:backend" -> op calls (forward and backward) it served


@functools.cache
def _mamba_ssm() -> tuple[Callable | None, str | None]:
    """(mamba-ssm's selective_scan_fn, None), or (None, why not).

    Cached: the find_spec probe and the import run once per process, not on every CUDA call (the
    answer cannot change while the process runs, and the probe costs a filesystem walk).
    """
    if importlib.util.find_spec("mamba_ssm") is None:
        return None, "mamba-ssm is not installed (pip install 'prvr-sdk[mamba]')"
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_scan
    except Exception as exc:  # a broken install (e.g. no selective_scan_cuda) must not break us
        return None, f"mamba-ssm is installed but unusable ({type(exc).__name__}: {exc})"
    return mamba_scan, None


@functools.cache
def _triton_scan() -> tuple[Callable | None, str | None]:
    """(prvr_plugins' Triton selective_scan_fwd, None), or (None, why not). Cached like ``_mamba_ssm``."""
    if importlib.util.find_spec("triton") is None:
        return None, "triton is not installed (pip install 'prvr-sdk[plugins]')"
    try:
        from prvr_plugins.scan_triton import selective_scan_fwd
    except Exception as exc:  # a broken triton must not break the op: the reference still serves
        return None, f"triton is installed but unusable ({type(exc).__name__}: {exc})"
    return selective_scan_fwd, None


@functools.cache
def _resolve(device_type: str) -> tuple[str, str | None]:
    """(backend, None) for a fast backend, or ("reference", why the fast one is not in use)."""
    if device_type == "cuda":
        scan, why = _mamba_ssm()
        if scan is not None:
            return "mamba_ssm", None
        triton_scan, why_not_triton = _triton_scan()
        return ("triton", None) if triton_scan is not None else ("reference", f"{why}; {why_not_triton}")
    if device_type == "cpu":
        why = cpu_kernel.unavailable_reason()
        return ("cpu_kernel", None) if why is None else ("reference", why)
    return "reference", f"no fast kernel exists for {device_type} tensors"


def _device_type(where: Tensor | torch.device | str) -> str:
    if isinstance(where, Tensor):
        return where.device.type
    return torch.device(where).type


def backend_for(where: Tensor | torch.device | str) -> str:
    """The implementation that serves tensors on this device: "cpu_kernel", "mamba_ssm", "triton" or
    "reference".

    The first time a device type resolves to the slow reference, one warning on this module's logger
    says so and why (a 100x slower scan must not pass unnoticed); later calls stay quiet.
    """
    device_type = _device_type(where)
    backend, why = _resolve(device_type)
    if why is not None and device_type not in _warned:
        with _state_lock:
            if device_type not in _warned:
                _warned.add(device_type)
                label = _DEVICE_LABELS.get(device_type, device_type)
                log.warning("selective scan: %s tensors use the slow Python reference: %s", label, why)
    return backend


def _served(u: Tensor, triton_ok: bool = False) -> str:
    """backend_for(u), counted in backend_calls(): the op's per-call dispatch. The Triton backend serves
    only calls with ``triton_ok`` (a forward it has a kernel for); the others are counted as the reference
    that serves them."""
    backend = backend_for(u)
    if backend == "triton" and not triton_ok:
        backend = "reference"
    key = f"{u.device.type}:{backend}"
    with _state_lock:
        _calls[key] += 1
    return backend


def backend_calls() -> dict[str, int]:
    """How many op calls (forwards and backwards) each ``"device:backend"`` served in this process.

    Lets tests and benchmarks prove which implementation ran, instead of trusting that it did.
    """
    with _state_lock:
        return dict(_calls)


def fallback_reasons() -> dict[str, str]:
    """Why the slow reference serves a device, for each of "cpu" and "cuda" that it serves."""
    reasons = {}
    for device_type in FAST_BACKENDS:
        backend, why = _resolve(device_type)
        if why is not None:
            reasons[device_type] = why
    return reasons


def available_backends() -> dict[str, str]:
    """Which implementation serves each device, and why a faster one is not in use.

    Values: ``"cpu_kernel (C, ctypes)"``, ``"mamba_ssm"``, ``"triton (prvr_plugins, forward only)"`` or
    ``"reference (<why>)"``. Reports only; the warning about a slow device is logged when a tensor first
    asks for it (``backend_for``).
    """
    report = {}
    for device_type in FAST_BACKENDS:
        backend, why = _resolve(device_type)
        report[device_type] = _DESCRIPTIONS[backend] if why is None else f"reference ({why})"
    return report


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _step_size(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """The step size the recurrence uses: softplus(delta + bias)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _kernel_args(u, delta, A, B, C, D, delta_bias):
    """Cast to one compute dtype, make contiguous, and turn B/C time-major: (B G N L) -> (B G L N)."""
    dt = _compute_dtype(u)

    def prep(t):
        return None if t is None else t.to(dt).contiguous()

    return (prep(u), prep(delta), prep(A), B.to(dt).transpose(2, 3).contiguous(),
            C.to(dt).transpose(2, 3).contiguous(), prep(D), prep(delta_bias))


def _scan_forward(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, want_state: bool):
    backend = _served(u, triton_ok=not want_state and u.dtype in _TRITON_DTYPES)
    if backend == "cpu_kernel":
        y, state = cpu_kernel.forward(*_kernel_args(u, delta, A, B, C, D, delta_bias), delta_softplus,
                                      want_state)
        return y.to(u.dtype), state
    if backend == "mamba_ssm":
        out = _mamba_ssm()[0](u, delta, A, B, C, D, None, delta_bias, delta_softplus, True)
        return out[0], out[1]
    if backend == "triton":
        return _triton_scan()[0](u, delta, A, B, C, D, delta_bias, delta_softplus), None
    y, state = selective_scan_ref(u, delta, A, B, C, D, None, delta_bias, delta_softplus, True)
    return y, state


# ----------------------------------------------------------------------------------------------
# The custom ops. B and C always arrive grouped, r(B G N L); selective_scan_fn unsqueezes G = 1.


@torch.library.custom_op("prvr::selective_scan", mutates_args=())
def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                   delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """y r(B D L) of the selective scan (no gate). See ``selective_scan_fn``."""
    return _scan_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, want_state=False)[0]


@torch.library.custom_op("prvr::selective_scan_with_state", mutates_args=())
def selective_scan_with_state(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                              D: Tensor | None, delta_bias: Tensor | None,
                              delta_softplus: bool) -> tuple[Tensor, Tensor]:
    """(y r(B D L), last state r(B D N)) of the selective scan."""
    y, state = _scan_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, want_state=True)
    return y, state.to(_compute_dtype(u))


@selective_scan.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus):
    return torch.empty_like(u)


@selective_scan_with_state.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus):
    return torch.empty_like(u), u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=_compute_dtype(u))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
    ctx.delta_softplus = delta_softplus


def _grads_by_autograd(scan, inputs, delta_softplus, dy, dstate):
    """Backward for the non-kernel paths: re-run a differentiable forward and let autograd do it."""
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_(True) for t in inputs]
        y, state = scan(*leaves[:5], leaves[5], None, leaves[6], delta_softplus, True)
        outs, grads_out = [y], [dy]
        if dstate is not None:
            outs.append(state)
            grads_out.append(dstate)
        wanted = [t for t in leaves if t is not None]
        got = iter(torch.autograd.grad(outs, wanted, grads_out, allow_unused=True))
        return tuple(None if t is None else next(got) for t in leaves)


@torch.library.custom_op("prvr::selective_scan_backward", mutates_args=())
def selective_scan_backward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                            delta_bias: Tensor | None, dy: Tensor, dstate: Tensor | None,
                            delta_softplus: bool) -> list[Tensor]:
    """Gradients [du, ddelta, dA, dB, dC, dD, ddelta_bias] from the C kernel (dD / ddelta_bias are zeros
    when D / delta_bias were None). An op of its own so that torch.compile / AOT autograd see one node
    instead of tracing into ctypes calls on fake tensors."""
    u_c, delta_c, A_c, B_c, C_c, D_c, bias_c = _kernel_args(u, delta, A, B, C, D, delta_bias)
    step = _step_size(delta_c, bias_c, delta_softplus).contiguous()
    dstate_c = None if dstate is None else dstate.to(u_c.dtype).contiguous()
    du, dstep, dA, dB, dC, dD = cpu_kernel.backward(u_c, step, A_c, B_c, C_c, D_c,
                                                    dy.to(u_c.dtype).contiguous(), dstate_c)
    # Chain d(step)/d(delta) = sigmoid(delta + bias) under softplus, 1 otherwise.
    ddelta = dstep
    if delta_softplus:
        raw = delta_c if bias_c is None else delta_c + bias_c[:, None]
        ddelta = dstep * torch.sigmoid(raw)
    dbias = ddelta.sum(dim=(0, 2))
    if dD is None:
        dD = torch.zeros_like(dbias)
    grads = [du, ddelta, dA, dB.transpose(2, 3), dC.transpose(2, 3), dD, dbias]
    like = [u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A]
    return [g.to(t.dtype).contiguous() for g, t in zip(grads, like, strict=True)]


@selective_scan_backward.register_fake
def _(u, delta, A, B, C, D, delta_bias, dy, dstate, delta_softplus):
    dim = A.shape[0]
    return [torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), A.new_empty(dim, dtype=(D if D is not None else A).dtype),
            A.new_empty(dim, dtype=(delta_bias if delta_bias is not None else A).dtype)]


def _scan_backward(ctx, dy: Tensor, dstate: Tensor | None):
    u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
    inputs = (u, delta, A, B, C, D, delta_bias)
    backend = _served(u)
    if backend == "cpu_kernel":
        grads = selective_scan_backward(*inputs, dy, dstate, ctx.delta_softplus)
        grads = (*grads[:5], grads[5] if D is not None else None,
                 grads[6] if delta_bias is not None else None)
    else:
        scan = _mamba_ssm()[0] if backend == "mamba_ssm" else selective_scan_ref
        grads = _grads_by_autograd(scan, inputs, ctx.delta_softplus, dy, dstate)
    pairs = zip(grads, inputs, strict=True)
    grads = tuple(None if g is None or t is None else g.to(t.dtype) for g, t in pairs)
    return (*grads, None)


def _backward_y(ctx, dy):
    return _scan_backward(ctx, dy, None)


def _backward_y_state(ctx, dy, dstate):
    if dy is None:
        dy = torch.zeros_like(ctx.saved_tensors[0])
    return _scan_backward(ctx, dy, dstate)


torch.library.register_autograd("prvr::selective_scan", _backward_y, setup_context=_setup_context)
torch.library.register_autograd("prvr::selective_scan_with_state", _backward_y_state,
                                setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public entry point with mamba-ssm's signature.


def selective_scan_fn(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Selective scan with mamba-ssm's ``selective_scan_fn`` semantics, differentiable.

    Args:
        u: r(B D L) input. delta: r(B D L) step sizes (before ``delta_bias`` and softplus).
        A: r(D N) state matrix (real). B, C: r(B N L) or grouped r(B G N L), G dividing D.
        D: r(D) skip. z: r(B D L) gate, applied as ``y * silu(z)``. delta_bias: r(D).
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state r(B D N) (before the gate).

    Returns:
        y r(B D L) in u's dtype, or ``(y, last_state)``.

    Raises:
        ValueError: an argument has the wrong shape, dtype or device (the message names it).
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    if return_last_state:
        y, state = selective_scan_with_state(u, delta, A, B, C, D, delta_bias, delta_softplus)
    else:
        y, state = selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus), None
    if z is not None:
        y = y * F.silu(z)
    return (y, state) if return_last_state else y
