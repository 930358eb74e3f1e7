"""What every index shares: the scoring rule, the ``Index`` protocol, and the checks on embeddings.

The scoring rule comes from the bundle manifest (docs/architecture.md §3) and says how a query vector ``q``
and a video's stored vectors make one score (all vectors unit length, so dot products are cosines):

* ``"max_clip"`` -- ``clip_weight * max_c q.clip_c`` (AMDNet; ``clip_weight`` defaults to 1);
* ``"weighted"`` -- ``clip_weight * max_c q.clip_c + frame_weight * q.video`` (GMMFormer / MamFusion:
  0.7 / 0.3);
* ``"video"``    -- ``q.video``, one vector per video and no clips (MUSE).

This is ``prvr_sdk.scoring.weighted_score(max_over_clips(...), cosine(...), clip_weight, frame_weight)`` on
unit vectors; the exact index computes the same thing in blocks.

Engine adapters (Qdrant, Milvus ...) implement ``Index``; code that only searches should depend on the
protocol, not on ``ExactIndex``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from prvr_sdk.errors import IndexMismatchError, InvalidInputError, ShapeMismatchError
from prvr_sdk.hits import Hit

__all__ = [
    "NORM_TOLERANCE",
    "SCORING_KINDS",
    "Index",
    "ScoringRule",
    "check_binding",
    "check_vectors",
]

SCORING_KINDS = ("max_clip", "weighted", "video")

# How far from 1 a stored or query vector's L2 norm may be. Generous on purpose: fp16 rounding moves a unit
# vector's norm by < 5e-4 and l2_normalize's eps by 1e-5; vectors nobody normalised are typically off by
# far more than 1e-2, which is what this check exists to catch.
NORM_TOLERANCE = 1e-2


@dataclass(frozen=True)
class ScoringRule:
    """How a query and a video's stored vectors make one score (see the module docstring).

    Attributes:
        kind: ``"max_clip"``, ``"weighted"`` or ``"video"``.
        clip_weight: weight of the max-over-clips term (unused by ``"video"``).
        frame_weight: weight of the video-vector term (``"weighted"`` only).
    """

    kind: Literal["max_clip", "weighted", "video"]
    clip_weight: float = 1.0
    frame_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCORING_KINDS:
            raise InvalidInputError(f"scoring kind: expected one of {list(SCORING_KINDS)}, got {self.kind!r}")
        for name in ("clip_weight", "frame_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidInputError(f"scoring {name}: expected a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.kind == "video" and (self.clip_weight, self.frame_weight) != (1.0, 0.0):
            raise InvalidInputError(
                "scoring 'video' has no weights (score = q . video vector); got "
                f"clip_weight={self.clip_weight}, frame_weight={self.frame_weight}"
            )
        if self.kind == "max_clip" and self.frame_weight != 0.0:
            raise InvalidInputError(
                f"scoring 'max_clip' has no frame term; got frame_weight={self.frame_weight} "
                "(use kind 'weighted' for clip + video-vector scores)"
            )

    @property
    def uses_clips(self) -> bool:
        """Whether videos store clip vectors (and spans)."""
        return self.kind != "video"

    @property
    def uses_video_emb(self) -> bool:
        """Whether videos store one extra video-level vector."""
        return self.kind != "max_clip"

    @classmethod
    def parse(cls, rule: ScoringRule | Mapping[str, Any] | str) -> ScoringRule:
        """Accept a ``ScoringRule``, a dict like the bundle manifest's, or a bare kind string.

        Raises:
            InvalidInputError: unknown kind or keys, or weights that the kind does not use.
        """
        if isinstance(rule, ScoringRule):
            return rule
        if isinstance(rule, str):
            return cls(kind=rule)  # type: ignore[arg-type]
        if isinstance(rule, Mapping):
            unknown = sorted(set(rule) - {"kind", "clip_weight", "frame_weight"})
            if unknown or "kind" not in rule:
                raise InvalidInputError(
                    "scoring: expected a dict with 'kind' and optional 'clip_weight', 'frame_weight'; got "
                    f"keys {sorted(rule)}"
                )
            return cls(**rule)
        raise InvalidInputError(
            f"scoring: expected a ScoringRule, dict or kind string, got {type(rule).__name__}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "clip_weight": self.clip_weight, "frame_weight": self.frame_weight}


def check_vectors(
    x: Any,
    dim: int,
    name: str,
    norm_tolerance: float = NORM_TOLERANCE,
) -> np.ndarray:
    """Check a ``[n, dim]`` block of unit vectors and return it as C-contiguous float32.

    Args:
        x: array-like ``r(n dim)``.
        dim: the required embedding size.
        name: what to call it in messages (``"clip_embs[3]"``, ``"queries"`` ...).
        norm_tolerance: largest allowed ``| ||x_i|| - 1 |``.

    Raises:
        ShapeMismatchError: not 2-D, or the last size is not ``dim``.
        InvalidInputError: not real numbers, a NaN/Inf, or a row whose norm is not ~1 (the message names
            the first bad row and says how to normalise).
    """
    try:
        arr = np.asarray(x)
    except ValueError as exc:  # ragged nested lists
        raise ShapeMismatchError(f"{name}: expected an array [n, {dim}], got a ragged sequence") from exc
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ShapeMismatchError(f"{name}: expected an array [n, {dim}], got shape {arr.shape}")
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise InvalidInputError(f"{name}: expected real-valued vectors, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range turns into inf: reported below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InvalidInputError(f"{name}: expected finite values, row {row} has NaN or Inf")
    norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float64))
    bad = np.abs(norms - 1.0) > norm_tolerance
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(
            f"{name}: expected unit-length vectors (norm 1 +- {norm_tolerance}), row {row} has norm "
            f"{norms[row]:.4g}; normalise first (prvr_sdk.features.l2_normalize)"
        )
    return out


def check_binding(
    index: Any, where: str, bundle_sha256: str | None = None, model: str | None = None, dim: int | None = None
) -> None:
    """Refuse an index built for another bundle, model or embedding size than the caller expects (``None``:
    not checked). One rule and one wording for every engine and for ``Retriever.load_index``.

    Raises:
        IndexMismatchError: naming ``where`` and what differs.
    """
    recorded = getattr(index, "bundle_sha256", None)  # an Index from elsewhere may not record one
    if bundle_sha256 is not None and bundle_sha256 != recorded:
        recorded = recorded or "none (built without a bundle hash)"
        raise IndexMismatchError(
            f"{where} was built for bundle sha256 {recorded}, not the expected {bundle_sha256}; "
            "rebuild the index with this bundle"
        )
    if model is not None and model != index.model:
        raise IndexMismatchError(f"{where} was built for model {index.model!r}, not the expected {model!r}")
    if dim is not None and dim != index.dim:
        raise IndexMismatchError(f"{where} stores {index.dim}-dimensional embeddings, expected {dim}")


@runtime_checkable
class Index(Protocol):
    """The operations every index offers: ``ExactIndex`` and the Qdrant adapters (``prvr_sdk.index.qdrant``).

    Semantics every implementation keeps: ids are unique strings (adding a live id is an error; ``upsert``
    adds or replaces); ``remove`` ignores unknown ids and returns how many it removed; ``search`` takes one
    query ``[D]`` (returns ``list[Hit]``) or a batch ``[Nq, D]`` (returns one list per query), best first,
    with ``filter`` applied before top-k; ``save`` is atomic; ``len(index)`` counts live videos.
    """

    dim: int
    scoring: ScoringRule

    def add(
        self,
        video_ids: Sequence[str],
        clip_embs: Sequence[np.ndarray] | np.ndarray | None = None,
        video_embs: np.ndarray | None = None,
        spans: Sequence[np.ndarray | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None: ...

    def upsert(
        self,
        video_ids: Sequence[str],
        clip_embs: Sequence[np.ndarray] | np.ndarray | None = None,
        video_embs: np.ndarray | None = None,
        spans: Sequence[np.ndarray | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None: ...

    def remove(self, video_ids: Sequence[str]) -> int: ...

    def search(
        self,
        queries: np.ndarray,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: Literal["video", "clip"] = "video",
        min_score: float | None = None,
    ) -> list[Hit] | list[list[Hit]]: ...

    def save(self, path: Any = None) -> Any: ...

    @classmethod
    def load(cls, path: Any) -> Index: ...

    def __len__(self) -> int: ...
