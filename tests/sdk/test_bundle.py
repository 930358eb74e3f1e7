"""Bundle loading detects every kind of tampering (DESIGN.md §3.3)."""

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
