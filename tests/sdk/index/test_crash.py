"""A writer SIGKILLed at any point of a save leaves a loadable, complete index; one writer at a time.

The writer runs in a subprocess. Fault injection lives here, not in the index code: before saving, the
writer wraps the real file-system steps of ``prvr_sdk.index.store`` (writing a segment's array file,
writing a segment, linking an unchanged one, renaming the version into place, replacing ``CURRENT``, the
whole commit) so that it SIGKILLs itself just before or after the chosen one (deterministic, every stage
covered); one test instead kills it from outside while it pauses between files, as an operator or the
OOM killer would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from prvr_sdk.index import ExactIndex, IndexLockedError

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

# The writer: loads the index, removes two videos, adds a larger segment, saves -- with a fault injected.
WRITER = textwrap.dedent(
    """
    import os, signal, sys, time
    import numpy as np
    from prvr_sdk.features import l2_normalize
    from prvr_sdk.index import ExactIndex, store

    root, mode, stage = sys.argv[1], sys.argv[2], sys.argv[3]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, attr, before=None, after=None, static=False):
        real = getattr(owner, attr)
        def wrapper(*args, **kwargs):
            if before and before(*args):
                die()
            result = real(*args, **kwargs)
            if after and after(*args):
                die()
            return result
        setattr(owner, attr, staticmethod(wrapper) if static else wrapper)

    always = lambda *a: True
    is_version_rename = lambda src, dst: os.path.basename(str(src)).startswith(".tmp-")
    is_pointer_swap = lambda src, dst: os.path.basename(str(dst)) == store.CURRENT
    if stage == "segment-file":   # the first array file of the new segment is written
        wrap(store, "_write_rows", after=always)
    elif stage == "segment":      # a whole new segment is written
        wrap(store.SegmentFiles, "write", after=always, static=True)
    elif stage == "linked":       # an unchanged segment is linked into the new version
        wrap(store.SegmentFiles, "link", after=always, static=True)
    elif stage == "manifest":     # manifest written, version not yet renamed into place
        wrap(store.os, "rename", before=is_version_rename)
    elif stage == "renamed":      # version renamed, CURRENT not yet swapped
        wrap(store.os, "rename", after=is_version_rename)
    elif stage == "pointer":      # CURRENT.tmp written, not yet replaced
        wrap(store.os, "replace", before=is_pointer_swap)
    elif stage == "committed":    # CURRENT replaced, old versions not yet deleted
        wrap(store.os, "replace", after=is_pointer_swap)
    elif stage == "gc":           # the whole commit, old versions deleted, lock still held
        wrap(store, "commit", after=always)
    elif stage == "pause":        # slow file writes, so that a test can kill the writer from outside
        for owner, attr, static in [(store, "_write_rows", False), (store, "_fsync_path", False),
                                    (store.SegmentFiles, "write", True)]:
            wrap(owner, attr, after=lambda *a: time.sleep(0.3), static=static)

    index = ExactIndex.load(root)
    index.remove(["vid0000", "vid0001"])
    rng = np.random.default_rng(0)
    clips = [l2_normalize(rng.standard_normal((16, 32))) for _ in range(400)]
    vecs = l2_normalize(rng.standard_normal((400, 32)))
    index.add([f"new{i}" for i in range(400)], clip_embs=clips, video_embs=vecs)
    if mode == "hold":  # keep the lock (taken by the first change) until killed
        print("holding", flush=True)
        sys.stdin.read()
    index.save()
    print("saved", flush=True)
    """
)
STAGES_BEFORE_COMMIT = ["segment-file", "segment", "linked", "manifest", "renamed", "pointer"]
STAGES_AFTER_COMMIT = ["committed", "gc"]


@pytest.fixture
def saved(ix, tmp_path):
    corpus = ix.make_corpus(num_videos=20, seed=31)
    index = ExactIndex(32, ix.RULES["weighted"])
    index.add(**corpus.add_kwargs("weighted", slice(0, 12)))
    index.save(tmp_path / "idx")
    index.add(**corpus.add_kwargs("weighted", slice(12, 20)))
    index.save()  # two segments in version v000002
    before = [[(h.video_id, h.clip_index) for h in hits] for hits in index.search(corpus.queries, top_k=8)]
    index.close()
    return tmp_path / "idx", corpus, before


def start_writer(tmp_path, root, mode="save", stage="none"):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), str(root), mode, stage],
        env=dict(os.environ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_old_index_intact(root, corpus, before):
    index = ExactIndex.load(root, verify=True)
    assert index.info()["version"] == "v000002"
    assert index.ids() == corpus.ids
    assert [
        [(h.video_id, h.clip_index) for h in hits] for hits in index.search(corpus.queries, top_k=8)
    ] == before


def assert_new_index(root, corpus):
    index = ExactIndex.load(root, verify=True)
    assert index.info()["version"] == "v000003"
    assert len(index) == 20 - 2 + 400 and "vid0000" not in index and "new399" in index


@pytest.mark.parametrize("stage", STAGES_BEFORE_COMMIT + STAGES_AFTER_COMMIT)
def test_kill_at_every_stage_of_save(saved, tmp_path, stage):
    root, corpus, before = saved
    proc = start_writer(tmp_path, root, stage=stage)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out, err)
    assert (root / "LOCK").exists()  # the killed writer could not clean up
    if stage in STAGES_BEFORE_COMMIT:
        assert_old_index_intact(root, corpus, before)
    else:
        assert_new_index(root, corpus)
    # The next writer breaks the stale lock (its pid is gone) and cleans up the leftovers.
    index = ExactIndex.load(root)
    index.remove(["vid0005"])
    index.save()
    assert not (root / "LOCK").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert len([p for p in root.iterdir() if p.name.startswith("v")]) == 1
    assert "vid0005" not in ExactIndex.load(root, verify=True)


def test_kill_from_outside_mid_save(saved, tmp_path):
    root, corpus, before = saved
    proc = start_writer(tmp_path, root, stage="pause")
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".tmp-") for p in root.iterdir()):  # the save has started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert [p for p in root.iterdir() if p.name.startswith(".tmp-")]  # killed with a half-written version
    assert_old_index_intact(root, corpus, before)


def test_second_writer_process_gets_a_clear_error(saved, tmp_path, ix):
    root, corpus, before = saved
    proc = start_writer(tmp_path, root, mode="hold")
    try:
        assert proc.stdout.readline().strip() == "holding", proc.stderr.read()
        index = ExactIndex.load(root)  # reading is fine while another process writes
        assert len(index.search(corpus.queries, top_k=3)) == len(corpus.queries)
        with pytest.raises(IndexLockedError) as err:
            index.remove(["vid0003"])
        message = str(err.value)
        assert str(root / "LOCK") in message and f"pid {proc.pid}" in message
        assert err.value.owner["pid"] == proc.pid
        fresh = ExactIndex(32, ix.RULES["weighted"])
        fresh.add(**corpus.add_kwargs("weighted", slice(0, 2)))
        with pytest.raises(IndexLockedError):
            fresh.save(root, overwrite=True)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    index.remove(["vid0003"])  # the writer died: its lock is stale and gets broken
    index.save()
    assert_ids = ExactIndex.load(root).ids()
    assert "vid0003" not in assert_ids and len(assert_ids) == 19


def test_lock_from_another_host_is_not_broken(saved):
    root, corpus, _ = saved
    (root / "LOCK").write_text('{"pid": 1, "host": "elsewhere.example", "since": "then", "token": "x"}')
    index = ExactIndex.load(root)
    with pytest.raises(IndexLockedError, match=r"cannot check.*rm .*LOCK"):
        index.remove(["vid0001"])
    assert len(index) == 20
    from prvr_sdk.index import break_lock

    with pytest.raises(IndexLockedError):
        break_lock(root)
    assert break_lock(root, force=True)
    index.remove(["vid0001"])
    index.save()
    assert np.isin("vid0001", ExactIndex.load(root).ids(), invert=True)
