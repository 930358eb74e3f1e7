"""Build TensorRT engines for a bundle's two encoders and record them in its manifest.

``build_engines(bundle)`` writes ``engines/<role>.<precision>.<sm_XX>.plan`` (one per encoder) and a timing
cache beside them (``engines/timing.cache``, reused by later builds, not listed), lists the engines in the
manifest (``role``, ``format: "tensorrt"``, ``precision``, and
``engine: {tensorrt, gpu, compute_capability, profiles, scan}``) and re-seals it with
``prvr_sdk.bundle.write_manifest``, so ``Retriever.from_bundle(..., backend="tensorrt")`` finds them.

Choices, and why:

- **Strongly typed networks** (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): TensorRT 11 removed the
  implicit FP16/INT8 builder flags, so precision is what the ONNX graph says. ``fp16`` therefore converts
  the graph to float16 first (``onnxconverter_common.float16``, graph inputs/outputs kept float32), with
  ``SelectiveScan`` on the block list: casts keep the scan's inputs and output in float32, where its state
  must stay (docs/deploy-notes.md §4).
- **The scan as a plugin by default**: ``prvr_plugins.trt_plugin.register`` is called first, and the
  build fails if the parsed network holds loop layers (the function body's ``Scan``), so an engine never
  silently falls back to the slow body. ``scan="function"`` asks for
  that body on purpose (for comparisons): it removes the nodes' ``plugin_namespace`` attribute, which is
  what makes the parser prefer a registered plugin.
- **Profiles from the serving spec**: each graph input's symbolic axes (``batch``, ``frames``,
  ``tokens``) get min/opt/max from the manifest (``video_input.max_frames``, ``text_input.max_tokens``)
  and batch defaults sized to the Retriever's default batches; users override per input, trtexec-style
  (``clips:1x32x512``), and an override of one input moves the named axis of every input sharing it.
- Everything is built in memory first; files are written (atomically) and the manifest re-sealed only
  after every engine built, so a failed build leaves the bundle as it was. A rebuild first unlists the
  engines it replaces, so the manifest never names a file whose bytes it does not describe.

Pure parts (shape parsing, profile derivation, names, manifest entries) are plain functions tested without
TensorRT; the rest needs TensorRT and a GPU and is tested in ``tests/gpu``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prvr_sdk.errors import BackendUnavailableError, BundleError, InvalidInputError, PrvrError
from prvr_sdk.serving import GraphSpec, ServingSpec

__all__ = [
    "DEFAULT_BATCH",
    "PRECISIONS",
    "ROLES",
    "SCAN_IMPLS",
    "TIMING_CACHE",
    "BuildResult",
    "Profile",
    "build_engines",
    "check_requirements",
    "derive_profile",
    "engine_entry",
    "engine_name",
    "graph_for_tensorrt",
    "merge_files",
    "parse_shapes",
    "scan_kind",
    "source_graph",
]

log = logging.getLogger(__name__)

ROLES = ("video_encoder", "text_encoder")
PRECISIONS = ("fp32", "fp16")
SCAN_IMPLS = ("plugin", "function")
# (min, opt, max) batch per graph: opt = the Retriever's default batch (encode_video 16, encode_text 64);
# larger batches are split by the TensorRT session, so max only bounds memory.
DEFAULT_BATCH: dict[str, tuple[int, int, int]] = {"video_encoder": (1, 16, 64), "text_encoder": (1, 64, 256)}
TIMING_CACHE = "engines/timing.cache"
_GRAPH_OF_ROLE = {"video_encoder": "video", "text_encoder": "text"}

Shape = tuple[int, ...]
Range = tuple[int, int, int]


# --------------------------------------------------------------------------- plain rules
def parse_shapes(specs: str | Sequence[str] | None, flag: str = "--shapes") -> dict[str, Shape]:
    """``"clips:1x32x512,query:4x32x384"`` (or a list of such strings) -> ``{name: (1, 32, 512), ...}``.

    The trtexec spelling, so the same strings work with ``trtexec --minShapes``.

    Raises:
        InvalidInputError: a malformed item or a name given twice (naming ``flag``).
    """
    if specs is None:
        return {}
    items = [specs] if isinstance(specs, str) else list(specs)
    out: dict[str, Shape] = {}
    for item in (part.strip() for text in items for part in text.split(",")):
        if not item:
            continue
        name, sep, dims = item.rpartition(":")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims):
            raise InvalidInputError(f"{flag}: expected NAME:AxBxC (e.g. clips:1x32x512), got {item!r}")
        if name in out:
            raise InvalidInputError(f"{flag}: input {name!r} given twice")
        shape = tuple(int(d) for d in dims.split("x"))
        if any(d < 1 for d in shape):
            raise InvalidInputError(f"{flag}: {item!r}: every dimension must be >= 1")
        out[name] = shape
    return out


def axis_defaults(role: str, manifest: Mapping[str, Any]) -> dict[str, Range]:
    """Default (min, opt, max) of each named axis of ``role``'s graph, from the manifest."""
    out: dict[str, Range] = {"batch": DEFAULT_BATCH[role]}
    frames = (manifest.get("video_input") or {}).get("max_frames")
    tokens = (manifest.get("text_input") or {}).get("max_tokens")
    # Videos and queries are padded to the longest in their batch, and long ones are sampled down to the
    # maximum, so full-length inputs are the common case: tune for them.
    if isinstance(frames, int) and frames >= 1:
        out["frames"] = (1, frames, frames)
    if isinstance(tokens, int) and tokens >= 1:
        out["tokens"] = (1, tokens, tokens)
    return out


