"""Tests for sdk/prvr_sdk/scoring.py: hand-worked scores, a float64 loop oracle, blocking, masks, ties."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.scoring import cosine, max_over_clips, weighted_score

E = 1e-5  # docs/models.md §1.3: x / (||x|| + 1e-5)


def naive_max_over_clips(q, clips, normalize, mask=None):
    """Loop oracle in float64: s(i, j) = max_c <q_i, clip_jc> (normalised with eps added to the norm)."""
    nq, (nv, nc, _) = q.shape[0], clips.shape
    scores = np.full((nq, nv), -np.inf)
    best = np.full((nq, nv), -1)
    for i in range(nq):
        qi = q[i].astype(np.float64)
        if normalize:
            qi = qi / (math.sqrt(float(qi @ qi)) + E)
        for j in range(nv):
            for c in range(nc):
                if mask is not None and not mask[j, c]:
                    continue
                x = clips[j, c].astype(np.float64)
                if normalize:
                    x = x / (math.sqrt(float(x @ x)) + E)
                s = float(qi @ x)
                if s > scores[i, j]:  # strict: the first maximum wins
                    scores[i, j], best[i, j] = s, c
    return scores, best


def test_cosine_hand_worked():
    q = np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    v = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]], dtype=np.float32)
    r2 = math.sqrt(2.0)
    # dot / ((|q| + eps)(|v| + eps)); dots are [2, 0, -1] and [2, 3, -2]
    expected = [
        [2 / ((1 + E) * (2 + E)), 0.0, -1 / ((1 + E) * (r2 + E))],
        [2 / ((r2 + E) * (2 + E)), 3 / ((r2 + E) * (3 + E)), -2 / ((r2 + E) * (r2 + E))],
    ]
    got = cosine(q, v)
    assert got.dtype == np.float32 and got.shape == (2, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, [[1, 0, -(0.5**0.5)], [0.5**0.5, 0.5**0.5, -1]], atol=3e-5)


def test_cosine_rejects_mismatched_inputs():
    with pytest.raises(ShapeMismatchError, match=r"v: expected \[Nv, 4\].*got shape \(2, 3\)"):
        cosine(np.zeros((1, 4)), np.zeros((2, 3)))
    with pytest.raises(ShapeMismatchError, match=r"q: expected a 2-D array .*got shape \(4,\)"):
        cosine(np.zeros(4), np.zeros((2, 4)))


def test_max_over_clips_hand_worked():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    clips = np.array(
        [
            [[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]],  # dots 0, 2, 1      cosines 0, 1, 0.707 -> clip 1
            [[-1.0, 0.0], [0.0, -1.0], [3.0, 3.0]],  # dots -1, 0, 3   cosines -1, 0, 0.707 -> clip 2
        ],
        dtype=np.float32,
    )
    raw, raw_best = max_over_clips(q, clips, normalize=False)
    np.testing.assert_array_equal(raw, [[2.0, 3.0]])
    np.testing.assert_array_equal(raw_best, [[1, 2]])
    cos, cos_best = max_over_clips(q, clips)
    r18 = math.sqrt(18.0)
    np.testing.assert_allclose(cos, [[2 / ((1 + E) * (2 + E)), 3 / ((1 + E) * (r18 + E))]], rtol=1e-6)
    np.testing.assert_array_equal(cos_best, [[1, 2]])
    assert cos.dtype == np.float32 and cos_best.dtype == np.int64


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("block_elements", [1, 7, 64, 1 << 24])
def test_max_over_clips_matches_loop_oracle_for_any_block_size(normalize, block_elements):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((9, 5)).astype(np.float32)
    clips = rng.standard_normal((11, 4, 5)).astype(np.float32)
    want, want_best = naive_max_over_clips(q, clips, normalize)
    got, got_best = max_over_clips(q, clips, normalize=normalize, block_elements=block_elements)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_best, want_best)


def test_max_over_clips_first_clip_wins_ties():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    clips = np.array([[[0.0, 1.0], [5.0, 0.0], [1.0, 1.0], [5.0, 0.0]]], dtype=np.float32)
    for normalize in (True, False):
        _, best = max_over_clips(q, clips, normalize=normalize)
        assert best[0, 0] == 1


def test_max_over_clips_mask_excludes_padded_clips():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    clips = np.array([[[9.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0], [9.0, 0.0]]], np.float32)
    mask = np.array([[False, True, True], [True, True, False]])
    scores, best = max_over_clips(q, clips, normalize=False, clip_mask=mask)
    np.testing.assert_array_equal(scores, [[1.0, 1.0]])
    np.testing.assert_array_equal(best, [[1, 0]])
    rng = np.random.default_rng(5)
    q, clips = rng.standard_normal((4, 3)), rng.standard_normal((6, 5, 3))
    mask = rng.random((6, 5)) < 0.6
    mask[:, 2] = True
    want, want_best = naive_max_over_clips(q, clips, True, mask)
    got, got_best = max_over_clips(q, clips, clip_mask=mask, block_elements=10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_best, want_best)


def test_max_over_clips_errors():
    q = np.zeros((2, 4))
    with pytest.raises(ShapeMismatchError, match=r"clips: expected a 3-D array \[Nv, Nc, 4\].*\(3, 5\)"):
        max_over_clips(q, np.zeros((3, 5)))
    with pytest.raises(ShapeMismatchError, match=r"clips: .*got shape \(3, 2, 5\)"):
        max_over_clips(q, np.zeros((3, 2, 5)))
    with pytest.raises(ShapeMismatchError, match="at least one clip"):
        max_over_clips(q, np.zeros((3, 0, 4)))
    with pytest.raises(ShapeMismatchError, match=r"clip_mask: expected shape \(3, 2\), got \(2, 3\)"):
        max_over_clips(q, np.zeros((3, 2, 4)), clip_mask=np.ones((2, 3), bool))
    mask = np.ones((3, 2), bool)
    mask[1] = False
    with pytest.raises(InvalidInputError, match="clip_mask: .*video 1 has none"):
        max_over_clips(q, np.zeros((3, 2, 4)), clip_mask=mask)
    with pytest.raises(InvalidInputError, match="block_elements"):
        max_over_clips(q, np.zeros((3, 2, 4)), block_elements=0)


def test_max_over_clips_empty_batches():
    s, b = max_over_clips(np.zeros((0, 4)), np.zeros((3, 2, 4)))
    assert s.shape == b.shape == (0, 3)
    s, b = max_over_clips(np.zeros((2, 4)), np.zeros((0, 2, 4)))
    assert s.shape == b.shape == (2, 0)


@settings(max_examples=40, deadline=None)
@given(
    nq=st.integers(1, 6),
    nv=st.integers(1, 6),
    nc=st.integers(1, 5),
    block=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_max_over_clips_block_size_never_changes_the_result(nq, nv, nc, block, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, 3)).astype(np.float32)
    clips = rng.standard_normal((nv, nc, 3)).astype(np.float32)
    whole, whole_best = max_over_clips(q, clips)
    blocked, blocked_best = max_over_clips(q, clips, block_elements=block)
    np.testing.assert_allclose(blocked, whole, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(blocked_best, whole_best)
    # the max over clips is at least the score of any single clip
    single, _ = max_over_clips(q, clips[:, :1])
    assert (whole >= single - 1e-6).all()


def test_weighted_score():
    clip = np.array([[1.0, 0.5]])
    frame = np.array([[0.0, 1.0]])
    got = weighted_score(clip, frame, 0.7, 0.3)
    np.testing.assert_allclose(got, [[0.7, 0.65]], rtol=1e-6)
    assert got.dtype == np.float32
    np.testing.assert_allclose(weighted_score(clip, None, 0.7, 0.3), [[0.7, 0.35]], rtol=1e-6)
    with pytest.raises(ShapeMismatchError, match=r"frame_scores: expected shape \(1, 2\).*got \(2, 1\)"):
        weighted_score(clip, frame.T, 0.7, 0.3)


def test_runtime_maths_modules_do_not_import_torch():
    code = (
        "import sys, prvr_sdk.features, prvr_sdk.scoring, prvr_sdk.metrics; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
