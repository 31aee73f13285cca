"""The notification configuration: a YAML file of sinks (``jitgate serve --notify``).

::

    version: 1                       # optional
    queue_size: 1000                 # optional: per sink, oldest dropped when full
    max_attempts: 5                  # optional: per delivery, first try included
    timeout: 10                      # optional: seconds per HTTP attempt
    sinks:
      - type: webhook
        name: audit-bus              # optional: in logs and metrics (default webhook-1)
        url: https://hooks.example.com/jitgate
        secret_env: JITGATE_WEBHOOK_SECRET   # or secret: "..." (not both)
        events: [stage.started, stage.escalated, "request.*"]   # optional filter
      - type: slack
        url_env: JITGATE_SLACK_URL   # or url: (the Slack URL is itself a secret)
        base_url: https://jitgate.example.com   # optional: link to the request

Every model is closed (an unknown key is an error). A file that cannot be used
raises :class:`NotifyConfigError` naming the file, the line and the field; the
message never contains a secret (the values of ``secret``, ``url`` and the
environment variables are not echoed). Secrets are held as
:class:`pydantic.SecretStr` so a ``repr`` of the configuration shows none.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from jitgate.policy.errors import PolicyError
from jitgate.policy.source import SourceMap, describe_type, parse_yaml
from jitgate.service.codec import EVENT_NAMES

#: Every event type a sink can receive (``request.created``, ``stage.started`` ...).
EVENT_TYPES: frozenset[str] = frozenset(EVENT_NAMES.values())

#: What a Slack sink shows unless its ``events`` say otherwise (``execution.finished``
#: only when the execution failed, unless listed explicitly).
SLACK_DEFAULT_EVENTS: tuple[str, ...] = (
    "request.created",
    "stage.started",
    "stage.escalated",
    "request.approved",
    "request.denied",
    "request.expired",
    "request.cancelled",
    "break_glass.used",
    "execution.finished",
)


class NotifyConfigError(ValueError):
    """A notification configuration that cannot be used (one line per problem)."""


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _check_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an http:// or https:// URL")
    if any(c.isspace() or c in "<>|" for c in value):
        raise ValueError(f"{what} must not contain spaces, '<', '>' or '|'")
    return value


_NAME = r"^[A-Za-z0-9_.-]+$"


class _SinkBase(_Closed):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=_NAME)] | None = None
    url: SecretStr | None = None
    #: The environment variable holding the URL (instead of ``url``).
    url_env: Annotated[str, Field(min_length=1)] | None = None
    events: tuple[str, ...] | None = None

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if events is None:
            return None
        if not events:
            raise ValueError("list at least one event type, or leave events out")
        for pattern in events:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in EVENT_TYPES):
                known = ", ".join(sorted(EVENT_TYPES))
                raise ValueError(f"{pattern!r} matches no event type (known: {known})")
        return events

    @field_validator("url")
    @classmethod
    def _url_shape(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            _check_url(url.get_secret_value(), "url")
        return url

    @model_validator(mode="after")
    def _one_url(self) -> _SinkBase:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env")
        return self

    def wants(self, event_type: str) -> bool:
        """Whether this sink's ``events`` filter lets ``event_type`` through."""
        patterns = self.events if self.events is not None else self.default_events()
        return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)

    def lists(self, event_type: str) -> bool:
        """Whether ``events`` names ``event_type`` explicitly (no glob)."""
        return self.events is not None and event_type in self.events

    def default_events(self) -> tuple[str, ...]:
        return ("*",)


class WebhookSink(_SinkBase):
    """A generic HTTPS endpoint: JSON bodies signed with HMAC-SHA256."""

    type: Literal["webhook"]
    secret: SecretStr | None = None
    #: The environment variable holding the secret (instead of ``secret``).
    secret_env: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookSink:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError(
                "give exactly one of secret and secret_env (webhooks are always signed)"
            )
        if self.secret is not None and len(self.secret.get_secret_value()) < 16:
            raise ValueError("the secret must be at least 16 characters long")
        return self


class SlackSink(_SinkBase):
    """A Slack incoming webhook: Block Kit messages for people."""

    type: Literal["slack"]
    #: The public URL of the jitgate server, for a link to the request.
    base_url: Annotated[str, Field(max_length=500)] | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url_shape(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, "base_url").rstrip("/")

    def default_events(self) -> tuple[str, ...]:
        return SLACK_DEFAULT_EVENTS