def _axis_overrides(graph: GraphSpec, shapes: Mapping[str, Shape], flag: str) -> dict[str, int]:
    """Values of named axes given by ``shapes`` for this graph's inputs (fixed dims must match)."""
    values: dict[str, int] = {}
    for name, shape in shapes.items():
        spec = graph.inputs.get(name)
        if spec is None:
            continue
        if len(shape) != len(spec):
            raise InvalidInputError(f"{flag} {name}: rank {len(shape)}, the graph input is {list(spec)}")
        for dim, want in zip(shape, spec, strict=True):
            if isinstance(want, int):
                if dim != want:
                    raise InvalidInputError(f"{flag} {name}: {list(shape)} does not fit {list(spec)} "
                                            f"(a fixed dimension is {want})")
            elif values.setdefault(want, dim) != dim:
                raise InvalidInputError(f"{flag}: axis {want!r} is {values[want]} in one input and {dim} in "
                                        f"{name!r}")
    return values


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: per input ``(min, opt, max)`` shapes, in graph input order."""

    inputs: dict[str, tuple[Shape, Shape, Shape]]

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {n: {"min": list(a), "opt": list(b), "max": list(c)} for n, (a, b, c) in self.inputs.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Sequence[int]]]) -> Profile:
        return cls({n: (tuple(v["min"]), tuple(v["opt"]), tuple(v["max"])) for n, v in d.items()})


def derive_profile(
    role: str,
    graph: GraphSpec,
    manifest: Mapping[str, Any],
    min_shapes: Mapping[str, Shape] | None = None,
    opt_shapes: Mapping[str, Shape] | None = None,
    max_shapes: Mapping[str, Shape] | None = None,
) -> Profile:
    """The profile of ``role``'s graph: named axes from ``axis_defaults``, overridden per input.

    Given values win; defaults that would break ``min <= opt <= max`` are clamped into what was given
    (``--max-shapes clips:8x...`` alone lowers opt to 8). Fixed dimensions come from the spec.

    Raises:
        InvalidInputError: a given shape that does not fit the graph, axes that disagree, min > opt > max.
        BundleError: an axis with no default and no given value.
    """
    defaults = axis_defaults(role, manifest)
    given = [_axis_overrides(graph, s or {}, flag) for s, flag in
             ((min_shapes, "--min-shapes"), (opt_shapes, "--opt-shapes"), (max_shapes, "--max-shapes"))]
    axes = {d for spec in graph.inputs.values() for d in spec if isinstance(d, str)}
    ranges: dict[str, Range] = {}
    for axis in sorted(axes):
        if axis not in defaults and not all(axis in g for g in given):
            raise BundleError(f"{role}: no default size for axis {axis!r}; give it with --min-shapes, "
                              "--opt-shapes and --max-shapes")
        lo, opt, hi = (g.get(axis) for g in given)
        d_lo, d_opt, d_hi = defaults.get(axis, (lo, opt, hi))
        hi = hi if hi is not None else max([d_hi, *(v for v in (lo, opt) if v is not None)])
        opt = opt if opt is not None else min(max(d_opt, lo or 1), hi)
        lo = lo if lo is not None else min(d_lo, opt)
        if not 1 <= lo <= opt <= hi:
            raise InvalidInputError(f"{role}: axis {axis!r} needs 1 <= min <= opt <= max, "
                                    f"got {lo}, {opt}, {hi}")
        ranges[axis] = (lo, opt, hi)

    def shape(spec: tuple[int | str, ...], k: int) -> Shape:
        return tuple(d if isinstance(d, int) else ranges[d][k] for d in spec)

    return Profile({n: (shape(s, 0), shape(s, 1), shape(s, 2)) for n, s in graph.inputs.items()})


def check_override_names(spec: ServingSpec, *shape_sets: Mapping[str, Shape]) -> None:
    """Every overridden input must belong to one of the two graphs (typos are errors, not no-ops)."""
    known = set(spec.video.inputs) | set(spec.text.inputs)
    for shapes in shape_sets:
        unknown = sorted(set(shapes) - known)
        if unknown:
            raise InvalidInputError(f"unknown input(s) {unknown}; the graphs take {sorted(known)}")


def engine_name(role: str, precision: str, arch: str) -> str:
    """``engines/<role>.<precision>.<sm_XX>.plan``: one file per role, precision and GPU architecture."""
    if role not in ROLES or precision not in PRECISIONS or not re.fullmatch(r"sm_\d+", arch):
        raise InvalidInputError(f"engine name: bad role/precision/arch {role!r}, {precision!r}, {arch!r}")
    return f"engines/{role}.{precision}.{arch}.plan"


def engine_entry(role: str, precision: str, *, tensorrt: str, gpu: str, compute_capability: str,
                 profiles: Sequence[Profile], scan: str | None) -> dict[str, Any]:
    """The manifest ``files`` entry of one engine (``bytes``/``sha256`` are added by ``write_manifest``)."""
    return {
        "role": role,
        "format": "tensorrt",
        "precision": precision,
        "engine": {
            "tensorrt": tensorrt,
            "gpu": gpu,
            "compute_capability": compute_capability,
            "profiles": [p.to_dict() for p in profiles],
            "scan": scan,
        },
    }


def merge_files(files: Mapping[str, Any], new: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest's files with ``new`` added; an entry of the same name (a rebuild) is replaced."""
    merged = {k: dict(v) for k, v in files.items() if k not in new}
    merged.update({k: dict(v) for k, v in new.items()})
    return merged


