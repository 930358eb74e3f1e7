"""Moment annotations from the public releases -> ``TextData/<collection>_meta.json`` (docs/models.md §1.6).

Why: moment metrics (mIoU, R@1 at IoU >= 0.5) need each caption's ``[start, end]`` seconds, each video's
duration and the feature rate, which the MS-SL feature bundle does not ship. The public annotation releases
have them, but keyed by their own ids and texts. This module reads those releases, matches every caption id
of the collection's caption files to one annotation, and writes the metadata file that
``prvr_sdk.data.read_meta`` / ``Collection.span`` / ``Collection.timing`` read::

    {"dataset": "tvr", "fps": 0.667,                        # feature rows per second (when known)
     "source": {...},                                       # what was read, how fps/durations were found
     "videos": {video_id: {"duration": seconds}},
     "captions": {cap_id: {"video_id": ..., "span": [start, end], "match": "text" | "position"}}}

Inputs (``--from``): TVR ``tvr_*_release.jsonl`` (``vid_name``, ``desc``, ``ts``, ``duration``); ActivityNet
Captions ``train.json`` / ``val_1.json`` / ``val_2.json`` (``{video_id: {duration, timestamps,
sentences}}``); Charades-STA ``charades_sta_*.txt`` (``VID start end##sentence``) plus, for durations,
Charades' ``Charades_v1_*.csv`` (``id``, ``length``).

Matching, per video: first by caption text (lower case, whitespace collapsed, trailing periods dropped) to
an unclaimed annotation of the same video in file order; the rest by position (the caption id's trailing
number, ``<vid>#enc#<n>``, is the n-th annotation of the video, 0-based); when exactly one caption and
one annotation of a video are then left, they are paired ("remaining"). The counts per strategy, examples
of position / remaining matches (their texts differ, by definition) and every caption that could not be
matched are reported; nothing is matched silently.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prvr_sdk.data.captions import Caption, read_captions, read_video2frames
from prvr_sdk.data.layout import FEATURE_FPS, SPLITS, caption_path, collection_files
from prvr_sdk.errors import InvalidInputError
from prvr_sdk.fsutil import atomic_write
from prvr_sdk.limits import check_text_file

__all__ = [
    "ANNOTATION_DATASETS",
    "KNOWN_FPS",
    "Annotation",
    "AnnotationSet",
    "Conversion",
    "convert_annotations",
    "match_captions",
    "meta_path",
    "normalise_text",
    "read_annotations",
]

ANNOTATION_DATASETS = ("tvr", "activitynet", "charades")
# Feature rows per second where the release documents them (prvr_sdk.data.layout.FEATURE_FPS: TVR one per
# 1.5 s clip); the others are estimated from video2frames.txt or taken from --fps.
KNOWN_FPS: dict[str, float] = {d: FEATURE_FPS[d] for d in ANNOTATION_DATASETS if d in FEATURE_FPS}
EXAMPLES = 10  # examples kept per report list
FPS_TOLERANCE = 0.1  # relative disagreement between the used and the estimated rate that is reported


@dataclass(frozen=True)
class Annotation:
    """One annotated sentence: its video, text, span (None when absent or invalid) and where it was read."""

    video_id: str
    text: str
    span: tuple[float, float] | None
    where: str  # "file:line" (or "file:video[k]")


@dataclass
class AnnotationSet:
    """Annotations per video in file order, durations, and the lines that were rejected (with reasons)."""

    videos: dict[str, list[Annotation]] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def add(self, ann: Annotation) -> None:
        self.videos.setdefault(ann.video_id, []).append(ann)

    def set_duration(self, video_id: str, value: Any, where: str) -> None:
        seconds = _number(value)
        if seconds is None or seconds <= 0:
            self.problems.append(f"{where}: duration {value!r} is not a positive number (ignored)")
        else:
            self.durations.setdefault(video_id, seconds)


def normalise_text(text: str) -> str:
    """The matching key of a sentence: lower case, whitespace collapsed, trailing periods dropped."""
    return " ".join(text.lower().split()).rstrip(". ")


def meta_path(data_root: str | os.PathLike, dataset: str) -> Path:
    """``<data_root>/<dataset>/TextData/<dataset>_meta.json`` (the layout table's ``meta`` name)."""
    name = collection_files(dataset).meta or f"{dataset}_meta.json"
    return Path(data_root) / dataset / "TextData" / name


# --- readers of the public releases -------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _span(value: Any, where: str, problems: list[str]) -> tuple[float, float] | None:
    if value is None:
        return None
    pair = value if isinstance(value, list | tuple) and len(value) == 2 else None
    start, end = (_number(pair[0]), _number(pair[1])) if pair else (None, None)
    if start is None or end is None:
        problems.append(f"{where}: span {value!r} is not [start, end] seconds (caption kept without span)")
        return None
    if start < 0 or end < start:
        problems.append(f"{where}: span [{start}, {end}] has start < 0 or end < start (kept without span)")
        return None
    return start, end


def _read_text(path: Path, max_bytes: int | None) -> str:
    check_text_file(path, "annotation file", max_bytes)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _read_tvr(path: Path, out: AnnotationSet, max_bytes: int | None) -> None:
    for lineno, line in enumerate(_read_text(path, max_bytes).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise InvalidInputError(f"{path}:{lineno}: not a JSON object (expected TVR's jsonl)") from None
        if not isinstance(row, dict) or not isinstance(row.get("vid_name"), str) \
                or not isinstance(row.get("desc"), str):
            raise InvalidInputError(f"{path}:{lineno}: expected an object with 'vid_name' and 'desc' strings")
        out.add(Annotation(row["vid_name"], row["desc"], _span(row.get("ts"), where, out.problems), where))
        if "duration" in row:
            out.set_duration(row["vid_name"], row["duration"], where)


def _read_activitynet(path: Path, out: AnnotationSet, max_bytes: int | None) -> None:
    try:
        data = json.loads(_read_text(path, max_bytes))
    except (ValueError, RecursionError):
        raise InvalidInputError(f"{path}: not valid JSON (expected ActivityNet Captions' train/val json)") \
            from None
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"{path}: expected an object {{video_id: {{duration, timestamps, sentences}}}}"
        )
    for video_id, entry in data.items():
        where = f"{path.name}:{video_id}"
        if not isinstance(entry, dict) or not isinstance(entry.get("sentences"), list) \
                or not isinstance(entry.get("timestamps"), list):
            raise InvalidInputError(
                f"{path}: video {video_id!r}: expected 'timestamps' and 'sentences' lists"
            )
        sentences, stamps = entry["sentences"], entry["timestamps"]
        if len(sentences) != len(stamps) or not all(isinstance(s, str) for s in sentences):
            raise InvalidInputError(
                f"{path}: video {video_id!r}: {len(sentences)} sentences but {len(stamps)} timestamps "
                "(or a sentence that is not a string)"
            )
        for k, (text, stamp) in enumerate(zip(sentences, stamps, strict=True)):
            out.add(Annotation(video_id, text, _span(stamp, f"{where}[{k}]", out.problems), f"{where}[{k}]"))
        if "duration" in entry:
            out.set_duration(video_id, entry["duration"], where)


def _read_charades(path: Path, out: AnnotationSet, max_bytes: int | None) -> None:
    for lineno, line in enumerate(_read_text(path, max_bytes).splitlines(), 1):
        if not line.strip():
            continue
        head, sep, text = line.partition("##")
        parts = head.split()
        if not sep or len(parts) != 3 or not text.strip():
            raise InvalidInputError(
                f"{path}:{lineno}: expected 'VID start end##sentence' (Charades-STA), got {line[:80]!r}"
            )
        where = f"{path.name}:{lineno}"
        out.add(Annotation(parts[0], text.strip(), _span(parts[1:], where, out.problems), where))


def _read_charades_csv(path: Path, out: AnnotationSet, max_bytes: int | None) -> None:
    reader = csv.DictReader(io.StringIO(_read_text(path, max_bytes)))
    if not reader.fieldnames or "id" not in reader.fieldnames or "length" not in reader.fieldnames:
        raise InvalidInputError(f"{path}: expected Charades' csv with 'id' and 'length' columns")
    for lineno, row in enumerate(reader, 2):
        out.set_duration(row["id"], row["length"], f"{path.name}:{lineno}")


_READERS = {  # dataset -> {suffix: reader}
    "tvr": {".jsonl": _read_tvr},
    "activitynet": {".json": _read_activitynet},
    "charades": {".txt": _read_charades, ".csv": _read_charades_csv},
}


def read_annotations(
    dataset: str, paths: list[str | os.PathLike], max_bytes: int | None = None
) -> AnnotationSet:
    """Read the release files of ``dataset`` (chosen by suffix; see the module docstring).

    Raises:
        InvalidInputError: unknown dataset, no or missing file, a suffix the dataset has no reader for, or a
            file that is not in the official format (naming the file and line).
    """
    if dataset not in _READERS:
        raise InvalidInputError(
            f"--dataset {dataset!r}: annotations can be converted for {', '.join(ANNOTATION_DATASETS)}"
        )
    if not paths:
        raise InvalidInputError("no annotation file given (--from)")
    out = AnnotationSet()
    for raw in paths:
        path = Path(raw)
        reader = _READERS[dataset].get(path.suffix.lower())
        if reader is None:
            raise InvalidInputError(
                f"{path}: not a {dataset} annotation file; expected {' or '.join(_READERS[dataset])}"
            )
        if not path.is_file():
            raise InvalidInputError(f"{path}: annotation file not found")
        reader(path, out, max_bytes)
        out.files.append(path.name)
    if not out.videos:
        raise InvalidInputError(f"{', '.join(out.files)}: no annotated sentence found")
    return out


# --- matching caption ids to annotations ----------------------------------------------------------------


def _caption_number(cap_id: str) -> int | None:
    tail = cap_id.rsplit("#", 1)[-1] if "#" in cap_id else ""
    return int(tail) if tail.isdigit() else None


def _video_alias(dataset: str, video_id: str, known: dict[str, list[Annotation]]) -> str | None:
    """ActivityNet ids are ``v_<youtube id>``; accept caption files written with or without the prefix."""
    if dataset != "activitynet":
        return None
    other = video_id[2:] if video_id.startswith("v_") else f"v_{video_id}"
    return other if other in known else None


def match_captions(
    captions: list[Caption], annotations: AnnotationSet, dataset: str = ""
) -> tuple[dict[str, tuple[Annotation, str]], list[dict[str, str]]]:
    """Match each caption to one annotation of its video: by text, then by position, then the pair left.

    Returns:
        ``({cap_id: (annotation, "text" | "position" | "remaining")}, unmatched)``; each unmatched entry is
        ``{"cap_id", "caption", "reason"}``.
    """
    by_video: OrderedDict[str, list[Caption]] = OrderedDict()
    for cap in captions:
        by_video.setdefault(cap.video_id, []).append(cap)
    matched: dict[str, tuple[Annotation, str]] = {}
    unmatched: list[dict[str, str]] = []
    for video_id, caps in by_video.items():
        key = video_id if video_id in annotations.videos else \
            _video_alias(dataset, video_id, annotations.videos)
        if key is None:
            reason = "video not in the annotation files"
            unmatched += [{"cap_id": c.cap_id, "caption": c.text, "reason": reason} for c in caps]
            continue
        anns = annotations.videos[key]
        taken = [False] * len(anns)
        rest = []
        for cap in caps:  # pass 1: same video, same normalised text, first unclaimed in file order
            want = normalise_text(cap.text)
            k = next((i for i, a in enumerate(anns) if not taken[i] and normalise_text(a.text) == want), None)
            if k is None:
                rest.append(cap)
            else:
                taken[k] = True
                matched[cap.cap_id] = (anns[k], "text")
        left = []
        for cap in rest:  # pass 2: the caption id's number (else its order) indexes the video's annotations
            n = _caption_number(cap.cap_id)
            n = caps.index(cap) if n is None else n
            if n < len(anns) and not taken[n]:
                taken[n] = True
                matched[cap.cap_id] = (anns[n], "position")
            else:
                left.append((cap, n))
        free = [i for i, t in enumerate(taken) if not t]
        if len(left) == 1 and len(free) == 1:  # pass 3: the one caption left and the one annotation left
            taken[free[0]] = True
            matched[left[0][0].cap_id] = (anns[free[0]], "remaining")
            continue
        for cap, n in left:
            why = "matched to another caption" if n < len(anns) else \
                f"the video has only {len(anns)} annotation(s)"
            unmatched.append({
                "cap_id": cap.cap_id, "caption": cap.text,
                "reason": f"no annotation of {key} with this text, and annotation #{n} is unavailable "
                          f"({why}); {len(free)} of its annotations are left for {len(left)} captions",
            })
    return matched, unmatched


# --- the conversion --------------------------------------------------------------------------------------


@dataclass
class Conversion:
    """What ``convert_annotations`` wrote (``meta``, ``path``) and its report (``to_dict`` for --json)."""

    path: Path
    meta: dict[str, Any]
    splits: dict[str, dict[str, int]]
    unmatched: list[dict[str, str]]
    position_examples: list[dict[str, str]]
    no_span: list[str]
    problems: list[str]
    missing_splits: list[str]
    fps: float | None
    fps_source: str
    durations: dict[str, int]
    notes: list[str]
    written: bool

    @property
    def counts(self) -> dict[str, int]:
        """Totals over the splits: ``captions``, ``text``, ``position``, ``remaining``, ``unmatched``,
        ``no_span``."""
        keys = ("captions", "text", "position", "remaining", "unmatched", "no_span")
        return {k: sum(s[k] for s in self.splits.values()) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "written": self.written,
            "dataset": self.meta["dataset"],
            "splits": self.splits,
            "counts": self.counts,
            "missing_splits": self.missing_splits,
            "fps": self.fps,
            "fps_source": self.fps_source,
            "durations": self.durations,
            "unmatched": len(self.unmatched),
            "unmatched_examples": self.unmatched[:EXAMPLES],
            "position_examples": self.position_examples[:EXAMPLES],
            "no_span_examples": self.no_span[:EXAMPLES],
            "problems": len(self.problems),
            "problem_examples": self.problems[:EXAMPLES],
            "notes": self.notes,
        }


def _video_frames(data_root: Path, dataset: str) -> tuple[dict[str, int] | None, Path]:
    vfeat = collection_files(dataset).vfeat
    path = data_root / dataset / "FeatureData" / (vfeat or "") / "video2frames.txt"
    if vfeat is None or not path.is_file():
        return None, path
    return {vid: len(frames) for vid, frames in read_video2frames(path).items()}, path


def _choose_fps(
    dataset: str, fps: float | None, durations: dict[str, float], frames: dict[str, int] | None,
    frames_path: Path, notes: list[str],
) -> tuple[float | None, str]:
    rates = [frames[v] / d for v, d in durations.items() if frames and v in frames and d > 0]
    estimate = statistics.median(rates) if rates else None
    if fps is not None:
        chosen, source = float(fps), "--fps"
    elif dataset in KNOWN_FPS:
        chosen = KNOWN_FPS[dataset]
        source = f"the {dataset} feature release (one row per {1 / chosen:g} s)"
    elif estimate is not None:
        chosen = estimate
        source = f"estimated from {frames_path} (median frames/duration over {len(rates)} videos)"
    else:
        notes.append(
            f"feature rate unknown: no --fps and no {frames_path} to estimate it from; moment metrics will "
            "be skipped until the metadata has 'fps' (rerun with --fps)"
        )
        return None, "unknown"
    if estimate is not None and chosen is not estimate and abs(chosen - estimate) > FPS_TOLERANCE * chosen:
        notes.append(
            f"fps {chosen:g} ({source}) disagrees with {estimate:g} estimated from {frames_path}; "
            "check --fps"
        )
    return chosen, source


def convert_annotations(
    dataset: str,
    sources: list[str | os.PathLike],
    data_root: str | os.PathLike,
    *,
    fps: float | None = None,
    overwrite: bool = False,
    write: bool = True,
    max_bytes: int | None = None,
) -> Conversion:
    """Convert the release files ``sources`` into ``TextData/<dataset>_meta.json`` under ``data_root``.

    Args:
        dataset: "tvr", "activitynet" or "charades".
        sources: the release files (``--from``), see the module docstring.
        data_root: the folder holding ``<dataset>/TextData/<dataset>{train,val,test}.caption.txt``.
        fps: feature rows per second of the video features; default the release's known rate (TVR), else
            estimated from the BigFile's ``video2frames.txt`` and the durations, else none (reported).
        overwrite: replace an existing metadata file.
        write: False to only build and report (nothing written).
    Returns:
        The ``Conversion`` (meta written, per-split counts, unmatched captions, examples, notes).
    Raises:
        InvalidInputError: bad dataset/files (see ``read_annotations``), no caption file, no caption matched,
            ``fps`` not positive, or an existing metadata file without ``overwrite``.
    """
    root = Path(data_root)
    if dataset not in ANNOTATION_DATASETS:
        raise InvalidInputError(
            f"--dataset {dataset!r}: annotations can be converted for {', '.join(ANNOTATION_DATASETS)}"
        )
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise InvalidInputError(f"--fps {fps!r}: expected a positive number of feature rows per second")
    target = meta_path(root, dataset)
    if write and target.exists() and not overwrite:
        raise InvalidInputError(f"{target} exists; pass --overwrite to replace it")
    annotations = read_annotations(dataset, sources, max_bytes)
    present = [s for s in SPLITS if caption_path(root, dataset, s).is_file()]
    if not present:
        raise InvalidInputError(
            f"no caption file under {root / dataset / 'TextData'} (expected {dataset}{{train,val,test}}"
            ".caption.txt); --data-root is the folder that holds "
            f"{dataset}/"
        )
    meta: dict[str, Any] = {"dataset": dataset}
    captions_out: dict[str, dict[str, Any]] = {}
    video_order: OrderedDict[str, str] = OrderedDict()  # caption-file video id -> annotation video id
    splits: dict[str, dict[str, int]] = {}
    unmatched_all: list[dict[str, str]] = []
    position_examples: list[dict[str, str]] = []
    no_span: list[str] = []
    for split in present:
        captions = read_captions(caption_path(root, dataset, split), max_bytes)
        matched, unmatched = match_captions(captions, annotations, dataset)
        counts = {"captions": len(captions), "text": 0, "position": 0, "remaining": 0,
                  "unmatched": len(unmatched), "no_span": 0}
        for cap in captions:
            if cap.cap_id not in matched:
                continue
            ann, how = matched[cap.cap_id]
            counts[how] += 1
            video_order.setdefault(cap.video_id, ann.video_id)
            if how != "text" and len(position_examples) < EXAMPLES:
                position_examples.append({"cap_id": cap.cap_id, "caption": cap.text, "match": how,
                                          "annotation": ann.text, "where": ann.where})
            if ann.span is None:
                counts["no_span"] += 1
                no_span.append(f"{cap.cap_id} ({ann.where})")
                continue
            entry = {"video_id": cap.video_id, "span": list(ann.span), "match": how}
            captions_out.setdefault(cap.cap_id, entry)
        splits[split] = counts
        unmatched_all += [{"split": split, **u} for u in unmatched]
    if not any(s["text"] + s["position"] + s["remaining"] for s in splits.values()):
        raise InvalidInputError(
            f"no caption of {dataset} matched an annotation of {', '.join(annotations.files)} (are these the "
            f"{dataset} release files?); first caption without a match: "
            f"{unmatched_all[0]['cap_id'] if unmatched_all else '-'}"
        )
    notes: list[str] = []
    frames, frames_path = _video_frames(root, dataset)
    durations = {v: annotations.durations[a] for v, a in video_order.items() if a in annotations.durations}
    chosen_fps, fps_source = _choose_fps(dataset, fps, durations, frames, frames_path, notes)
    duration_counts = {"annotations": len(durations), "video2frames": 0, "missing": 0}
    videos_out: dict[str, dict[str, float]] = {}
    for video_id in video_order:
        if video_id in durations:
            videos_out[video_id] = {"duration": durations[video_id]}
        elif frames and video_id in frames and chosen_fps:
            videos_out[video_id] = {"duration": frames[video_id] / chosen_fps}
            duration_counts["video2frames"] += 1
        else:
            duration_counts["missing"] += 1
    if duration_counts["video2frames"]:
        notes.append(f"{duration_counts['video2frames']} durations computed as video2frames.txt frames / fps")
    if duration_counts["missing"]:
        hint = " (pass Charades_v1_{train,test}.csv via --from)" if dataset == "charades" else ""
        notes.append(
            f"{duration_counts['missing']} videos have no duration{hint}; their captions get no moment "
            "metrics"
        )
    if chosen_fps is not None:
        meta["fps"] = chosen_fps
    meta["source"] = {
        "tool": "prvr data annotations",
        "files": annotations.files,
        "fps": fps_source,
        "match": "video id + normalised caption text, else the caption id's number as position in the video, "
                 "else the one caption and annotation left in the video",
    }
    meta["videos"] = videos_out
    meta["captions"] = captions_out
    if write:
        text = json.dumps(meta, indent=1, ensure_ascii=False) + "\n"
        try:
            atomic_write(target, text, overwrite=overwrite)
        except FileExistsError:
            raise InvalidInputError(f"{target} exists; pass --overwrite to replace it") from None
        except OSError as exc:
            raise InvalidInputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    return Conversion(
        path=target, meta=meta, splits=splits, unmatched=unmatched_all,
        position_examples=position_examples, no_span=no_span, problems=annotations.problems,
        missing_splits=[s for s in SPLITS if s not in present],
        fps=chosen_fps, fps_source=fps_source, durations=duration_counts, notes=notes, written=write,
    )
