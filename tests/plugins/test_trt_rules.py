"""The TensorRT plugin's and engine builder's rules, on integers and strings (no TensorRT, no GPU).

What a TensorRT build would compute -- output shape/dtype, the kernel's scalar arguments and grid, the PTX
entry's parameter order, optimisation profiles, engine names and manifest entries -- is checked here
against the kernel's own geometry and, where triton and ptxas are installed, against real compiled PTX.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prvr_plugins import build, geometry, trt_plugin
from prvr_plugins.build import Profile, derive_profile, engine_entry, engine_name, merge_files, parse_shapes
from prvr_plugins.trt_plugin import (
    INPUTS,
    OUTPUTS,
    ScanDims,
    adapt_ptx_params,
    autotune_types,
    entry_params,
    grid_for,
    scalar_args,
    scan_dims,
    tensorrt_order,
)
from prvr_sdk.errors import BundleError, InvalidInputError
from prvr_sdk.serving import GraphSpec, text_graph


# --------------------------------------------------------------------------- plugin: shapes and types
def test_tensorrt_version_gate():
    assert trt_plugin.check_tensorrt_version("10.12.0.36") == (10, 12)
    assert trt_plugin.check_tensorrt_version("11.4.0.106") == (11, 4)
    with pytest.raises(ValueError, match="too old"):
        trt_plugin.check_tensorrt_version("10.11.0")
    with pytest.raises(ValueError, match="cannot read"):
        trt_plugin.check_tensorrt_version("unknown")


def test_output_is_u_shape_and_dtype():
    assert trt_plugin.output_shape((3, 64, 17)) == (3, 64, 17)
    assert [trt_plugin.output_dtype(d) for d in ("fp32", "fp16", "bf16")] == ["fp32", "fp16", "bf16"]
    with pytest.raises(ValueError):
        trt_plugin.output_shape((3, 64))
    with pytest.raises(ValueError):
        trt_plugin.output_dtype("int8")
    assert [trt_plugin.dtype_name(n) for n in ("FLOAT", "HALF", "BF16")] == ["fp32", "fp16", "bf16"]
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        trt_plugin.dtype_name("INT8")


def _shapes(b=2, d=8, length=5, g=2, n=4) -> dict[str, tuple[int, ...]]:
    return {"u": (b, d, length), "delta": (b, d, length), "A": (d, n), "B": (b, g, n, length),
            "C": (b, g, n, length), "D": (d,), "delta_bias": (d,)}


def test_scan_dims_reads_and_checks_the_contract():
    assert scan_dims(_shapes()) == ScanDims(batch=2, channels=8, length=5, groups=2, n_state=4)
    bad = _shapes()
    bad["C"] = (2, 2, 4, 6)
    with pytest.raises(ValueError, match="C: expected shape"):
        scan_dims(bad)
    with pytest.raises(ValueError, match="multiple of groups"):
        scan_dims(_shapes(d=9, g=2) | {"D": (9,), "delta_bias": (9,)})
    with pytest.raises(ValueError, match="missing"):
        scan_dims({k: v for k, v in _shapes().items() if k != "D"})


def test_sm_arch():
    assert trt_plugin.sm_arch(9, 0) == "sm_90"
    assert trt_plugin.sm_arch(12, 0) == "sm_120"
    with pytest.raises(ValueError):
        trt_plugin.sm_arch(0, 0)


# --------------------------------------------------------------------------- plugin: launch rule
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("channels", [1, 7, 64, 513, 1536])
@pytest.mark.parametrize("n_state", [1, 16, 64])
def test_grid_matches_the_kernels_launch_grid(batch, channels, n_state):
    block_d = geometry.default_block_d(channels, n_state)
    assert grid_for(batch, channels, block_d) == geometry.launch_grid(batch, channels, block_d)


def test_parameter_order_is_inputs_scalars_outputs():
    names = geometry.KERNEL_ARGS + ("global_scratch", "profile_scratch")
    assert tensorrt_order(names) == INPUTS + ("dim", "seqlen") + OUTPUTS
    assert scalar_args(geometry.SCALAR_ARGS, ScanDims(2, 8, 5, 2, 4)) == [8, 5]
    with pytest.raises(ValueError, match="no parameter 'y'"):
        tensorrt_order(geometry.KERNEL_ARGS[:-3] + ("dim", "seqlen"))


def test_autotune_types_keep_weights_float32():
    types = [t.strip() for t in autotune_types(("fp32", "fp16")).split(",")]
    assert len(types) == len(INPUTS) + len(OUTPUTS)
    by_name = dict(zip(INPUTS + OUTPUTS, types, strict=True))
    assert {by_name[n] for n in ("A", "D", "delta_bias")} == {"FP32|FP32"}
    assert {by_name[n] for n in ("u", "delta", "B", "C", "y")} == {"FP32|FP16"}
    with pytest.raises(ValueError):
        autotune_types(("int8",))


# --------------------------------------------------------------------------- plugin: the PTX entry
def _ptxas() -> str | None:
    """An assembler for the PTX Triton emits (its bundled ones first), or None."""
    try:
        import triton
    except ImportError:
        return None
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for candidate in (bin_dir / "ptxas-blackwell", bin_dir / "ptxas", shutil.which("ptxas")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def _param_sizes(ptxas: str, ptx: str, arch: str, tmp_path: Path) -> list[int] | None:
    """Bytes of each kernel parameter by ordinal, read from the cubin ptxas makes (None if unassemblable)."""
    src, cubin = tmp_path / "k.ptx", tmp_path / "k.cubin"
    src.write_text(ptx)
    cmd = [ptxas, f"-arch={arch}", str(src), "-o", str(cubin)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"ptxas rejected the adapted PTX: {done.stderr}")
    cuobjdump = Path(ptxas).with_name("cuobjdump")
    tool = str(cuobjdump) if cuobjdump.is_file() else shutil.which("cuobjdump")
    if tool is None:
        return None
    dump = subprocess.run([tool, "-elf", str(cubin)], capture_output=True, text=True, check=True).stdout
    found = re.findall(r"Ordinal : 0x([0-9a-f]+)\s+Offset\s+: 0x[0-9a-f]+\s+Size\s+: 0x([0-9a-f]+)", dump)
    return [size for _, size in sorted((int(o, 16), int(s, 16)) for o, s in found)]


@pytest.fixture(scope="module")
def compiled():
    """The real scan kernel, compiled ahead of time for sm_90 (what the plugin hands TensorRT)."""
    pytest.importorskip("triton")
    from prvr_plugins.aot import compile_scan

    return compile_scan("sm_90", "fp32", n_state=16, groups=1, has_d=True, has_bias=True,
                        delta_softplus=True, block_d=geometry.default_block_d(64, 16))


def test_adapted_ptx_has_tensorrts_parameter_order(compiled, tmp_path):
    """TensorRT launches an AOT kernel with inputs, scalars, outputs and nothing else: the adapted PTX
    entry declares exactly that (Triton's unused scratch pointers dropped), and ptxas accepts it."""
    ptx = adapt_ptx_params(compiled.ptx, compiled.name, compiled.arg_names)
    order = tensorrt_order(compiled.arg_names)
    original = dict(zip(compiled.arg_names, (n for n, _ in entry_params(compiled.ptx, compiled.name)),
                        strict=True))
    assert [n for n, _ in entry_params(ptx, compiled.name)] == [original[a] for a in order]
    after_entry = f".entry {compiled.name}("

    def body(text: str) -> str:
        start = text.index(after_entry)
        return text[text.index(")", start):]

    assert body(ptx) == body(compiled.ptx)  # only the parameter list changed
    ptxas = _ptxas()
    if ptxas is None:
        pytest.skip("no ptxas to assemble the adapted PTX")
    sizes = _param_sizes(ptxas, ptx, "sm_90a", tmp_path)
    if sizes is None:
        pytest.skip("no cuobjdump to read the cubin's parameter table")
    pointer, i32 = 8, 4
    assert sizes == [pointer] * len(INPUTS) + [i32, i32] + [pointer] * len(OUTPUTS)


def test_adapting_refuses_a_dropped_parameter_the_kernel_reads(compiled):
    renamed = tuple("not_a_scalar" if n == "seqlen" else n for n in compiled.arg_names)
    with pytest.raises(ValueError, match="reads its parameter 'not_a_scalar'"):
        adapt_ptx_params(compiled.ptx, compiled.name, renamed)
    with pytest.raises(ValueError, match="declares"):
        adapt_ptx_params(compiled.ptx, compiled.name, compiled.arg_names[:-1])
    with pytest.raises(ValueError, match="no entry"):
        entry_params(compiled.ptx, "missing_kernel")


def test_plan_kernel_carries_the_launch_facts(compiled):
    plan = trt_plugin.plan_kernel("sm_90", "fp32", channels=64, n_state=16, groups=1, delta_softplus=True)
    assert plan.name == compiled.name
    assert plan.arg_order == INPUTS + ("dim", "seqlen") + OUTPUTS
    assert plan.scalar_names == ("dim", "seqlen")
    assert plan.threads_per_block == compiled.threads_per_block
    assert plan.shared_mem == compiled.shared_mem
    assert plan.grid(4, 64) == geometry.launch_grid(4, 64, plan.block_d)


def test_importing_the_plugin_module_needs_no_tensorrt():
    code = ("import sys; import prvr_plugins.trt_plugin, prvr_plugins.build; "
            "assert 'tensorrt' not in sys.modules; assert 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- builder: profiles
MANIFEST = {"video_input": {"max_frames": 32}, "text_input": {"max_tokens": 30}}
MAMFUSION_VIDEO = GraphSpec({"clips": ("batch", 32, 512), "frames": ("batch", "frames", 512),
                             "frame_mask": ("batch", "frames")}, ("clip_emb", "video_emb"))


def test_parse_shapes_trtexec_style():
    assert parse_shapes("clips:1x32x512,frames:1x4x512") == {"clips": (1, 32, 512), "frames": (1, 4, 512)}
    assert parse_shapes(["query:2x30x384", "query_mask:2x30"]) == {"query": (2, 30, 384),
                                                                   "query_mask": (2, 30)}
    assert parse_shapes(None) == {}
    for bad in ("clips", "clips:1xx2", "clips:0x2", ":1x2", "a:1,a:2"):
        with pytest.raises(InvalidInputError, match="--max-shapes"):
            parse_shapes(bad, "--max-shapes")


def test_default_profile_comes_from_the_spec_and_manifest():
    profile = derive_profile("video_encoder", MAMFUSION_VIDEO, MANIFEST)
    assert profile.inputs == {
        "clips": ((1, 32, 512), (16, 32, 512), (64, 32, 512)),
        "frames": ((1, 1, 512), (16, 32, 512), (64, 32, 512)),
        "frame_mask": ((1, 1), (16, 32), (64, 32)),
    }
    text = derive_profile("text_encoder", text_graph("tokens", 384), MANIFEST)
    assert text.inputs["query"] == ((1, 1, 384), (64, 30, 384), (256, 30, 384))
    assert Profile.from_dict(profile.to_dict()) == profile


def test_an_override_moves_the_axis_of_every_input_sharing_it():
    profile = derive_profile("video_encoder", MAMFUSION_VIDEO, MANIFEST, max_shapes={"frames": (8, 16, 512)})
    assert profile.inputs["frame_mask"][2] == (8, 16)
    assert profile.inputs["clips"][2] == (8, 32, 512)
    assert profile.inputs["clips"][1] == (8, 32, 512)  # default opt 16 clamped to the given max 8
    assert profile.inputs["frames"][1] == (8, 16, 512)


def test_bad_overrides_are_refused():
    with pytest.raises(InvalidInputError, match="fixed dimension is 512"):
        derive_profile("video_encoder", MAMFUSION_VIDEO, MANIFEST, max_shapes={"frames": (8, 16, 256)})
    with pytest.raises(InvalidInputError, match="rank"):
        derive_profile("video_encoder", MAMFUSION_VIDEO, MANIFEST, max_shapes={"frames": (8, 16)})
    with pytest.raises(InvalidInputError, match="axis 'frames' is 16"):
        derive_profile("video_encoder", MAMFUSION_VIDEO, MANIFEST,
                       max_shapes={"frames": (8, 16, 512), "frame_mask": (8, 12)})
    with pytest.raises(InvalidInputError, match="min <= opt <= max"):
        derive_profile("video_encoder", MAMFUSION_VIDEO, MANIFEST,
                       min_shapes={"clips": (8, 32, 512)}, max_shapes={"clips": (4, 32, 512)})
    odd = GraphSpec({"x": ("batch", "steps")}, ("clip_emb",))
    with pytest.raises(BundleError, match="no default size for axis 'steps'"):
        derive_profile("video_encoder", odd, MANIFEST)


def test_engine_names_and_manifest_entries():
    assert engine_name("video_encoder", "fp16", "sm_90") == "engines/video_encoder.fp16.sm_90.plan"
    with pytest.raises(InvalidInputError):
        engine_name("video_encoder", "int8", "sm_90")
    profile = derive_profile("video_encoder", MAMFUSION_VIDEO, MANIFEST)
    entry = engine_entry("video_encoder", "fp32", tensorrt="11.4.0", gpu="NVIDIA H200",
                         compute_capability="9.0", profiles=[profile], scan="plugin")
    assert entry["format"] == "tensorrt" and entry["role"] == "video_encoder" and entry["precision"] == "fp32"
    assert entry["engine"]["profiles"][0]["clips"]["max"] == [64, 32, 512]
    files = {"video_encoder.onnx": {"role": "video_encoder"}, "engines/a.plan": {"role": "old"}}
    merged = merge_files(files, {"engines/a.plan": entry})
    assert merged["engines/a.plan"]["engine"]["gpu"] == "NVIDIA H200"
    assert merged["video_encoder.onnx"] == {"role": "video_encoder"}
    assert build.source_graph({"v.onnx": {"role": "video_encoder"}, **merged}, "video_encoder") == "v.onnx"


def test_scan_kind_reads_the_parsed_network():
    assert build.scan_kind(["CONVOLUTION", "PLUGIN_V3", "ELEMENTWISE"]) == "plugin"
    assert build.scan_kind(["RECURRENCE", "ITERATOR", "LOOP_OUTPUT"]) == "function"
    assert build.scan_kind(["MATRIX_MULTIPLY"]) is None
    assert build.scan_kind(["PLUGIN_V3", "RECURRENCE"]) == "mixed"


# --------------------------------------------------------------------------- builder: graphs TensorRT parses
GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _golden_graph(name: str, role: str = "video_encoder") -> Path:
    path = GOLDEN / name / "bundle" / f"{role}.onnx"
    if not path.is_file():
        pytest.skip(f"no golden bundle for {name} (tests/golden/make_golden.py)")
    return path


def _scan_nodes(model) -> list:
    return [n for n in model.graph.node if n.domain == "prvr" and n.op_type == "SelectiveScan"]


def test_function_engines_parse_a_graph_without_the_plugin_hint():
    onnx = pytest.importorskip("onnx")
    data = build.graph_for_tensorrt(_golden_graph("mamfusion"), "fp32", "function")
    scans = _scan_nodes(onnx.load_from_string(data))
    assert scans and all({a.name for a in n.attribute} == {"delta_softplus"} for n in scans)
    assert build.graph_for_tensorrt(_golden_graph("mamfusion"), "fp32", "plugin") == \
        _golden_graph("mamfusion").read_bytes()


@pytest.mark.parametrize("name", ["amdnet", "mamfusion", "muse"])
@pytest.mark.parametrize("role", ["video_encoder", "text_encoder"])
def test_fp16_graph_keeps_the_scan_float32_and_matches(name, role):
    """The fp16 graph a strongly typed engine is built from: float32 inputs/outputs, every scan input and
    output float32 (its state needs it), the plugin hint kept, and ONNX Runtime CPU within 2e-3 of fp32."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxconverter_common")
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    path = _golden_graph(name, role)
    data = build.graph_for_tensorrt(path, "fp16", "plugin")
    model = onnx.load_from_string(data)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)  # really converted
    io = list(model.graph.input) + list(model.graph.output)
    assert {v.type.tensor_type.elem_type for v in io} == {onnx.TensorProto.FLOAT}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *io]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in _scan_nodes(model):
        assert {types[x] for x in [*node.input, *node.output]} == {onnx.TensorProto.FLOAT}, node.name
        assert "plugin_namespace" in {a.name for a in node.attribute}
    fp32 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fp16 = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in fp32.get_inputs():
        shape = [d if isinstance(d, int) else 3 for d in i.shape]
        feeds[i.name] = (np.ones(shape, np.float32) if i.name.endswith("_mask")
                         else rng.standard_normal(shape).astype(np.float32))
    for got, want in zip(fp16.run(None, feeds), fp32.run(None, feeds), strict=True):
        assert float(np.abs(got - want).max() / np.abs(want).max()) <= 2e-3