def source_graph(files: Mapping[str, Mapping[str, Any]], role: str) -> str:
    """The fp32 ONNX graph of ``role`` an engine is built from."""
    for name, entry in files.items():
        if (entry.get("role") == role and entry.get("format", "onnx") == "onnx"
                and entry.get("precision", "fp32") == "fp32"):
            return name
    raise BundleError(f"the bundle has no fp32 ONNX graph for {role!r}")


# --------------------------------------------------------------------------- requirements
def check_requirements(precision: str = "fp32", scan: str = "plugin", has_scan: bool = True) -> None:
    """Raise ``BackendUnavailableError`` (exit 3), naming what is missing, unless this machine can build.

    Needs: ``tensorrt`` (>= 10.12) importable and a CUDA GPU; ``triton`` when the plugin kernel must be
    compiled (graphs with a scan, ``scan="plugin"``); ``onnx`` (+ ``onnxconverter-common`` for fp16) when
    the graph is rewritten before parsing (``fp16`` or ``scan="function"``).
    """
    from prvr_plugins.trt_plugin import check_tensorrt_version
    from prvr_sdk.backends.tensorrt import device_compute_capability

    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError("tensorrt", "gpu", f"tensorrt does not import: {exc}") from None
    try:
        check_tensorrt_version(trt.__version__)
    except ValueError as exc:
        raise BackendUnavailableError("tensorrt", "gpu", str(exc)) from None
    if device_compute_capability(0) is None:
        raise BackendUnavailableError("tensorrt", "gpu", "no CUDA GPU is visible (libcudart found none)")
    needed = {"triton": has_scan and scan == "plugin", "onnx": precision == "fp16" or scan == "function",
              "onnxconverter_common": precision == "fp16"}
    missing = [m for m, need in needed.items() if need and importlib.util.find_spec(m) is None]
    if missing:
        pip = " ".join(m.replace("_", "-") for m in missing)
        raise BackendUnavailableError("tensorrt", "gpu",
                                      f"building these engines needs {missing} (pip install {pip})")


