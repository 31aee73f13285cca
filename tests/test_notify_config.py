"""The notification config file: validation, clear errors, secrets kept secret,
and ``jitgate serve --notify`` refusing a bad file before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from jitgate.cli import app
from jitgate.notify import (
    NotifyConfigError,
    SlackSink,
    WebhookSink,
    load_notify_config,
    parse_notify_config,
)
from jitgate.notify.config import sink_name

SECRET = "0123456789abcdef-very-secret"
SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXXtokenXXXX"

GOOD = f"""
version: 1
queue_size: 50
max_attempts: 3
timeout: 2.5
sinks:
  - type: webhook
    name: audit-bus
    url: https://hooks.example.com/jitgate
    secret: {SECRET}
    events: [stage.started, "request.*"]
  - type: webhook
    url: https://other.example.com/in
    secret_env: HOOK_SECRET
  - type: slack
    url_env: SLACK_URL
    base_url: https://jitgate.example.com/
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "notify.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_good_file(tmp_path: Path) -> None:
    config = load_notify_config(
        write(tmp_path, GOOD), environ={"HOOK_SECRET": "x" * 20, "SLACK_URL": SLACK_URL}
    )
    assert (config.queue_size, config.max_attempts, config.timeout) == (50, 3, 2.5)
    hook, other, slack = config.sinks
    assert isinstance(hook, WebhookSink)
    assert isinstance(other, WebhookSink)
    assert isinstance(slack, SlackSink)
    assert [sink_name(s, i) for i, s in enumerate(config.sinks)] == [
        "audit-bus",
        "webhook-2",
        "slack-3",
    ]
    assert hook.wants("stage.started")
    assert hook.wants("request.denied")
    assert not hook.wants("stage.escalated")
    assert other.wants("grant.issued")  # no filter: everything
    assert slack.wants("stage.escalated")
    assert not slack.wants("approval.given")
    assert slack.base_url == "https://jitgate.example.com"
    assert SECRET not in repr(config)
    assert SECRET not in str(config.model_dump())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sinks: []", "notify.yaml:1: sinks: list at least one sink"),
        (
            "sinks:\n  - type: webhook\n    url: https://x.example\n    secret: "
            f"{SECRET}\n    colour: red",
            "notify.yaml:5: sinks[0]: unknown field 'colour'",
        ),
        (
            "sinks:\n  - type: email\n    url: https://x.example",
            "type must be 'webhook' or 'slack'",
        ),
        (
            "sinks:\n  - type: webhook\n    url: https://x.example",
            "notify.yaml:2: sinks[0]: give exactly one of secret and secret_env",
        ),
        (
            f"sinks:\n  - type: webhook\n    url: https://x.example\n    secret: {SECRET}\n"
            "    secret_env: X",
            "give exactly one of secret and secret_env",
        ),
        (
            "sinks:\n  - type: webhook\n    url: https://x.example\n    secret: short",
            "at least 16 characters",
        ),
        (
            f"sinks:\n  - type: webhook\n    url: ftp://x.example\n    secret: {SECRET}",
            "notify.yaml:3: sinks[0].url: url must be an http:// or https:// URL",
        ),
        (
            f"sinks:\n  - type: webhook\n    url: https://x.example\n    secret: {SECRET}\n"
            "    events: [stage.begun]",
            "notify.yaml:5: sinks[0].events: 'stage.begun' matches no event type",
        ),
        (
            "sinks:\n  - type: slack\n    url: https://x.example\n    secret: 0123456789abcdefgh",
            "unknown field 'secret'",
        ),
        ("sinks:\n  - type: slack", "give exactly one of url and url_env"),
        (
            "sinks:\n  - type: slack\n    url: https://x.example\n    base_url: 'https://a|b'",
            "base_url must not contain",
        ),
        (
            "sinks:\n  - {type: slack, url: 'https://a.example', name: a}\n"
            "  - {type: slack, url: 'https://b.example', name: a}",
            "two sinks are named 'a'",
        ),
        ("sinks:\n  - type: slack\n    url_env: NOT_SET_ANYWHERE", "NOT_SET_ANYWHERE is not set"),
        ("", "notify.yaml:1: the notification config is empty"),
        ("- a\n- b", "must be a mapping with 'sinks', not a list"),
        ("sinks: [\n", "notify.yaml:2: YAML syntax error"),
        ("sinks: []\nsinks: []", "duplicate key 'sinks'"),
        ("version: 2\nsinks: [{type: slack, url: 'https://a.example'}]", "version: Input should"),
    ],
)
def test_bad_files_say_where_and_what(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(NotifyConfigError) as caught:
        load_notify_config(write(tmp_path, text), environ={})
    message = str(caught.value)
    assert str(tmp_path / "notify.yaml") in message
    assert expected.replace("notify.yaml", str(tmp_path / "notify.yaml")) in message, message
    assert SECRET not in message


def test_errors_never_echo_secrets(tmp_path: Path) -> None:
    text = f"sinks:\n  - type: slack\n    url: '{SLACK_URL} oops'\n    secret: {SECRET}\n"
    with pytest.raises(NotifyConfigError) as caught:
        load_notify_config(write(tmp_path, text), environ={})
    assert "XXXXtoken" not in str(caught.value)
    assert SECRET not in str(caught.value)
    env = {"SLACK_URL": "not a url XXXXtoken", "HOOK_SECRET": "tiny"}
    with pytest.raises(NotifyConfigError) as caught:
        load_notify_config(write(tmp_path, GOOD), environ=env)
    message = str(caught.value)
    assert "XXXXtoken" not in message
    assert "tiny" not in message
    assert "SLACK_URL" in message
    assert "HOOK_SECRET" in message


def test_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(NotifyConfigError, match="cannot read the notification config"):
        load_notify_config(tmp_path / "missing.yaml")


def test_parse_accepts_plain_data() -> None:
    config = parse_notify_config({"sinks": [{"type": "slack", "url": SLACK_URL}]}, environ={})
    assert config.sinks[0].type == "slack"


runner = CliRunner()


def test_serve_refuses_a_bad_notify_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JITGATE_DATA_DIR", str(tmp_path / "data"))
    bad = write(tmp_path, "sinks:\n  - type: webhook\n    url: https://x.example\n")
    result = runner.invoke(app, ["serve", "--notify", str(bad), "--port", "0"])
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr
    assert str(bad) in result.stderr
    assert "give exactly one of secret and secret_env" in result.stderr
    assert not (tmp_path / "data" / "jitgate.db").exists()  # nothing started

    monkeypatch.setenv("JITGATE_NOTIFY", str(tmp_path / "nope.yaml"))
    result = runner.invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 2, result.output
    assert "cannot read the notification config" in result.stderr
