"""Parity of the numpy runtime maths (prvr_sdk.features / prvr_sdk.scoring) with torch.

Two kinds of check:

* pooling against upstream's own torch code, transcribed here: ``average_to_fixed_length`` computes the
  boundaries as ``torch.round(torch.arange(0, n + 1, 1.0) / n * Nf)`` in float32 (round half to even), and
  ``uniform_feature_sampling`` does the same with ``np.round`` in float64. ``clip_bounds`` uses exact integer
  arithmetic instead; the two agree for every power-of-two ``n`` (all configs: 32, 128, 256, 512, 1024);
* ``prvr_export.scoring`` (torch twins) against ``prvr_sdk.scoring`` on the same seeded inputs.

Tolerances (float32 on both sides): scores rtol 1e-5 / atol 1e-6 (different matmul kernels sum in different
orders); pooled means rtol 1e-6 / atol 1e-6 (float64 vs float32 accumulation); indices exactly equal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prvr_export import scoring as ts
from prvr_sdk import scoring as ns
from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.features import clip_bounds, l2_normalize, pool_clips, sample_frames

RTOL, ATOL = 1e-5, 1e-6


def upstream_boundaries_torch(num_frames: torch.Tensor, n: int) -> torch.Tensor:
    """average_to_fixed_length's boundaries, vectorised over videos: float32 i/n*Nf, torch.round, clamp."""
    idxs = torch.arange(0, n + 1, 1.0) / n * num_frames[:, None].float()  # [M, n + 1]
    return torch.minimum(torch.round(idxs).long(), (num_frames - 1)[:, None])


def upstream_average_to_fixed_length(frames: np.ndarray, n: int) -> np.ndarray:
    """MS-SL / GMMFormer's average_to_fixed_length, clip by clip in float32 torch."""
    x = torch.from_numpy(frames)
    nf = x.shape[0]
    idxs = torch.arange(0, n + 1, 1.0) / n * nf
    idxs = torch.min(torch.round(idxs).long(), torch.tensor(nf - 1))
    out = []
    for i in range(n):
        s, e = idxs[i].item(), idxs[i + 1].item()
        out.append(torch.mean(x[s:e], dim=0) if s < e else x[s])
    return torch.stack(out).numpy()


def _bounds_as_boundaries(nf: int, n: int) -> np.ndarray:
    # clip_bounds' starts are b_0..b_{n-1}; b_n is always Nf - 1 (the clamp)
    return np.append(clip_bounds(nf, n)[:, 0], nf - 1)


def test_torch_and_numpy_round_half_to_even():
    halves = [0.5, 1.5, 2.5, 3.5, 16.5, -0.5, -1.5]
    want = [0.0, 2.0, 2.0, 4.0, 16.0, -0.0, -2.0]
    assert torch.round(torch.tensor(halves)).tolist() == want
    assert np.round(np.array(halves)).tolist() == want


@pytest.mark.parametrize("n", [32, 128, 256, 512, 1024])
def test_clip_bounds_match_upstream_float_rounding(n):
    nfs = np.arange(1, 3001)
    upstream = upstream_boundaries_torch(torch.from_numpy(nfs), n).numpy()  # [M, n + 1]
    upstream_np = np.minimum(
        np.round(np.arange(0, n + 1, 1.0)[None, :] / n * nfs[:, None]).astype(np.int64), nfs[:, None] - 1
    )  # uniform_feature_sampling's float64 numpy version
    ours = np.stack([_bounds_as_boundaries(int(nf), n) for nf in nfs])
    np.testing.assert_array_equal(ours, upstream)
    np.testing.assert_array_equal(ours, upstream_np)


def test_clip_bounds_match_upstream_for_long_videos():
    # upstream's float32 i/n*Nf is exact only while Nf * n < 2**24; beyond that float rounding drifts
    for n in (32, 1024):
        limit = 2**24 // n
        nfs = np.array([4095, 4096, 4097, 10_007, limit - 1, limit // 2 + 1])
        upstream = upstream_boundaries_torch(torch.from_numpy(nfs), n).numpy()
        for row, nf in zip(upstream, nfs, strict=True):
            np.testing.assert_array_equal(_bounds_as_boundaries(int(nf), n), row)


@pytest.mark.parametrize("nf", [1, 2, 5, 31, 32, 33, 64, 100, 257, 700])
def test_pool_clips_matches_upstream_average_to_fixed_length(nf):
    frames = np.random.default_rng(nf).standard_normal((nf, 16)).astype(np.float32)
    want = upstream_average_to_fixed_length(frames, 32)
    np.testing.assert_allclose(pool_clips(frames, 32), want, rtol=1e-6, atol=1e-6)
    if nf > 8:
        want = upstream_average_to_fixed_length(frames, 8)
        np.testing.assert_allclose(sample_frames(frames, 8), want, rtol=1e-6, atol=1e-6)


# --- scoring twins ---------------------------------------------------------------------------------------


def _data(seed: int, nq=7, nv=13, nc=5, d=16):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, d)).astype(np.float32)
    clips = rng.standard_normal((nv, nc, d)).astype(np.float32)
    return q, clips


