"""The index is runtime code: importing and using it must not load torch (docs/architecture.md §1)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CODE = textwrap.dedent(
    """
    import sys, tempfile
    import numpy as np
    from prvr_sdk.hits import Hit
    from prvr_sdk.index import ExactIndex
    index = ExactIndex(4, "max_clip")
    index.add(["a"], clip_embs=[np.eye(4, dtype=np.float32)[:2]])
    index.save(tempfile.mkdtemp() + "/idx")
    assert isinstance(ExactIndex.load(index.path).search(np.eye(4, dtype=np.float32)[0])[0], Hit)
    loaded = sorted(m for m in ("torch", "prvr_export") if m in sys.modules)
    assert not loaded, loaded
    """
)


def test_index_runs_without_loading_torch():
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
