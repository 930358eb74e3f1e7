"""Video feature preparation shared by training and serving: pooling, sampling, normalisation, checks.

The PRVR models (MS-SL, GMMFormer, MamFusion, AMDNet) see a video twice (docs/models.md §1.4):

* **clip level** -- ``pool_clips``: the ``Nf`` frame features are averaged into a fixed ``num_clips`` = 32
  rows ("average to fixed length");
* **frame level** -- ``sample_frames``: videos longer than ``max_frames`` (``max_ctx_l``) are averaged into
  ``max_frames`` rows with the same rule; shorter ones are kept as they are ("uniform feature sampling").

Both use one boundary rule. For ``n`` output rows the boundaries are::

    b_i = min(round(i * Nf / n), Nf - 1)        i = 0 .. n, round half to even

and output row ``i`` is the mean of input rows ``b_i .. b_{i+1} - 1`` when ``b_i < b_{i+1}``, else row ``b_i``
alone (so short videos repeat frames). Because ``b_n`` is clamped to ``Nf - 1``, the last input row only
reaches the output when some clip is that row alone -- a quirk of the upstream code, kept on purpose so
that features pooled here match the released checkpoints' training data.

The boundaries are computed in exact integer arithmetic. Upstream computes ``i / n * Nf`` in float32 and
rounds with ``torch.round`` (half to even); for the power-of-two ``n`` every config uses (32, 128, 256, 512,
1024) ``i / n`` is exact in binary, so the two agree for every ``Nf`` below 2**24 / n
(``tests/export/test_scoring_parity.py`` checks this against torch). For other ``n`` (or longer videos)
the float product can land just off an exact half and round the other way; the exact rule is the spec.

Means are accumulated in float64 and cast to float32: the result is then (up to one rounding) the exact
mean, independent of the summation order, instead of depending on how numpy or torch happen to order a
float32 reduction; it differs from the upstream float32 mean by at most a few ulps.

Everything here is numpy, float32 out; ``prvr_sdk`` never imports torch.
"""

from __future__ import annotations

import numpy as np

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError

__all__ = [
    "L2_EPS",
    "anchor_spans",
    "clip_bounds",
    "l2_normalize",
    "pool_clips",
    "sample_frames",
    "uniform_clip_spans",
    "uniform_frame_indices",
    "validate_frames",
]

# docs/models.md §1.3: upstream normalises as x / (||x|| + 1e-5), with the eps added to the norm, not clamped.
L2_EPS = 1e-5


def _boundaries(num_frames: int, num_rows: int) -> np.ndarray:
    """``b_i = min(round_half_even(i * num_frames / num_rows), num_frames - 1)``, i = 0..num_rows; int64."""
    i = np.arange(num_rows + 1, dtype=np.int64)
    quotient, remainder = np.divmod(i * num_frames, num_rows)
    twice = 2 * remainder
    # round half to even: up when the fraction is > 1/2, or exactly 1/2 and the quotient is odd
    round_up = (twice > num_rows) | ((twice == num_rows) & (quotient % 2 == 1))
    return np.minimum(quotient + round_up, num_frames - 1)


def _check_count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{what}: expected a positive integer, got {value!r}")
    return int(value)


def clip_bounds(num_frames: int, num_clips: int = 32) -> np.ndarray:
    """Frame rows that each pooled clip averages (docs/models.md §1.4 rule), as half-open ranges.

    Runtime uses this to turn the best-matching clip index into a time span.

    Args:
        num_frames: ``Nf``, number of frame rows of the video (>= 1).
        num_clips: number of clips ``Nc`` (>= 1).

    Returns:
        int64 ``[num_clips, 2]``: row ``i`` is ``[start, end)``; clip ``i`` is the mean of frame rows
        ``start .. end - 1``. A clip that repeats a single frame has ``end = start + 1``.

    Raises:
        InvalidInputError: ``num_frames`` or ``num_clips`` is not a positive integer.
    """
    num_frames = _check_count(num_frames, "num_frames")
    num_clips = _check_count(num_clips, "num_clips")
    b = _boundaries(num_frames, num_clips)  # [Nc + 1]
    start = b[:-1]
    end = np.maximum(b[1:], start + 1)  # b_i >= b_{i+1} means "row b_i alone"
    return np.stack([start, end], axis=1)


