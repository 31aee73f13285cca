"""Generic webhooks: the JSON body and its signature.

Body (``Content-Type: application/json``, UTF-8)::

    {"event": {"type": "stage.started", "actor": "ann" | null,
               "at": "2031-03-04T10:00:00+00:00", "payload": {...}},
     "request": <the request view, docs/api.md>}

Headers:

``X-Jitgate-Event``
    The event type (``stage.started``).
``X-Jitgate-Delivery``
    A unique id of this delivery (the same on every retry of it: deduplicate on it).
``X-Jitgate-Timestamp``
    Unix time in whole seconds when this attempt was signed (new on each retry).
``X-Jitgate-Signature``
    ``sha256=`` and the lowercase hex HMAC-SHA256, keyed with the sink's
    secret (UTF-8), of the bytes ``<timestamp>.<delivery>.<body>``: the
    timestamp header, a dot, the delivery header, a dot, then the raw body
    exactly as received.

A receiver recomputes the HMAC over the raw body, compares it in constant
time, rejects a timestamp more than a few minutes away from its own clock
(a replay of an old delivery), and remembers the delivery ids it accepted for
that long (a replay within the window). :func:`verify_signature` does the first
two; ``docs/notifications.md`` has a standalone example.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

EVENT_HEADER = "X-Jitgate-Event"
DELIVERY_HEADER = "X-Jitgate-Delivery"
TIMESTAMP_HEADER = "X-Jitgate-Timestamp"
SIGNATURE_HEADER = "X-Jitgate-Signature"
#: How far a receiver should accept a timestamp from its own clock, in seconds.
DEFAULT_TOLERANCE = 300


def json_bytes(value: Any) -> bytes:
    """Compact JSON in UTF-8; ASCII escapes if the text holds lone surrogates."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def webhook_body(event: Mapping[str, Any], request: Mapping[str, Any]) -> bytes:
    return json_bytes(
        {
            "event": {
                "type": event.get("type"),
                "actor": event.get("actor"),
                "at": event.get("at"),
                "payload": event.get("payload", {}),
            },
            "request": request,
        }
    )


def sign(secret: bytes, timestamp: int | str, delivery: str, body: bytes) -> str:
    """The ``X-Jitgate-Signature`` value for one attempt."""
    material = f"{timestamp}.{delivery}.".encode() + body
    return "sha256=" + hmac.new(secret, material, hashlib.sha256).hexdigest()


def signed_headers(
    secret: bytes, event_type: str, delivery: str, body: bytes, *, now: float | None = None
) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        "Content-Type": "application/json",
        EVENT_HEADER: event_type,
        DELIVERY_HEADER: delivery,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, delivery, body),
    }


def verify_signature(
    secret: bytes | str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether ``headers`` carry a valid signature of ``body`` made within
    ``tolerance`` seconds of ``now``. ``headers`` must look names up without
    regard to case (as Starlette's, httpx's and http.server's do), or use the
    spelling above. Deduplicating on the delivery id is the caller's job."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    timestamp = headers.get(TIMESTAMP_HEADER) or ""
    delivery = headers.get(DELIVERY_HEADER) or ""
    signature = headers.get(SIGNATURE_HEADER) or ""
    if not timestamp.isdigit() or not delivery or not signature.startswith("sha256="):
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(key, timestamp, delivery, body), signature)
