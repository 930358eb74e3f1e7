"""Scaling: exact search time vs number of clips up to 10^7 (on disk), encode time vs video length per model.

Why: the issue's scaling table. Search: a batch-1 top-10 search is a pass over the clip matrix, so it should
grow linearly with the clips; at 10^7 (7.3 GiB float16) the matrix is memory-mapped from disk and the page
cache decides. The read bound at each size is the float16 bytes over the memory bandwidth that a float32
BLAS GEMV reaches on 10^6 clips in RAM, measured in the same run. Encode: the Retriever's ``encode_video`` at
batch 1 on videos of growing length (models exported at their demo configs with the frame limit raised, so
no frames are dropped), and the exponent of a least-squares fit of log(time) on log(frames): the Mamba heads
(MamFusion, MUSE) should be linear (exponent ~1); a fixed cost dominates the short end, so the fit uses the
upper half of the lengths and both are printed.

    python bench/scaling.py --search 10000 100000 1000000 10000000 --dir /var/tmp/prvr-scaling
    python bench/scaling.py --search --encode mamfusion muse amdnet   # encode only
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from prvr_sdk.index import ExactIndex, ScoringRule

_spec = importlib.util.spec_from_file_location("bench_index", Path(__file__).with_name("index.py"))
assert _spec is not None and _spec.loader is not None
bench_index = importlib.util.module_from_spec(_spec)
sys.modules["bench_index"] = bench_index
_spec.loader.exec_module(bench_index)

RULE = ScoringRule("max_clip")
CLIPS, DIM = 32, 384


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _build(path: Path, videos: int) -> None:
    index = ExactIndex(DIM, RULE)
    for ids, c, _ in bench_index.make_chunks(videos, CLIPS, DIM, chunk=5_000):
        index.add(ids, clip_embs=c)
    index.save(path, merge=True, fsync=False)
    index.close()


def search_rows(sizes: list[int], workdir: Path, repeats: int) -> None:
    rng_q = bench_index.make_queries(1, DIM)
    ram = np.random.default_rng(0).standard_normal((1_000_000, DIM), dtype=np.float32)
    gemv = _median(lambda ram=ram: ram @ rng_q[0], repeats)
    bandwidth = ram.nbytes / gemv
    del ram
    print(f"float32 GEMV over 10^6 x {DIM} in RAM: {gemv * 1e3:.1f} ms = {bandwidth / 1e9:.1f} GB/s")
    print("\n| clips | float16 GiB | build s | search ms | read bound ms | search / read bound "
          "| ms per 10^6 clips |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    times = []
    for clips in sizes:
        videos = max(1, clips // CLIPS)
        path = workdir / f"n{videos}"
        t0 = time.perf_counter()
        if not path.exists():
            _build(path, videos)
        build = time.perf_counter() - t0
        index = ExactIndex.load(path)
        sec = _median(lambda index=index: index.search(rng_q[0], top_k=10), repeats)
        index.close()
        nbytes = videos * CLIPS * DIM * 2
        bound = nbytes / bandwidth
        times.append((videos * CLIPS, sec))
        print(f"| {videos * CLIPS:,} | {nbytes / 2**30:.2f} | {build:.0f} | {sec * 1e3:.1f} | "
              f"{bound * 1e3:.1f} | {sec / bound:.2f}x | {sec * 1e9 / (videos * CLIPS):.1f} |", flush=True)
    if len(times) >= 2:
        x, y = np.log([t[0] for t in times]), np.log([t[1] for t in times])
        print(f"\nfit: search time ~ clips^{np.polyfit(x, y, 1)[0]:.2f} (all sizes); "
              f"~ clips^{np.polyfit(x[-2:], y[-2:], 1)[0]:.2f} (two largest)")


def encode_rows(models: list[str], lengths: list[int], repeats: int) -> None:
    import torch

    from prvr_export.models.registry import create_model
    from prvr_export.onnx_export.bundle import export_bundle
    from prvr_sdk import Retriever

    warnings.simplefilter("ignore")
    longest = max(lengths)
    print("\n| model | " + " | ".join(f"{n} frames ms" for n in lengths)
          + " | exponent (all) | exponent (upper half) |")
    print("|---|" + "---:|" * (len(lengths) + 2))
    for name in models:
        limit = {"max_frames": longest, "max_ctx_l": longest} if name == "muse" else {"max_ctx_l": longest}
        torch.manual_seed(0)
        model = create_model(name, "demo", limit).eval()
        with tempfile.TemporaryDirectory() as tmp:
            export_bundle(model, model.config, Path(tmp) / "b", model_name=name, dataset="demo",
                          text_frontend=None, fps=1.0)
            r = Retriever.from_bundle(Path(tmp) / "b", device="cpu").open()
            vs = r.video_spec
            shape = (vs.feature_dim,) if vs.patches is None else (vs.patches, vs.feature_dim)
            rng = np.random.default_rng(0)
            ms = []
            for n in lengths:
                video = rng.standard_normal((n, *shape)).astype(np.float32)
                ms.append(_median(lambda video=video, r=r: r.encode_video([video], fps=1.0), repeats) * 1e3)
        x, y = np.log(lengths), np.log(ms)
        half = len(lengths) // 2
        print(f"| {name} | " + " | ".join(f"{m:.1f}" for m in ms) + f" | {np.polyfit(x, y, 1)[0]:.2f} | "
              f"{np.polyfit(x[half:], y[half:], 1)[0]:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--encode", nargs="*", default=["amdnet", "mamfusion", "muse"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the indexes go (10^7 clips need 7.3 GiB)")
    args = parser.parse_args()
    print(f"# bench/scaling.py {' '.join(sys.argv[1:])}  {time.strftime('%F')}, {os.cpu_count()} cores, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.search:
        workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="prvr-scaling-"))
        search_rows(sorted(args.search), workdir, args.repeats)
    if args.encode:
        encode_rows(args.encode, args.lengths, args.repeats)
    print(f"#   load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
