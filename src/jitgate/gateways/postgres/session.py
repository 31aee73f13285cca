"""One client's session through the gateway: relay, classify, hold.

Messages from the client are framed and, where they carry SQL (Query, and
Execute of a bound prepared statement), classified; everything else is
relayed as raw bytes. The gateway keeps, for every message it forwarded, what
response completes it (:class:`_Expect`), so it always knows where the
upstream is in the conversation. That is what lets it

* answer for the upstream at the right place: a denial is written to the
  client only once every response to what came before it has been relayed;
* hold a statement: nothing after it is processed until it is released or
  refused, while the client simply waits;
* know what each statement did: its command tag or error, and its duration.

Prepared statements and portals are tracked optimistically as the client
defines them and rolled back when the upstream refuses a definition (the
error, and everything the upstream then skips until Sync, undoes them), so the
text classified at Execute is the text the upstream runs. A Bind or Execute
that depends on definitions sent before an earlier Sync and not yet answered
waits for those answers first.

Each prepared statement also keeps its parameter types, as declared in its
Parse or told by the server's answer to a Describe of it, only so that a held
statement's binary values can be shown to approvers as values
(:mod:`jitgate.gateways.postgres.values`); the request stays bound to the
exact bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from jitgate.actions.model import Action, ActionKind, Actor, fingerprint
from jitgate.gateways.port import ApprovalUnavailable, GatewayRefused, GatewayUser, StatementRecord
from jitgate.gateways.postgres import protocol as pg
from jitgate.gateways.postgres.link import Link
from jitgate.gateways.postgres.values import SJIS_STRAYS, client_text, render_binary, undecoded
from jitgate.policy import Decision, Outcome
from jitgate.request_words import describe_final, describe_waiting

if TYPE_CHECKING:
    from jitgate.gateways.postgres.gateway import PostgresGateway

log = logging.getLogger("jitgate.gateway.postgres")

# Message type bytes.
_Q, _P, _B, _E, _D, _C, _S, _H, _X, _F = (ord(c) for c in "QPBEDCSHXF")
_COPY_DATA, _COPY_DONE, _COPY_FAIL = ord("d"), ord("c"), ord("f")
_ROW = ord("D")
_ERROR, _READY, _COMPLETE, _EMPTY, _SUSPENDED = (ord(c) for c in "EZCIs")
_PARSED, _BOUND, _CLOSED, _PARAMS, _ROWDESC, _NODATA = (ord(c) for c in "123tTn")
_PARAMETER_STATUS, _FUNCTION_RESULT = ord("S"), ord("V")
_COPY_IN = ord("G")
#: Statement types that may create, replace or drop prepared statements by name
#: (DO and CALL run arbitrary code) ...
_REDEFINES_STATEMENTS: Final = frozenset({"do", "call", "prepare", "deallocate", "discard"})
#: ... or cursors, which share their names with protocol portals.
_REDEFINES_PORTALS: Final = frozenset({"do", "call", "discard", "declare_cursor", "close"})
#: Words a statement of those types must contain: texts without them need no
#: closer look (a superset: a column named ``close`` matches too).
_MAY_REDEFINE: Final = re.compile(r"(?i)\b(?:do|call|prepare|deallocate|discard|declare|close)\b")

_INSUFFICIENT_PRIVILEGE: Final = "42501"
_QUERY_CANCELED: Final = "57014"
_PROTOCOL_VIOLATION: Final = "08P01"

#: Client encodings whose bytes Python decodes exactly as PostgreSQL does.
_CODECS: Final = {
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "SQL_ASCII": "ascii",
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN9": "iso8859-15",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    # PostgreSQL's SJIS is Microsoft's: NEC and IBM extensions (0x875C, 0xFA5C...).
    "SJIS": "cp932",
    "SHIFTJIS2004": "shift_jis_2004",
    "EUCJIS2004": "euc_jis_2004",
    "BIG5": "big5",
    "GBK": "gbk",
    "UHC": "cp949",
    "GB18030": "gb18030",
    "EUC_JP": "euc_jp",
    "EUC_KR": "euc_kr",
    "KOI8R": "koi8-r",
}
#: Texts of allowed statements remembered per session (policy without conditions only).
_ALLOWED_CACHE: Final = 2048
_MAX_CACHED_TEXT: Final = 8192
#: Decoded parameter values longer than this in all (characters) are not shown
#: besides the exact ones: a request carries both, and its size is bounded.
_MAX_SHOWN_VALUES: Final = 64 * 1024
#: Where the decoded values go: the request's attributes, and ``extra`` of the
#: statement's record. The exact values stay in ``parameters``.
SHOWN_PARAMETERS: Final = "parameter_values"
#: Binary values of more than this many bytes in all are not decoded for
#: approvers (decoding runs on the event loop every session shares).
_MAX_DECODED_BINARY: Final = 16 * 1024


@dataclass(slots=True)
class _Statement:
    """A statement on its way through: what it was, what it did."""

    text: str
    decision: str
    started: float
    request_id: str | None = None
    parameters: list[str | None] | None = None
    #: The parameters as approvers were shown them, where they differ (see _Bound.rendered).
    shown: list[str | None] | None = None
    tags: list[str] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False


@dataclass(slots=True)
class _Expect:
    """A forwarded message and the response that completes it."""

    kind: int
    statement: _Statement | None = None
    #: Undo of the optimistic change a Parse, Bind or Close made to our maps.
    undo: tuple[str, str, Any] | None = None
    batch: int = 0
    #: Describe of a statement completes after two responses.
    steps: int = 1
    #: Our own error to show the client instead of the upstream's (see _refuse).
    replace_error: bytes | None = None
    #: Sent by the gateway itself (re-establishing a statement): the client
    #: never sees its answer.
    swallow: bool = False
    #: CopyDone/CopyFail messages forwarded before this one (see _copy_in).
    copies: int = 0
    #: The statement this Parse defines again; in doubt again if it is skipped.
    redo: str | None = None
    #: The statement a Describe asks about: its ParameterDescription tells the
    #: types of its parameters (None: not a statement the gateway can trust
    #: the answer for, see Session._describable).
    describes: _Prepared | None = None


@dataclass(slots=True)
class _Prepared:
    """A statement the client prepared: what the gateway classifies it as.

    One instance per Parse: a re-Parse makes another, so what the old one
    learned (its types) goes with it, and undoing a refused Parse or Close
    puts back the previous instance, types included.
    """

    text: str | None
    #: Why it cannot be classified (the text is then never run through jitgate).
    refusal: str | None
    #: The Parse message, to define it again when its name is in doubt.
    parse: bytes
    #: The settings its text was read with, where they matter (see _read_sql).
    reads: tuple[str, bool] | None = None
    #: Type OIDs of its parameters as far as known (0: unknown): declared in the
    #: Parse, completed by the server's ParameterDescription. The one field that
    #: changes; used only to show binary values to approvers, never to classify.
    types: tuple[int, ...] = ()


# Not frozen, though never changed once made: one is built for every Bind, and
# a frozen dataclass's __init__ costs twice as much.
@dataclass(slots=True)
class _Bound:
    """A portal: the statement text and the Bind that made it (decoded only when
    its values are shown: most portals run allowed statements)."""

    text: str | None
    bind: bytes
    released: bool = False
    refusal: str | None = None
    #: The statement it was bound from (its parameter types, as learned until
    #: the values are shown: a Describe may be answered after the Bind).
    statement: _Prepared | None = None

    def rendered(self, codec: str) -> tuple[list[str | None], list[str | None] | None]:
        """The values, exactly (what the request's fingerprint covers: text as
        is, binary as ``\\x`` hex of the bytes sent), and as an approver reads
        them when some are binary (decoded where the type is known, see
        values.py; None when they would not fit in a request twice)."""
        bind = pg.decode_bind(self.bind)
        exact: list[str | None] = []
        shown: list[str | None] = []
        binary = False
        types = self.statement.types if self.statement is not None else ()
        # Decoding takes the event loop (µs per value: a float takes up to
        # 20): past a bound the values are not decoded, only shown as sent.
        decode = (
            sum(
                len(value)
                for i, value in enumerate(bind.params)
                if value is not None and bind.param_format(i) == 1
            )
            <= _MAX_DECODED_BINARY
        )
        for i, value in enumerate(bind.params):
            if value is None:
                exact.append(None)
                shown.append(None)
            elif bind.param_format(i) == 1:
                binary = True
                exact.append("\\x" + value.hex())
                if decode:
                    shown.append(_binary_value(types[i] if i < len(types) else 0, value, codec))
            else:
                text = value.decode("utf-8", "backslashreplace")
                exact.append(text)
                shown.append(client_text(value, codec) or text)
        if (
            not binary
            or not decode
            or sum(len(v) for v in shown if v is not None) > _MAX_SHOWN_VALUES
        ):
            return exact, None
        return exact, shown


def _binary_value(oid: int, data: bytes, codec: str) -> str:
    """A binary value as PostgreSQL prints it, or its hex labelled with why not."""
    text = render_binary(oid, data, codec)
    return undecoded(oid, data) if text is None else text


@dataclass(slots=True)
class _Pending:
    """A message the session stopped at: held for approval or refused."""

    kind: int
    raw: bytes
    text: str
    decision: Decision | None
    portal: str | None = None
    bound: _Bound | None = None
    refusal: str | None = None
    #: Whether it may redefine prepared statements or cursors (see _doubt).
    redefines: bool = False


_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class _Unread:
    """SQL bytes the gateway cannot read as the upstream does, and why."""

    why: str


#: Not known yet: read once every earlier statement has been answered.
_UNSETTLED: Final = _Unread("")


class Session:
    """The relay between one client and its upstream connection."""

    # Thousands of idle sessions: no per-instance dict.
    __slots__ = (
        "_allowed",
        "_cancel_hold",
        "_closing",
        "_codec",
        "_conforming",
        "_copy_ends",
        "_copying",
        "_evaluator",
        "_hold_task",
        "_idle",
        "_in_idle",
        "_prefix",
        "_tasks",
        "actor",
        "batch",
        "batch_has_execute",
        "blocked",
        "cframes",
        "client",
        "client_address",
        "discarding",
        "doubtful",
        "environment",
        "expect",
        "gateway",
        "id",
        "parameters",
        "pending",
        "pid",
        "portals",
        "secret",
        "statements",
        "status",
        "target",
        "uframes",
        "upstream",
        "upstream_key",
        "user",
    )

    def __init__(
        self,
        gateway: PostgresGateway,
        client: Link,
        upstream: Link,
        *,
        user: GatewayUser,
        target: str,
        environment: str,
        client_address: str,
        upstream_key: tuple[int, int],
        parameters: Mapping[str, str],
        status: bytes,
    ) -> None:
        self.gateway = gateway
        self.client = client
        self.upstream = upstream
        self.user = user
        self.actor = Actor(user.name, user.groups)
        self.target = target
        self.environment = environment
        self.client_address = client_address
        self.upstream_key = upstream_key
        self.id = secrets.token_hex(6)
        self.pid = 0
        self.secret = 0
        self.status = status
        self.cframes = pg.Frames(gateway.config.max_message_bytes)
        self.uframes = pg.Frames(2**31)
        self.expect: deque[_Expect] = deque()
        self.statements: dict[str, _Prepared] = {}
        #: Named statements SQL may have redefined since they were parsed: defined
        #: again, from the Parse the gateway saw, before their next Bind.
        self.doubtful: set[str] = set()
        self.portals: dict[str, _Bound] = {}
        self.batch = 0
        self.batch_has_execute = False
        self._copy_ends = 0
        self._copying = False
        self._prefix = b""
        self.discarding = False
        self.blocked = False
        self.pending: _Pending | None = None
        self._idle: list[Callable[[], None]] = []
        self._in_idle = False
        self._hold_task: asyncio.Task[None] | None = None
        self._cancel_hold: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._allowed: dict[str, bool] = {}
        self._evaluator = gateway.port.evaluator
        self._codec = "utf-8"
        self._conforming = True
        self.parameters = dict(parameters)
        for name, value in parameters.items():
            self._parameter(name, value)

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self.client.on_lost = lambda _exc: self.close("client disconnected")
        self.upstream.on_lost = lambda _exc: self.close("upstream disconnected")
        self.upstream.relay(self._from_upstream)
        self.client.relay(self._from_client)

    def close(self, why: str) -> None:
        if self._closing:
            return
        self._closing = True
        log.debug("session %s closing: %s", self.id, why)
        if self._hold_task is not None and not self._hold_task.done():
            self._hold_task.cancel()
        for expect in self.expect:
            if expect.statement is not None:
                expect.statement.error = expect.statement.error or f"connection closed ({why})"
                self._finish(expect.statement)
        self.expect.clear()
        self.upstream.close()
        self.client.close()
        self.gateway.forget(self)

    def background_tasks(self) -> list[asyncio.Task[Any]]:
        """What the session still runs: its hold, and what it spawned
        (withdrawing a request, reporting an outcome)."""
        tasks = list(self._tasks)
        if self._hold_task is not None:
            tasks.append(self._hold_task)
        return tasks

    def fatal(self, sqlstate: str, text: str) -> None:
        """End the session with a FATAL error to the client."""
        self.client.write(pg.error_response(sqlstate, text, severity="FATAL"))
        self.close(text)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- classification ---------------------------------------------------------------

    def _parameter(self, name: str, value: str) -> None:
        self.parameters[name] = value
        if name == "client_encoding":
            codec = _CODECS.get(value.upper().replace("-", "").replace("_", "")) or _CODECS.get(
                value.upper()
            )
            self._codec = codec or ""
        elif name == "standard_conforming_strings":
            self._conforming = value == "on"

    def _reads(self) -> tuple[str, bool]:
        return (self._codec, self._conforming)

    def _settled(self) -> bool:
        """Whether the settings the upstream reads SQL with are known: nothing that
        ran may have changed them without the gateway having seen its report
        (the server reports changes just before ReadyForQuery)."""
        if self.batch_has_execute:
            return False
        return not any(e.kind in (_Q, _E, _S, _F) for e in self.expect)

    def _read_sql(self, data: bytes) -> str | _Unread:
        """The text of SQL bytes as the upstream reads them, or why that is not known.

        Pure ASCII without a backslash reads the same under every client
        encoding and either ``standard_conforming_strings``; anything else needs
        the settings in force when the upstream parses it.
        """
        if data.isascii() and b"\\" not in data:
            return data.decode("ascii")
        if not self._settled():
            if self.batch_has_execute:
                return _Unread(
                    "jitgate cannot tell how the server reads this statement: an earlier "
                    "statement of the same pipeline may have changed client_encoding or "
                    "standard_conforming_strings (send Sync before it)"
                )
            return _UNSETTLED
        if not self._conforming and b"\\" in data:
            # With it off, backslashes escape quotes: the parser jitgate uses
            # would see different statements than the server runs.
            return _Unread(
                "jitgate requires standard_conforming_strings = on for statements "
                "with backslashes"
            )
        codec = self._codec
        if not codec:
            enc = self.parameters.get("client_encoding")
            return _Unread(f"jitgate cannot read non-ASCII statements in client_encoding {enc}")
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            enc = self.parameters.get("client_encoding", "UTF8")
            return _Unread(f"the statement is not valid {enc}")
        if codec == "cp932" and not SJIS_STRAYS.isdisjoint(text):
            return _Unread("the statement is not valid SJIS")
        return text

    def _decide(self, text: str) -> tuple[Decision | None, bool]:
        """The decision on ``text`` (None: allowed), and whether it may redefine
        the session's prepared statements or cursors."""
        evaluator = self.gateway.port.evaluator
        if evaluator is not self._evaluator:
            self._evaluator = evaluator
            self._allowed.clear()
        known = self._allowed.get(text)
        if known is not None:
            return None, known
        may_redefine = _MAY_REDEFINE.search(text) is not None
        if not may_redefine and evaluator.allows(text, self.target, self.environment, self.actor):
            return None, False
        action = Action(
            kind=ActionKind.SQL,
            text=text,
            target=self.target,
            environment=self.environment,
            actor=self.actor,
            at=datetime.now(UTC),
        )
        decision = evaluator.evaluate(action)
        redefines = may_redefine and self._redefines(decision)
        if decision.outcome is not Outcome.ALLOW:
            return decision, redefines
        if evaluator.memoizes and len(text) <= _MAX_CACHED_TEXT:
            if len(self._allowed) >= _ALLOWED_CACHE:
                del self._allowed[next(iter(self._allowed))]
            self._allowed[text] = redefines
        return None, redefines

    @staticmethod
    def _redefines(decision: Decision) -> bool:
        types = {unit.type for unit in decision.analysis.units}
        return not types.isdisjoint(_REDEFINES_STATEMENTS | _REDEFINES_PORTALS)

    def _doubt(self) -> None:
        """A statement that may redefine prepared statements or cursors by name
        is on its way upstream: named statements are defined again before their
        next use, named portals are no longer known (refused at Execute)."""
        self.doubtful.update(name for name in self.statements if name)
        for name, bound in list(self.portals.items()):
            if name:
                self.portals[name] = _Bound(
                    None,
                    bound.bind,
                    refusal=f"jitgate no longer knows what portal {name!r} runs (a statement "
                    "since then may have replaced the cursor of that name)",
                )

    # --- client -> upstream -----------------------------------------------------------

    def _from_client(self, data: bytes) -> None:
        self.cframes.feed(data)
        if len(self.cframes) > 4 * 1024 * 1024:
            self.client.hold_reading("backlog")
        self._pump()

    def _pump(self) -> None:
        if self.blocked or self._closing:
            return
        frames = self.cframes
        out: list[bytes] = []
        run = frames.position
        try:
            while not self.blocked:
                start = frames.position
                kind = frames.skip()
                if kind is None:
                    break
                end = frames.end
                if self.discarding:
                    if kind == _S:
                        self.discarding = False
                        self._expect(_Expect(_S))
                        self._sync()
                        continue
                    if run < start:
                        out.append(frames.span(run, start))
                    run = end
                    continue
                if kind in (_COPY_DATA, _H):
                    continue
                if kind in (_COPY_DONE, _COPY_FAIL):
                    self._copy_ends += 1
                    self._copying = False
                    continue
                if kind == _S and self._copying:
                    continue  # the server ignores Sync in copy-in mode
                verdict = self._client_message(kind, start, end)
                if verdict is _FORWARD:
                    continue
                if verdict is _PREFIX:
                    if run < start:
                        out.append(frames.span(run, start))
                    out.append(self._prefix)
                    self._prefix = b""
                    run = start
                    continue
                if run < start:
                    out.append(frames.span(run, start))
                if verdict is _DROP:
                    run = end
                    continue
                if verdict is _AGAIN:
                    frames.rewind(start)
                run = frames.position
                break
            if run < frames.position:
                out.append(frames.span(run, frames.position))
            if self.blocked and self.expect:
                # The server holds back responses until Sync or Flush; we need
                # them all before deciding on the message we stopped at.
                out.append(pg.FLUSH)
        except pg.ProtocolViolation as exc:
            if out:
                self.upstream.write(b"".join(out))
            self.fatal(_PROTOCOL_VIOLATION, f"jitgate: {exc}")
            return
        if out:
            self.upstream.write(b"".join(out) if len(out) > 1 else out[0])
        if len(self.cframes) < 1024 * 1024:
            self.client.release_reading("backlog")
        self._run_idle()

    def _expect(self, expect: _Expect) -> None:
        expect.batch = self.batch
        expect.copies = self._copy_ends
        self.expect.append(expect)

    def _sync(self) -> None:
        self.batch += 1
        self.batch_has_execute = False

    def _client_message(self, kind: int, start: int, end: int) -> object:
        frames = self.cframes
        if kind == _Q:
            text = self._read_sql(pg.query_text(frames.span(start + 5, end)))
            if text is _UNSETTLED:
                return self._wait_idle()
            raw = frames.span(start, end)
            if isinstance(text, _Unread):
                return self._block(_Pending(_Q, raw, "", None, refusal=text.why))
            return self._statement(_Q, raw, text, None, None)
        if kind == _P:
            parse = pg.decode_parse(frames.span(start + 5, end))
            read = self._read_sql(parse.query)
            if read is _UNSETTLED:
                return self._wait_idle()
            name = parse.name
            prev = self.statements.get(name, _MISSING)
            raw = frames.span(start, end)
            if isinstance(read, _Unread):
                self.statements[name] = _Prepared(None, read.why, raw, types=parse.param_types)
            else:
                plain = parse.query.isascii() and b"\\" not in parse.query
                reads = None if plain else self._reads()
                self.statements[name] = _Prepared(read, None, raw, reads, parse.param_types)
            self.doubtful.discard(name)
            self._expect(_Expect(_P, undo=("statement", name, prev)))
            return _FORWARD
        if kind == _B:
            if self._stale():
                return self._wait_idle()
            body = frames.span(start + 5, end)
            portal, name = _bind_names(body)
            prepared = self.statements.get(name)
            verdict = _FORWARD
            what: str | None = None if prepared is None else prepared.text
            refusal = None if prepared is None else prepared.refusal
            if prepared is not None and name in self.doubtful:
                if prepared.reads is not None and prepared.reads != self._reads():
                    if not self._settled() and not self.batch_has_execute:
                        return self._wait_idle()
                    what, refusal = (
                        None,
                        (
                            f"jitgate cannot define statement {name!r} again as it classified it: "
                            "client_encoding or standard_conforming_strings changed since"
                        ),
                    )
                else:
                    # Close and Parse it again: the upstream then runs what was classified.
                    self.doubtful.discard(name)
                    prepared = self._parsed_again(name, prepared)
                    self._prefix = pg.message(b"C", b"S" + pg.cstring(name)) + prepared.parse
                    self._expect(_Expect(_C, swallow=True))
                    self._expect(_Expect(_P, swallow=True, redo=name))
                    verdict = _PREFIX
            prev = self.portals.get(portal, _MISSING)
            self.portals[portal] = _Bound(what, body, refusal=refusal, statement=prepared)
            self._expect(_Expect(_B, undo=("portal", portal, prev)))
            return verdict
        if kind == _E:
            if self._stale():
                return self._wait_idle()
            portal, _max_rows = pg.decode_execute(frames.span(start + 5, end))
            bound = self.portals.get(portal)
            raw = frames.span(start, end)
            if bound is None or bound.text is None:
                refusal = (
                    bound.refusal
                    if bound is not None and bound.refusal is not None
                    else f"jitgate does not know portal {portal!r} (it was not bound "
                    "through this connection's protocol messages)"
                )
                return self._block(_Pending(_E, raw, "", None, portal, bound, refusal=refusal))
            if bound.released:
                stmt = _Statement(bound.text, "require_approval", time.perf_counter())
                self._expect(_Expect(_E, statement=stmt))
                self.batch_has_execute = True
                return _FORWARD
            return self._statement(_E, raw, bound.text, portal, bound)
        if kind in (_D, _C):
            what, name = pg.decode_target(
                frames.span(start + 5, end), "Describe" if kind == _D else "Close"
            )
            if kind == _D:
                if what == "S":
                    self._expect(_Expect(_D, steps=2, describes=self._describable(name)))
                else:
                    self._expect(_Expect(_D))
                return _FORWARD
            undo: tuple[str, str, Any]
            if what == "S":
                undo = ("statement", name, self.statements.pop(name, _MISSING))
            else:
                undo = ("portal", name, self.portals.pop(name, _MISSING))
            self._expect(_Expect(_C, undo=undo))
            return _FORWARD
        if kind == _S:
            self._expect(_Expect(_S))
            self._sync()
            return _FORWARD
        if kind == _X:
            self._closing_after_terminate()
            return _FORWARD
        if kind == _F:
            return self._block(
                _Pending(
                    _F,
                    frames.span(start, end),
                    "",
                    None,
                    refusal="jitgate does not allow the function call protocol message "
                    "(call the function in a statement instead)",
                )
            )
        raise pg.ProtocolViolation(f"unexpected message type {chr(kind)!r} from the client")

    def _describable(self, name: str) -> _Prepared | None:
        """The statement a Describe of ``name`` learns the parameter types of. Not
        one in doubt: the server would describe whatever SQL put under that
        name, and the gateway defines its own again before the next Bind."""
        if name in self.doubtful:
            return None
        return self.statements.get(name)

    def _parsed_again(self, name: str, prepared: _Prepared) -> _Prepared:
        """``prepared`` as the gateway is about to define it again: the server
        infers the types its Parse leaves open anew (the schema may have
        changed since), so only the declared ones are known."""
        declared = pg.decode_parse(prepared.parse[5:]).param_types
        again = _Prepared(prepared.text, prepared.refusal, prepared.parse, prepared.reads, declared)
        self.statements[name] = again
        return again

    def _closing_after_terminate(self) -> None:
        # The upstream closes its side after Terminate; the client then sees EOF.
        self.client.hold_reading("terminated")

    def _stale(self) -> bool:
        """Whether definitions sent before an earlier Sync are still unanswered."""
        batch = self.batch
        for expect in self.expect:  # in the order sent: batches never decrease
            if expect.batch >= batch:
                return False
            if expect.undo is not None:
                return True
        return False

    def _wait_idle(self) -> object:
        self.blocked = True
        self._when_idle(self._unblock)
        return _AGAIN

    def _statement(
        self, kind: int, raw: bytes, text: str, portal: str | None, bound: _Bound | None
    ) -> object:
        if not self.gateway.recorder.accepting:
            refusal = "jitgate cannot record statements right now (audit backlog full)"
            return self._block(_Pending(kind, raw, text, None, portal, bound, refusal=refusal))
        if not text or text.isspace():
            decision: Decision | None = None  # the server answers EmptyQueryResponse
            redefines = False
        else:
            decision, redefines = self._decide(text)
        if decision is None:
            if redefines:
                self._doubt()
            stmt = _Statement(text, "allow", time.perf_counter())
            self._expect(_Expect(kind, statement=stmt))
            if kind == _E:
                self.batch_has_execute = True
            return _FORWARD
        pending = _Pending(kind, raw, text, decision, portal, bound, redefines=redefines)
        return self._block(pending)

    def _block(self, pending: _Pending) -> object:
        self.blocked = True
        self.pending = pending
        self._when_idle(self._resolve)
        return _STOP

    def _when_idle(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every forwarded message has been answered (after
        what is being written now: see :meth:`_run_idle`)."""
        self._idle.append(callback)

    def _run_idle(self) -> None:
        # A loop, not recursion: a callback may unblock the pump, which may
        # block again on the next message (many refused statements in a row).
        if self._in_idle:
            return
        self._in_idle = True
        try:
            while self._idle and not self.expect and not self._closing:
                self._idle.pop(0)()
        finally:
            self._in_idle = False

    def _unblock(self) -> None:
        self.blocked = False
        self.pending = None
        self._pump()

    # --- held and refused statements ----------------------------------------------------

    def _resolve(self) -> None:
        """Every response before the pending message is in: refuse or hold it."""
        pending = self.pending
        assert pending is not None
        if self.discarding:
            # The upstream failed this batch and skips to Sync: so does the gateway.
            self._unblock()
            return
        if pending.refusal is not None:
            self._record_refused(pending, pending.refusal)
            self._refuse(pending, pg.error_response(_INSUFFICIENT_PRIVILEGE, pending.refusal))
            return
        decision = pending.decision
        assert decision is not None
        if decision.outcome is Outcome.DENY:
            why = decision.message or "; ".join(decision.reasons) or "denied by policy"
            self._record_refused(pending, why)
            self._refuse(
                pending,
                pg.error_response(
                    _INSUFFICIENT_PRIVILEGE,
                    f"jitgate: denied by policy: {why}",
                    detail=_rules_detail(decision),
                ),
            )
            return
        self._cancel_hold = asyncio.Event()
        self._hold_task = asyncio.get_running_loop().create_task(self._hold(pending))

    def _refuse(self, pending: _Pending, error: bytes) -> None:
        """Answer the pending message with ``error`` and go on, as the protocol expects."""
        if pending.kind in (_Q, _F):
            self.client.write(error + pg.ready_for_query(self.status))
        elif not self.batch_has_execute:
            # Nothing in this batch changed anything upstream: answer for it and
            # skip to Sync as the server would; the transaction stays usable.
            self.client.write(error)
            self.discarding = True
        else:
            # Earlier statements of this batch ran: the batch must fail as a
            # whole upstream too. A Describe of a statement that cannot exist
            # makes the upstream fail it right here; the client sees our error.
            marker = "jitgate:refused:" + secrets.token_hex(8)
            self.upstream.write(pg.describe_statement(marker))
            self._expect(_Expect(_D, steps=2, replace_error=error))
        self._unblock()

    def _release(
        self,
        pending: _Pending,
        request_id: str | None,
        params: list[str | None] | None,
        shown: list[str | None] | None,
    ) -> None:
        stmt = _Statement(pending.text, "require_approval", time.perf_counter(), request_id)
        stmt.parameters = params
        stmt.shown = shown
        if pending.redefines:
            self._doubt()
        self._expect(_Expect(pending.kind, statement=stmt))
        if pending.kind == _E:
            self.batch_has_execute = True
            if pending.portal is not None and pending.bound is not None:
                self.portals[pending.portal] = _Bound(
                    pending.bound.text,
                    pending.bound.bind,
                    released=True,
                    statement=pending.bound.statement,
                )
        self.upstream.write(pending.raw)
        self._unblock()

    async def _hold(self, pending: _Pending) -> None:
        params, shown = (
            pending.bound.rendered(self._codec) if pending.bound is not None else (None, None)
        )
        body: dict[str, Any] = {
            "kind": "sql",
            "text": pending.text,
            "target": self.target,
            "env": self.environment,
            "attributes": {"gateway": self.gateway.config.name, "session": self.id},
        }
        if params is not None:
            body["attributes"]["parameters"] = params
        if shown is not None:
            body["attributes"][SHOWN_PARAMETERS] = shown
        request_id: str | None = None
        port = self.gateway.port
        try:
            try:
                submitted = await port.submit(self.user, body)
            except GatewayRefused as refused:
                self._refuse_held(pending, f"jitgate: not held: {refused.message}")
                return
            if submitted.outcome == "allow" or submitted.grant is not None:
                self._release(pending, None, params, shown)
                return
            if submitted.outcome != "require_approval" or submitted.request is None:
                why = submitted.decision.get("message") or "; ".join(
                    submitted.decision.get("reasons") or ()
                )
                self._refuse_held(pending, f"jitgate: denied by policy: {why or 'denied'}")
                return
            view = submitted.request
            request_id = str(view["id"])
            self.client.write(self._held_notice(view))
            final = await self._wait(request_id)
            if final is None:
                return  # refused in _wait
            if final.get("status") != "approved":
                self._refuse_held(
                    pending, f"jitgate: request {request_id} {describe_final(final)}; not run"
                )
                request_id = None
                return
            digest = fingerprint(
                Action(
                    kind=ActionKind.SQL,
                    text=pending.text,
                    target=self.target,
                    environment=self.environment,
                    attributes={"parameters": params} if params is not None else {},
                )
            )
            await port.authorize(self.user, request_id, digest)
            self.client.write(
                pg.notice_response(f"jitgate: {request_id} {describe_final(final)}; running")
            )
            self._release(pending, request_id, params, shown)
            request_id = None
        except ApprovalUnavailable as exc:
            self._refuse_held(pending, f"jitgate: approval service unavailable ({exc}); not run")
        except GatewayRefused as refused:
            self._refuse_held(pending, f"jitgate: {refused.message}; not run")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: hold failed", self.id)
            self._refuse_held(pending, "jitgate: internal error while holding; not run")
        finally:
            if request_id is not None:
                # Not released: the request must not stay pending for a statement
                # that can no longer run.
                self._spawn(self._cancel_request(request_id))

    async def _cancel_request(self, request_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.gateway.port.cancel(self.user, request_id)

    async def _wait(self, request_id: str) -> Mapping[str, Any] | None:
        """The request's view once it is no longer pending; None if the wait ended
        otherwise (timeout, cancel: answered here)."""
        assert self._cancel_hold is not None
        pending = self.pending
        assert pending is not None
        cancelled = asyncio.ensure_future(self._cancel_hold.wait())
        waiting = asyncio.ensure_future(self._follow(request_id))
        try:
            done, _ = await asyncio.wait(
                {cancelled, waiting},
                timeout=self.gateway.config.hold_timeout_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in (cancelled, waiting):
                if not task.done():
                    task.cancel()
        if waiting in done:
            return waiting.result()
        if cancelled in done:
            self._refuse(
                pending,
                pg.error_response(
                    _QUERY_CANCELED,
                    f"canceling statement due to user request (request {request_id} cancelled)",
                ),
            )
            return None
        timeout = self.gateway.config.hold_timeout_seconds
        self._refuse_held(
            pending, f"jitgate: request {request_id} was not approved within {timeout:g} s; not run"
        )
        return None

    async def _follow(self, request_id: str) -> Mapping[str, Any]:
        last: Mapping[str, Any] = {}
        async for view in self.gateway.port.watch(self.user, request_id):
            last = view
            if view.get("status") != "pending":
                return view
        return last

    def _refuse_held(self, pending: _Pending, why: str) -> None:
        self._record_refused(pending, why)
        self._refuse(pending, pg.error_response(_INSUFFICIENT_PRIVILEGE, why))

    @property
    def holding(self) -> bool:
        """Whether a statement of this session waits for approval now."""
        task = self._hold_task
        return task is not None and not task.done()

    def cancel(self) -> bool:
        """A CancelRequest for this session: stop a hold, if there is one."""
        task = self._hold_task
        if self._cancel_hold is not None and task is not None and not task.done():
            self._cancel_hold.set()
            return True
        return False

    def _held_notice(self, view: Mapping[str, Any]) -> bytes:
        request_id = view["id"]
        where = self.gateway.approve_hint(str(request_id))
        return pg.notice_response(
            f"jitgate: statement held for approval as {request_id}; {describe_waiting(view)}",
            detail=f"approve with: {where}",
            hint="the statement runs as soon as it is approved; cancel (Ctrl-C) withdraws it",
        )

    def _record_refused(self, pending: _Pending, why: str) -> None:
        stmt = _Statement(
            pending.text,
            "deny"
            if pending.decision is None or pending.decision.outcome is Outcome.DENY
            else "require_approval",
            time.perf_counter(),
        )
        stmt.error = f"{_INSUFFICIENT_PRIVILEGE} {why}"
        self._finish(stmt)

    # --- upstream -> client -----------------------------------------------------------

    def _from_upstream(self, data: bytes) -> None:
        frames = self.uframes
        frames.feed(data)
        out: list[bytes] = []
        run = frames.position
        try:
            while True:
                kind = frames.skip()
                if kind is None:
                    break
                if kind == _ROW:
                    continue
                replacement = self._upstream_message(kind, frames.start, frames.end)
                if replacement is not None:
                    if run < frames.start:
                        out.append(frames.span(run, frames.start))
                    out.append(replacement)
                    run = frames.end
        except _Desync as exc:
            log.error("session %s: %s", self.id, exc)
            self.fatal(_PROTOCOL_VIOLATION, "jitgate: lost track of the upstream conversation")
            return
        if run < frames.position:
            out.append(frames.span(run, frames.position))
        if out:
            self.client.write(b"".join(out) if len(out) > 1 else out[0])
        if self._idle and not self.expect:
            self._run_idle()

    def _upstream_message(self, kind: int, start: int, end: int) -> bytes | None:
        expect = self.expect
        if kind in (_COMPLETE, _EMPTY, _SUSPENDED):
            if not expect:
                raise _Desync(f"{chr(kind)} without a statement")
            head = expect[0]
            self._copying = False  # whatever ran, a copy in progress ended here
            if head.statement is not None and kind == _COMPLETE:
                tag = self.uframes.span(start + 5, end - 1).decode("utf-8", "replace")
                head.statement.tags.append(tag)
            if head.kind == _E:
                expect.popleft()
                if head.statement is not None:
                    self._finish(head.statement)
            elif head.kind != _Q:
                raise _Desync(f"{chr(kind)} while expecting {chr(head.kind)}")
            return None
        if kind == _READY:
            if not expect or expect[0].kind not in (_Q, _S, _F):
                raise _Desync("ReadyForQuery out of turn")
            head = expect.popleft()
            if head.statement is not None:
                self._finish(head.statement)
            self.status = self.uframes.span(start + 5, end)
            if self.status == b"I":
                # Named portals live until the end of the transaction.
                self.portals.clear()
            return None
        if kind == _ERROR:
            return self._upstream_error(start, end)
        if kind in (_PARSED, _BOUND, _CLOSED):
            want = {_PARSED: _P, _BOUND: _B, _CLOSED: _C}[kind]
            if not expect or expect[0].kind != want:
                raise _Desync(f"{chr(kind)} out of turn")
            return b"" if expect.popleft().swallow else None
        if kind in (_PARAMS, _ROWDESC, _NODATA):
            if expect and expect[0].kind == _D:
                head = expect[0]
                if kind == _PARAMS and head.describes is not None:
                    self._learn_types(head.describes, start, end)
                head.steps -= 1
                if head.steps <= 0 or kind != _PARAMS:
                    expect.popleft()
                return None
            if kind == _ROWDESC and expect and expect[0].kind == _Q:
                return None
            raise _Desync(f"{chr(kind)} out of turn")
        if kind == _PARAMETER_STATUS:
            name, value = pg.decode_parameter_status(self.uframes.span(start + 5, end))
            self._parameter(name, value)
            return None
        if kind == _COPY_IN:
            self._copy_in()
            return None
        return None  # notices, notifications, COPY traffic, function results: relayed

    def _learn_types(self, prepared: _Prepared, start: int, end: int) -> None:
        """A ParameterDescription for ``prepared``: it fills in the types its Parse
        left open (0); what is already known stays (the server's answers about
        one definition of a statement do not change)."""
        try:
            described = pg.decode_parameter_description(self.uframes.span(start + 5, end))
        except pg.ProtocolViolation:
            return  # only the display of binary values would have used them
        known = prepared.types
        prepared.types = tuple(
            known[i] if i < len(known) and known[i] else oid for i, oid in enumerate(described)
        )

    def _copy_in(self) -> None:
        """CopyInResponse: the server now ignores Sync (and Flush) until the
        client's CopyDone or CopyFail. Syncs already forwarded in between (libpq
        sends one right after the Execute) get no ReadyForQuery."""
        if not self.expect:
            raise _Desync("CopyInResponse without a statement")
        # Syncs forwarded after the statement and before the client's next
        # CopyDone or CopyFail reached the server in copy-in mode: ignored.
        head = self.expect[0]
        ignored = [e for e in self.expect if e.kind == _S and e.copies == head.copies]
        for expect in ignored:
            self.expect.remove(expect)
        # Unless the client already ended the copy (pipelined), later Syncs are ignored too.
        self._copying = self._copy_ends == head.copies

    def _upstream_error(self, start: int, end: int) -> bytes | None:
        expect = self.expect
        body = self.uframes.span(start + 5, end)
        if not expect:
            return None  # e.g. FATAL at shutdown: relayed, the connection then ends
        self._copying = False
        head = expect[0]
        fields = pg.decode_fields(body)
        error = f"{fields.get('C', '?')} {fields.get('M', '')}"
        if head.kind in (_Q, _F):
            if head.statement is not None:
                head.statement.error = error
            return None
        # Extended protocol: the failing message and everything up to Sync is skipped.
        # Nothing of it took effect upstream, so its changes to our maps are undone.
        replacement = head.replace_error
        first = True
        undo: list[_Expect] = []
        while expect and expect[0].kind != _S:
            item = expect.popleft()
            if item.undo is not None:
                undo.append(item)
            if item.redo is not None:
                self.doubtful.add(item.redo)
            if item.statement is not None:
                if first:
                    item.statement.error = error
                else:
                    item.statement.skipped = True
                self._finish(item.statement)
            first = False
        for item in reversed(undo):
            assert item.undo is not None
            which, name, prev = item.undo
            table: dict[str, Any] = self.statements if which == "statement" else self.portals
            if prev is _MISSING:
                table.pop(name, None)
            else:
                table[name] = prev
        if not expect:
            # The batch's Sync is still to come: the upstream skips everything
            # up to it, and so must the gateway (nothing of it is answered).
            self.discarding = True
        return replacement

    # --- audit ------------------------------------------------------------------------

    def _finish(self, stmt: _Statement) -> None:
        tags = stmt.tags
        tag = "; ".join(tags) if tags else None
        rows = pg.command_rows(tags[-1]) if tags else None
        error = stmt.error
        if stmt.skipped and error is None:
            error = "not run: an earlier message of the batch failed"
        duration = (time.perf_counter() - stmt.started) * 1000.0
        record = StatementRecord(
            user=self.user.name,
            target=self.target,
            environment=self.environment,
            text=stmt.text,
            decision=stmt.decision,
            duration_ms=round(duration, 3),
            tag=tag,
            rows=rows,
            error=error,
            request_id=stmt.request_id,
            parameters=stmt.parameters,
            session=self.id,
            client=self.client_address,
            gateway=self.gateway.config.name,
            at=_now_iso(),
        )
        if stmt.shown is not None:
            record.extra = {SHOWN_PARAMETERS: stmt.shown}
        gateway = self.gateway
        gateway.recorder.record(record)
        counts = gateway.decisions  # for the metrics
        counts[stmt.decision] = counts.get(stmt.decision, 0) + 1
        if stmt.request_id is not None:
            self._spawn(
                self._report(stmt.request_id, rows, None if error is None else error, duration)
            )

    async def _report(
        self, request_id: str, rows: int | None, error: str | None, duration: float
    ) -> None:
        try:
            await self.gateway.port.report_outcome(
                self.user,
                request_id,
                rows_affected=rows,
                error=error,
                duration_ms=int(duration),
            )
        except Exception as exc:  # it ran; the request stays executing until its deadline
            log.warning("session %s: no outcome reported for %s: %s", self.id, request_id, exc)


class _Desync(Exception):
    """The upstream answered something the session did not expect."""


_second: int = 0
_second_text: str = ""


def _now_iso() -> str:
    """The time now in ISO 8601 (UTC, microseconds), formatting the date once a second."""
    global _second, _second_text
    now = time.time()
    second = int(now)
    if second != _second:
        _second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = second
    return f"{_second_text}.{int((now - second) * 1_000_000):06d}+00:00"


def _bind_names(body: bytes) -> tuple[str, str]:
    """(portal, statement) of a Bind body, which must be well formed: the values
    themselves are decoded only when they are shown (see _Bound.rendered)."""
    first = body.find(b"\x00")
    second = body.find(b"\x00", first + 1) if first >= 0 else -1
    if second < 0:
        raise pg.ProtocolViolation("malformed Bind message")
    try:
        portal, statement = body[:first].decode(), body[first + 1 : second].decode()
    except UnicodeDecodeError:
        raise pg.ProtocolViolation("Bind: a name is not UTF-8") from None
    try:
        at = second + 1
        (nformats,) = _INT16.unpack_from(body, at)
        at += 2
        formats = struct.unpack_from(f"!{nformats}h", body, at) if nformats > 0 else ()
        at += 2 * nformats
        (nparams,) = _INT16.unpack_from(body, at)
        at += 2
        if nformats < 0 or nparams < 0 or nformats not in (0, 1, nparams):
            raise pg.ProtocolViolation("Bind: parameter formats do not match the parameters")
        if any(f not in (0, 1) for f in formats):
            raise pg.ProtocolViolation("Bind: a parameter format is neither text nor binary")
        for _ in range(nparams):
            (length,) = _INT32.unpack_from(body, at)
            at += 4
            if length > 0:
                at += length
            elif length < -1:
                raise pg.ProtocolViolation("malformed Bind message (negative length)")
        (nresults,) = _INT16.unpack_from(body, at)
        at += 2 + 2 * nresults
    except struct.error:
        raise pg.ProtocolViolation("malformed Bind message (truncated)") from None
    if nresults < 0 or at != len(body):
        raise pg.ProtocolViolation("malformed Bind message")
    return portal, statement


_INT16: Final = struct.Struct("!h")
_INT32: Final = struct.Struct("!i")


def _rules_detail(decision: Decision) -> str | None:
    if not decision.rules:
        return None
    return "rules: " + ", ".join(decision.rules)


_FORWARD: Final = object()
#: Forward the message after ``Session._prefix`` (the gateway's own messages).
_PREFIX: Final = object()
_DROP: Final = object()
_STOP: Final = object()
_AGAIN: Final = object()
