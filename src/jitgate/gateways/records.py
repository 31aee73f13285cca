"""Statement records on their way to the audit trail: JSON form and size limits.

The service refuses a record whose text is larger than 1 MiB (and the REST
API a body larger than its limit, 1 MiB by default). A statement that ran
must still be recorded, so an adapter *fits* an oversized record before
sending it rather than have the whole batch refused: the text is cut to the
budget (on a character boundary) and ``extra`` says so, with the size and
SHA-256 of the full text (``text_truncated``, ``text_bytes``,
``text_sha256``); oversized parameters are cut the same way
(``parameters_truncated``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any, Final

from jitgate.gateways.port import StatementRecord

#: Longest parameter value kept whole when a record's parameters must be cut.
PARAMETER_KEEP: Final = 4096


class PartiallyRecorded(Exception):
    """Writing a batch failed after its first ``recorded`` records were written
    (an adapter that had to split it into several calls); ``cause`` is why."""

    def __init__(self, recorded: int, cause: BaseException) -> None:
        super().__init__(f"{recorded} record(s) written, then: {cause}")
        self.recorded = recorded
        self.cause = cause


def record_dict(record: StatementRecord) -> dict[str, Any]:
    """The record as the API takes it (``POST /api/v1/audit/statements``)."""
    return {
        "user": record.user,
        "target": record.target,
        "environment": record.environment,
        "text": record.text,
        "decision": record.decision,
        "duration_ms": float(record.duration_ms),
        "tag": record.tag,
        "rows": record.rows,
        "error": record.error,
        "request_id": record.request_id,
        "parameters": None if record.parameters is None else list(record.parameters),
        "session": record.session,
        "client": record.client,
        "gateway": record.gateway,
        "at": record.at,
        "extra": dict(record.extra),
    }


#: One encoder for every record: ``json.dumps`` with options builds a new one per call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def json_bytes(data: Any) -> bytes:
    """Compact JSON in UTF-8 (non-ASCII as is: smaller than ``\\u`` escapes)."""
    return _ENCODER.encode(data).encode("utf-8", "surrogatepass")


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _cut(data: bytes, limit: int) -> str:
    return data[: max(0, limit)].decode("utf-8", "ignore")


def fit_text(record: StatementRecord, max_text_bytes: int) -> StatementRecord:
    """``record``, its text cut to ``max_text_bytes`` bytes of UTF-8 if longer."""
    if 4 * len(record.text) <= max_text_bytes:
        return record
    raw = _utf8(record.text)
    if len(raw) <= max_text_bytes:
        return record
    extra = {
        **record.extra,
        "text_truncated": True,
        "text_bytes": len(raw),
        "text_sha256": hashlib.sha256(raw).hexdigest(),
    }
    return dataclasses.replace(record, text=_cut(raw, max_text_bytes), extra=extra)


def fit_parameters(record: StatementRecord, max_bytes: int) -> StatementRecord:
    """``record``, each parameter over :data:`PARAMETER_KEEP` bytes cut to it when
    all of them together are larger than ``max_bytes``."""
    parameters: Sequence[str | None] | None = record.parameters
    if not parameters:
        return record
    if sum(4 * len(p) for p in parameters if p is not None) <= max_bytes:
        return record
    if sum(len(_utf8(p)) for p in parameters if p is not None) <= max_bytes:
        return record
    keep = max(0, min(PARAMETER_KEEP, max_bytes // max(1, len(parameters))))
    cut = [p if p is None or len(_utf8(p)) <= keep else _cut(_utf8(p), keep) for p in parameters]
    extra = {**record.extra, "parameters_truncated": True}
    return dataclasses.replace(record, parameters=cut, extra=extra)


def fit_record(
    record: StatementRecord, max_text_bytes: int, max_rest_bytes: int
) -> StatementRecord:
    """``record`` within the service's limits (see the module docstring)."""
    return fit_parameters(fit_text(record, max_text_bytes), max_rest_bytes // 2)
