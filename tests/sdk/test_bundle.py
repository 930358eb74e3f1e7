"""Bundle loading detects every kind of tampering (docs/architecture.md §3)."""

from __future__ import annotations

import hashlib
import json

import pytest

from prvr_sdk import bundle
from prvr_sdk.errors import BundleError, ChecksumError


@pytest.fixture
def sealed(tmp_path):
    (tmp_path / "video_encoder.onnx").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "text_encoder.onnx").write_bytes(b"text graph bytes")
    manifest = {"model": {"name": "amdnet"}, "files": {"video_encoder.onnx": {"role": "video"},
                                                       "text_encoder.onnx": {"role": "text"}}}
    bundle.write_manifest(tmp_path, manifest)
    return tmp_path


def test_sealed_bundle_loads_and_records_real_digests(sealed):
    b = bundle.load(sealed)
    data = (sealed / "video_encoder.onnx").read_bytes()
    assert b.files["video_encoder.onnx"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert b.files["video_encoder.onnx"]["bytes"] == len(data)
    assert b.files["video_encoder.onnx"]["role"] == "video"
    assert b.model_name == "amdnet"
    assert b.file("text_encoder.onnx") == sealed / "text_encoder.onnx"
    assert b.manifest["format_version"] == bundle.FORMAT_VERSION


def test_flipped_byte_is_a_checksum_error(sealed):
    path = sealed / "video_encoder.onnx"
    data = bytearray(path.read_bytes())
    data[1234] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="video_encoder.onnx.*sha256"):
        bundle.load(sealed)


def test_truncated_file_is_a_checksum_error(sealed):
    path = sealed / "video_encoder.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ChecksumError, match="truncated"):
        bundle.load(sealed)


def test_missing_file_is_a_bundle_error(sealed):
    (sealed / "text_encoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing 'text_encoder.onnx'"):
        bundle.load(sealed)


def test_hand_edited_manifest_is_detected(sealed):
    path = sealed / bundle.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["model"]["name"] = "mamfusion"
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="modified after export"):
        bundle.load(sealed)


