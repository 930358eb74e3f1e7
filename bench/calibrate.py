"""Reduced precision on the demo models: int8 / fp16 video-encoder throughput vs fp32 on ONNX Runtime CPU,
embedding cosine and R@10 drop, and where the time goes.

For each demo bundle (``make demo``: runs/demo/bundle-{amdnet,mamfusion}, runs/demo/data) this copies the
bundle into a temporary folder, runs ``prvr_export.calibrate.calibrate_bundle`` on the demo features
(videos: the hdf5 frame features; queries: the MiniLM query features the model reads) with the demo test
split as ``--eval-data`` -- once with int8 activations (symmetric; + fp16) and once with uint8 activations
(ORT CPU's fused path) -- then times the fp32, int8, int8-u8 and fp16 video encoders on the same held-out
batch of 32 videos, interleaved round by round; the speedup is the median over rounds of the in-round
ratio (``timed``). ``--profile`` adds ORT's per-op profile (``SessionOptions.
enable_profiling``) of the fp32 and int8 graphs: time per op type, and the share of the selective scan's
function body (ORT inlines the ``prvr::SelectiveScan`` function; its nodes get generated names
``<Op>_<n>``, the exporter's own nodes are ``node_*``).

    python bench/calibrate.py --profile               # both models, 30 timed rounds, 1 and all threads
    python bench/calibrate.py --models mamfusion --threads 1 --repeats 10
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from prvr_export.calibrate import calibrate_bundle
from prvr_export.calibrate.data import batches, read_videos
from prvr_sdk.bundle import read_manifest
from prvr_sdk.inputs import VideoSpec

DEMO = Path("runs/demo")
QUERY_FEATURES = {"sentence": "minilm_sent_demo_query_feat.hdf5", "tokens": "minilm_demo_query_feat.hdf5"}
BATCH = 32
_INLINED = re.compile(r"^[A-Za-z]+_\d+$")  # ORT's names for nodes of an inlined local function


def session(path: Path, threads: int, profile: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed(sessions: dict[str, ort.InferenceSession], feeds: dict, repeats: int) -> dict[str, dict]:
    """Per variant: median ms per call, and the median over rounds of (fp32 time / its time) within the
    round -- the sessions run one call each per round, so a load spike on this shared VM hits a round's
    calls alike and cancels in the ratio."""
    for s in sessions.values():
        s.run(None, feeds)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    base = np.array(times["fp32"])
    return {k: {"ms": 1e3 * statistics.median(v), "speedup": float(np.median(base / np.array(v)))}
            for k, v in times.items()}


def profile(path: Path, feeds: dict, threads: int, workdir: Path) -> dict[str, float]:
    """Share of kernel time per op type (``scan body`` = nodes of the inlined SelectiveScan function)."""
    s = session(path, threads, str(workdir / path.stem))
    for _ in range(3):
        s.run(None, feeds)
    events = json.loads(Path(s.end_profiling()).read_text())
    shares: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        key = "scan body (" + e["args"]["op_name"] + ")" if _INLINED.match(node) else e["args"]["op_name"]
        shares[key] += e["dur"]
    total = sum(shares.values())
    return {k: 100.0 * v / total for k, v in shares.most_common()}


def bench_model(name: str, args, workdir: Path) -> dict:
    src = DEMO / f"bundle-{name}"
    manifest = read_manifest(src)
    features = DEMO / "data/demo/FeatureData/demo_frames_vid_features.hdf5"
    queries = DEMO / "data/demo/TextData" / QUERY_FEATURES[manifest["text_input"]["kind"]]
    reports, seconds = {}, {}
    for variant, activations, precisions in (("s8", "int8", ("int8", "fp16")), ("u8", "uint8", ("int8",))):
        bundle = workdir / f"bundle-{name}-{variant}"
        shutil.copytree(src, bundle)
        start = time.perf_counter()
        reports[variant] = calibrate_bundle(
            bundle, features, queries, max_samples=args.max_samples, method=args.method,
            activations=activations, precisions=precisions, eval_data=DEMO / "data", split="test",
            max_drop=100.0, show_progress=False)
        seconds[variant] = time.perf_counter() - start
    held = read_videos(features, VideoSpec.from_manifest(manifest), args.max_samples).held_out
    feeds = batches(held[:BATCH], "videos", list(manifest["serving"]["video"]["inputs"]), BATCH)[0]
    a, b = workdir / f"bundle-{name}-s8", workdir / f"bundle-{name}-u8"
    files = {"fp32": a / "video_encoder.onnx", "int8": a / "video_encoder.int8.onnx",
             "int8-u8": b / "video_encoder.int8.onnx", "fp16": a / "video_encoder.fp16.onnx"}
    timing = {t: timed({k: session(p, t) for k, p in files.items()}, feeds, args.repeats)
              for t in args.threads}
    accuracy = {}
    variants = (("s8", "int8", "int8"), ("u8", "int8", "int8-u8"), ("s8", "fp16", "fp16"))
    for variant, precision, label in variants:
        r = reports[variant]
        entry, metrics = r["precisions"][precision], r["eval"]["metrics"]
        video = entry["cosines"]["video_encoder"].values()
        accuracy[label] = {"cosine_min": entry["cosine_min"],
                           "video_cosine_min": min(x["min"] for x in video),
                           "compatible": entry["compatible"], "r10_drop": r["eval"]["r10_drop"][precision],
                           "metrics": metrics[precision]}
    accuracy["fp32"] = {"metrics": reports["s8"]["eval"]["metrics"]["fp32"]}
    out = {"model": name, "seconds": seconds, "timing": timing, "accuracy": accuracy,
           "feeds": {k: list(v.shape) for k, v in feeds.items()}}
    if args.profile:
        out["profile"] = {p: profile(files[p], feeds, args.threads[0], workdir) for p in ("fp32", "int8-u8")}
    return out


def report(r: dict) -> None:
    print(f"\n## {r['model']}: video encoder, inputs {r['feeds']}")
    spent = ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items())
    print(f"calibration + fp32/reduced evaluation: {spent}")
    for threads, t in r["timing"].items():
        print(f"{threads} thread(s): " + " | ".join(
            f"{k} {v['ms']:.2f} ms ({v['speedup']:.2f}x)" for k, v in t.items()))
    keys = ("R@1", "R@5", "R@10", "R@100", "SumR")
    print("variant   " + "  ".join(f"{k:>6}" for k in keys) + "  R@10 drop  cosine min (video)  compatible")
    for label, a in r["accuracy"].items():
        row = "  ".join(f"{a['metrics'][k]:6.1f}" for k in keys)
        extra = "" if label == "fp32" else (f"  {a['r10_drop']:+9.2f}  {a['cosine_min']:.4f} "
                                            f"({a['video_cosine_min']:.4f})  {a['compatible']}")
        print(f"{label:<9} {row}{extra}")
    for p, shares in r.get("profile", {}).items():
        top = ", ".join(f"{k} {v:.1f}%" for k, v in list(shares.items())[:8])
        scan = sum(v for k, v in shares.items() if k.startswith("scan body"))
        print(f"profile {p}: scan body {scan:.1f}% of kernel time; top: {top}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["amdnet", "mamfusion"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--max-samples", type=int, default=256)
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    for name in args.models:
        if not (DEMO / f"bundle-{name}").is_dir():
            raise SystemExit(f"{DEMO}/bundle-{name} not found: run `make demo` first")
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"ORT threads {args.threads}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            report(bench_model(name, args, Path(tmp)))


if __name__ == "__main__":
    main()
