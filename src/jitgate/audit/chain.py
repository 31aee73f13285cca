"""The hash chain: each event's hash covers its canonical form and its predecessor's hash.

An event's canonical form is the RFC 8785 (JSON Canonicalization Scheme)
serialization of the document::

    {"seq", "id", "at", "type", "actor", "request_id", "target",
     "environment", "payload", "prev_hash"}

``at`` is ISO 8601 in UTC with microseconds (``2026-11-24T10:00:00.000000+00:00``);
``prev_hash`` of the first event is :data:`GENESIS`. The event's ``hash`` is the
lower-case hex SHA-256 of those bytes. Because the hash covers ``seq`` and
``prev_hash``, an event cannot be edited, moved, removed or slipped in
without breaking the hash of the event itself or the link of the next one;
rewriting a whole stretch consistently is what the signed checkpoints
(:mod:`jitgate.audit.checkpoint`) catch.

Speed: the ``rfc8785`` package takes ~26 µs per event, too slow to verify a
million events in seconds. :func:`event_hash` first hashes
``json.dumps(sort_keys=True, ensure_ascii=False)``, which produces the same
bytes as RFC 8785 for the documents the trail holds (ASCII keys, no floats,
integers within 2**53) in ~6 µs, and falls back to ``rfc8785`` when asked to
be exact. :func:`matches` accepts an event if either serialization reproduces
the stored hash: equal hashes mean equal bytes, and the stored hash was
computed from the RFC 8785 bytes at append time, so the fast path never
accepts anything the exact one would not. Faster still, :func:`raw_hash`
hashes the document assembled around the payload text as stored, without
parsing it (~1.5 µs an event, most of it SHA-256): what verifying a stored
trail does for every event whose stored payload is already canonical.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import rfc8785

#: ``prev_hash`` of the first event of a trail.
GENESIS: Final = "0" * 64

#: The fields an event's hash covers, in document order.
EVENT_FIELDS: Final = (
    "seq",
    "id",
    "at",
    "type",
    "actor",
    "request_id",
    "target",
    "environment",
    "payload",
    "prev_hash",
)


def canonical_time(at: datetime) -> str:
    """``at`` as the chain spells it: UTC, microseconds, ``+00:00``."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at!r}: the audit trail keeps aware times")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainEvent:
    """One event as the chain sees it (the store row, times as canonical text)."""

    seq: int
    id: str
    at: str
    type: str
    actor: str | None
    request_id: str | None
    target: str | None
    environment: str | None
    payload: Mapping[str, Any] = field(hash=False)
    prev_hash: str
    hash: str
    #: The payload as stored (JSON text), when read raw for verification.
    payload_text: str | None = field(default=None, hash=False, compare=False, repr=False)

    def document(self) -> dict[str, Any]:
        document = {name: getattr(self, name) for name in EVENT_FIELDS}
        document["payload"] = self.payload_data()
        return document

    def payload_data(self) -> Mapping[str, Any]:
        """The payload, parsed from the stored text if it was read raw."""
        if self.payload_text is None:
            return self.payload
        try:
            parsed = json.loads(self.payload_text)
        except ValueError:
            return {"unparseable_payload": self.payload_text}
        return parsed if isinstance(parsed, dict) else {"payload": parsed}

    def intact(self) -> bool:
        """Whether the event hashes to its stored ``hash``.

        Fast path: the stored payload text is usually already canonical, so
        the canonical document is assembled around it without parsing it
        (:func:`raw_hash`).
        """
        text = self.payload_text
        if text is not None:
            digest = raw_hash(
                self.seq,
                self.id,
                self.at,
                self.type,
                self.actor,
                self.request_id,
                self.target,
                self.environment,
                text,
                self.prev_hash,
            )
            if digest == self.hash:
                return True
        return matches(self.document(), self.hash)

    def to_dict(self) -> dict[str, Any]:
        """The event with its hash: one line of an export or an archive."""
        return {**self.document(), "payload": dict(self.payload_data()), "hash": self.hash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChainEvent:
        """Parse an exported event; ``ValueError`` if a field is missing or mistyped."""
        if not isinstance(data, Mapping):
            raise ValueError("an event is a JSON object")
        missing = [name for name in (*EVENT_FIELDS, "hash") if name not in data]
        if missing:
            raise ValueError(f"event without {', '.join(missing)}")
        seq = data["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError("seq must be an integer")
        for name in ("id", "at", "type", "prev_hash", "hash"):
            if not isinstance(data[name], str):
                raise ValueError(f"{name} must be a string")
        for name in ("actor", "request_id", "target", "environment"):
            if data[name] is not None and not isinstance(data[name], str):
                raise ValueError(f"{name} must be a string or null")
        if not isinstance(data["payload"], Mapping):
            raise ValueError("payload must be an object")
        return cls(
            seq=seq,
            id=data["id"],
            at=data["at"],
            type=data["type"],
            actor=data["actor"],
            request_id=data["request_id"],
            target=data["target"],
            environment=data["environment"],
            payload=data["payload"],
            prev_hash=data["prev_hash"],
            hash=data["hash"],
        )


_encode_string: Any = getattr(json.encoder, "c_encode_basestring", None) or (
    json.encoder.encode_basestring
)


#: In JSON text: a ``\\uXXXX`` escape (a surrogate pair as one), or an escaped
#: backslash, matched so that what follows it is not taken for an escape.
_ESCAPE: Final = re.compile(
    r"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"
    r"|\\u([0-9a-fA-F]{4})"
    r"|\\\\"
)


def _unescape(match: re.Match[str]) -> str:
    """The character an escape of non-ASCII text stands for, as RFC 8785 writes
    it; anything else (control characters, lone surrogates, ``\\\\``) as it is."""
    high, low, single = match.group(1, 2, 3)
    if high is not None:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00))
    if single is not None:
        code = int(single, 16)
        if code >= 0x7F and not 0xD800 <= code <= 0xDFFF:
            return chr(code)
    return match.group()


