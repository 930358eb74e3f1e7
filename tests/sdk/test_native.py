"""The native float16 kernel and its loader: products against float64 numpy, decoding bit for bit, and the
fallback (a reason, numpy results) when no compiler can be found.

The kernel is compared with an independent computation -- float64 products of the same float16 values --
within float32 summation-order tolerance, on shapes that exercise every code path: each query group size
1..8 and larger counts (groups of 8 over an L1 tile), rows not a multiple of anything, ``D`` below and not a
multiple of the 8/32-value steps (the scalar tail), subnormals, zeros and negative values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from prvr_sdk import native
from prvr_sdk.native import build, f16dot


@pytest.fixture(autouse=True)
def _kernel_or_skip(request) -> None:
    """Skip (saying why) where the kernel cannot be built; asked at run time, not at collection, so the
    build goes to the test session's cache (tests/conftest.py sets PRVR_CACHE_DIR)."""
    if request.node.name.startswith("test_missing_compiler"):  # that one runs without the kernel on purpose
        return
    reason = f16dot.unavailable_reason()
    if reason is not None:
        pytest.skip(f"native kernel unavailable: {reason}")


def _rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """float16 rows mixing normal values, negatives, exact zeros and float16 subnormals (|x| < 6.1e-5)."""
    rows = (rng.standard_normal((n, d)) * 0.2).astype(np.float16)
    kind = rng.integers(0, 6, size=(n, d))
    rows[kind == 0] = 0
    rows[kind == 1] = np.float16(-0.0)
    sub = (rng.integers(1, 1024, size=(n, d)) * (2.0**-24)).astype(np.float16)  # every subnormal step
    rows[kind == 2] = (sub * np.where(rng.random((n, d)) < 0.5, -1, 1).astype(np.float16))[kind == 2]
    return rows


def _check(rows: np.ndarray, q: np.ndarray, got: np.ndarray) -> None:
    ref = rows.astype(np.float64) @ q.astype(np.float64).T
    # float32 accumulation of D products: error <= ~D * eps32 * sum |x q|; allow that bound, elementwise.
    bound = rows.shape[1] * 2.0**-23 * (np.abs(rows.astype(np.float64)) @ np.abs(q.astype(np.float64)).T)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_array_less(np.abs(got - ref), bound + 1e-30)


