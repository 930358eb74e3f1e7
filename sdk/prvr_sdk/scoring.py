"""Query-to-video scores of the PRVR models, in numpy (docs/models.md §3.3, §4.3, §5.2, §8).

* ``cosine``          -- MUSE (one unit vector per video) and the frame term of GMMFormer/MamFusion;
* ``max_over_clips``  -- the clip term: ``s(i, j) = max_c cos(q_i, clip_{j,c})``, with the winning clip, which
  runtime turns into a time span through ``prvr_sdk.features.clip_bounds``;
* ``weighted_score``  -- GMMFormer / MamFusion: ``0.7 * clip + 0.3 * frame``.

``prvr_export.scoring`` holds the torch twins (same names, arguments and semantics); training's losses and
evaluation use those, and ``tests/export/test_scoring_parity.py`` checks the two agree. Everything here is
float32, like upstream's evaluation; normalisation is ``prvr_sdk.features.l2_normalize`` (eps added to the
norm), so a vector's cosine with itself is ~1 - 2e-5, not exactly 1.
"""

from __future__ import annotations

import numpy as np

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.features import l2_normalize

__all__ = ["BLOCK_ELEMENTS", "cosine", "max_over_clips", "weighted_score"]

# Upper bound on the float32 elements of the [queries, videos, clips] score block max_over_clips holds at
# once (2**24 elements = 64 MiB), so that scoring 10k queries against 20k videos x 32 clips never builds the
# full 25 GiB tensor.
BLOCK_ELEMENTS = 1 << 24


def _check_2d(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name}: expected a 2-D array [n, dim], got shape {arr.shape}")
    return arr


def cosine(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosine similarity of every query with every video vector.

    Args:
        q: ``r(Nq D)`` queries.
        v: ``r(Nv D)`` video vectors.

    Returns:
        float32 ``[Nq, Nv]``: ``l2_normalize(q) @ l2_normalize(v).T``.

    Raises:
        ShapeMismatchError: an input is not 2-D, or the two ``D`` differ.
    """
    q = _check_2d(q, "q")
    v = _check_2d(v, "v")
    if q.shape[1] != v.shape[1]:
        raise ShapeMismatchError(f"v: expected [Nv, {q.shape[1]}] to match q {q.shape}, got shape {v.shape}")
    return l2_normalize(q) @ l2_normalize(v).T


def max_over_clips(
    q: np.ndarray,
    clips: np.ndarray,
    normalize: bool = True,
    clip_mask: np.ndarray | None = None,
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Score each video by its best clip: ``s(i, j) = max_c <q_i, clips_{j,c}>``.

    The work runs in blocks of queries x videos so that the ``[Nq, Nv, Nc]`` score tensor is never built
    whole: at most ``block_elements`` float32 scores (64 MiB by default) exist at once, plus the normalised
    copy of one block of clips. Results do not depend on the block size.

    Args:
        q: ``r(Nq D)`` queries.
        clips: ``r(Nv Nc D)`` clip features of each video.
        normalize: ``True`` L2-normalises ``q`` and every clip first (eps as ``features.l2_normalize``), so
            scores are cosines; ``False`` uses raw dot products (the "unnormalised" scores of clip NCE).
        clip_mask: optional bool ``[Nv, Nc]``, ``True`` on real clips; padded clips never win. Every video
            needs at least one real clip.
        block_elements: memory bound described above (tests lower it to exercise the blocking).

    Returns:
        ``(scores, best_clip)``: float32 ``[Nq, Nv]`` and int64 ``[Nq, Nv]``, the index of the winning clip
        (the first one when several tie).

    Raises:
        ShapeMismatchError: wrong ranks, ``D`` mismatch, or a ``clip_mask`` of the wrong shape.
        InvalidInputError: a video whose clips are all masked, or ``block_elements < 1``.
    """
    q = _check_2d(q, "q")
    clips = np.asarray(clips)
    if clips.ndim != 3 or clips.shape[2] != q.shape[1]:
        raise ShapeMismatchError(
            f"clips: expected a 3-D array [Nv, Nc, {q.shape[1]}] (D of q {q.shape}), got shape {clips.shape}"
        )
    num_q, (num_v, num_c, _) = q.shape[0], clips.shape
    if num_c == 0 and num_v > 0:
        raise ShapeMismatchError(f"clips: expected at least one clip per video, got shape {clips.shape}")
    if clip_mask is not None:
        clip_mask = np.asarray(clip_mask, dtype=bool)
        if clip_mask.shape != (num_v, num_c):
            raise ShapeMismatchError(f"clip_mask: expected shape {(num_v, num_c)}, got {clip_mask.shape}")
        empty = np.flatnonzero(~clip_mask.any(axis=1))
        if empty.size:
            first = int(empty[0])
            raise InvalidInputError(f"clip_mask: expected a real clip in every video; video {first} has none")
    if block_elements < 1:
        raise InvalidInputError(f"block_elements: expected a positive integer, got {block_elements!r}")

    q = l2_normalize(q) if normalize else q.astype(np.float32, copy=False)
    scores = np.empty((num_q, num_v), dtype=np.float32)
    best = np.empty((num_q, num_v), dtype=np.int64)
    if num_q == 0 or num_v == 0:
        return scores, best
    q_block = max(1, min(num_q, block_elements // num_c))
    v_block = max(1, min(num_v, block_elements // (q_block * num_c)))
    for v0 in range(0, num_v, v_block):
        v1 = min(num_v, v0 + v_block)
        blk = clips[v0:v1]
        blk = l2_normalize(blk) if normalize else blk.astype(np.float32, copy=False)
        flat = blk.reshape(-1, blk.shape[2]).T  # [D, vb*Nc]
        for q0 in range(0, num_q, q_block):
            q1 = min(num_q, q0 + q_block)
            s = (q[q0:q1] @ flat).reshape(q1 - q0, v1 - v0, num_c)  # [qb, vb, Nc]
            if clip_mask is not None:
                s = np.where(clip_mask[v0:v1], s, -np.inf)
            idx = np.argmax(s, axis=-1)  # first maximum on ties
            best[q0:q1, v0:v1] = idx
            scores[q0:q1, v0:v1] = np.take_along_axis(s, idx[..., None], axis=-1)[..., 0]
    return scores, best


def weighted_score(
    clip_scores: np.ndarray,
    frame_scores: np.ndarray | None,
    clip_weight: float,
    frame_weight: float,
) -> np.ndarray:
    """``clip_weight * clip_scores + frame_weight * frame_scores`` (GMMFormer / MamFusion: 0.7 / 0.3).

    Args:
        clip_scores: ``r(Nq Nv)`` from ``max_over_clips``.
        frame_scores: ``r(Nq Nv)`` or ``None`` for models without a frame branch; ``None`` drops the frame
            term (the result is ``clip_weight * clip_scores``) whatever ``frame_weight`` is.
        clip_weight: weight of the clip term.
        frame_weight: weight of the frame term.

    Returns:
        float32 ``[Nq, Nv]``.

    Raises:
        ShapeMismatchError: the two score matrices differ in shape.
    """
    clip = np.asarray(clip_scores, dtype=np.float32)
    out = np.float32(clip_weight) * clip
    if frame_scores is not None:
        frame = np.asarray(frame_scores, dtype=np.float32)
        if frame.shape != clip.shape:
            raise ShapeMismatchError(
                f"frame_scores: expected shape {clip.shape} like clip_scores, got {frame.shape}"
            )
        out = out + np.float32(frame_weight) * frame
    return out
