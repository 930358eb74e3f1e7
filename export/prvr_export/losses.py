"""Training losses of the PRVR models (docs/models.md §1.9, §3.4, §4.4, §5.3).

Conventions: ``scores`` is ``S [Nq, B]``, query-to-video, and ``query_video [Nq]`` (long) holds the batch
index of each query's ground-truth video (``y_i``); ``P_j`` is the set of queries of video j. Every function
returns a scalar tensor. Queries of one video need not be contiguous here (the official code assumes so).

* ``clip_nce``: InfoNCE at temperature 1 on un-normalised scores, both directions (§1.9).
* ``triplet_sampled``: margin ranking with one sampled negative per query and per video (§1.9).
* ``query_diversity``: pushes captions of the same video apart (GMMFormer, MamFusion; §1.9).
* ``moment_diversity``, ``moment_relevance``: AMDNet's moment losses (§4.4).
* ``symmetric_infonce``: CLIP-style loss with diagonal positives (MUSE, §5.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError

__all__ = [
    "clip_nce",
    "moment_diversity",
    "moment_relevance",
    "query_diversity",
    "symmetric_infonce",
    "triplet_sampled",
]


def _check_scores(scores: torch.Tensor, query_video: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ShapeMismatchError(f"scores must be [Nq, B], got {tuple(scores.shape)}")
    if query_video.shape != (scores.shape[0],):
        raise ShapeMismatchError(
            f"query_video must be [Nq] = [{scores.shape[0]}] to match scores, got {tuple(query_video.shape)}"
        )


def _positives(query_video: torch.Tensor, num_videos: int) -> torch.Tensor:
    """bool [Nq, B]: True where video j is query i's ground truth."""
    return query_video.unsqueeze(1) == torch.arange(num_videos, device=query_video.device)


def clip_nce(scores: torch.Tensor, query_video: torch.Tensor) -> torch.Tensor:
    """InfoNCE (temperature 1) on un-normalised scores, text-to-video plus video-to-text.

    ``L_t2v = mean_i [logsumexp_j S_ij - S_{i,y_i}]``;
    ``L_v2t = mean_j [logsumexp_{all i} S_ij - logsumexp_{i in P_j} S_ij]``, over videos with >= 1 query
    (every video of a PRVR batch has some).

    Args:
        scores: r(Nq B), un-normalised query-video scores (e.g. max-over-clips dot products).
        query_video: long (Nq), ground-truth video of each query.

    Returns:
        ``L_t2v + L_v2t``.
    """
    _check_scores(scores, query_video)
    positive = _positives(query_video, scores.shape[1])  # (Nq B)
    t2v = torch.logsumexp(scores, dim=1) - scores.gather(1, query_video.unsqueeze(1)).squeeze(1)  # (Nq)
    has_query = positive.any(dim=0)  # (B)
    pos_lse = torch.logsumexp(scores.masked_fill(~positive, float("-inf")), dim=0)  # (B)
    v2t = (torch.logsumexp(scores, dim=0) - pos_lse)[has_query]
    return t2v.mean() + v2t.mean()


