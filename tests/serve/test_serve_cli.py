"""`prvr serve` as a command: refusals before any port is bound (exit codes), and several worker processes
serving one index, each picking up a newly committed version."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from prvr_cli.app import app
from prvr_sdk.index import ExactIndex

GOLDEN_MAMFUSION = "tests/golden/mamfusion/bundle"


def test_refusals_exit_with_the_documented_codes(index_dir, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["serve", "--index", str(tmp_path / "nope")])
    assert missing.exit_code == 5 and "does not exist" in missing.output
    other = runner.invoke(
        app, ["serve", "--index", str(index_dir), "--bundle", GOLDEN_MAMFUSION, "--device", "cpu"]
    )
    assert other.exit_code == 6 and "rebuild the index with this bundle" in other.output
    bad = runner.invoke(app, ["serve", "--index", str(index_dir), "--max-batch", "0"])
    assert bad.exit_code == 2


def test_missing_fastapi_names_the_extra(index_dir):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('fastapi', 'uvicorn'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from prvr_cli.app import main\n"
        f"sys.argv = ['prvr', 'serve', '--index', {str(index_dir)!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert 'pip install "prvr-sdk[serve]"' in " ".join(done.stderr.split())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(url: str) -> dict:
    return httpx.get(f"{url}/healthz", timeout=10, headers={"connection": "close"}).json()  # new connection


def test_two_workers_share_the_index_and_both_reload(make_index, tmp_path):
    index_dir = make_index(tmp_path / "index")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-c",
        "from prvr_cli.app import main; main()",
        "serve",
        "--index",
        str(index_dir),
        "--port",
        str(port),
        "--workers",
        "2",
        "--device",
        "cpu",
        "--reload-interval",
        "0.05",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        pids: set[int] = set()
        while len(pids) < 2:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, f"saw workers {pids} only"
            try:
                pids.add(_health(url)["pid"])
            except httpx.HTTPError:
                time.sleep(0.1)
        assert proc.pid not in pids  # the workers are processes of their own
        writer = ExactIndex.load(index_dir)
        unit = np.eye(writer.dim, dtype=np.float32)[5]
        writer.add(["late"], clip_embs=[unit[None, :]])
        writer.save()
        seen: dict[int, str] = {}
        while set(seen.values()) != {"v000002"} or set(seen) != pids:
            assert time.monotonic() < deadline, f"workers and their versions: {seen}"
            health = _health(url)
            seen[health["pid"]] = health["index_version"]
        found = httpx.post(f"{url}/search", json={"embedding": unit.tolist(), "top_k": 1}, timeout=10).json()
        assert found["results"][0]["hits"][0]["video_id"] == "late"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("prvr serve did not stop on SIGINT")
