"""Fuzzing the index loader: random byte flips, truncations and JSON mutations give typed errors only.

Whatever a damaged or crafted index directory holds, ``ExactIndex.load`` (cheap or ``verify=True``),
``ExactIndex.verify`` and a search that reads every hit's metadata either work or raise a ``PrvrError``
subclass (which the CLI maps to an exit code) -- never another exception -- and they write nothing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prvr_sdk.errors import PrvrError
from prvr_sdk.features import l2_normalize
from prvr_sdk.index import ExactIndex, ScoringRule
from prvr_sdk.index.store import manifest_digest

RULE = ScoringRule("weighted", clip_weight=0.7, frame_weight=0.3)
FILES = ["CURRENT", "manifest.json", "ids.json", "metadata.jsonl", "offsets.npy", "spans.npy",
         "clips.f16.npy", "video_vecs.f16.npy"]
_TEMPLATE: Path | None = None

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.sampled_from(["", "..", "../x", "/etc/passwd", "seg-000001", "ids.json", "v000001", "weighted"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def template() -> Path:
    """One small saved index (built once), copied for every example."""
    global _TEMPLATE
    if _TEMPLATE is None:
        rng = np.random.default_rng(3)
        index = ExactIndex(8, RULE)
        counts = [3, 1, 4, 2]
        index.add(
            [f"v{i}" for i in range(4)],
            clip_embs=[l2_normalize(rng.standard_normal((n, 8))) for n in counts],
            video_embs=l2_normalize(rng.standard_normal((4, 8))),
            spans=[np.stack([np.arange(n), np.arange(n) + 1.0], 1) for n in counts],
            metadata=[
                {"duration": float(n), "split": ["train", "test"][i % 2]} for i, n in enumerate(counts)
            ],
        )
        _TEMPLATE = Path(tempfile.mkdtemp(prefix="prvr-fuzz-")) / "idx"
        index.save(_TEMPLATE)
        index.close()
    return _TEMPLATE


def locate(root: Path, name: str) -> Path:
    if name == "CURRENT":
        return root / name
    vdir = root / "v000001"
    return vdir / name if name == "manifest.json" else vdir / "seg-000001" / name


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def exercise(root: Path) -> None:
    queries = l2_normalize(np.random.default_rng(0).standard_normal((2, 8)))
    for verify in (False, True):
        try:
            index = ExactIndex.load(root, verify=verify)
            filtered = index.search(queries, top_k=4, filter={"split": "test"})
            for hits in index.search(queries, top_k=4) + filtered:
                for hit in hits:
                    assert isinstance(hit.metadata, dict)
            index.close()
        except PrvrError:
            pass
    try:
        ExactIndex.verify(root, show_progress=False)
    except PrvrError:
        pass


def mutate_and_check(data_change) -> None:
    work = Path(tempfile.mkdtemp(prefix="prvr-fuzz-case-"))
    try:
        root = work / "idx"
        shutil.copytree(template(), root)
        data_change(root)
        before = snapshot(work)
        exercise(root)
        assert snapshot(work) == before, "loading or searching wrote to the index directory"
    finally:
        shutil.rmtree(work, ignore_errors=True)


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@FUZZ
@given(name=st.sampled_from(FILES), position=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_byte_flips(name, position, bit):
    def flip(root):
        path = locate(root, name)
        data = bytearray(path.read_bytes())
        data[int(position * len(data))] ^= 1 << bit
        path.write_bytes(bytes(data))

    mutate_and_check(flip)


@FUZZ
@given(name=st.sampled_from(FILES), position=st.floats(0, 1, exclude_max=True))
def test_truncations(name, position):
    def truncate(root):
        path = locate(root, name)
        data = path.read_bytes()
        path.write_bytes(data[: int(position * len(data))])

    mutate_and_check(truncate)


def _paths(value, prefix=()):
    """Every path into a JSON value (dict keys and list positions)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@FUZZ
@given(choice=st.integers(0, 10_000), value=json_values, action=st.sampled_from(["set", "drop"]),
       reseal=st.booleans())
def test_manifest_mutations(choice, value, action, reseal):
    def edit(root):
        path = locate(root, "manifest.json")
        manifest = json.loads(path.read_text())
        paths = [p for p in _paths(manifest) if p]
        target = paths[choice % len(paths)]
        parent = manifest
        for key in target[:-1]:
            parent = parent[key]
        if action == "drop" and isinstance(parent, dict):
            del parent[target[-1]]
        else:
            parent[target[-1]] = value
        if reseal:  # an attacker can recompute the unkeyed self-digest
            manifest["manifest_sha256"] = manifest_digest(manifest)
        path.write_text(json.dumps(manifest))

    mutate_and_check(edit)
