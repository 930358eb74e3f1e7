"""``calibrate_bundle``: add int8 / fp16 encoder graphs to a sealed bundle, all or nothing.

Order of work (why): the data is read and checked against the bundle first (a wrong file fails in
seconds, before any graph work); everything is then built in a staging copy of the bundle beside it
(files hard-linked, never written through: every write is a new file or an atomic replace), measured
there (held-out cosines; with ``eval_data`` the PRVR protocol through the staged bundle at every
precision), and only if the R@10 gate passes does the staging copy replace the bundle
(``prvr_sdk.fsutil.swap_directory``). On any failure -- the gate included -- the bundle is left byte for
byte as it was.

Manifest changes: one ``files`` entry per new graph (``role``, ``format: "onnx"``, ``precision``), the report
``calibration.json`` (role ``calibration_report``), and ``precisions[p]`` = ``{compatible, cosine_min,
threshold, files, method, calibration, cosines, eval}``; re-sealed with ``prvr_sdk.bundle.write_manifest``.
A bundle exported before ``embedding_space`` existed gets it set to its current manifest digest -- the id
its indexes already carry -- so re-sealing does not orphan them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prvr_sdk import bundle as bundle_io
from prvr_sdk.errors import InvalidInputError, ParityError
from prvr_sdk.fsutil import atomic_write, swap_directory
from prvr_sdk.inputs import VideoSpec
from prvr_sdk.progress import progress
from prvr_sdk.serving import ServingSpec

from . import data as cdata
from .fp16 import convert_fp16
from .quantize import ACTIVATIONS, METHODS, quantize_int8
from .report import METRIC_KEYS, compatibility, cosine_summary, run_graph, table

__all__ = ["PRECISIONS", "REPORT", "ROLES", "calibrate_bundle", "graph_name"]

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16")
ROLES = ("video_encoder", "text_encoder")
REPORT = "calibration.json"
DEFAULT_BATCH = 16


def graph_name(role: str, precision: str) -> str:
    """``video_encoder.int8.onnx``: the file name of a reduced-precision graph."""
    return f"{role}.{precision}.onnx"


def _embedding_outputs(graph) -> list[str]:
    """The ``*_emb`` outputs (unit vectors scored by cosine); others, e.g. AMDNet's ``moment_anchor``
    spans, are compared by nothing here."""
    return [name for name in graph.outputs if name.endswith("_emb")]


def _fp32_graph(bundle: bundle_io.Bundle, role: str) -> str:
    for name, entry in bundle.files.items():
        if entry.get("role") == role and entry.get("format", "onnx") == "onnx" and \
                entry.get("precision", "fp32") == "fp32":
            return name
    raise InvalidInputError(f"bundle {bundle.path} has no fp32 ONNX {role} to calibrate")


def _stage(bundle: Path) -> Path:
    """A copy of ``bundle`` beside it, files hard-linked (copied where links fail)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.calibrate-", dir=bundle.parent))
    for root, dirs, files in os.walk(bundle):
        rel = Path(root).relative_to(bundle)
        for d in dirs:
            (staging / rel / d).mkdir(exist_ok=True)
        for f in files:
            src, dst = Path(root) / f, staging / rel / f
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    return staging


def _evaluate(staging: Path, eval_data: Path, split: str, precisions: Sequence[str]) -> dict[str, dict]:
    from prvr_sdk.evaluation import evaluate_bundle

    results = {}
    for precision in ("fp32", *precisions):
        result = evaluate_bundle(staging, eval_data, split, backend="onnxruntime", device="cpu",
                                 precision=precision)
        results[precision] = {k: float(result[k]) for k in METRIC_KEYS if k in result}
        results[precision]["queries"] = int(result["queries"])
        results[precision]["videos"] = int(result["videos"])
    return results