def uniform_clip_spans(frame_times: np.ndarray, num_clips: int) -> np.ndarray:
    """Seconds ``[num_clips, 2]`` covered by each uniform clip of a video.

    Args:
        frame_times: ``[Nf + 1]`` seconds: the start of every frame row and the end of the last one
            (``arange(Nf + 1) / fps`` for a constant rate; NaN where unknown).
        num_clips: ``Nc``.

    The one rule for "which stretch of the video does clip ``i`` cover", used by training-time evaluation,
    ``prvr eval --bundle`` and the Retriever alike (``clip_bounds`` rows, mapped through the frame times).
    """
    times = np.asarray(frame_times, dtype=np.float64)
    if times.ndim != 1 or len(times) < 2:
        raise ShapeMismatchError(f"frame_times: expected [num_frames + 1] seconds, got shape {times.shape}")
    return times[clip_bounds(len(times) - 1, num_clips)]


def anchor_spans(anchors: np.ndarray, duration: float) -> np.ndarray:
    """Seconds ``[K, 2]`` of learned moments given as ``[K, 2]`` (centre, width) fractions of the video.

    AMDNet's moments are Gaussians over the clip axis; a moment covers ``centre ± width / 2`` of the
    video's duration, clipped to the video.
    """
    anchors = np.asarray(anchors, dtype=np.float64)
    if anchors.ndim != 2 or anchors.shape[1] != 2:
        raise ShapeMismatchError(f"anchors: expected [K, 2] (centre, width), got shape {anchors.shape}")
    centre, width = anchors[:, 0], np.abs(anchors[:, 1])
    start = np.clip(centre - width / 2, 0.0, 1.0) * duration
    end = np.clip(centre + width / 2, 0.0, 1.0) * duration
    return np.stack([start, np.maximum(start, end)], axis=1)


