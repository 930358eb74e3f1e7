"""The Qdrant index (embedded, ``qdrant_edge``) vs the exact index and numpy, on one synthetic corpus.

Corpus with the structure of untrimmed videos: each video is a few events, each event a run of clips
drawn around one of 256 topics; the video vector is the mean of its clips plus noise; a query describes
one event of one video (partially relevant: it matches a moment, not the whole video). Vectors are
float16-rounded unit vectors, as every index stores them. Measured, in one run:

1. build: ``ExactIndex.add`` vs ``QdrantEdgeIndex.add`` (clip vectors per second);
2. the two-stage search of the ``weighted`` rule (0.7 MaxSim + 0.3 video vector) with a *fixed* engine
   top-k' and no certificate: recall@10 against the exact top-10 when candidates come from the MaxSim list
   only, or from the MaxSim and the video-vector lists together; and the share of queries whose
   certificate (the k-th candidate beats the bound on every unseen video) holds at that k' -- what makes
   the exact mode stop after one engine round. Also the largest engine-vs-float32 score difference
   (why ``core.ENGINE_TOLERANCE`` is what it is);
3. end-to-end latency, one query at a time (median over the queries): numpy brute force in RAM (the
   baseline), ``ExactIndex.search``, ``QdrantEdgeIndex.search`` in exact mode (default k', certified;
   agreement with the exact index and the mean engine rounds reported), then HNSW: ``optimize()`` builds
   the graph (timed) and ``search="hnsw"`` runs at several ``hnsw_ef`` (recall@10, latency).

    python bench/qdrant.py                 # preset M: 3000 videos x 32 clips x 384 dims (96k clips)
    python bench/qdrant.py --size S        # quick: 500 videos
    python bench/qdrant.py --json out.json

Ratios are baseline / candidate (> 1: the candidate is faster). Results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from prvr_sdk import __version__
from prvr_sdk.index import ExactIndex, ScoringRule
from prvr_sdk.index.qdrant import DEFAULT_CANDIDATES, QdrantEdgeIndex
from prvr_sdk.index.qdrant.core import ENGINE_TOLERANCE, Request
from prvr_sdk.index.qdrant.translate import CLIPS, VIDEO, point_id

PRESETS = {"S": (500, 32, 256), "M": (3000, 32, 384), "L": (10_000, 32, 384)}
RULES = {
    "max_clip": ScoringRule("max_clip"),
    "weighted": ScoringRule("weighted", clip_weight=0.7, frame_weight=0.3),
}
K = 10


def unit16(x: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return x.astype(np.float16).astype(np.float32)


def make_corpus(nv: int, nc: int, d: int, nq: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    topics = unit16(rng.standard_normal((256, d)))
    events = rng.integers(0, 256, size=(nv, 4))  # up to four events per video
    cuts = np.sort(rng.integers(1, nc, size=(nv, 3)), axis=1)
    which = (np.arange(nc)[None, :, None] >= cuts[:, None, :]).sum(axis=2)  # [nv, nc] event of each clip
    centre = topics[np.take_along_axis(events, which, axis=1)]  # [nv, nc, d]
    clips = unit16(centre + 1.2 * rng.standard_normal((nv, nc, d)) / np.sqrt(d))
    video = unit16(clips.mean(axis=1) + 0.5 * rng.standard_normal((nv, d)) / np.sqrt(d))
    qv, qe = rng.integers(0, nv, size=nq), rng.integers(0, 4, size=nq)
    queries = unit16(topics[events[qv, qe]] + 1.0 * rng.standard_normal((nq, d)) / np.sqrt(d))
    spans = np.stack([np.arange(nc), np.arange(nc) + 1.0], axis=1)
    return clips, video, queries, spans


def brute(q: np.ndarray, clips: np.ndarray, video: np.ndarray, rule: ScoringRule) -> np.ndarray:
    """The numpy baseline: float32 matrices in RAM, full products, max over clips, weighted sum."""
    nv, nc, d = clips.shape
    s = (clips.reshape(-1, d) @ q.T).reshape(nv, nc, -1).max(axis=1).T * np.float32(rule.clip_weight)
    if rule.uses_video_emb:
        s = s + np.float32(rule.frame_weight) * (q @ video.T)
    return s


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1), axis=1)


def timed(fn, queries) -> tuple[float, list]:
    fn(queries[0])  # warm-up
    times, out = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times), out


def recall(got_ids: list[list[str]], truth: np.ndarray, ids: list[str]) -> float:
    return float(
        np.mean([len(set(g) & {ids[j] for j in t}) / len(t) for g, t in zip(got_ids, truth, strict=True)])
    )


def two_stage_table(index, queries, scores, truth, ids, rule, kprimes):
    """Recall@10 of fixed-k' two-stage search, MaxSim list alone vs both lists; certificate rate."""
    row_of = {point_id(v): i for i, v in enumerate(ids)}
    rows, worst = [], 0.0
    for kp in kprimes:
        rec_clip, rec_union, certified = [], [], []
        for qi, q in enumerate(queries):
            by_clip, by_video = index._engine.query(
                [Request(CLIPS, [q.tolist()], kp, None), Request(VIDEO, q.tolist(), kp, None)], True, None
            )
            exact_clip = scores["clip"][qi]
            for pid, s in by_clip:
                worst = max(worst, abs(s - float(exact_clip[row_of[pid]])))
            truth_set = set(truth[qi].tolist())
            for cands, out in (
                ([row_of[p] for p, _ in by_clip], rec_clip),
                ([row_of[p] for p, _ in by_clip + by_video], rec_union),
            ):
                cands = np.unique(cands)
                best = cands[np.argsort(-scores["total"][qi, cands], kind="stable")[:K]]
                out.append(len(truth_set & set(best.tolist())) / K)
            union = np.unique([row_of[p] for p, _ in by_clip + by_video])
            kth = np.sort(scores["total"][qi, union])[::-1][K - 1]
            bound = rule.clip_weight * by_clip[-1][1] + rule.frame_weight * by_video[-1][1]
            certified.append(kth > bound + 2 * ENGINE_TOLERANCE)
        rows.append(
            {
                "k_prime": kp,
                "recall_clip_list": float(np.mean(rec_clip)),
                "recall_both_lists": float(np.mean(rec_union)),
                "certified": float(np.mean(certified)),
            }
        )
    return rows, worst


