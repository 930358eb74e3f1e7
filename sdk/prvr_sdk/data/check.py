"""Check a collection folder before training: every file a model will read, for every split, in one pass.

The readers (``prvr_sdk.data.captions``, ``prvr_sdk.sources``) stop at the first problem, which on a real
dataset is found only when training or evaluation reaches it (a test video missing from
``video2frames.txt`` shows up after the last epoch). ``check_collection`` reads the same files the same way
but keeps going, and returns *all* problems at once as a ``CheckReport`` of ``Problem`` rows (file, problem,
how many, first examples, severity, the ``--config`` override that fixes it when there is one):

* captions of each split: missing file, lines that are not UTF-8, lines without text, repeated caption ids;
* query features (hdf5 under TextData/): an entry for every caption id, numeric, the config's width;
* video features: a BigFile (``shape.txt`` vs ``feature.bin`` size, ``id.txt`` count, duplicate frame ids,
  the width, ``video2frames.txt`` covering every split's videos with frames that ``id.txt`` holds) or an
  hdf5 file (AMDNet's CLIP frames, MUSE's patch tokens) with every split's videos at the config's shape;
* moment annotations (``TextData/<collection>_meta.json``): absence is a warning (moment metrics are then
  skipped); when present it must parse, and evaluation captions without a span or videos without timing
  are counted.

Only declared shapes are read from hdf5 files (``deep=True`` also reads every value for NaN/Inf), so a
check of a real collection costs seconds plus one pass over ``id.txt`` and ``video2frames.txt``.
Torch-free; ``prvr data check`` prints the report and ``prvr train`` runs it first.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prvr_sdk.data.captions import Caption, read_meta, read_video2frames, scan_captions
from prvr_sdk.data.collection import Collection, DataSettings, parse_span
from prvr_sdk.data.layout import SPLITS, caption_path, collection_root, missing_feature_hint
from prvr_sdk.errors import BackendUnavailableError, InvalidInputError
from prvr_sdk.limits import check_array, check_limits, check_text_file
from prvr_sdk.progress import progress

__all__ = ["MAX_EXAMPLES", "CheckReport", "Problem", "check_collection", "check_error_message"]

MAX_EXAMPLES = 5  # examples kept per problem
ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    """One kind of problem in one file.

    Attributes:
        file: the file, relative to the data root where it lies under it.
        problem: what is wrong, in words.
        count: how many entries (lines, ids, videos) have it; 1 for a whole-file problem.
        examples: the first few entries (at most ``MAX_EXAMPLES``).
        severity: ``"error"`` (training or evaluation would fail or be wrong) or ``"warning"``.
        fix: a command-line fix (e.g. ``--config video_feat_dim=1024``) or a hint, when there is one.
        models: the models whose reading found it.
    """

    file: str
    problem: str
    count: int = 1
    examples: tuple[str, ...] = ()
    severity: str = ERROR
    fix: str | None = None
    models: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "problem": self.problem, "count": self.count, "examples": list(self.examples),
            "severity": self.severity, "fix": self.fix, "models": list(self.models),
        }


@dataclass
class CheckReport:
    """What ``check_collection`` found: the problems (errors first) and the files it read."""

    dataset: str
    data_root: str
    models: tuple[str, ...]
    problems: list[Problem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # read, relative to data_root

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors

    def fixes(self) -> list[str]:
        """The distinct ``--config`` overrides the problems suggest."""
        return list(dict.fromkeys(p.fix for p in self.problems if p.fix and p.fix.startswith("--config")))

    def summary(self) -> str:
        """One line: ``N errors, M warnings in dataset D (models ...)``."""
        return (
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s) in {self.dataset} "
            f"under {self.data_root} (models: {', '.join(self.models) or '-'})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "data_root": self.data_root, "models": list(self.models),
            "ok": self.ok, "errors": len(self.errors), "warnings": len(self.warnings),
            "problems": [p.to_dict() for p in self.problems], "fixes": self.fixes(), "files": self.files,
        }


def check_collection(
    dataset: str,
    data_root: str | os.PathLike,
    configs: Mapping[str, Any],
    *,
    deep: bool = False,
    max_frames: int | None = None,
    max_bytes: int | None = None,
    show_progress: bool | None = None,
) -> CheckReport:
    """Check everything the models ``configs`` (model name -> config) read in ``<data_root>/<dataset>``.

    Args:
        dataset: a collection name of ``prvr_sdk.data.layout.DATASETS``.
        data_root: the folder holding ``<dataset>/``.
        configs: the configs of the models that will read it (any objects with the data fields).
        deep: also read every feature value and report NaN/Inf (slow on real collections).
        max_frames, max_bytes: the ``prvr_sdk.limits`` the readers will apply.
        show_progress: progress bars on stderr (``None``: when stderr is a terminal).

    Returns:
        The report; problems are never raised (``report.ok`` says whether training can start).
    Raises:
        InvalidInputError: an unknown dataset, or bad limits.
        BackendUnavailableError: h5py is not installed and a model reads hdf5 files.
    """
    check_limits(max_frames, max_bytes)
    checker = _Checker(dataset, Path(data_root), deep, max_frames, max_bytes, show_progress)
    return checker.run(dict(configs))


# --- the checker ------------------------------------------------------------------------------------------


def _examples(items: Iterable[Any]) -> tuple[str, ...]:
    out = []
    for item in items:
        out.append(str(item))
        if len(out) == MAX_EXAMPLES:
            break
    return tuple(out)


class _Checker:
    """One run: caches what several models share (captions, files) and merges their problems."""

    def __init__(
        self, dataset: str, data_root: Path, deep: bool, max_frames: int | None, max_bytes: int | None,
        show_progress: bool | None,
    ) -> None:
        self.dataset = dataset
        self.data_root = data_root
        self.deep = deep
        self.max_frames, self.max_bytes = check_limits(max_frames, max_bytes)
        self.show = show_progress
        self.problems: dict[tuple[str, str, str], Problem] = {}
        self.files: list[str] = []
        self.model = ""
        self.captions: dict[str, list[Caption]] = {}
        self.done: set[tuple[Any, ...]] = set()  # (file, expectation) already checked

    # -- recording -----------------------------------------------------------------------------------------

    def rel(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.data_root).as_posix()
        except ValueError:
            return str(path)

    def add(self, path: Path | str, problem: str, items: Iterable[Any] | int = 1, *,
            severity: str = ERROR, fix: str | None = None) -> None:
        """Record a problem (``items``: the entries that have it, or a count for a whole-file problem)."""
        if isinstance(items, int):
            count, examples = items, ()
        else:
            items = list(items)
            if not items:
                return
            count, examples = len(items), _examples(items)
        file = self.rel(Path(path)) if isinstance(path, Path) else path
        key = (file, problem, severity)
        previous = self.problems.get(key)
        models = (previous.models if previous else ()) + ((self.model,) if self.model else ())
        self.problems[key] = Problem(file, problem, count, examples, severity, fix,
                                     tuple(dict.fromkeys(models)))

    def read(self, path: Path) -> None:
        name = self.rel(path)
        if name not in self.files:
            self.files.append(name)

    def first_time(self, *key: Any) -> bool:
        if key in self.done:
            return False
        self.done.add(key)
        return True

    # -- the run -------------------------------------------------------------------------------------------

    def run(self, configs: dict[str, Any]) -> CheckReport:
        report = CheckReport(self.dataset, str(self.data_root), tuple(configs))
        try:
            collection_root(self.data_root, self.dataset)
        except InvalidInputError as exc:
            root = self.data_root / self.dataset
            self.add(str(root), _without_path(exc, root))
            report.problems = list(self.problems.values())
            return report
        self.check_captions()
        first = None
        for name, config in configs.items():
            self.model = name
            try:
                collection = Collection(self.dataset, self.data_root, config, cache=False)
                collection.feature_names()
            except InvalidInputError as exc:
                self.add(f"config of {name}", str(exc))
                continue
            first = first or collection
            self.check_queries(collection)
            self.check_videos(collection)
        self.model = ""
        if first is not None:  # captions and moments are the same for every model
            self.check_meta(first)
        every = tuple(configs)  # captions are read by every model
        problems = [p if p.models else dataclasses.replace(p, models=every) for p in self.problems.values()]
        report.problems = sorted(problems, key=lambda p: p.severity != ERROR)
        report.files = self.files
        return report

    # -- captions ------------------------------------------------------------------------------------------

    def check_captions(self) -> None:
        present = {s: caption_path(self.data_root, self.dataset, s).is_file() for s in SPLITS}
        for split in SPLITS:
            path = caption_path(self.data_root, self.dataset, split)
            if not present[split]:
                if split == "val":
                    self.add(path, "no val captions: validation (model selection) will use the test split",
                             severity=WARNING)
                elif split == "test" and present["val"]:
                    self.add(path, "no test captions: prvr eval --split test will fail", severity=WARNING)
                else:
                    self.add(path, f"{split} caption file not found")
                continue
            self.read(path)
            try:
                captions, issues = scan_captions(path, self.max_bytes)
            except InvalidInputError as exc:
                self.add(path, _without_path(exc, path))
                continue
            self.captions[split] = captions
            kinds = {
                "utf8": "lines that are not UTF-8 text (save the file as UTF-8)",
                "no_text": "lines without '<cap_id> <text>'",
                "duplicate": "caption ids that appear twice",
                "empty": "the file holds no captions",
            }
            for kind, problem in kinds.items():
                bad = [i for i in issues if i.kind == kind]
                if kind == "empty" and bad:
                    self.add(path, problem)
                elif kind != "empty":
                    self.add(path, problem, [f"line {i.line}: {i.detail}" for i in bad])

    def caption_ids(self) -> list[str]:
        return list(dict.fromkeys(c.cap_id for split in SPLITS for c in self.captions.get(split, ())))

    def video_ids(self, split: str) -> list[str]:
        return list(dict.fromkeys(c.video_id for c in self.captions.get(split, ())))

    # -- hdf5 ----------------------------------------------------------------------------------------------

    def open_h5(self, path: Path, field_name: str, what: str):
        """The open h5py file, or None after recording why not."""
        if not path.exists():
            hint = missing_feature_hint(self.dataset, path.name)
            self.add(path, f"{what} not found (config field {field_name})", fix=hint or None)
            return None
        try:
            import h5py
        except ImportError as exc:
            raise BackendUnavailableError("h5py", "onnx", str(exc)) from None
        self.read(path)
        try:
            return h5py.File(path, "r")
        except OSError as exc:
            self.add(path, f"cannot open as hdf5 ({exc})")
            return None

    def scan_h5(self, h5: Any, path: Path, keys: list[str], expected: tuple[int | None, ...], what: str,
                kind: str, dim_field: str) -> None:
        """Check ``keys`` of an open hdf5 file against ``expected`` (the entry shape, None = any size).

        Records missing keys, groups, non-numeric dtypes, over-limit sizes, empty entries, wrong shapes
        (one problem, with ``--config <dim_field>=D`` when they differ only in a last axis they agree on)
        and, with ``deep``, NaN/Inf.
        """
        import h5py

        missing, groups, bad_dtype, too_big, empty, nonfinite = [], [], [], [], [], []
        wrong: dict[str, list[str]] = {}
        last_dims: set[int | None] = set()
        with progress(len(keys), f"{self.rel(path)}", self.show) as advance:
            for key in keys:
                advance(1)
                try:
                    node = h5.get(key)
                except (OSError, KeyError, ValueError, RuntimeError):
                    node = None
                if node is None:
                    missing.append(key)
                    continue
                if not isinstance(node, h5py.Dataset):
                    groups.append(key)
                    continue
                shape = tuple(node.shape or ())
                if node.dtype.kind not in "iuf":
                    bad_dtype.append(f"{key}: dtype {node.dtype}")
                    continue
                try:
                    check_array(shape, node.dtype, key, max_frames=self.max_frames, max_bytes=self.max_bytes)
                except InvalidInputError as exc:
                    too_big.append(str(exc))
                    continue
                got = shape[1:] if len(expected) == 1 and len(shape) == 2 and shape[0] == 1 else shape
                if len(got) != len(expected) or any(
                    e is not None and e != a for e, a in zip(expected, got, strict=False)
                ):
                    wrong.setdefault(_shape_label(shape, got, expected), []).append(key)
                    only_last = len(got) == len(expected) and all(
                        e is None or e == a for e, a in zip(expected[:-1], got[:-1], strict=True))
                    last_dims.add(got[-1] if only_last and got else None)
                    continue
                if len(got) >= 2 and got[0] == 0:
                    empty.append(key)
                    continue
                if self.deep:
                    try:
                        values = np.asarray(node[()], dtype=np.float32)
                    except (OSError, ValueError, TypeError, RuntimeError) as exc:
                        too_big.append(f"{key}: unreadable ({exc})")
                        continue
                    if not np.isfinite(values).all():
                        nonfinite.append(key)
        self.add(path, f"{kind} ids without an entry", missing)
        self.add(path, "groups where a dataset of features belongs", groups)
        self.add(path, f"{what} that are not numbers", bad_dtype)
        self.add(path, "entries over the size limits or unreadable", too_big)
        self.add(path, f"{what} with 0 rows", empty)
        self.add(path, f"{what} holding NaN or Inf", nonfinite)
        if wrong:
            shapes = ", ".join(list(wrong)[:3]) + (" ..." if len(wrong) > 3 else "")
            want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
            (dim,) = last_dims if len(last_dims) == 1 else (None,)
            self.add(path, f"{what} of shape {shapes}, expected {want} ({dim_field} {expected[-1]})",
                     [k for ks in wrong.values() for k in ks],
                     fix=None if dim is None else f"--config {dim_field}={dim}")

    # -- query features ------------------------------------------------------------------------------------

    def check_queries(self, collection: Collection) -> None:
        s = collection.settings
        path = collection.query_path()
        tokens = s.query_type == "tokens"
        expected: tuple[int | None, ...] = (None, s.query_feat_dim) if tokens else (s.query_feat_dim,)
        if not self.first_time("query", path, expected):
            return
        what = f"{s.query_type} query features"
        h5 = self.open_h5(path, "query_feature_file", what)
        if h5 is None:
            return
        with h5:
            self.scan_h5(h5, path, self.caption_ids(), expected, what, "caption", "query_feat_dim")

    # -- video features ------------------------------------------------------------------------------------

    def check_videos(self, collection: Collection) -> None:
        s = collection.settings
        path = collection.video_path()
        names = collection.feature_names()
        if s.video_source == "bigfile":
            if self.first_time("bigfile", path, s.video_feat_dim):
                self.check_bigfile(path, s, names.video_field)
            return
        grid = int(s.patch_grid or 0)
        expected = (None, s.video_feat_dim) if s.video_source == "hdf5" else (None, 1 + grid * grid,
                                                                             s.video_feat_dim)
        if not self.first_time("video", path, expected):
            return
        what = "video features" if s.video_source == "hdf5" else "patch tokens"
        h5 = self.open_h5(path, names.video_field, what)
        if h5 is None:
            return
        with h5:
            for split in SPLITS:
                ids = self.video_ids(split)
                if not ids:
                    continue
                self.scan_h5(h5, path, ids, expected, f"{split} {what}", f"{split} video", "video_feat_dim")

    def check_bigfile(self, folder: Path, s: DataSettings, field_name: str) -> None:
        if not folder.is_dir():
            hint = missing_feature_hint(self.dataset, folder.name)
            self.add(folder, f"BigFile folder not found (config field {field_name})", fix=hint or None)
            return
        files = {n: folder / n for n in ("shape.txt", "id.txt", "feature.bin", "video2frames.txt")}
        for name, path in files.items():
            if not path.is_file():
                self.add(path, f"BigFile {name} not found")
        shape = self.bigfile_shape(files["shape.txt"]) if files["shape.txt"].is_file() else None
        if shape is not None:
            n, d = shape
            if d != s.video_feat_dim:
                self.add(files["shape.txt"], f"feature dim D = {d}, the config expects video_feat_dim = "
                                             f"{s.video_feat_dim}", fix=f"--config video_feat_dim={d}")
            if files["feature.bin"].is_file():
                self.read(files["feature.bin"])
                size = files["feature.bin"].stat().st_size
                if size != n * d * 4:
                    rows = f" ({size / (4 * d):g} rows of D = {d})" if d else ""
                    self.add(files["feature.bin"], f"{size} bytes{rows}, shape.txt says N*D*4 = {n}*{d}*4 = "
                                                   f"{n * d * 4}")
        ids = self.bigfile_ids(files["id.txt"], shape) if files["id.txt"].is_file() else None
        if files["video2frames.txt"].is_file():
            self.check_video2frames(files["video2frames.txt"], ids, shape[1] if shape else None)

    def bigfile_shape(self, path: Path) -> tuple[int, int] | None:
        self.read(path)
        if path.stat().st_size > 256:
            self.add(path, "expected 'N D' (two integers), got a larger file")
            return None
        parts = path.read_bytes().decode("ascii", errors="replace").split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            self.add(path, f"expected 'N D' (two integers), got {' '.join(parts)[:40]!r}")
            return None
        return int(parts[0]), int(parts[1])

    def bigfile_ids(self, path: Path, shape: tuple[int, int] | None) -> set[str] | None:
        self.read(path)
        try:
            check_text_file(path, "id.txt", self.max_bytes)
        except InvalidInputError as exc:
            self.add(path, _without_path(exc, path))
            return None
        ids = path.read_bytes().decode("iso-8859-1").split()  # as MS-SL reads it
        if shape is not None and len(ids) != shape[0]:
            self.add(path, f"holds {len(ids)} frame ids, shape.txt says N = {shape[0]}")
        counts = Counter(ids)
        self.add(path, "frame ids that appear more than once (the reader refuses them)",
                 [f"{i} (x{c})" for i, c in counts.items() if c > 1])
        return set(counts)

    def check_video2frames(self, path: Path, ids: set[str] | None, dim: int | None) -> None:
        self.read(path)
        try:
            video2frames = read_video2frames(path, self.max_bytes)
        except InvalidInputError as exc:
            self.add(path, _without_path(exc, path))
            return
        for split in SPLITS:
            videos = self.video_ids(split)
            self.add(path, f"{split} videos without an entry (every video of a caption file needs one)",
                     [v for v in videos if v not in video2frames])
            listed = [v for v in videos if v in video2frames]
            self.add(path, f"{split} videos with 0 frames", [v for v in listed if not video2frames[v]])
            over = [v for v in listed if len(video2frames[v]) > self.max_frames]
            self.add(path, f"{split} videos with more than {self.max_frames} frames (raise --max-frames)",
                     over)
            if ids is not None:
                unknown = [f"{v}: {f}" for v in listed for f in video2frames[v] if f not in ids]
                self.add(path, f"frame ids of {split} videos that id.txt lacks", unknown)

    # -- moment annotations --------------------------------------------------------------------------------

    def check_meta(self, collection: Collection) -> None:
        path = collection.meta_path()
        if path is None:
            return
        if not path.is_file():
            self.add(path, "no moment annotations: moment metrics (mIoU, R@1,IoU) will be skipped",
                     severity=WARNING,
                     fix=f"prvr data annotations --dataset {self.dataset} --from FILE... --data-root "
                         f"{self.data_root}")
            return
        self.read(path)
        try:
            meta = read_meta(path, self.max_bytes)
        except InvalidInputError as exc:
            self.add(path, _without_path(exc, path))
            return
        spans = meta.get("captions", {})
        if not isinstance(meta.get("videos", {}), dict):
            self.add(path, "'videos' is not an object")
            return
        for split in ("val", "test"):
            captions = self.captions.get(split, [])
            if not captions:
                continue
            entries = {c.cap_id: spans.get(c.cap_id) for c in captions}
            entries = {k: (v.get("span") if isinstance(v, dict) else v) for k, v in entries.items()}
            self.add(path, f"{split} captions without a span (left out of the moment metrics)",
                     [k for k, v in entries.items() if v is None], severity=WARNING)
            bad = [f"{k}: {v!r}"[:80] for k, v in entries.items() if v is not None and parse_span(v) is None]
            self.add(path, f"{split} spans that are not [start, end] seconds with 0 <= start <= end", bad)
            untimed, broken = [], []
            for video_id in self.video_ids(split):
                try:
                    if collection.timing(video_id) is None:
                        untimed.append(video_id)
                except (TypeError, ValueError, AttributeError):
                    broken.append(video_id)
            self.add(path, f"{split} videos without fps and duration or num_frames (moment metrics skip "
                           "them)", untimed, severity=WARNING)
            self.add(path, f"{split} videos whose fps / duration / num_frames are not numbers", broken)


def _without_path(exc: Exception, path: Path) -> str:
    """The message of ``exc`` without the leading ``<path>: `` (the table's file column says it)."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _shape_label(shape: tuple[int, ...], got: tuple[int, ...], expected: tuple[int | None, ...]) -> str:
    """``[*, 768]``: a wrong shape with the axes the config leaves free shown as ``*`` (so entries of any
    length fall in one group)."""
    if len(got) != len(expected):
        return "[" + ", ".join(str(a) for a in shape) + "]"
    return "[" + ", ".join("*" if e is None else str(a) for e, a in zip(expected, got, strict=True)) + "]"


def check_error_message(report: CheckReport, limit: int = 3) -> str:
    """One line for the error that stops ``prvr train``: the first ``limit`` errors, each with its first
    entries as ``<file>:<entry>`` locations."""
    parts = []
    for p in report.errors[:limit]:
        name = p.file.rsplit("/", 1)[-1]
        where = ", ".join(e if " " in e else f"{name}:{e}" for e in p.examples[:2])
        parts.append(f"{p.file}: {p.problem} ({p.count}{'; first ' + where if where else ''})")
    more = len(report.errors) - limit
    tail = f"; and {more} more" if more > 0 else ""
    return f"data check found {len(report.errors)} error(s): " + "; ".join(parts) + tail
