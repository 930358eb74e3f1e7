"""Torch twins of ``prvr_sdk.scoring`` (and of ``prvr_sdk.features.l2_normalize``) for training and eval.

Same names, arguments and semantics as the numpy runtime, so a model trained and evaluated with these
ranks videos exactly as the deployed index does; ``tests/export/test_scoring_parity.py`` holds the two
together. These accept any float dtype and device, keep autograd (the losses train through
``max_over_clips(..., normalize=False)``, the "unnormalised" clip-NCE scores), and compute in the inputs'
dtype. The winning clip is the first maximum on ties, as numpy's ``argmax``.
"""

from __future__ import annotations

import torch

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.features import L2_EPS
from prvr_sdk.scoring import BLOCK_ELEMENTS

__all__ = ["BLOCK_ELEMENTS", "cosine", "l2_normalize", "max_over_clips", "weighted_score"]


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = L2_EPS) -> torch.Tensor:
    """``x / (||x||_2 + eps)`` along ``dim`` (docs/models.md §1.3: eps added to the norm, not a clamp)."""
    return x / (x.norm(dim=dim, keepdim=True) + eps)


def _check_2d(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ShapeMismatchError(f"{name}: expected a 2-D tensor [n, dim], got shape {tuple(x.shape)}")


def cosine(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query with every video vector.

    Args:
        q: ``r(Nq D)`` queries.
        v: ``r(Nv D)`` video vectors.

    Returns:
        ``[Nq, Nv]``: ``l2_normalize(q) @ l2_normalize(v).T``.

    Raises:
        ShapeMismatchError: an input is not 2-D, or the two ``D`` differ.
    """
    _check_2d(q, "q")
    _check_2d(v, "v")
    if q.shape[1] != v.shape[1]:
        raise ShapeMismatchError(
            f"v: expected [Nv, {q.shape[1]}] to match q {tuple(q.shape)}, got shape {tuple(v.shape)}"
        )
    return l2_normalize(q) @ l2_normalize(v).T


def max_over_clips(
    q: torch.Tensor,
    clips: torch.Tensor,
    normalize: bool = True,
    clip_mask: torch.Tensor | None = None,
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score each video by its best clip: ``s(i, j) = max_c <q_i, clips_{j,c}>``.

    Runs in blocks of queries x videos so that at most ``block_elements`` scores of the ``[Nq, Nv, Nc]``
    tensor exist at once (autograd keeps what it needs for backward regardless); results do not depend on
    the block size.

    Args:
        q: ``r(Nq D)`` queries.
        clips: ``r(Nv Nc D)`` clip features of each video.
        normalize: ``True`` L2-normalises ``q`` and every clip first (cosine scores); ``False`` uses raw dot
            products (clip-NCE's unnormalised scores).
        clip_mask: optional bool ``[Nv, Nc]``, ``True`` on real clips; padded clips never win.
        block_elements: memory bound described above.

    Returns:
        ``(scores, best_clip)``: ``[Nq, Nv]`` in ``q``'s dtype, and int64 ``[Nq, Nv]`` winning-clip indices.

    Raises:
        ShapeMismatchError: wrong ranks, ``D`` mismatch, or a ``clip_mask`` of the wrong shape.
        InvalidInputError: a video whose clips are all masked, or ``block_elements < 1``.
    """
    _check_2d(q, "q")
    if clips.dim() != 3 or clips.shape[2] != q.shape[1]:
        raise ShapeMismatchError(
            f"clips: expected a 3-D tensor [Nv, Nc, {q.shape[1]}] (D of q {tuple(q.shape)}), "
            f"got shape {tuple(clips.shape)}"
        )
    num_q, (num_v, num_c, _) = q.shape[0], clips.shape
    if num_c == 0 and num_v > 0:
        raise ShapeMismatchError(
            f"clips: expected at least one clip per video, got shape {tuple(clips.shape)}"
        )
    if clip_mask is not None:
        clip_mask = clip_mask.to(device=clips.device, dtype=torch.bool)
        if tuple(clip_mask.shape) != (num_v, num_c):
            raise ShapeMismatchError(
                f"clip_mask: expected shape {(num_v, num_c)}, got {tuple(clip_mask.shape)}"
            )
        empty = (~clip_mask.any(dim=1)).nonzero()
        if empty.numel():
            first = int(empty[0, 0])
            raise InvalidInputError(f"clip_mask: expected a real clip in every video; video {first} has none")
    if block_elements < 1:
        raise InvalidInputError(f"block_elements: expected a positive integer, got {block_elements!r}")

    if num_q == 0 or num_v == 0:
        empty_scores = q.new_empty((num_q, num_v))
        return empty_scores, torch.empty((num_q, num_v), dtype=torch.long, device=q.device)
    if normalize:
        q = l2_normalize(q)
    q_block = max(1, min(num_q, block_elements // num_c))
    v_block = max(1, min(num_v, block_elements // (q_block * num_c)))
    score_rows, best_rows = [], []
    for q0 in range(0, num_q, q_block):
        q_blk = q[q0 : q0 + q_block]
        score_cols, best_cols = [], []
        for v0 in range(0, num_v, v_block):
            blk = clips[v0 : v0 + v_block]
            if normalize:
                blk = l2_normalize(blk)
            s = torch.einsum("qd,vcd->qvc", q_blk, blk)  # [qb, vb, Nc]
            if clip_mask is not None:
                s = s.masked_fill(~clip_mask[v0 : v0 + v_block], float("-inf"))
            # argmax returns the first maximum on ties, matching numpy; gather keeps autograd through s
            idx = s.argmax(dim=-1)  # [qb, vb]
            score_cols.append(s.gather(-1, idx.unsqueeze(-1)).squeeze(-1))
            best_cols.append(idx)
        score_rows.append(torch.cat(score_cols, dim=1))
        best_rows.append(torch.cat(best_cols, dim=1))
    return torch.cat(score_rows, dim=0), torch.cat(best_rows, dim=0)


def weighted_score(
    clip_scores: torch.Tensor,
    frame_scores: torch.Tensor | None,
    clip_weight: float,
    frame_weight: float,
) -> torch.Tensor:
    """``clip_weight * clip_scores + frame_weight * frame_scores`` (GMMFormer / MamFusion: 0.7 / 0.3).

    ``frame_scores=None`` (models without a frame branch) drops the frame term: ``clip_weight * clip_scores``.

    Raises:
        ShapeMismatchError: the two score matrices differ in shape.
    """
    out = clip_weight * clip_scores
    if frame_scores is not None:
        if frame_scores.shape != clip_scores.shape:
            raise ShapeMismatchError(
                f"frame_scores: expected shape {tuple(clip_scores.shape)} like clip_scores, "
                f"got {tuple(frame_scores.shape)}"
            )
        out = out + frame_weight * frame_scores
    return out
