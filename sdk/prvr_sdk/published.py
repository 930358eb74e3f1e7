"""The published text-to-video figures each model's configs target, in one table (docs/models.md §7).

Why one place: ``prvr eval --compare-published`` prints a run next to these, and docs/models.md §7 lists
the same numbers (a test holds the two equal). Each row names where its figures come from; rows whose
figures are derived rather than printed by the authors say so in ``note``. Values are percent for R@K and
SumR, ranks for MdR / MnR, exactly as published (SumR from unrounded recalls, so parts need not add up).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PUBLISHED", "PublishedResult", "compare_published", "published_result"]


@dataclass(frozen=True)
class PublishedResult:
    """One model x dataset row of published figures.

    Attributes:
        model: registry name (``mamfusion``, ``amdnet``, ``muse``) or a baseline (``gmmformer``).
        dataset: collection name (``tvr``, ``activitynet``, ``charades``, ``msrvtt``).
        metrics: metric name (``prvr_sdk.metrics`` keys) -> published value; only what was published.
        source: the paper or repository file the figures come from.
        features: the features the figures were obtained with.
        note: caveats (derived figures, different features, later corrections).
    """

    model: str
    dataset: str
    metrics: Mapping[str, float]
    source: str
    features: str
    note: str = ""
    baseline: bool = field(default=False)


_PRVR = ("R@1", "R@5", "R@10", "R@100", "SumR")
_MSSL = "MS-SL features (I3D / ResNet-152 video, RoBERTa text)"
_MAMFUSION = "MamFusion (Ying et al., arXiv 2506.03473), official repository README"
_GMMFORMER = "GMMFormer (Wang et al., AAAI 2024), official repository README"


def _prvr(values: tuple[float, float, float, float, float]) -> dict[str, float]:
    return dict(zip(_PRVR, values, strict=True))


PUBLISHED: tuple[PublishedResult, ...] = (
    PublishedResult("mamfusion", "tvr", _prvr((14.2, 33.9, 44.9, 84.5, 177.5)), _MAMFUSION, _MSSL),
    PublishedResult("mamfusion", "activitynet", _prvr((8.0, 25.4, 37.2, 76.8, 147.4)), _MAMFUSION, _MSSL),
    PublishedResult(
        "mamfusion", "charades", _prvr((2.0, 8.6, 14.1, 52.4, 77.2)), _MAMFUSION, _MSSL,
        note="the README first gave 2.0 / 8.8 / 14.2 / 51.5 / 76.5 (the figure later papers cite) and "
        "changed it without a matching config change",
    ),
    PublishedResult(
        "amdnet", "tvr", {"SumR": 182.6},
        "AMDNet (Song et al., IEEE TMM 2025, arXiv 2504.10920), abstract: 6.0 SumR above GMMFormer on TVR",
        "CLIP ViT-B/32 (video frames and sentences)",
        note="derived (GMMFormer's 176.6 + 6.0), unverified; no per-recall table was available; the "
        "features differ from GMMFormer's, so not strictly comparable",
    ),
    PublishedResult(
        "muse", "msrvtt", {"R@1": 44.8, "R@5": 71.6, "R@10": 82.1, "MdR": 2.0, "MnR": 15.6},
        "MUSE (Tang et al., AAAI 2025, arXiv 2408.10575), official repository's training_log_r1_44.8.txt, "
        "best epoch",
        "CLIP ViT-B/32 trained end to end on raw frames (MSR-VTT 1k-A), 8 GPUs, batch 128",
        note="the paper's tables were not available; this project reads pre-extracted CLIP tokens",
    ),
    PublishedResult("gmmformer", "tvr", _prvr((13.9, 33.3, 44.5, 84.9, 176.6)), _GMMFORMER, _MSSL,
                    baseline=True),
    PublishedResult("gmmformer", "activitynet", _prvr((8.3, 24.9, 36.7, 76.1, 146.0)), _GMMFORMER, _MSSL,
                    baseline=True),
    PublishedResult("gmmformer", "charades", _prvr((2.1, 7.8, 12.5, 50.6, 72.9)), _GMMFORMER, _MSSL,
                    baseline=True),
)

_WHY_MISSING = {
    "amdnet": "AMDNet's per-dataset tables were not available to this project (only a TVR SumR claim)",
    "muse": "MUSE's figures are published for MSR-VTT only here (the paper's tables were not available)",
}


def published_result(model: str, dataset: str) -> PublishedResult | None:
    """The published row of ``model`` on ``dataset``, or None when there is none."""
    return next((r for r in PUBLISHED if r.model == model and r.dataset == dataset), None)


def compare_published(result: Mapping[str, Any]) -> dict[str, Any]:
    """A run's metrics next to the published ones, with deltas (run - published).

    Args:
        result: ``prvr eval``'s result (``model``, ``dataset``, ``headline`` and the metric values).
    Returns:
        ``{"model", "dataset", "available": bool, "source", "features", "note", "rows": [{"metric",
        "run", "published", "delta"}]}`` over the headline metrics (``published`` / ``delta`` None where
        not published); without a row ``available`` is False and ``note`` says why.
    """
    model, dataset = str(result["model"]), str(result["dataset"])
    row = published_result(model, dataset)
    if row is None:
        known = sorted(r.dataset for r in PUBLISHED if r.model == model and not r.baseline)
        why = _WHY_MISSING.get(model, "")
        note = f"no published figures for {model} on {dataset}" + (
            f" (published: {', '.join(known)})" if known else "") + (f"; {why}" if why else "")
        return {"model": model, "dataset": dataset, "available": False, "source": None, "features": None,
                "note": note, "rows": []}
    keys = list(result.get("headline") or row.metrics)
    keys += [k for k in row.metrics if k not in keys]
    rows = []
    for key in keys:
        run = result.get(key)
        run = float(run) if isinstance(run, int | float) and math.isfinite(run) else None
        published = row.metrics.get(key)
        delta = None if run is None or published is None else round(run - published, 6)
        rows.append({"metric": key, "run": run, "published": published, "delta": delta})
    note = row.note
    split = result.get("split")
    if split not in (None, "test"):
        note = "; ".join(filter(None, [f"this run is on {split!r}, the published figures on the test split",
                                       note]))
    return {"model": model, "dataset": dataset, "available": True, "source": row.source,
            "features": row.features, "note": note, "rows": rows}