def test_l2_normalize_parity():
    x = np.random.default_rng(0).standard_normal((3, 4, 8)).astype(np.float32)
    x[1, 2] = 0.0  # zero vector stays zero in both
    for axis in (-1, 1):
        got = ts.l2_normalize(torch.from_numpy(x), dim=axis).numpy()
        np.testing.assert_allclose(got, l2_normalize(x, axis=axis), rtol=1e-6, atol=1e-7)


def test_cosine_parity():
    q, clips = _data(1)
    v = clips[:, 0]
    np.testing.assert_allclose(
        ts.cosine(torch.from_numpy(q), torch.from_numpy(v)).numpy(), ns.cosine(q, v), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("block_elements", [1, 9, 1 << 24])
@pytest.mark.parametrize("masked", [False, True])
def test_max_over_clips_parity(normalize, block_elements, masked):
    q, clips = _data(2)
    mask = None
    if masked:
        mask = np.random.default_rng(3).random(clips.shape[:2]) < 0.5
        mask[:, 0] = True
    n_scores, n_best = ns.max_over_clips(q, clips, normalize, clip_mask=mask, block_elements=block_elements)
    t_scores, t_best = ts.max_over_clips(
        torch.from_numpy(q),
        torch.from_numpy(clips),
        normalize,
        clip_mask=None if mask is None else torch.from_numpy(mask),
        block_elements=block_elements,
    )
    assert t_scores.dtype == torch.float32 and t_best.dtype == torch.int64
    np.testing.assert_allclose(t_scores.numpy(), n_scores, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(t_best.numpy(), n_best)


def test_max_over_clips_ties_pick_the_same_clip():
    q = np.ones((2, 4), np.float32)
    clips = np.zeros((3, 6, 4), np.float32)
    clips[:, [1, 3, 4]] = 1.0  # three identical best clips per video
    clips[2] = 0.5  # all six tie in video 2
    for normalize in (True, False):
        _, n_best = ns.max_over_clips(q, clips, normalize)
        _, t_best = ts.max_over_clips(torch.from_numpy(q), torch.from_numpy(clips), normalize)
        np.testing.assert_array_equal(n_best, [[1, 1, 0], [1, 1, 0]])
        np.testing.assert_array_equal(t_best.numpy(), n_best)


def test_weighted_score_parity():
    rng = np.random.default_rng(4)
    c, f = rng.standard_normal((2, 5, 6)).astype(np.float32)
    for frame in (f, None):
        t_frame = None if frame is None else torch.from_numpy(frame)
        t = ts.weighted_score(torch.from_numpy(c), t_frame, 0.7, 0.3)
        np.testing.assert_allclose(t.numpy(), ns.weighted_score(c, frame, 0.7, 0.3), rtol=1e-6, atol=1e-7)


def test_torch_max_over_clips_gradient_flows_to_the_winning_clip():
    q, clips = _data(5, nq=3, nv=4, nc=5, d=6)
    tq = torch.from_numpy(q).requires_grad_()
    tc = torch.from_numpy(clips).requires_grad_()
    scores, best = ts.max_over_clips(tq, tc, normalize=False, block_elements=4)
    scores.sum().backward()
    # d/dq_i sum_j <q_i, clip_{j, best_ij}> = sum_j clip_{j, best_ij}; clips get q_i at the winning slot
    b = best.numpy()
    want_q = np.stack([sum(clips[j, b[i, j]] for j in range(4)) for i in range(3)])
    want_c = np.zeros_like(clips)
    for i in range(3):
        for j in range(4):
            want_c[j, b[i, j]] += q[i]
    np.testing.assert_allclose(tq.grad.numpy(), want_q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tc.grad.numpy(), want_c, rtol=1e-5, atol=1e-6)


def test_torch_twins_raise_the_same_errors():
    q = torch.zeros(2, 4)
    with pytest.raises(ShapeMismatchError, match=r"clips: expected a 3-D tensor \[Nv, Nc, 4\]"):
        ts.max_over_clips(q, torch.zeros(3, 5))
    with pytest.raises(ShapeMismatchError, match=r"clip_mask: expected shape \(3, 2\)"):
        ts.max_over_clips(q, torch.zeros(3, 2, 4), clip_mask=torch.ones(2, 3, dtype=torch.bool))
    mask = torch.ones(3, 2, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(InvalidInputError, match="video 1 has none"):
        ts.max_over_clips(q, torch.zeros(3, 2, 4), clip_mask=mask)
    with pytest.raises(ShapeMismatchError, match=r"v: expected \[Nv, 4\]"):
        ts.cosine(q, torch.zeros(2, 3))
    with pytest.raises(ShapeMismatchError, match="frame_scores"):
        ts.weighted_score(torch.zeros(2, 3), torch.zeros(3, 2), 0.7, 0.3)
    s, b = ts.max_over_clips(torch.zeros(0, 4), torch.zeros(3, 2, 4))
    assert s.shape == b.shape == (0, 3)
