"""``jitgate proxy postgres``: the listener, the start-up handshake, cancels.

A client connects and starts up as it would with PostgreSQL. The gateway
answers SSLRequest as configured (TLS terminated here, or refused) and
GSSENCRequest with "no", picks the target by the database name, asks for a
password, which is the user's jitgate API token, and checks it with the
approval service. Only then does it connect to the target's upstream with
credentials the client never sees (SCRAM-SHA-256, md5 or cleartext, over TLS
when the DSN asks for it), relays the upstream's parameters, hands out its
own backend key, and leaves the connection to a :class:`Session`.

A CancelRequest names the gateway's key: it withdraws a held statement, or
is passed on to the upstream with the upstream's key. A gateway that is one
worker of several (workers.py) passes a CancelRequest for another worker's
key to that worker, which checks it as its own.

:meth:`PostgresGateway.stop` ends every connection as PostgreSQL does at a
shutdown (FATAL 57P01; a held statement is withdrawn) and waits for what the
gateway started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import ssl
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

from jitgate.gateways.port import ApprovalPort, ApprovalUnavailable, GatewayRefused
from jitgate.gateways.postgres import protocol as pg
from jitgate.gateways.postgres.config import (
    GatewayConfig,
    GatewayConfigError,
    Target,
    Upstream,
)
from jitgate.gateways.postgres.link import ConnectionClosed, Link
from jitgate.gateways.postgres.session import Session
from jitgate.gateways.postgres.upstream_auth import UpstreamAuthFailed, authenticate_upstream
from jitgate.gateways.postgres.workers import forward_cancel, listen_for_cancels, random_pid

if TYPE_CHECKING:
    from jitgate.gateways.postgres.workers import WorkerSlot
    from jitgate.gateways.recorder import StatementRecorder

log = logging.getLogger("jitgate.gateway.postgres")

#: Start-up parameters passed to the upstream. Anything else in a startup
#: packet would set a server setting before any statement is seen
#: (``session_replication_role=replica`` disables triggers), so it is dropped.
PASSED_PARAMETERS: Final = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "extra_float_digits",
        "intervalstyle",
        "search_path",
    }
)
STARTUP_TIMEOUT: Final = 30.0
CONNECT_TIMEOUT: Final = 10.0
#: How long :meth:`PostgresGateway.stop` waits for what is under way (cancels
#: forwarded upstream, held requests being withdrawn, connections closing).
STOP_TIMEOUT: Final = 10.0
#: What clients are told when the gateway stops (PostgreSQL's admin_shutdown).
ADMIN_SHUTDOWN: Final = "57P01"
SHUTDOWN_MESSAGE: Final = "jitgate: terminating connection due to administrator command"


class Refused(Exception):
    """The connection is refused at start-up with this SQLSTATE and message."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class PostgresGateway:
    def __init__(
        self,
        config: GatewayConfig,
        port: ApprovalPort,
        recorder: StatementRecorder,
        *,
        approve_url: str | None = None,
        worker: WorkerSlot | None = None,
    ) -> None:
        self.config = config
        self.port = port
        self.recorder = recorder
        self.approve_url = approve_url.rstrip("/") if approve_url else None
        #: Which of several gateway processes on the port this is (None: the only one).
        self.worker = worker
        self.sessions: dict[int, Session] = {}
        self._server: asyncio.Server | None = None
        #: Where the other workers pass on cancels for this worker's keys.
        self._cancel_server: asyncio.AbstractServer | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        #: CancelRequests being passed on to an upstream or to another worker.
        self._cancels: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._ssl = _server_tls(config)
        #: Client TLS contexts for the upstreams: (sslmode, sslrootcert) ->
        #: (the root certificate file's stat stamp, context). See upstream_tls.
        self._upstream_tls: dict[
            tuple[str, str | None], tuple[tuple[int, int, int] | None, ssl.SSLContext]
        ] = {}
        self.connections = 0
        #: Counters for the metrics (metrics.py reads them at scrape time):
        #: logins accepted, logins refused for a wrong token, statements
        #: finished by the decision recorded (Session._finish counts them).
        self.logins = 0
        self.login_failures = 0
        self.decisions: dict[str, int] = {"allow": 0, "require_approval": 0, "deny": 0}

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept,
            self.config.listen.host,
            self.config.listen.port,
            reuse_address=True,
            # Workers share the port: the kernel spreads connections across them.
            reuse_port=self.worker is not None,
        )
        if self.worker is not None:
            try:
                self._cancel_server = await listen_for_cancels(
                    self.worker.cancel_socket(), self._forwarded_cancel
                )
            except BaseException:
                self._server.close()
                raise

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (port 0 in the config picks a free one)."""
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop listening and end every connection with a FATAL 57P01, a held
        statement's included (its request is withdrawn); return once what the
        gateway started is done: start-ups, cancels passed on upstream, the
        sessions' own tasks (withdrawing requests, reporting outcomes). What is
        still running after ``timeout`` seconds is cancelled, connections not
        yet closed are aborted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._stopping = True
        if self._server is not None:
            self._server.close()
        self._stop_cancel_server()
        for task in list(self._handshakes):
            task.cancel()  # the client is told, see _handshake
        sessions = list(self.sessions.values())
        for session in sessions:
            session.fatal(ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE)
        await self._settle(sessions, deadline)
        links = [link for s in sessions for link in (s.client, s.upstream)]
        open_links = [link.closed for link in links if not link.closed.done()]
        if open_links:
            await asyncio.wait(open_links, timeout=max(0.0, deadline - loop.time()))
        for link in links:
            if not link.closed.done():
                link.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), max(0.1, deadline - loop.time()))

    async def _settle(self, sessions: list[Session], deadline: float) -> None:
        """Wait for the gateway's tasks and those of ``sessions`` (which may start
        more as they end: a cancelled hold withdraws its request)."""
        loop = asyncio.get_running_loop()
        while True:
            pending = {t for t in (*self._handshakes, *self._cancels) if not t.done()}
            for session in sessions:
                pending.update(t for t in session.background_tasks() if not t.done())
            if not pending:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("gateway stopping: %d task(s) still running, cancelled", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=1.0)
                return
            done, _ = await asyncio.wait(pending, timeout=remaining)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("gateway task failed", exc_info=task.exception())

    def _stop_cancel_server(self) -> None:
        if self._cancel_server is None or self.worker is None:
            return
        self._cancel_server.close()
        self._cancel_server = None
        with contextlib.suppress(OSError):
            os.unlink(self.worker.cancel_socket())

    def forget(self, session: Session) -> None:
        if self.sessions.get(session.pid) is session:
            del self.sessions[session.pid]

    def approve_hint(self, request_id: str) -> str:
        hint = f"jitgate approve {request_id}"
        if self.approve_url:
            hint += f" --url {self.approve_url}"
        return hint

    # --- start-up ---------------------------------------------------------------------

    def _accept(self) -> Link:
        link = Link(pg.MAX_STARTUP)
        task = asyncio.get_running_loop().create_task(self._handshake(link))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)
        return link

    async def _handshake(self, client: Link) -> None:
        self.connections += 1
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                session = await self._establish(client)
        except Refused as refused:
            client.write(pg.error_response(refused.sqlstate, refused.message, severity="FATAL"))
            client.close()
            return
        except pg.ProtocolViolation as exc:
            client.write(pg.error_response("08P01", f"jitgate: {exc}", severity="FATAL"))
            client.close()
            return
        except (ConnectionClosed, ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.debug("start-up ended: %s", exc)
            client.abort()
            return
        except asyncio.CancelledError:
            if self._stopping:
                client.write(pg.error_response(ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE, severity="FATAL"))
                client.close()
            else:
                client.abort()
            raise
        except Exception:
            log.exception("start-up failed")
            client.write(pg.error_response("XX000", "jitgate: internal error", severity="FATAL"))
            client.close()
            return
        if session is not None:
            session.start()

    async def _establish(self, client: Link) -> Session | None:
        loop = asyncio.get_running_loop()
        tls = False
        while True:
            header = await client.read_exact(4)
            packet = header + await client.read_exact(pg.startup_length(header) - 4)
            request = pg.decode_startup(packet)
            if isinstance(request, pg.SSLRequest):
                if tls or self._ssl is None:
                    client.write(b"N")
                    continue
                if client.buffered:
                    # Bytes sent before the TLS handshake could be injected by anyone.
                    raise pg.ProtocolViolation("data received after SSLRequest")
                client.write(b"S")
                assert client.transport is not None
                transport = await loop.start_tls(
                    client.transport, client, self._ssl, server_side=True
                )
                client.transport = cast(asyncio.Transport, transport)
                tls = True
                continue
            if isinstance(request, pg.GSSENCRequest):
                client.write(b"N")
                continue
            if isinstance(request, pg.CancelRequest):
                self.cancel(request.pid, request.secret, packet)
                client.close()
                return None
            break
        if self.config.tls_mode == "require" and not tls:
            raise Refused("28000", "jitgate: this gateway requires TLS (sslmode=require)")
        params = request.parameters
        user = params.get("user")
        if not user:
            raise Refused("28000", "no user name in the startup packet")
        if params.get("replication", "false").lower() not in ("false", "0", "no", "off"):
            raise Refused("0A000", "jitgate does not relay replication connections")
        database = params.get("database") or user
        target = self.config.target_for(database)
        if target is None:
            raise Refused("3D000", f'jitgate has no target "{database}"')

        client.write(pg.authentication(pg.AUTH_CLEARTEXT))
        kind, body = await client.read_message()
        if kind != ord("p"):
            raise pg.ProtocolViolation("expected a password message")
        try:
            secret = pg.password_message(body).decode("utf-8")
        except UnicodeDecodeError:
            # No token is anything but ASCII; "replace" would only blur what was sent.
            self.login_failures += 1
            raise Refused("28P01", f'password authentication failed for user "{user}"') from None
        address = _peer(client)
        try:
            member = await self.port.authenticate(user, secret, address)
        except ApprovalUnavailable as exc:
            raise Refused("08006", f"jitgate: approval service unavailable ({exc})") from None
        except GatewayRefused as exc:
            raise Refused("28000", f"jitgate: {exc.message}") from None
        finally:
            del secret
        if member is None:
            self.login_failures += 1
            raise Refused("28P01", f'password authentication failed for user "{user}"')

        upstream, upstream_params, key, status, notices = await self._connect(target, params)
        pid, cancel_secret = self._new_key()
        ignored = sorted(
            k
            for k in params
            if k not in ("user", "database") and k.lower() not in PASSED_PARAMETERS
        )
        greeting = [pg.authentication(pg.AUTH_OK)]
        greeting += [pg.parameter_status(k, v) for k, v in upstream_params.items()]
        greeting.append(pg.backend_key_data(pid, cancel_secret))
        greeting += notices
        if ignored:
            greeting.append(
                pg.notice_response(
                    "jitgate: startup parameter(s) not passed on: " + ", ".join(ignored),
                    hint="set them with SET, which the policy sees",
                )
            )
        greeting.append(pg.ready_for_query(status))
        client.write(b"".join(greeting))
        client.max_message = self.config.max_message_bytes
        session = Session(
            self,
            client,
            upstream,
            user=member,
            target=target.name,
            environment=target.environment,
            client_address=address,
            upstream_key=key,
            parameters=upstream_params,
            status=status,
        )
        session.pid, session.secret = pid, cancel_secret
        self.sessions[pid] = session
        self.logins += 1
        return session

    def _new_key(self) -> tuple[int, int]:
        """A backend key (pid, secret) for a new session: the pid random, unused
        here and, for a worker, one the other workers can tell is this one's."""
        while True:
            pid = self.worker.new_pid() if self.worker is not None else random_pid()
            if pid not in self.sessions:
                return pid, secrets.randbits(32) - 2**31

    async def _connect(
        self, target: Target, client_params: Mapping[str, str]
    ) -> tuple[Link, dict[str, str], tuple[int, int], bytes, list[bytes]]:
        upstream = target.upstream
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                transport, link = await loop.create_connection(
                    lambda: Link(2**31 - 1), upstream.host, upstream.port
                )
                try:
                    return await self._upstream_startup(link, target, client_params)
                except BaseException:
                    transport.abort()
                    raise
        except UpstreamAuthFailed as exc:
            log.error("target %s: upstream authentication failed: %s", target.name, exc)
            raise Refused("08006", f"jitgate: cannot log in to target {target.name}") from None
        except GatewayConfigError as exc:  # e.g. the password file went missing
            log.error("target %s: %s", target.name, exc)
            raise Refused("08006", f"jitgate: target {target.name} is misconfigured") from None
        except (OSError, TimeoutError, ConnectionClosed, ssl.SSLError) as exc:
            log.error("target %s: cannot connect upstream: %s", target.name, exc)
            raise Refused("08006", f"jitgate: target {target.name} is unreachable") from None

    async def _upstream_startup(
        self, link: Link, target: Target, client_params: Mapping[str, str]
    ) -> tuple[Link, dict[str, str], tuple[int, int], bytes, list[bytes]]:
        upstream = target.upstream
        context = self.upstream_tls(upstream)
        if context is not None:
            link.write(pg.SSL_REQUEST_PACKET)
            answer = await link.read_exact(1)
            if answer == b"S":
                if link.buffered:
                    # Bytes before the TLS handshake could come from anyone on the path.
                    raise pg.ProtocolViolation("the upstream sent data after accepting TLS")
                assert link.transport is not None
                transport = await asyncio.get_running_loop().start_tls(
                    link.transport,
                    link,
                    context,
                    server_hostname=upstream.host if context.check_hostname else None,
                )
                link.transport = cast(asyncio.Transport, transport)
            elif upstream.sslmode != "prefer":
                raise ConnectionError("the upstream does not accept TLS")
        params = {"user": upstream.user, "database": upstream.dbname}
        if upstream.application_name:
            params["application_name"] = upstream.application_name
        for name, value in client_params.items():
            if name.lower() in PASSED_PARAMETERS:
                params[name] = value
        link.write(pg.startup_message(params))

        async def send(data: bytes) -> None:
            link.write(data)

        password = upstream.resolve_password()
        await authenticate_upstream(link.read_message, send, user=upstream.user, password=password)
        settings: dict[str, str] = {}
        notices: list[bytes] = []
        key = (0, 0)
        while True:
            kind, body = await link.read_message()
            if kind == ord("S"):
                name, value = pg.decode_parameter_status(body)
                settings[name] = value
            elif kind == ord("K"):
                key = pg.decode_backend_key_data(body)
            elif kind == ord("N"):
                notices.append(pg.message(b"N", body))
            elif kind == ord("E"):
                fields = pg.decode_fields(body)
                raise Refused(fields.get("C", "08006"), fields.get("M", "upstream error"))
            elif kind == ord("Z"):
                return link, settings, key, body[:1] or b"I", notices
            else:
                raise pg.ProtocolViolation(f"unexpected {chr(kind)!r} from the upstream at startup")

    def upstream_tls(self, upstream: Upstream) -> ssl.SSLContext | None:
        """The client TLS context for ``upstream`` (None: no TLS), built once for
        each sslmode and root certificate file and shared by every login that
        uses them (building one takes milliseconds: it loads certificates). A
        root certificate file that changed on disk is loaded again."""
        mode = upstream.sslmode
        if mode in (None, "disable", "allow"):
            return None
        rootcert = str(upstream.sslrootcert) if upstream.sslrootcert is not None else None
        stamp: tuple[int, int, int] | None = None
        if rootcert is not None:
            stat = os.stat(rootcert)  # OSError: the target is unreachable, as before
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        key = (mode, rootcert)
        cached = self._upstream_tls.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        context = _client_tls(upstream)
        assert context is not None
        self._upstream_tls[key] = (stamp, context)
        return context

    # --- cancel ----------------------------------------------------------------------

    def cancel(self, pid: int, secret: int, packet: bytes | None = None) -> None:
        """A CancelRequest received on a connection (``packet``: its bytes). The
        key of another worker's session goes, as it came, to that worker."""
        worker = self.worker
        if worker is not None and pid > 0 and not worker.owns(pid):
            owner = worker.cancel_socket(worker.owner(pid))
            self._track_cancel(forward_cancel(owner, packet or pg.cancel_request(pid, secret)))
            return
        self._cancel_own(pid, secret)

    def _forwarded_cancel(self, packet: bytes) -> None:
        """A CancelRequest another worker received for a key of this one: checked
        exactly as one received directly, and never passed on again."""
        try:
            request = pg.decode_startup(packet)
        except pg.ProtocolViolation as exc:
            log.warning("a cancel from another worker is malformed: %s", exc)
            return
        if not isinstance(request, pg.CancelRequest):
            log.warning("another worker passed on something other than a cancel")
            return
        assert self.worker is not None
        if not self.worker.owns(request.pid):
            log.warning("another worker passed on a cancel for a key that is not ours")
            return
        self._cancel_own(request.pid, request.secret)

    def _cancel_own(self, pid: int, secret: int) -> None:
        session = self.sessions.get(pid)
        if session is None or not hmac.compare_digest(
            session.secret.to_bytes(4, "big", signed=True), secret.to_bytes(4, "big", signed=True)
        ):
            return
        if session.cancel():
            return
        self._track_cancel(self._cancel_upstream(session))

    def _track_cancel(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (a cancel under way); :meth:`stop` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel_upstream(self, session: Session) -> None:
        target = self.config.target_for(session.target)
        if target is None:
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _reader, writer = await asyncio.open_connection(
                    target.upstream.host, target.upstream.port
                )
                writer.write(pg.cancel_request(*session.upstream_key))
                await writer.drain()
                writer.close()
                await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            log.warning("cancel for session %s not delivered: %s", session.id, exc)


class RunningGateway:
    """A started gateway (see :func:`jitgate.gateways.postgres.start_gateway`):
    the gateway, its statement recorder and the approval port it owns."""

    def __init__(
        self, gateway: PostgresGateway, recorder: StatementRecorder, port: ApprovalPort
    ) -> None:
        self.gateway = gateway
        self.recorder = recorder
        self.port = port
        self._stopped = False

    @property
    def config(self) -> GatewayConfig:
        return self.gateway.config

    @property
    def address(self) -> tuple[str, int]:
        """The address listened on (the real port when the config says 0)."""
        return self.gateway.address

    async def stop(self) -> None:
        """Stop the gateway (its clients get a FATAL 57P01), write the statements
        still queued, close the port. Calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        await self.gateway.stop()
        await self.recorder.close()
        await self.port.close()


def _peer(link: Link) -> str:
    if link.transport is None:
        return ""
    peer: Any = link.transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


def _server_tls(config: GatewayConfig) -> ssl.SSLContext | None:
    tls = config.tls
    if tls is None or tls.mode == "disable" or tls.cert is None or tls.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    return context


def _client_tls(upstream: Upstream) -> ssl.SSLContext | None:
    mode = upstream.sslmode
    if mode in (None, "disable", "allow"):
        return None
    context = ssl.create_default_context(cafile=upstream.sslrootcert)
    if mode == "require" and upstream.sslrootcert is not None:
        # As libpq: with a root certificate, "require" verifies the chain
        # (verify-ca); a configured CA silently ignored would be a surprise.
        context.check_hostname = False
    elif mode in ("prefer", "require"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif mode == "verify-ca":
        context.check_hostname = False
    return context
