"""Fuzzing ``prvr_sdk.bundle.load`` with broken manifests: only ``PrvrError``s come out, nothing is written.

One small valid bundle is built per test; hypothesis then flips bytes, truncates, and mutates the JSON
(values of other types, dropped keys, ``../`` and absolute names, huge numbers, deep nesting), re-sealing
about half of the mutations so that they get past the self-digest check to the deeper checks.
Oracles: the exception type (a ``PrvrError`` subclass or none) and a snapshot of the directory tree.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prvr_sdk import bundle
from prvr_sdk.errors import BundleError, PrvrError

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "bundle"
    (root / "text_frontend").mkdir(parents=True)
    (root / "video_encoder.onnx").write_bytes(b"\x08\x08" + bytes(range(64)))
    (root / "text_encoder.onnx").write_bytes(b"\x08\x07tiny")
    (root / "text_frontend" / "tokenizer.json").write_text('{"vocab": {}}')
    (root.parent / "outside.bin").write_bytes(b"not yours")
    files = {"video_encoder.onnx": {"role": "video_encoder"}, "text_encoder.onnx": {"role": "text_encoder"},
             "text_frontend/tokenizer.json": {"role": "text_frontend"}}  # fmt: skip
    bundle.write_manifest(root, {"model": {"name": "amdnet", "dataset": "demo"}, "files": files})
    bundle.load(root)  # the template itself is valid
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``root`` (and the template's parent): size, mtime and mode."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root.parent):
        for name in dirnames + filenames:
            st_ = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st_.st_size, st_.st_mtime_ns, st_.st_mode)
    return out


def check_load(root: Path, manifest_bytes: bytes) -> None:
    (root / bundle.MANIFEST).write_bytes(manifest_bytes)
    before = snapshot(root)
    for verify in (True, False):
        try:
            bundle.load(root, verify=verify)
        except PrvrError:
            pass  # the only exceptions allowed (BundleError, ChecksumError)
    assert snapshot(root) == before, "load wrote, touched or removed something"


@pytest.fixture
def work(template, tmp_path) -> Path:
    root = tmp_path / "bundle"
    if not root.exists():
        shutil.copytree(template.parent, tmp_path, dirs_exist_ok=True)
    return root


# JSON values of every type, including nasty ones.
_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["../outside.bin", "/etc/passwd", "..", "a\\b", "C:x", "", "a//b", "x\x00y",
                     "text_frontend/../../outside.bin", "text_frontend", "video_encoder.onnx"]),
)  # fmt: skip
_json = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_names = st.sampled_from([
    "../outside.bin", "/etc/passwd", "/tmp", "text_frontend/../x", "a\\b", "", ".", "text_frontend/",
    "./video_encoder.onnx", "nul\x00.onnx", "ok.onnx", "text_frontend/tokenizer.json",
])  # fmt: skip
_SAFE = {"ok.onnx", "text_frontend/tokenizer.json"}


def _paths(manifest):
    """Every (container, key) in the manifest, to pick one to mutate."""
    out = []
    stack = [manifest]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for k in keys:
            out.append((node, k))
            stack.append(node[k])
    return out


@st.composite
def mutated_manifest(draw, base: dict):
    m = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        targets = _paths(m)
        if not targets:
            break
        container, key = draw(st.sampled_from(targets))
        action = draw(st.sampled_from(["replace", "drop", "rename", "nest", "huge"]))
        if action == "replace":
            container[key] = draw(_json)
        elif action == "drop" and isinstance(container, dict):
            del container[key]
        elif action == "rename" and isinstance(container, dict):
            container[draw(_names)] = container.pop(key)
        elif action == "nest":
            depth = draw(st.sampled_from([10, 500, 5000]))
            container[key] = json.loads("[" * depth + "]" * depth) if depth < 900 else "deep"
        elif action == "huge":
            container[key] = draw(st.sampled_from([2**63, -(2**63), 10**400, 1e308, -1]))
    if isinstance(m, dict) and draw(st.booleans()):
        m["manifest_sha256"] = bundle.manifest_digest(m)  # re-seal: get past the digest check
    text = json.dumps(m)
    if draw(st.booleans()) and isinstance(m, dict):
        depth = draw(st.sampled_from([1000, 100_000]))
        text = text[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    return text.encode()


@SETTINGS
@given(data=st.data())
def test_json_mutations_only_raise_prvr_errors(template, work, data):
    base = json.loads((template / bundle.MANIFEST).read_text())
    check_load(work, data.draw(mutated_manifest(base)))


@SETTINGS
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))  # fmt: skip
def test_byte_flips_and_truncations_only_raise_prvr_errors(template, work, flips, cut):
    raw = bytearray((template / bundle.MANIFEST).read_bytes())
    for pos, mask in flips:
        raw[pos % len(raw)] ^= mask
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    check_load(work, bytes(raw))


@SETTINGS
@given(name=_names, size=st.integers(-5, 2**64), digest=st.one_of(st.text(max_size=70), st.integers()))
def test_resealed_hostile_entries_only_raise_prvr_errors(template, work, name, size, digest):
    m = json.loads((template / bundle.MANIFEST).read_text())
    m["files"][name] = {"bytes": size, "sha256": digest}
    m["manifest_sha256"] = bundle.manifest_digest(m)
    check_load(work, json.dumps(m).encode())
    if name not in _SAFE:  # refused by its name, before the file it points at is looked at or hashed
        with pytest.raises(BundleError) as info:
            bundle.load(work, verify=False)
        assert type(info.value) is BundleError and repr(name) in str(info.value)
