"""`prvr search` from a cold Python process: this checkout against a baseline checkout, alternated in one run.

Why: a user typing one query pays for interpreter start-up, imports, opening the bundle's graphs and the
tokenizer on every call. This runs the same search N times in fresh processes for each variant, alternating
them so that load changes hit both alike, and reports the medians and their ratio. The baseline is another
checkout of prvr-sdk (e.g. a ``git worktree`` of an older commit) put first on ``PYTHONPATH`` with its own
dependencies (``--baseline-path`` entries, e.g. another typer from ``pip install --target``), and its own
bundle when the bundle format changed. Bytecode should be compiled first (``python -m compileall``);
otherwise both variants pay for compiling every module on each run.

    python bench/cold_start.py --index runs/demo/index-amdnet --runs 10 \\
        --baseline-path /tmp/typer29 /tmp/old/sdk /tmp/old/cli --baseline-bundle /tmp/bundle-old
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

LAUNCH = "import sys; from prvr_cli.app import main; sys.argv = ['prvr', *sys.argv[1:]]; main()"


def one_run(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCH, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--query", default="a man paints")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--baseline-path", nargs="*", default=None)
    parser.add_argument("--baseline-bundle", default=None)
    args = parser.parse_args()
    search = ["search", args.query, "--index", args.index, "--top-k", "3"]
    own = ["--bundle", args.bundle] if args.bundle else []
    variants = {"this checkout": (search + own, dict(os.environ))}
    if args.baseline_path:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(args.baseline_path))
        bundle = ["--bundle", args.baseline_bundle] if args.baseline_bundle else []
        variants["baseline"] = (search + bundle, env)
    for cmd, env in variants.values():
        one_run(cmd, env)  # warm-up: page cache, verification stamps
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.runs):
        for name, (cmd, env) in variants.items():
            times[name].append(one_run(cmd, env))
    print(f"# bench/cold_start.py, {args.runs} runs each, alternated; load {os.getloadavg()[0]:.2f}")
    print("| variant | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f} | {max(ts):.3f} |")
    if "baseline" in times:
        ratio = statistics.median(times["baseline"]) / statistics.median(times["this checkout"])
        print(f"\nbaseline / this checkout: {ratio:.2f}x")


if __name__ == "__main__":
    main()
