"""Concurrent first reads of a saved segment's metadata (what `prvr serve`'s threads do) all get the rows.

Oracle: the metadata dicts the index was built with.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from prvr_sdk.index import ExactIndex


def test_threads_reading_a_fresh_segment_at_once_all_get_the_metadata(tmp_path):
    rng = np.random.default_rng(0)
    n, dim = 64, 16
    clips = rng.standard_normal((n, 4, dim)).astype(np.float32)
    clips /= np.linalg.norm(clips, axis=-1, keepdims=True)
    meta = [{"i": i, "name": f"video {i}"} for i in range(n)]
    index = ExactIndex(dim, "max_clip")
    index.add([f"v{i}" for i in range(n)], clip_embs=list(clips), metadata=meta)
    index.save(tmp_path / "idx")
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race needs two inside the parse
    try:
        _race(tmp_path, clips, n)
    finally:
        sys.setswitchinterval(old_interval)


def _race(tmp_path, clips, n):
    for _ in range(30):  # repeat on fresh loads
        loaded = ExactIndex.load(tmp_path / "idx")
        barrier, errors, seen = threading.Barrier(8), [], []

        def read(loaded=loaded, barrier=barrier, errors=errors, seen=seen):
            barrier.wait()
            try:
                hits = loaded.search(clips[3, 0], top_k=n)
                seen.append(sorted(h.metadata["i"] for h in hits))
            except Exception as exc:  # noqa: BLE001 - any failure is the bug
                errors.append(exc)

        threads = [threading.Thread(target=read) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        loaded.close()
        assert not errors, errors[0]
        assert seen == [list(range(n))] * 8
