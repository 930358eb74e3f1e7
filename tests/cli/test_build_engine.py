"""`prvr build-engine` on a machine without TensorRT or a GPU: exit 3 with one line naming what is missing
and the install command, and the bundle left byte for byte as it was. Option errors come first (exit 2),
as do bundle errors (exit 5), so a typo is reported on any machine."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prvr_cli.app import app
from prvr_sdk.backends.tensorrt import device_compute_capability, tensorrt_available
from prvr_sdk.bundle import write_manifest
from prvr_sdk.serving import GraphSpec, ServingSpec, text_graph

runner = CliRunner()


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A sealed bundle with MamFusion's serving spec (graph files are placeholders: nothing is built)."""
    out = tmp_path / "bundle"
    out.mkdir()
    for name in ("video_encoder.onnx", "text_encoder.onnx"):
        (out / name).write_bytes(b"\x08\x09placeholder graph")
    spec = ServingSpec(
        video=GraphSpec({"clips": ("batch", 32, 512), "frames": ("batch", "frames", 512),
                         "frame_mask": ("batch", "frames")}, ("clip_emb", "video_emb")),
        text=text_graph("tokens", 384), dim=384, scoring={"kind": "weighted", "clip_weight": 0.7,
                                                          "frame_weight": 0.3},
        clip_output="clip_emb", video_output="video_emb", clip_count=32, clip_time="uniform",
    )
    write_manifest(out, {
        "model": {"name": "mamfusion", "dataset": "demo"},
        "video_input": {"feature_dim": 512, "num_clips": 32, "max_frames": 64},
        "text_input": {"kind": "tokens", "dim": 384, "max_tokens": 30},
        "serving": spec.to_dict(),
        "files": {"video_encoder.onnx": {"role": "video_encoder"},
                  "text_encoder.onnx": {"role": "text_encoder"}},
    })
    return out


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_without_tensorrt_or_a_gpu_it_exits_3_and_leaves_the_bundle_alone(bundle: Path) -> None:
    if tensorrt_available() and device_compute_capability(0) is not None:
        pytest.skip("this machine has TensorRT and a GPU (tests/gpu builds engines)")
    before = snapshot(bundle)
    for extra in ([], ["--precision", "fp16"], ["--max-shapes", "frames:8x16x512", "--json"]):
        result = runner.invoke(app, ["build-engine", str(bundle), *extra])
        assert result.exit_code == 3, result.output
        (line,) = error_lines(result.output)
        assert 'pip install "prvr-sdk[gpu]"' in line
        assert ("tensorrt" in line) if not tensorrt_available() else ("GPU" in line)
        assert snapshot(bundle) == before
        assert not (bundle / "engines").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "int8"], "precision: expected one of ['fp32', 'fp16']"),
        (["--max-shapes", "frames:8x16"], "--max-shapes frames: rank 2"),
        (["--min-shapes", "clips"], "--min-shapes: expected NAME:AxBxC"),
        (["--opt-shapes", "vidoes:1x2x3"], "unknown input(s) ['vidoes']"),
        (["--workspace", "0"], "workspace: expected a positive number"),
    ],
)
def test_option_errors_exit_2_before_anything_else(bundle: Path, args: list[str], message: str) -> None:
    before = snapshot(bundle)
    result = runner.invoke(app, ["build-engine", str(bundle), *args])
    assert result.exit_code == 2, result.output
    assert message in "".join(error_lines(result.output))
    assert snapshot(bundle) == before


def test_not_a_bundle_exits_5(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build-engine", str(tmp_path)])
    assert result.exit_code == 5, result.output
    assert "manifest.json is missing" in result.output


def test_a_modified_bundle_is_refused_before_building(bundle: Path) -> None:
    (bundle / "video_encoder.onnx").write_bytes(b"\x08\x09something else")
    result = runner.invoke(app, ["build-engine", str(bundle)])
    assert result.exit_code == 5, result.output


def test_listed_in_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "build-engine" in result.output