# --------------------------------------------------------------------------- building (TensorRT)
@dataclass
class BuildResult:
    """What ``build_engines`` did: engine files, the new manifest digest, and whether a signature broke."""

    bundle: Path
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> entry (+ build_seconds)
    manifest_sha256: str = ""
    timing_cache: str = TIMING_CACHE
    signature_invalidated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "engines": self.engines,
            "manifest_sha256": self.manifest_sha256,
            "timing_cache": self.timing_cache,
            "signature_invalidated": self.signature_invalidated,
        }


def _implicit_float_nodes(model: Any) -> list[str]:
    """Nodes whose float32 output type is fixed by an attribute the fp16 converter leaves alone:
    ``Cast(to=FLOAT)`` (the exporter's shape arithmetic) and ``ConstantOfShape`` without ``value`` (float
    zeros, e.g. the scan's missing ``D``). The converter would retype their outputs as float16 anyway, a
    graph ONNX Runtime and TensorRT reject; on its node block list they stay float32."""
    import onnx

    out = []
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Cast" and "to" in attrs and attrs["to"].i == onnx.TensorProto.FLOAT:
            out.append(node.name)
        elif node.op_type == "ConstantOfShape" and "value" not in attrs:
            out.append(node.name)
    if any(not name for name in out):
        raise PrvrError("fp16 conversion needs named nodes (every exported graph names them)")
    return out


def graph_for_tensorrt(path: Path, precision: str, scan: str) -> bytes:
    """The ONNX model TensorRT parses: as exported, or converted to fp16, or with the plugin hint removed."""
    if precision == "fp32" and scan == "plugin":
        return path.read_bytes()
    import onnx

    model = onnx.load(str(path))
    if scan == "function":
        for node in model.graph.node:
            if node.domain == "prvr" and node.op_type == "SelectiveScan":
                keep = [a for a in node.attribute if a.name != "plugin_namespace"]
                del node.attribute[:]
                node.attribute.extend(keep)
    if precision == "fp16":
        from onnxconverter_common import float16

        blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | {"SelectiveScan"})
        model = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked,
                                                 node_block_list=_implicit_float_nodes(model))
    return model.SerializeToString()


_LOOP_LAYERS = ("RECURRENCE", "ITERATOR", "TRIP_LIMIT", "LOOP_OUTPUT")


def scan_kind(layer_types: Sequence[str]) -> str | None:
    """How a parsed network runs its scans, from its layer type names: ``"plugin"`` (plugin layers),
    ``"function"`` (loop layers: the ``Scan`` of the function body; our graphs have no other loop), or
    ``None`` (no scan, e.g. AMDNet). Both at once means some scans fell back to the body."""
    plugins = any(t.startswith("PLUGIN") for t in layer_types)
    loops = any(t in _LOOP_LAYERS for t in layer_types)
    if plugins and loops:
        return "mixed"
    return "plugin" if plugins else "function" if loops else None


