"""Tests for cli/prvr_cli/doctor.py and the root app in cli/prvr_cli/app.py."""

from __future__ import annotations

import json
import sys

import numpy
import pytest
import typer
from typer.testing import CliRunner

import prvr_sdk
from prvr_cli import app as app_module
from prvr_cli import doctor
from prvr_cli.app import app
from prvr_sdk.errors import EXIT_CODES, ParityError

runner = CliRunner()

REPORT_KEYS = {
    "index_kernel",
    "scale_out",
    "prvr_sdk",
    "python",
    "platform",
    "numpy",
    "torch",
    "onnxruntime",
    "tensorrt",
    "tokenizers",
    "runtime",
    "nvcc",
    "mamba_ssm",
    "selective_scan",
    "warnings",
}


@pytest.fixture(scope="module")
def doctor_json() -> dict:
    # One real run (it starts a child interpreter that imports torch), shared by the tests below.
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_doctor_json_has_the_documented_keys(doctor_json: dict) -> None:
    assert set(doctor_json) == REPORT_KEYS
    assert doctor_json["prvr_sdk"] == prvr_sdk.__version__
    assert doctor_json["python"]["executable"] == sys.executable
    assert set(doctor_json["torch"]) == {"version", "build"}
    assert set(doctor_json["onnxruntime"]) == {"version", "providers", "distributions", "error", "scan"}
    assert set(doctor_json["nvcc"]) == {"path", "release", "error"}
    assert isinstance(doctor_json["warnings"], list)


def test_doctor_reports_the_retrievers_auto_choice(doctor_json: dict) -> None:
    from prvr_sdk.backends import choose

    for key, has_engine in (("onnx_bundle", False), ("bundle_with_engines", True)):
        expected = choose("auto", "auto", has_engine=has_engine)
        assert doctor_json["runtime"][key] == {
            "backend": expected.backend, "device": expected.device, "reason": expected.reason
        }


def test_doctor_reports_what_runs_the_selective_scan_in_onnxruntime(doctor_json: dict) -> None:
    from prvr_sdk.backends.onnxruntime import scan_backend

    assert doctor_json["onnxruntime"]["scan"] == scan_backend()
    assert scan_backend().split()[0] in ("native", "portable")


def test_doctor_json_reports_numpy_version(doctor_json: dict) -> None:
    assert doctor_json["numpy"] == numpy.__version__


def test_doctor_selective_scan_reports_backends_or_one_line_error(doctor_json: dict) -> None:
    scan = doctor_json["selective_scan"]
    assert set(scan) == {"backends", "fallbacks", "error"}
    for key in ("backends", "fallbacks"):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in scan[key].items())
    assert scan["error"] is None or (scan["error"] and "\n" not in scan["error"])


def test_doctor_selective_scan_matches_the_op_module(doctor_json: dict) -> None:
    # Oracle: the op module asked in this process; the child interpreter must report the same.
    pytest.importorskip("torch")
    from prvr_export.ops.selective_scan import available_backends, fallback_reasons

    scan = doctor_json["selective_scan"]
    assert scan["error"] is None
    assert scan["backends"] == available_backends()
    assert scan["fallbacks"] == fallback_reasons()


def test_doctor_shows_why_a_device_uses_the_slow_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real probe (child interpreter) with the C kernel disabled: the reason reaches --json and the table.
    pytest.importorskip("torch")
    monkeypatch.setenv("PRVR_DISABLE_CPU_KERNEL", "1")
    scan = doctor.probe_selective_scan(torch_installed=True)
    assert scan["error"] is None, scan
    assert scan["fallbacks"]["cpu"] == "disabled by PRVR_DISABLE_CPU_KERNEL"
    assert scan["backends"]["cpu"] == "reference (disabled by PRVR_DISABLE_CPU_KERNEL)"
    monkeypatch.setattr(doctor, "probe_selective_scan", lambda torch_installed: scan)
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line, nothing wrapped
    result = runner.invoke(app, ["doctor", "--json"])
    assert json.loads(result.stdout)["selective_scan"]["fallbacks"]["cpu"] == scan["fallbacks"]["cpu"]
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    cpu_row = next(line for line in result.stdout.splitlines() if "selective scan: cpu" in line)
    assert "slow: reference (disabled by PRVR_DISABLE_CPU_KERNEL)" in cpu_row


def test_doctor_table_exits_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stub the slow child-interpreter probe; its own behaviour is covered above.
    monkeypatch.setattr(
        doctor, "probe_selective_scan",
        lambda torch_installed: {"backends": {"cpu": "ok"}, "fallbacks": {}, "error": None},
    )
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "numpy" in result.stdout
    assert numpy.__version__ in result.stdout


