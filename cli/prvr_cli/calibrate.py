"""`prvr calibrate`: int8 and fp16 encoder graphs for a bundle, calibrated on real data, behind a gate.

Does its work in ``prvr_export.calibrate.calibrate_bundle`` (onnx + onnxruntime, no torch); this module
parses options and prints: a summary of held-out cosines per precision and, with ``--eval-data``, the
fp32 / int8 / fp16 table of R@1/5/10/100 and SumR. Exit 4 when a precision loses more than ``--max-drop``
R@10 points; the bundle is then unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from prvr_cli.common import err, fail
from prvr_sdk.errors import InvalidInputError, PrvrError

PRECISION_CHOICES = {"int8": ("int8",), "fp16": ("fp16",), "all": ("int8", "fp16")}


def _summary(report: dict) -> list[str]:
    lines = []
    for precision, entry in report["precisions"].items():
        parts = [f"{graph}.{out} min {s['min']:.4f} mean {s['mean']:.4f}"
                 for graph, outs in entry["cosines"].items() for out, s in outs.items()]
        verdict = "interchangeable with fp32" if entry["compatible"] else "NOT interchangeable with fp32"
        files = ", ".join(entry["files"].values())
        lines.append(f"{precision}: {files}; held-out cosine vs fp32: {'; '.join(parts)} -> {verdict} "
                     f"(min {entry['cosine_min']:.4f}, threshold {entry['threshold']})")
    return lines


def calibrate(
    bundle: Annotated[Path, typer.Argument(help="The bundle directory (prvr export).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Real per-video frame features to calibrate on: .h5/.hdf5, .npz, a "
                     "folder of <id>.npy, or a BigFile folder. Required: there is no default data."),
    ] = None,
    queries: Annotated[
        Path | None,
        typer.Option("--queries", help="Real queries: a .txt of sentences (one per line; needs the bundle's "
                     "text front end) or backbone features (.npy, .npz, .h5). Required."),
    ] = None,
    max_samples: Annotated[
        int, typer.Option("--max-samples", min=1, help="Most videos (and queries) used for calibration; the "
                          "rest (at least a quarter) is held out for the accuracy report.")
    ] = 256,
    method: Annotated[
        str, typer.Option("--method", help="int8 activation ranges: minmax, entropy or percentile.")
    ] = "minmax",
    activations: Annotated[
        str, typer.Option("--activations", help="int8 activations: int8 (symmetric, zero point 0: what "
                          "TensorRT takes) or uint8 (asymmetric: ONNX Runtime CPU's faster fused kernels).")
    ] = "int8",
    precision: Annotated[
        str, typer.Option("--precision", help="Graphs to write: int8, fp16 or all.")
    ] = "all",
    eval_data: Annotated[
        Path | None,
        typer.Option("--eval-data", help="PRVR data root (holding <dataset>/): score fp32 and every new "
                     "precision with the protocol and gate on the R@10 drop."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="With --eval-data: the split to score.")] = "test",
    max_drop: Annotated[
        float, typer.Option("--max-drop", help="With --eval-data: most R@10 points a precision may lose vs "
                            "fp32; more exits 4 and leaves the bundle unchanged.")
    ] = 1.0,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Samples per calibration batch.")
    ] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Add int8 (static QDQ quantization, calibrated on your data) and fp16 encoder graphs to a bundle.

    The selective scan and the normalisations stay float. Writes <role>.int8.onnx / <role>.fp16.onnx and
    calibration.json into the bundle, records each precision in the manifest (files, provenance, held-out
    cosines, whether its embeddings are interchangeable with fp32) and re-seals it. Use them with
    --precision on prvr search / encode / index / eval, or Retriever.from_bundle(precision=...).

    Exit codes: 0 done; 2 bad input (no --data/--queries, feature dims that do not match the bundle,
    too few samples); 4 R@10 drop above --max-drop (bundle unchanged); 5 bundle invalid.
    """
    try:
        if precision not in PRECISION_CHOICES:
            raise InvalidInputError(f"--precision {precision!r}: expected int8, fp16 or all")
        if split not in ("train", "val", "test"):
            raise InvalidInputError(f"--split {split!r}: expected train, val or test")
        from prvr_export.calibrate import calibrate_bundle

        report = calibrate_bundle(
            bundle, data, queries, max_samples=max_samples, method=method, activations=activations,
            precisions=PRECISION_CHOICES[precision], eval_data=eval_data, split=split, max_drop=max_drop,
            batch_size=batch_size,
        )
    except PrvrError as exc:
        fail(exc)
    if report.get("signature_invalidated"):
        err.print(f"warning: {bundle}/signature.json signs the previous manifest; sign the bundle again "
                  "(prvr_sdk.signing.sign_manifest(..., overwrite=True)) or loading with trusted keys fails",
                  highlight=False, markup=False)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    for line in _summary(report):
        typer.echo(line)
    if "eval" in report:
        from prvr_export.calibrate.report import table

        ev = report["eval"]
        typer.echo(f"\n{ev['data']} / {ev['split']} (max R@10 drop {ev['max_drop']:g}):")
        typer.echo(table(ev["metrics"]))
    typer.echo(f"manifest re-sealed: {report['manifest_sha256']}")
