"""Video-encoder calls hold at most ``_MAX_CALL_ROWS`` padded token rows, and splitting changes no embedding.

Oracle: the same videos encoded one per call (``batch_size=1``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import prvr_sdk.retriever as retriever_module  # noqa: E402
from prvr_sdk import Retriever  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@pytest.mark.parametrize("name", ["muse", "mamfusion"])
def test_a_large_batch_is_split_by_rows_and_gives_the_same_embeddings(name, monkeypatch):
    golden = np.load(GOLDEN / name / "golden.npz")
    videos = [golden[f"video_{i}"] for i in range(4)] * 3  # 12 videos of mixed lengths
    ids = [f"v{i}" for i in range(len(videos))]
    r = Retriever.from_bundle(GOLDEN / name / "bundle", device="cpu")
    one = r.encode_video(videos, video_ids=ids, batch_size=1, fps=1.0)
    spec = r.video_spec
    budget = 3 * (spec.max_frames * (spec.patches or 1) + spec.num_clips)  # 3 videos of the longest kind
    monkeypatch.setattr(retriever_module, "_MAX_CALL_ROWS", budget)
    calls = []  # (videos, padded token rows) per encoder call
    run = r._video.run

    def counting(feeds, outputs=None):
        frames = feeds["patches" if spec.patches else "frames"]
        per = frames.shape[1] * (spec.patches or 1) + spec.num_clips
        calls.append((len(frames), len(frames) * per))
        return run(feeds, outputs)

    monkeypatch.setattr(r._video, "run", counting)
    split = r.encode_video(videos, video_ids=ids, batch_size=12, fps=1.0)
    assert sum(n for n, _ in calls) == 12 and len(calls) > 1  # split although batch_size allowed one call
    assert all(rows <= budget or n == 1 for n, rows in calls)
    assert list(split.ids) == ids
    for out in ("clip_emb", "video_emb"):
        a, b = getattr(one, out), getattr(split, out)
        if a is not None:
            np.testing.assert_allclose(b, a, atol=1e-5)
