"""Selective scan: the op ``prvr::selective_scan`` against the naive sequential reference.

Measures forward and forward+backward time of ``selective_scan_fn`` (whatever backend serves the
device; on CPU the C kernel) and of ``selective_scan_ref`` on the same seeded Mamba-like inputs, in
the same run. It checks agreement first (max relative error of y and of every gradient), then times
(warm-up, repeats, median) and prints a fixed-width table with the speed ratio. Results go to
bench/RESULTS.md by hand, with the machine and the command.

    python bench/scan.py                 # preset M: the issue's two shapes
    python bench/scan.py --size S        # quick (used by `make demo`)
    python bench/scan.py --markdown      # table ready to paste into RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from prvr_export.ops.reference import selective_scan_ref
from prvr_export.ops.selective_scan import available_backends, selective_scan_fn

# (batch, dim, d_state, length, label)
PRESETS: dict[str, list[tuple[int, int, int, int, str]]] = {
    "S": [(2, 64, 16, 128, "tiny")],
    "M": [(8, 768, 16, 512, "Mamba(384) block, batch 8"), (1, 512, 16, 3060, "MUSE sequence (T=12)")],
    "L": [(8, 768, 16, 512, "Mamba(384) block, batch 8"), (1, 512, 16, 3060, "MUSE sequence (T=12)"),
          (32, 768, 16, 512, "Mamba(384) block, batch 32")],
}


@dataclass
class Row:
    shape: str
    label: str
    mode: str  # "fwd" or "fwd+bwd"
    ref_ms: float
    op_ms: float
    ratio: float
    max_rel_err: float


def make_inputs(batch: int, dim: int, dstate: int, length: int, seed: int = 0):
    """Mamba-like inputs: S4D-real-range A, step sizes from mamba's dt init range after softplus."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5
    A = -torch.exp(torch.rand(dim, dstate, generator=g) * math.log(16))  # A = -exp(U(log 1, log 16))
    B = torch.randn(batch, dstate, length, generator=g)
    C = torch.randn(batch, dstate, length, generator=g)
    D = torch.randn(dim, generator=g)
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    delta_bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus, as mamba's dt_proj bias
    z = torch.randn(batch, dim, length, generator=g)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True)


def _time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _fwd_bwd(scan, inputs, upstream):
    leaves = {k: (v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v)
              for k, v in inputs.items()}
    y = scan(**leaves)
    y.backward(upstream)
    return y, [leaves[k].grad for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]


def bench_shape(batch, dim, dstate, length, label, repeats, ref_repeats):
    inputs = make_inputs(batch, dim, dstate, length)
    upstream = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(1))
    shape = f"B={batch} D={dim} N={dstate} L={length}"
    with torch.no_grad():
        y_op = selective_scan_fn(**inputs)
        y_ref = selective_scan_ref(**inputs)
    fwd_err = _rel_err(y_op, y_ref)
    y_op, g_op = _fwd_bwd(selective_scan_fn, inputs, upstream)
    y_ref, g_ref = _fwd_bwd(selective_scan_ref, inputs, upstream)
    bwd_err = max(_rel_err(a, b) for a, b in zip(g_op, g_ref, strict=True))

    def fwd(scan):
        with torch.no_grad():
            scan(**inputs)

    rows = []
    ref_ms = _time(lambda: fwd(selective_scan_ref), ref_repeats)
    op_ms = _time(lambda: fwd(selective_scan_fn), repeats)
    rows.append(Row(shape, label, "fwd", ref_ms, op_ms, ref_ms / op_ms, fwd_err))
    ref_ms = _time(lambda: _fwd_bwd(selective_scan_ref, inputs, upstream), ref_repeats)
    op_ms = _time(lambda: _fwd_bwd(selective_scan_fn, inputs, upstream), repeats)
    rows.append(Row(shape, label, "fwd+bwd", ref_ms, op_ms, ref_ms / op_ms, max(fwd_err, bwd_err)))
    return rows


def environment() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "cpu": platform.processor() or platform.machine(),
        "backends": json.dumps(available_backends()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(PRESETS), default="M", help="shape preset")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of the op (median kept)")
    parser.add_argument("--ref-repeats", type=int, default=3, help="timed runs of the reference")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment()
    print(f"# bench/scan.py {' '.join(sys.argv[1:])}", file=sys.stderr)
    for key, value in env.items():
        print(f"#   {key}: {value}", file=sys.stderr)
    rows = []
    for spec in PRESETS[args.size]:
        rows += bench_shape(*spec, repeats=args.repeats, ref_repeats=args.ref_repeats)
    if args.json:
        print(json.dumps({"environment": env, "rows": [asdict(r) for r in rows]}, indent=2))
    elif args.markdown:
        print("| shape | what | pass | reference ms | op ms | ratio | max rel err |")
        print("|---|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r.shape} | {r.label} | {r.mode} | {r.ref_ms:.1f} | {r.op_ms:.1f} | "
                  f"{r.ratio:.1f}x | {r.max_rel_err:.1e} |")
    else:
        print(f"{'shape':<28}{'pass':<9}{'ref ms':>10}{'op ms':>10}{'ratio':>9}{'max rel err':>13}")
        for r in rows:
            print(f"{r.shape:<28}{r.mode:<9}{r.ref_ms:>10.1f}{r.op_ms:>10.1f}{r.ratio:>8.1f}x"
                  f"{r.max_rel_err:>13.1e}")
    worst = max(r.max_rel_err for r in rows)
    if worst > 1e-4:
        print(f"error: op and reference disagree (max relative error {worst:.1e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