def raw_hash(
    seq: int,
    id: str | None,
    at: str | None,
    type: str | None,
    actor: str | None,
    request_id: str | None,
    target: str | None,
    environment: str | None,
    payload_text: str,
    prev_hash: str | None,
) -> str:
    """The hash of the event document assembled around ``payload_text``, the
    payload's JSON text as stored, without parsing it.

    When that text is canonical (sorted keys, no whitespace, no floats: how
    the store writes JSON) this is exactly :func:`event_hash` of the
    document. The store escapes non-ASCII text (``\\u00e9``) where RFC 8785
    writes the characters, so those escapes are decoded first, which changes
    the text but not the JSON it spells. When the text is not canonical the
    result simply differs from the stored hash and the caller falls back to
    the exact path (:meth:`ChainEvent.intact`). Equal hashes mean equal
    bytes, so a match is never wrong. The one place the canonical text is
    built around stored rows: :meth:`ChainEvent.intact` and the verifier's
    fast loop (:func:`jitgate.audit.verify.verify_rows`) both call it.
    """
    if "\\u" in payload_text:
        payload_text = _ESCAPE.sub(_unescape, payload_text)
    enc = _encode_string
    text = (
        f'{{"actor":{"null" if actor is None else enc(actor)}'
        f',"at":{"null" if at is None else enc(at)}'
        f',"environment":{"null" if environment is None else enc(environment)}'
        f',"id":{"null" if id is None else enc(id)}'
        f',"payload":{payload_text}'
        f',"prev_hash":{"null" if prev_hash is None else enc(prev_hash)}'
        f',"request_id":{"null" if request_id is None else enc(request_id)}'
        f',"seq":{seq}'
        f',"target":{"null" if target is None else enc(target)}'
        f',"type":{"null" if type is None else enc(type)}}}'
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """RFC 8785 bytes of ``document`` (exact, slow path)."""
    return bytes(rfc8785.dumps(document))


def _fast_bytes(document: Mapping[str, Any]) -> bytes | None:
    try:
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError):
        return None


def event_hash(document: Mapping[str, Any]) -> str:
    """The hash of an event document (exact RFC 8785 serialization)."""
    return hashlib.sha256(canonical_bytes(document)).hexdigest()


def matches(document: Mapping[str, Any], stored_hash: str) -> bool:
    """Whether ``document`` hashes to ``stored_hash`` (fast path first)."""
    fast = _fast_bytes(document)
    if fast is not None and hashlib.sha256(fast).hexdigest() == stored_hash:
        return True
    try:
        return event_hash(document) == stored_hash
    except (TypeError, ValueError, OverflowError):
        return False


#: Largest integer RFC 8785 (IEEE 754 doubles) represents exactly.
MAX_SAFE_INTEGER: Final = 2**53 - 1


def _json_safe(value: Any) -> Any:
    """``value`` with what RFC 8785 cannot carry exactly turned into strings
    (integers beyond 2**53 - 1, NaN and infinities), so nothing is lost."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: keep them visible as escapes
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        finite = value == value and abs(value) != float("inf")
        return value if finite else str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def seal(
    *,
    seq: int,
    id: str,
    at: datetime,
    type: str,
    actor: str | None,
    request_id: str | None,
    target: str | None,
    environment: str | None,
    payload: Mapping[str, Any],
    prev_hash: str,
) -> ChainEvent:
    """The chained event for these fields (computes its hash).

    ``payload`` must be JSON data. It is normalised through a JSON round
    trip (tuples become lists), and integers beyond 2**53 - 1, NaN and
    infinities become strings, so what is hashed is exactly what the store
    gives back and RFC 8785 can represent it.
    """
    plain = _json_safe(json.loads(json.dumps(dict(payload), ensure_ascii=False)))
    document = {
        "seq": seq,
        "id": id,
        "at": canonical_time(at),
        "type": type,
        "actor": actor,
        "request_id": request_id,
        "target": target,
        "environment": environment,
        "payload": plain,
        "prev_hash": prev_hash,
    }
    return ChainEvent(**document, hash=event_hash(document))


# --- sealing many events at once (the store's batch append) ---------------------------


class _Unusual(Exception):
    """A value :func:`stored_payload` leaves to :func:`seal`'s general normalisation."""


