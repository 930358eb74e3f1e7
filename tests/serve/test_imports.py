"""`prvr serve` dependencies stay optional: the runtime, the serve package and the CLI import without them."""

from __future__ import annotations

import subprocess
import sys

WEB = ("fastapi", "uvicorn", "starlette", "pydantic", "httpx")


def test_runtime_serve_package_and_cli_import_without_loading_the_web_stack():
    code = (
        "import sys\n"
        "import prvr_sdk, prvr_sdk.serve, prvr_cli.app\n"
        "from prvr_sdk.serve import SearchService, ServeConfig, ServeLimits, status_for\n"
        f"print(sorted(m for m in {WEB!r} if m in sys.modules))\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["[]", "False"]
