"""The TensorRT session's plain rules (batch splitting, padding, buffer sizes, profile checks) and the
Retriever's choice of engine file, with numpy only: no TensorRT, no GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prvr_sdk.backends import tensorrt as trt_backend
from prvr_sdk.backends.tensorrt import buffer_bytes, check_within_profile, pad_rows, plan_batches
from prvr_sdk.bundle import Bundle
from prvr_sdk.errors import BackendUnavailableError, ShapeMismatchError
from prvr_sdk.retriever import _graph_file


@pytest.mark.parametrize("n", [1, 2, 7, 16, 17, 64, 65, 1000])
@pytest.mark.parametrize("max_batch", [1, 4, 16, 64])
def test_batches_cover_every_row_once_within_the_profile(n, max_batch):
    calls = plan_batches(n, max_batch)
    rows = [i for start, stop, _ in calls for i in range(start, stop)]
    assert rows == list(range(n))
    assert all(0 < stop - start <= max_batch and pad == 0 for start, stop, pad in calls)
    sizes = [stop - start for start, stop, _ in calls]
    assert max(sizes) - min(sizes) <= 1  # balanced: no tiny tail call
    assert len(calls) == -(-n // max_batch)


def test_batches_below_the_profile_minimum_are_padded():
    assert plan_batches(3, max_batch=16, min_batch=4) == [(0, 3, 1)]
    assert plan_batches(9, max_batch=8, min_batch=4) == [(0, 5, 0), (5, 9, 0)]
    with pytest.raises(ValueError):
        plan_batches(0, 8)
    with pytest.raises(ValueError):
        plan_batches(3, max_batch=2, min_batch=4)


def test_split_and_padded_runs_give_the_unsplit_result():
    """What ``TensorRTSession.run`` does with the chunks -- run each (padded), drop the pad rows, join --
    equals one run over the whole batch for a row-wise graph."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((11, 5)).astype(np.float32)
    w = rng.standard_normal((5, 3)).astype(np.float32)

    def engine(batch: np.ndarray) -> np.ndarray:
        assert len(batch) == 4  # a profile of exactly 4 rows
        return batch @ w

    parts = []
    for start, stop, pad in plan_batches(len(x), max_batch=4, min_batch=4):
        chunk = pad_rows(x, start, stop, pad)
        assert len(chunk) == 4 and chunk.flags["C_CONTIGUOUS"]
        parts.append(engine(chunk)[: stop - start])
    np.testing.assert_array_equal(np.concatenate(parts), x @ w)


def test_pad_rows_repeats_the_last_row():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(pad_rows(x, 1, 3, 2), [[2, 3], [4, 5], [4, 5], [4, 5]])
    np.testing.assert_array_equal(pad_rows(x, 0, 2, 0), x[:2])


def test_buffer_bytes_from_profile_maxima():
    assert buffer_bytes((64, 32, 512), 4) == 64 * 32 * 512 * 4
    assert buffer_bytes((64, 32), 2) == 4096
    assert buffer_bytes((0, 3), 4) == 1  # never a zero-byte allocation
    with pytest.raises(ValueError, match="concrete"):
        buffer_bytes((-1, 3), 4)


def test_profile_check_names_the_axis_and_the_fix():
    check_within_profile("frames", (500, 32, 512), (1, 1, 512), (64, 32, 512))  # batch is split, not checked
    with pytest.raises(ShapeMismatchError, match=r"frames: dimension 1 is 40; .*1\.\.32.*--max-shapes"):
        check_within_profile("frames", (2, 40, 512), (1, 1, 512), (64, 32, 512))
    with pytest.raises(ShapeMismatchError, match="rank"):
        check_within_profile("frames", (2, 40), (1, 1, 512), (64, 32, 512))


# --------------------------------------------------------------------------- which engine file
def _bundle(files: dict[str, dict]) -> Bundle:
    return Bundle(Path("bundle"), {"files": files})


ONNX = {"video_encoder.onnx": {"role": "video_encoder"}, "text_encoder.onnx": {"role": "text_encoder"}}


def _engine(cc: str | None, precision: str = "fp32") -> dict:
    entry = {"role": "video_encoder", "format": "tensorrt", "precision": precision}
    if cc is not None:
        entry["engine"] = {"compute_capability": cc}
    return entry


def test_the_engine_for_this_gpus_compute_capability_wins():
    files = {**ONNX, "engines/video_encoder.fp32.sm_80.plan": _engine("8.0"),
             "engines/video_encoder.fp32.sm_90.plan": _engine("9.0"),
             "engines/video_encoder.fp16.sm_90.plan": _engine("9.0", "fp16")}
    bundle = _bundle(files)

    def pick(precision: str, cc: str) -> str | None:
        return _graph_file(bundle, "video_encoder", precision, "tensorrt", cc)

    assert pick("fp32", "9.0") == "engines/video_encoder.fp32.sm_90.plan"
    assert pick("fp32", "8.0") == "engines/video_encoder.fp32.sm_80.plan"
    assert pick("fp16", "9.0") == "engines/video_encoder.fp16.sm_90.plan"
    assert _graph_file(bundle, "video_encoder", "fp32", "onnx") == "video_encoder.onnx"


def test_an_engine_for_another_gpu_is_never_picked():
    bundle = _bundle({**ONNX, "engines/video_encoder.fp32.sm_80.plan": _engine("8.0")})
    assert _graph_file(bundle, "video_encoder", "fp32", "tensorrt", "9.0") is None


def test_an_engine_without_a_record_is_the_fallback():
    bundle = _bundle({**ONNX, "engines/old.plan": _engine(None), "engines/a80.plan": _engine("8.0")})
    assert _graph_file(bundle, "video_encoder", "fp32", "tensorrt", "9.0") == "engines/old.plan"
    assert _graph_file(bundle, "video_encoder", "fp32", "tensorrt", "8.0") == "engines/a80.plan"


def test_without_a_visible_gpu_the_first_engine_is_named(monkeypatch):
    """No GPU to match against: the name is only used to decide ``has_engine`` (the backend choice then
    fails for want of a GPU or TensorRT)."""
    monkeypatch.setattr(trt_backend, "device_compute_capability", lambda index=0: None)
    bundle = _bundle({**ONNX, "engines/a80.plan": _engine("8.0"), "engines/a90.plan": _engine("9.0")})
    assert _graph_file(bundle, "video_encoder", "fp32", "tensorrt") == "engines/a80.plan"


def test_no_cuda_here_means_no_compute_capability():
    if trt_backend.device_compute_capability(0) is not None:
        pytest.skip("this machine has a CUDA device")
    assert trt_backend.device_name(0) is None


def test_the_session_without_tensorrt_says_how_to_install_it(tmp_path):
    if trt_backend.tensorrt_available():
        pytest.skip("tensorrt is installed here")
    with pytest.raises(BackendUnavailableError, match=r'pip install "prvr-sdk\[gpu\]"'):
        trt_backend.TensorRTSession(tmp_path / "missing.plan", "cuda:0")
