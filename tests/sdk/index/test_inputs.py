"""Bad inputs raise typed errors that name the argument, and add nothing (all-or-nothing adds)."""

from __future__ import annotations

import numpy as np
import pytest

from prvr_sdk.errors import InvalidInputError, ShapeMismatchError
from prvr_sdk.features import l2_normalize
from prvr_sdk.index import ExactIndex, ScoringRule


def unit(rows, dim=8, seed=0):
    return l2_normalize(np.random.default_rng(seed).standard_normal((rows, dim)))


@pytest.fixture
def index():
    index = ExactIndex(8, {"kind": "weighted", "clip_weight": 0.7, "frame_weight": 0.3})
    index.add(["a"], clip_embs=[unit(3)], video_embs=unit(1))
    return index


def nan_clips():
    c = unit(3)
    c[1, 2] = np.nan
    return c


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"clip_embs": [nan_clips()]}, InvalidInputError, r"clip_embs\[0\] \(video 'b'\).*row 1 has NaN"),
        ({"clip_embs": [unit(3) * 2]}, InvalidInputError, r"unit-length.*norm 2"),
        ({"clip_embs": [unit(3, dim=6)]}, ShapeMismatchError, r"clip_embs\[0\].*\[n, 8\].*\(3, 6\)"),
        ({"clip_embs": [np.zeros((0, 8))]}, InvalidInputError, r"at least one clip"),
        ({"clip_embs": [unit(3), unit(2)]}, ShapeMismatchError, r"clip_embs: expected 1 entries"),
        ({"clip_embs": None}, InvalidInputError, r"needs clip embeddings"),
        ({"video_embs": unit(1) * np.inf}, InvalidInputError, r"video_embs.*NaN or Inf"),
        ({"video_embs": unit(2)}, ShapeMismatchError, r"video_embs: expected 1 rows"),
        ({"video_embs": None}, InvalidInputError, r"needs video embeddings"),
        ({"spans": [np.zeros((2, 2))]}, ShapeMismatchError, r"spans\[0\].*\(3, 2\)"),
        ({"spans": [np.array([[0, 1], [3, 2], [4, 5]])]}, InvalidInputError, r"clip 1 starts after it ends"),
        ({"metadata": [{"t": object()}]}, InvalidInputError, r"metadata\[0\]: not JSON"),
        ({"metadata": [{"x": float("nan")}]}, InvalidInputError, r"metadata\[0\]"),
        ({"metadata": {"x": 1}}, ShapeMismatchError, r"a single dict"),
        ({"video_ids": ["a"]}, InvalidInputError, r"already in the index: \['a'\].*upsert"),
        ({"video_ids": ["c", "c"]}, InvalidInputError, r"duplicate ids.*\['c'\]"),
        ({"video_ids": [7]}, InvalidInputError, r"video_ids\[0\]: expected a non-empty string"),
        ({"video_ids": "b"}, InvalidInputError, r"wrap it in a list"),
    ],
)
def test_bad_add_raises_and_adds_nothing(index, kwargs, error, pattern):
    args = {
        "video_ids": ["b"],
        "clip_embs": [unit(3)],
        "video_embs": unit(1),
        "spans": None,
        "metadata": None,
    }
    args.update(kwargs)
    if len(args["video_ids"]) == 2 and "clip_embs" not in kwargs:
        args["clip_embs"], args["video_embs"] = [unit(3), unit(3)], unit(2)
    with pytest.raises(error, match=pattern):
        index.add(**args)
    assert index.ids() == ["a"]


def test_embeddings_the_rule_does_not_use_are_refused():
    with pytest.raises(InvalidInputError, match="max_clip.*drop video_embs"):
        ExactIndex(8, "max_clip").add(["a"], clip_embs=[unit(2)], video_embs=unit(1))
    with pytest.raises(InvalidInputError, match="no clips"):
        ExactIndex(8, "video").add(["a"], clip_embs=[unit(2)], video_embs=unit(1))
    with pytest.raises(InvalidInputError, match="duration"):
        ExactIndex(8, "video").add(["a"], video_embs=unit(1), spans=[np.zeros((1, 2))])


def test_bad_queries(index):
    with pytest.raises(ShapeMismatchError, match=r"queries.*\[n, 8\]"):
        index.search(unit(1, dim=4)[0])
    with pytest.raises(InvalidInputError, match="queries.*NaN"):
        index.search(np.full(8, np.nan))
    with pytest.raises(InvalidInputError, match="queries.*unit-length"):
        index.search(np.ones(8))
    for bad in ({"top_k": 0}, {"top_k": 2.5}, {"group_by": "frame"}, {"block_size": 0}):
        with pytest.raises(InvalidInputError):
            index.search(unit(1)[0], **bad)
    with pytest.raises(InvalidInputError, match="group_by='clip'"):
        ExactIndex(8, "video").search(unit(1)[0], group_by="clip")


def test_bad_construction():
    for bad in ({"dim": 0}, {"dim": "8"}, {"bundle_sha256": "abc"}, {"model": 3}):
        args = {"dim": 8, "scoring": "max_clip"} | bad
        with pytest.raises(InvalidInputError):
            ExactIndex(**args)
    for rule in (
        "dot",
        {"kind": "max_clip", "frame_weight": 0.3},
        {"kind": "video", "clip_weight": 2},
        {"kind": "weighted", "alpha": 1},
        {"clip_weight": 1},
        {"kind": "weighted", "clip_weight": "a"},
    ):
        with pytest.raises(InvalidInputError):
            ScoringRule.parse(rule)


def test_upsert_replaces_and_moves_to_the_end(index):
    index.add(["b", "c"], clip_embs=[unit(2, seed=1), unit(2, seed=2)], video_embs=unit(2, seed=3))
    new = unit(4, seed=9)
    index.upsert(
        ["b", "d"], clip_embs=[new, unit(1, seed=5)], video_embs=unit(2, seed=6), metadata=[{"v": 2}, None]
    )
    assert index.ids() == ["a", "c", "b", "d"]
    hit = index.search(new[2], top_k=1)[0]
    assert (hit.video_id, hit.clip_index, hit.metadata) == ("b", 2, {"v": 2})


def test_empty_add_is_a_no_op(index):
    index.add([], clip_embs=[], video_embs=np.zeros((0, 8)))
    assert len(index) == 1 and index.info()["segments"] == 1


def test_one_3d_array_of_clips_is_accepted_and_checked():
    clips = np.stack([unit(3, seed=s) for s in range(4)])  # [4 videos, 3 clips, 8]
    index = ExactIndex(8, "max_clip")
    index.add(["a", "b", "c", "d"], clip_embs=clips)
    hit = index.search(clips[2, 1], top_k=1)[0]
    assert (hit.video_id, hit.clip_index) == ("c", 1)
    clips[3, 2, 0] = np.nan
    with pytest.raises(InvalidInputError, match=r"clip_embs\[3\] \(video 'h'\).*row 2"):
        index.add(["e", "f", "g", "h"], clip_embs=clips)
    with pytest.raises(ShapeMismatchError, match="expected 2 entries"):
        index.add(["e", "f"], clip_embs=clips)
