"""The Python SDK: a small client for the jitgate REST API (docs/api.md).

    from jitgate.client import Client

    with Client("http://127.0.0.1:8470", token) as jg:
        submission = jg.submit({"kind": "sql", "text": "DELETE FROM t", "env": "prod"})
        if submission["request"]:
            final = jg.wait(submission["request"]["id"], timeout=600)

Waiting uses the server's event stream, so an approval wakes the waiter at
once. Every refusal raises :class:`ApiError` with the server's stable code; a
server that cannot be reached raises :class:`ServerUnreachable`.
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

#: Statuses after which a request never changes again.
FINAL_STATUSES = frozenset({"executed", "failed", "denied", "expired", "cancelled"})
#: Statuses in which a waiter can stop waiting: the answer is known.
SETTLED_STATUSES = FINAL_STATUSES | {"approved", "executing"}

DEFAULT_URL = "http://127.0.0.1:8470"

View = dict[str, Any]


class ClientError(Exception):
    """Anything that went wrong talking to the server."""


class ServerUnreachable(ClientError):
    """No answer from the server: callers must fail closed."""


class ApiError(ClientError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class WaitTimedOut(ClientError):
    def __init__(self, view: View) -> None:
        super().__init__(f"request {view.get('id')} is still {view.get('status')}")
        self.view = view


class Client:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("JITGATE_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("JITGATE_TOKEN") or ""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the API -------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def evaluate(self, action: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/v1/evaluate", action)

    def submit(self, action: Mapping[str, Any]) -> dict[str, Any]:
        """``{"decision": {...}, "request": view or None, "grant": grant or None}``:
        ``require_approval`` with a ``grant`` and no request is allowed by that
        rule-scoped grant (nothing is held)."""
        return self._call("POST", "/api/v1/requests", action)

    def get(self, request_id: str) -> View:
        return self._call("GET", f"/api/v1/requests/{_id(request_id)}")

    def list(
        self,
        *,
        status: str | None = None,
        mine: bool = False,
        awaiting_me: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if mine:
            params["mine"] = "true"
        if awaiting_me:
            params["awaiting_me"] = "true"
        if cursor:
            params["cursor"] = cursor
        return self._call("GET", "/api/v1/requests", params=params)

    def approve(self, request_id: str, comment: str = "", otp: str | None = None) -> View:
        body: dict[str, Any] = {"comment": comment}
        if otp:
            body["otp"] = otp
        return self._call("POST", f"/api/v1/requests/{_id(request_id)}/approve", body)

    def deny(self, request_id: str, reason: str) -> View:
        return self._call("POST", f"/api/v1/requests/{_id(request_id)}/deny", {"reason": reason})

    def cancel(self, request_id: str) -> View:
        return self._call("POST", f"/api/v1/requests/{_id(request_id)}/cancel", {})

    def break_glass(self, request_id: str, justification: str) -> View:
        body = {"justification": justification}
        return self._call("POST", f"/api/v1/requests/{_id(request_id)}/break-glass", body)

    def authorize(self, request_id: str, fingerprint: str) -> View:
        body = {"fingerprint": fingerprint}
        return self._call("POST", f"/api/v1/requests/{_id(request_id)}/authorize", body)

    def report_outcome(
        self,
        request_id: str,
        *,
        exit_code: int | None = None,
        rows_affected: int | None = None,
        error: str | None = None,
        duration_ms: int | None = None,
        receipt_sha256: str | None = None,
    ) -> View:
        body = {
            "exit_code": exit_code,
            "rows_affected": rows_affected,
            "error": error,
            "duration_ms": duration_ms,
        }
        if receipt_sha256 is not None:
            body["receipt_sha256"] = receipt_sha256
        return self._call("POST", f"/api/v1/requests/{_id(request_id)}/outcome", body)

    def receipt(self, request_id: str) -> dict[str, Any]:
        """The signed approval receipt of an approved request (docs/receipts.md)."""
        return self._call("GET", f"/api/v1/requests/{_id(request_id)}/receipt")

    def public_key(self) -> dict[str, Any]:
        """``{"alg", "key_id", "pem"}``: the server's receipt signing key."""
        return self._call("GET", "/api/v1/audit/public-key")

    def me(self) -> dict[str, Any]:
        """``{"user", "groups", "roles"}``: who the token belongs to."""
        return self._call("GET", "/api/v1/me")

    def policy(self) -> dict[str, Any]:
        """``{"sha256", "source", "text"}``: the policy in force (service
        accounts, admins, auditors)."""
        return self._call("GET", "/api/v1/policy")

    def record_statements(self, records: builtins.list[Mapping[str, Any]]) -> int:
        """Record gateway statements (``statement.executed``, one transaction;
        service accounts and admins); how many were recorded."""
        answer = self._call("POST", "/api/v1/audit/statements", {"records": records})
        return int(answer.get("recorded", 0))

    def list_grants(
        self, *, active: bool = False, mine: bool = False, limit: int = 100
    ) -> builtins.list[dict[str, Any]]:
        """Grants visible to the caller, newest first (``active``: usable now)."""
        params: dict[str, Any] = {"limit": limit}
        if active:
            params["active"] = "true"
        if mine:
            params["mine"] = "true"
        grants = self._call("GET", "/api/v1/grants", params=params).get("grants")
        if not isinstance(grants, list):
            raise ClientError(f"{self.url} answered with unexpected JSON")
        return grants

    def revoke_grant(self, grant_id: str, reason: str) -> dict[str, Any]:
        """Revoke a grant (its requester or an admin); the grant as it now is."""
        return self._call(
            "POST", f"/api/v1/grants/{_id(grant_id)}/revoke", {"reason": reason}
        )

    def watch(self, request_id: str, *, timeout: float | None = None) -> Iterator[View]:
        """Every state of the request as the server pushes it, the current one first."""
        read_timeout = httpx.Timeout(10.0, read=timeout)
        try:
            with connect_sse(
                self._http, "GET", f"/api/v1/requests/{_id(request_id)}/events",
                timeout=read_timeout,
            ) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    _raise_for(source.response)
                for event in source.iter_sse():
                    if event.event == "state":
                        yield json.loads(event.data)
        except httpx.TimeoutException:
            return
        except (httpx.TransportError, SSEError) as error:
            raise ServerUnreachable(f"lost the event stream from {self.url}: {error}") from error

    def wait(self, request_id: str, *, timeout: float | None = None) -> View:
        """Block until the request is settled (approved or final); raises
        :class:`WaitTimedOut` with the last view after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: View | None = None
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            for view in self.watch(request_id, timeout=remaining):
                last = view
                if view.get("status") in SETTLED_STATUSES:
                    return view
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimedOut(last or self.get(request_id))

    # --- plumbing --------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            response = self._http.request(
                method, path, json=dict(body) if body is not None else None, params=params
            )
        except httpx.TransportError as error:
            raise ServerUnreachable(f"cannot reach jitgate at {self.url}: {error}") from error
        _raise_for(response)
        try:
            data = response.json()
        except ValueError:
            raise ClientError(f"{self.url} did not answer with JSON") from None
        if not isinstance(data, dict):
            raise ClientError(f"{self.url} answered with unexpected JSON")
        return data


def _id(request_id: str) -> str:
    # An id is embedded in a path: refuse anything that could change the route.
    if not request_id or any(c in request_id for c in "/?#%") or request_id in {".", ".."}:
        raise ClientError(f"not an id: {request_id!r}")
    return request_id


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    code, message = "http_error", response.reason_phrase
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass
    raise ApiError(response.status_code, code, message)
