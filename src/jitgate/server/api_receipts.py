"""Signed approval receipts over HTTP: ``/api/v1/requests/{id}/receipt`` and
``/api/v1/audit/public-key`` (see docs/receipts.md).

The receipt is answered as its RFC 8785 canonical bytes, so two fetches of
the same request give byte-identical bodies and ``sha256`` of the body is the
receipt's digest. The public key is what offline verifiers trust; any
authenticated user may fetch it (it is public, but the API has no anonymous
routes besides health and the schema).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from jitgate.audit.chain import canonical_bytes
from jitgate.audit.receipts import ALGORITHM
from jitgate.server.api import ERRORS, RequestId, context, view_response
from jitgate.server.auth import CurrentPrincipal
from jitgate.server.errors import ErrorResponse
from jitgate.server.models import View
from jitgate.service import ServiceError

UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "The server has no signing key"}
}


class ReceiptSignature(View):
    alg: Literal["Ed25519"]
    key_id: str
    value: str = Field(description="Unpadded base64url Ed25519 signature.")


class ReceiptOut(View):
    """A signed approval receipt (docs/receipts.md)."""

    format: Literal["jitgate.receipt/v1"]
    issuer: str
    issued_at: str
    request_id: str
    fingerprint: str
    action: dict[str, Any]
    requester: dict[str, Any]
    created_at: str
    approved_at: str
    break_glass: bool
    chain: dict[str, Any]
    approvals: list[dict[str, Any]]
    grant: dict[str, Any]
    signature: ReceiptSignature


class PublicKeyOut(View):
    """The public half of the server's audit signing key."""

    alg: Literal["Ed25519"]
    key_id: str = Field(description="First 16 hex digits of SHA-256 of the raw public key.")
    pem: str = Field(description="SubjectPublicKeyInfo PEM.")


router = APIRouter(prefix="/api/v1", responses={**ERRORS, **UNAVAILABLE})


@router.get("/requests/{id}/receipt", response_model=ReceiptOut, tags=["audit"])
async def get_receipt(
    request: Request, principal: CurrentPrincipal, request_id: RequestId
) -> Response:
    """The signed receipt of an approved request (409 `not_approved` otherwise)."""
    receipt = await context(request).service.receipt(principal, request_id)
    return Response(canonical_bytes(receipt), media_type="application/json")


@router.get("/audit/public-key", response_model=PublicKeyOut, tags=["audit"])
async def public_key(request: Request, principal: CurrentPrincipal) -> Response:
    """The server's public key, to verify receipts and checkpoints offline."""
    key = context(request).service.signing_key
    if key is None:
        raise ServiceError("receipts_unavailable", "this server has no signing key", 503)
    verify = key.verify_key
    return view_response({"alg": ALGORITHM, "key_id": verify.key_id, "pem": verify.pem()})