@pytest.mark.parametrize("nq", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize(("n", "d"), [(1, 1), (7, 3), (1001, 37), (4099, 384), (20_011, 385), (9, 500)])
def test_dot_matches_float64_numpy(n: int, d: int, nq: int) -> None:
    rng = np.random.default_rng(n * 1000 + d * 10 + nq)
    rows, q = _rows(rng, n, d), rng.standard_normal((nq, d)).astype(np.float32)
    before = f16dot.calls()["dot"]
    got = f16dot.dot(rows, q)
    assert got is not None and f16dot.calls()["dot"] == before + 1  # the kernel, not a fallback
    _check(rows, q, got)


@pytest.mark.parametrize("nq", [9, 16, 17, 40])
def test_more_queries_than_a_register_group(nq: int) -> None:
    rng = np.random.default_rng(nq)
    rows, q = _rows(rng, 3000, 384), rng.standard_normal((nq, 384)).astype(np.float32)
    got = f16dot.dot(rows, q)
    assert got is not None
    _check(rows, q, got)


def test_multi_threaded_equals_single_threaded(monkeypatch) -> None:
    """Threads split rows, never a row's sum: results are bit-identical whatever the thread count."""
    rng = np.random.default_rng(5)
    rows, q = _rows(rng, 50_000, 256), rng.standard_normal((3, 256)).astype(np.float32)
    monkeypatch.setenv("PRVR_NATIVE_THREADS", "1")
    one = f16dot.dot(rows, q)
    monkeypatch.setenv("PRVR_NATIVE_THREADS", "4")
    four = f16dot.dot(rows, q)
    assert one is not None and four is not None
    np.testing.assert_array_equal(one, four)
    _check(rows, q, four)


def test_non_contiguous_rows_and_float64_queries() -> None:
    rng = np.random.default_rng(6)
    rows = _rows(rng, 600, 64)[::2]  # strided view
    q = rng.standard_normal((2, 64))  # float64: converted, not misread
    got = f16dot.dot(rows, q)
    assert got is not None
    _check(rows, q.astype(np.float32), got)


def test_decode_is_exact_for_every_finite_float16() -> None:
    bits = np.arange(1 << 16, dtype=np.uint16)
    values = bits.view(np.float16)
    values = values[np.isfinite(values)]
    out = np.empty(values.shape, dtype=np.float32)
    assert f16dot.decode(values, out) is out
    np.testing.assert_array_equal(out.view(np.uint32), values.astype(np.float32).view(np.uint32))


def test_refuses_what_it_cannot_take() -> None:
    rows = np.zeros((4, 8), dtype=np.float32)
    assert f16dot.dot(rows, np.zeros((1, 8), np.float32)) is None  # float32 rows: BLAS's job
    assert f16dot.dot(rows.astype(np.float16), np.zeros((1, 9), np.float32)) is None  # D mismatch
    assert f16dot.dot(rows.astype(np.float16), np.zeros((0, 8), np.float32)) is None


def test_off_switch_is_read_on_each_call(monkeypatch) -> None:
    rows, q = np.ones((10, 8), np.float16), np.ones((1, 8), np.float32)
    monkeypatch.setenv("PRVR_NATIVE", "off")
    assert f16dot.dot(rows, q) is None
    assert build.unavailable_reason(f16dot.NAME) == "disabled by PRVR_NATIVE=off"
    assert native.status()["kernels"][f16dot.NAME]["loaded"] is False
    monkeypatch.delenv("PRVR_NATIVE")
    np.testing.assert_array_equal(f16dot.dot(rows, q), np.full((10, 1), 8.0, np.float32))


def test_status_reports_the_loaded_kernel() -> None:
    report = native.status()
    entry = report["kernels"][f16dot.NAME]
    assert report["enabled"] is True and entry["loaded"] is True and entry["reason"] is None
    assert os.path.isfile(entry["path"]) and entry["threads"] >= 1
    assert entry["path"].startswith(report["cache"])


_NO_COMPILER = """
import json, logging, numpy as np
logging.basicConfig(level=logging.WARNING)
from prvr_sdk import native
from prvr_sdk.index import ExactIndex
from prvr_sdk.index.blocks import dot_f16
from prvr_sdk.native import f16dot
rows = np.arange(64, dtype=np.float16).reshape(8, 8) / 64
q = np.ones((1, 8), np.float32)
out = dot_f16(rows, q, np.empty((4, 8), np.float32))
print(json.dumps({"reason": f16dot.unavailable_reason(), "status": native.status(),
                  "scores": out[:, 0].tolist(), "calls": f16dot.calls()}))
"""


def test_missing_compiler_falls_back_to_numpy_with_a_reason(tmp_path) -> None:
    env = {**os.environ, "PRVR_CC": str(tmp_path / "no-such-cc"), "PRVR_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("PRVR_NATIVE", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_NO_COMPILER)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    expected_reason = f"C compiler {str(tmp_path / 'no-such-cc')!r} (from $PRVR_CC) not found"
    assert report["reason"] == expected_reason
    assert report["status"]["kernels"][f16dot.NAME] | {"threads": 0} == {
        "loaded": False, "reason": expected_reason, "path": None, "threads": 0}
    assert report["calls"] == {"dot": 0, "decode": 0}
    rows = np.arange(64, dtype=np.float16).reshape(8, 8) / 64
    np.testing.assert_allclose(report["scores"], rows.astype(np.float64).sum(axis=1), rtol=1e-6)
    assert proc.stderr.count(expected_reason) == 1  # logged once, however often it was asked
    kernels = tmp_path / "cache" / "kernels"
    assert not kernels.exists() or not any(kernels.iterdir())  # nothing was built


def test_concurrent_first_builds_share_one_complete_library(tmp_path) -> None:
    """Several processes building the same library into an empty cache at once all load a working copy
    and leave exactly one file (the atomic rename), no temporaries."""
    code = ("import numpy as np; from prvr_sdk.native import f16dot; "
            "r = f16dot.dot(np.ones((5, 16), np.float16), np.ones((1, 16), np.float32)); "
            "print(float(r[0, 0]))")
    env = {**os.environ, "PRVR_CACHE_DIR": str(tmp_path)}
    env.pop("PRVR_NATIVE", None)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=180)[0].strip() for p in procs]
    assert outs == ["16.0"] * 4
    files = sorted(p.name for p in (tmp_path / "kernels").iterdir())
    assert len(files) == 1 and files[0].startswith(f"lib{f16dot.NAME}-") and files[0].endswith(".so")
