"""What a gateway needs from the approval service, in one interface.

A gateway decides ordinary traffic locally (its :attr:`ApprovalPort.evaluator`
holds the same policy as the server) and only talks to the service for what
the policy holds or denies, and to record what ran. Two adapters implement
the port: :class:`~jitgate.gateways.inprocess.InProcessApprovals` (the gateway
runs inside ``jitgate serve``) and :class:`~jitgate.gateways.remote.RemoteApprovals`
(a standalone gateway, over the REST API and its event stream).

Every method fails closed: when the service cannot be reached, it raises
:class:`ApprovalUnavailable` and the gateway refuses the statement.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from jitgate.evaluator import Evaluator


class ApprovalUnavailable(Exception):
    """The approval service could not be asked (down, refused, timed out)."""


class GatewayRefused(Exception):
    """The approval service refused the call (a 4xx: e.g. no eligible approvers)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class GatewayUser:
    """A jitgate user connected through a gateway."""

    name: str
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Submitted:
    """The service's answer to a submitted action.

    ``decision`` is the decision's JSON form (``Decision.to_dict()``);
    ``request`` the held request's view (docs/api.md) when approval is
    required; ``grant`` the RULE grant that let a REQUIRE_APPROVAL through.
    """

    decision: Mapping[str, Any]
    request: Mapping[str, Any] | None = None
    grant: Mapping[str, Any] | None = None

    @property
    def outcome(self) -> str:
        """``allow``, ``require_approval`` or ``deny``."""
        return str(self.decision.get("decision"))


@dataclass(slots=True)
class StatementRecord:
    """One statement that went through a gateway, for the audit trail."""

    user: str
    target: str
    environment: str
    text: str
    #: ``allow``, ``require_approval`` (released after approval) or ``deny``.
    decision: str
    #: Wall time from forwarding to the statement's last response, in ms.
    duration_ms: float = 0.0
    #: Command tag(s) (``DELETE 3``), ``None`` when there was none.
    tag: str | None = None
    #: Rows affected/returned as the command tag says, when it says.
    rows: int | None = None
    #: The error's SQLSTATE and message, when the statement failed.
    error: str | None = None
    request_id: str | None = None
    #: Bound parameter values (text form; binary values as ``\\x`` hex).
    parameters: Sequence[str | None] | None = None
    session: str = ""
    client: str = ""
    gateway: str = ""
    at: str = ""
    #: Anything else (e.g. ``parameter_values``: binary parameters as approvers saw them).
    extra: Mapping[str, Any] = field(default_factory=dict)


class ApprovalPort(Protocol):
    """The approval service as a gateway sees it."""

    #: Local policy evaluation for the fast path (same policy as the service).
    evaluator: Evaluator

    async def authenticate(self, user: str, secret: str, client: str) -> GatewayUser | None:
        """The user if ``secret`` is a valid jitgate API token of ``user``, else None."""
        ...

    async def submit(self, user: GatewayUser, action: Mapping[str, Any]) -> Submitted:
        """Submit an action body (``kind``, ``text``, ``target``, ``env``,
        ``attributes``) attempted by ``user``."""
        ...

    def watch(self, user: GatewayUser, request_id: str) -> AsyncIterator[Mapping[str, Any]]:
        """The request's view now and after every change, ending at a final status."""
        ...

    async def cancel(self, user: GatewayUser, request_id: str) -> None: ...

    async def authorize(
        self, user: GatewayUser, request_id: str, fingerprint: str
    ) -> Mapping[str, Any]:
        """Consume the single-use grant: only then may the statement run."""
        ...

    async def report_outcome(
        self,
        user: GatewayUser,
        request_id: str,
        *,
        rows_affected: int | None = None,
        error: str | None = None,
        duration_ms: int | None = None,
    ) -> None: ...

    async def record_statements(self, records: Sequence[StatementRecord]) -> None:
        """Append the records to the audit trail (one transaction)."""
        ...

    async def close(self) -> None: ...
