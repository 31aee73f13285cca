"""The server's Ed25519 signing key, and the public keys verifiers trust.

The key signs audit checkpoints and approval receipts. It lives in a file
outside the database on purpose: whoever can write the database but not read
the key file cannot forge a signature, so a rewritten trail or a forged
receipt shows. The private key file is PEM (PKCS#8), mode 0600; the public key
is exported as PEM (SubjectPublicKeyInfo) for verifiers.

A key is named by its ``key_id``: the first 16 hex digits of the SHA-256 of
the raw 32-byte public key. Signatures travel as unpadded URL-safe base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

#: File name of the signing key inside the data directory.
DEFAULT_KEY_FILENAME: Final = "audit-signing-key.pem"


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or not an Ed25519 key."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError("a signature is a base64 string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64: {exc}") from None


@dataclass(frozen=True)
class VerifyKey:
    """A public key a verifier trusts."""

    public: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def verify(self, signature: str, message: bytes) -> bool:
        try:
            self.public.verify(b64decode(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    @classmethod
    def from_pem(cls, data: bytes | str) -> VerifyKey:
        raw = data.encode("ascii", "replace") if isinstance(data, str) else data
        try:
            key = serialization.load_pem_public_key(raw)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError("not an Ed25519 public key")
        return cls(key)

    @classmethod
    def load(cls, path: str | Path) -> VerifyKey:
        """A public key file, or the public half of a private key file."""
        data = _read(path)
        if b"PRIVATE KEY" in data:
            return SigningKey.from_pem(data, str(path)).verify_key
        try:
            return cls.from_pem(data)
        except KeyFileError as exc:
            raise KeyFileError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class SigningKey:
    """The server's private key."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.private.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())

    def sign(self, message: bytes) -> str:
        return b64encode(self.private.sign(message))

    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, data: bytes, source: str = "key") -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{source}: not an Ed25519 private key")
        return cls(key)

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        return cls.from_pem(_read(path), str(path))

    def save(self, path: str | Path) -> None:
        """Write the key to a new file only the owner can read (never overwrites)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.pem())

    @classmethod
    def load_or_create(cls, path: str | Path) -> SigningKey:
        """The key in ``path``, generated there first if the file does not exist."""
        path = Path(path)
        if not path.exists():
            key = cls.generate()
            try:
                key.save(path)
            except FileExistsError:
                pass  # another process created it first: use theirs
            else:
                return key
        return cls.load(path)


class TrustedKeys:
    """The public keys a verifier accepts, by key id."""

    def __init__(self, keys: Iterable[VerifyKey] = ()) -> None:
        self._keys: dict[str, VerifyKey] = {k.key_id: k for k in keys}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    @property
    def ids(self) -> Mapping[str, VerifyKey]:
        return dict(self._keys)

    def verify(self, kid: str, signature: str, message: bytes) -> bool:
        key = self._keys.get(kid)
        return key is not None and key.verify(signature, message)


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
