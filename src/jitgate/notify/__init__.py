"""Notifications: approval events to generic webhooks and Slack (docs/notifications.md).

:class:`Notifier` subscribes to ``ApprovalService.on_change`` (topic
``"events"``) and delivers in the background; :func:`load_notify_config`
reads the YAML file of ``jitgate serve --notify``.
"""

from jitgate.notify.config import (
    EVENT_TYPES,
    SLACK_DEFAULT_EVENTS,
    NotifyConfig,
    NotifyConfigError,
    SlackSink,
    WebhookSink,
    load_notify_config,
    parse_notify_config,
)
from jitgate.notify.notifier import Notifier
from jitgate.notify.slack import escape, slack_message
from jitgate.notify.webhook import sign, verify_signature, webhook_body

__all__ = [
    "EVENT_TYPES",
    "SLACK_DEFAULT_EVENTS",
    "Notifier",
    "NotifyConfig",
    "NotifyConfigError",
    "SlackSink",
    "WebhookSink",
    "escape",
    "load_notify_config",
    "parse_notify_config",
    "sign",
    "slack_message",
    "verify_signature",
    "webhook_body",
]
