"""Video-encoder latency and throughput on a GPU: torch eager vs ONNX Runtime CUDA vs TensorRT fp32/fp16.

For each demo model (random weights at the demo config's size; speed does not depend on training) this
exports a bundle, builds TensorRT engines for it (``prvr_plugins.build.build_engines``, fp32 and fp16),
and times one encoder call per batch size on the same padded batch of full-length videos (median of
repeats after warm-ups, device synchronised), after checking each candidate's embeddings against torch.

    python bench/gpu.py                          # batches 1, 16, 64
    python bench/gpu.py --models mamfusion --batches 1 8 --repeats 50

Rows: model, batch, backend, median ms per call, videos per second, max relative difference to torch.
Backends that cannot run here (torch without CUDA, onnxruntime without its CUDA provider, fp16 without
onnxconverter-common) are reported as skipped with the reason. The table is appended to bench/RESULTS.md
(``--no-record`` to only print). Without an NVIDIA GPU and TensorRT it stops at once, saying what is missing.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

MODELS = ("amdnet", "mamfusion", "muse")
RESULTS = Path(__file__).with_name("RESULTS.md")


def require_gpu() -> str:
    """The GPU's name, or exit 3 with one line naming what is missing (as ``prvr build-engine`` does)."""
    from prvr_sdk.backends.tensorrt import device_compute_capability, device_name, tensorrt_available

    cc = device_compute_capability(0)
    missing = []
    if cc is None:
        missing.append("an NVIDIA GPU (libcudart finds no CUDA device)")
    if not tensorrt_available():
        missing.append('TensorRT (pip install "prvr-sdk[gpu]")')
    if missing:
        sys.stderr.write(f"bench/gpu.py needs {' and '.join(missing)}; nothing was measured\n")
        raise SystemExit(3)
    return f"{device_name(0)} (sm_{cc[0]}{cc[1]})"


def median_ms(fn: Callable[[], object], sync: Callable[[], None], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def batch_for(retriever, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One padded encoder batch of full-length videos (the common case after sampling to max frames)."""
    from prvr_sdk.inputs import pad_videos, prepare_video

    spec = retriever.video_spec
    shape = (spec.feature_dim,) if spec.patches is None else (spec.patches, spec.feature_dim)
    frames = retriever.manifest["video_input"]["max_frames"]
    raw = [rng.standard_normal((frames, *shape)).astype(np.float32) for _ in range(batch)]
    return pad_videos([prepare_video(v, spec) for v in raw])


def model_rows(name: str, tmp: Path, batches: list[int], repeats: int) -> list[tuple]:
    import torch

    from prvr_export.models.registry import create_model
    from prvr_export.onnx_export.bundle import export_bundle
    from prvr_plugins.build import build_engines
    from prvr_sdk import Retriever
    from prvr_sdk.backends import Choice, open_session
    from prvr_sdk.backends.base import Session
    from prvr_sdk.errors import PrvrError

    torch.manual_seed(0)
    model = create_model(name, "demo").eval()
    bundle = tmp / name
    export_bundle(model, model.config, bundle, model_name=name, dataset="demo", text_frontend=None)
    ort_cpu = Retriever.from_bundle(bundle, backend="onnxruntime", device="cpu")
    outputs = ort_cpu.video_outputs
    candidates: dict[str, Session | str] = {}
    try:
        cuda_choice = Choice("onnxruntime", "cuda:0", "")
        candidates["ORT CUDA"] = open_session(bundle / "video_encoder.onnx", cuda_choice, strict=True)
    except PrvrError as exc:
        candidates["ORT CUDA"] = f"skipped: {exc}"
    for precision in ("fp32", "fp16"):
        try:
            copy = tmp / f"{name}-{precision}"
            shutil.copytree(bundle, copy)
            build_engines(copy, precision=precision, max_shapes=None)
            r = Retriever.from_bundle(copy, backend="tensorrt", device="cuda", precision=precision)
            candidates[f"TensorRT {precision}"] = r._video
        except PrvrError as exc:
            candidates[f"TensorRT {precision}"] = f"skipped: {exc}"
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = model.to(device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        feeds = batch_for(ort_cpu, batch, rng)
        tensors = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
        with torch.inference_mode():
            ref = {k: torch.nn.functional.normalize(v, dim=-1).cpu().numpy()
                   for k, v in model.encode_video(**{k: tensors[k] for k in model.video_inputs}).items()
                   if k in outputs}
        if cuda:
            args = {k: tensors[k] for k in model.video_inputs}
            with torch.inference_mode():
                ms = median_ms(lambda a=args: model.encode_video(**a), sync, repeats)
            rows.append((name, batch, "torch eager (CUDA)", ms, batch / ms * 1e3, 0.0))
        else:
            rows.append((name, batch, "torch eager", "skipped: torch has no CUDA (CPU build)"))
        for label, session in candidates.items():
            if isinstance(session, str):
                rows.append((name, batch, label, session))
                continue
            inputs = {k: feeds[k] for k in session.input_names}
            got = session.run(inputs, list(outputs))
            diff = max(relative(got[k], ref[k]) for k in outputs if k in ref)
            ms = median_ms(lambda s=session, i=inputs: s.run(i, list(outputs)), lambda: None, repeats)
            rows.append((name, batch, label, ms, batch / ms * 1e3, diff))
    return rows


def render(rows: list[tuple]) -> list[str]:
    lines = ["| model | batch | backend | ms / call | videos / s | max rel diff vs torch |",
             "|---|---:|---|---:|---:|---:|"]
    for row in rows:
        if len(row) == 4:
            lines.append(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]} | | |")
        else:
            name, batch, label, ms, rate, diff = row
            lines.append(f"| {name} | {batch} | {label} | {ms:.2f} | {rate:.0f} | {diff:.1e} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    gpu = require_gpu()
    import tensorrt
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.extend(model_rows(name, Path(tmp), args.batches, args.repeats))
    stamp = datetime.date.today().isoformat()
    command = " ".join(["python bench/gpu.py", *sys.argv[1:]])
    header = [
        "", f"## Video encoders on a GPU: torch eager vs ONNX Runtime CUDA vs TensorRT ({stamp})", "",
        f"Machine: {gpu}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"TensorRT {tensorrt.__version__}. Command: `{command}`. Median of {args.repeats} calls after 3 "
        "warm-ups, one padded batch of full-length videos, random weights at the demo config's size.", "",
    ]
    text = "\n".join(header + render(rows)) + "\n"
    print(text)
    if not args.no_record:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