def _mean_pool(frames: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Mean of ``frames[start:end]`` per ``[start, end)`` row of ``bounds``; float64 sums, float32 out."""
    # prefix sums: sum(frames[s:e]) = cs[e] - cs[s]; in float64 the cancellation error (~1e-16 of the
    # running sum) stays far below a float32 ulp of the mean.
    cs = np.zeros((frames.shape[0] + 1, frames.shape[1]), dtype=np.float64)
    np.cumsum(frames, axis=0, dtype=np.float64, out=cs[1:])
    start, end = bounds[:, 0], bounds[:, 1]
    sums = cs[end] - cs[start]  # [n, Dv]
    return (sums / (end - start)[:, None]).astype(np.float32)


def _as_frames(frames: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name}: expected a 2-D array [num_frames, dim], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InvalidInputError(f"{name}: expected at least one frame, got shape {arr.shape}")
    return arr


def pool_clips(frames: np.ndarray, num_clips: int = 32) -> np.ndarray:
    """Average a video's frame features into ``num_clips`` clip features (docs/models.md §1.4, clip level).

    Args:
        frames: ``r(Nf Dv)``, ``Nf >= 1`` frame features.
        num_clips: ``Nc``, number of clips (32 in every PRVR config).

    Returns:
        float32 ``[num_clips, Dv]``. Not normalised; apply ``l2_normalize`` where the model asks for it.

    Raises:
        ShapeMismatchError: ``frames`` is not 2-D.
        InvalidInputError: ``frames`` has no rows, or ``num_clips`` is not a positive integer.
    """
    arr = _as_frames(frames, "frames")
    return _mean_pool(arr, clip_bounds(arr.shape[0], num_clips))


def sample_frames(frames: np.ndarray, max_frames: int) -> np.ndarray:
    """Cap a video at ``max_frames`` frame features (docs/models.md §1.4, frame level).

    Args:
        frames: ``r(Nf Dv)``, ``Nf >= 1`` frame features.
        max_frames: ``max_ctx_l``; longer videos are mean-pooled into this many rows with the clip rule.

    Returns:
        float32 ``[min(Nf, max_frames), Dv]``: a float32 copy of ``frames`` when ``Nf <= max_frames``.

    Raises:
        ShapeMismatchError: ``frames`` is not 2-D.
        InvalidInputError: ``frames`` has no rows, or ``max_frames`` is not a positive integer.
    """
    arr = _as_frames(frames, "frames")
    max_frames = _check_count(max_frames, "max_frames")
    if arr.shape[0] <= max_frames:
        return np.array(arr, dtype=np.float32)  # always a copy: callers may normalise in place
    return _mean_pool(arr, clip_bounds(arr.shape[0], max_frames))


def uniform_frame_indices(num_frames: int, max_frames: int) -> np.ndarray:
    """CLIP4Clip's frame choice (``slice_framepos`` 2), used by MUSE: all frames, or ``max_frames`` of them at
    linspace positions (docs/models.md §1.4, §5.1).

    Returns:
        int64 ``[min(num_frames, max_frames)]``, increasing; positions are floored, as numpy's
        ``linspace(..., dtype=int)`` does.
    """
    if num_frames <= max_frames:
        return np.arange(num_frames, dtype=np.int64)
    return np.floor(np.linspace(0, num_frames - 1, num=max_frames)).astype(np.int64)


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = L2_EPS) -> np.ndarray:
    """``x / (||x||_2 + eps)`` along ``axis``, in float32 (docs/models.md §1.3 eps convention).

    The eps is added to the norm (as upstream does), so a zero vector stays zero and a unit vector comes
    back scaled by ``1 / (1 + eps)``; cosine scores of normalised vectors are therefore ~2e-5 below 1.

    Args:
        x: any-rank array.
        axis: the axis holding the vector components.
        eps: added to the norm.

    Returns:
        float32 array of ``x``'s shape.
    """
    arr = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.sum(arr * arr, axis=axis, keepdims=True))
    return arr / (norm + np.float32(eps))


def validate_frames(frames: np.ndarray, expected_dim: int | None = None, name: str = "frames") -> np.ndarray:
    """Check a video's frame features before pooling and return them as float32.

    Args:
        frames: candidate ``[num_frames, dim]`` array (any real dtype, or nested lists).
        expected_dim: required feature size ``Dv``; ``None`` accepts any.
        name: what to call the array in error messages (a video id, a file path ...).

    Returns:
        C-contiguous float32 ``[num_frames, dim]`` (a new array unless ``frames`` already is one).

    Raises:
        ShapeMismatchError: not 2-D, or ``dim != expected_dim``.
        InvalidInputError: not real numbers, no frames, or a NaN/Inf (the message gives the first bad row).
    """
    want = f"[num_frames, {expected_dim if expected_dim is not None else 'dim'}]"
    try:
        arr = np.asarray(frames)
    except ValueError as exc:  # ragged nested lists
        raise ShapeMismatchError(f"{name}: expected a 2-D array {want}, got a ragged sequence") from exc
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name}: expected a 2-D array {want}, got shape {arr.shape}")
    if expected_dim is not None and arr.shape[1] != expected_dim:
        raise ShapeMismatchError(f"{name}: expected a 2-D array {want}, got shape {arr.shape}")
    real = np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    if arr.dtype == np.bool_ or not real:
        raise InvalidInputError(f"{name}: expected real-valued features (float or int), got {arr.dtype}")
    if arr.shape[0] == 0:
        raise InvalidInputError(f"{name}: expected at least one frame, got shape {arr.shape}")
    with np.errstate(over="ignore"):  # overflow is reported below, with the row
        out = np.ascontiguousarray(arr, dtype=np.float32)
    # check after the cast: float64 values beyond float32's range turn into inf here
    bad_rows = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad_rows.size:
        row = int(bad_rows[0])
        if np.isnan(out[row]).any():
            kind = "NaN"
        elif np.isfinite(arr[row]).all():
            kind = "a value beyond float32's range"
        else:
            kind = "Inf"
        raise InvalidInputError(
            f"{name}: expected finite values, got {kind} in row {row} of {arr.shape[0]}"
            f" ({bad_rows.size} bad row{'s' if bad_rows.size > 1 else ''})"
        )
    return out
