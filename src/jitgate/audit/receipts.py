"""Signed approval receipts: proof, checkable offline, that an action was approved.

A receipt is a JSON document the server signs with its audit key
(:mod:`jitgate.audit.keys`) once a request has been approved. It names the
exact action (kind, text or payload, target, environment) and its
fingerprint, who asked, the approval chain it satisfied, every approval (who,
which stage, when, with or without MFA) and the grant that followed. Anyone
holding the server's public key can check it without the server or the
database::

    {"format": "jitgate.receipt/v1", "issuer": "jitgate", "issued_at": ...,
     "request_id": ..., "fingerprint": "sha256:...", "action": {...},
     "requester": {...}, "rules": [...], "risk": ..., "created_at": ...,
     "approved_at": ..., "break_glass": false, "break_glass_justification": null,
     "chain": {...}, "approvals": [...], "grant": {...},
     "signature": {"alg": "Ed25519", "key_id": ..., "value": ...}}

The signature covers the RFC 8785 canonical bytes of everything but
``signature``; the ``format`` inside the signed bytes separates receipts from
the other things the key signs (audit checkpoints). Times are UTC with
microseconds (:func:`jitgate.audit.chain.canonical_time`).

Deterministic: the receipt holds nothing but what the request held at
approval (no status, no execution, no wall clock: ``issued_at`` defaults to
``approved_at``), and Ed25519 signatures are deterministic, so fetching the
receipt of a request twice, before or after it ran, gives the same bytes.

Pure: no I/O, no clock. See docs/receipts.md for what a receipt proves and
what it does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from jitgate.actions.model import Action, ActionKind, InvalidAction, fingerprint
from jitgate.approvals.quorum import required_approvals, stage_allocation
from jitgate.approvals.request import ApprovalRequest, RequestStatus
from jitgate.audit.chain import canonical_bytes, canonical_time
from jitgate.audit.keys import SigningKey, TrustedKeys, b64decode, b64encode

#: The ``format`` of a version 1 receipt (part of the signed bytes).
RECEIPT_FORMAT: Final = "jitgate.receipt/v1"
#: The only signature algorithm of version 1.
ALGORITHM: Final = "Ed25519"
DEFAULT_ISSUER: Final = "jitgate"

#: Statuses of a request that has been approved (and not revoked or let expire).
RECEIPT_STATUSES: Final = frozenset(
    {
        RequestStatus.APPROVED,
        RequestStatus.EXECUTING,
        RequestStatus.EXECUTED,
        RequestStatus.FAILED,
    }
)

#: Reasons a receipt does not verify (``ReceiptCheck.reason``).
MALFORMED: Final = "malformed"
UNKNOWN_KEY: Final = "unknown_key"
BAD_SIGNATURE: Final = "bad_signature"
#: The signed action does not hash to the signed fingerprint.
INCONSISTENT: Final = "inconsistent"
#: The receipt is valid, but for another action than the one given.
ACTION_MISMATCH: Final = "action_mismatch"

#: Length of an unpadded base64url Ed25519 signature (64 bytes).
_SIGNATURE_CHARS: Final = 86


class ReceiptError(ValueError):
    """A receipt that cannot be issued; ``code`` is stable (``not_approved``,
    ``incomplete_request``, ``unrepresentable``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- building and signing --------------------------------------------------------------


def build_receipt(
    req: ApprovalRequest,
    *,
    issued_at: datetime | None = None,
    issuer: str = DEFAULT_ISSUER,
) -> dict[str, Any]:
    """The unsigned receipt body for ``req``, which must have been approved.

    ``issued_at`` defaults to the request's ``approved_at``: the receipt of a
    request is then the same whenever it is asked for. Raises
    :class:`ReceiptError` ``not_approved`` for a request that is pending, was
    denied, expired or cancelled (its grant revoked).
    """
    if req.status not in RECEIPT_STATUSES:
        raise ReceiptError("not_approved", f"request {req.id} is {req.status.value}, not approved")
    grant = req.grant
    if req.approved_at is None or grant is None:
        raise ReceiptError(
            "incomplete_request", f"request {req.id} is {req.status.value} but has no grant"
        )
    glass = req.break_glass
    stages: list[dict[str, Any]] = []
    approvals: list[dict[str, Any]] = []
    for index, (stage, state) in enumerate(zip(req.chain.stages, req.stages, strict=True)):
        stages.append(
            {
                "name": stage.name,
                "groups": list(stage.groups),
                "eligible_groups": list(state.eligible_groups or stage.groups),
                "quorum": stage.quorum.value,
                "approvals_required": required_approvals(stage),
                "mfa": stage.mfa,
            }
        )
        allocation = stage_allocation(stage, state.approvals)
        for approval in state.approvals:
            approvals.append(
                {
                    "approver": approval.approver,
                    "stage": stage.name,
                    "stage_index": index,
                    "group": allocation.get(approval.approver),
                    "groups": list(approval.groups),
                    "at": canonical_time(approval.at),
                    "mfa_verified": approval.mfa_verified,
                    "comment": approval.comment,
                }
            )
    action = req.action
    return {
        "format": RECEIPT_FORMAT,
        "issuer": issuer,
        "issued_at": canonical_time(issued_at or req.approved_at),
        "request_id": req.id,
        "fingerprint": req.fingerprint,
        "action": {
            "kind": action.kind.value,
            "text": action.text,
            "payload": _plain(action.payload),
            "target": action.target,
            "environment": action.environment,
        },
        "requester": {"user": req.requester.user, "groups": sorted(req.requester.groups)},
        "rules": list(req.rules),
        "risk": req.risk,
        "created_at": canonical_time(req.created_at),
        "approved_at": canonical_time(req.approved_at),
        "break_glass": glass is not None,
        "break_glass_justification": None if glass is None else glass.justification,
        "chain": {"stages": stages, "break_glass_allowed": req.chain.break_glass},
        "approvals": approvals,
        "grant": {
            "scope": grant.scope.value,
            "rule_ids": list(grant.rule_ids),
            "issued_at": canonical_time(grant.issued_at),
            "expires_at": canonical_time(grant.expires_at),
        },
    }


def _plain(value: Any) -> Any:
    """JSON data as plain dicts and lists (the action's payload)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def unsigned(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The receipt without its ``signature``: what the signature covers."""
    return {k: v for k, v in doc.items() if k != "signature"}


def signed_bytes(doc: Mapping[str, Any]) -> bytes:
    """The RFC 8785 bytes the signature of ``doc`` covers.

    Raises :class:`ReceiptError` ``unrepresentable`` for content RFC 8785
    cannot carry exactly (integers beyond 2**53, NaN, lone surrogates).
    """
    try:
        return canonical_bytes(unsigned(doc))
    except (ValueError, TypeError, OverflowError) as exc:
        raise ReceiptError("unrepresentable", f"the receipt is not canonical JSON: {exc}") from None


def sign_receipt(body: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    """``body`` with ``signature``: Ed25519 by ``key`` over :func:`signed_bytes`."""
    message = signed_bytes(body)
    return {
        **unsigned(body),
        "signature": {"alg": ALGORITHM, "key_id": key.key_id, "value": key.sign(message)},
    }


def issue_receipt(
    req: ApprovalRequest, key: SigningKey, *, issuer: str = DEFAULT_ISSUER
) -> dict[str, Any]:
    """The signed receipt of an approved request (see :func:`build_receipt`)."""
    return sign_receipt(build_receipt(req, issuer=issuer), key)


def receipt_digest(doc: Mapping[str, Any]) -> str:
    """Lower-case hex SHA-256 of the RFC 8785 bytes of the whole signed receipt."""
    try:
        return hashlib.sha256(canonical_bytes(doc)).hexdigest()
    except (ValueError, TypeError, OverflowError) as exc:
        raise ReceiptError("unrepresentable", f"the receipt is not canonical JSON: {exc}") from None


def receipt_action(doc: Mapping[str, Any]) -> Action:
    """The action a (well-formed) receipt names, exactly as signed."""
    action = doc["action"]
    return Action(
        kind=ActionKind(action["kind"]),
        text=action["text"],
        payload=dict(action["payload"]),
        target=action["target"],
        environment=action["environment"],
    )


# --- verifying -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceiptCheck:
    """The outcome of :func:`verify_receipt`; true only if the receipt is valid."""

    ok: bool
    #: None when valid, else a stable code: ``malformed``, ``unknown_key``,
    #: ``bad_signature``, ``inconsistent``, ``action_mismatch``.
    reason: str | None = None
    message: str = ""
    key_id: str | None = None

    def __bool__(self) -> bool:
        return self.ok


def _refuse(reason: str, message: str, key_id: str | None = None) -> ReceiptCheck:
    return ReceiptCheck(False, reason, message, key_id)


def verify_receipt(
    doc: Any,
    trusted: TrustedKeys,
    *,
    action: Action | None = None,
    expected_fingerprint: str | None = None,
) -> ReceiptCheck:
    """Whether ``doc`` is a receipt signed by one of the ``trusted`` keys.

    Checks, in order: the shape (``malformed``), the key (``unknown_key``),
    the signature over the canonical bytes (``bad_signature``), that the
    signed action hashes to the signed fingerprint (``inconsistent``), and,
    when ``action`` or ``expected_fingerprint`` is given, that the receipt is
    for that very action (``action_mismatch``): a receipt for ``DELETE FROM t
    WHERE id = 1`` does not vouch for ``DELETE FROM t``.
    """
    problem = receipt_problem(doc)
    if problem is not None:
        return _refuse(MALFORMED, problem)
    signature = doc["signature"]
    kid = signature["key_id"]
    if kid not in trusted:
        return _refuse(UNKNOWN_KEY, f"signed by key {kid}, which is not trusted", kid)
    try:
        message = signed_bytes(doc)
    except ReceiptError as exc:
        return _refuse(MALFORMED, exc.message, kid)
    if not trusted.verify(kid, signature["value"], message):
        return _refuse(BAD_SIGNATURE, "the signature does not match the receipt", kid)
    try:
        signed_fingerprint = fingerprint(receipt_action(doc))
    except (InvalidAction, ValueError, TypeError) as exc:
        return _refuse(INCONSISTENT, f"the signed action cannot be fingerprinted: {exc}", kid)
    if signed_fingerprint != doc["fingerprint"]:
        return _refuse(INCONSISTENT, "the signed action does not match the signed fingerprint", kid)
    if action is not None:
        try:
            given = fingerprint(action)
        except (InvalidAction, ValueError, TypeError) as exc:
            return _refuse(ACTION_MISMATCH, f"the given action cannot be fingerprinted: {exc}", kid)
        if given != doc["fingerprint"]:
            return _refuse(
                ACTION_MISMATCH,
                f"the receipt is for another action ({doc['fingerprint']}, not {given})",
                kid,
            )
    if expected_fingerprint is not None and expected_fingerprint != doc["fingerprint"]:
        return _refuse(
            ACTION_MISMATCH,
            f"the receipt is for {doc['fingerprint']}, not {expected_fingerprint}",
            kid,
        )
    return ReceiptCheck(True, None, "valid", kid)


# --- the shape of a receipt -----------------------------------------------------------

_Check = Callable[[Any], bool]


def _str(value: Any) -> bool:
    return isinstance(value, str)


def _opt_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strs(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is not None


def _object(value: Any) -> bool:
    return isinstance(value, Mapping)


_ACTION: Final[Mapping[str, _Check]] = {
    "kind": lambda v: isinstance(v, str) and v in {k.value for k in ActionKind},
    "text": _str,
    "payload": _object,
    "target": _str,
    "environment": _str,
}
_STAGE: Final[Mapping[str, _Check]] = {
    "name": _str,
    "groups": _strs,
    "eligible_groups": _strs,
    "quorum": _str,
    "approvals_required": _int,
    "mfa": _bool,
}
_APPROVAL: Final[Mapping[str, _Check]] = {
    "approver": _str,
    "stage": _str,
    "stage_index": _int,
    "group": _opt_str,
    "groups": _strs,
    "at": _time,
    "mfa_verified": _bool,
    "comment": _str,
}
_GRANT: Final[Mapping[str, _Check]] = {
    "scope": _str,
    "rule_ids": _strs,
    "issued_at": _time,
    "expires_at": _time,
}
_REQUESTER: Final[Mapping[str, _Check]] = {"user": _str, "groups": _strs}
_TOP: Final[Mapping[str, _Check]] = {
    "format": lambda v: v == RECEIPT_FORMAT,
    "issuer": _str,
    "issued_at": _time,
    "request_id": _str,
    "fingerprint": _str,
    "rules": _strs,
    "risk": _str,
    "created_at": _time,
    "approved_at": _time,
    "break_glass": _bool,
    "break_glass_justification": _opt_str,
}


def _fields(value: Any, spec: Mapping[str, _Check], where: str) -> str | None:
    if not isinstance(value, Mapping):
        return f"{where} is not an object"
    for name, check in spec.items():
        if name not in value:
            return f"{where} has no {name}"
        if not check(value[name]):
            return f"{where}.{name} is not valid"
    return None


def receipt_problem(doc: Any) -> str | None:
    """Why ``doc`` is not shaped like a version 1 receipt, or None if it is."""
    if not isinstance(doc, Mapping):
        return "a receipt is a JSON object"
    if doc.get("format") != RECEIPT_FORMAT:
        return f"not a {RECEIPT_FORMAT} document"
    problem = _fields(doc, _TOP, "receipt")
    if problem is None:
        problem = _fields(doc.get("action"), _ACTION, "action")
    if problem is None:
        problem = _fields(doc.get("requester"), _REQUESTER, "requester")
    if problem is None:
        problem = _fields(doc.get("grant"), _GRANT, "grant")
    if problem is not None:
        return problem
    chain = doc.get("chain")
    if not isinstance(chain, Mapping) or not isinstance(chain.get("stages"), list):
        return "chain.stages is not a list"
    if not _bool(chain.get("break_glass_allowed")):
        return "chain.break_glass_allowed is not valid"
    for number, stage in enumerate(chain["stages"]):
        problem = _fields(stage, _STAGE, f"chain.stages[{number}]")
        if problem is not None:
            return problem
    approvals = doc.get("approvals")
    if not isinstance(approvals, list):
        return "approvals is not a list"
    for number, approval in enumerate(approvals):
        problem = _fields(approval, _APPROVAL, f"approvals[{number}]")
        if problem is not None:
            return problem
    return _signature_problem(doc.get("signature"))


def _signature_problem(signature: Any) -> str | None:
    if not isinstance(signature, Mapping):
        return "the receipt is not signed"
    if set(signature) != {"alg", "key_id", "value"}:
        return "signature must have exactly alg, key_id and value"
    if signature["alg"] != ALGORITHM:
        return f"unsupported signature algorithm {signature['alg']!r}"
    if not isinstance(signature["key_id"], str) or not signature["key_id"]:
        return "signature.key_id is not valid"
    value = signature["value"]
    if not isinstance(value, str) or len(value) != _SIGNATURE_CHARS:
        return "signature.value is not an Ed25519 signature"
    # One spelling per signature: base64 decoders skip stray characters and
    # ignore the last character's spare bits, which would let a changed
    # signature text still verify.
    try:
        canonical = b64encode(b64decode(value)) == value
    except ValueError:
        canonical = False
    if not canonical:
        return "signature.value is not canonical base64url"
    return None


__all__ = [
    "ACTION_MISMATCH",
    "ALGORITHM",
    "BAD_SIGNATURE",
    "DEFAULT_ISSUER",
    "INCONSISTENT",
    "MALFORMED",
    "RECEIPT_FORMAT",
    "RECEIPT_STATUSES",
    "UNKNOWN_KEY",
    "ReceiptCheck",
    "ReceiptError",
    "build_receipt",
    "issue_receipt",
    "receipt_action",
    "receipt_digest",
    "receipt_problem",
    "sign_receipt",
    "signed_bytes",
    "unsigned",
    "verify_receipt",
]
