"""Mamba video encoding: torch vs the Retriever with the native ORT scan kernel on and off, in one run.

Why: the Retriever's ONNX Runtime graphs run ``prvr::SelectiveScan`` either with the native custom op
(``prvr_sdk.backends.ort_scan``: the torch op's C kernel) or with the node's portable ``Scan`` body; this
measures both against the torch model they were exported from, on the same machine at the same time, so
the ratios are comparable. For MamFusion and MUSE (demo configs, random weights: speed does not depend on
training) it exports a bundle, encodes the same videos (30-120 frames at 1 fps) in batches of 1 and 16,
checks that every variant agrees with torch, and times them (one warm-up, median of repeats). The
kernel's call counter proves which implementation served each variant.

Ratio = torch ms / Retriever ms (> 1: the Retriever is faster). A first table times the op alone: a
one-node ``prvr::SelectiveScan`` graph in ORT (native kernel, portable body) against
``torch.ops.prvr.selective_scan`` (the same C kernel through ctypes) on MamFusion- and MUSE-sized scans.

    python bench/ort_scan.py                    # 64 videos, batches 1 and 16, 3 repeats
    python bench/ort_scan.py --videos 128 --repeats 5
    python bench/ort_scan.py --threads 1        # torch and ONNX Runtime on one thread each

``--threads 1`` exists for loaded machines: with other processes on the cores, torch's two OpenMP
threads wait on each other at every op and its times swing by 10x between runs, which says nothing about
the scan; one thread each compares the implementations' work.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import prvr_sdk.backends
from prvr_export.models.registry import create_model
from prvr_export.onnx_export.bundle import export_bundle
from prvr_sdk import Retriever
from prvr_sdk.backends import OnnxRuntimeSession, ort_scan
from prvr_sdk.inputs import pad_videos, prepare_video

MODELS = ("mamfusion", "muse")
BATCHES = (1, 16)


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turn within each repeat (after one warm-up each), so a
    change in the machine's load hits every variant alike and the ratios stay comparable."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def batch_order(raw: list[np.ndarray], batch: int) -> list[int]:
    """The Retriever's order: within each window of 8 batches, longest videos first."""
    window = batch * 8
    return [w + i for w in range(0, len(raw), window)
            for i in sorted(range(len(raw[w : w + window])), key=lambda i, w=w: -len(raw[w + i]))]


def torch_video(model, raw: list[np.ndarray], spec, batch: int) -> np.ndarray:
    """``prvr_sdk.inputs`` preparation + ``model.encode_video`` on the Retriever's batches, L2-normalised."""
    ordered = [raw[i] for i in batch_order(raw, batch)]
    out = []
    with torch.inference_mode():
        for i in range(0, len(ordered), batch):
            videos = ordered[i : i + batch]
            padded = pad_videos([prepare_video(v, spec) for v in videos])
            enc = model.encode_video(**{k: torch.from_numpy(padded[k]) for k in model.video_inputs})
            key = "clip_emb" if "clip_emb" in enc else "video_emb"
            out.append(torch.nn.functional.normalize(enc[key], dim=-1).reshape(len(videos), -1))
    return torch.cat(out).numpy()


def retriever(bundle: Path, native: bool) -> Retriever:
    """A Retriever whose sessions use the native kernel or, with PRVR_ORT_SCAN=off, the portable body."""
    saved = os.environ.get("PRVR_ORT_SCAN")
    os.environ["PRVR_ORT_SCAN"] = "on" if native else "off"
    try:
        return Retriever.from_bundle(bundle, device="cpu").open()  # sessions read the switch when they open
    finally:
        if saved is None:
            os.environ.pop("PRVR_ORT_SCAN")
        else:
            os.environ["PRVR_ORT_SCAN"] = saved


def scan_graph(softplus: int) -> bytes:
    """A one-node graph: the scan node with its portable body, as the exporter writes it."""
    from onnx import TensorProto, helper

    from prvr_export.onnx_export import scan_function as sf

    ranks = {"u": 3, "delta": 3, "A": 2, "B": 4, "C": 4, "D": 1, "delta_bias": 1}
    node = helper.make_node(sf.OP_TYPE, list(sf.INPUTS), ["y"], domain=sf.DOMAIN, delta_softplus=softplus,
                            plugin_namespace=sf.DOMAIN)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * ranks[n]) for n in sf.INPUTS]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 3)
    opsets = [helper.make_opsetid("", sf.BODY_OPSET), helper.make_opsetid(sf.DOMAIN, sf.OPSET_VERSION)]
    model = helper.make_model(helper.make_graph([node], "scan", inputs, [output]), opset_imports=opsets,
                              functions=[sf.build_selective_scan_function()], ir_version=10)
    return model.SerializeToString()


def scan_feeds(rng: np.random.Generator, batch: int, dim: int, dstate: int, length: int) -> dict:
    """Scan inputs as the Mamba layers make them: softplus(delta + bias) roughly 1e-3 .. 1, A < 0."""
    act, state = (batch, dim, length), (batch, 1, dstate, length)
    feeds = {"u": rng.standard_normal(act), "delta": rng.standard_normal(act),
             "A": -np.exp(rng.random((dim, dstate)) * 2.7), "B": rng.standard_normal(state),
             "C": rng.standard_normal(state), "D": rng.standard_normal(dim),
             "delta_bias": rng.standard_normal(dim) * 0.5 - 3.0}
    return {k: v.astype(np.float32) for k, v in feeds.items()}


