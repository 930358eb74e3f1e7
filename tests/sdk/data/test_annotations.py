"""prvr_sdk.data.annotations: the public moment-annotation releases -> TextData/<collection>_meta.json.

Each test writes a few videos in the exact official formats (TVR jsonl, ActivityNet Captions json,
Charades-STA txt + Charades csv) and MS-SL caption files whose numbering differs from the releases, and
compares the written JSON with the hand-derived one, plus the unmatched report. Also the moment-skip
reasons of prvr_sdk.evaluation on hand-built metric counters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prvr_sdk.data import read_meta
from prvr_sdk.data.annotations import convert_annotations, normalise_text, read_annotations
from prvr_sdk.errors import InvalidInputError
from prvr_sdk.evaluation import evaluate_scores, meta_hint, moment_skip_reason

FRIENDS, HOUSE, MET = "friends_s01e01_seg01_clip_00", "house_s01e01_seg01_clip_01", "met_s01e01_seg01_clip_02"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_captions(root: Path, dataset: str, split: str, lines: list[str]) -> None:
    folder = root / dataset / "TextData"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{dataset}{split}.caption.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def tvr_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    """TVR: 3 train videos (one caption matched by position, two unmatched), test_public without ts."""
    train = write_jsonl(tmp_path / "tvr_train_release.jsonl", [
        {"desc_id": 101, "duration": 60.0, "ts": [0.0, 6.0], "vid_name": FRIENDS,
         "desc": "Ross opens the door."},
        {"desc_id": 102, "duration": 60.0, "ts": [10.5, 22.5], "vid_name": FRIENDS,
         "desc": "Rachel sits on the couch."},
        {"desc_id": 103, "duration": 60.0, "ts": [30.0, 45.0], "vid_name": FRIENDS,
         "desc": "Joey eats a sandwich."},
        {"desc_id": 104, "duration": 30.0, "ts": [3.0, 9.0], "vid_name": HOUSE, "desc": "House walks in."},
    ])
    test = write_jsonl(tmp_path / "tvr_test_public_release.jsonl", [
        {"desc_id": 201, "duration": 15.5, "vid_name": MET, "desc": "Ted waves at Robin."},  # ts withheld
    ])
    root = tmp_path / "data"
    write_captions(root, "tvr", "train", [
        f"{FRIENDS}#enc#0 rachel sits on  the couch",  # text (case, spaces, no period); release's 2nd
        f"{FRIENDS}#enc#1 Ross opens the door",  # text; release's 1st
        f"{FRIENDS}#enc#2 Joey is eating a sandwich.",  # text differs: position 2
        f"{HOUSE}#enc#0 House walks in.",  # text
        f"{HOUSE}#enc#5 Someone talks.",  # no such text, no annotation #5
        "unknown_clip#enc#0 Nobody.",  # video not in the release
    ])
    write_captions(root, "tvr", "test", [f"{MET}#enc#0 Ted waves at Robin."])
    return root, [train, test]


def test_tvr_release_to_meta(tmp_path: Path) -> None:
    root, files = tvr_files(tmp_path)
    result = convert_annotations("tvr", files, root)
    written = json.loads((root / "tvr" / "TextData" / "tvr_meta.json").read_text(encoding="utf-8"))
    assert written == result.meta
    assert written == {
        "dataset": "tvr",
        "fps": 1 / 1.5,
        "source": {
            "tool": "prvr data annotations",
            "files": ["tvr_train_release.jsonl", "tvr_test_public_release.jsonl"],
            "fps": "the tvr feature release (one row per 1.5 s)",
            "match": "video id + normalised caption text, else the caption id's number as position in the "
                     "video, else the one caption and annotation left in the video",
        },
        "videos": {FRIENDS: {"duration": 60.0}, HOUSE: {"duration": 30.0}, MET: {"duration": 15.5}},
        "captions": {
            f"{FRIENDS}#enc#0": {"video_id": FRIENDS, "span": [10.5, 22.5], "match": "text"},
            f"{FRIENDS}#enc#1": {"video_id": FRIENDS, "span": [0.0, 6.0], "match": "text"},
            f"{FRIENDS}#enc#2": {"video_id": FRIENDS, "span": [30.0, 45.0], "match": "position"},
            f"{HOUSE}#enc#0": {"video_id": HOUSE, "span": [3.0, 9.0], "match": "text"},
        },
    }
    assert result.splits == {
        "train": {"captions": 6, "text": 3, "position": 1, "remaining": 0, "unmatched": 2, "no_span": 0},
        "test": {"captions": 1, "text": 1, "position": 0, "remaining": 0, "unmatched": 0, "no_span": 1},
    }
    assert [(u["split"], u["cap_id"]) for u in result.unmatched] == [
        ("train", f"{HOUSE}#enc#5"), ("train", "unknown_clip#enc#0")]
    assert "only 1 annotation(s)" in result.unmatched[0]["reason"]
    assert result.unmatched[1]["reason"] == "video not in the annotation files"
    assert result.position_examples == [{
        "cap_id": f"{FRIENDS}#enc#2", "caption": "Joey is eating a sandwich.", "match": "position",
        "annotation": "Joey eats a sandwich.", "where": "tvr_train_release.jsonl:3"}]
    assert result.no_span == [f"{MET}#enc#0 (tvr_test_public_release.jsonl:1)"]
    assert result.missing_splits == ["val"] and result.notes == []
    # What the collection reader sees.
    meta = read_meta(root / "tvr" / "TextData" / "tvr_meta.json")
    assert meta["captions"][f"{FRIENDS}#enc#2"]["span"] == [30.0, 45.0]


def test_existing_meta_is_refused_without_overwrite(tmp_path: Path) -> None:
    root, files = tvr_files(tmp_path)
    target = root / "tvr" / "TextData" / "tvr_meta.json"
    target.write_text("{}", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="--overwrite"):
        convert_annotations("tvr", files, root)
    assert target.read_text(encoding="utf-8") == "{}"
    dry = convert_annotations("tvr", files, root, write=False)
    assert not dry.written and target.read_text(encoding="utf-8") == "{}"
    convert_annotations("tvr", files, root, overwrite=True)
    assert json.loads(target.read_text(encoding="utf-8")) == dry.meta
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_activitynet_json_with_and_without_the_v_prefix(tmp_path: Path) -> None:
    train = tmp_path / "train.json"
    train.write_text(json.dumps({
        "v_abc123": {"duration": 100.0, "timestamps": [[0, 20.5], [15.5, 60]],
                     "sentences": ["A man plays guitar.", " He then sings loudly."]},
        "v_def456": {"duration": 50.0, "timestamps": [[10, 5]], "sentences": ["A dog runs."]},
    }), encoding="utf-8")
    val = tmp_path / "val_1.json"
    val.write_text(json.dumps({"v_ghi789": {"duration": 30.25, "timestamps": [[1.0, 2.0]],
                                            "sentences": ["Someone claps."]}}), encoding="utf-8")
    root = tmp_path / "data"
    write_captions(root, "activitynet", "train", [
        "v_abc123#enc#0 He then sings loudly",  # text: the 2nd sentence
        "v_abc123#enc#1 A man plays the guitar.",  # text differs, position 1 taken: the pair left
        "def456#enc#0 A dog runs.",  # id without v_: still its video; its span is start > end
    ])
    write_captions(root, "activitynet", "val", ["v_ghi789#enc#0 someone claps",
                                                "v_ghi789#enc#3 A woman dances."])  # nothing left for it
    result = convert_annotations("activitynet", [train, val], root)
    assert result.meta["videos"] == {"v_abc123": {"duration": 100.0}, "def456": {"duration": 50.0},
                                     "v_ghi789": {"duration": 30.25}}
    assert result.meta["captions"] == {
        "v_abc123#enc#0": {"video_id": "v_abc123", "span": [15.5, 60.0], "match": "text"},
        "v_abc123#enc#1": {"video_id": "v_abc123", "span": [0.0, 20.5], "match": "remaining"},
        "v_ghi789#enc#0": {"video_id": "v_ghi789", "span": [1.0, 2.0], "match": "text"},
    }
    assert "fps" not in result.meta and result.fps is None and result.fps_source == "unknown"
    assert any("--fps" in n for n in result.notes)
    assert result.unmatched == [{
        "split": "val", "cap_id": "v_ghi789#enc#3", "caption": "A woman dances.",
        "reason": "no annotation of v_ghi789 with this text, and annotation #3 is unavailable (the video has "
                  "only 1 annotation(s)); 0 of its annotations are left for 1 captions"}]
    assert result.no_span == ["def456#enc#0 (train.json:v_def456[0])"]
    assert result.problems == ["train.json:v_def456[0]: span [10.0, 5.0] has start < 0 or end < start "
                               "(kept without span)"]
    assert result.counts == {"captions": 5, "text": 3, "position": 0, "remaining": 1, "unmatched": 1,
                             "no_span": 1}


def test_charades_sta_with_csv_durations_and_a_frame_count_estimate(tmp_path: Path) -> None:
    sta = tmp_path / "charades_sta_train.txt"
    sta.write_text("AO8RW 0.0 6.9##a person is putting a book on a shelf.\n"
                   "AO8RW 5.1 12.3##person begins to play on a phone.\n"
                   "Y6R7T 2 8##a person opens the door.\n", encoding="utf-8")
    csv_file = tmp_path / "Charades_v1_train.csv"
    csv_file.write_text('id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n'
                        'AO8RW,S1,Kitchen,6,7,Yes,"A person, then",book;shelf,"desc",c092 0.0 6.9,32.0\n',
                        encoding="utf-8")
    root = tmp_path / "data"
    write_captions(root, "charades", "train", [
        "AO8RW#enc#0 A person is putting a book on a shelf",
        "AO8RW#enc#1 Person begins to play on a phone.",
        "Y6R7T#enc#0 A person opens the door.",
    ])
    frames = root / "charades" / "FeatureData" / "i3d_rgb_lgi"
    frames.mkdir(parents=True)
    (frames / "video2frames.txt").write_text(
        repr({"AO8RW": [f"AO8RW_{i}" for i in range(8)], "Y6R7T": [f"Y6R7T_{i}" for i in range(5)]}),
        encoding="utf-8")
    result = convert_annotations("charades", [sta, csv_file], root)
    # fps: 8 frames / 32.0 s (the only video with a duration); Y6R7T: 5 frames / 0.25 fps = 20 s.
    assert result.meta["fps"] == 0.25 and result.fps_source.startswith("estimated from")
    assert result.meta["videos"] == {"AO8RW": {"duration": 32.0}, "Y6R7T": {"duration": 20.0}}
    assert result.meta["captions"] == {
        "AO8RW#enc#0": {"video_id": "AO8RW", "span": [0.0, 6.9], "match": "text"},
        "AO8RW#enc#1": {"video_id": "AO8RW", "span": [5.1, 12.3], "match": "text"},
        "Y6R7T#enc#0": {"video_id": "Y6R7T", "span": [2.0, 8.0], "match": "text"},
    }
    assert result.durations == {"annotations": 1, "video2frames": 1, "missing": 0}
    # A given --fps that disagrees with the frame counts is used, and the disagreement reported.
    again = convert_annotations("charades", [sta, csv_file], root, fps=1.0, overwrite=True)
    assert again.meta["fps"] == 1.0 and again.meta["videos"]["Y6R7T"] == {"duration": 5.0}
    assert any("disagrees with 0.25" in n for n in again.notes)
    # Without the csv and without frames: no durations, said so.
    (frames / "video2frames.txt").unlink()
    bare = convert_annotations("charades", [sta], root, write=False)
    assert bare.meta["videos"] == {} and bare.durations["missing"] == 2
    assert any("Charades_v1_{train,test}.csv" in n for n in bare.notes)


@pytest.mark.parametrize(("dataset", "name", "content", "message"), [
    ("tvr", "tvr_val_release.jsonl", '{"vid_name": "a"}\n', r"tvr_val_release.jsonl:1: expected an object"),
    ("tvr", "tvr_val_release.jsonl", "not json\n", r":1: not a JSON object"),
    ("tvr", "tvr_val.json", "{}", r"expected \.jsonl"),
    ("activitynet", "val_1.json", '{"v_a": {"timestamps": [[0, 1]], "sentences": []}}', "1 timestamps"),
    ("charades", "charades_sta_test.txt", "AO8RW 0.0##no end\n", r":1: expected 'VID start end##sentence'"),
    ("charades", "Charades_v1_test.csv", "id,name\nA,1\n", "'id' and 'length' columns"),
])
def test_malformed_release_files_name_file_and_line(tmp_path, dataset, name, content, message) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInputError, match=message):
        read_annotations(dataset, [path])


def test_refusals(tmp_path: Path) -> None:
    root, files = tvr_files(tmp_path)
    with pytest.raises(InvalidInputError, match="tvr, activitynet, charades"):
        convert_annotations("msrvtt", files, root)
    with pytest.raises(InvalidInputError, match="no caption file"):
        convert_annotations("tvr", files, tmp_path / "elsewhere")
    with pytest.raises(InvalidInputError, match="--fps"):
        convert_annotations("tvr", files, root, fps=0.0)
    with pytest.raises(InvalidInputError, match="not found"):
        convert_annotations("tvr", [tmp_path / "tvr_missing_release.jsonl"], root)
    other = write_jsonl(tmp_path / "other_release.jsonl",
                        [{"vid_name": "x", "desc": "y", "ts": [0, 1], "duration": 2}])
    with pytest.raises(InvalidInputError, match="no caption of tvr matched"):
        convert_annotations("tvr", [other], root)
    assert not (root / "tvr" / "TextData" / "tvr_meta.json").exists()


def test_normalise_text() -> None:
    assert normalise_text("  Ross  OPENS the door. ") == "ross opens the door"
    assert normalise_text("Wait...") == "wait" and normalise_text("a.b") == "a.b"


# --- why moment metrics are skipped (prvr_sdk.evaluation) ----------------------------------------------


SCORES = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
GT = np.array([0, 1, 0])
CLIPS = {0: np.array([[0.0, 2.0], [2.0, 4.0]]), 1: np.array([[0.0, 1.0], [1.0, 2.0]])}


def test_moment_counters_and_reasons() -> None:
    full = evaluate_scores(SCORES, GT, best_clip=np.array([0, 1, 1]), clip_spans=CLIPS.get,
                           true_spans=[(0.0, 2.0), (1.0, 2.0), (2.0, 3.0)])
    # IoU: [0,2] vs [0,2] = 1; [1,2] vs [1,2] = 1; [2,4] vs [2,3] = 1/2.
    assert full["mIoU"] == pytest.approx(100 * 2.5 / 3) and full["R@1,IoU>=0.5"] == pytest.approx(100.0)
    assert (full["moment_spans"], full["moment_capable"], full["moment_queries"], full["moment_skipped"]) == \
        (3, 1, 3, 0)
    assert moment_skip_reason(full) is None

    whole = evaluate_scores(SCORES, GT, true_spans=[(0.0, 2.0)] * 3)
    assert whole["moment_capable"] == 0 and "mIoU" not in whole
    assert "scores whole videos" in moment_skip_reason(whole)

    none = evaluate_scores(SCORES, GT, best_clip=np.array([0, 1, 1]), clip_spans=CLIPS.get,
                           true_spans=[None, None, None])
    assert none["moment_spans"] == 0 and "mIoU" not in none
    assert "prvr data annotations" in moment_skip_reason(none)
    assert moment_skip_reason(none, "no /x/tvr_meta.json") == \
        "no query of this split has a ground-truth [start, end] span (no /x/tvr_meta.json)"

    partial = evaluate_scores(SCORES, GT, best_clip=np.array([0, 1, 1]),
                              clip_spans=lambda v: None if v == 1 else CLIPS[v],
                              true_spans=[(0.0, 2.0), (1.0, 2.0), None])
    assert (partial["moment_queries"], partial["moment_skipped"]) == (1, 1)
    assert partial["mIoU"] == pytest.approx(100.0)
    assert moment_skip_reason(partial) == (
        "1 of 2 queries with a span were left out: their video's timing is unknown (the metadata needs "
        "'fps' and the video's 'duration' or 'num_frames'); 1 of 3 queries have no ground-truth span")


def test_meta_hint_names_the_file_and_the_command(tmp_path: Path) -> None:
    root, files = tvr_files(tmp_path)
    path = root / "tvr" / "TextData" / "tvr_meta.json"
    hint = meta_hint("tvr", root, "train")
    command = f"`prvr data annotations --dataset tvr --from FILE... --data-root {root}`"
    assert hint.startswith(f"no {path}; {command}")
    convert_annotations("tvr", files, root)
    assert meta_hint("tvr", root, "train") is None
    assert meta_hint("tvr", root, "test") == (
        f"{path} has no span for any caption of 'test'; `prvr data annotations --dataset tvr --from FILE... "
        f"--data-root {root}` writes it from the public annotations")
    meta = json.loads(path.read_text(encoding="utf-8"))
    del meta["fps"]
    path.write_text(json.dumps(meta), encoding="utf-8")
    assert "has no 'fps'" in meta_hint("tvr", root, "train")
