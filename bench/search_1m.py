"""Exact search at 1M clips: ``ExactIndex`` (float16, memory-mapped) vs the memory-read bound and numpy.

Why: a single query against a million clips is a matrix-vector product, so its floor is the time to read
the clip matrix once. This script measures, in one run and on the same clips:

- the index: ``ExactIndex.search`` top-10 on 31,250 videos x 32 clips x 384 dims (``max_clip``), saved and
  loaded back memory-mapped, with the native kernel (``prvr_sdk.native.f16dot``) and with
  ``PRVR_NATIVE=off`` (numpy decode + BLAS, the fallback);
- (a) the read bound: a float32 BLAS GEMV over the same clips in RAM; its time is reported as measured and
  halved ("fp16-scaled": the index reads float16, half the bytes);
- (b) the numpy baseline: float32 GEMM over the clips in RAM + per-video max + top-k (``bench/index.py``'s
  ``Baseline``).

It checks that the index agrees with the baseline (same top-10 ids, max score difference) in both modes
first, then prints the batch-1 and batch-256 figures with ratios, a scaling table (search time vs number
of clips, 1e4 .. 1e6) and a crossover table (the kernel vs decode + BLAS per number of queries, on one
2**18-row block) that justifies ``f16dot.MAX_NQ``. Results go to bench/RESULTS.md by hand.

    python bench/search_1m.py                      # ~5 min on the 2-core dev VM
    python bench/search_1m.py --videos 3125        # quick (100k clips)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from prvr_sdk.index import ExactIndex, ScoringRule, blocks
from prvr_sdk.native import f16dot
from prvr_sdk.native import status as native_status

_spec = importlib.util.spec_from_file_location("bench_index", Path(__file__).with_name("index.py"))
assert _spec is not None and _spec.loader is not None
bench_index = importlib.util.module_from_spec(_spec)
sys.modules["bench_index"] = bench_index  # dataclasses look their module up there
_spec.loader.exec_module(bench_index)

RULE = ScoringRule("max_clip")


def _time(fn, repeats: int) -> float:
    """Median milliseconds of ``repeats`` runs after one warm-up (which also pages the memory map in)."""
    return bench_index._time(fn, repeats)


class native_off:  # noqa: N801 - used as a context manager, reads like a statement
    """``PRVR_NATIVE=off`` for the block: the numpy fallback the kernel replaces."""

    def __enter__(self) -> None:
        self.old = os.environ.get("PRVR_NATIVE")
        os.environ["PRVR_NATIVE"] = "off"

    def __exit__(self, *exc: object) -> None:
        if self.old is None:
            os.environ.pop("PRVR_NATIVE", None)
        else:
            os.environ["PRVR_NATIVE"] = self.old


def build_index(root: Path, videos: int, clips: int, dim: int) -> np.ndarray:
    """Save an index of ``videos`` x ``clips`` topic-structured clips to ``root``; return them as float32."""
    index = ExactIndex(dim, RULE)
    base = np.empty((videos * clips, dim), dtype=np.float32)
    for ids, c, _ in bench_index.make_chunks(videos, clips, dim, chunk=2_500):
        row = int(ids[0][1:])
        base[row * clips : (row + len(ids)) * clips] = c.reshape(-1, dim)
        index.add(ids, clip_embs=c)
    index.save(root, merge=True, fsync=False)
    index.close()
    return base


def agreement(index: ExactIndex, baseline, queries: np.ndarray, k: int) -> tuple[float, float]:
    ref_ids, ref_scores = baseline.search(queries, k)
    hits = index.search(queries, top_k=k)
    got_ids = np.array([[int(h.video_id[1:]) for h in row] for row in hits])
    got_scores = np.array([[h.score for h in row] for row in hits])
    return float((got_ids == ref_ids).mean()), float(np.abs(got_scores - ref_scores).max())


def _numpy_path(index: ExactIndex, q: np.ndarray, k: int) -> None:
    with native_off():
        index.search(q, top_k=k)


def measure(index: ExactIndex, base: np.ndarray, queries: np.ndarray, batch: int, k: int, repeats: int,
            clips: int) -> dict[str, float]:
    """Milliseconds for one batch size: index (kernel / numpy), read bound (GEMV), numpy baseline.

    The four are timed in turn within each repeat (after one warm-up each), so a change in the VM's speed
    during the run -- other tenants, frequency -- hits all of them alike and the ratios stay comparable
    (timing each in a block of its own let drift decide ratios near 1).
    """
    q = queries[:batch]
    baseline = bench_index.Baseline(base, None, clips, RULE)
    fns = {
        "index_ms": lambda: index.search(q, top_k=k),
        "gemv_ms": lambda: base @ q[0],
        "baseline_ms": lambda: baseline.search(q, k),
        "numpy_path_ms": lambda: _numpy_path(index, q, k),
    }
    for fn in fns.values():
        fn()  # warm-up (also pages the memory map in)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    out = {name: float(np.median(ts)) for name, ts in times.items()}
    out["read_bound_ms"] = out["gemv_ms"] / 2
    return out


def gemm_rate(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of numpy's float32 square product: the machine's GEMM rate, measured in the same run."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    return 2.0 * size**3 / (_time(lambda: a @ b, repeats) / 1e3)


def crossover(rows: np.ndarray, queries: np.ndarray, counts: list[int], repeats: int) -> list[tuple]:
    """``dot_f16`` on one block with the kernel vs decode + BLAS, per number of queries."""
    piece = np.empty((max(1, (4 << 20) // (4 * rows.shape[1])), rows.shape[1]), dtype=np.float32)
    saved, table = f16dot.MAX_NQ, []
    try:
        for nq in counts:
            q = queries[:nq]
            f16dot.MAX_NQ = 1 << 30
            kernel = _time(lambda q=q: blocks.dot_f16(rows, q, piece), repeats)
            f16dot.MAX_NQ = 0
            blas = _time(lambda q=q: blocks.dot_f16(rows, q, piece), repeats)
            table.append((nq, kernel, blas, blas / kernel))
    finally:
        f16dot.MAX_NQ = saved
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=31_250, help="videos of 32 clips (31,250: 1M clips)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median kept)")
    parser.add_argument("--scaling", type=int, nargs="*", default=[10_000, 100_000, 300_000],
                        help="clip counts for the scaling table below the full size (always added)")
    parser.add_argument("--crossover", type=int, nargs="*", default=[1, 8, 16, 32, 64, 128, 256],
                        help="query counts for the kernel vs BLAS table (none: skip)")
    parser.add_argument("--dir", default=None, help="where to write the indexes (default: a temp dir)")
    args = parser.parse_args(argv)
    clips, dim, k = 32, args.dim, args.top_k

    env = bench_index.environment()
    env["uptime load (1/5/15 min)"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    env["native"] = str(native_status()["kernels"])
    print(f"# bench/search_1m.py {' '.join(sys.argv[1:])}")
    for key, value in env.items():
        print(f"#   {key}: {value}")

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="prvr-bench-1m-"))
    try:
        t0 = time.perf_counter()
        base = build_index(workdir / "full", args.videos, clips, dim)
        index = ExactIndex.load(workdir / "full")
        n = len(base)
        print(f"#   corpus: {args.videos} videos x {clips} clips x {dim} = {n} clips, float16 on disk "
              f"{n * dim * 2 / 2**20:.0f} MiB (memory-mapped), float32 in RAM {base.nbytes / 2**20:.0f} MiB; "
              f"built in {time.perf_counter() - t0:.0f} s")
        queries = bench_index.make_queries(256, dim)
        baseline = bench_index.Baseline(base, None, clips, RULE)
        same, diff = agreement(index, baseline, queries[:32], k)
        with native_off():
            same_off, diff_off = agreement(index, baseline, queries[:32], k)
        print(f"#   agreement on 32 queries: kernel same ids {same:.4f} max diff {diff:.1e}; "
              f"PRVR_NATIVE=off same ids {same_off:.4f} max diff {diff_off:.1e}")

        print("\n## 1M clips, top-10 (ms; ratio = other / index, > 1: index faster)\n")
        print("| batch | index ms | numpy path ms | GEMV f32 ms | read bound (fp16) ms | index / read bound "
              "| baseline ms | baseline / index | numpy path / index |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        batch_ms = {}
        for batch in (1, 256):
            m = measure(index, base, queries, batch, k, args.repeats, clips)
            batch_ms[batch] = m["index_ms"]
            print(f"| {batch} | {m['index_ms']:.1f} | {m['numpy_path_ms']:.1f} | {m['gemv_ms']:.1f} | "
                  f"{m['read_bound_ms']:.1f} | {m['index_ms'] / m['read_bound_ms']:.2f}x | "
                  f"{m['baseline_ms']:.1f} | {m['baseline_ms'] / m['index_ms']:.2f}x | "
                  f"{m['numpy_path_ms'] / m['index_ms']:.2f}x |", flush=True)
        rate = gemm_rate()
        flops = 2.0 * n * dim * 256
        achieved = flops / (batch_ms[256] / 1e3)
        print(f"\nnumpy float32 GEMM rate (2048^3, median of 5): {rate / 1e9:.1f} GFLOP/s; the index at "
              f"batch 256 does {flops / 1e9:.0f} GFLOP in {batch_ms[256]:.0f} ms = "
              f"{achieved / 1e9:.1f} GFLOP/s, {achieved / rate:.0%} of it")

        if args.crossover:
            rows = np.load(next((workdir / "full").rglob("clips.f16.npy")), mmap_mode="r")[: 1 << 18]
            print("\n## dot_f16 on one 2**18-row block: kernel vs decode + BLAS (ms)\n")
            print("| queries | kernel ms | decode + BLAS ms | BLAS / kernel |")
            print("|---:|---:|---:|---:|")
            for nq, kern, blas, ratio in crossover(rows, queries, args.crossover, args.repeats):
                print(f"| {nq} | {kern:.1f} | {blas:.1f} | {ratio:.2f}x |", flush=True)

        print("\n## Scaling: batch-1 search time vs clips (ms)\n")
        print("| clips | index ms | numpy path ms | read bound (fp16) ms | index / read bound | "
              "numpy path / index |")
        print("|---:|---:|---:|---:|---:|---:|")
        for target in [*sorted(c for c in args.scaling if c < n), n]:
            nv = max(1, target // clips)
            if nv == args.videos:
                sub, sub_base = index, base
            else:
                sub_base = base[: nv * clips]
                small = ExactIndex(dim, RULE)
                small.add([f"v{i:07d}" for i in range(nv)],
                          clip_embs=sub_base.astype(np.float16).reshape(nv, clips, dim))
                small.save(workdir / f"n{nv}", merge=True, fsync=False)
                small.close()
                sub = ExactIndex.load(workdir / f"n{nv}")
            q = queries[:1]
            idx_ms = _time(lambda sub=sub, q=q: sub.search(q, top_k=k), args.repeats)
            gemv_ms = _time(lambda b=sub_base, q=q: b @ q[0], args.repeats)
            with native_off():
                np_ms = _time(lambda sub=sub, q=q: sub.search(q, top_k=k), max(1, args.repeats // 2))
            print(f"| {nv * clips} | {idx_ms:.2f} | {np_ms:.2f} | {gemv_ms / 2:.2f} | "
                  f"{idx_ms / (gemv_ms / 2):.2f}x | {np_ms / idx_ms:.2f}x |", flush=True)
        print(f"\n#   load after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    if same < 0.999 or diff > 1e-4 or same_off < 0.999 or diff_off > 1e-4:
        print("error: the index and the numpy baseline disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
