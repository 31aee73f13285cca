"""Gateways: adapters that sit in the path of an action and enforce decisions.

Each gateway classifies what passes through it with the local
:class:`~jitgate.evaluator.Evaluator` and talks to the approval service
through an :class:`~jitgate.gateways.port.ApprovalPort`, in process or over
the REST API.
"""

from jitgate.gateways.port import (
    ApprovalPort,
    ApprovalUnavailable,
    GatewayRefused,
    GatewayUser,
    StatementRecord,
    Submitted,
)

__all__ = [
    "ApprovalPort",
    "ApprovalUnavailable",
    "GatewayRefused",
    "GatewayUser",
    "StatementRecord",
    "Submitted",
]
