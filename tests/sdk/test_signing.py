"""Bundle signatures (Ed25519): the right key passes; unsigned, untrusted, re-sealed or forged bundles fail.

Oracles: real keys and signatures from ``cryptography`` (nothing faked), and an attacker who can edit any
file of the bundle and re-seal it with ``write_manifest`` but does not hold the private key.
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys

import pytest

from prvr_sdk import bundle, signing
from prvr_sdk.errors import BackendUnavailableError, BundleError, InvalidInputError

ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")

FILES = {"video_encoder.onnx": {"role": "video_encoder"}, "text_encoder.onnx": {"role": "text_encoder"}}


@pytest.fixture
def keys(tmp_path):
    d = tmp_path / "keys"
    d.mkdir()
    signing.generate_key(d / "release", d / "release.pub")
    signing.generate_key(d / "attacker", d / "attacker.pub")
    return d


@pytest.fixture
def signed(tmp_path, keys):
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "video_encoder.onnx").write_bytes(b"\x08\x08video graph")
    (b / "text_encoder.onnx").write_bytes(b"\x08\x08text graph")
    bundle.write_manifest(b, {"model": {"name": "amdnet"}, "files": FILES})
    signing.sign_manifest(b, keys / "release")
    return b


def test_generate_key_writes_a_private_pem_0600_and_never_overwrites(tmp_path):
    info = signing.generate_key(tmp_path / "k", tmp_path / "k.pub")
    private, public = (tmp_path / "k").read_bytes(), (tmp_path / "k.pub").read_bytes()
    assert private.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert info["fingerprint"] == signing.fingerprint(tmp_path / "k.pub")
    for pair in ((tmp_path / "k", tmp_path / "new.pub"), (tmp_path / "new", tmp_path / "k.pub")):
        with pytest.raises(InvalidInputError, match="already exists"):
            signing.generate_key(*pair)
    assert (tmp_path / "k").read_bytes() == private and (tmp_path / "k.pub").read_bytes() == public
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.pub").exists()


def test_signature_file_records_what_is_signed(signed, keys):
    record = json.loads((signed / signing.SIGNATURE).read_text())
    manifest = bundle.load(signed).manifest
    assert record["algorithm"] == "ed25519"
    assert record["signed"] == manifest["manifest_sha256"] == bundle.manifest_digest(manifest)
    assert signing.fingerprint(base64.b64decode(record["public_key"])) == signing.fingerprint(
        keys / "release.pub"
    )
    assert signing.SIGNATURE not in manifest["files"]  # signing leaves the sealed manifest unchanged


def test_the_right_key_in_any_form_verifies(signed, keys):
    pub = keys / "release.pub"
    raw = signing.load_public_key(pub).public_bytes_raw()
    for trusted in ([pub], [str(pub)], [pub.read_bytes()], [raw], [base64.b64encode(raw)],
                    [signing.load_public_key(pub)], [keys / "attacker.pub", pub]):  # fmt: skip
        assert bundle.load(signed, trusted_keys=trusted).model_name == "amdnet"


def test_unsigned_bundle_is_refused_when_keys_are_given(signed, keys):
    (signed / signing.SIGNATURE).unlink()
    assert bundle.load(signed).model_name == "amdnet"  # no keys: as before, no signature needed
    with pytest.raises(BundleError, match="not signed"):
        bundle.load(signed, trusted_keys=[keys / "release.pub"])


def test_untrusted_key_and_empty_trust_are_refused(signed, keys):
    with pytest.raises(BundleError, match="not trusted"):
        bundle.load(signed, trusted_keys=[keys / "attacker.pub"])
    with pytest.raises(BundleError, match="trusts no signature"):
        bundle.load(signed, trusted_keys=[])


def test_tampered_file_resealed_by_an_attacker_is_refused(signed, keys):
    (signed / "video_encoder.onnx").write_bytes(b"\x08\x08evil graph!")
    bundle.write_manifest(signed, json.loads((signed / bundle.MANIFEST).read_text()))  # recompute all sha256
    assert bundle.load(signed).model_name == "amdnet"  # the unkeyed seal alone cannot tell
    with pytest.raises(BundleError, match="re-sealed or replaced after signing"):
        bundle.load(signed, trusted_keys=[keys / "release.pub"])
    # The attacker also points the old signature at the new digest: it does not verify.
    record = json.loads((signed / signing.SIGNATURE).read_text())
    record["signed"] = bundle.load(signed).manifest["manifest_sha256"]
    (signed / signing.SIGNATURE).write_text(json.dumps(record))
    with pytest.raises(BundleError, match="does not verify"):
        bundle.load(signed, trusted_keys=[keys / "release.pub"])
    # Or re-signs with a key of their own, naming it in signature.json: not trusted.
    signing.sign_manifest(signed, keys / "attacker", overwrite=True)
    with pytest.raises(BundleError, match="not trusted"):
        bundle.load(signed, trusted_keys=[keys / "release.pub"])


def test_forged_signature_bytes_are_refused(signed, keys):
    record = json.loads((signed / signing.SIGNATURE).read_text())
    sig = bytearray(base64.b64decode(record["signature"]))
    sig[0] ^= 1
    record["signature"] = base64.b64encode(bytes(sig)).decode()
    (signed / signing.SIGNATURE).write_text(json.dumps(record))
    with pytest.raises(BundleError, match="does not verify"):
        bundle.load(signed, trusted_keys=[keys / "release.pub"])


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"algorithm": "rsa"}',
        b'{"algorithm": "ed25519"}',
        b'{"algorithm": "ed25519", "public_key": "!!", "signature": "!!", "signed": 1}',
        b"[" * 100_000,
    ],
)
def test_malformed_signature_files_are_bundle_errors(signed, keys, content):
    (signed / signing.SIGNATURE).write_bytes(content)
    with pytest.raises(BundleError):
        bundle.load(signed, trusted_keys=[keys / "release.pub"])


def test_sign_manifest_refuses_to_overwrite_and_bad_keys(signed, keys, tmp_path):
    before = (signed / signing.SIGNATURE).read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        signing.sign_manifest(signed, keys / "attacker")
    assert (signed / signing.SIGNATURE).read_bytes() == before
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(InvalidInputError, match="junk"):
        signing.sign_manifest(signed, tmp_path / "junk", overwrite=True)
    with pytest.raises(InvalidInputError, match="junk"):
        bundle.load(signed, trusted_keys=[tmp_path / "junk"])


def test_missing_cryptography_is_a_backend_error(signed, keys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric", None)  # as if absent
    with pytest.raises(BackendUnavailableError, match=r"prvr-sdk\[onnx\]"):
        bundle.load(signed, trusted_keys=[keys / "release.pub"])


def test_prvr_sdk_imports_and_loads_bundles_without_cryptography(signed):
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "import prvr_sdk, prvr_sdk.signing\n"
        "from prvr_sdk import bundle\n"
        f"print(bundle.load({str(signed)!r}).model_name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "amdnet"
