"""Tiny collections in the official MS-SL layouts (docs/models.md §1.1), written with numpy, h5py and plain
file writes only -- never with the code under test -- for the data-check tests (tests/sdk/data,
tests/cli/test_data_check.py, which loads this file by path: a conftest is not importable by name).

The writers follow tests/export/data/conftest.py: BigFile = shape.txt "N D", id.txt space-separated frame
ids, feature.bin float32 rows, video2frames.txt a dict literal; hdf5 files one dataset per id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# (dataset, BigFile folder, RoBERTa tokens, CLIP sentences, CLIP frames): the official names
NAMES = {
    "tvr": ("i3d_resnet", "roberta_tvr_query_feat.hdf5", "clip_ViT_B_32_tvr_query_feat.hdf5",
            "new_clip_vit_32_tvr_vid_features.hdf5"),
    "charades": ("i3d_rgb_lgi", "roberta_charades_query_feat.hdf5", "clip_ViT_B_32_charades_query_feat.hdf5",
                 "new_clip_vit_32_charades_vid_features.hdf5"),
}

# split -> videos (id, frames); captions per video = 2 (train), 1 (val, test)
VIDEOS = {
    "train": [("v_train_a", 5), ("v_train_b", 9), ("v_train_c", 3)],
    "val": [("v_val_a", 4), ("v_val_b", 7)],
    "test": [("v_test_a", 6), ("v_test_b", 8)],
}
FPS = 2.0


def write_bigfile(folder: Path, videos: dict[str, np.ndarray], dim: int) -> None:
    """MS-SL BigFile: shape.txt "N D", id.txt space-separated ids, feature.bin float32 rows, video2frames."""
    folder.mkdir(parents=True, exist_ok=True)
    ids, rows, video2frames = [], [], {}
    for video_id, frames in videos.items():
        names = [f"{video_id}_{t}" for t in range(len(frames))]
        video2frames[video_id] = names
        ids.extend(names)
        rows.extend(frames)
    data = np.asarray(rows, dtype=np.float32).reshape(len(ids), dim)
    (folder / "feature.bin").write_bytes(data.astype("<f4").tobytes())
    (folder / "id.txt").write_text(" ".join(ids))
    (folder / "shape.txt").write_text(f"{len(ids)} {dim}")
    (folder / "video2frames.txt").write_text(repr(video2frames))


def write_h5(path: Path, entries: dict[str, np.ndarray]) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in entries.items():
            f.create_dataset(key, data=value)


@dataclass
class Written:
    root: Path  # data root (holds <dataset>/)
    dataset: str
    videos: dict[str, np.ndarray]  # BigFile frames [Nf, dv]
    clip_videos: dict[str, np.ndarray]  # CLIP frames [Nf, dclip]
    captions: dict[str, list[tuple[str, str]]]  # split -> [(cap_id, text)]
    tokens: dict[str, np.ndarray] = field(default_factory=dict)
    sentences: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def collection(self) -> Path:
        return self.root / self.dataset

    @property
    def text(self) -> Path:
        return self.collection / "TextData"

    @property
    def features(self) -> Path:
        return self.collection / "FeatureData"

    def path(self, kind: str) -> Path:
        """"bigfile", "tokens", "sentences", "clip" or "meta": the file (folder) of that kind."""
        vfeat, tokens, sentences, clip = NAMES[self.dataset]
        return {
            "bigfile": self.features / vfeat, "tokens": self.text / tokens,
            "sentences": self.text / sentences, "clip": self.features / clip,
            "meta": self.text / f"{self.dataset}_meta.json",
        }[kind]


def write_collection(
    root: Path, dataset: str = "charades", *, dv: int = 6, dq: int = 5, dclip: int = 4, seed: int = 0,
    meta: bool = True,
) -> Written:
    """Write ``<root>/<dataset>/`` with every file MamFusion and AMDNet read; returns what was written."""
    import json

    rng = np.random.default_rng(seed)
    lengths = {v: n for split in VIDEOS.values() for v, n in split}
    videos = {v: rng.standard_normal((n, dv)).astype(np.float32) for v, n in lengths.items()}
    clip_videos = {v: rng.standard_normal((n, dclip)).astype(np.float32) for v, n in lengths.items()}
    captions = {
        split: [(f"{v}#{k}", f"a person does thing {k} in {v}") for v, _ in vids
                for k in range(2 if split == "train" else 1)]
        for split, vids in VIDEOS.items()
    }
    written = Written(root, dataset, videos, clip_videos, captions)
    written.text.mkdir(parents=True)
    for split, lines in captions.items():
        (written.text / f"{dataset}{split}.caption.txt").write_text("".join(f"{c} {t}\n" for c, t in lines))
    for lines in captions.values():
        for cap_id, _ in lines:
            written.tokens[cap_id] = rng.standard_normal((int(rng.integers(3, 9)), dq)).astype(np.float32)
            written.sentences[cap_id] = rng.standard_normal(dclip).astype(np.float32)
    write_h5(written.path("tokens"), written.tokens)
    write_h5(written.path("sentences"), written.sentences)
    write_bigfile(written.path("bigfile"), videos, dv)
    write_h5(written.path("clip"), clip_videos)
    if meta:
        doc = {
            "fps": FPS,
            "videos": {v: {"duration": n / FPS} for v, n in lengths.items()},
            "captions": {c: {"span": [0.0, 1.0]} for lines in captions.values() for c, _ in lines},
        }
        written.path("meta").write_text(json.dumps(doc))
    return written


def tiny_config(model: str, **overrides):
    """The data fields of ``model``'s config at the tiny widths of ``write_collection``'s defaults."""
    from types import SimpleNamespace

    if model == "mamfusion":
        fields = dict(query_type="tokens", video_source="bigfile", video_feat_dim=6, query_feat_dim=5)
    else:
        fields = dict(query_type="sentence", video_source="hdf5", video_feat_dim=4, query_feat_dim=4)
    fields.update(max_ctx_l=16, max_desc_l=30, num_clips=4)
    fields.update(overrides)
    return SimpleNamespace(**fields)
