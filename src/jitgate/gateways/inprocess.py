"""The approval port in process: a gateway inside ``jitgate serve``.

Every call goes straight to the :class:`~jitgate.service.ApprovalService`,
as the connected user's own :class:`~jitgate.service.Principal` (the one
their token authenticated), so the service applies exactly the rules of the
REST API: the user is the requester, approves nothing of their own, sees
their requests. Statements are recorded as the gateway itself, an internal
service-account principal named ``gateway:<name>`` (the ``recorded_by`` of
each ``statement.executed`` event).

Errors: a :class:`~jitgate.service.ServiceError` (a refusal: 4xx) becomes
:class:`~jitgate.gateways.port.GatewayRefused` with the service's code and
message; a database that cannot be reached, or a server fault (5xx), becomes
:class:`~jitgate.gateways.port.ApprovalUnavailable` (fail closed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from jitgate.evaluator import Evaluator
from jitgate.gateways.port import (
    ApprovalPort,
    ApprovalUnavailable,
    GatewayRefused,
    GatewayUser,
    StatementRecord,
    Submitted,
)
from jitgate.gateways.records import PartiallyRecorded, fit_record
from jitgate.service import ApprovalService, Principal, ServiceError
from jitgate.service.statements import MAX_RECORDS, MAX_REST_BYTES, MAX_TEXT_BYTES
from jitgate.store import Identity, StoreError

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Seconds a principal from :meth:`InProcessApprovals.authenticate` is used
#: before it is read again from the store (roles, groups, disabled).
PRINCIPAL_TTL: Final = 30.0
#: Most principals kept.
MAX_PRINCIPALS: Final = 10_000
#: What a database that cannot be reached raises (through SQLAlchemy or not).
INFRASTRUCTURE_ERRORS: Final = (SQLAlchemyError, OSError, TimeoutError)


def _refused(error: ServiceError) -> Exception:
    if error.status >= 500:
        return ApprovalUnavailable(f"the approval service failed: {error.message}")
    return GatewayRefused(error.code, error.message)


async def _call(call: Awaitable[_T]) -> _T:
    """``call``'s result, its errors as the port's."""
    try:
        return await call
    except ServiceError as error:
        raise _refused(error) from None
    except StoreError as error:
        raise GatewayRefused(error.code, error.message) from None
    except INFRASTRUCTURE_ERRORS as error:
        raise ApprovalUnavailable(
            f"the approval store cannot be reached ({type(error).__name__})"
        ) from error


class InProcessApprovals:
    """:class:`~jitgate.gateways.port.ApprovalPort` over an ApprovalService."""

    def __init__(
        self,
        service: ApprovalService,
        *,
        gateway: str,
        principal_ttl: float = PRINCIPAL_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.gateway = gateway
        self.principal_ttl = principal_ttl
        self._clock = clock
        #: Who records statements: the gateway itself.
        self.recorder_principal = Principal(user=f"gateway:{gateway}", is_service_account=True)
        #: user name -> (principal, when it was read).
        self._principals: dict[str, tuple[Principal, float]] = {}

    # The service's evaluator, so a policy swapped on the service applies here too.
    @property
    def evaluator(self) -> Evaluator:
        return self.service.evaluator

    @evaluator.setter
    def evaluator(self, evaluator: Evaluator) -> None:
        self.service.evaluator = evaluator

    async def start(self) -> None:
        """Nothing to do (the service is started by the server)."""

    async def close(self) -> None:
        self._principals.clear()

    # --- who ------------------------------------------------------------------------

    async def authenticate(self, user: str, secret: str, client: str) -> GatewayUser | None:
        principal = await _call(self.service.authenticate(secret, client or None))
        if principal is None or principal.user != user:
            return None
        self._remember(principal)
        return GatewayUser(principal.user, principal.groups)

    def _remember(self, principal: Principal) -> None:
        if len(self._principals) >= MAX_PRINCIPALS and principal.user not in self._principals:
            now = self._clock()
            for name, (_, at) in list(self._principals.items()):
                if now - at >= self.principal_ttl:
                    del self._principals[name]
            if len(self._principals) >= MAX_PRINCIPALS:
                del self._principals[next(iter(self._principals))]
        self._principals[principal.user] = (principal, self._clock())

    async def principal(self, user: GatewayUser) -> Principal:
        """The service principal of ``user``: the one their token gave, re-read
        from the store once it is older than ``principal_ttl`` (a disabled
        user is then refused)."""
        cached = self._principals.get(user.name)
        if cached is not None and self._clock() - cached[1] < self.principal_ttl:
            return cached[0]

        async def load() -> Principal | None:
            async with self.service.db.transaction(readonly=True) as session:
                record = await Identity(session).get_user(user.name)
            if record is None or record.disabled:
                return None
            return Principal(
                user=record.name,
                groups=record.groups,
                is_admin=record.is_admin,
                is_auditor=record.is_auditor,
                is_service_account=record.is_service_account,
            )

        principal = await _call(load())
        if principal is None:
            self._principals.pop(user.name, None)
            raise GatewayRefused("unauthenticated", f"no active user {user.name!r}")
        self._remember(principal)
        return principal

    # --- the use cases --------------------------------------------------------------

    async def submit(self, user: GatewayUser, action: Mapping[str, Any]) -> Submitted:
        principal = await self.principal(user)
        submission = await _call(self.service.submit(principal, action))
        return Submitted(
            decision=submission.decision.to_dict(),
            request=submission.request,
            grant=submission.grant,
        )

    async def watch(self, user: GatewayUser, request_id: str) -> AsyncIterator[Mapping[str, Any]]:
        principal = await self.principal(user)
        views = self.service.watch(principal, request_id)
        try:
            while True:
                try:
                    view = await _call(anext(views))
                except StopAsyncIteration:
                    return
                yield view
        finally:
            close = getattr(views, "aclose", None)
            if close is not None:
                await close()

    async def cancel(self, user: GatewayUser, request_id: str) -> None:
        principal = await self.principal(user)
        await _call(self.service.cancel(principal, request_id))

    async def authorize(
        self, user: GatewayUser, request_id: str, fingerprint: str
    ) -> Mapping[str, Any]:
        principal = await self.principal(user)
        return await _call(self.service.authorize(principal, request_id, fingerprint))

    async def report_outcome(
        self,
        user: GatewayUser,
        request_id: str,
        *,
        rows_affected: int | None = None,
        error: str | None = None,
        duration_ms: int | None = None,
    ) -> None:
        principal = await self.principal(user)
        # A statement that succeeded without a row count (SET, a DDL...) still ran.
        exit_code = 0 if rows_affected is None and not (error and error.strip()) else None
        await _call(
            self.service.report_outcome(
                principal,
                request_id,
                exit_code=exit_code,
                rows_affected=rows_affected,
                error=error,
                duration_ms=duration_ms,
            )
        )

    async def record_statements(self, records: Sequence[StatementRecord]) -> None:
        """Append the records, at most :data:`MAX_RECORDS` per call (each call
        one transaction); oversized texts and parameters are cut (see
        :mod:`jitgate.gateways.records`)."""
        fitted = [fit_record(r, MAX_TEXT_BYTES, MAX_REST_BYTES) for r in records]
        for start in range(0, len(fitted), MAX_RECORDS):
            chunk = fitted[start : start + MAX_RECORDS]
            try:
                await _call(self.service.record_statements(self.recorder_principal, chunk))
            except Exception as error:
                if start == 0:
                    raise
                raise PartiallyRecorded(start, error) from error


if TYPE_CHECKING:

    def _is_a_port(adapter: InProcessApprovals) -> ApprovalPort:
        return adapter  # mypy checks that the adapter implements the port
