"""The config fields that choose feature files (visual_feature, clip_feature_file, query_feature_file): they
go through the registry's override rule, default to the collection's names, refuse names that leave the
collection, and the readers and ``check_collection`` read the files they name (values equal to the file's).
Collections are written in the official layouts by tests/sdk/data/official_layout.py."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from prvr_export.data import open_dataset
from prvr_export.models.registry import config_to_dict, get_config, list_configs, resolve_config
from prvr_sdk.data.check import check_collection
from prvr_sdk.errors import InvalidInputError
from prvr_sdk.features import l2_normalize, pool_clips

pytest.importorskip("h5py")
FIELDS = ("visual_feature", "clip_feature_file", "query_feature_file")


def _layout():  # tests run with --import-mode=importlib: the helper module is loaded by path
    name = "prvr_tests_official_layout"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "sdk" / "data" / "official_layout.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


# small widths: MamFusion's charades config with 6-d frames and 5-d tokens, AMDNet's with 4-d CLIP
MAMFUSION = {"video_feat_dim": 6, "query_feat_dim": 5}
AMDNET = {"video_feat_dim": 4, "query_feat_dim": 4}


@pytest.mark.parametrize("key", list_configs())
def test_every_config_defaults_to_the_collection_names(key: str) -> None:
    model, dataset = key.split("-")
    config = get_config(model, dataset)
    assert {f: getattr(config, f) for f in FIELDS} == dict.fromkeys(FIELDS)
    assert {f: config_to_dict(config)[f] for f in FIELDS} == dict.fromkeys(FIELDS)


def test_fields_go_through_the_override_rule() -> None:
    config = resolve_config("mamfusion", "tvr", {"visual_feature": "clip_b32", "query_feature_file": "q.h5"})
    assert (config.visual_feature, config.query_feature_file, config.clip_feature_file) == (
        "clip_b32", "q.h5", None,
    )
    assert type(config)(**config_to_dict(config)) == config  # round trip (checkpoints, manifests)
    assert resolve_config("amdnet", "tvr", {"clip_feature_file": None}).clip_feature_file is None


@pytest.mark.parametrize("value", ["../tvr", "a/b", "..", ".", "", "x\\y", 3])
@pytest.mark.parametrize("field", FIELDS)
def test_names_leaving_the_collection_are_refused(field: str, value) -> None:
    with pytest.raises(InvalidInputError, match=f"config.{field} = "):
        resolve_config("mamfusion", "tvr", {field: value})


def test_non_default_visual_feature_is_read(tmp_path: Path) -> None:
    layout = _layout()
    w = layout.write_collection(tmp_path)
    rng = np.random.default_rng(7)
    other = {v: rng.standard_normal((len(f), 3)).astype(np.float32) for v, f in w.videos.items()}
    layout.write_bigfile(w.features / "clip_b32", other, 3)
    shutil.rmtree(w.path("bigfile"))  # the default folder is gone: only the named one can be read
    config = resolve_config("mamfusion", "charades",
                            {**MAMFUSION, "visual_feature": "clip_b32", "video_feat_dim": 3, "max_ctx_l": 32})
    data = open_dataset("charades", tmp_path, config)
    for video_id, written in other.items():
        np.testing.assert_array_equal(data.raw_video(video_id), written)
        np.testing.assert_allclose(data.video(video_id)["clips"], l2_normalize(pool_clips(written, 32)),
                                   rtol=0, atol=1e-7)
    report = check_collection("charades", tmp_path, {"mamfusion": config})
    assert report.ok, report.problems
    assert "charades/FeatureData/clip_b32/video2frames.txt" in report.files
    default = resolve_config("mamfusion", "charades", {**MAMFUSION, "max_ctx_l": 32})
    (problem,) = check_collection("charades", tmp_path, {"mamfusion": default}).problems
    assert (problem.file, problem.problem) == (
        "charades/FeatureData/i3d_rgb_lgi", "BigFile folder not found (config field visual_feature)"
    )


def test_non_default_clip_and_query_files_are_read(tmp_path: Path) -> None:
    layout = _layout()
    w = layout.write_collection(tmp_path)
    rng = np.random.default_rng(8)
    videos = {v: rng.standard_normal((len(f), 4)).astype(np.float32) for v, f in w.videos.items()}
    queries = {c: rng.standard_normal(4).astype(np.float32) for c in w.sentences}
    layout.write_h5(w.features / "my_clip_frames.hdf5", videos)
    layout.write_h5(w.text / "my_clip_sentences.hdf5", queries)
    w.path("clip").unlink()
    w.path("sentences").unlink()
    config = resolve_config("amdnet", "charades", {
        **AMDNET, "clip_feature_file": "my_clip_frames.hdf5", "query_feature_file": "my_clip_sentences.hdf5",
    })
    data = open_dataset("charades", tmp_path, config)
    for video_id, written in videos.items():
        np.testing.assert_array_equal(data.raw_video(video_id), written)
    for cap_id, written in queries.items():
        np.testing.assert_array_equal(data.raw_query(cap_id), written)
    report = check_collection("charades", tmp_path, {"amdnet": config})
    assert report.ok and {"charades/FeatureData/my_clip_frames.hdf5",
                          "charades/TextData/my_clip_sentences.hdf5"} <= set(report.files)


def test_mamfusion_on_clip_frames(tmp_path: Path) -> None:
    """MamFusion reading CLIP frame features (video_source hdf5 + clip_feature_file)."""
    w = _layout().write_collection(tmp_path)
    config = resolve_config("mamfusion", "charades", {
        **MAMFUSION, "video_source": "hdf5", "video_feat_dim": 4, "max_ctx_l": 32,
        "clip_feature_file": w.path("clip").name,
    })
    data = open_dataset("charades", tmp_path, config)
    for video_id, written in w.clip_videos.items():
        np.testing.assert_array_equal(data.raw_video(video_id), written)
    assert check_collection("charades", tmp_path, {"mamfusion": config}).ok
