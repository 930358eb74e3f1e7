"""Tests for prvr_export/ops/selective_scan.py: the op against its sequential reference.

Every case builds seeded, Mamba-like inputs (``make_inputs``), runs ``selective_scan_fn`` (the C kernel on
CPU, whichever backend ``available_backends()`` names elsewhere) and ``selective_scan_ref`` on separate
copies of them, and compares outputs and gradients. Nothing is compared against stored numbers.

Fast-path guard (``on_fast_path``): if the C kernel failed to build, the op would run the reference and
every comparison would pass comparing the reference with itself. So each comparison first checks that
the kernel serves CPU tensors, and afterwards that it served every op call (``backend_calls()`` and the
kernel's own ``cpu_kernel.calls()``). Without the kernel the test fails, naming the reason, unless
``PRVR_ALLOW_REFERENCE_SCAN=1`` (machines without a C compiler): then it is skipped, and says why.

Tolerance rule, per dtype of ``u``: ``assert_close(actual, expected, rtol, atol=atol_rel * max|expected|)``,
so atol is relative to the tensor's own magnitude (entries near zero are judged against the largest one).

    dtype            rtol     atol_rel   why
    float64          1e-12    1e-12      libm exp vs torch exp, different summation order
    float32          1e-5     1e-5       the kernel's polynomial expf (~2e-7 rel) and summation order
    float16          3e-3     3e-3       fp32 compute on both sides, but y is rounded to fp16 and the gate
    bfloat16         2.5e-2   2.5e-2     y * silu(z) runs in the input dtype outside the op: ~6 half-ulps
    float32 grads    1e-4     1e-4       kernel backward vs autograd through the reference
    float64 grads    1e-10    1e-10
    CUDA (gpu mark)  6e-4     2e-3       mamba-ssm's own fp32 tolerances (fast exp, chunked scan)
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from prvr_export.ops import cpu_kernel
from prvr_export.ops.selective_scan import (
    FAST_BACKENDS,
    available_backends,
    backend_calls,
    backend_for,
    check_inputs,
    fallback_reasons,
    selective_scan_fn,
    selective_scan_ref,
)

TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (2.5e-2, 2.5e-2),
}
GRAD_TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-4)}
CUDA_TOL = (6e-4, 2e-3)

TENSOR_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
ALLOW_REFERENCE_ENV = "PRVR_ALLOW_REFERENCE_SCAN"
REPO = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------------------------------------
# The fast-path guard (see the module docstring).


def _reference_serves(device: str) -> None:
    """Fail (or skip, where allowed) because the reference, not the fast backend, serves ``device``."""
    why = fallback_reasons().get(device, "the op dispatched to the reference")
    if device == "cuda":  # mamba-ssm is optional: without it, there is nothing to compare on CUDA
        pytest.skip(f"CUDA tensors use the reference ({why}): comparing it with itself proves nothing")
    if os.environ.get(ALLOW_REFERENCE_ENV) == "1":
        pytest.skip(f"the C kernel does not serve CPU tensors ({why}), so this would compare the reference "
                    f"with itself; accepted because {ALLOW_REFERENCE_ENV}=1")
    pytest.fail(f"selective scan: CPU tensors are not served by the C kernel: {why}. These tests would "
                f"compare the reference with itself. Install a C compiler (or set CC), or set "
                f"{ALLOW_REFERENCE_ENV}=1 to accept the reference on this machine.", pytrace=False)


@contextlib.contextmanager
def on_fast_path(device: str = "cpu"):
    """Run op calls that must be served by ``device``'s fast backend; check it before and after."""
    fast = backend_for(device)
    if fast == "reference" or fast not in (FAST_BACKENDS[device], "triton"):
        _reference_serves(device)
    served_before, kernel_before = backend_calls(), cpu_kernel.calls()
    yield
    served = {k: n - served_before.get(k, 0) for k, n in backend_calls().items()}
    served = {k: n for k, n in served.items() if n}
    fast = f"{device}:{fast}"
    if set(served) - {fast}:
        _reference_serves(device)
    assert served, "no selective-scan op call ran inside on_fast_path()"
    if device == "cpu":  # the compiled code itself counts its calls: one per op forward or backward
        kernel = cpu_kernel.calls()
        ran = sum(kernel[k] - kernel_before[k] for k in kernel)
        assert ran == served[fast], f"C kernel ran {ran} times for {served[fast]} op calls"


# ---------------------------------------------------------------------------------------------
# Helpers: seeded inputs, comparison, running both implementations.


def case_seed(*params: object) -> int:
    """A stable seed per test case, so each case sees its own inputs and reruns see the same ones."""
    return zlib.crc32(repr(params).encode())