def triplet_sampled(
    scores: torch.Tensor,
    query_video: torch.Tensor,
    margin: float,
    hard: bool = False,
    hard_pool_size: int = 20,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Margin ranking loss with one sampled negative per video and per query (docs/models.md §1.9).

    * v2t: for video j, ``pos_j = mean_{i in P_j} S_ij``; ``neg_j`` = the score of one query of another video,
      drawn uniformly (hard: the largest); term ``[m + neg_j - pos_j]+``, summed and divided by B.
    * t2v: for query i, ``neg`` = one other video drawn uniformly from all of them (hard: from the
      ``hard_pool_size`` highest-scoring ones); term ``[m + S_i,neg - S_i,y_i]+``, averaged over queries.

    With ``hard=True`` and ``hard_pool_size=1`` the loss is a deterministic function of ``scores``. Ties in
    the hard ranking are broken by video index (stable sort). Gradients reach only the picked entries.

    Args:
        scores: r(Nq B), cosine scores.
        query_video: long (Nq).
        margin: m.
        hard: hard-negative mode (on from ``hard_negative_start_epoch``).
        hard_pool_size: candidates per query in hard mode.
        generator: random source for the draws (None = torch's global one).

    Returns:
        ``L_t2v + L_v2t``.
    """
    _check_scores(scores, query_video)
    if hard_pool_size < 1:
        raise InvalidInputError(f"hard_pool_size must be >= 1, got {hard_pool_size}")
    num_queries, num_videos = scores.shape
    positive = _positives(query_video, num_videos)  # (Nq B)
    device = scores.device
    zero = scores.new_zeros(())

    # v2t: one negative query per video.
    v2t = zero
    has_query = positive.any(dim=0)  # (B)
    has_negative = (~positive).any(dim=0)  # (B)
    usable = has_query & has_negative
    if bool(usable.any()):
        pos = (scores * positive).sum(dim=0) / positive.sum(dim=0).clamp(min=1)  # (B)
        if hard:
            neg = scores.masked_fill(positive, float("-inf")).amax(dim=0)  # (B)
        else:
            draw = torch.rand(scores.shape, generator=generator, device=device)  # (Nq B)
            pick = draw.masked_fill(positive, -1.0).argmax(dim=0)  # (B) uniform among other videos' queries
            neg = scores.gather(0, pick.unsqueeze(0)).squeeze(0)
        v2t = (margin + neg - pos).clamp(min=0)[usable].sum() / num_videos

    # t2v: one negative video per query.
    t2v = zero
    if num_videos > 1:
        ranking = scores.detach().masked_fill(positive, float("inf"))  # the positive sorts first
        order = torch.sort(ranking, dim=1, descending=True, stable=True).indices  # (Nq B)
        top = min(1 + hard_pool_size, num_videos) if hard else num_videos
        rank = torch.randint(1, top, (num_queries,), generator=generator, device=device)  # (Nq)
        neg_video = order.gather(1, rank.unsqueeze(1))  # (Nq 1)
        neg = scores.gather(1, neg_video).squeeze(1)
        pos = scores.gather(1, query_video.unsqueeze(1)).squeeze(1)
        t2v = (margin + neg - pos).clamp(min=0).mean()
    return t2v + v2t


def query_diversity(
    queries: torch.Tensor, query_video: torch.Tensor, delta: float, alpha: float
) -> torch.Tensor:
    """GMMFormer's query-diversity loss: ``(1/Nq) sum_k log(1 + sum_i N_ik exp(alpha (C_ik + delta)))``.

    ``C`` is the cosine matrix of the queries and ``N_ik = 1`` iff ``i != k`` are captions of the same video.
    Computed as a logsumexp with a zero column, so large ``alpha`` never overflows.

    Args:
        queries: r(Nq D) query embeddings (MamFusion: the fused ``q'``).
        query_video: long (Nq).
        delta, alpha: the configs' ``neg_factor``.
    """
    if queries.dim() != 2 or query_video.shape != (queries.shape[0],):
        raise ShapeMismatchError(
            f"queries must be [Nq, D] and query_video [Nq]; got {tuple(queries.shape)} and "
            f"{tuple(query_video.shape)}"
        )
    x = F.normalize(queries, dim=-1)
    cos = x @ x.t()  # (Nq Nq)
    same = query_video.unsqueeze(0) == query_video.unsqueeze(1)
    neighbours = same & ~torch.eye(len(queries), dtype=torch.bool, device=queries.device)  # N_ik
    logits = (alpha * (cos + delta)).masked_fill(~neighbours, float("-inf"))  # (Nq_i Nq_k)
    logits = torch.cat([logits, logits.new_zeros(1, logits.shape[1])], dim=0)  # the "1 +" term
    return torch.logsumexp(logits, dim=0).mean()


def moment_diversity(masks: torch.Tensor, target: float = 0.15) -> torch.Tensor:
    """AMDNet's moment diversity: ``mean_videos || target * I_K - G ||_F^2``, ``G = M~ M~^T``.

    ``M~_k = M_k / sum_t M_k(t)``, so ``G``'s off-diagonal entries measure the overlap of two moments.

    Args:
        masks: r(B K L), the Gaussian span masks.
        target: the diagonal target (0.15 in the code).
    """
    if masks.dim() != 3:
        raise ShapeMismatchError(f"masks must be [B, K, L], got {tuple(masks.shape)}")
    normed = masks / masks.sum(dim=-1, keepdim=True)
    gram = normed @ normed.transpose(1, 2)  # (B K K)
    eye = torch.eye(masks.shape[1], dtype=masks.dtype, device=masks.device)
    return ((target * eye - gram) ** 2).sum(dim=(1, 2)).mean()


def moment_relevance(
    queries: torch.Tensor,
    moments: torch.Tensor,
    video_vec: torch.Tensor,
    query_video: torch.Tensor,
    margin: float = 0.02,
) -> torch.Tensor:
    """AMDNet's moment relevance: the best moment of the GT video must beat its whole-video vector.

    ``L = mean_i [margin + cos(q_i, g_{y_i}) - max_k cos(q_i, P_{y_i,k})]+``.

    Args:
        queries: r(Nq D).
        moments: r(B K D), moment features P.
        video_vec: r(B D), video-level vectors g.
        query_video: long (Nq).
        margin: 0.02 in the code.
    """
    if moments.dim() != 3 or video_vec.dim() != 2 or query_video.shape != (queries.shape[0],):
        raise ShapeMismatchError(
            f"expected queries [Nq, D], moments [B, K, D], video_vec [B, D], query_video [Nq]; got "
            f"{tuple(queries.shape)}, {tuple(moments.shape)}, {tuple(video_vec.shape)}, "
            f"{tuple(query_video.shape)}"
        )
    q = F.normalize(queries, dim=-1)  # (Nq D)
    gt_moments = F.normalize(moments, dim=-1)[query_video]  # (Nq K D)
    pos = torch.einsum("nd,nkd->nk", q, gt_moments).amax(dim=1)  # (Nq)
    glob = (q * F.normalize(video_vec, dim=-1)[query_video]).sum(dim=-1)  # (Nq)
    return (margin + glob - pos).clamp(min=0).mean()


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """``(CE(logits, diag) + CE(logits^T, diag)) / 2`` for a square [N, N] logit matrix.

    MUSE's loss, docs/models.md §5.3.
    """
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ShapeMismatchError(f"logits must be square [N, N], got {tuple(logits.shape)}")
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