Sink = Annotated[WebhookSink | SlackSink, Field(discriminator="type")]


class NotifyConfig(_Closed):
    version: Literal[1] = 1
    sinks: Annotated[list[Sink], Field(min_length=1)]
    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    timeout: Annotated[float, Field(gt=0, le=300)] = 10.0

    @model_validator(mode="after")
    def _unique_names(self) -> NotifyConfig:
        names = [s.name for s in self.sinks if s.name is not None]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two sinks are named {name!r}")
        return self


def sink_name(sink: WebhookSink | SlackSink, index: int) -> str:
    """The sink's name in logs and metrics: its ``name``, else ``<type>-<n>`` (1-based)."""
    return sink.name or f"{sink.type}-{index + 1}"


def resolve_url(sink: WebhookSink | SlackSink, environ: Mapping[str, str]) -> str:
    if sink.url is not None:
        return sink.url.get_secret_value()
    assert sink.url_env is not None
    return environ.get(sink.url_env, "")


def resolve_secret(sink: WebhookSink, environ: Mapping[str, str]) -> bytes:
    if sink.secret is not None:
        return sink.secret.get_secret_value().encode("utf-8")
    assert sink.secret_env is not None
    return environ.get(sink.secret_env, "").encode("utf-8")


def _where(
    source: str,
    lines: SourceMap | None,
    loc: tuple[str | int, ...],
    line_loc: tuple[str | int, ...] | None = None,
) -> str:
    line = lines.line_of(loc if line_loc is None else line_loc) if lines is not None else None
    where = source if line is None else f"{source}:{line}"
    field = ""
    for part in loc:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return f"{where}: {field}" if field else where


def _clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    # The discriminated union adds the tag ("sinks", 0, "webhook", "url").
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if part in ("webhook", "slack") and i > 0 and isinstance(loc[i - 1], int):
            continue
        out.append(part)
    return tuple(out)


def parse_notify_config(
    data: Any,
    source: str = "<notify>",
    *,
    environ: Mapping[str, str] | None = None,
    lines: SourceMap | None = None,
) -> NotifyConfig:
    """Validate ``data`` (the parsed YAML) and check that every ``*_env`` variable
    is set in ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ
    if not isinstance(data, dict):
        raise NotifyConfigError(
            f"{source}: the notification config must be a mapping with 'sinks', "
            f"not {describe_type(data)}"
        )
    try:
        config = NotifyConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            loc = line_loc = _clean_loc(tuple(error["loc"]))
            if error["type"] == "extra_forbidden":
                message = f"unknown field {loc[-1]!r}"
                loc = loc[:-1] if loc else loc
            elif error["type"] == "too_short":
                message = "list at least one sink" if loc == ("sinks",) else "list at least one"
            elif error["type"] == "missing":
                message = "required field is missing"
            elif error["type"] == "union_tag_invalid" or error["type"] == "union_tag_not_found":
                message = "type must be 'webhook' or 'slack'"
            else:
                message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{_where(source, lines, loc, line_loc)}: {message}")
        raise NotifyConfigError("\n".join(problems)) from None
    problems = []
    for index, sink in enumerate(config.sinks):
        for field, variable in (
            ("url_env", sink.url_env),
            ("secret_env", getattr(sink, "secret_env", None)),
        ):
            if variable is None:
                continue
            value = env.get(variable)
            where = _where(source, lines, ("sinks", index, field))
            if not value:
                problems.append(f"{where}: the environment variable {variable} is not set")
            elif field == "url_env":
                try:
                    _check_url(value, f"the URL in {variable}")
                except ValueError as err:
                    problems.append(f"{where}: {err}")
            elif len(value) < 16:
                problems.append(f"{where}: the secret in {variable} must be at least 16 characters")
    if problems:
        raise NotifyConfigError("\n".join(problems))
    return config


def load_notify_config(
    path: str | PathLike[str], *, environ: Mapping[str, str] | None = None
) -> NotifyConfig:
    """The configuration in the YAML file at ``path``; :class:`NotifyConfigError`
    (naming the file) if it cannot be read or used."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        message = f"{source}: cannot read the notification config: {reason}"
        raise NotifyConfigError(message) from None
    try:
        data, lines = parse_yaml(text, source)
    except PolicyError as exc:
        raise NotifyConfigError(str(exc)) from None
    if data is None:
        raise NotifyConfigError(f"{source}:1: the notification config is empty (expected 'sinks')")
    return parse_notify_config(data, source, environ=environ, lines=lines)
