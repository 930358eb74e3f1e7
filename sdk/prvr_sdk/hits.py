"""``Hit``: one search result -- which video matched, how well, and where inside it.

Every video-search peer users like returns the moment, not only the video (Twelve Labs ``start/end``,
NVIDIA VSS ``start_time/end_time``, lighthouse windows). PRVR gets it for free: a video's clip-scale score
is a max over its clips, and the winning clip's time span is the moment. Indexes (``prvr_sdk.index``) and
the Retriever return lists of ``Hit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Hit"]


@dataclass(frozen=True)
class Hit:
    """One result of a search, best first in the lists that indexes return.

    Attributes:
        video_id: the id given to ``add``.
        score: the model's query-to-video score (for ``group_by="clip"``: the clip's score), float.
        start: start of the matching moment in seconds, ``None`` when unknown (no spans were given, or a
            video-level model whose metadata has no ``duration``).
        end: end of the matching moment in seconds, ``None`` when unknown.
        clip_index: index of the winning clip inside the video (0-based), ``None`` for video-level models.
        metadata: the video's metadata as given to ``add`` (a fresh dict per hit; editing it changes
            nothing stored). Not part of the hash, so hits can go in sets.
    """

    video_id: str
    score: float
    start: float | None = None
    end: float | None = None
    clip_index: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the six fields (metadata copied)."""
        return {
            "video_id": self.video_id,
            "score": self.score,
            "start": self.start,
            "end": self.end,
            "clip_index": self.clip_index,
            "metadata": dict(self.metadata),
        }
