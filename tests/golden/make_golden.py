"""Write the golden bundles: a tiny exported bundle per registered model, with torch outputs on fixed inputs.

The Retriever tests in ``tests/sdk/test_golden.py`` run on a serving-only install (no torch): they load
these bundles and compare what ONNX Runtime computes with what the torch model computed here. Regenerate
after a change to the models, the exporter or the manifest (``python tests/golden/make_golden.py``);
``tests/export/test_golden_fresh.py`` fails while the committed files are stale.

Each ``tests/golden/<model>/`` holds ``bundle/`` (an ordinary export, text front end left out) and
``golden.npz``: raw per-video frame features ``video_<i>`` of mixed lengths, query features ``query_<j>``,
and the torch model's unit embeddings of both, its scores and winning clips.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from prvr_export.models.registry import create_model, get_config, list_models
from prvr_export.onnx_export.bundle import export_bundle
from prvr_export.scoring import l2_normalize
from prvr_sdk.inputs import TextSpec, VideoSpec, pad_queries, pad_videos, prepare_query, prepare_video

HERE = Path(__file__).resolve().parent
LENGTHS = (1, 5, 12, 23)  # frames per video: shorter and longer than the clip count and frame cap
SEED = 0
# Small widths and lengths keep every bundle to a few hundred KB; applied to the fields a config has.
SMALL = {"d_model": 32, "n_blocks": 1, "video_feat_dim": 32, "query_feat_dim": 32, "num_clips": 8,
         "max_ctx_l": 16, "max_frames": 4, "max_desc_l": 8, "patch_grid": 2, "n_heads": 4, "d_state": 4,
         "expand": 1}


def small_overrides(name: str) -> dict:
    config = get_config(name, "demo")
    return {k: v for k, v in SMALL.items() if getattr(config, k, None) is not None}


def inputs(video_spec: VideoSpec, text_spec: TextSpec, rng: np.random.Generator):
    dim = video_spec.feature_dim
    shape = (dim,) if video_spec.patches is None else (video_spec.patches, dim)
    videos = [rng.standard_normal((n, *shape)).astype(np.float32) for n in LENGTHS]
    if text_spec.kind == "sentence":
        queries = [rng.standard_normal(text_spec.dim).astype(np.float32) for _ in range(5)]
    else:
        queries = [rng.standard_normal((int(n), text_spec.dim)).astype(np.float32) for n in (1, 3, 8, 11, 4)]
    return videos, queries


def make(name: str, root: Path = HERE) -> Path:
    """Write ``root/<name>/bundle`` and ``root/<name>/golden.npz``; returns ``root/<name>``."""
    from prvr_sdk import bundle as sdk_bundle

    torch.manual_seed(SEED)
    model = create_model(name, "demo", small_overrides(name)).eval()
    out = Path(root) / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    export_bundle(model, model.config, out / "bundle", model_name=name, dataset="demo", text_frontend=None,
                  fps=1.0)
    manifest = sdk_bundle.load(out / "bundle").manifest
    video_spec, text_spec = VideoSpec.from_manifest(manifest), TextSpec.from_manifest(manifest)
    videos, queries = inputs(video_spec, text_spec, np.random.default_rng(SEED))
    spec = model.serving_spec()
    batch = pad_videos([prepare_video(v, video_spec) for v in videos])
    qbatch = pad_queries([prepare_query(q, text_spec) for q in queries])
    with torch.no_grad():
        encoded = model.encode_video(**{k: torch.from_numpy(batch[k]) for k in spec.video.input_names})
        text = model.encode_text(*(torch.from_numpy(qbatch[k]) for k in spec.text.input_names))
        scores, best = model.score(text, encoded)
    arrays = {f"video_{i}": v for i, v in enumerate(videos)}
    arrays |= {f"query_{j}": q for j, q in enumerate(queries)}
    arrays["text_emb"] = l2_normalize(text).numpy()
    for key, value in encoded.items():
        arrays[key] = (l2_normalize(value) if key.endswith("_emb") else value).numpy()
    arrays["scores"] = scores.numpy()
    if best is not None:
        arrays["best"] = best.numpy()
    np.savez(out / "golden.npz", **arrays)
    return out


def main() -> None:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list_models())
    for name in parser.parse_args().models:
        out = make(name)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"{name}: {out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