def calibrate_bundle(
    bundle: str | os.PathLike,
    data: str | os.PathLike | None,
    queries: str | os.PathLike | None,
    *,
    max_samples: int = 256,
    method: str = "minmax",
    activations: str = "int8",
    precisions: Sequence[str] = PRECISIONS,
    eval_data: str | os.PathLike | None = None,
    split: str = "test",
    max_drop: float = 1.0,
    batch_size: int = DEFAULT_BATCH,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Calibrate and convert a bundle's encoders; returns the report also written to ``calibration.json``.

    Args:
        bundle: a sealed bundle with fp32 ONNX encoders.
        data: per-video frame features (``prvr_sdk.sources.open_features``: .h5/.npz/npy folder/BigFile).
        queries: sentences (``.txt``, one per line; needs the bundle's text front end) or query backbone
            features (``.npy``/``.npz``/``.h5``).
        max_samples: most videos (and most queries) used for calibration; the rest, at least a quarter,
            is held out for the accuracy report.
        method: int8 activation-range method, ``minmax``, ``entropy`` or ``percentile``.
        activations: int8 activation type: ``int8`` (symmetric, for TensorRT) or ``uint8`` (asymmetric,
            ONNX Runtime CPU's fused integer kernels); see ``quantize``.
        precisions: any of ``int8``, ``fp16``.
        eval_data / split: a PRVR data root (``prvr_sdk.data`` layout) to run the protocol on at every
            precision; enables the R@10 gate.
        max_drop: most R@10 points a reduced precision may lose against fp32 (with ``eval_data``).

    Raises:
        InvalidInputError: no data or queries given, unknown method/precision, too few samples.
        ShapeMismatchError: features whose dims do not match the bundle.
        ParityError: the R@10 drop exceeds ``max_drop``; the bundle is unchanged.
        BundleError / ChecksumError: the bundle does not load.
    """
    bundle = Path(bundle)
    precisions = tuple(dict.fromkeys(precisions))
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise InvalidInputError(f"--precision: expected int8, fp16 or all, got {list(precisions)}")
    if method not in METHODS:
        raise InvalidInputError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if activations not in ACTIVATIONS:
        raise InvalidInputError(f"--activations {activations!r}: expected one of {', '.join(ACTIVATIONS)}")
    if data is None:
        raise InvalidInputError("--data: calibration needs real video features (.h5/.npz/<id>.npy folder/"
                                "BigFile); there is no default or random calibration set")
    if queries is None:
        raise InvalidInputError("--queries: calibration needs real queries (a .txt of sentences, or query "
                                "features .npy/.npz/.h5) for the text encoder; there is no default set")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise InvalidInputError(f"--max-samples: expected a positive integer, got {max_samples!r}")
    if eval_data is not None and not Path(eval_data).is_dir():
        raise InvalidInputError(f"--eval-data {eval_data}: folder not found")
    loaded = bundle_io.load(bundle)
    before = loaded.manifest["manifest_sha256"]
    spec = ServingSpec.from_manifest(loaded.manifest, where=f"bundle {bundle}")
    fp32 = {role: _fp32_graph(loaded, role) for role in ROLES}
    samples = {
        "video_encoder": cdata.read_videos(data, VideoSpec.from_manifest(loaded.manifest), max_samples),
        "text_encoder": cdata.read_queries(queries, loaded, max_samples),
    }
    graphs = {"video_encoder": spec.video, "text_encoder": spec.text}
    feeds = {
        role: {part: cdata.batches(getattr(samples[role], part), samples[role].kind, graphs[role].input_names,
                                   batch_size, uniform=part == "calibration" and method != "minmax")
               for part in ("calibration", "held_out")}
        for role in ROLES
    }
    staging = _stage(bundle)
    try:
        report = _build(staging, loaded, fp32, samples, feeds, graphs, precisions, method, activations,
                        show_progress)
        if eval_data is not None:  # the staged bundle must be sealed for the Retriever to open it
            _write_report(staging, report)
            bundle_io.write_manifest(staging, _manifest(loaded.manifest, report, fp32))
            report["eval"] = {"data": str(eval_data), "split": split,
                              "metrics": _evaluate(staging, Path(eval_data), split, precisions),
                              "max_drop": max_drop}
            _gate(report, bundle, max_drop)
        _write_report(staging, report)
        manifest = bundle_io.write_manifest(staging, _manifest(loaded.manifest, report, fp32))
        if bundle_io.read_manifest(bundle)["manifest_sha256"] != before:
            raise InvalidInputError(f"bundle {bundle} changed while it was being calibrated; run again")
        swap_directory(staging, bundle)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report["manifest_sha256"] = manifest["manifest_sha256"]
    report["signature_invalidated"] = (bundle / "signature.json").is_file()
    return report


def _build(staging, loaded, fp32, samples, feeds, graphs, precisions, method, activations,
           show_progress) -> dict:
    """Write every reduced graph into ``staging`` and measure it on the held-out feeds."""
    report: dict[str, Any] = {
        "bundle": str(loaded.path),
        "method": method,
        "activations": activations,
        "calibration": {
            role: {"source": samples[role].source, "kind": samples[role].kind,
                   "samples": len(samples[role].calibration), "held_out": len(samples[role].held_out),
                   "batches": len(feeds[role]["calibration"]),
                   "ids_sha256": _ids_digest(samples[role].calibration_ids)}
            for role in ROLES
        },
        "precisions": {},
        # which sample was used for what (calibration.json only; the manifest keeps the counts and a digest)
        "calibration_ids": {role: samples[role].calibration_ids for role in ROLES},
        "held_out_ids": {role: samples[role].held_out_ids for role in ROLES},
    }
    reference = {role: run_graph(staging / fp32[role], feeds[role]["held_out"]) for role in ROLES}
    for precision in precisions:
        files, cosines, details = {}, {}, {}
        for role in ROLES:
            src, name = staging / fp32[role], graph_name(role, precision)
            # A previous calibration's file here is a hard link to the live bundle's: unlink, never write
            # through it (the writers below open the path for writing).
            (staging / name).unlink(missing_ok=True)
            if precision == "int8":
                total = len(feeds[role]["calibration"])
                with progress(total, f"calibrate {role} ({method})", show_progress) as advance:
                    info = quantize_int8(src, staging / name, feeds[role]["calibration"], method, advance,
                                         activations)
            else:
                info = convert_fp16(src, staging / name)
            reduced = run_graph(staging / name, feeds[role]["held_out"])  # also: it runs on ORT CPU
            cosines[role] = cosine_summary(reference[role], reduced, _embedding_outputs(graphs[role]))
            files[role] = name
            details[role] = {k: v for k, v in info.items() if k != "quantized"} | {
                "quantized": len(info.get("quantized", []))}
        report["precisions"][precision] = {"files": files, "cosines": cosines, "graphs": details,
                                           **compatibility(cosines)}
    return report


def _ids_digest(ids: Sequence[str]) -> str:
    """sha256 of the calibration ids, one per line: which samples calibrated, in the manifest."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _write_report(staging: Path, report: dict) -> None:
    atomic_write(staging / REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n", parents=False)


def _gate(report: dict, bundle: Path, max_drop: float) -> None:
    metrics = report["eval"]["metrics"]
    drops = {p: metrics["fp32"]["R@10"] - metrics[p]["R@10"] for p in metrics if p != "fp32"}
    report["eval"]["r10_drop"] = drops
    failed = {p: d for p, d in drops.items() if d > max_drop}
    if failed:
        worst = ", ".join(f"{p} loses {d:.2f}" for p, d in failed.items())
        raise ParityError(
            f"calibration of {bundle} rejected: R@10 drop above --max-drop {max_drop:g} points ({worst}); "
            f"the bundle is unchanged\n{table(metrics)}"
        )


def _manifest(manifest: dict, report: dict, fp32: dict[str, str]) -> dict:
    """The bundle's manifest plus the new files and ``precisions`` (not yet sealed)."""
    out = json.loads(json.dumps(manifest))
    if not out.get("embedding_space"):
        out["embedding_space"] = manifest["manifest_sha256"]  # the id existing indexes carry
    out["files"][REPORT] = {"role": "calibration_report"}
    precisions = out.setdefault("precisions", {})
    for precision, entry in report["precisions"].items():
        for role, name in entry["files"].items():
            out["files"][name] = {"role": role, "format": "onnx", "precision": precision,
                                  "source": fp32[role]}
        precisions[precision] = {
            "compatible": entry["compatible"],
            "cosine_min": entry["cosine_min"],
            "threshold": entry["threshold"],
            "files": entry["files"],
            "method": report["method"] if precision == "int8" else None,
            "activations": report["activations"] if precision == "int8" else None,
            "calibration": report["calibration"],
            "cosines": entry["cosines"],
            "eval": (report.get("eval", {}).get("metrics", {}).get(precision)),
        }
    return out
