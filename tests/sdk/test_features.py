"""Tests for sdk/prvr_sdk/features.py: pooling against hand-worked cases and a loop written from
docs/models.md §1.4.

The oracle ``naive_pool`` is a line-by-line transcription of the rule, using exact rationals and Python's
``round`` (half to even) for the boundaries and a float64 mean per clip; it shares no code with the module.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.features import (
    L2_EPS,
    clip_bounds,
    l2_normalize,
    pool_clips,
    sample_frames,
    validate_frames,
)


def naive_pool(frames: np.ndarray, n: int) -> np.ndarray:
    """docs/models.md §1.4: b_i = min(round(i*Nf/n), Nf-1), i = 0..n;
    clip i = mean(rows b_i..b_{i+1}-1) | row b_i.
    """
    nf = frames.shape[0]
    b = [min(round(Fraction(i * nf, n)), nf - 1) for i in range(n + 1)]
    out = []
    for i in range(n):
        if b[i] < b[i + 1]:
            rows = [frames[r].astype(np.float64) for r in range(b[i], b[i + 1])]
            out.append(sum(rows) / len(rows))
        else:
            out.append(frames[b[i]].astype(np.float64))
    return np.stack(out)


# --- clip_bounds: hand-worked --------------------------------------------------------------------------


def test_clip_bounds_rounds_half_to_even_both_ways():
    # Nf = 6, n = 4: i*6/4 = 0, 1.5, 3, 4.5, 6 -> round 0, 2 (up to even), 3, 4 (down to even), 6 -> clamp 5
    np.testing.assert_array_equal(clip_bounds(6, 4), [[0, 2], [2, 3], [3, 4], [4, 5]])
    # Nf = 10, n = 4: 0, 2.5, 5, 7.5, 10 -> 0, 2, 5, 8, 9
    np.testing.assert_array_equal(clip_bounds(10, 4), [[0, 2], [2, 5], [5, 8], [8, 9]])


def test_clip_bounds_short_video_repeats_frames():
    # Nf = 3, n = 4: 0, 0.75, 1.5, 2.25, 3 -> 0, 1, 2, 2, min(3, 2) = 2; clips 2 and 3 are row 2 alone
    np.testing.assert_array_equal(clip_bounds(3, 4), [[0, 1], [1, 2], [2, 3], [2, 3]])
    np.testing.assert_array_equal(clip_bounds(1, 32), np.tile([0, 1], (32, 1)))


def test_clip_bounds_drops_last_row_when_nf_is_a_multiple():
    # Nf = 64, n = 32: b_i = 2i, but b_32 = min(64, 63) = 63, so clip 31 is row 62 alone and row 63 is unused
    b = clip_bounds(64, 32)
    np.testing.assert_array_equal(b[:31], np.stack([np.arange(0, 62, 2), np.arange(2, 63, 2)], axis=1))
    np.testing.assert_array_equal(b[31], [62, 63])
    # Nf = 32: b_i = i, b_32 = 31: clip 31 = row 31 alone (b_31 == b_32), so here every row is used once
    np.testing.assert_array_equal(clip_bounds(32, 32), np.stack([np.arange(32), np.arange(1, 33)], axis=1))


def test_clip_bounds_nf_33():
    # i*33/32 = i + i/32: rounds to i for i <= 15, i = 16 gives 16.5 -> 16 (even), i >= 17 gives i + 1;
    # b_32 = min(33, 32) = 32 = b_31, so clip 31 is row 32 alone: [32, 33)
    b = clip_bounds(33, 32)
    starts = [i if i <= 16 else i + 1 for i in range(32)]
    ends = starts[1:] + [33]
    np.testing.assert_array_equal(b, np.stack([starts, ends], axis=1))
    assert b.dtype == np.int64


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, None])
def test_clip_bounds_rejects_non_positive_counts(bad):
    with pytest.raises(InvalidInputError, match="num_clips"):
        clip_bounds(10, bad)
    with pytest.raises(InvalidInputError, match="num_frames"):
        clip_bounds(bad, 32)


# --- pool_clips against the naive rule --------------------------------------------------------------------


@pytest.mark.parametrize("nf", [1, 2, 3, 7, 16, 31, 32, 33, 63, 64, 65, 100, 129, 257, 1000])
@pytest.mark.parametrize("n", [32, 4, 128])
def test_pool_clips_matches_naive_rule(nf, n):
    rng = np.random.default_rng(nf * 1000 + n)
    frames = rng.standard_normal((nf, 6)).astype(np.float32)
    got = pool_clips(frames, n)
    assert got.shape == (n, 6)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, naive_pool(frames, n), rtol=1e-6, atol=1e-6)


def test_pool_clips_random_sizes_match_naive_rule():
    rng = np.random.default_rng(7)
    for _ in range(40):
        nf = int(rng.integers(1, 400))
        frames = (rng.standard_normal((nf, 3)) * 10).astype(np.float32)
        np.testing.assert_allclose(pool_clips(frames), naive_pool(frames, 32), rtol=1e-6, atol=1e-5)


def test_pool_clips_hand_worked_values():
    frames = np.arange(10, dtype=np.float32)[:, None] * np.float32([1.0, -2.0])  # row r = [r, -2r]
    # bounds for (10, 4): [0,2) [2,5) [5,8) [8,9): means of rows 0-1, 2-4, 5-7, 8
    expected = np.array([[0.5, -1.0], [3.0, -6.0], [6.0, -12.0], [8.0, -16.0]], dtype=np.float32)
    np.testing.assert_array_equal(pool_clips(frames, 4), expected)


def test_pool_clips_single_frame_repeats_it():
    frame = np.array([[1.5, -2.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(pool_clips(frame), np.repeat(frame, 32, axis=0))


def test_pool_clips_accumulates_in_float64():
    # rows 1e4 + {0, 1e-3, 2e-3, ...}: a float32 running sum loses the small parts, the float64 one does not
    nf = 4096
    frames = (np.float64(1e4) + 1e-3 * np.arange(nf))[:, None].astype(np.float32)
    got = pool_clips(frames, 1)  # one clip: rows 0 .. Nf-2 (b_1 clamps to Nf-1)
    exact = frames[: nf - 1].astype(np.float64).mean()
    assert got[0, 0] == np.float32(exact)


def test_pool_clips_converts_ints_and_float64_to_float32():
    assert pool_clips(np.ones((5, 2), dtype=np.int64)).dtype == np.float32
    assert pool_clips(np.ones((5, 2), dtype=np.float64)).dtype == np.float32


def test_pool_clips_rejects_bad_input():
    with pytest.raises(ShapeMismatchError, match=r"frames: expected a 2-D array.*got shape \(5,\)"):
        pool_clips(np.zeros(5))
    with pytest.raises(InvalidInputError, match="at least one frame"):
        pool_clips(np.zeros((0, 4)))


@settings(max_examples=60, deadline=None)
@given(nf=st.integers(1, 300), n=st.integers(1, 70))
def test_clip_bounds_properties(nf, n):
    b = clip_bounds(nf, n)
    start, end = b[:, 0], b[:, 1]
    assert (start >= 0).all() and (end <= nf).all() and (end > start).all()
    assert (np.diff(start) >= 0).all()  # clips move forward in time
    # clips never overlap except by repeating a single row
    overlap = end[:-1] > start[1:]
    assert ((end[:-1] - start[:-1])[overlap] == 1).all()
    # pooling the row index gives each clip's mean index
    idx = np.arange(nf, dtype=np.float32)[:, None]
    np.testing.assert_allclose(pool_clips(idx, n)[:, 0], (start + end - 1) / 2, rtol=1e-6)


# --- sample_frames --------------------------------------------------------------------------------------


def test_sample_frames_keeps_short_videos_as_a_copy():
    frames = np.arange(12, dtype=np.float64).reshape(6, 2)
    got = sample_frames(frames, 6)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, frames)
    got[0, 0] = 99.0
    assert frames[0, 0] == 0.0


@pytest.mark.parametrize("nf,max_frames", [(7, 6), (33, 32), (1000, 128), (513, 512)])
def test_sample_frames_pools_long_videos_with_the_clip_rule(nf, max_frames):
    rng = np.random.default_rng(nf)
    frames = rng.standard_normal((nf, 4)).astype(np.float32)
    got = sample_frames(frames, max_frames)
    assert got.shape == (max_frames, 4)
    np.testing.assert_allclose(got, naive_pool(frames, max_frames), rtol=1e-6, atol=1e-6)


def test_sample_frames_rejects_bad_max_frames():
    with pytest.raises(InvalidInputError, match="max_frames"):
        sample_frames(np.zeros((3, 2)), 0)


# --- l2_normalize ---------------------------------------------------------------------------------------


def test_l2_normalize_adds_eps_to_the_norm():
    got = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    expected = np.array([[3 / (5 + 1e-5), 4 / (5 + 1e-5)], [0.0, 0.0]], dtype=np.float32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    assert L2_EPS == 1e-5


def test_l2_normalize_axis_and_rank():
    x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    got = l2_normalize(x, axis=1, eps=0.0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(got[1, :, 2], x[1, :, 2] / np.linalg.norm(x[1, :, 2]), rtol=1e-6)


# --- validate_frames --------------------------------------------------------------------------------------


def test_validate_frames_returns_contiguous_float32():
    frames = np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::-1]
    got = validate_frames(frames, expected_dim=5)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, frames)
    assert validate_frames([[1, 2], [3, 4]]).dtype == np.float32


def test_validate_frames_shape_messages():
    with pytest.raises(ShapeMismatchError) as exc:
        validate_frames(np.zeros((10, 256)), expected_dim=512)
    assert str(exc.value) == "frames: expected a 2-D array [num_frames, 512], got shape (10, 256)"
    with pytest.raises(
        ShapeMismatchError, match=r"video7: expected a 2-D array \[num_frames, dim\], got shape \(3, 2, 2\)"
    ):
        validate_frames(np.zeros((3, 2, 2)), name="video7")
    with pytest.raises(ShapeMismatchError, match="clip.npy: .*ragged"):
        validate_frames([[1.0, 2.0], [3.0]], name="clip.npy")


def test_validate_frames_value_messages():
    with pytest.raises(InvalidInputError, match=r"v1: expected at least one frame, got shape \(0, 512\)"):
        validate_frames(np.zeros((0, 512)), expected_dim=512, name="v1")
    bad = np.ones((5, 3), dtype=np.float32)
    bad[3, 1] = np.nan
    bad[4, 0] = np.inf
    with pytest.raises(
        InvalidInputError, match=r"v2: expected finite values, got NaN in row 3 of 5 \(2 bad rows\)"
    ):
        validate_frames(bad, name="v2")
    bad[3, 1] = 0.0
    with pytest.raises(InvalidInputError, match=r"got Inf in row 4 of 5 \(1 bad row\)"):
        validate_frames(bad)
    with pytest.raises(InvalidInputError, match="beyond float32's range in row 1"):
        validate_frames(np.array([[1.0], [1e300]]))
    with pytest.raises(InvalidInputError, match="frames: expected real-valued features.*bool"):
        validate_frames(np.ones((2, 2), dtype=bool))
    with pytest.raises(InvalidInputError, match="real-valued"):
        validate_frames(np.array([["a", "b"]]))