def _build_one(trt: Any, logger: Any, model: bytes, onnx_path: Path, profile: Profile, workspace_gib: float,
               cache: Any, scan: str) -> tuple[bytes, Any, str | None]:
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if hasattr(trt.NetworkDefinitionCreationFlag, "PREFER_AOT_PYTHON_PLUGINS"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if scan == "plugin" and hasattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE"):
        parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
    if not parser.parse(model, str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise PrvrError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    kind = scan_kind([network.get_layer(i).type.name for i in range(network.num_layers)])
    if kind not in (scan, None):
        raise PrvrError(f"{onnx_path.name}: the selective scan was imported as {kind!r}, {scan!r} was asked "
                        "for (is the prvr::SelectiveScan plugin registered, TensorRT >= 10.12?)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.set_timing_cache(cache, False)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.inputs.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise PrvrError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    return bytes(plan), config.get_timing_cache(), kind


def build_engines(
    bundle_dir: str | os.PathLike,
    precision: str = "fp32",
    min_shapes: Mapping[str, Shape] | None = None,
    opt_shapes: Mapping[str, Shape] | None = None,
    max_shapes: Mapping[str, Shape] | None = None,
    workspace_gib: float = 4.0,
    scan: str = "plugin",
) -> BuildResult:
    """Build both encoders' engines for this machine's GPU, add them to the bundle and re-seal it.

    Args:
        bundle_dir: a sealed bundle (``prvr export``); verified (sha256) before anything is built.
        precision: ``"fp32"`` or ``"fp16"`` (graph converted to float16, scan kept in float32).
        min_shapes / opt_shapes / max_shapes: per-input overrides, e.g. ``{"clips": (1, 32, 512)}``.
        workspace_gib: TensorRT's workspace memory pool limit.
        scan: ``"plugin"`` (the AOT kernel; required to appear in the network) or ``"function"``.

    Returns:
        ``BuildResult``; ``signature_invalidated`` is true when the bundle had a ``signature.json``:
        re-sealing changed ``manifest_sha256``, so the bundle must be signed again.

    Raises:
        InvalidInputError: bad precision, scan, shapes or workspace. BundleError / ChecksumError: bad bundle.
        BackendUnavailableError: no TensorRT, no GPU, or (fp16) no converter. PrvrError: parse/build failed.
    """
    from prvr_sdk import bundle as bundle_io
    from prvr_sdk.fsutil import atomic_write

    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    if scan not in SCAN_IMPLS:
        raise InvalidInputError(f"scan: expected one of {list(SCAN_IMPLS)}, got {scan!r}")
    if not workspace_gib > 0:
        raise InvalidInputError(f"workspace: expected a positive number of GiB, got {workspace_gib!r}")
    bundle = bundle_io.load(bundle_dir)
    spec = ServingSpec.from_manifest(bundle.manifest, where=f"bundle {bundle.path}")
    shape_sets = [s or {} for s in (min_shapes, opt_shapes, max_shapes)]
    check_override_names(spec, *shape_sets)
    graphs = {"video_encoder": spec.video, "text_encoder": spec.text}
    profiles = {role: derive_profile(role, graphs[role], bundle.manifest, *shape_sets) for role in ROLES}
    sources = {role: source_graph(bundle.files, role) for role in ROLES}
    # The op name is in a graph's bytes exactly when it uses the node (its function body is attached
    # only then): enough to know whether the plugin kernel must be compiled.
    has_scan = any(b"SelectiveScan" in bundle.file(name).read_bytes() for name in sources.values())
    check_requirements(precision, scan, has_scan)

    import tensorrt as trt

    from prvr_plugins.trt_plugin import register
    from prvr_sdk.backends.tensorrt import device_compute_capability, device_name

    major, minor = device_compute_capability(0) or (0, 0)
    arch = f"sm_{major}{minor}"
    if scan == "plugin":
        register(arch)
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = bundle.path / TIMING_CACHE
    cache_config = trt.Builder(logger).create_builder_config()
    cache = cache_config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    built: dict[str, tuple[bytes, dict[str, Any]]] = {}
    for role in ROLES:
        onnx_path = bundle.graph(sources[role])
        start = time.perf_counter()
        plan, cache, kind = _build_one(trt, logger, graph_for_tensorrt(onnx_path, precision, scan), onnx_path,
                                       profiles[role], workspace_gib, cache, scan)
        entry = engine_entry(role, precision, tensorrt=trt.__version__, gpu=device_name(0) or "?",
                             compute_capability=f"{major}.{minor}", profiles=[profiles[role]],
                             scan=kind)
        built[engine_name(role, precision, arch)] = (plan, entry)
        log.info("%s: built %s in %.1f s", bundle.path, role, time.perf_counter() - start)
    manifest = dict(bundle.manifest)
    replaced = [name for name in built if name in bundle.files]
    if replaced:  # unlist them first: at no moment does the manifest name a file with another sha256
        manifest["files"] = {k: v for k, v in bundle.files.items() if k not in replaced}
        bundle_io.write_manifest(bundle.path, manifest)
    for name, (plan, _) in built.items():
        atomic_write(bundle.path / name, plan)
    atomic_write(cache_path, bytes(cache.serialize()))  # a build cache, not listed: serving never reads it
    manifest["files"] = merge_files(bundle.files, {name: entry for name, (_, entry) in built.items()})
    sealed = bundle_io.write_manifest(bundle.path, manifest)
    return BuildResult(
        bundle=bundle.path,
        engines={name: sealed["files"][name] for name in built},
        manifest_sha256=sealed["manifest_sha256"],
        signature_invalidated=(bundle.path / "signature.json").exists(),
    )