def make_inputs(
    seed: int,
    *,
    batch: int = 2,
    dim: int = 24,
    dstate: int = 16,
    length: int = 7,
    groups: int | None = None,
    with_D: bool = True,
    with_z: bool = True,
    with_bias: bool = True,
    softplus: bool = True,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Keyword arguments for ``selective_scan_fn`` with values like a trained Mamba layer's.

    u, delta, B, C, z are in ``dtype``; A, D, delta_bias stay fp32 as mamba-ssm keeps them (fp64 when
    ``dtype`` is fp64). Every tensor is drawn whatever the flags, so toggling a flag changes nothing else.
    ``groups=None`` gives B, C r(B N L); otherwise r(B G N L).
    """
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=f64)

    def uniform(lo, hi, *shape):
        return torch.empty(*shape, dtype=f64).uniform_(lo, hi, generator=g)

    bc_shape = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    # S4D-real-like A with random rates: -exp(U(log 1, log 16)).
    A = -torch.exp(uniform(0.0, math.log(16.0), dim, dstate))
    u, z, D = randn(batch, dim, length), randn(batch, dim, length), randn(dim)
    B, C = randn(*bc_shape), randn(*bc_shape)
    # mamba's dt init: softplus(delta_bias) is log-uniform in [1e-3, 1e-1], bias = inverse softplus of it.
    dt_init = torch.exp(uniform(math.log(1e-3), math.log(1e-1), dim))
    noise = randn(batch, dim, length)
    if softplus:
        bias = dt_init + torch.log(-torch.expm1(-dt_init))  # inverse of softplus
        # Chosen so that the step softplus(delta + bias) spans ~1e-3 .. 1 (1st..99th percentile).
        delta = 1.25 * noise + (1.5 if with_bias else -2.5)
    else:
        # Positive steps used as they are: delta log-uniform in [1e-3, 1], plus a small positive bias.
        bias = dt_init
        delta = torch.exp(math.log(1e-3) + (math.log(1.0) - math.log(1e-3)) * torch.special.ndtr(noise))
    wdtype = f64 if dtype == f64 else torch.float32
    return {
        "u": u.to(dtype),
        "delta": delta.to(dtype),
        "A": A.to(wdtype),
        "B": B.to(dtype),
        "C": C.to(dtype),
        "D": D.to(wdtype) if with_D else None,
        "z": z.to(dtype) if with_z else None,
        "delta_bias": bias.to(wdtype) if with_bias else None,
        "delta_softplus": softplus,
    }


def leaf_copies(inputs: dict, requires_grad: bool = True) -> dict:
    """Independent leaf copies of the tensor arguments (the `*_ref` clones of mamba's tests)."""
    return {
        k: v.detach().clone().requires_grad_(requires_grad) if isinstance(v, torch.Tensor) else v
        for k, v in inputs.items()
    }


def assert_close_rel(actual, expected, rtol: float, atol_rel: float, what: str = "") -> None:
    """assert_close with atol scaled by max|expected| (the rule at the top of this file)."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol_rel * max(scale, 1e-30),
        msg=lambda m: f"{what}: {m}",
    )


def assert_grads_close(op_in: dict, ref_in: dict, tol: tuple[float, float], what: str = "") -> None:
    """Every tensor argument's .grad from the op equals the reference's (an absent grad counts as zeros)."""
    for name in TENSOR_ARGS:
        t_op, t_ref = op_in[name], ref_in[name]
        if t_op is None:
            continue
        g_op = t_op.grad if t_op.grad is not None else torch.zeros_like(t_op)
        g_ref = t_ref.grad if t_ref.grad is not None else torch.zeros_like(t_ref)
        assert_close_rel(g_op, g_ref, *tol, what=f"{what} grad of {name}")


def check_forward(inputs: dict, return_last_state: bool, tol: tuple[float, float] | None = None) -> None:
    """Forward of the op vs the reference on the same inputs, both outputs when there are two."""
    tol = tol or TOL[inputs["u"].dtype]
    with on_fast_path(inputs["u"].device.type):
        out = selective_scan_fn(**inputs, return_last_state=return_last_state)
    ref = selective_scan_ref(**inputs, return_last_state=return_last_state)
    if not return_last_state:
        out, ref = (out,), (ref,)
    assert len(out) == len(ref)
    for name, o, r in zip(("y", "last_state"), out, ref, strict=False):
        assert o.shape == r.shape, name
        assert torch.isfinite(o).all(), f"{name} has non-finite values"
        # The state dtype contract is its own test; here compare values at the reference's precision.
        assert_close_rel(o.to(r.dtype), r, *tol, what=name)


def run_backward(inputs: dict, return_last_state: bool, use: str, seed: int, fn) -> dict:
    """Leaf copies of ``inputs``, a loss <gy, y> (+ <gs, state>) through ``fn``, and backward.

    ``use`` picks the outputs in the loss: "y", "state" or "both". The upstream gradients come from
    ``seed`` so that op and reference see the same ones. With the op, forward and backward must both run
    on the fast path.
    """
    leaves = leaf_copies(inputs)
    device = inputs["u"].device.type
    with on_fast_path(device) if fn is selective_scan_fn else contextlib.nullcontext():
        out = fn(**leaves, return_last_state=return_last_state)
        y, state = out if return_last_state else (out, None)
        g = torch.Generator().manual_seed(seed)
        loss = 0
        if use in ("y", "both"):
            loss = loss + (y * torch.randn(y.shape, generator=g, dtype=y.dtype).to(y.device)).sum()
        if use in ("state", "both"):
            gs = torch.randn(state.shape, generator=g, dtype=state.dtype).to(y.device)
            loss = loss + (state * gs).sum()
        loss.backward()
    return leaves


# ---------------------------------------------------------------------------------------------
# Forward vs reference.

# Vector blocks are 16 channels of one group; these layouts hit full, partial and mixed blocks.
LAYOUTS = {
    "ungrouped-D24": {"dim": 24, "dstate": 16, "groups": None},  # one full and one partial block of 8
    "G2-D8": {"dim": 8, "dstate": 4, "groups": 2},  # 4 channels per group: partial blocks only
    "G4-D8": {"dim": 8, "dstate": 16, "groups": 4},  # 2 per group
    "G2-D40": {"dim": 40, "dstate": 5, "groups": 2},  # 20 per group: not a multiple of 16, odd N
    "G2-D32": {"dim": 32, "dstate": 16, "groups": 2},  # exactly one full block per group
}
FLAGS = ("with_D", "with_z", "with_bias", "softplus", "last_state")
ALL_ON = dict.fromkeys(FLAGS, True)
# All on, all off, and each flag off alone: every flag is seen both ways on every layout and length.
FAST_FLAG_SETS = [ALL_ON, dict.fromkeys(FLAGS, False)] + [{**ALL_ON, f: False} for f in FLAGS]


def _flag_id(flags: dict) -> str:
    on = [f for f in FLAGS if flags[f]]
    return "all" if len(on) == len(FLAGS) else ("none" if not on else "+".join(on))


def _check_case(layout: str, length: int, flags: dict, dtype=torch.float32) -> None:
    flags = dict(flags)
    last_state = flags.pop("last_state")
    seed = case_seed(layout, length, sorted(flags.items()), last_state, str(dtype))
    inputs = make_inputs(seed, length=length, dtype=dtype, **LAYOUTS[layout], **flags)
    check_forward(inputs, last_state)


@pytest.mark.parametrize("flags", FAST_FLAG_SETS, ids=_flag_id)
@pytest.mark.parametrize("length", [1, 7, 128])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_matches_reference(layout, length, flags):
    _check_case(layout, length, flags)


@pytest.mark.parametrize(
    ("layout", "flags"),
    [("ungrouped-D24", ALL_ON), ("G2-D40", ALL_ON), ("G4-D8", dict.fromkeys(FLAGS, False))],
    ids=["ungrouped-D24-all", "G2-D40-all", "G4-D8-none"],
)
def test_forward_matches_reference_long(layout, flags):
    _check_case(layout, 1000, flags)


@pytest.mark.parametrize("layout", ["ungrouped-D24", "G2-D40", "G4-D8"])
@pytest.mark.parametrize("length", [7, 128])
def test_forward_matches_reference_float64(layout, length):
    _check_case(layout, length, ALL_ON, dtype=torch.float64)
    _check_case(layout, length, dict.fromkeys(FLAGS, False), dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["ungrouped-D24", "G2-D40"])
def test_forward_low_precision_inputs(layout, dtype):
    # fp32 compute inside on both sides; compared on the very same low-precision inputs.
    _check_case(layout, 128, ALL_ON, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_output_dtypes_match_reference(dtype):
    # y comes back in u's dtype; the last state in the reference's (fp32 compute) dtype, as in mamba-ssm,
    # where the CUDA kernel's state has A's dtype: rounding it to fp16 would lose what a chunked caller
    # carries over to the next chunk.
    inputs = make_inputs(case_seed("dtypes", str(dtype)), dim=8, dstate=4, length=5, dtype=dtype)
    with on_fast_path():
        y, state = selective_scan_fn(**inputs, return_last_state=True)
    y_ref, state_ref = selective_scan_ref(**inputs, return_last_state=True)
    assert y.dtype == y_ref.dtype == dtype
    assert state.dtype == state_ref.dtype, f"last_state is {state.dtype}, the reference's {state_ref.dtype}"


@pytest.mark.parametrize(
    "shape",
    [
        {"batch": 1, "dim": 1, "dstate": 1, "length": 1, "groups": None},
        {"batch": 1, "dim": 17, "dstate": 256, "length": 9, "groups": None},  # d_state at its limit
        {"batch": 3, "dim": 16, "dstate": 16, "length": 33, "groups": 1},  # grouped, G = 1
        {"batch": 2, "dim": 6, "dstate": 3, "length": 5, "groups": 6},  # one channel per group
    ],
    ids=["all-ones", "N256", "G1", "G=D"],
)
def test_forward_edge_shapes(shape):
    inputs = make_inputs(case_seed("edge", sorted(shape.items())), **shape)
    check_forward(inputs, return_last_state=True)


def test_forward_non_contiguous_inputs():
    # Mamba layers hand over transposed views: u from (B, L, D), B and C sliced from one projection.
    inputs = make_inputs(case_seed("strided"), dim=24, dstate=16, length=50, groups=None)
    strided = dict(inputs)
    for name in ("u", "delta", "z"):
        strided[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
    bc = torch.cat([inputs["B"], inputs["C"]], dim=1).transpose(1, 2).contiguous().transpose(1, 2)
    strided["B"], strided["C"] = bc[:, :16], bc[:, 16:]
    strided["A"] = inputs["A"].t().contiguous().t()
    assert not any(strided[k].is_contiguous() for k in ("u", "delta", "z", "B", "C", "A"))
    with on_fast_path():
        y = selective_scan_fn(**strided)
    assert_close_rel(y, selective_scan_ref(**inputs), *TOL[torch.float32], what="y")
    op_in = run_backward(strided, False, "y", 7, selective_scan_fn)
    ref_in = run_backward(inputs, False, "y", 7, selective_scan_ref)
    assert_grads_close(op_in, ref_in, GRAD_TOL[torch.float32])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("flags", [dict(zip(FLAGS, bits, strict=True)) for bits in
                                   itertools.product([False, True], repeat=len(FLAGS))], ids=_flag_id)
@pytest.mark.parametrize("length", [1, 7, 128, 1000])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_matches_reference_full_grid(layout, length, flags, dtype):
    _check_case(layout, length, flags, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize("return_last_state", [False, True], ids=["y", "y+state"])
@pytest.mark.parametrize("groups", [None, 2], ids=["ungrouped", "G2"])
def test_gradcheck_float64(groups, return_last_state):
    # u, delta, A, B, C, D, z, delta_bias all require grad; softplus on. Tiny shapes keep it fast.
    inputs = leaf_copies(make_inputs(case_seed("gradcheck", groups, return_last_state), batch=2, dim=4,
                                     dstate=3, length=5, groups=groups, dtype=torch.float64))
    tensors = tuple(inputs[k] for k in TENSOR_ARGS)

    def fn(*args):
        return selective_scan_fn(*args, delta_softplus=True, return_last_state=return_last_state)

    with on_fast_path():
        assert torch.autograd.gradcheck(fn, tensors)


def test_gradcheck_float64_no_options():
    # No D, z, delta_bias and no softplus: delta is used as the step directly.
    inputs = leaf_copies(make_inputs(case_seed("gradcheck-bare"), batch=2, dim=4, dstate=3, length=5,
                                     groups=2, with_D=False, with_z=False, with_bias=False,
                                     softplus=False, dtype=torch.float64))
    tensors = tuple(inputs[k] for k in ("u", "delta", "A", "B", "C"))
    with on_fast_path():
        assert torch.autograd.gradcheck(lambda *a: selective_scan_fn(*a, return_last_state=True), tensors)


@pytest.mark.parametrize("return_last_state", [False, True], ids=["y", "y+state"])
@pytest.mark.parametrize("groups", [None, 2], ids=["ungrouped", "G2"])
def test_gradients_match_reference_float32(groups, return_last_state):
    seed = case_seed("grad32", groups, return_last_state)
    inputs = make_inputs(seed, batch=2, dim=24, dstate=16, length=64, groups=groups)
    use = "both" if return_last_state else "y"
    op_in = run_backward(inputs, return_last_state, use, seed, selective_scan_fn)
    ref_in = run_backward(inputs, return_last_state, use, seed, selective_scan_ref)
    assert_grads_close(op_in, ref_in, GRAD_TOL[torch.float32])


@pytest.mark.parametrize("use", ["state", "both", "y"])
def test_gradients_with_last_state(use):
    # Only the last state in the loss (y unused): the backward gets dy = None and must still be right.
    seed = case_seed("grad-state", use)
    inputs = make_inputs(seed, batch=2, dim=40, dstate=8, length=33, groups=2)
    op_in = run_backward(inputs, True, use, seed, selective_scan_fn)
    ref_in = run_backward(inputs, True, use, seed, selective_scan_ref)
    assert_grads_close(op_in, ref_in, GRAD_TOL[torch.float32])


@pytest.fixture
def torch_threads():
    """Set torch's thread count for one test (the kernel splits work across it), then restore it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_count_does_not_change_results(threads, torch_threads):
    # Enough work for the kernel to split forward blocks and backward channels (and dB/dC partial sums)
    # across threads; one thread must agree too.
    torch_threads(threads)
    seed = case_seed("threads", threads)
    inputs = make_inputs(seed, batch=2, dim=40, dstate=16, length=400, groups=2)
    check_forward(inputs, return_last_state=True)
    op_in = run_backward(inputs, True, "both", seed, selective_scan_fn)
    ref_in = run_backward(inputs, True, "both", seed, selective_scan_ref)
    assert_grads_close(op_in, ref_in, GRAD_TOL[torch.float32])


# ---------------------------------------------------------------------------------------------
# Numerical safety on long sequences with extreme step sizes.


def _extreme_inputs(regime: str, dtype: torch.dtype, seed: int) -> dict:
    """L = 3000, standard S4D-real A = -(1..N) with N = 32, and steps of one regime.

    "large": steps 1..5, so dt*A reaches -160 and exp underflows in fp32; "small": steps ~1e-4, the state
    integrates over thousands of steps; "mixed": log-uniform 1e-4..5; "softplus-large": raw delta 1..30
    through softplus (the x > 20 branch and the large-x end of the float polynomial).
    """
    g = torch.Generator().manual_seed(seed)
    batch, dim, dstate, length = 1, 4, 32, 3000
    f64 = torch.float64
    A = -torch.arange(1, dstate + 1, dtype=f64).repeat(dim, 1)
    shape = (batch, dim, length)
    steps = {
        "large": lambda: torch.empty(shape, dtype=f64).uniform_(1.0, 5.0, generator=g),
        "small": lambda: torch.empty(shape, dtype=f64).uniform_(0.5e-4, 2e-4, generator=g),
        "mixed": lambda: torch.exp(torch.empty(shape, dtype=f64).uniform_(math.log(1e-4), math.log(5.0),
                                                                          generator=g)),
        "softplus-large": lambda: torch.empty(shape, dtype=f64).uniform_(1.0, 30.0, generator=g),
    }
    delta = steps[regime]()
    tensors = {
        "u": torch.randn(shape, generator=g, dtype=f64),
        "delta": delta,
        "A": A,
        "B": torch.randn(batch, dstate, length, generator=g, dtype=f64),
        "C": torch.randn(batch, dstate, length, generator=g, dtype=f64),
        "D": torch.randn(dim, generator=g, dtype=f64),
        "z": torch.randn(shape, generator=g, dtype=f64),
    }
    out = {k: v.to(dtype) for k, v in tensors.items()}
    return {**out, "delta_bias": None, "delta_softplus": regime == "softplus-large"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("regime", ["large", "small", "mixed", "softplus-large"])
def test_long_sequence_extreme_steps(regime, dtype):
    inputs = _extreme_inputs(regime, dtype, case_seed("extreme", regime, str(dtype)))
    check_forward(inputs, return_last_state=True)


def test_long_sequence_extreme_steps_gradients():
    seed = case_seed("extreme-grad")
    inputs = _extreme_inputs("mixed", torch.float32, seed)
    op_in = run_backward(inputs, True, "both", seed, selective_scan_fn)
    ref_in = run_backward(inputs, True, "both", seed, selective_scan_ref)
    for name in TENSOR_ARGS:
        if op_in[name] is not None:
            assert torch.isfinite(op_in[name].grad).all(), name
    assert_grads_close(op_in, ref_in, GRAD_TOL[torch.float32])


# ---------------------------------------------------------------------------------------------
# The reference fallback and the optional mamba-ssm import, each in a fresh interpreter.


def _run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_reference_fallback_when_kernel_disabled(tmp_path):
    # PRVR_DISABLE_CPU_KERNEL is read once per process: the fallback needs its own interpreter.
    # The reference must give the reference's numbers, be counted as what served the calls, and be
    # announced by exactly one warning for the CPU however many calls follow.
    code = """
        import torch
        from prvr_export.ops import cpu_kernel
        from prvr_export.ops.selective_scan import (available_backends, backend_calls, backend_for,
                                                    selective_scan_fn, selective_scan_ref)

        backend = available_backends()["cpu"]
        assert backend.startswith("reference"), backend
        g = torch.Generator().manual_seed(3)
        def leaves():
            g.manual_seed(3)
            r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
            t = dict(u=r(2, 8, 16), delta=r(2, 8, 16), A=-torch.exp(r(8, 4).abs()), B=r(2, 2, 4, 16),
                     C=r(2, 2, 4, 16), D=r(8), z=r(2, 8, 16), delta_bias=r(8) * 0.1)
            return {k: v.requires_grad_(True) for k, v in t.items()}
        outs = []
        for fn in (selective_scan_fn, selective_scan_ref, selective_scan_fn):
            x = leaves()
            y, s = fn(**x, delta_softplus=True, return_last_state=True)
            (y.square().sum() + s.sum()).backward()
            outs.append((y, s, {k: v.grad for k, v in x.items()}))
        (y, s, gr), (y_ref, s_ref, gr_ref) = outs[:2]
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-12)
        for k in gr:
            torch.testing.assert_close(gr[k], gr_ref[k], rtol=1e-10, atol=1e-10, msg=k)
        print("BACKEND", backend)
        print("FOR", backend_for(torch.empty(1)))
        print("CALLS", sorted(backend_calls().items()), sorted(cpu_kernel.calls().items()))
    """
    proc = _run_python(code, tmp_path, PRVR_DISABLE_CPU_KERNEL="1")
    assert "BACKEND reference (disabled by PRVR_DISABLE_CPU_KERNEL)" in proc.stdout
    assert "FOR reference" in proc.stdout
    # Two op forwards and two backwards, all on the reference; the compiled kernel never ran.
    assert "CALLS [('cpu:reference', 4)] [('backward', 0), ('forward', 0)]" in proc.stdout
    warning = "selective scan: CPU tensors use the slow Python reference: disabled by PRVR_DISABLE_CPU_KERNEL"
    assert proc.stderr.count(warning) == 1, proc.stderr
    assert proc.stderr.count("selective scan") == 1, proc.stderr


def _pytest_one(node: str, **env: str | None) -> subprocess.CompletedProcess:
    """Run one test of this file in a child pytest with ``env`` changes (None removes a variable)."""
    child_env = {k: v for k, v in os.environ.items() if k not in env}
    child_env.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"{__file__}::{node}"],
        cwd=REPO, env=child_env, capture_output=True, text=True, timeout=300,
    )


GUARDED_NODE = "test_forward_edge_shapes[all-ones]"


def test_guard_fails_when_the_reference_serves_cpu():
    # The guard is real: with the kernel disabled and no opt-out, a kernel-vs-reference test fails and
    # names the reason, instead of passing by comparing the reference with itself.
    proc = _pytest_one(GUARDED_NODE, PRVR_DISABLE_CPU_KERNEL="1", PRVR_ALLOW_REFERENCE_SCAN=None)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed" in out, out
    assert "CPU tensors are not served by the C kernel: disabled by PRVR_DISABLE_CPU_KERNEL" in out, out
    assert "PRVR_ALLOW_REFERENCE_SCAN=1" in out, out


def test_guard_skips_with_the_reason_when_the_reference_is_allowed():
    proc = _pytest_one(GUARDED_NODE, PRVR_DISABLE_CPU_KERNEL="1", PRVR_ALLOW_REFERENCE_SCAN="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 skipped" in out, out
    assert "disabled by PRVR_DISABLE_CPU_KERNEL" in out, out
    assert "accepted because PRVR_ALLOW_REFERENCE_SCAN=1" in out, out


def test_kernel_serves_forward_and_backward_on_cpu():
    # In this process the kernel builds (or the guard has already said why not): one op forward and one
    # backward are one kernel forward and one kernel backward, and nothing ran on the reference.
    if backend_for("cpu") != "cpu_kernel":
        _reference_serves("cpu")
    inputs = leaf_copies(make_inputs(case_seed("counted"), dim=8, dstate=4, length=9))
    served, kernel = backend_calls(), cpu_kernel.calls()
    selective_scan_fn(**inputs).sum().backward()
    after_served, after_kernel = backend_calls(), cpu_kernel.calls()
    assert after_served.get("cpu:cpu_kernel", 0) - served.get("cpu:cpu_kernel", 0) == 2
    assert after_served.get("cpu:reference", 0) == served.get("cpu:reference", 0)
    assert {k: after_kernel[k] - kernel[k] for k in kernel} == {"forward": 1, "backward": 1}


def test_cpu_path_does_not_import_mamba_ssm(tmp_path):
    # A stand-in mamba_ssm is importable, so "not imported" is a real claim even where mamba-ssm is absent.
    fake = tmp_path / "site" / "mamba_ssm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    code = """
        import sys
        import torch
        import prvr_export.ops.selective_scan as ss

        assert "mamba_ssm" not in sys.modules, "imported by `import prvr_export.ops.selective_scan`"
        u = torch.randn(1, 4, 6, requires_grad=True)
        y = ss.selective_scan_fn(u, torch.rand(1, 4, 6), -torch.ones(4, 2), torch.randn(1, 2, 6),
                                 torch.randn(1, 2, 6), z=torch.randn(1, 4, 6), return_last_state=True)[0]
        y.sum().backward()
        assert "mamba_ssm" not in sys.modules, "imported by a CPU call"
        print("OK")
    """
    pythonpath = os.pathsep.join(p for p in (str(fake.parent), os.environ.get("PYTHONPATH")) if p)
    assert "OK" in _run_python(code, tmp_path, PYTHONPATH=pythonpath).stdout


# ---------------------------------------------------------------------------------------------
# Op registration: schema, fake kernels, autograd (opcheck), and torch.export.


def _op_args(with_optional: bool, softplus: bool) -> tuple:
    inputs = leaf_copies(make_inputs(case_seed("opcheck", with_optional), batch=2, dim=8, dstate=4,
                                     length=6, groups=2, with_D=with_optional, with_bias=with_optional,
                                     softplus=softplus))
    return tuple(inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")) + (softplus,)


# One test per opcheck utility, so a failure names what is wrong. test_aot_dispatch_dynamic traces
# forward and backward with fake tensors, as torch.compile does for training.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("test_util", OPCHECK_UTILS)
@pytest.mark.parametrize("with_optional", [True, False], ids=["D+bias", "no-optional"])
@pytest.mark.parametrize("op_name", ["selective_scan", "selective_scan_with_state"])
def test_opcheck(op_name, with_optional, test_util):
    op = getattr(torch.ops.prvr, op_name).default
    torch.library.opcheck(op, _op_args(with_optional, softplus=with_optional), test_utils=test_util)


class _ScanLayer(nn.Module):
    """The scan as a Mamba layer calls it: parameters A_log, D, dt bias; gate z."""

    def __init__(self, dim: int = 8, dstate: int = 4):
        super().__init__()
        inputs = make_inputs(case_seed("export-params"), dim=dim, dstate=dstate)
        self.A_log = nn.Parameter(torch.log(-inputs["A"]))
        self.D = nn.Parameter(inputs["D"])
        self.dt_bias = nn.Parameter(inputs["delta_bias"])

    def forward(self, u, delta, B, C, z):
        return selective_scan_fn(u, delta, -torch.exp(self.A_log), B, C, self.D, z=z,
                                 delta_bias=self.dt_bias, delta_softplus=True)


def _layer_inputs(length: int) -> tuple:
    x = make_inputs(case_seed("export", length), batch=2, dim=8, dstate=4, length=length, groups=2)
    return tuple(x[k] for k in ("u", "delta", "B", "C", "z"))


def test_torch_export_single_node_dynamic_length():
    layer = _ScanLayer().eval()
    L = torch.export.Dim("length", min=2, max=4096)
    dynamic = {"u": {2: L}, "delta": {2: L}, "B": {3: L}, "C": {3: L}, "z": {2: L}}
    programs = {n: torch.export.export(layer, _layer_inputs(n), dynamic_shapes=dynamic) for n in (16, 64)}
    for n, ep in programs.items():
        calls = [node.target for node in ep.graph.nodes if node.op == "call_function"]
        scans = [t for t in calls if "prvr" in str(t)]
        assert scans == [torch.ops.prvr.selective_scan.default], f"L={n}: {scans}"
    # No loop over time unrolled into the graph: the sample length does not change the graph.
    n16, n64 = (len(ep.graph.nodes) for ep in programs.values())
    assert n16 == n64
    new = _layer_inputs(37)
    with torch.no_grad(), on_fast_path():
        expected = layer(*new)
        actual = programs[16].module()(*new)
    assert_close_rel(actual, expected, *TOL[torch.float32], what="exported y")
    assert_close_rel(expected, selective_scan_ref(*new[:2], -torch.exp(layer.A_log), *new[2:4], layer.D,
                                                  new[4], layer.dt_bias, True),
                     *TOL[torch.float32], what="eager y vs reference")


# ---------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the argument and what was expected.


def _valid(dtype=torch.float32) -> dict:
    # batch 2, dim 8, d_state 4, length 7; B/C grouped with G = 2.
    x = make_inputs(0, batch=2, dim=8, dstate=4, length=7, groups=2, dtype=dtype)
    x.pop("delta_softplus")
    return x


BAD_INPUTS = {
    "u-2d": ({"u": torch.randn(8, 7)}, r"`u` must be a tensor of shape \(batch, dim, length\)"),
    "delta-shape": ({"delta": torch.randn(2, 8, 6)},
                    r"`delta` must be a tensor of shape \(batch, dim, length\) = \(2, 8, 7\)"),
    "A-first-dim": ({"A": -torch.rand(9, 4)}, r"`A` must be a tensor of shape \(dim, d_state\) with dim = 8"),
    "A-complex": ({"A": torch.complex(-torch.rand(8, 4), torch.rand(8, 4))}, r"`A` must be real-valued"),
    "A-dstate-0": ({"A": torch.empty(8, 0)}, r"`A` must be .*1 <= d_state <= 256"),
    "A-dstate-257": ({"A": -torch.rand(8, 257)}, r"`A` must be .*1 <= d_state <= 256"),
    "B-3d-wrong-N": ({"B": torch.randn(2, 5, 7)},
                     r"`B` must be a tensor of shape \(batch, d_state, length\) = \(2, 4, 7\)"),
    "B-groups-not-dividing": ({"B": torch.randn(2, 3, 4, 7)}, r"`B` must be .*groups dividing dim = 8"),
    "C-grouped-differently": ({"C": torch.randn(2, 4, 4, 7)}, r"`C` must be grouped like B \(2 groups\)"),
    # Mixed 3-D / 4-D: B has 2 groups, C none (or the reverse). mamba-ssm rejects both.
    "C-ungrouped-B-grouped": ({"C": torch.randn(2, 4, 7)}, r"`[BC]`.*group"),
    "C-grouped-B-ungrouped": ({"B": torch.randn(2, 4, 7)}, r"`[BC]`.*group"),
    "D-shape": ({"D": torch.randn(9)}, r"`D` must be None or a tensor of shape \(dim,\) = \(8,\)"),
    "z-shape": ({"z": torch.randn(2, 8, 6)},
                r"`z` must be None or a tensor of shape \(batch, dim, length\) = \(2, 8, 7\)"),
    "delta_bias-shape": ({"delta_bias": torch.randn(8, 1)},
                         r"`delta_bias` must be None or a tensor of shape \(dim,\) = \(8,\)"),
    "delta-dtype": ({"delta": torch.rand(2, 8, 7, dtype=torch.float64)},
                    r"`delta` must be of u's dtype torch.float32, got torch.float64"),
    "length-0": ({"u": torch.randn(2, 8, 0), "delta": torch.randn(2, 8, 0), "z": torch.randn(2, 8, 0),
                  "B": torch.randn(2, 2, 4, 0), "C": torch.randn(2, 2, 4, 0)},
                 r"`u` must be a sequence of at least one step \(length > 0\)"),
    "A-device": ({"A": torch.empty(8, 4, device="meta")}, r"`A` must be on u's device cpu, got meta"),
}


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS)
def test_bad_input_raises_value_error(change, message):
    inputs = {**_valid(), **change}
    with pytest.raises(ValueError, match=message):
        selective_scan_fn(**inputs)
    with pytest.raises(ValueError, match=message):
        check_inputs(**inputs)


def test_valid_input_passes_check():
    check_inputs(**_valid())
    # B ungrouped and C with an explicit single group describe the same thing.
    x = _valid()
    x["B"], x["C"] = x["B"][:, 0], x["C"][:, :1]
    check_inputs(**x)


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU, or with CPU torch, by tests/conftest.py).


@pytest.mark.gpu("torch")
@pytest.mark.parametrize("return_last_state", [False, True])
@pytest.mark.parametrize("groups", [None, 2], ids=["ungrouped", "G2"])
def test_cuda_matches_reference(groups, return_last_state):
    seed = case_seed("cuda", groups, return_last_state)
    cpu = make_inputs(seed, batch=2, dim=48, dstate=16, length=300, groups=groups)
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in cpu.items()}
    assert available_backends()["cuda"]  # reports mamba_ssm or the reference, never raises
    check_forward(inputs, return_last_state, tol=CUDA_TOL)
    use = "both" if return_last_state else "y"
    op_in = run_backward(inputs, return_last_state, use, seed, selective_scan_fn)
    ref_in = run_backward(inputs, return_last_state, use, seed, selective_scan_ref)
    assert_grads_close(op_in, ref_in, CUDA_TOL, what="cuda")
