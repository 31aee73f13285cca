"""The ``policy.loaded`` audit event: which policy a server process enforces.

Written once per server start (``jitgate.server.run.serve``, right after the
store is migrated), before any request is served, so every decision in the
trail that follows can be tied to the exact policy text: ``sha256`` is over
the bytes the policy was loaded from (:attr:`Policy.source_sha256`), or,
for a policy compiled from a spec built in code, over the canonical JSON of
that spec (``digest_of`` says which).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from datetime import UTC, datetime
from typing import Any, Final

from jitgate import __version__
from jitgate.policy import Policy, default_policy
from jitgate.store import Database, append_event

#: The ``source`` of the default catalog shipped with jitgate.
BUILTIN_DEFAULT: Final = "builtin:default"


def policy_digest(policy: Policy) -> tuple[str, str]:
    """``(sha256 hex, digest_of)``: of the source bytes (``"source"``) when known,
    else of the canonical JSON of the compiled policy's spec (``"spec"``)."""
    if policy.source_sha256 is not None:
        return policy.source_sha256, "source"
    canonical = json.dumps(
        policy.spec.model_dump(mode="json", warnings=False),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest(), "spec"


def policy_source(policy: Policy) -> str:
    """Where the policy came from: its file, or ``builtin:default``."""
    return BUILTIN_DEFAULT if policy is default_policy() else policy.source


def policy_loaded_payload(policy: Policy) -> dict[str, Any]:
    digest, digest_of = policy_digest(policy)
    return {
        "source": policy_source(policy),
        "name": policy.name,
        "sha256": digest,
        "digest_of": digest_of,
        "rule_count": len(policy.rules),
        "chain_count": len(policy.chains),
        "default": policy.default.label,
        "jitgate_version": __version__,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


async def record_policy_loaded(db: Database, policy: Policy, *, at: datetime | None = None) -> int:
    """Append ``policy.loaded`` (actor: none, the server itself) in its own
    transaction; its ``seq``."""
    async with db.transaction() as session:
        return await append_event(
            session,
            "policy.loaded",
            None,
            None,
            policy_loaded_payload(policy),
            at if at is not None else datetime.now(UTC),
        )
