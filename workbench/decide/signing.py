"""Ed25519 keys, canonical JSON, signatures and the hash chain of decision records.

Canonical bytes of a record (binding, see CONTRACT.md)::

    json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

The signature is raw Ed25519 over exactly those bytes, base64-encoded, so
``openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in record.bin -sigfile sig.bin`` verifies it.
The private key lives only in ``<keys_dir>/ed25519.pem`` (mode 0600); it is never stored elsewhere.
A process holds its keys in one :class:`KeyRing`, made once from its settings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, overload

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from workbench import WorkbenchError
from workbench.paths import within

if TYPE_CHECKING:
    from workbench.config import Settings

PRIVATE_FILE = "ed25519.pem"
PUBLIC_FILE = "ed25519.pub.pem"


class SignatureError(WorkbenchError):
    """A record that must not be trusted: unsigned, tampered, signed by an unknown key, out of chain, stale."""


# -- canonical JSON ---------------------------------------------------------------------------------
def clean(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None, tuples by lists (JSON has neither) and enum members
    (verdicts, outcomes) by their values, which are what their JSON is: a record holds plain JSON values."""
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def canonical_bytes(record: dict) -> bytes:
    """The bytes a record is signed and hashed over (sorted keys, no whitespace, UTF-8)."""
    try:
        text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise WorkbenchError(f"record is not canonical JSON: {e}") from None
    return text.encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@overload
def content_hash(obj: None) -> None: ...
@overload
def content_hash(obj: dict | list) -> str: ...
def content_hash(obj: Any) -> str | None:
    """SHA-256 of the canonical JSON of ``obj`` (None for None): evaluation, drift and policy hashes."""
    return None if obj is None else sha256_hex(canonical_bytes(clean(obj)))


def record_hash(record: dict) -> str:
    """The chain hash of a record: SHA-256 of its canonical bytes."""
    return sha256_hex(canonical_bytes(record))


# -- keys -------------------------------------------------------------------------------------------
def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """``ed25519:`` + SHA-256 (hex) of the 32 raw public-key bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + sha256_hex(raw)


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(
        "ascii"
    )


@dataclass(frozen=True)
class KeyInfo:
    private_key_path: str
    public_key_path: str
    fingerprint: str

    def to_dict(self) -> dict:
        return {
            "private_key_path": self.private_key_path,
            "public_key_path": self.public_key_path,
            "fingerprint": self.fingerprint,
        }


def init_keys(keys_dir: Path) -> KeyInfo:
    """Create the Ed25519 key pair under ``keys_dir`` (private key mode 0600); never overwrites one."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    priv_path, pub_path = keys_dir / PRIVATE_FILE, keys_dir / PUBLIC_FILE
    if priv_path.exists() or pub_path.exists():
        raise WorkbenchError(
            f"a key pair already exists in {keys_dir}; keys are never overwritten (move them "
            "away first, and keep the old public key under keys/trusted/ so old records verify)"
        )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(priv_path, 0o600)  # the umask cannot have widened it, but make the mode explicit
    pub_path.write_text(public_pem(key.public_key()))
    return KeyInfo(str(priv_path), str(pub_path), key_fingerprint(key.public_key()))