_INFINITY: Final = float("inf")
_float_repr = float.__repr__


def _plain(value: Any, plain: list[bool]) -> Any:
    """``value`` as :func:`seal`'s normalisation leaves it, for the built-in JSON
    types only (anything else, subclasses included, raises :class:`_Unusual`);
    clears ``plain[0]`` where the compact JSON text and RFC 8785 differ."""
    kind = type(value)
    if kind is str:
        if value.isascii():
            return value
        return _json_safe(value)
    if value is None or kind is bool:
        return value
    if kind is int:
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)
    if kind is float:
        if value != value or value == _INFINITY or value == -_INFINITY:
            return str(value)
        # Python and RFC 8785 (ECMAScript) agree on the shortest digits; they
        # spell integral values (1.0 / 1) and exponents (1e-05 / 0.00001) apart.
        spelled = _float_repr(value)
        if "e" in spelled or spelled.endswith(".0"):
            plain[0] = False
        return value
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            if not key.isascii():  # RFC 8785 sorts by UTF-16 code units, Python by code points
                plain[0] = False
            # Inline what most values are (ASCII text, null); the rest recurses.
            if item is None or (type(item) is str and item.isascii()):
                out[key] = item
            else:
                out[key] = _plain(item, plain)
        return out
    if kind is list or kind is tuple:
        return [_plain(item, plain) for item in value]
    raise _Unusual


def stored_payload(payload: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """``payload`` normalised exactly as :func:`seal` normalises it, and whether
    it is *plain*: its compact JSON text (sorted keys, no whitespace, the way
    the store writes JSON) is its RFC 8785 form up to the escapes
    :func:`raw_hash` decodes, so that :func:`raw_hash` over that text is the
    event's exact hash. Only ASCII keys and no float the two spell apart
    (``1.0``, ``1e-05``) keep a payload plain.

    The common case (built-in types only) takes one pass; anything else goes
    through :func:`seal`'s own steps and raises what they raise for what is
    not JSON data (``TypeError``, ``ValueError``).
    """
    plain = [True]
    top = payload if type(payload) is dict else dict(payload)
    try:
        return _plain(top, plain), plain[0]
    except (_Unusual, RecursionError):
        return _json_safe(json.loads(json.dumps(dict(payload), ensure_ascii=False))), False


def flat_plain(payload: Mapping[str, Any]) -> bool:
    """Whether ``payload`` is stored and hashed exactly as it is: a ``dict``
    (not a subclass) with ASCII ``str`` keys whose values are all ``None``,
    ``bool``, ``str`` without lone surrogates, ``int`` within 2**53 - 1 or a
    finite ``float`` spelled alike by Python and RFC 8785 (no exponent, not
    integral).

    For such a payload :func:`stored_payload` would return an equal copy and
    *plain*, so the batch append serializes the payload itself and skips the
    copy. That is the usual gateway record (text, numbers, nulls, no nested
    values), and the check costs less than the copy. A ``False`` only means
    "take the general path" (:func:`stored_payload`), never "invalid".
    """
    if type(payload) is not dict:
        return False
    for key, value in payload.items():
        if type(key) is not str or not key.isascii():
            return False
        kind = type(value)
        if kind is str:
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:  # _json_safe would rewrite it
                    return False
        elif value is None or kind is bool:
            continue
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                return False
        elif kind is float:
            if value != value or value == _INFINITY or value == -_INFINITY:
                return False
            spelled = _float_repr(value)
            if "e" in spelled or spelled.endswith(".0"):  # as in _plain
                return False
        else:  # containers, subclasses, anything else
            return False
    return True


def plain_texts(*values: object) -> bool:
    """Whether each value is None or text RFC 8785 writes as :func:`raw_hash`
    does (a ``str`` without lone surrogates)."""
    for value in values:
        if value is None:
            continue
        if type(value) is not str:
            return False
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def stored_hash(
    *,
    seq: int,
    id: str,
    at: str,
    type: str,
    actor: str | None,
    request_id: str | None,
    target: str | None,
    environment: str | None,
    payload: Mapping[str, Any],
    payload_text: str,
    prev_hash: str,
    plain: bool,
) -> str:
    """The hash :func:`seal` gives this event, ``payload`` being normalised
    (:func:`stored_payload`) and ``payload_text`` its compact JSON text.

    ``plain`` (the payload is plain and so are the other fields, see
    :func:`stored_payload` and :func:`plain_texts`): :func:`raw_hash` over the
    text, the very computation the verifier's fast loop makes over the
    stored row; otherwise the exact RFC 8785 path (``ValueError`` for what it
    cannot represent).
    """
    if plain:
        return raw_hash(
            seq, id, at, type, actor, request_id, target, environment, payload_text, prev_hash
        )
    return event_hash(
        {
            "seq": seq,
            "id": id,
            "at": at,
            "type": type,
            "actor": actor,
            "request_id": request_id,
            "target": target,
            "environment": environment,
            "payload": payload,
            "prev_hash": prev_hash,
        }
    )
