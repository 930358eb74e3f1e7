"""The numerics of exact search over float16 clip matrices: decoding, blocked products, per-video max.

Kept apart from ``ExactIndex`` (which does bookkeeping, filters and persistence) because these few functions
are where the time goes and what ``bench/index.py`` and ``bench/search_1m.py`` measure; each is exact
(results equal a float32 numpy computation on the same float16 values, up to summation order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from prvr_sdk.native import f16dot

__all__ = ["WRITE_CHUNK", "clip_rows", "decode_all", "decode_f16", "dot_f16", "max_per_video", "video_blocks"]

# Rows copied (or decoded) at a time when a save compacts or merges segments, or a load decodes to float32.
WRITE_CHUNK = 1 << 16
# float16 -> float32 by bit arithmetic (see decode_f16).
_SIGN_AND_MAGNITUDE = np.int32(-0x70000001)  # 0x8FFFFFFF: sign bit + the 27 bits fp16 magnitude lands in
_EXP_REBIAS = np.float32(2.0**112)  # 2 ** (127 - 15): float32 exponent bias minus float16's


def clip_rows(offsets: np.ndarray, vids: np.ndarray) -> np.ndarray:
    """Clip-row numbers of videos ``vids`` (increasing), concatenated; int64."""
    starts = offsets[vids]
    counts = offsets[vids + 1] - starts
    firsts = np.cumsum(counts) - counts
    return np.repeat(starts - firsts, counts) + np.arange(int(counts.sum()), dtype=np.int64)


def decode_f16(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = src`` (float16 -> float32), exact for finite values, ~5x faster than ``astype``.

    numpy's float16 cast is a scalar loop (~200 M values/s here); this does four vectorised integer/float
    passes over a cache-resident buffer instead. The float16 bits, sign-extended to int32 and shifted left
    by 13, put the 10 mantissa bits and 5 exponent bits where float32 keeps its own; masking clears the
    sign-extension copies and keeps the sign; multiplying by 2**112 rebiases the exponent (15 -> 127) and,
    being a float multiply, also turns float16 subnormals and zeros into the right float32 values.
    Inf/NaN would decode wrongly; ``add`` never stores them.
    """
    bits = out.view(np.int32)
    np.copyto(bits, src.view(np.int16))
    np.left_shift(bits, 13, out=bits)
    np.bitwise_and(bits, _SIGN_AND_MAGNITUDE, out=bits)
    np.multiply(out, _EXP_REBIAS, out=out)
    return out


def decode_all(rows: np.ndarray) -> np.ndarray:
    """A float32 copy of a float16 matrix (memory-mapped or not), decoded in chunks."""
    out = np.empty(rows.shape, dtype=np.float32)
    for a in range(0, len(rows), WRITE_CHUNK):
        decode_f16(rows[a : a + WRITE_CHUNK], out[a : a + WRITE_CHUNK])
    return out


def dot_f16(rows: np.ndarray, q: np.ndarray, piece: np.ndarray) -> np.ndarray:
    """``rows @ q.T`` in float32 for float16 (or float32) ``rows [n, D]``: ``[n, nq]``.

    Few queries (``nq <= f16dot.MAX_NQ``): the native kernel (``prvr_sdk.native.f16dot``) converts and
    multiplies each row in registers on all cores, reading the float16 matrix once -- a matrix-vector
    product is bound by that read, which numpy's decode passes would multiply several times over. More
    queries, or no kernel (no compiler, an old CPU, ``PRVR_NATIVE=off``): a cache-sized piece (``len(piece)``
    rows) is decoded and multiplied by BLAS at once, so the float32 copy stays in cache and the float16
    matrix is still streamed once; BLAS's GEMM beats the kernel there. The ``[rows, queries]`` layout
    makes the per-video max below a reduction over whole contiguous rows. Both paths give float32 products
    of the same float16 values, equal up to summation order.
    """
    if rows.dtype == np.float32:  # an index loaded with float32=True keeps decoded rows in RAM
        return rows @ q.T
    if len(q) <= f16dot.MAX_NQ:
        fast = f16dot.dot(rows, q)
        if fast is not None:
            return fast
    n, step = len(rows), len(piece)
    out = np.empty((n, len(q)), dtype=np.float32)
    for a in range(0, n, step):
        b = min(n, a + step)
        chunk = piece[: b - a]
        # F16C decode (one thread: BLAS's own threads run the product next) or numpy's bit arithmetic.
        if f16dot.decode(rows[a:b], chunk, threads=1) is None:
            decode_f16(rows[a:b], chunk)
        np.matmul(chunk, q.T, out=out[a:b])
    return out


def max_per_video(
    scores: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Per-video max over consecutive runs of ``counts`` clip rows, and a winning-clip finder.

    The max is a plain reduction; the argmax (which clip won) is only needed for the few videos that make
    the top-k, so it is returned as a function of the chosen video columns ``[nq, m]`` that reads the
    same ``scores`` (exact; the first winning clip on ties, like ``np.argmax``).

    Args:
        scores: ``[sum(counts), nq]`` clip scores (``dot_f16`` layout).
        counts: ``[nv]`` clips of each video, all >= 1.

    Returns:
        ``(best [nv, nq] float32, clip_of)`` with ``clip_of(cols) -> int64 [nq, m]`` counted inside the video.
    """
    nq = scores.shape[1]
    queries = np.arange(nq)[:, None, None]
    if (counts == counts[0]).all():  # the usual case (32 clips each): a reshape, no index arithmetic
        by_video = scores.reshape(len(counts), int(counts[0]), nq)
        j = np.arange(int(counts[0]))
        return by_video.max(axis=1), lambda cols: by_video[cols[..., None], j, queries].argmax(axis=2)
    starts = np.cumsum(counts) - counts

    def clip_of(cols: np.ndarray) -> np.ndarray:
        n = counts[cols][..., None]  # [nq, m, 1]
        j = np.arange(int(n.max()))
        vals = scores[starts[cols][..., None] + np.minimum(j, n - 1), queries]
        return np.where(j < n, vals, -np.inf).argmax(axis=2)

    return np.maximum.reduceat(scores, starts, axis=0), clip_of


def video_blocks(offsets: np.ndarray, rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive video ranges holding at most ``rows`` clip rows (a longer video is a block alone)."""
    nv, v = len(offsets) - 1, 0
    while v < nv:
        nxt = int(np.searchsorted(offsets, offsets[v] + rows, side="right")) - 1
        nxt = min(max(nxt, v + 1), nv)
        yield v, nxt
        v = nxt