def load_private_key(keys_dir: Path) -> Ed25519PrivateKey:
    """The signing key; refused when missing, readable by group or others, or a symlink out of ``keys_dir``."""
    path = within(keys_dir, PRIVATE_FILE, "signing key")
    if not path.exists():
        raise WorkbenchError(f"no signing key in {keys_dir}: run `workbench keys init`")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise WorkbenchError(f"signing key {path} has mode {mode:04o}; it must be 0600 (chmod 600 {path})")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:  # the message never quotes the file's bytes
        raise WorkbenchError(
            f"cannot read signing key {path}: not an unencrypted PEM private key ({type(e).__name__})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise WorkbenchError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise WorkbenchError(f"cannot read public key {path}: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise WorkbenchError(f"{path} is not an Ed25519 public key")
    return key


def own_public_key(keys_dir: Path) -> Ed25519PublicKey:
    path = keys_dir / PUBLIC_FILE
    if not path.exists():
        raise WorkbenchError(f"no key pair in {keys_dir}: run `workbench keys init`")
    return load_public_key(path)


def trusted_keys(keys_dir: Path, trusted_dir: Path, extra: tuple[Path, ...] = ()) -> dict[str, Ed25519PublicKey]:
    """Trusted public keys by fingerprint: the home's own key, ``trusted_dir/*.pem`` and ``extra`` files."""
    paths = [within(keys_dir, PUBLIC_FILE, "public key")] if (keys_dir / PUBLIC_FILE).exists() else []
    if trusted_dir.is_dir():  # a file here that is a symlink out of the folder is refused, not trusted
        paths += [within(trusted_dir, p.name, "trusted key") for p in sorted(trusted_dir.glob("*.pem"))]
    paths += list(extra)
    keys = [load_public_key(p) for p in paths]
    return {key_fingerprint(k): k for k in keys}


# -- sign and verify --------------------------------------------------------------------------------
def sign(private_key: Ed25519PrivateKey, record: dict) -> str:
    """Base64 Ed25519 signature over the record's canonical bytes."""
    return base64.b64encode(private_key.sign(canonical_bytes(record))).decode("ascii")


@dataclass(frozen=True)
class SignedDecision:
    record: dict
    signature: str | None  # None: unsigned (refused by :func:`verify_signature`)

    @property
    def decision_id(self) -> str:
        return self._text("decision_id")

    @property
    def model(self) -> str:
        return self._text("model")

    def _text(self, name: str) -> str:
        value = self.record.get(name)
        if not isinstance(value, str):
            raise SignatureError(f"not a decision record: {name} is {value!r}, not text")
        return value

    def to_dict(self) -> dict:
        return {"decision_id": self.decision_id, "record": self.record, "signature": self.signature}


@dataclass(frozen=True)
class Signer:
    """The private key and the name that signs records (the key never leaves this object)."""

    name: str
    fingerprint: str
    _key: Any

    @classmethod
    def from_keys_dir(cls, keys_dir: Path, name: str) -> Signer:
        key = load_private_key(keys_dir)
        return cls(name, key_fingerprint(key.public_key()), key)

    def sign(self, record: dict) -> SignedDecision:
        return SignedDecision(record, sign(self._key, record))

    def __repr__(self) -> str:
        return f"Signer({self.name!r}, {self.fingerprint!r})"


class KeyRing:
    """A process's keys: the public keys trusted to move a weight, by fingerprint, and its signer.

    A process makes its ring once (:meth:`from_settings`: the CLI per command, the service and the router at
    start) and hands it to what verifies (``ring.trusted``) or signs (``ring.signer``). The trusted keys are
    read when the ring is made, so a key added to ``keys/trusted/`` (or a new key pair) counts from the next
    start. The private key is read when the ring first signs (at once with ``sign=True``) and then kept: a
    process that never signs never reads it, and one whose home has no key pair still verifies.
    """

    def __init__(
        self,
        trusted: Mapping[str, Ed25519PublicKey],
        signer: Signer | None = None,
        *,
        keys_dir: Path | None = None,
        signer_name: str | None = None,
    ):
        self.trusted: Mapping[str, Ed25519PublicKey] = MappingProxyType(dict(trusted))
        self._signer, self._keys_dir, self._signer_name = signer, keys_dir, signer_name

    @classmethod
    def from_settings(cls, settings: Settings, *, sign: bool = False) -> KeyRing:
        """The home's ring: its own public key, ``keys/trusted/*.pem`` and ``WORKBENCH_TRUSTED_KEYS``; the
        signer is ``WORKBENCH_SIGNER`` with the home's private key (read now with ``sign``, else when needed)."""
        signer = Signer.from_keys_dir(settings.keys_dir, settings.signer) if sign else None
        return cls(
            trusted_keys(settings.keys_dir, settings.trusted_keys_dir, settings.trusted_keys),
            signer,
            keys_dir=settings.keys_dir,
            signer_name=settings.signer,
        )

    @property
    def signer(self) -> Signer:
        """The signer (its key read on first use); :class:`WorkbenchError` when there is no key to sign with."""
        if self._signer is None:
            if self._keys_dir is None or self._signer_name is None:
                raise WorkbenchError("no signing key: this key ring only verifies")
            self._signer = Signer.from_keys_dir(self._keys_dir, self._signer_name)
        return self._signer

    def signer_as(self, name: str) -> Signer:
        """The ring's signing key under another signer name (an approver who signs in the app)."""
        return replace(self.signer, name=name)

    def __repr__(self) -> str:
        return f"KeyRing(trusted={sorted(self.trusted)}, signer={self._signer!r})"


def verify_signature(record: dict, signature: str | None, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """Check that a trusted key signed exactly this record; returns the key fingerprint.

    Raises :class:`SignatureError` naming the problem: unsigned, malformed signature, unknown or
    untrusted key, or a signature that does not match the record's bytes (tampered or another key).
    """
    if not isinstance(record, dict):
        raise SignatureError("not a decision record (expected a JSON object)")
    if not signature:
        raise SignatureError(f"decision {record.get('decision_id')} is unsigned")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise SignatureError(f"decision {record.get('decision_id')}: signature is not valid base64") from None
    fp = record.get("key_fingerprint")
    if not fp:
        raise SignatureError(f"decision {record.get('decision_id')} names no key_fingerprint")
    key = trusted.get(fp)
    if key is None:
        raise SignatureError(
            f"decision {record.get('decision_id')} is signed by key {fp}, which is not trusted "
            f"(trusted: {', '.join(sorted(trusted)) or 'none'})"
        )
    try:
        key.verify(raw, canonical_bytes(record))
    except InvalidSignature:
        raise SignatureError(
            f"decision {record.get('decision_id')}: signature does not match the record "
            "(the record was altered or signed by another key)"
        ) from None
    return fp
