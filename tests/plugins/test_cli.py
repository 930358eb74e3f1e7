"""`prvr plugins build` (cli/prvr_cli/plugins.py) through Typer's CliRunner on the real app."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
from typer.testing import CliRunner

from prvr_cli.app import app

runner = CliRunner()


def test_build_writes_kernels_and_index(tmp_path):
    pytest.importorskip("triton", reason="triton is not installed (pip install 'prvr-sdk[plugins]')")
    out = tmp_path / "kernels"
    result = runner.invoke(app, ["plugins", "build", "--arch", "sm_80", "--arch", "sm_90", "--dtype", "fp16",
                                 "--dtype", "bf16", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert json.loads(result.stdout) == index
    assert [(k["arch"], k["dtype"]) for k in index["kernels"]] == [
        ("sm_80", "fp16"), ("sm_80", "bf16"), ("sm_90", "fp16"), ("sm_90", "bf16")]
    for k in index["kernels"]:
        ptx = (out / k["files"]["ptx"]).read_bytes()
        assert hashlib.sha256(ptx).hexdigest() == k["files"]["ptx_sha256"]
        assert f".entry {k['name']}(".encode() in ptx and k["files"]["ptx"] == f"{k['name']}.ptx"
        assert (out / k["files"]["cubin"]).read_bytes()[:4] == b"\x7fELF"
        assert k["ptx_isa"] == "8.0" and k["min_driver"] == "525.60.13"
        assert k["threads_per_block"] == 32 * k["num_warps"] and k["block_d"] == 32
        assert [a["name"] for a in k["args"]][:10] == ["u", "delta", "A", "B", "C", "D", "delta_bias", "y",
                                                       "dim", "seqlen"]
        assert isinstance(k["shared_mem"], int)
    assert index["triton_version"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.json"] + [f for k in index["kernels"] for f in (k["files"]["ptx"], k["files"]["cubin"])])


def test_without_triton_exits_3(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail, as when not installed
    result = runner.invoke(app, ["plugins", "build", "--out", str(tmp_path / "k")])
    assert result.exit_code == 3
    assert "prvr-sdk[plugins]" in result.output
    assert not (tmp_path / "k").exists()


def test_bad_arch_exits_2(tmp_path):
    pytest.importorskip("triton", reason="triton is not installed (pip install 'prvr-sdk[plugins]')")
    result = runner.invoke(app, ["plugins", "build", "--arch", "ampere", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "sm_80" in result.output
