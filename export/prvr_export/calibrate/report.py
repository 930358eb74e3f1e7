"""Accuracy of reduced-precision graphs against fp32, and the precision compatibility rule.

Compatibility rule (manifest ``precisions[p].compatible``, read by ``Retriever.bundle_sha256``): a reduced
precision's embeddings are interchangeable with fp32 ones -- an fp32 index may be searched with its
queries, and its videos may be added to an fp32 index -- when the smallest cosine similarity between the
fp32 and the reduced embedding, over every output of both encoders on every held-out sample (each clip
row of ``clip_emb`` counted alone), is at least ``COMPATIBLE_COSINE``. Otherwise the precision is its own
embedding space and the Retriever reports a different id for it, so mixing is refused
(``IndexMismatchError``). The minimum, not the mean: one bad clip row can move a hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prvr_sdk.serving import HEADLINE_KEYS

from .data import Feeds

__all__ = [
    "COMPATIBLE_COSINE",
    "METRIC_KEYS",
    "compatibility",
    "cosine_rows",
    "cosine_summary",
    "run_graph",
    "table",
]

COMPATIBLE_COSINE = 0.99
METRIC_KEYS = HEADLINE_KEYS["sumr"]  # the PRVR report's R@K and SumR


def run_graph(path: str | Path, feeds: Sequence[Feeds], threads: int | None = None) -> dict[str, np.ndarray]:
    """Every output of the graph at ``path`` on every batch (ONNX Runtime CPU), concatenated on axis 0 as
    float32. Running it is also the check that the file loads and executes on plain ONNX Runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in feeds:
        for name, value in zip(names, session.run(names, batch), strict=True):
            parts[name].append(np.asarray(value, dtype=np.float32))
    return {n: np.concatenate(v) for n, v in parts.items()}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of matching vectors (last axis) of two equal-shape arrays, flattened: one value per row."""
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(denom, 1e-12)


def cosine_summary(reference: dict[str, np.ndarray], reduced: dict[str, np.ndarray],
                   outputs: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per embedding output: ``min``, ``mean``, ``p01`` (1st percentile) cosine and ``rows`` compared."""
    out = {}
    for name in outputs:
        cos = cosine_rows(reference[name], reduced[name])
        out[name] = {"min": float(cos.min()), "mean": float(cos.mean()),
                     "p01": float(np.percentile(cos, 1)), "rows": int(cos.size)}
    return out


def compatibility(cosines: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """The rule of the module docstring over ``{graph: {output: summary}}``."""
    worst = min(s["min"] for per_graph in cosines.values() for s in per_graph.values())
    return {"compatible": bool(worst >= COMPATIBLE_COSINE), "cosine_min": worst,
            "threshold": COMPATIBLE_COSINE}


def table(metrics: dict[str, dict[str, float]], keys: Sequence[str] = METRIC_KEYS) -> str:
    """Plain text, one row per precision (``fp32`` first), one column per metric, plus R@10 drop."""
    header = ["precision", *keys, "R@10 drop"]
    rows = [header]
    base = metrics.get("fp32", {}).get("R@10")
    for precision, values in metrics.items():
        drop = "" if base is None or precision == "fp32" else f"{base - values['R@10']:+.1f}"
        rows.append([precision, *(f"{values[k]:.1f}" for k in keys), drop])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
