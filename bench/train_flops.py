"""Training FLOPs per step of each paper config, and the training time per epoch they imply on one GPU.

An *estimate*, for docs/reproduce.md: nothing here runs on a GPU. For every paper config
(``mamfusion-{tvr,activitynet,charades}``, ``amdnet-{tvr,activitynet,charades}``, ``muse-msrvtt``) the
script builds the model with random weights and one training batch of the config's ``batch_size`` at the
dataset's padded lengths (table ``DATASETS`` below), and counts with
``torch.utils.flop_counter.FlopCounterMode``:

* one training step: ``model.loss(batch)`` forward plus ``loss.backward()`` (optimiser excluded);
* one validation pass: ``encode_video`` over the split's videos, ``encode_text`` over its queries (counted
  on one ``eval_video_batch`` / ``eval_query_batch`` and scaled), and ``score`` for every query x video pair.

Everything runs on torch's ``meta`` device: tensors have shapes but no data, so the count takes seconds on a
laptop whatever the batch size. Two details make the models run there: a dispatch mode answers the few
data-dependent reads (``bool(t.any())`` in the triplet loss, ``float(loss)`` for the logged parts) with 1,
which takes the branch a real batch takes (and ``nonzero`` assumes every entry is set: every video of a batch
has captions), and the selective scan (a custom op FlopCounterMode does not know)
gets a formula: forward 9·B·D·L·N (discretise, update the state, read it out: about 9 operations per state
element), backward twice that. ``--check`` repeats a small batch on the CPU with real numbers and checks that
the two counts agree (to 0.1 %: see ``CHECK_TOLERANCE``).

What FlopCounterMode counts: matrix products, convolutions and attention, as 2 x multiply-adds. Element-wise
work (LayerNorm, softmax, GELU, exp) is not counted, and on a GPU these small models are partly bound by
memory and data loading rather than arithmetic, so the times are lower bounds of what to expect.

    python bench/train_flops.py              # the table for docs/reproduce.md
    python bench/train_flops.py --json       # one JSON object per config
    python bench/train_flops.py --check      # also verify meta == CPU counts on a small batch (~1.5 min)
    python bench/train_flops.py --frames charades=200   # your own padded frame length for a collection
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

import prvr_export.ops.selective_scan as scan_op
from prvr_export.models import create_model

PAPER_CONFIGS = (
    ("mamfusion", "tvr"), ("mamfusion", "activitynet"), ("mamfusion", "charades"),
    ("amdnet", "tvr"), ("amdnet", "activitynet"), ("amdnet", "charades"),
    ("muse", "msrvtt"),
)


@dataclass(frozen=True)
class DatasetShape:
    """What one epoch of a collection holds, and the padded lengths of a training batch.

    ``frames``: the batch's padded frame-level length before ``max_ctx_l`` caps it (None = the cap itself,
    used where the feature rate is not documented: an upper bound). ``tokens``: the padded query length
    (RoBERTa tokens; 30 = ``max_desc_l``, which a batch of hundreds of captions reaches).
    """

    train_videos: int
    train_captions: int
    eval_videos: int
    eval_queries: int
    frames: int | None
    tokens: int
    source: str


DATASETS: dict[str, DatasetShape] = {
    # MS-SL dataset readme (train / test; the val caption files hold the test set, docs/models.md §1.5).
    # TVR: one feature row per 1.5 s, videos of 60-90 s, some longer: batch maxima of about 100 rows.
    "tvr": DatasetShape(17_435, 87_175, 2_179, 10_895, 100, 30, "MS-SL dataset readme"),
    "activitynet": DatasetShape(9_043, 33_721, 4_430, 15_753, None, 30, "MS-SL dataset readme"),
    # Charades-STA: 5,338 train videos as usually quoted (the MS-SL readme prints 5,538, likely a typo).
    "charades": DatasetShape(5_338, 12_408, 1_334, 3_720, None, 30, "MS-SL dataset readme, Charades-STA"),
    # MSR-VTT 9k train split (20 captions per video), 1k-A test; frames: MUSE keeps at most max_frames = 12.
    "msrvtt": DatasetShape(9_000, 180_000, 1_000, 1_000, None, 1, "MSR-VTT 9k / 1k-A (CLIP4Clip splits)"),
}

# The GPU the time column assumes: NVIDIA A100 dense peaks, at a sustained share of them.
A100_FP32 = 19.5e12
A100_TF32 = 156e12
UTILISATION = 0.40
# --check: on the CPU, nn.MultiheadAttention (MamFusion's training-only fusion) runs a fused attention kernel
# that FlopCounterMode has no formula for; on meta it decomposes into counted products. That is the only
# difference seen (MamFusion TVR, batch 2: 184,320 of 19.3 G FLOPs), hence a tolerance, not equality.
CHECK_TOLERANCE = 1e-3


# --- counting on the meta device --------------------------------------------------------------------------


def _scan_flops(u_shape, delta_shape, a_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ARG001
    batch, dim, length = u_shape
    return 9 * batch * dim * length * a_shape[1]


def _scan_backward_flops(u_shape, delta_shape, a_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ARG001
    return 2 * _scan_flops(u_shape, delta_shape, a_shape)


register_flop_formula([torch.ops.prvr.selective_scan, torch.ops.prvr.selective_scan_with_state])(_scan_flops)
register_flop_formula(torch.ops.prvr.selective_scan_backward)(_scan_backward_flops)


class _MetaScalars(TorchDispatchMode):
    """Answer ``.item()`` / ``bool()`` / ``float()`` of a meta tensor with 1 (a real batch's branch)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            dtype = args[0].dtype
            return True if dtype == torch.bool else 1.0 if dtype.is_floating_point else 1
        return func(*args, **(kwargs or {}))


@contextmanager
def _meta_scan_backward() -> Iterator[None]:
    """Route the scan's backward through its own op (which has a meta kernel and a FLOP formula) on meta
    tensors, as the CPU kernel path does, instead of re-running the Python reference."""
    original = scan_op.backend_for

    def backend_for(where: Any) -> str:
        device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
        return "cpu_kernel" if device.type == "meta" else original(where)

    scan_op.backend_for = backend_for
    previous = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True  # every video of a training batch has a caption
    try:
        yield
    finally:
        scan_op.backend_for = original
        fx_config.meta_nonzero_assume_all_nonzero = previous


def _count(fn, device: str) -> tuple[int, int]:
    """(total FLOPs, of which the selective scan) of ``fn()``."""
    counter = FlopCounterMode(display=False)
    with counter:
        if device == "meta":
            with _MetaScalars():
                fn()
        else:
            fn()
    totals = counter.get_flop_counts().get("Global", {})
    scan = sum(v for k, v in totals.items() if "prvr" in str(k))
    return int(counter.get_total_flops()), int(scan)


# --- batches ------------------------------------------------------------------------------------------------


def _frames(config: Any, shape: DatasetShape) -> int:
    if config.video_source == "patches":
        return int(config.max_frames)
    cap = int(config.max_ctx_l)
    return cap if shape.frames is None else min(shape.frames, cap)


def _reads_frames(model: torch.nn.Module) -> bool:
    return bool({"frames", "patches"} & set(model.video_inputs))


def _queries_per_video(batch: int, shape: DatasetShape) -> list[int]:
    """Captions per video of a batch: the dataset's average, spread over the videos in whole numbers."""
    total = round(batch * shape.train_captions / shape.train_videos)
    return [total // batch + (1 if i < total % batch else 0) for i in range(batch)]


def video_inputs(config: Any, shape: DatasetShape, batch: int, device: str) -> dict[str, torch.Tensor]:
    length = _frames(config, shape)
    dv = int(config.video_feat_dim)
    if config.video_source == "patches":
        tokens = 1 + int(config.patch_grid) ** 2
        return {"patches": torch.randn(batch, length, tokens, dv, device=device),
                "frame_mask": torch.ones(batch, length, device=device)}
    return {"clips": torch.randn(batch, int(config.num_clips), dv, device=device),
            "frames": torch.randn(batch, length, dv, device=device),
            "frame_mask": torch.ones(batch, length, device=device)}


def query_inputs(config: Any, shape: DatasetShape, count: int, device: str) -> dict[str, torch.Tensor]:
    dq = int(config.query_feat_dim)
    if config.query_type == "sentence":
        return {"query": torch.randn(count, dq, device=device)}
    tokens = min(shape.tokens, int(config.max_desc_l))
    return {"query": torch.randn(count, tokens, dq, device=device),
            "query_mask": torch.ones(count, tokens, device=device)}


def train_batch(config: Any, shape: DatasetShape, batch: int, device: str) -> dict[str, Any]:
    per_video = _queries_per_video(batch, shape)
    out: dict[str, Any] = video_inputs(config, shape, batch, device)
    out.update(query_inputs(config, shape, sum(per_video), device))
    out["query_video"] = torch.repeat_interleave(torch.arange(batch), torch.tensor(per_video)).to(device)
    return out


# --- one config --------------------------------------------------------------------------------


@dataclass
class Row:
    config: str
    batch: int
    queries: int
    frames: int | None  # padded frame-level length; None = the model reads clips only
    train_videos: int
    steps: int
    step_tflop: float
    forward_tflop: float
    scan_share: float
    eval_tflop: float
    epoch_pflop: float
    seconds_fp32: float
    seconds_tf32: float


def _train_step_flops(model: torch.nn.Module, batch: dict[str, Any], device: str) -> tuple[int, int, int]:
    """(forward + backward, forward only, scan part of forward + backward) FLOPs of one training step."""

    def step() -> None:
        loss, _ = model.loss(batch, 0)
        loss.backward()

    def forward() -> None:
        model.loss(batch, 0)

    total, scan = _count(step, device)
    fwd, _ = _count(forward, device)
    return total, fwd, scan


def _eval_flops(model: torch.nn.Module, config: Any, shape: DatasetShape, device: str) -> int:
    """One validation pass: encode the split's videos and queries, score every pair."""
    nv, nq = int(config.eval_video_batch), int(config.eval_query_batch)
    videos = video_inputs(config, shape, nv, device)
    queries = query_inputs(config, shape, nq, device)
    encoded: dict[str, Any] = {}
    text: dict[str, Any] = {}

    def enc_video() -> None:
        encoded.update(model.encode_video(**videos))

    def enc_text() -> None:
        text["emb"] = model.encode_text(queries["query"], queries.get("query_mask"))

    with torch.no_grad():
        video_flops, _ = _count(enc_video, device)
        text_flops, _ = _count(enc_text, device)
        score_flops, _ = _count(lambda: model.score(text["emb"], encoded), device)
    return int(video_flops * shape.eval_videos / nv + text_flops * shape.eval_queries / nq
               + score_flops * (shape.eval_videos * shape.eval_queries) / (nv * nq))


def measure(model_name: str, dataset: str, device: str = "meta", batch: int | None = None,
            shape: DatasetShape | None = None) -> Row:
    shape = shape or DATASETS[dataset]
    torch.manual_seed(0)
    with torch.device(device):
        model = create_model(model_name, dataset)
    config = model.config
    size = int(config.batch_size) if batch is None else batch
    model.train()
    with _meta_scan_backward():
        step, fwd, scan = _train_step_flops(model, train_batch(config, shape, size, device), device)
        model.eval()
        evaluation = _eval_flops(model, config, shape, device)
    steps = math.ceil(shape.train_videos / size)  # the loader keeps the last, smaller batch
    epoch = steps * step + evaluation
    return Row(
        config=f"{model_name}-{dataset}", batch=size, queries=sum(_queries_per_video(size, shape)),
        frames=_frames(config, shape) if _reads_frames(model) else None, train_videos=shape.train_videos,
        steps=steps,
        step_tflop=step / 1e12, forward_tflop=fwd / 1e12, scan_share=scan / step if step else 0.0,
        eval_tflop=evaluation / 1e12, epoch_pflop=epoch / 1e15,
        seconds_fp32=epoch / (A100_FP32 * UTILISATION), seconds_tf32=epoch / (A100_TF32 * UTILISATION),
    )


def check(model_name: str, dataset: str, batch: int = 2) -> tuple[int, int]:
    """The meta count and a real CPU count of one small training step (they must be equal)."""
    shape = DATASETS[dataset]
    counts = []
    for device in ("meta", "cpu"):
        torch.manual_seed(0)
        with torch.device(device):
            model = create_model(model_name, dataset)
        model.train()
        with _meta_scan_backward():
            inputs = train_batch(model.config, shape, batch, device)
            counts.append(_train_step_flops(model, inputs, device)[0])
    return counts[0], counts[1]


# --- output ------------------------------------------------------------------------------------


def markdown(rows: list[Row]) -> str:
    head = ("| config | batch (videos / captions) | frames | train videos | steps / epoch | TFLOP / step "
            "(fwd+bwd) | fwd+bwd / fwd | scan share | validation TFLOP | PFLOP / epoch | s / epoch, fp32 "
            "| s / epoch, TF32 |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| `{r.config}` | {r.batch} / {r.queries} | {'-' if r.frames is None else r.frames} | "
            f"{r.train_videos:,} | {r.steps} | "
            f"{r.step_tflop:.3f} | {r.step_tflop / r.forward_tflop:.2f} | {100 * r.scan_share:.1f} % | "
            f"{r.eval_tflop:.2f} | {r.epoch_pflop:.4f} | {r.seconds_fp32:.1f} | {r.seconds_tf32:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", help="only these <model>-<dataset> (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per config")
    parser.add_argument("--check", action="store_true", help="verify meta == CPU counts on a small batch")
    parser.add_argument("--frames", action="append", default=[], metavar="DATASET=N",
                        help="padded frame-level length of a batch of DATASET (before max_ctx_l caps it), "
                             "e.g. charades=200 when you know your features' rate (repeatable)")
    args = parser.parse_args(argv)
    shapes = dict(DATASETS)
    for item in args.frames:
        name, _, value = item.partition("=")
        if name not in shapes or not value.isdigit() or int(value) < 1:
            parser.error(f"--frames {item!r}: expected DATASET=N with DATASET one of {', '.join(shapes)}")
        shapes[name] = replace(shapes[name], frames=int(value))
    wanted = [c for c in PAPER_CONFIGS if not args.config or f"{c[0]}-{c[1]}" in args.config]
    if not wanted:
        parser.error(f"--config: choose among {', '.join(f'{m}-{d}' for m, d in PAPER_CONFIGS)}")
    if args.check:
        for model_name, dataset in wanted:
            meta, cpu = check(model_name, dataset)
            gap = abs(meta - cpu) / max(cpu, 1)
            status = "ok" if gap <= CHECK_TOLERANCE else "MISMATCH"
            print(f"check {model_name}-{dataset} batch 2: meta {meta:,} cpu {cpu:,} FLOPs "
                  f"(difference {100 * gap:.4f} %): {status}", file=sys.stderr)
            if status != "ok":
                return 1
    rows = [measure(m, d, shape=shapes[d]) for m, d in wanted]
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
        return 0
    print(f"torch {torch.__version__}, Python {platform.python_version()}; counts on the meta device; "
          f"time = FLOPs / ({UTILISATION:.0%} of A100 {A100_FP32 / 1e12:g} TFLOP/s fp32 or "
          f"{A100_TF32 / 1e12:g} TFLOP/s TF32)")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
