"""Encode throughput: `prvr encode --engine ray` with 1 and 2 workers vs the single-process encoder.

All three encode the same synthetic feature shards (.npz, random frames of random length) with the same
bundle in one run. The single-process baseline does per shard what `prvr encode` does (open the shard with
the feature readers, `Retriever.encode_video`, the .npz bytes `VideoEmbeddings.save` writes); the Ray runs
use `prvr_sdk.scale.ray_encode.encode_with_ray` on one local cluster started once (its start-up is
reported on its own; actor start-up, one encoder session each, is inside the Ray timings, and measured
alone as the "fixed cost": a Ray encode of one 1-video shard). The best of ``--repeat`` runs counts.

    python bench/ray_encode.py                      # the demo AMDNet bundle when runs/demo has one
    python bench/ray_encode.py --bundle B --shards 8 --videos 64 --repeat 2 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLES = [ROOT / "runs/demo/bundle-amdnet", ROOT / "tests/golden/mamfusion/bundle"]


def write_shards(folder: Path, spec, shards: int, videos: int, seed: int = 0, name: str = "shard"
                 ) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(shards):
        arrays = {}
        for v in range(videos):
            frames = int(rng.integers(spec.max_frames // 4, spec.max_frames + 1))
            arrays[f"s{s}v{v}"] = rng.standard_normal((frames, spec.feature_dim)).astype(np.float32)
        paths.append(folder / f"{name}{s:03d}.npz")
        np.savez(paths[-1], **arrays)
    return paths


def single_process(bundle: Path, shards: list[Path], batch_size: int) -> float:
    from prvr_sdk import Retriever
    from prvr_sdk.scale.shards import encode_shard

    t0 = time.perf_counter()
    retriever = Retriever.from_bundle(bundle, device="cpu")
    for shard in shards:
        encode_shard(retriever, shard, batch_size=batch_size)
    return time.perf_counter() - t0


def with_ray(bundle: Path, shards: list[Path], out: Path, workers: int, batch_size: int) -> float:
    from prvr_sdk.scale.ray_encode import encode_with_ray

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = encode_with_ray(bundle, shards, out, workers=workers, batch_size=batch_size, device="cpu",
                              show_progress=False)
    assert summary["encoded"] == len(shards) and summary["workers"] == workers, summary
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=next((b for b in DEFAULT_BUNDLES if b.is_dir()), None))
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--videos", type=int, default=512, help="videos per shard")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.bundle is None:
        sys.exit("no bundle: pass --bundle")

    import ray

    from prvr_sdk import Retriever
    from prvr_sdk.embeddings import VideoEmbeddings

    spec = Retriever.from_bundle(args.bundle, device="cpu").video_spec
    total = args.shards * args.videos
    with tempfile.TemporaryDirectory(prefix="prvr-bench-ray-") as tmp:
        tmp = Path(tmp)
        shards = write_shards(tmp, spec, args.shards, args.videos)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        startup = time.perf_counter() - t0
        try:
            tiny = write_shards(tmp, spec, 1, 1, name="tiny")  # fixed cost: actor start-up, one shard
            overhead = min(with_ray(args.bundle, tiny, tmp / "tiny", 1, args.batch_size) for _ in range(2))
            best: dict[str, float] = {}
            b, out, bs = args.bundle, tmp / "out", args.batch_size
            runs = {"single-process": lambda: single_process(b, shards, bs),
                    "ray, 1 worker": lambda: with_ray(b, shards, out, 1, bs),
                    "ray, 2 workers": lambda: with_ray(b, shards, out, 2, bs)}
            for _ in range(args.repeat):  # interleaved, so drifting machine load hits all three alike
                for name, run in runs.items():
                    best[name] = min(best.get(name, float("inf")), run())
            assert len(VideoEmbeddings.load(tmp / "out")) == total
        finally:
            ray.shutdown()
    base = total / best["single-process"]
    rows = [{"engine": name, "seconds": round(sec, 3), "videos_per_s": round(total / sec, 1),
             "vs_single_process": round(total / sec / base, 2)} for name, sec in best.items()]
    result = {"bundle": str(args.bundle), "videos": total, "shards": args.shards, "cpus": os.cpu_count(),
              "ray_cluster_start_s": round(startup, 2), "ray_fixed_cost_s": round(overhead, 2), "runs": rows}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{total} videos in {args.shards} shards, bundle {args.bundle.name}, {os.cpu_count()} CPUs; "
          f"local Ray cluster start-up {startup:.1f} s (not counted below); fixed cost of a Ray encode "
          f"(actor start-up, 1 video) {overhead:.1f} s")
    print(f"{'engine':<16}{'seconds':>9}{'videos/s':>10}{'vs single':>11}")
    for r in rows:
        print(f"{r['engine']:<16}{r['seconds']:>9.2f}{r['videos_per_s']:>10.1f}{r['vs_single_process']:>10.2f}x")


if __name__ == "__main__":
    main()
