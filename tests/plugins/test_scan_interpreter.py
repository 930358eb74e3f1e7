"""The Triton forward kernels, run by Triton's CPU interpreter, against the reference scan.

Oracle: ``prvr_export.ops.reference.selective_scan_ref`` (float32 state, obvious loop). The interpreter
executes the very kernel source that ``aot.compile_scan`` ships as PTX, so these tests check the
shipped program's arithmetic, indexing (groups, masks for channels and states that do not fill a
power-of-two tile) and the optional inputs. The full grid is ``-m slow``; the default run keeps a subset
that still covers every axis value at least once.
"""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install 'prvr-sdk[plugins]')")
torch = pytest.importorskip("torch")

from prvr_export.ops.reference import selective_scan_ref  # noqa: E402
from prvr_plugins.scan_triton import selective_scan_fwd  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def rel_err(y, ref):
    return ((y.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()


def reference(p):
    return selective_scan_ref(p["u"], p["delta"], p["A"], p["B"], p["C"], p["D"], None, p["delta_bias"],
                              p["delta_softplus"])


def run(p, **kw):
    return selective_scan_fwd(p["u"], p["delta"], p["A"], p["B"], p["C"], p["D"], p["delta_bias"],
                              p["delta_softplus"], **kw)


# (batch, dim, n, length, groups, softplus, bias, has_d)
GRID = list(itertools.product([1, 2], [4, 8], [4, 16], [1, 7, 33], [1, 2], [True, False], [True, False],
                              [True, False]))
SUBSET = [
    (1, 4, 4, 1, 1, False, False, False),
    (2, 8, 16, 33, 2, True, True, True),
    (2, 4, 16, 7, 2, False, True, False),
    (1, 8, 4, 33, 1, True, False, True),
    (2, 8, 4, 7, 1, True, True, False),
    (1, 4, 16, 33, 2, False, False, True),
]


def _check(problem, case, dtype, method="simple"):
    batch, dim, n, length, groups, softplus, bias, has_d = case
    p = problem(batch, dim, n, length, groups, dtype, has_d=has_d, has_bias=bias, softplus=softplus)
    y = run(p, method=method)
    ref = reference(p)
    assert y.dtype == dtype and y.shape == ref.shape
    assert rel_err(y, ref) <= TOL[dtype], case


@pytest.mark.parametrize("case", SUBSET)
def test_simple_kernel_matches_reference_fp32(interpret, problem, case):
    _check(problem, case, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", SUBSET[1:3])
def test_simple_kernel_half_precision_io(interpret, problem, case, dtype):
    _check(problem, case, dtype)


def test_partial_channel_block_and_odd_state(interpret, problem):
    """dim not a multiple of block_d and N not a power of two: the masked lanes must stay inert."""
    p = problem(2, 6, 5, 9, 3, has_d=True, has_bias=True, softplus=True)
    y = run(p, block_d=4)
    assert rel_err(y, reference(p)) <= 1e-5


def test_ungrouped_b_c_layout_is_accepted(interpret, problem):
    p = problem(1, 4, 4, 5, 1)
    p["B"], p["C"] = p["B"][:, 0], p["C"][:, 0]  # Mamba-1's (batch, N, L)
    assert rel_err(run(p), reference(p)) <= 1e-5


@pytest.mark.parametrize(("length", "chunk"), [(33, 8), (40, 8), (7, 16), (1, 4)])
def test_chunked_kernels_equal_the_simple_kernel(interpret, problem, length, chunk):
    """The fast path's oracle is the simple kernel: same inputs, chunk boundaries inside and at the end."""
    p = problem(2, 8, 16, length, 2)
    simple = run(p, method="simple")
    chunked = run(p, method="chunked", chunk=chunk)
    assert rel_err(chunked, simple) <= 1e-5
    assert rel_err(chunked, reference(p)) <= 1e-5


def test_cpu_tensors_need_the_interpreter(monkeypatch, problem):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        run(problem(1, 4, 4, 2, 1))


@pytest.mark.slow
@pytest.mark.parametrize("case", GRID)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_full_grid(interpret, problem, case, dtype):
    _check(problem, case, dtype)
