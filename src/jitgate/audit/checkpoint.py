"""Signed checkpoints: "the trail up to ``seq`` hashes to ``hash``", signed by the server.

The hash chain alone shows any edit that is not followed by recomputing every
later hash; an attacker with write access to the database can recompute
them, since hashing needs no secret. A checkpoint closes that gap: its
Ed25519 signature over ``(seq, hash, at, key_id)`` can only be made with the
server's key, which is not in the database. A rewritten stretch of the chain
then no longer matches the next signed checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from jitgate.audit.chain import canonical_bytes, canonical_time
from jitgate.audit.keys import SigningKey, TrustedKeys

#: What a checkpoint signature is over (domain separation from receipts).
CHECKPOINT_FORMAT: Final = "jitgate.audit.checkpoint/v1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    seq: int
    hash: str
    #: Canonical time text (see :func:`jitgate.audit.chain.canonical_time`).
    at: str
    key_id: str
    signature: str

    def message(self) -> bytes:
        return checkpoint_message(self.seq, self.hash, self.at, self.key_id)

    def signed_by(self, trusted: TrustedKeys) -> bool:
        return trusted.verify(self.key_id, self.signature, self.message())

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "at": self.at,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Checkpoint:
        if not isinstance(data, dict):
            raise ValueError("a checkpoint is a JSON object")
        seq = data.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError("checkpoint seq must be an integer")
        fields = {}
        for name in ("hash", "at", "key_id", "signature"):
            value = data.get(name)
            if not isinstance(value, str):
                raise ValueError(f"checkpoint {name} must be a string")
            fields[name] = value
        return cls(seq=seq, **fields)


def checkpoint_message(seq: int, hash: str, at: str, key_id: str) -> bytes:
    return canonical_bytes(
        {"format": CHECKPOINT_FORMAT, "seq": seq, "hash": hash, "at": at, "key_id": key_id}
    )


def sign_checkpoint(key: SigningKey, seq: int, hash: str, at: datetime) -> Checkpoint:
    when = canonical_time(at)
    kid = key.key_id
    return Checkpoint(
        seq=seq,
        hash=hash,
        at=when,
        key_id=kid,
        signature=key.sign(checkpoint_message(seq, hash, when, kid)),
    )
