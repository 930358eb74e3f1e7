"""Tiny collections written in exactly the real layouts (docs/models.md §1.1), independent of the code
under test.

The writers here use only numpy, h5py and plain file writes, so a reader bug cannot hide behind a matching
writer bug.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

DV, DQ, DCLIP = 6, 5, 4  # tiny widths: I3D-style video, RoBERTa-style tokens, CLIP-style vectors


def _official_layout():
    """tests/sdk/data/official_layout.py, which holds the BigFile and hdf5 writers (loaded by path: the tests
    run with --import-mode=importlib)."""
    name = "prvr_tests_official_layout"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "sdk" / "data" / "official_layout.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


write_bigfile = _official_layout().write_bigfile  # shape.txt, id.txt, feature.bin, video2frames.txt
write_h5 = _official_layout().write_h5


@dataclass
class TinyCollection:
    """What was written, to compare the readers' output against."""

    root: Path  # data root (holds tvr/)
    videos: dict[str, np.ndarray]  # video_id -> [Nf, DV]
    clip_videos: dict[str, np.ndarray]  # video_id -> [Nf, DCLIP]
    patches: dict[str, np.ndarray]  # video_id -> [Nf, 1+4, DCLIP]
    captions: dict[str, list[tuple[str, str]]]  # split -> [(cap_id, text)]
    tokens: dict[str, np.ndarray] = field(default_factory=dict)  # cap_id -> [n_tok, DQ]
    sentences: dict[str, np.ndarray] = field(default_factory=dict)  # cap_id -> [DCLIP]

    dv: int = DV
    dq: int = DQ
    dclip: int = DCLIP

    @property
    def collection(self) -> Path:
        return self.root / "tvr"


@pytest.fixture
def tiny_tvr(tmp_path: Path) -> TinyCollection:
    """A "tvr" collection: 5 videos (2 train, 2 val, 1 test) with 3..70 frames, captions of 1..3 per video."""
    rng = np.random.default_rng(0)
    lengths = {"castle_s01e01_seg00_clip_00": 3, "friends_s02e03_seg01_clip_04": 70, "met_s03e01_clip_07": 40}
    lengths |= {"bbt_s01e01_clip_01": 12, "house_s02e02_clip_02": 33}
    videos = {v: rng.standard_normal((n, DV)).astype(np.float32) for v, n in lengths.items()}
    clip_videos = {v: rng.standard_normal((n, DCLIP)).astype(np.float32) for v, n in lengths.items()}
    patches = {v: rng.standard_normal((n, 5, DCLIP)).astype(np.float32) for v, n in lengths.items()}
    v = list(lengths)
    captions = {
        "train": [
            (f"{v[0]}#enc#0", "Castle opens the door."),
            (f"{v[1]}#enc#0", "Ross sits on the couch   and   talks."),
            (f"{v[0]}#enc#1", "Beckett walks in"),
            (f"{v[1]}#enc#1", "Rachel laughs"),
            (f"{v[1]}#enc#2", "Monica cooks dinner in the kitchen"),
        ],
        "val": [
            (f"{v[2]}#enc#0", "Ted points at the board"),
            (f"{v[3]}#enc#0", "Sheldon knocks three times"),
        ],
        "test": [(f"{v[4]}#enc#0", "House limps down the hall"), (f"{v[4]}#enc#1", "Wilson eats lunch")],
    }
    collection = tmp_path / "tvr"
    text_dir, feat_dir = collection / "TextData", collection / "FeatureData"
    text_dir.mkdir(parents=True)
    for split, lines in captions.items():
        (text_dir / f"tvr{split}.caption.txt").write_text("".join(f"{c} {t}\n" for c, t in lines))
    all_caps = [c for lines in captions.values() for c, _ in lines]
    tiny = TinyCollection(tmp_path, videos, clip_videos, patches, captions)
    for cap_id in all_caps:
        n_tok = int(rng.integers(3, 40))  # some longer than max_desc_l = 30
        tiny.tokens[cap_id] = (3.0 * rng.standard_normal((n_tok, DQ))).astype(np.float32)
        tiny.sentences[cap_id] = rng.standard_normal(DCLIP).astype(np.float32)
    write_h5(text_dir / "roberta_tvr_query_feat.hdf5", tiny.tokens)
    write_h5(text_dir / "clip_ViT_B_32_tvr_query_feat.hdf5", tiny.sentences)
    write_bigfile(feat_dir / "i3d_resnet", videos, DV)
    write_h5(feat_dir / "new_clip_vit_32_tvr_vid_features.hdf5", clip_videos)
    write_h5(feat_dir / "patch_tokens.hdf5", patches)
    return tiny


@pytest.fixture
def make_config():
    """``make_config(**overrides)``: the data fields of a MamFusion-like config at the tiny widths."""
    return _config


def _config(**overrides) -> SimpleNamespace:
    fields = dict(
        query_type="tokens",
        video_source="bigfile",
        video_feat_dim=DV,
        query_feat_dim=DQ,
        max_ctx_l=16,
        max_desc_l=30,
        num_clips=32,
        normalize_video=True,
        normalize_query=True,
    )
    fields.update(overrides)
    return SimpleNamespace(**fields)