def test_doctor_prints_warnings_to_stderr_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        doctor, "probe_selective_scan",
        lambda torch_installed: {"backends": {}, "fallbacks": {}, "error": "x"},
    )
    monkeypatch.setattr(
        doctor, "installed_distributions", lambda: ["numpy", "onnxruntime", "onnxruntime-gpu"]
    )
    monkeypatch.setattr(
        doctor,
        "probe_onnxruntime",
        lambda dists: {
            "version": None,
            "providers": [],
            "distributions": sorted(dists),
            "error": None,
        },
    )
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert len(report["warnings"]) == 1
    assert "onnxruntime-gpu" in result.stderr
    assert "prvr-sdk[onnx]" in result.stderr  # markup escaped, not swallowed


@pytest.mark.parametrize(
    ("dists", "expected"),
    [
        ([], 0),
        (["numpy", "onnxruntime"], 0),
        (["onnxruntime-gpu"], 0),
        (["onnxruntime", "onnxruntime-gpu"], 1),
        (["ONNXRuntime", "onnxruntime_gpu", "numpy"], 1),
        (["onnxruntime", "onnxruntime-extensions", "onnxruntime-genai"], 0),
        (["onnxruntime-gpu", "onnxruntime-directml", "onnxruntime"], 1),
    ],
)
def test_onnxruntime_warnings(dists: list[str], expected: int) -> None:
    warnings = doctor.onnxruntime_warnings(dists)
    assert len(warnings) == expected
    if warnings:
        assert "onnxruntime" in warnings[0] and "prvr-sdk[onnx]" in warnings[0]


@pytest.mark.parametrize(
    ("version", "requires", "build"),
    [
        ("2.13.0+cpu", None, "cpu"),
        ("2.6.0+cpu.cxx11.abi", None, "cpu"),
        ("2.5.1+cu121", None, "cuda 12.1"),
        ("2.9.0+cu130", None, "cuda 13.0"),
        ("2.6.0+rocm6.2", None, "rocm 6.2"),
        ("2.6.0", ['nvidia-cudnn-cu12==9.1.0.70; platform_system == "Linux"'], "cuda"),
        ("2.6.0", ["filelock", "sympy"], "cpu"),
    ],
)
def test_torch_build(version: str, requires: list[str] | None, build: str) -> None:
    assert doctor.torch_build(version, requires) == build


def test_parse_nvcc_release() -> None:
    text = "Cuda compilation tools, release 12.4, V12.4.131\nBuild cuda_12.4.r12.4/compiler.34097967_0"
    assert doctor.parse_nvcc_release(text) == "12.4"
    assert doctor.parse_nvcc_release("command not found") is None


def test_probe_nvcc_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "find_nvcc", lambda: None)
    assert doctor.probe_nvcc() == {"path": None, "release": None, "error": None}


def test_probe_selective_scan_without_torch() -> None:
    result = doctor.probe_selective_scan(torch_installed=False)
    assert result["backends"] == {} and result["fallbacks"] == {}
    assert "prvr-sdk[train]" in result["error"]


# --- root app -----------------------------------------------------------------------------------


def test_help_lists_doctor_and_every_exit_code() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "doctor" in result.stdout
    for cls, code in EXIT_CODES.items():
        assert cls.__name__ in result.stdout
        assert f"{code}  " in result.stdout


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert prvr_sdk.__version__ in result.stdout


def test_main_maps_prvr_errors_to_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    failing = typer.Typer()

    @failing.command()
    def fail() -> None:
        raise ParityError("video_encoder.onnx: clip_emb max abs diff 0.1 > atol 1e-4")

    monkeypatch.setattr(app_module, "app", failing)
    monkeypatch.setattr(sys, "argv", ["prvr"])
    with pytest.raises(SystemExit) as info:
        app_module.main()
    assert info.value.code == 4


def test_doctor_says_which_exact_search_path_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    from prvr_sdk.native import f16dot

    result = runner.invoke(app, ["doctor", "--json"])
    report = json.loads(result.stdout)
    assert report["index_kernel"]["loaded"] == (f16dot.load() is not None)
    monkeypatch.setenv("PRVR_NATIVE", "off")
    report = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert report["index_kernel"] == {"loaded": False, "reason": "disabled by PRVR_NATIVE=off"}
    table = runner.invoke(app, ["doctor"]).stdout
    assert "numpy decode + BLAS" in table and "PRVR_NATIVE=off" in table


def test_doctor_lists_the_scale_out_extras(doctor_json: dict) -> None:
    from importlib.metadata import version

    assert doctor_json["scale_out"]["ray"] == version("ray")
    assert doctor_json["scale_out"]["qdrant_edge"] == version("qdrant-edge-py")