def test_newer_format_is_refused_with_upgrade_hint(sealed):
    path = sealed / bundle.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["format_version"] = bundle.FORMAT_VERSION + 1
    manifest["manifest_sha256"] = bundle.manifest_digest(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="newer than this prvr-sdk supports.*upgrade"):
        bundle.load(sealed)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not an export bundle"):
        bundle.load(tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        bundle.load(tmp_path / "nope")
    (tmp_path / bundle.MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        bundle.load(tmp_path)


def test_sealing_a_missing_file_fails(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        bundle.write_manifest(tmp_path, {"files": {"ghost.onnx": {}}})


# ---------------------------------------------------------------- untrusted manifests (names, types, size)
SECRET = b"secret outside the bundle"


def forge(directory, files, **fields):
    """Write a manifest the way an attacker would: any names, sealed with a correct self digest."""
    manifest = {"format_version": bundle.FORMAT_VERSION, "model": {"name": "amdnet"}, "files": files}
    manifest.update(fields)
    manifest["manifest_sha256"] = bundle.manifest_digest(manifest)
    (directory / bundle.MANIFEST).write_text(json.dumps(manifest))
    return manifest


def entry_for(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize(
    "name",
    ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", "a\\b.onnx", "C:evil.onnx", "a//b.onnx",
     "./video_encoder.onnx", "video_encoder.onnx/", "", "a\x00b.onnx", "sub/./x.onnx", ".."],
)
def test_unsafe_names_are_refused_before_any_file_is_read(tmp_path, name):
    (tmp_path / "secret.bin").write_bytes(SECRET)
    inner = tmp_path / "bundle"
    (inner / "sub").mkdir(parents=True)
    (inner / "video_encoder.onnx").write_bytes(b"\x08graph")
    forge(inner, {"video_encoder.onnx": entry_for(b"\x08graph"), name: {"bytes": 1, "sha256": "0" * 64}})
    for verify in (True, False):
        with pytest.raises(BundleError) as info:
            bundle.load(inner, verify=verify)
        assert type(info.value) is BundleError  # refused by name, not by a checksum of the file it points at
        assert repr(name) in str(info.value)
        assert hashlib.sha256(SECRET).hexdigest()[:12] not in str(info.value)


def test_a_symlink_leaving_the_bundle_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(SECRET)
    inner = tmp_path / "bundle"
    (inner / "sub").mkdir(parents=True)
    (inner / "sub" / "tokenizer.json").symlink_to(tmp_path / "secret.bin")
    forge(inner, {"sub/tokenizer.json": entry_for(SECRET)})  # a correct digest: only the location is wrong
    with pytest.raises(BundleError, match="'sub/tokenizer.json'.*outside the bundle"):
        bundle.load(inner)
    (inner / "sub" / "tokenizer.json").unlink()
    (inner / "sub" / "tokenizer.json").write_bytes(SECRET)  # the same bytes inside the bundle are fine
    assert bundle.load(inner).files["sub/tokenizer.json"]["bytes"] == len(SECRET)


def test_subfolder_names_are_legitimate(tmp_path):
    (tmp_path / "text_frontend").mkdir()
    (tmp_path / "text_frontend" / "tokenizer.json").write_text("{}")
    bundle.write_manifest(tmp_path, {"files": {"text_frontend/tokenizer.json": {"role": "text_frontend"}}})
    b = bundle.load(tmp_path)
    assert b.file("text_frontend/tokenizer.json") == tmp_path / "text_frontend" / "tokenizer.json"


def test_write_manifest_and_file_refuse_unsafe_names(tmp_path):
    (tmp_path / "secret.bin").write_bytes(SECRET)
    inner = tmp_path / "bundle"
    inner.mkdir()
    with pytest.raises(BundleError, match=r"'\.\./secret\.bin'"):
        bundle.write_manifest(inner, {"files": {"../secret.bin": {}}})
    with pytest.raises(BundleError, match="absolute"):
        bundle.write_manifest(inner, {"files": {str(tmp_path / "secret.bin"): {}}})
    assert not (inner / bundle.MANIFEST).exists()
    forged = bundle.Bundle(inner, {"files": {"../secret.bin": {}}})
    with pytest.raises(BundleError, match=r"'\.\./secret\.bin'"):
        forged.file("../secret.bin")


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0, None])
def test_format_versions_below_one_or_not_int_are_refused(sealed, version):
    manifest = json.loads((sealed / bundle.MANIFEST).read_text())
    manifest["format_version"] = version
    manifest["manifest_sha256"] = bundle.manifest_digest(manifest)
    (sealed / bundle.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version"):
        bundle.load(sealed)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m["files"].__setitem__("video_encoder.onnx", ["not", "a", "dict"]),
        lambda m: m["files"].__setitem__("video_encoder.onnx", "x"),
        lambda m: m["files"]["video_encoder.onnx"].__setitem__("bytes", "10240"),
        lambda m: m["files"]["video_encoder.onnx"].__setitem__("bytes", True),
        lambda m: m["files"]["video_encoder.onnx"].__setitem__("bytes", 10240.0),
        lambda m: m["files"]["video_encoder.onnx"].__setitem__("bytes", -1),
        lambda m: m["files"]["video_encoder.onnx"].pop("bytes"),
        lambda m: m["files"]["video_encoder.onnx"].__setitem__("sha256", 5),
        lambda m: m["files"]["video_encoder.onnx"].pop("sha256"),
        lambda m: m.__setitem__("files", ["video_encoder.onnx"]),
        lambda m: m.pop("files"),
        lambda m: m.__setitem__("files", {}),
    ],
)
def test_malformed_entries_are_bundle_errors(sealed, mutate):
    manifest = json.loads((sealed / bundle.MANIFEST).read_text())
    mutate(manifest)
    manifest["manifest_sha256"] = bundle.manifest_digest(manifest)
    (sealed / bundle.MANIFEST).write_text(json.dumps(manifest))
    for verify in (True, False):
        with pytest.raises(BundleError):
            bundle.load(sealed, verify=verify)


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe{\x00}", b"[" * 100_000 + b"]" * 100_000, b"[1, 2]", b'"a string"', b"{}", b"1" * 5000,
     b'{"format_version": 1}', b'{"format_version": 1, "files": {}, "manifest_sha256": "x"}'],
)
def test_unreadable_manifests_are_bundle_errors(tmp_path, content):
    (tmp_path / bundle.MANIFEST).write_bytes(content)
    with pytest.raises(BundleError):
        bundle.load(tmp_path)


def test_oversized_manifest_is_refused_before_reading(tmp_path):
    with open(tmp_path / bundle.MANIFEST, "wb") as f:
        f.truncate(bundle.MAX_MANIFEST_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(BundleError, match="at most"):
        bundle.load(tmp_path)


# ---------------------------------------------------------------- verify=False still checks cheaply
def test_unverified_load_checks_sizes(sealed):
    path = sealed / "text_encoder.onnx"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ChecksumError, match="truncated"):
        bundle.load(sealed, verify=False)


def test_unverified_load_checks_the_onnx_header(tmp_path):
    (tmp_path / "video_encoder.onnx").write_bytes(b"\x08\x07" + b"graph" * 10)
    (tmp_path / "tokenizer.json").write_bytes(b"{}")  # not .onnx: no header rule
    bundle.write_manifest(tmp_path, {"files": {"video_encoder.onnx": {}, "tokenizer.json": {}}})
    assert bundle.load(tmp_path, verify=False).files["video_encoder.onnx"]["bytes"] == 52
    (tmp_path / "video_encoder.onnx").write_bytes(b"<html>" + b"x" * 46)  # same size, not protobuf
    with pytest.raises(ChecksumError, match="does not start like an ONNX model"):
        bundle.load(tmp_path, verify=False)
    with pytest.raises(ChecksumError, match="sha256"):
        bundle.load(tmp_path, verify=True)
