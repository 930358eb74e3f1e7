"""Serving throughput: ``Retriever`` (ONNX Runtime, no torch model) vs the torch model it was exported from.

For each demo model (random weights at the demo config's size; speed does not depend on training) this
exports a bundle, then encodes the same videos (raw frame features of varied lengths, 1 fps) and the same
queries both ways, checks the embeddings agree, and times both (one warm-up, median of repeats):

* torch baseline: ``prvr_sdk.inputs`` preparation + ``model.encode_video`` / ``encode_text`` under
  ``torch.inference_mode()`` on the same batches, L2-normalised like the graphs;
* Retriever: ``encode_video`` / ``encode_text`` end to end (validation, pooling, padding, ONNX Runtime).

The text front end (MiniLM strings -> features) is timed against sentence-transformers on the same
sentences. Ratio = baseline / Retriever (> 1: the Retriever is faster). Results go to bench/RESULTS.md.

    python bench/retriever.py                 # 256 videos, 512 queries
    python bench/retriever.py --videos 64 --queries 128 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from prvr_export.models.registry import create_model
from prvr_export.onnx_export.bundle import export_bundle
from prvr_sdk import Retriever
from prvr_sdk.inputs import pad_queries, pad_videos, prepare_query, prepare_video

MODELS = ("amdnet", "mamfusion", "muse")
BATCH_VIDEOS, BATCH_QUERIES = 16, 64


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_video(model, raw: list[np.ndarray], spec) -> np.ndarray:
    """The same batches as the Retriever: within each window of 8 batches, longest videos first."""
    out = []
    window = BATCH_VIDEOS * 8
    ordered = [
        v for w in range(0, len(raw), window) for v in sorted(raw[w : w + window], key=lambda v: -len(v))
    ]
    with torch.inference_mode():
        for i in range(0, len(ordered), BATCH_VIDEOS):
            batch = pad_videos([prepare_video(v, spec) for v in ordered[i : i + BATCH_VIDEOS]])
            enc = model.encode_video(**{k: torch.from_numpy(batch[k]) for k in model.video_inputs})
            key = "clip_emb" if "clip_emb" in enc else "video_emb"
            out.append(torch.nn.functional.normalize(enc[key], dim=-1).numpy())
    return np.concatenate(out)


def torch_text(model, queries: list[np.ndarray], spec) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(queries), BATCH_QUERIES):
            batch = pad_queries([prepare_query(q, spec) for q in queries[i : i + BATCH_QUERIES]])
            args = [torch.from_numpy(batch[k]) for k in ("query", "query_mask") if k in batch]
            out.append(torch.nn.functional.normalize(model.encode_text(*args), dim=-1).numpy())
    return np.concatenate(out)


def main() -> None:
    global BATCH_VIDEOS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=256)
    parser.add_argument("--batch-videos", type=int, default=BATCH_VIDEOS,
                        help="videos per encode_video batch, on both sides (the issue's targets: 1 and 16)")
    parser.add_argument("--no-frontend", action="store_true", help="skip the MiniLM strings row")
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args()
    BATCH_VIDEOS = args.batch_videos
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    print(f"# bench/retriever.py --videos {args.videos} --queries {args.queries} --repeats {args.repeats} "
          f"--batch-videos {BATCH_VIDEOS}  (load {os.getloadavg()[0]:.2f})")
    threads = torch.get_num_threads()
    print(f"#   python {platform.python_version()}, torch {torch.__version__}, torch threads {threads}")
    rng = np.random.default_rng(0)
    header = (f"{'model':<10}{'what':<22}{'items':>6}{'torch ms':>10}{'ORT ms':>10}{'ratio':>8}"
              f"{'max diff':>10}")
    rows = [header]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.extend(model_rows(name, Path(tmp), args, rng))
        if not args.no_frontend:
            rows.append(frontend_row(Path(tmp), args.queries, args.repeats))
    print("\n".join(rows))


def row(name: str, what: str, items: int, t_torch: float, t_ort: float, diff: float) -> str:
    return (f"{name:<10}{what:<22}{items:>6}{t_torch * 1e3:>10.1f}{t_ort * 1e3:>10.1f}"
            f"{t_torch / t_ort:>7.2f}x{diff:>10.1e}")


def model_rows(name: str, tmp: Path, args: argparse.Namespace, rng: np.random.Generator) -> list[str]:
    torch.manual_seed(0)
    model = create_model(name, "demo").eval()
    export_bundle(model, model.config, tmp / name, model_name=name, dataset="demo", text_frontend=None)
    r = Retriever.from_bundle(tmp / name, device="cpu")
    vs, ts = r.video_spec, r.text_spec
    shape = (vs.feature_dim,) if vs.patches is None else (vs.patches, vs.feature_dim)
    lengths = rng.integers(30, 121, args.videos)  # 30 s .. 2 min at 1 fps
    raw = [rng.standard_normal((int(n), *shape)).astype(np.float32) for n in lengths]
    if ts.kind == "tokens":
        queries = [rng.standard_normal((int(n), ts.dim)).astype(np.float32)
                   for n in rng.integers(8, 21, args.queries)]
    else:
        queries = [rng.standard_normal(ts.dim).astype(np.float32) for _ in range(args.queries)]

    def ort_video():
        return r.encode_video(raw, batch_size=BATCH_VIDEOS, fps=1.0)

    def ort_text():
        return r.encode_text(queries, batch_size=BATCH_QUERIES)

    emb = ort_video()
    window = BATCH_VIDEOS * 8
    order = [w + i for w in range(0, len(raw), window)
             for i in sorted(range(len(raw[w : w + window])), key=lambda i, w=w: -len(raw[w + i]))]
    ref = torch_video(model, raw, vs)
    got = (emb.clip_emb if emb.clip_emb is not None else emb.video_emb).reshape(len(raw), -1)[order]
    diff_v = float(np.abs(got - ref.reshape(got.shape)).max())  # same videos, in the torch batches' order
    diff_t = float(np.abs(ort_text() - torch_text(model, queries, ts)).max())
    return [
        row(name, "encode_video", args.videos, median_time(lambda: torch_video(model, raw, vs), args.repeats),
            median_time(ort_video, args.repeats), diff_v),
        row(name, "encode_text (features)", args.queries,
            median_time(lambda: torch_text(model, queries, ts), args.repeats),
            median_time(ort_text, args.repeats), diff_t),
    ]


def frontend_row(tmp: Path, n: int, repeats: int) -> str:
    """MiniLM: sentence-transformers (torch) vs the bundled tokenizer + ONNX backbone, sentence vectors."""
    from prvr_export.data.demo import _load_minilm
    from prvr_export.data.grammar import ACTIONS, PLACES, SUBJECTS

    torch.manual_seed(0)
    model = create_model("amdnet", "demo").eval()
    export_bundle(model, model.config, tmp / "fe", model_name="amdnet", dataset="demo")
    r = Retriever.from_bundle(tmp / "fe", device="cpu")
    pick = random.Random(1).choice
    texts = [f"{pick(pick(SUBJECTS))} {pick(pick(ACTIONS))} {pick(pick(PLACES))}" for _ in range(n)]
    st = _load_minilm()
    ref = st.encode(texts, batch_size=BATCH_QUERIES, convert_to_numpy=True)
    diff = float(np.abs(r._frontend.encode(texts, batch_size=BATCH_QUERIES) - ref).max())
    t_torch = median_time(lambda: st.encode(texts, batch_size=BATCH_QUERIES), repeats)
    t_ort = median_time(lambda: r._frontend.encode(texts, batch_size=BATCH_QUERIES), repeats)
    return row("minilm", "strings -> sentence", n, t_torch, t_ort, diff)


if __name__ == "__main__":
    main()
