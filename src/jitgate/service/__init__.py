"""The approval service: the use cases of issue 3, between the pure core
(actions, policy, approvals) and the entrypoints (HTTP server, CLI, gateways).

It owns transactions (a state change and its audit events commit together),
optimistic concurrency (two racing approvals: one transition), MFA checks
against the store, the wake-up of waiters, and the timer that expires and
escalates requests.
"""

from jitgate.service.approvals import ApprovalService, Evaluation, Submission
from jitgate.service.errors import ServiceError
from jitgate.service.metrics import ChangeHook, ServiceStats
from jitgate.service.principal import Principal
from jitgate.service.views import FINAL_STATUSES, request_view

__all__ = [
    "FINAL_STATUSES",
    "ApprovalService",
    "ChangeHook",
    "Evaluation",
    "Principal",
    "ServiceError",
    "ServiceStats",
    "Submission",
    "request_view",
]
