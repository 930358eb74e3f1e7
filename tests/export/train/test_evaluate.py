"""Tests for export/prvr_export/train/evaluate.py: a stub model on hand-made data whose rankings (ties
included) and moment spans are worked out by hand below."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from prvr_export.train.evaluate import encode_videos, evaluate, headline, selection_key
from prvr_sdk.data.collection import Collection
from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.serving import GraphSpec, ServingSpec

# 3 videos x 4 clips x 2 dims. Scores are max over clips of a plain dot product (no normalisation).
CLIPS = {
    "v0": [[1, 0], [0, 0], [0, 0], [0, 0]],
    "v1": [[0, 0], [0, 0], [0, 1], [0, 0]],
    "v2": [[0, 0], [2, 0], [0, 0], [0, 3]],
}
NUM_FRAMES = {"v0": 8, "v1": 4, "v2": 12}  # at 2 rows per second
# (query, gt video, true span seconds)
QUERIES = [
    ([1, 0], 0, (0.0, 1.0)),  # scores v0 1 (clip 0), v1 0, v2 2  -> rank 2
    ([0, 1], 1, (1.0, 2.0)),  # v0 0, v1 1 (clip 2), v2 3          -> rank 2
    ([1, 0], 2, (0.0, 3.0)),  # v0 1, v1 0, v2 2 (clip 1)          -> rank 1
    ([0, 0], 0, None),  # all 0: a three-way tie, counted against the GT -> rank 3
    ([0, 2], 2, (5.0, 6.0)),  # v0 0, v1 2, v2 6 (clip 3)          -> rank 1
]
# ranks [2, 2, 1, 3, 1]: R@1 40, R@5 = R@10 = R@100 = 100, SumR 340, MdR 2, MnR 1.8.
# Winning clip of the GT video -> frame rows by the clip rule b_i = min(round(i * Nf / 4), Nf - 1):
#   v0 (8 rows): b = 0 2 4 6 7, clip 0 = rows [0, 2)   -> [0.0, 1.0] s  vs (0, 1): IoU 1
#   v1 (4 rows): b = 0 1 2 3 3, clip 2 = rows [2, 3)   -> [1.0, 1.5] s  vs (1, 2): IoU 0.5
#   v2 (12 rows): b = 0 3 6 9 11, clip 1 = rows [3, 6) -> [1.5, 3.0] s  vs (0, 3): IoU 0.5
#                               clip 3 = rows [9, 11)  -> [4.5, 5.5] s  vs (5, 6): IoU 0.5 / 1.5 = 1/3
# mIoU = (1 + 0.5 + 0.5 + 1/3) / 4 = 58.33 %, R@1,IoU>=0.5 = 3 / 4 = 75 %.


class StubModel(nn.Module):
    name = "stub"
    video_inputs = ("clips",)

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.batches: list[int] = []

    def encode_video(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        self.batches.append(len(clips))
        return {"clip_emb": clips * self.scale}

    def encode_text(self, query: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        return query

    def score(self, text_emb: torch.Tensor, video: dict[str, torch.Tensor]):
        per_clip = torch.einsum("qd,vcd->qvc", text_emb, video["clip_emb"])  # [Nq, Nv, Nc]
        return per_clip.max(dim=2)

    def serving_spec(self) -> ServingSpec:
        return ServingSpec(
            video=GraphSpec({"clips": ("batch", 4, 2)}, ("clip_emb",)),
            text=GraphSpec({"query": ("batch", 2)}, ("text_emb",)),
            dim=2,
            scoring={"kind": "max_clip"},
            clip_output="clip_emb",
            clip_count=4,
            clip_time="uniform",
        )


class _Videos(list):
    pass


class FakeData:
    """The slice of ``PRVRData`` that ``evaluate`` uses (its timing rule is the real one)."""

    timing = Collection.timing

    def __init__(self, with_meta: bool = True, nan_video: str | None = None) -> None:
        self.meta = (
            {"fps": 2.0, "videos": {v: {"num_frames": n} for v, n in NUM_FRAMES.items()}} if with_meta else {}
        )
        self.nan_video = nan_video

    def videos(self, split: str) -> _Videos:
        items = _Videos()
        for video_id, clips in CLIPS.items():
            c = np.asarray(clips, dtype=np.float32)
            if video_id == self.nan_video:
                c[0, 0] = np.nan
            items.append({"video_id": video_id, "clips": c, "frames": np.zeros((3, 2), np.float32)})
        items.video_ids = list(CLIPS)
        return items

    def queries(self, split: str) -> list[dict]:
        ids = list(CLIPS)
        return [
            {
                "caption_id": f"{ids[gt]}#{k}",
                "video_id": ids[gt],
                "video_index": gt,
                "query": np.asarray(q, dtype=np.float32),
                "span": span,
            }
            for k, (q, gt, span) in enumerate(QUERIES)
        ]


CONFIG = SimpleNamespace(eval_video_batch=2, eval_query_batch=2, num_clips=4, metric="sumr")


def test_retrieval_metrics_match_the_hand_computed_ranks() -> None:
    model = StubModel()
    metrics = evaluate(model, FakeData(), "test", CONFIG)
    assert model.batches == [2, 1]  # videos encoded in batches of eval_video_batch
    assert metrics["R@1"] == pytest.approx(40.0)
    assert metrics["R@5"] == metrics["R@10"] == metrics["R@100"] == pytest.approx(100.0)
    assert metrics["SumR"] == pytest.approx(340.0)
    assert metrics["MdR"] == 2.0 and metrics["MnR"] == pytest.approx(1.8)
    assert metrics["queries"] == 5 and metrics["videos"] == 3


def test_moment_localisation_from_the_winning_clip() -> None:
    metrics = evaluate(StubModel(), FakeData(), "test", CONFIG)
    assert metrics["moment_queries"] == 4  # the query without a span is left out
    assert metrics["mIoU"] == pytest.approx(100 * (1 + 0.5 + 0.5 + 1 / 3) / 4)
    assert metrics["R@1,IoU>=0.5"] == pytest.approx(75.0)


def test_no_timing_metadata_means_no_moment_metrics() -> None:
    metrics = evaluate(StubModel(), FakeData(with_meta=False), "test", CONFIG)
    assert "mIoU" not in metrics and metrics["SumR"] == pytest.approx(340.0)


def test_models_without_a_winning_clip_skip_moments() -> None:
    class Pooled(StubModel):
        def score(self, text_emb, video):
            scores, _ = super().score(text_emb, video)
            return scores, None

    metrics = evaluate(Pooled(), FakeData(), "test", CONFIG)
    assert "mIoU" not in metrics and metrics["R@1"] == pytest.approx(40.0)


def test_training_mode_is_restored() -> None:
    model = StubModel()
    model.train()
    evaluate(model, FakeData(), "test", CONFIG)
    assert model.training
    model.eval()
    evaluate(model, FakeData(), "test", CONFIG)
    assert not model.training


def test_nan_scores_stop_with_a_message() -> None:
    with pytest.raises(InvalidInputError, match="NaN/Inf scores"):
        evaluate(StubModel(), FakeData(nan_video="v1"), "test", CONFIG)


def test_missing_video_inputs_are_named() -> None:
    class WantsPatches(StubModel):
        video_inputs = ("patches",)

    with pytest.raises(InvalidInputError, match=r"missing \['patches'\]"):
        evaluate(WantsPatches(), FakeData(), "test", CONFIG)


def test_encode_videos_rejects_ragged_outputs() -> None:
    class Ragged(StubModel):
        def encode_video(self, clips):
            return {"clip_emb": clips[:, : len(clips)]}  # second dim follows the batch size

    batches = [
        {"clips": torch.zeros(2, 4, 2), "video_ids": ["a", "b"]},
        {"clips": torch.zeros(1, 4, 2), "video_ids": ["c"]},
    ]
    with pytest.raises(ShapeMismatchError, match="clip_emb"):
        encode_videos(Ragged(), batches, torch.device("cpu"))


def test_selection_and_headline() -> None:
    assert selection_key(SimpleNamespace(metric="sumr")) == "SumR"
    assert selection_key(SimpleNamespace(metric="r1")) == "R@1"
    assert headline(StubModel()) == ("R@1", "R@5", "R@10", "R@100", "SumR")
    with pytest.raises(InvalidInputError, match="config.metric"):
        selection_key(SimpleNamespace(metric="map"))
