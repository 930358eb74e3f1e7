"""Graphs open on first use: a sentence search never loads the video encoder, and results do not change.

Oracle: the torch outputs stored with the golden bundles (``golden.npz``), as in tests/sdk/test_golden.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from prvr_sdk import Retriever  # noqa: E402
from prvr_sdk.backends.lazy import LazySession  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_text_only_work_never_opens_the_video_graph():
    golden = np.load(GOLDEN / "amdnet" / "golden.npz")
    r = Retriever.from_bundle(GOLDEN / "amdnet" / "bundle", device="cpu")
    assert not r._video.opened and not r._text.opened
    assert "not opened yet" in repr(r)
    queries = [golden[f"query_{i}"] for i in range(2)]
    np.testing.assert_allclose(r.encode_text(queries), golden["text_emb"][:2], atol=1e-5)
    assert r._text.opened and not r._video.opened
    emb = r.encode_video([golden["video_0"]], fps=1.0)
    assert r._video.opened
    np.testing.assert_allclose(emb.clips(emb.ids[0]), golden["clip_emb"][0], atol=1e-5)
    assert "CPUExecutionProvider" in repr(r)
    fresh = Retriever.from_bundle(GOLDEN / "amdnet" / "bundle", device="cpu").open()
    assert fresh._video.opened and fresh._text.opened


def test_concurrent_first_uses_open_the_graph_once():
    opened = []

    class Fake:
        provider = "fake"

    def opener():
        opened.append(1)
        return Fake()

    lazy = LazySession(opener, "x")
    threads = [threading.Thread(target=lambda: lazy.provider) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 1 and lazy.provider == "fake"


def test_an_error_opening_surfaces_at_first_use_unchanged():
    def opener():
        raise OSError("graph unreadable")

    lazy = LazySession(opener, "x")
    with pytest.raises(OSError, match="graph unreadable"):
        lazy.run({})
    assert not lazy.opened


def test_threads_per_session_give_the_same_embeddings_and_bad_counts_are_refused():
    from prvr_sdk.errors import InvalidInputError

    golden = np.load(GOLDEN / "mamfusion" / "golden.npz")
    one = Retriever.from_bundle(GOLDEN / "mamfusion" / "bundle", device="cpu", threads=1)
    emb = one.encode_video([golden["video_0"]], fps=1.0)
    np.testing.assert_allclose(emb.video_emb[0], golden["video_emb"][0], atol=1e-5)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidInputError, match="threads"):
            Retriever.from_bundle(GOLDEN / "mamfusion" / "bundle", device="cpu", threads=bad)
