"""Exact index: ``ExactIndex.search`` (float16 on disk, memory-mapped, blocked) vs brute-force numpy.

Builds a seeded synthetic corpus with structure (clip vectors drawn around 64 topics, so scores spread
like real ones), adds it to an ``ExactIndex`` in segments, saves it and loads it back memory-mapped. The
baseline is what one writes by hand with numpy: the same float16 values held in RAM as one float32
``[N_videos * N_clips, D]`` matrix, one full product per query batch, a max over each video's clips
(reshape + max; the video-vector term for ``weighted``), ``argpartition`` top-k. It checks agreement
first (top-k ids equal, max score difference), then times both on the same queries (one warm-up,
median of repeats) and prints a fixed-width table with the ratio baseline / index (> 1: index faster).
The index runs twice: as loaded by default (float16 memory map, decoded block by block during search)
and with ``load(float32=True)`` (decoded once into RAM, like the baseline). Build, save and load times
and the bytes on disk come first. Results go to bench/RESULTS.md by hand.

    python bench/index.py                  # preset M: 50k videos x 32 clips x 256 dims
    python bench/index.py --size S         # quick
    python bench/index.py --kind weighted --batches 1 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prvr_sdk import __version__
from prvr_sdk.index import ExactIndex, ScoringRule

# (videos, clips per video, dim)
PRESETS: dict[str, tuple[int, int, int]] = {
    "S": (10_000, 32, 256),
    "M": (50_000, 32, 256),
    "L": (200_000, 32, 384),
}
RULES = {
    "max_clip": ScoringRule("max_clip"),
    "weighted": ScoringRule("weighted", clip_weight=0.7, frame_weight=0.3),
    "video": ScoringRule("video"),
}


@dataclass
class Row:
    batch: int
    baseline_ms: float
    fp16_ms: float  # ExactIndex.load(path): float16 memory map, decoded block by block
    float32_ms: float  # ExactIndex.load(path, float32=True): decoded once into RAM
    fp16_ratio: float  # baseline / index: > 1 means the index is faster
    float32_ratio: float
    fp16_qps: float
    same_ids: float
    max_abs_diff: float


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_chunks(videos: int, clips: int, dim: int, chunk: int, seed: int = 0):
    """Yield (ids, clips [n, clips, dim], video vectors [n, dim]) float16 chunks of a topic-structured
    corpus."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((64, dim), dtype=np.float32))
    for v0 in range(0, videos, chunk):
        n = min(chunk, videos - v0)
        topic = topics[rng.integers(64, size=n)]
        noise = rng.standard_normal((n, clips, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        c = _unit(topic[:, None, :] + noise).astype(np.float16)
        v = _unit(c.astype(np.float32).mean(axis=1)).astype(np.float16)
        yield [f"v{v0 + i:07d}" for i in range(n)], c, v
    del topics


def make_queries(num: int, dim: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    topics = _unit(np.random.default_rng(0).standard_normal((64, dim), dtype=np.float32))
    q = topics[rng.integers(64, size=num)] + 0.5 * rng.standard_normal(
        (num, dim), dtype=np.float32
    ) / np.sqrt(dim)
    return _unit(q).astype(np.float32)


class Baseline:
    """Brute force with numpy, everything in RAM as float32."""

    def __init__(self, clips: np.ndarray, vectors: np.ndarray | None, num_clips: int, rule: ScoringRule):
        self.clips, self.vectors, self.num_clips, self.rule = clips, vectors, num_clips, rule

    def scores(self, q: np.ndarray) -> np.ndarray:
        if self.rule.kind == "video":
            return q @ self.vectors.T
        s = (q @ self.clips.T).reshape(len(q), -1, self.num_clips).max(axis=2)
        s = self.rule.clip_weight * s
        if self.rule.kind == "weighted":
            s += self.rule.frame_weight * (q @ self.vectors.T)
        return s

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.scores(q)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(top, order, axis=1)
        return ids, np.take_along_axis(s, ids, axis=1)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (also pages the memory map in)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def environment() -> dict[str, str]:
    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "prvr-sdk": __version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus": str(os.cpu_count()),
        "load avg (1 min)": f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?",
    }
    try:
        from threadpoolctl import threadpool_info

        env["blas"] = ", ".join(
            f"{i['internal_api']} {i['version']} x{i['num_threads']}" for i in threadpool_info()
        )
    except ImportError:
        env["blas"] = "? (threadpoolctl not installed)"
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_argument_group("data")
    group.add_argument("--size", choices=sorted(PRESETS), default="M", help="corpus preset")
    group.add_argument("--kind", choices=sorted(RULES), default="max_clip", help="scoring rule")
    group.add_argument("--dir", default=None, help="where to write the index (default: a temp dir, removed)")
    group = parser.add_argument_group("search")
    group.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256], help="query batch sizes")
    group.add_argument("--top-k", type=int, default=10)
    group.add_argument("--repeats", type=int, default=5, help="timed runs per setting (median kept)")
    group.add_argument("--check-queries", type=int, default=32, help="queries checked against brute force")
    group.add_argument("--threads", type=int, default=None, help="BLAS threads (needs threadpoolctl)")
    group = parser.add_argument_group("output")
    group.add_argument("--markdown", action="store_true", help="print a markdown table")
    group.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)

    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    videos, clips, dim = PRESETS[args.size]
    rule = RULES[args.kind]
    env = environment()
    print(f"# bench/index.py {' '.join(sys.argv[1:])}", file=sys.stderr)
    for key, value in env.items():
        print(f"#   {key}: {value}", file=sys.stderr)
    print(
        f"#   corpus: {videos} videos x {clips} clips x {dim} dims, scoring {rule.to_dict()}, "
        f"top-k {args.top_k}",
        file=sys.stderr,
    )

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="prvr-bench-index-"))
    root = workdir / "index"
    try:
        index = ExactIndex(dim, rule)
        base_clips = np.empty((videos * clips, dim), dtype=np.float32) if rule.uses_clips else None
        base_vecs = np.empty((videos, dim), dtype=np.float32) if rule.uses_video_vectors else None
        t0, add_s = time.perf_counter(), 0.0
        for ids, c, v in make_chunks(videos, clips, dim, chunk=5_000):
            row = int(ids[0][1:])
            if base_clips is not None:
                base_clips[row * clips : (row + len(ids)) * clips] = c.reshape(-1, dim)
            if base_vecs is not None:
                base_vecs[row : row + len(ids)] = v
            t1 = time.perf_counter()
            index.add(
                ids,
                clip_embs=c if rule.uses_clips else None,
                video_embs=v if rule.uses_video_vectors else None,
            )
            add_s += time.perf_counter() - t1
        gen_s = time.perf_counter() - t0 - add_s
        t0 = time.perf_counter()
        index.save(root, merge=True)
        save_s = time.perf_counter() - t0
        index.close()
        del index
        t0 = time.perf_counter()
        index = ExactIndex.load(root)
        load_s = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(
            f"#   build: generate {gen_s:.1f} s, add {add_s:.1f} s, save {save_s:.1f} s, load (mmap) "
            f"{load_s * 1e3:.1f} ms, on disk {disk / 2**20:.0f} MiB; baseline RAM "
            f"{sum(a.nbytes for a in (base_clips, base_vecs) if a is not None) / 2**20:.0f} MiB",
            file=sys.stderr,
        )

        baseline = Baseline(base_clips, base_vecs, clips, rule)
        queries = make_queries(max(max(args.batches), args.check_queries), dim)

        fast = ExactIndex.load(root, float32=True)

        # Agreement first: same top-k ids (ties are measure-zero with this data) and scores, both modes.
        check = queries[: args.check_queries]
        ref_ids, ref_scores = baseline.search(check, args.top_k)
        same, diff = 1.0, 0.0
        for candidate in (index, fast):
            hits = candidate.search(check, top_k=args.top_k)
            got_ids = np.array([[int(h.video_id[1:]) for h in row] for row in hits])
            got_scores = np.array([[h.score for h in row] for row in hits])
            same = min(same, float((got_ids == ref_ids).mean()))
            diff = max(diff, float(np.abs(got_scores - ref_scores).max()))
        print(
            f"#   agreement on {len(check)} queries (both modes): same ids {same:.4f}, "
            f"max |score diff| {diff:.1e}",
            file=sys.stderr,
        )

        rows = []
        for batch in args.batches:
            q = queries[:batch]
            base_ms = _time(lambda q=q: baseline.search(q, args.top_k), args.repeats)
            fp16_ms = _time(lambda q=q: index.search(q, top_k=args.top_k), args.repeats)
            f32_ms = _time(lambda q=q: fast.search(q, top_k=args.top_k), args.repeats)
            rows.append(
                Row(
                    batch,
                    base_ms,
                    fp16_ms,
                    f32_ms,
                    base_ms / fp16_ms,
                    base_ms / f32_ms,
                    batch / fp16_ms * 1e3,
                    same,
                    diff,
                )
            )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(f"#   peak RSS {peak:.0f} MiB (baseline matrix included)", file=sys.stderr)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)

    if args.json:
        print(
            json.dumps({"environment": env, "args": vars(args), "rows": [asdict(r) for r in rows]}, indent=2)
        )
    elif args.markdown:
        print(
            "| batch | baseline ms | fp16 mmap ms | ratio | float32 RAM ms | ratio | fp16 q/s | same ids "
            "| max diff |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r.batch} | {r.baseline_ms:.1f} | {r.fp16_ms:.1f} | {r.fp16_ratio:.2f}x | "
                f"{r.float32_ms:.1f} | {r.float32_ratio:.2f}x | {r.fp16_qps:.1f} | {r.same_ids:.4f} | "
                f"{r.max_abs_diff:.1e} |"
            )
    else:
        print(
            f"{'batch':>6}{'baseline ms':>13}{'fp16 ms':>9}{'ratio':>8}{'f32 ms':>9}{'ratio':>8}"
            f"{'fp16 q/s':>10}{'same ids':>10}{'max diff':>10}"
        )
        for r in rows:
            print(
                f"{r.batch:>6}{r.baseline_ms:>13.1f}{r.fp16_ms:>9.1f}{r.fp16_ratio:>7.2f}x{r.float32_ms:>9.1f}"
                f"{r.float32_ratio:>7.2f}x{r.fp16_qps:>10.1f}{r.same_ids:>10.4f}{r.max_abs_diff:>10.1e}"
            )
    if same < 0.999 or diff > 1e-4:
        print(
            f"error: index and brute force disagree (same ids {same:.4f}, max diff {diff:.1e})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
