"""`prvr data annotations` and what `prvr eval` does with its file (cli/prvr_cli/data_annotations.py).

A tiny TVR collection in the official layout (caption files, CLIP frame / sentence hdf5 in the golden
AMDNet bundle's sizes: 8 frames of 32-d per video, 32-d sentences) and a TVR release jsonl written here.
Oracle for the moment metrics: every true span is its whole video, [0, 12] s at TVR's 1.5 s per frame, so
whichever of the 8 clips wins, IoU = 1.5 / 12: mIoU = 12.5, R@1,IoU>=0.5 = 0 -- by hand; and, for spans
that depend on the winner, the winner from the runtime Retriever with a naive IoU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prvr_cli.app import app

h5py = pytest.importorskip("h5py")
pytest.importorskip("onnxruntime")

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "amdnet" / "bundle"
VIDEOS = ("friends_s01e01_seg01_clip_00", "house_s01e01_seg01_clip_01", "met_s01e01_seg01_clip_02")
TEXTS = (("Ross opens the door.", "Rachel sits on the couch."), ("House walks in.", "Cuddy shouts."),
         ("Ted waves.", "Robin laughs."))
runner = CliRunner()


def write_collection(root: Path, spans: dict[tuple[int, int], list[float]]) -> Path:
    """tvr/ with a test caption file (each video's captions numbered in reverse of the release), the
    features, and the release jsonl (spans per (video, k)); returns the jsonl."""
    text, feats = root / "tvr" / "TextData", root / "tvr" / "FeatureData"
    text.mkdir(parents=True)
    feats.mkdir(parents=True)
    rng = np.random.default_rng(7)
    lines, rows = [], []
    with h5py.File(feats / "new_clip_vit_32_tvr_vid_features.hdf5", "w") as vf, \
            h5py.File(text / "clip_ViT_B_32_tvr_query_feat.hdf5", "w") as qf:
        for v, video in enumerate(VIDEOS):
            vf.create_dataset(video, data=rng.standard_normal((8, 32)).astype(np.float32))
            for k, sentence in enumerate(TEXTS[v]):
                cap_id = f"{video}#enc#{1 - k}"  # numbering differs from the release's order
                lines.append(f"{cap_id} {sentence.lower().rstrip('.')}")
                qf.create_dataset(cap_id, data=rng.standard_normal(32).astype(np.float32))
                rows.append({"desc_id": 10 * v + k, "duration": 12.0, "ts": spans[v, k], "vid_name": video,
                             "desc": sentence})
    (text / "tvrtest.caption.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    release = root / "tvr_val_release.jsonl"
    release.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return release


def eval_json(root: Path) -> dict:
    args = ["eval", "--bundle", str(GOLDEN), "--data-root", str(root), "--dataset", "tvr", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_annotations_then_eval_gives_hand_computed_moment_metrics(tmp_path: Path) -> None:
    release = write_collection(tmp_path, {(v, k): [0.0, 12.0] for v in range(3) for k in range(2)})
    before = eval_json(tmp_path)
    meta = tmp_path / "tvr" / "TextData" / "tvr_meta.json"
    assert "mIoU" not in before and before["moment_spans"] == 0
    assert before["moment_skipped_reason"] == (
        f"no query of this split has a ground-truth [start, end] span (no {meta}; `prvr data annotations "
        f"--dataset tvr --from FILE... --data-root {tmp_path}` writes it from the public annotations)")

    result = runner.invoke(app, ["data", "annotations", "--dataset", "tvr", "--from", str(release),
                                 "--data-root", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["counts"] == {"captions": 6, "text": 6, "position": 0, "remaining": 0, "unmatched": 0,
                                "no_span": 0}
    assert report["written"] and report["path"] == str(meta) and report["fps"] == pytest.approx(1 / 1.5)
    written = json.loads(meta.read_text(encoding="utf-8"))
    assert written["captions"][f"{VIDEOS[0]}#enc#1"] == {"video_id": VIDEOS[0], "span": [0.0, 12.0],
                                                          "match": "text"}

    after = eval_json(tmp_path)
    assert after["moment_queries"] == 6 and after["moment_skipped"] == 0
    assert after["mIoU"] == pytest.approx(12.5) and after["R@1,IoU>=0.5"] == 0.0
    assert "moment_skipped_reason" not in after
    assert {k: after[k] for k in ("R@1", "SumR")} == {k: before[k] for k in ("R@1", "SumR")}


def test_moment_metrics_follow_the_matched_spans(tmp_path: Path) -> None:
    # Caption k of video v gets the first or second half of its 12 s video: IoU 0.25 when the winning
    # clip (1.5 s) lies in that half, else 0. The release lists k = 0, 1; the caption ids number them 1, 0.
    spans = {(v, k): [0.0, 6.0] if (v + k) % 2 == 0 else [6.0, 12.0] for v in range(3) for k in range(2)}
    release = write_collection(tmp_path, spans)
    args = ["data", "annotations", "--dataset", "tvr", "--from", str(release), "--data-root", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    got = eval_json(tmp_path)

    from prvr_sdk import Retriever
    from prvr_sdk.data import read_captions

    retriever = Retriever.from_bundle(GOLDEN, device="cpu")
    captions = read_captions(tmp_path / "tvr" / "TextData" / "tvrtest.caption.txt")
    with h5py.File(tmp_path / "tvr" / "FeatureData" / "new_clip_vit_32_tvr_vid_features.hdf5") as vf, \
            h5py.File(tmp_path / "tvr" / "TextData" / "clip_ViT_B_32_tvr_query_feat.hdf5") as qf:
        videos = retriever.encode_video({v: vf[v][()] for v in VIDEOS}, fps=1 / 1.5)
        queries = retriever.encode_text([qf[c.cap_id][()] for c in captions])
    _, best = retriever.score(queries, videos)
    ious = []
    for q, cap in enumerate(captions):
        v = VIDEOS.index(cap.video_id)
        k = 1 - int(cap.cap_id.rsplit("#", 1)[1])  # caption id n is the release's sentence 1 - n
        start, end = spans[v, k]
        clip = int(best[q, v])
        lo, hi = 1.5 * clip, 1.5 * (clip + 1)  # 8 frames -> 8 clips of one 1.5 s frame each
        overlap = max(0.0, min(hi, end) - max(lo, start))
        ious.append(overlap / (max(hi, end) - min(lo, start)))
    assert got["mIoU"] == pytest.approx(100 * np.mean(ious), abs=1e-9)
    assert got["R@1,IoU>=0.5"] == 0.0 and got["moment_queries"] == 6


def test_report_table_unmatched_and_overwrite(tmp_path: Path) -> None:
    release = write_collection(tmp_path, {(v, k): [0.0, 12.0] for v in range(3) for k in range(2)})
    rows = [json.loads(line) for line in release.read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["vid_name"] != VIDEOS[2]]  # met_* is not in this release
    # Sentence 0 of video 0 (caption #enc#1) differs in text; annotation #1 went to caption #enc#0 by
    # text, so it is paired as the one caption and annotation left.
    rows[0]["desc"] = "Ross slams the door."
    release.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ["data", "annotations", "--dataset", "tvr", "--from", str(release), "--data-root", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "matched by position or as the pair left (texts differ)" in out
    assert f"{VIDEOS[0]}#enc#1 [remaining]: 'ross opens the door' <- 'Ross slams the door.'" in out
    assert "2 captions not matched" in out and f"[test] {VIDEOS[2]}#enc#1: video not in the annotation" in out
    meta = json.loads((tmp_path / "tvr" / "TextData" / "tvr_meta.json").read_text(encoding="utf-8"))
    assert meta["captions"][f"{VIDEOS[0]}#enc#1"]["match"] == "remaining" and len(meta["captions"]) == 4

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite", "--json"]).exit_code == 0
    wrong = runner.invoke(app, ["data", "annotations", "--dataset", "charades", "--from", str(release),
                                "--data-root", str(tmp_path)])
    assert wrong.exit_code == 2 and "expected .txt or .csv" in wrong.output

    partial = eval_json(tmp_path)  # 4 of 6 queries have a span
    assert partial["moment_queries"] == 4 and partial["mIoU"] == pytest.approx(12.5)
    assert partial["moment_skipped_reason"] == "2 of 6 queries have no ground-truth span"


def test_data_help_lists_annotations() -> None:
    result = runner.invoke(app, ["data", "annotations", "--help"])
    assert result.exit_code == 0 and "--from" in result.stdout and "--overwrite" in result.stdout


def test_checkpoint_results_get_the_reason_with_the_runs_data_root(tmp_path: Path) -> None:
    from prvr_cli.evaluate import _run_data_root, _skip_reason

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data_root": str(tmp_path / "data")}), encoding="utf-8")
    assert _run_data_root(run / "best.pt", None) == tmp_path / "data"
    assert _run_data_root(run, None) == tmp_path / "data"
    assert _run_data_root(run / "best.pt", tmp_path / "given") == tmp_path / "given"
    assert _run_data_root(tmp_path / "elsewhere" / "best.pt", None) is None

    write_collection(tmp_path / "data", {(v, k): [0.0, 12.0] for v in range(3) for k in range(2)})
    counters = {"dataset": "tvr", "split": "test", "queries": 6, "moment_spans": 0, "moment_capable": 1}
    meta = tmp_path / "data" / "tvr" / "TextData" / "tvr_meta.json"
    assert f"(no {meta}; `prvr data annotations --dataset tvr" in \
        _skip_reason(counters, tmp_path / "data")["moment_skipped_reason"]
    assert _skip_reason(counters, None)["moment_skipped_reason"].endswith(
        "write it with `prvr data annotations`)")
    assert _skip_reason({**counters, "moment_capable": 0}, None) == {"moment_skipped_reason": (
        "the model scores whole videos and gives no winning clip, so it predicts no moments")}
    assert _skip_reason({**counters, "moment_spans": 6, "moment_skipped": 0}, None) == {}