def bench_kind(kind, rule, tmp, args, corpus, ids) -> dict:
    """Build both indexes for one scoring rule and measure them (printing as it goes)."""
    clips, video, queries, spans = corpus
    nv, nc, d = clips.shape
    add = {"video_ids": ids, "clip_embs": clips, "spans": [spans] * nv}
    if rule.uses_video_emb:
        add["video_embs"] = video
    exact = ExactIndex(d, rule)
    t = time.perf_counter()
    exact.add(**add)
    exact_add = time.perf_counter() - t
    index = QdrantEdgeIndex(Path(tmp) / kind, d, rule)
    t = time.perf_counter()
    index.add(**add)
    edge_add = time.perf_counter() - t
    out: dict = {
        "build": {
            "exact_add_s": exact_add,
            "edge_add_s": edge_add,
            "edge_clips_per_s": nv * nc / edge_add,
        }
    }
    print(
        f"\n== {kind}: add {nv * nc} clips: exact {exact_add:.2f} s, qdrant-edge {edge_add:.2f} s "
        f"({nv * nc / edge_add:,.0f} clip vectors/s)"
    )

    clip_scores = brute(queries, clips, video, ScoringRule("max_clip"))
    total = brute(queries, clips, video, rule)
    truth = topk(total, K)
    if kind == "weighted":
        rows, worst = two_stage_table(
            index, queries, {"clip": clip_scores, "total": total}, truth, ids, rule, args.kprimes
        )
        out["two_stage"], out["engine_score_max_abs_diff"] = rows, worst
        print("two-stage, fixed k' (engine exact scan, no certificate):")
        print(f"{'k_prime':>8} {'recall@10 MaxSim list':>22} {'recall@10 both lists':>21} {'certified':>10}")
        for r in rows:
            print(
                f"{r['k_prime']:>8} {r['recall_clip_list']:>22.4f} {r['recall_both_lists']:>21.4f} "
                f"{r['certified']:>10.2%}"
            )
        print(f"largest |engine score - float32 score| (MaxSim, float16 storage): {worst:.2e}")

    base_ms, _ = timed(lambda q: topk(brute(q[None], clips, video, rule), K), queries)
    exact_ms, exact_hits = timed(lambda q: exact.search(q, top_k=K), queries)
    calls = {"n": 0}
    query = index._engine.query

    def counting(*a, **kw):
        calls["n"] += 1
        return query(*a, **kw)

    index._engine.query = counting
    edge_ms, edge_hits = timed(lambda q: index.search(q, top_k=K), queries)
    index._engine.query = query
    same = float(
        np.mean(
            [
                [h.video_id for h in a] == [h.video_id for h in b]
                for a, b in zip(edge_hits, exact_hits, strict=True)
            ]
        )
    )
    latency = [
        {"what": "numpy brute force (baseline)", "ms": base_ms, "recall": 1.0},
        {
            "what": "ExactIndex.search",
            "ms": exact_ms,
            "recall": recall([[h.video_id for h in hs] for hs in exact_hits], truth, ids),
        },
        {
            "what": f"QdrantEdgeIndex exact, k'={DEFAULT_CANDIDATES}",
            "ms": edge_ms,
            "recall": recall([[h.video_id for h in hs] for hs in edge_hits], truth, ids),
            "same_as_exact": same,
            "engine_calls_per_query": calls["n"] / (len(queries) + 1),
        },
    ]
    if not args.no_hnsw:
        t = time.perf_counter()
        index.optimize()
        build = time.perf_counter() - t
        out["hnsw_build_s"] = build
        out["indexed_vectors"] = index.info()["indexed_vectors"]
        print(f"HNSW build (optimize): {build:.1f} s, indexed vectors {out['indexed_vectors']}")
        index.search_mode = "hnsw"
        for ef in args.efs:
            index.hnsw_ef = ef
            ms, hits = timed(lambda q: index.search(q, top_k=K), queries)
            latency.append(
                {
                    "what": f"QdrantEdgeIndex hnsw ef={ef}, k'={DEFAULT_CANDIDATES}",
                    "ms": ms,
                    "recall": recall([[h.video_id for h in hs] for hs in hits], truth, ids),
                }
            )
    out["latency"] = latency
    print(f"{'one query, top-10':<44} {'ms':>9} {'baseline/x':>11} {'recall@10':>10}")
    for r in latency:
        extra = (
            f"  same ids as exact: {r['same_as_exact']:.0%}, engine calls/query "
            f"{r['engine_calls_per_query']:.2f}"
            if "same_as_exact" in r
            else ""
        )
        print(f"{r['what']:<44} {r['ms']:>9.2f} {base_ms / r['ms']:>11.2f} {r['recall']:>10.4f}{extra}")
    index.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(PRESETS), default="M")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--kprimes", type=int, nargs="+", default=[10, 20, 32, 64, 128, 256, 512])
    parser.add_argument("--efs", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--no-hnsw", action="store_true", help="skip the HNSW build and its searches")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    nv, nc, d = PRESETS[args.size]
    clips, video, queries, spans = make_corpus(nv, nc, d, args.queries)
    ids = [f"v{i:06d}" for i in range(nv)]
    report: dict = {
        "prvr_sdk": __version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "videos": nv,
        "clips_per_video": nc,
        "dim": d,
        "clips": nv * nc,
        "queries": args.queries,
    }
    print(f"corpus: {nv} videos x {nc} clips x {d} dims = {nv * nc} clip vectors; {args.queries} queries")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, rule in RULES.items():
            report[kind] = bench_kind(kind, rule, tmp, args, (clips, video, queries, spans), ids)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
