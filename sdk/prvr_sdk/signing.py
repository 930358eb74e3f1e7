"""Ed25519 signatures for export bundles: who made this bundle, not just "is it intact".

The manifest's sha256 seal is unkeyed, so anyone who edits a bundle can re-seal it. A signature binds
the bundle to a private key instead. Design:

* What is signed: the manifest's self digest (``manifest_sha256``), which covers every manifest field
  and, through each file's recorded sha256, every byte of every listed file. The signed message is
  ``b"prvr-bundle-manifest-v1\\x00" + manifest_sha256`` (ASCII hex), domain-separated so the signature
  cannot be replayed as a signature of anything else.
* Where: a separate ``signature.json`` beside ``manifest.json`` (not listed in the manifest, so the
  manifest and its digest stay unchanged and re-signing never re-seals)::

      {"algorithm": "ed25519", "public_key": "<base64 raw 32 bytes>",
       "signature": "<base64 64 bytes>", "signed": "<manifest_sha256>"}

* Verifying (``verify_bundle_signature``, also ``bundle.load(..., trusted_keys=...)``): the signature
  file must exist, be well formed, name a public key that is among the trusted keys, sign exactly the
  digest of the manifest on disk, and the signature must verify under that trusted key. ``public_key``
  in the file only selects the key; trust comes from the caller's list.
* Keys: ``generate_key`` writes a PEM PKCS#8 private key (mode 0600) and a PEM public key, never
  overwriting existing files. The private key is not encrypted: protect it like any deploy secret.

``cryptography`` is imported inside functions, so ``import prvr_sdk`` works without it; a missing
package raises ``BackendUnavailableError`` naming the ``onnx`` extra.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import BackendUnavailableError, BundleError, InvalidInputError
from .fsutil import atomic_write

__all__ = [
    "ALGORITHM",
    "SIGNATURE",
    "fingerprint",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "sign_manifest",
    "verify_bundle_signature",
]

ALGORITHM = "ed25519"
SIGNATURE = "signature.json"
_CONTEXT = b"prvr-bundle-manifest-v1\x00"
_MAX_SIGNATURE_BYTES = 64 << 10
_MAX_KEY_BYTES = 64 << 10


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        detail = f"needed for bundle signatures: {exc}"
        raise BackendUnavailableError("cryptography", "onnx", detail) from None
    return ed25519


def _serialization() -> Any:
    _ed25519()
    from cryptography.hazmat.primitives import serialization

    return serialization


def _message(manifest_sha256: str) -> bytes:
    return _CONTEXT + manifest_sha256.encode("ascii")


def _raw_public(key: Any) -> bytes:
    ser = _serialization()
    return key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


def fingerprint(key: Any) -> str:
    """Short id of a public key: sha256 of its raw 32 bytes, first 16 hex digits (for logs and CLI)."""
    return hashlib.sha256(_raw_public(load_public_key(key))).hexdigest()[:16]


def _read_small(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise InvalidInputError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise InvalidInputError(f"{what} {path}: over {limit} bytes, not a key file")
    return data


def load_public_key(key: Any) -> Any:
    """An ``Ed25519PublicKey`` from a key object, a file path, or bytes.

    Bytes (or a file's content) may be PEM (``-----BEGIN PUBLIC KEY-----``), the raw 32 bytes, or those 32
    bytes base64-encoded (as in ``signature.json``). A private key object gives its public key.

    Raises:
        InvalidInputError: unreadable file or not an Ed25519 public key.
    """
    ed25519 = _ed25519()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key()
    source = "public key"
    if isinstance(key, str | os.PathLike):
        source = f"public key file {key}"
        data = _read_small(Path(key), _MAX_KEY_BYTES, "public key file")
    elif isinstance(key, bytes | bytearray):
        data = bytes(key)
    else:
        raise InvalidInputError(
            f"trusted key: expected a path, bytes or Ed25519PublicKey, got {type(key).__name__}"
        )
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            loaded = _serialization().load_pem_public_key(data)
        except ValueError as exc:
            raise InvalidInputError(f"{source}: not a PEM public key ({exc})") from None
        if not isinstance(loaded, ed25519.Ed25519PublicKey):
            raise InvalidInputError(f"{source}: expected an Ed25519 key, got {type(loaded).__name__}")
        return loaded
    if len(data) != 32:
        try:
            data = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError):
            pass
    if len(data) != 32:
        raise InvalidInputError(f"{source}: expected PEM, 32 raw bytes or base64 of them; got {len(data)} B")
    return ed25519.Ed25519PublicKey.from_public_bytes(data)


def load_private_key(key: Any) -> Any:
    """An ``Ed25519PrivateKey`` from a key object or an unencrypted PEM file (``generate_key`` writes one).

    Raises:
        InvalidInputError: unreadable file or not an Ed25519 private key.
    """
    ed25519 = _ed25519()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if not isinstance(key, str | os.PathLike):
        raise InvalidInputError(f"signing key: expected a path or private key, got {type(key).__name__}")
    data = _read_small(Path(key), _MAX_KEY_BYTES, "private key file")
    try:
        loaded = _serialization().load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"private key file {key}: not an unencrypted PEM key ({exc})") from None
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise InvalidInputError(f"private key file {key}: expected Ed25519, got {type(loaded).__name__}")
    return loaded


def _create(path: Path, data: bytes, mode: int) -> None:
    """Write a new file with permissions ``mode``, whole or not at all, never over an existing one."""
    atomic_write(path, data, mode=mode, overwrite=False, parents=False)


def generate_key(private_path: str | os.PathLike, public_path: str | os.PathLike) -> dict[str, str]:
    """Create an Ed25519 key pair: PEM PKCS#8 private key (mode 0600) and PEM public key (0644).

    Returns ``{"private_key", "public_key", "fingerprint"}``.

    Raises:
        InvalidInputError: either file already exists (keys are never overwritten), or cannot be written.
    """
    ed25519, ser = _ed25519(), _serialization()
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise InvalidInputError(f"private and public key paths are the same file: {private_path}")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise InvalidInputError(f"{path} already exists; keys are never overwritten, choose another path")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    public_pem = key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    try:
        _create(private_path, private_pem, 0o600)
    except OSError as exc:
        raise InvalidInputError(f"cannot write private key {private_path} ({exc.strerror or exc})") from None
    try:
        _create(public_path, public_pem, 0o644)
    except OSError as exc:
        private_path.unlink()
        raise InvalidInputError(f"cannot write public key {public_path} ({exc.strerror or exc})") from None
    return {"private_key": str(private_path), "public_key": str(public_path), "fingerprint": fingerprint(key)}


def sign_manifest(
    bundle_dir: str | os.PathLike, private_key: Any, *, overwrite: bool = False
) -> dict[str, str]:
    """Sign a sealed bundle: write ``signature.json`` over its manifest digest; return its content.

    The manifest is read and checked first (``bundle.read_manifest``: safe names, valid seal), so only a
    sealed manifest is ever signed. Files are not re-hashed here: sign right after sealing (export does).

    Raises:
        BundleError: not a valid bundle; ``signature.json`` exists and ``overwrite`` is false.
        InvalidInputError: unreadable or non-Ed25519 private key.
    """
    from .bundle import read_manifest

    directory = Path(bundle_dir)
    manifest = read_manifest(directory)
    key = load_private_key(private_key)
    target = directory / SIGNATURE
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise BundleError(f"{target} already exists; pass overwrite=True to replace the signature")
    digest = str(manifest["manifest_sha256"])
    record = {
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(_raw_public(key.public_key())).decode("ascii"),
        "signature": base64.b64encode(key.sign(_message(digest))).decode("ascii"),
        "signed": digest,
    }
    atomic_write(target, json.dumps(record, indent=2, sort_keys=True) + "\n", mode=0o644, parents=False)
    return record


def _read_signature(directory: Path) -> dict[str, Any]:
    path = directory / SIGNATURE
    if not path.is_file():
        raise BundleError(f"bundle {directory} is not signed ({SIGNATURE} is missing) but trusted keys were "
                          "given; export it with `prvr export --sign-key KEY`")
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_SIGNATURE_BYTES + 1)
        if len(raw) > _MAX_SIGNATURE_BYTES:
            raise BundleError(f"{path}: over {_MAX_SIGNATURE_BYTES} bytes, not a signature file")
        record = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable JSON signature file ({type(exc).__name__})") from None
    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM:
        got = record.get("algorithm") if isinstance(record, dict) else type(record).__name__
        raise BundleError(f"{path}: expected an object with algorithm {ALGORITHM!r}, got {got!r:.40}")
    for field in ("public_key", "signature", "signed"):
        if not isinstance(record.get(field), str):
            raise BundleError(f"{path}: field {field!r} must be a string")
    return record


def verify_bundle_signature(
    bundle_dir: str | os.PathLike, manifest: dict[str, Any], trusted_keys: Iterable[Any]
) -> dict[str, str]:
    """Check that ``bundle_dir/signature.json`` signs ``manifest`` with one of ``trusted_keys``.

    ``manifest`` must already be checked (``bundle.read_manifest``: its self digest matches its content).
    Returns ``{"fingerprint": ..., "signed": ...}`` of the key that signed.

    Raises:
        BundleError: unsigned bundle, malformed signature file, a key not among ``trusted_keys`` (an empty
            list trusts nobody), a signature of another manifest, or a signature that does not verify.
        InvalidInputError: a trusted key that cannot be read.
    """
    _ed25519()  # BackendUnavailableError before any other cryptography import
    from cryptography.exceptions import InvalidSignature

    directory = Path(bundle_dir)
    keys = [load_public_key(k) for k in trusted_keys]
    if not keys:
        raise BundleError(f"bundle {directory}: an empty list of trusted keys trusts no signature")
    record = _read_signature(directory)
    path = directory / SIGNATURE
    digest = manifest.get("manifest_sha256")
    if record["signed"] != digest:
        raise BundleError(f"{path} signs manifest {record['signed'][:16]:.16}…, but the manifest is "
                          f"{str(digest)[:16]}… (re-sealed or replaced after signing)")
    try:
        raw = base64.b64decode(record["public_key"], validate=True)
        signature = base64.b64decode(record["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{path}: public_key and signature must be base64") from None
    by_raw = {_raw_public(k): k for k in keys}
    key = by_raw.get(raw)
    if key is None:
        shown = hashlib.sha256(raw).hexdigest()[:16]
        trusted = ", ".join(sorted(fingerprint(k) for k in keys))
        raise BundleError(f"bundle {directory} is signed by key {shown}, which is not trusted "
                          f"(trusted: {trusted})")
    try:
        key.verify(signature, _message(str(digest)))
    except InvalidSignature:
        raise BundleError(f"{path}: the signature does not verify under trusted key {fingerprint(key)} "
                          "(forged or corrupted signature)") from None
    return {"fingerprint": fingerprint(key), "signed": str(digest)}
