"""The committed golden bundles are current: regenerating them gives the same torch outputs and specs.

``tests/sdk/test_golden.py`` checks the runtime against ``tests/golden/*/golden.npz`` without torch; this
test (torch installed) re-runs ``tests/golden/make_golden.py`` into a temporary folder and compares, so a
change to a model, the exporter or the manifest that makes the committed files stale fails here with the
command to regenerate them. Every registered model must have one.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from prvr_export.models.registry import list_models  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
HINT = "stale golden files: run `python tests/golden/make_golden.py` and commit tests/golden/"


def _maker():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list_models())
def test_golden_files_are_current(name, tmp_path):
    committed = GOLDEN / name
    assert (committed / "golden.npz").is_file(), f"{name} has no golden bundle; {HINT}"
    fresh = _maker().make(name, tmp_path)
    old, new = np.load(committed / "golden.npz"), np.load(fresh / "golden.npz")
    assert sorted(old.files) == sorted(new.files), HINT
    for key in old.files:
        np.testing.assert_allclose(old[key], new[key], atol=1e-6, err_msg=f"{key}: {HINT}")
    manifest = [json.loads((d / "bundle" / "manifest.json").read_text()) for d in (committed, fresh)]
    assert manifest[0]["serving"] == manifest[1]["serving"], HINT
    assert manifest[0]["video_input"] == manifest[1]["video_input"], HINT