def op_rows(args: argparse.Namespace) -> list[str]:
    """The scan op alone: torch's C kernel vs the same kernel in ORT vs the portable body (softplus on)."""
    import prvr_export.ops.selective_scan  # noqa: F401  (registers torch.ops.prvr.selective_scan)

    rows = [f"{'op: B x D x N x L':<24}{'torch ms':>10}{'native ms':>10}{'ratio':>8}{'body ms':>10}"
            f"{'ratio':>8}"]
    rng = np.random.default_rng(0)
    for batch, dim, dstate, length in ((1, 256, 16, 120), (16, 256, 16, 120), (16, 256, 16, 720)):
        feeds = scan_feeds(rng, batch, dim, dstate, length)
        fns: dict[str, Callable[[], object]] = {}
        for kind in ("native", "portable"):
            options = onnxruntime.SessionOptions()
            if args.threads is not None:
                options.intra_op_num_threads = args.threads
            if kind == "native":
                options.register_custom_ops_library(str(ort_scan.library_path()))
            session = onnxruntime.InferenceSession(scan_graph(1), options, providers=["CPUExecutionProvider"])
            fns[kind] = lambda s=session, f=feeds: s.run(None, f)
        t = [torch.from_numpy(feeds[k]) for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")]
        fns = {"torch": lambda t=t: torch.ops.prvr.selective_scan(*t, True), **fns}
        with torch.inference_mode():
            ms = {k: v * 1e3 for k, v in median_times(fns, max(args.repeats, 7)).items()}
        shape = f"{batch} x {dim} x {dstate} x {length}"
        rows.append(f"{shape:<24}{ms['torch']:>10.1f}{ms['native']:>10.1f}{ms['torch'] / ms['native']:>7.2f}x"
                    f"{ms['portable']:>10.1f}{ms['torch'] / ms['portable']:>7.2f}x")
    return rows


def limit_ort_threads(threads: int) -> None:
    """Make the Retriever's ONNX Runtime sessions use ``threads`` intra-op threads (it has no such option;
    bench only)."""

    class Limited(OnnxRuntimeSession):
        def __init__(self, path, device="cpu", strict=False, **_):
            super().__init__(path, device, threads=threads, strict=strict)

    prvr_sdk.backends.OnnxRuntimeSession = Limited


def model_rows(name: str, tmp: Path, args: argparse.Namespace) -> list[str]:
    torch.manual_seed(0)
    model = create_model(name, args.dataset).eval()
    export_bundle(model, model.config, tmp / name, model_name=name, dataset=args.dataset, text_frontend=None,
                  fps=1.0)
    variants = {"native": retriever(tmp / name, True), "portable": retriever(tmp / name, False)}
    vs = variants["native"].video_spec
    shape = (vs.feature_dim,) if vs.patches is None else (vs.patches, vs.feature_dim)
    rng = np.random.default_rng(0)
    lengths = rng.integers(30, 121, args.videos)  # 30 s .. 2 min at 1 fps
    raw = [rng.standard_normal((int(n), *shape)).astype(np.float32) for n in lengths]
    rows = []
    for batch in BATCHES:
        order = batch_order(raw, batch)
        ref = torch_video(model, raw, vs, batch)
        fns: dict[str, Callable[[], object]] = {"torch": lambda b=batch: torch_video(model, raw, vs, b)}
        diffs = {}
        for kind, r in variants.items():
            before = ort_scan.calls()
            fns[kind] = lambda r=r, b=batch: r.encode_video(raw, batch_size=b, fps=1.0)
            emb = fns[kind]()
            served = ort_scan.calls() > before
            assert served == (kind == "native"), f"{kind}: native kernel calls {ort_scan.calls() - before}"
            got = (emb.clip_emb if emb.clip_emb is not None else emb.video_emb).reshape(len(raw), -1)[order]
            diffs[kind] = float(np.abs(got - ref.reshape(got.shape)).max())
        t = median_times(fns, args.repeats)
        rows.append(f"{name:<10}{batch:>6}{t['torch'] * 1e3:>10.1f}" + "".join(
            f"{t[k] * 1e3:>10.1f}{t['torch'] / t[k]:>7.2f}x{diffs[k]:>9.1e}" for k in variants))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--dataset", default="demo",
                        help="the models' config: demo, or a paper config (mamfusion: tvr; muse: msrvtt)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and for each ONNX Runtime session (default: each one's own)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        limit_ort_threads(args.threads)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("prvr_sdk.backends.onnxruntime").setLevel(logging.ERROR)  # the expected fallback line
    warnings.simplefilter("ignore")
    flags = f"--videos {args.videos} --repeats {args.repeats} --dataset {args.dataset}"
    flags += f" --threads {args.threads}" if args.threads else ""
    print(f"# bench/ort_scan.py {flags}", time.strftime("%F"))
    print(f"#   python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), onnxruntime {onnxruntime.__version__} ({args.threads or 'default'} threads), "
          f"{os.cpu_count()} cores")
    print(f"#   load before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"#   native kernel: {ort_scan.library_path()}")
    print("\n".join(op_rows(args)))
    print(f"{'model':<10}{'batch':>6}{'torch ms':>10}{'native ms':>10}{'ratio':>8}{'diff':>9}"
          f"{'body ms':>10}{'ratio':>8}{'diff':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for line in model_rows(name, Path(tmp), args):
                print(line, flush=True)
    print(f"#   load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
