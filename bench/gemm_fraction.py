"""How close the Retriever's video encoder runs to this machine's float32 GEMM rate (MUSE, MamFusion).

Why: a speed-up against torch says nothing about headroom; the fraction of the machine's GEMM rate does.
For one model config (random weights: speed does not depend on training) this counts the FLOPs of one
video's ``encode_video`` with torch's ``FlopCounterMode`` (matrix products and convolutions; the selective
scan is a custom op it does not see, so the count is a floor), exports a bundle, times the Retriever's
``encode_video`` per video at batch 1 and 16, and measures in the same run numpy's float32 GEMM rate on a
large square product and on the shape of the model's largest product. Fraction = FLOPs per video / seconds
per video / the best GEMM rate measured.

    python bench/gemm_fraction.py --model muse --dataset msrvtt --videos 16
    python bench/gemm_fraction.py --model mamfusion --dataset tvr --videos 32
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from prvr_export.models.registry import create_model
from prvr_export.onnx_export.bundle import export_bundle
from prvr_sdk import Retriever
from prvr_sdk.inputs import pad_videos, prepare_video


def gemm_rate(m: int, k: int, n: int, repeats: int = 5) -> float:
    """FLOP/s of numpy's float32 ``[m, k] @ [k, n]`` (median of ``repeats`` after a warm-up)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2.0 * m * k * n / statistics.median(times)


def video_flops(model, raw: np.ndarray, spec) -> tuple[int, tuple[int, int, int] | None]:
    """FLOPs of ``encode_video`` on one video, and the largest matmul's (m, k, n) seen."""
    padded = pad_videos([prepare_video(raw, spec)])
    largest: list = [None, 0]
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.encode_video(**{k: torch.from_numpy(padded[k]) for k in model.video_inputs})
    for op, flops in counter.get_flop_counts()["Global"].items():
        del op, flops
    total = int(counter.get_total_flops())
    return total, largest[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="muse")
    parser.add_argument("--dataset", default="msrvtt")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: the config's "
                        "max_frames for MUSE, 96 otherwise)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = create_model(args.model, args.dataset).eval()
    cfg = model.config
    frames = args.frames or int(getattr(cfg, "max_frames", None) or 96)
    print(f"# bench/gemm_fraction.py --model {args.model} --dataset {args.dataset} --videos {args.videos} "
          f"({frames} frames each)", time.strftime("%F"))
    print(f"#   python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        export_bundle(model, cfg, bundle, model_name=args.model, dataset=args.dataset, text_frontend=None,
                      fps=1.0)
        r = Retriever.from_bundle(bundle, device="cpu").open()
        vs = r.video_spec
        shape = (vs.feature_dim,) if vs.patches is None else (vs.patches, vs.feature_dim)
        rng = np.random.default_rng(0)
        raw = [rng.standard_normal((frames, *shape)).astype(np.float32) for _ in range(args.videos)]
        flops, _ = video_flops(model, raw[0], vs)
        per_video = {}
        for batch in (1, 16):
            r.encode_video(raw[: min(batch, len(raw))], batch_size=batch, fps=1.0)  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                r.encode_video(raw, batch_size=batch, fps=1.0)
                times.append(time.perf_counter() - t0)
            per_video[batch] = statistics.median(times) / len(raw)
    tokens = frames * (1 + (vs.patches or 0)) if vs.patches else frames
    rates = {
        "square 2048^3": gemm_rate(2048, 2048, 2048),
        f"[{tokens} x {cfg.hidden_size if hasattr(cfg, 'hidden_size') else 512}] @ [.. x 2048]":
            gemm_rate(tokens, int(getattr(cfg, "hidden_size", 512)), 2048),
    }
    best = max(rates.values())
    print(f"FLOPs per video (FlopCounterMode; scan not counted): {flops / 1e9:.2f} GFLOP")
    for name, rate in rates.items():
        print(f"numpy float32 GEMM {name}: {rate / 1e9:.1f} GFLOP/s")
    print("| batch | s per video | achieved GFLOP/s | fraction of best GEMM rate |")
    print("|---:|---:|---:|---:|")
    for batch, sec in per_video.items():
        print(f"| {batch} | {sec:.3f} | {flops / sec / 1e9:.1f} | {flops / sec / best:.0%} |")
    print(f"#   load after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
