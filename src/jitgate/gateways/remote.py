"""The approval port over the REST API: a standalone gateway (``jitgate proxy``).

The gateway runs with a **service account's** token and uses it for every
call: it submits on behalf of the connected user (``user`` in the action
body; the service then evaluates the action as that user, with their groups
from the store), and as the service account that submitted a request it may
watch, cancel, authorize and report on it (docs/api.md, roles). The user's
own token (their "password") is only used to check who they are:

* :meth:`RemoteApprovals.authenticate` asks ``GET /api/v1/me`` with it and
  accepts the user only if the token is theirs. Successes are remembered for
  ``auth_cache_ttl`` seconds (30) keyed by the token's SHA-256: the token
  itself is never kept, and never logged. The peer's address goes along as
  ``X-Forwarded-For``, so a server that trusts the gateway as a proxy
  (uvicorn ``--forwarded-allow-ips``) throttles failed logins per client
  rather than locking the whole gateway out.
* The :attr:`~RemoteApprovals.evaluator` holds the server's policy, fetched
  from ``GET /api/v1/policy`` by :meth:`~RemoteApprovals.start` and re-read
  every ``policy_refresh`` seconds; it is swapped (one assignment) only when
  the policy's SHA-256 changed, and kept as it is when the refresh fails.
  Until :meth:`~RemoteApprovals.start` it denies everything.

Errors: no answer, a timeout, a 5xx, or the gateway's own token refused
(401) raise :class:`ApprovalUnavailable` (fail closed); any other 4xx raises
:class:`GatewayRefused` with the server's code and message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import httpx
from httpx_sse import SSEError, aconnect_sse

from jitgate import __version__
from jitgate.client import FINAL_STATUSES
from jitgate.evaluator import Evaluator
from jitgate.gateways.port import (
    ApprovalPort,
    ApprovalUnavailable,
    GatewayRefused,
    GatewayUser,
    StatementRecord,
    Submitted,
)
from jitgate.gateways.records import (
    PartiallyRecorded,
    fit_record,
    fit_text,
    json_bytes,
    record_dict,
)
from jitgate.policy import PolicyError, load_policy_text

log = logging.getLogger(__name__)

API: Final = "/api/v1"
#: Seconds a successful authentication is remembered.
AUTH_CACHE_TTL: Final = 30.0
#: Most authentications remembered.
MAX_CACHED_AUTH: Final = 10_000
#: Largest request body sent (the server refuses more than 1 MiB by default).
MAX_REQUEST_BYTES: Final = 1_000_000
#: Records per ``POST /api/v1/audit/statements`` (the service's limit).
MAX_RECORDS: Final = 1000
#: The service's limits on one record (jitgate.service.statements).
MAX_TEXT_BYTES: Final = 1024 * 1024
MAX_REST_BYTES: Final = 1024 * 1024
#: Longest token sent to the server (as the server's own limit).
MAX_TOKEN_LENGTH: Final = 512
#: Times in a row an event stream may end early (server restart) before
#: :meth:`RemoteApprovals.watch` gives up.
MAX_RECONNECTS: Final = 5

#: The evaluator before the server's policy is known: everything is denied.
NOT_LOADED_POLICY: Final = """\
version: 1
name: not-loaded
description: the gateway has not loaded the server's policy yet; everything is denied
default: deny
"""


def _path_id(value: str) -> str:
    """An id embedded in a path: nothing that could change the route."""
    if not value or any(c in value for c in "/?#%\\") or value in {".", ".."}:
        raise GatewayRefused("not_found", f"no request {value!r}")
    return value


def _usable_token(secret: str) -> bool:
    """Whether ``secret`` could be an API token (printable ASCII, no spaces):
    anything else is refused without being sent anywhere."""
    return 0 < len(secret) <= MAX_TOKEN_LENGTH and all(33 <= ord(c) < 127 for c in secret)


def _forwarded_for(client: str) -> dict[str, str]:
    try:
        address = ipaddress.ip_address(client.strip())
    except ValueError:
        return {}
    return {"X-Forwarded-For": str(address)}


def _error_of(response: httpx.Response) -> tuple[str, str]:
    code, message = "http_error", f"HTTP {response.status_code} {response.reason_phrase}"
    with contextlib.suppress(ValueError, KeyError, TypeError):
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    return code, message


class RemoteApprovals:
    """:class:`~jitgate.gateways.port.ApprovalPort` over the REST API."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        gateway: str,
        policy_refresh: float = 10.0,
        timeout: float = 10.0,
        stream_timeout: float = 60.0,
        auth_cache_ttl: float = AUTH_CACHE_TTL,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``token``: the gateway's service-account token; ``timeout``: seconds
        per call; ``stream_timeout``: longest silence on an event stream (the
        server sends a heartbeat every 15 s) before :meth:`watch` fails."""
        self.url = url.rstrip("/")
        self.gateway = gateway
        self.policy_refresh = policy_refresh
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.auth_cache_ttl = auth_cache_ttl
        self.max_request_bytes = max_request_bytes
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": f"jitgate-gateway/{__version__} ({gateway})",
            },
            timeout=timeout,
            transport=transport,
        )
        #: Local decisions; denies everything until :meth:`start`.
        self.evaluator: Evaluator = Evaluator(load_policy_text(NOT_LOADED_POLICY, "<not loaded>"))
        #: SHA-256 and source of the policy in :attr:`evaluator` (None: not loaded).
        self.policy_sha256: str | None = None
        self.policy_source: str | None = None
        #: Policy refreshes that failed (the previous policy was kept).
        self.policy_errors = 0
        #: sha256(token) -> (user, until): successful authentications.
        self._auth: dict[str, tuple[GatewayUser, float]] = {}
        self._refresher: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Load the server's policy (raises if it cannot: do not serve without
        it) and start refreshing it."""
        await self.refresh_policy()
        if self.policy_refresh > 0 and self._refresher is None:
            self._refresher = asyncio.create_task(
                self._refresh_loop(), name=f"jitgate-policy-refresh-{self.gateway}"
            )

    async def close(self) -> None:
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._auth.clear()
        await self._http.aclose()

    # --- the policy -------------------------------------------------------------------

    async def refresh_policy(self) -> bool:
        """Fetch the policy; swap the evaluator if it changed (True then)."""
        data = await self._json("GET", f"{API}/policy")
        try:
            digest, source, text = str(data["sha256"]), str(data["source"]), data["text"]
        except (KeyError, TypeError):
            raise ApprovalUnavailable("the server's policy answer is malformed") from None
        if digest == self.policy_sha256:
            return False
        if not isinstance(text, str) or (
            hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() != digest
        ):
            raise ApprovalUnavailable("the server's policy does not match its SHA-256")
        try:
            policy = await asyncio.to_thread(load_policy_text, text, f"{self.url} ({source})")
        except PolicyError as error:
            raise ApprovalUnavailable(f"the server's policy does not load here: {error}") from None
        self.evaluator = Evaluator(policy)
        self.policy_sha256, self.policy_source = digest, source
        log.info("gateway %s: policy %s (%s) in force", self.gateway, digest[:12], source)
        return True

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy_refresh)
            try:
                await self.refresh_policy()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.policy_errors += 1
                log.warning(
                    "gateway %s: refreshing the policy failed (%s); keeping %s",
                    self.gateway,
                    error,
                    (self.policy_sha256 or "none")[:12],
                )

    # --- who --------------------------------------------------------------------------

    async def authenticate(self, user: str, secret: str, client: str) -> GatewayUser | None:
        if not _usable_token(secret):
            return None
        key = hashlib.sha256(secret.encode("ascii")).hexdigest()
        now = self._clock()
        cached = self._auth.get(key)
        if cached is not None and cached[1] > now:
            return cached[0] if cached[0].name == user else None
        headers = {"Authorization": f"Bearer {secret}", **_forwarded_for(client)}
        response = await self._send("GET", f"{API}/me", headers=headers, as_gateway=False)
        if response.status_code == 401:
            self._auth.pop(key, None)
            return None
        data = self._decode(response)
        name, groups = data.get("user"), data.get("groups")
        if not isinstance(name, str) or not isinstance(groups, list):
            raise ApprovalUnavailable("the server's answer about a token is malformed")
        found = GatewayUser(name, frozenset(str(g) for g in groups))
        self._remember(key, found, now + self.auth_cache_ttl)
        return found if found.name == user else None

    def _remember(self, key: str, found: GatewayUser, until: float) -> None:
        if len(self._auth) >= MAX_CACHED_AUTH and key not in self._auth:
            now = self._clock()
            for old, (_, expires) in list(self._auth.items()):
                if expires <= now:
                    del self._auth[old]
            if len(self._auth) >= MAX_CACHED_AUTH:
                del self._auth[next(iter(self._auth))]
        self._auth[key] = (found, until)

    # --- the use cases ----------------------------------------------------------------

    async def submit(self, user: GatewayUser, action: Mapping[str, Any]) -> Submitted:
        body = {**action, "user": user.name}
        data = await self._json("POST", f"{API}/requests", body)
        decision = data.get("decision")
        if not isinstance(decision, Mapping):
            raise ApprovalUnavailable("the server's answer to a submission is malformed")
        return Submitted(decision=decision, request=data.get("request"), grant=data.get("grant"))

    async def watch(self, user: GatewayUser, request_id: str) -> AsyncIterator[Mapping[str, Any]]:
        path = f"{API}/requests/{_path_id(request_id)}/events"
        timeout = httpx.Timeout(self.timeout, read=self.stream_timeout)
        early_ends = 0
        last: dict[str, Any] | None = None
        while True:
            try:
                async with aconnect_sse(self._http, "GET", path, timeout=timeout) as source:
                    response = source.response
                    if response.status_code >= 400:
                        await response.aread()
                        self._check(response, as_gateway=True)
                    async for event in source.aiter_sse():
                        if event.event != "state":
                            continue
                        view = json.loads(event.data)
                        if not isinstance(view, dict):
                            raise ApprovalUnavailable("the event stream sent a malformed view")
                        if view != last:  # a reconnection starts with the current view
                            last = view
                            early_ends = 0
                            yield view
                        if view.get("status") in FINAL_STATUSES:
                            return
            except (httpx.TransportError, SSEError, ValueError) as error:
                raise ApprovalUnavailable(
                    f"lost the event stream of {request_id} ({type(error).__name__}: {error})"
                ) from None
            # The stream ended before a final state (the server is restarting).
            early_ends += 1
            if early_ends > MAX_RECONNECTS:
                raise ApprovalUnavailable(f"the event stream of {request_id} keeps ending")
            await asyncio.sleep(min(2.0, 0.1 * 2**early_ends))

    async def cancel(self, user: GatewayUser, request_id: str) -> None:
        await self._json("POST", f"{API}/requests/{_path_id(request_id)}/cancel", {})

    async def authorize(
        self, user: GatewayUser, request_id: str, fingerprint: str
    ) -> Mapping[str, Any]:
        path = f"{API}/requests/{_path_id(request_id)}/authorize"
        return await self._json("POST", path, {"fingerprint": fingerprint})

    async def report_outcome(
        self,
        user: GatewayUser,
        request_id: str,
        *,
        rows_affected: int | None = None,
        error: str | None = None,
        duration_ms: int | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "rows_affected": rows_affected,
            "error": error,
            "duration_ms": duration_ms,
        }
        if rows_affected is None and not (error and error.strip()):
            # A statement that succeeded without a row count (SET, a DDL...) still ran.
            body["exit_code"] = 0
        await self._json("POST", f"{API}/requests/{_path_id(request_id)}/outcome", body)

    async def record_statements(self, records: Sequence[StatementRecord]) -> None:
        """``POST /api/v1/audit/statements``, as few times as the size limits
        allow (each call one transaction). If a later call fails after earlier
        ones succeeded, :class:`PartiallyRecorded` says how many were written."""
        written = 0
        for chunk in self._chunks(records):
            # Each record is encoded once, to measure it; the body is those bytes.
            body = b'{"records":[' + b",".join(chunk) + b"]}"
            try:
                self._decode(await self._send("POST", f"{API}/audit/statements", raw=body))
            except Exception as error:
                if written == 0:
                    raise
                raise PartiallyRecorded(written, error) from error
            written += len(chunk)

    def _chunks(self, records: Sequence[StatementRecord]) -> list[list[bytes]]:
        """The records' JSON forms, grouped into request bodies within the limits."""
        budget = self.max_request_bytes - 64  # {"records":[...]} and separators
        chunks: list[list[bytes]] = []
        chunk: list[bytes] = []
        size = 0
        for record in records:
            data = self._fitted(record, budget)
            length = len(data)
            if chunk and (size + length + 1 > budget or len(chunk) >= MAX_RECORDS):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(data)
            size += length + 1
        if chunk:
            chunks.append(chunk)
        return chunks

    @staticmethod
    def _fitted(record: StatementRecord, budget: int) -> bytes:
        """The record's JSON form within ``budget`` bytes (its text cut if need be)."""
        fitted = fit_record(record, MAX_TEXT_BYTES, MAX_REST_BYTES)
        data = json_bytes(record_dict(fitted))
        limit = len(fitted.text.encode("utf-8", "surrogatepass"))
        for _ in range(8):
            if len(data) <= budget:
                break
            limit = max(0, limit - (len(data) - budget) - 256)
            data = json_bytes(record_dict(fit_text(record, limit)))
        return data

    # --- plumbing ---------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        as_gateway: bool = True,
        raw: bytes | None = None,
    ) -> httpx.Response:
        """The server's answer (a 2xx, or a 401 to a user's token); else raises.
        ``raw``: a body already encoded as JSON, instead of ``body``."""
        all_headers = dict(headers or {})
        content = raw
        if body is not None:
            content = json_bytes(body)
        if content is not None:
            all_headers["Content-Type"] = "application/json"
        try:
            response = await self._http.request(method, path, content=content, headers=all_headers)
        except httpx.HTTPError as error:
            raise ApprovalUnavailable(
                f"cannot reach jitgate at {self.url} ({type(error).__name__}: {error})"
            ) from None
        if response.status_code == 401 and not as_gateway:
            return response
        self._check(response, as_gateway=as_gateway)
        return response

    def _check(self, response: httpx.Response, *, as_gateway: bool) -> None:
        status = response.status_code
        if status < 400:
            return
        code, message = _error_of(response)
        if status >= 500 or (status == 401 and as_gateway):
            what = "refused the gateway's token" if status == 401 else "failed"
            raise ApprovalUnavailable(f"jitgate at {self.url} {what}: {message} ({code})")
        raise GatewayRefused(code, message)

    @staticmethod
    def _decode(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise ApprovalUnavailable("the server did not answer with JSON") from None
        if not isinstance(data, dict):
            raise ApprovalUnavailable("the server answered with unexpected JSON")
        return data

    async def _json(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        return self._decode(await self._send(method, path, body))


if TYPE_CHECKING:

    def _is_a_port(adapter: RemoteApprovals) -> ApprovalPort:
        return adapter  # mypy checks that the adapter implements the port
