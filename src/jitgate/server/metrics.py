"""Prometheus metrics, in a registry of the app's own (never the global one).

* ``jitgate_decisions_total{decision}``: policy decisions made through the API
  (evaluate and submit), by outcome: ``allow``, ``require_approval``, ``deny``;
* ``jitgate_requests_total{status}``: requests that reached a final status
  (``executed``, ``failed``, ``denied``, ``expired``, ``cancelled``);
* ``jitgate_time_to_decision_seconds``: from a request's creation to its
  approval or denial;
* ``jitgate_http_requests_total{method,route,status}``: every HTTP answer, by
  route template (``/api/v1/requests/{id}``, ``unmatched`` for unknown paths),
  so the label set stays bounded whatever clients send.

The numbers come from the service when it offers a change hook (a list
``service.on_change`` of callables taking ``(topic, data)``, called after each
commit; see :mod:`jitgate.service.metrics`): that also sees what no route
returns (expiry by the timer) and never counts a rolled-back change. Without
the hook, the routes report what they return (:meth:`Metrics.observe_decision`,
:meth:`Metrics.observe_view`); each transition is made by exactly one call, so
nothing is counted twice. Only one of the two sources is ever active
(:attr:`Metrics.hooked`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jitgate.server.auth import route_path

logger = logging.getLogger("jitgate.server")

#: The Content-Type of ``/metrics``.
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

FINAL_STATUSES = ("executed", "failed", "denied", "expired", "cancelled")
DECISION_STATUSES = frozenset({"approved", "denied"})
OUTCOMES = ("allow", "require_approval", "deny")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Approvals take seconds to hours.
TIME_TO_DECISION_BUCKETS = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
    86400.0, float("inf"),
)  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "jitgate_decisions",
            "Policy decisions made through the API (evaluate, submit), by outcome.",
            ["decision"],
            registry=self.registry,
        )
        self.requests = Counter(
            "jitgate_requests",
            "Approval requests that reached a final status, by status.",
            ["status"],
            registry=self.registry,
        )
        self.time_to_decision = Histogram(
            "jitgate_time_to_decision_seconds",
            "Seconds from a request's creation to its approval or denial.",
            buckets=TIME_TO_DECISION_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "jitgate_http_requests",
            "HTTP answers, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.decisions.labels(outcome)
        for status in FINAL_STATUSES:
            self.requests.labels(status)
        #: True when request transitions come from the service's change hook.
        self.hooked = False

    # --- sources ----------------------------------------------------------------------

    def attach(self, service: object) -> bool:
        """Subscribe to ``service.on_change`` if the service has one."""
        hooks = getattr(service, "on_change", None)
        if isinstance(hooks, list):
            hooks.append(self._on_change)
            self.hooked = True
        return self.hooked

    def _on_change(self, topic: str, data: Mapping[str, Any]) -> None:
        # Metrics must never break a state change: log and carry on.
        try:
            if topic == "decision":
                self._decision(str(data.get("decision")))
            elif topic == "status" and data.get("final"):
                self._final(str(data.get("status")))
            elif topic == "decided":
                self.time_to_decision.observe(max(float(data["seconds"]), 0.0))
        except Exception:
            logger.exception("metrics: cannot record a %s change", topic)

    def observe_decision(self, outcome: str) -> None:
        """A decision a route returned (ignored when hooked)."""
        if not self.hooked:
            self._decision(outcome)

    def observe_view(self, view: Mapping[str, Any] | None) -> None:
        """A view a route returned after changing it (ignored when hooked)."""
        if view is not None and not self.hooked:
            self._transition(view)

    def _transition(self, view: Mapping[str, Any]) -> None:
        status = view.get("status")
        if status in DECISION_STATUSES:
            seconds = _seconds_between(view.get("created_at"), view.get("updated_at"))
            if seconds is not None:
                self.time_to_decision.observe(max(seconds, 0.0))
        if status in FINAL_STATUSES:
            self._final(str(status))

    def _decision(self, outcome: str) -> None:
        self.decisions.labels(outcome if outcome in OUTCOMES else "other").inc()

    def _final(self, status: str) -> None:
        self.requests.labels(status if status in FINAL_STATUSES else "other").inc()

    # --- exposition ---------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _seconds_between(start: Any, end: Any) -> float | None:
    began = _parse_time(start)
    ended = _parse_time(end) or datetime.now(UTC)
    if began is None:
        return None
    return (ended - began).total_seconds()


class RouteTemplates:
    """Maps a request path to its route template (``/api/v1/requests/{id}``).

    Built from the path templates of the app's OpenAPI document (every route
    is in it) plus a few extra ones, compiled once on first use: this does not
    depend on how the router nests included routers.
    """

    def __init__(self, paths: Callable[[], Iterable[str]]) -> None:
        self._paths = paths
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def _patterns(self) -> list[tuple[re.Pattern[str], str]]:
        if self._compiled is None:
            self._compiled = [(compile_path(path)[0], path) for path in self._paths()]
        return self._compiled

    def __call__(self, path: str) -> str:
        for pattern, template in self._patterns():
            if pattern.match(path):
                return template
        return "unmatched"


class HttpMetricsMiddleware:
    """Counts every answer by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, templates: RouteTemplates) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            if counted:
                return
            counted = True
            method = scope.get("method", "")
            self.metrics.http_requests.labels(
                method if method in METHODS else "other",
                self.templates(route_path(scope)),
                str(status),
            ).inc()

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                count(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            count(500)  # CatchAllMiddleware (outside this one) answers 500
            raise
