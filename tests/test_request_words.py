"""Requests in words for people: the bound parameters an approver reads
(jitgate.request_words.bound_parameters), in the CLI and in Slack."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from jitgate.cli.requests import _print_view
from jitgate.notify import slack_message
from jitgate.notify.slack import mrkdwn_texts
from jitgate.request_words import bound_parameters
from test_notify_slack import unsafe_spots
from test_notify_webhook import view

_LINE = re.compile(r"\$(\d+) = (NULL|'((?:[^']|'')*)')")


def read_back(lines: list[str]) -> list[str | None]:
    """The values the lines show, parsed as SQL literals."""
    values: list[str | None] = []
    for number, line in enumerate(lines, start=1):
        match = _LINE.fullmatch(line)
        assert match is not None, line
        assert int(match.group(1)) == number
        literal = match.group(3)
        values.append(None if literal is None else literal.replace("''", "'"))
    return values


def sql(attributes: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "sql", "text": "DELETE FROM t WHERE id = $1", "attributes": attributes}


def test_the_values_the_gateway_decoded_are_shown_rather_than_the_hex() -> None:
    action = sql({"parameters": ["\\x0000002a", "v"], "parameter_values": ["42", "v"]})
    assert bound_parameters(action) == ["$1 = '42'", "$2 = 'v'"]
    assert bound_parameters(sql({"parameters": ["7", None]})) == ["$1 = '7'", "$2 = NULL"]
    assert bound_parameters(sql({"parameters": ["NULL", "it's"]})) == [
        "$1 = 'NULL'",
        "$2 = 'it''s'",
    ]


def test_no_parameters_no_lines() -> None:
    assert bound_parameters(sql({})) == []
    assert bound_parameters({"kind": "shell", "text": "ls"}) == []
    assert bound_parameters(sql({"parameters": "1"})) == []  # not a list: nothing made up
    assert bound_parameters({"attributes": "x"}) == []


@given(st.lists(st.none() | st.text()))
def test_what_is_shown_reads_back_as_exactly_the_values(values: list[str | None]) -> None:
    assert read_back(bound_parameters(sql({"parameters": values}))) == values


def test_the_cli_shows_the_parameters_under_the_statement(capsys: Any) -> None:
    request = view(action={**view()["action"], **sql({"parameter_values": ["{1,NULL,3}"]})})
    _print_view(request, as_json=False)
    out = capsys.readouterr().out
    assert "DELETE FROM t WHERE id = $1" in out
    assert "$1 = '{1,NULL,3}'" in out


def test_slack_shows_the_parameters_in_a_code_block() -> None:
    hostile = "```<@U123> <!channel> <https://evil.example|click>"
    request = view(action={**view()["action"], **sql({"parameters": ["42", hostile]})})
    message = slack_message(
        {"type": "stage.started", "actor": "ann", "at": "2031-03-04T10:00:00+00:00",
         "payload": {"stage": "approvers", "stage_index": 0, "notify_groups": ["dba"]}},
        request,
    )  # fmt: skip
    flat = "\n".join(mrkdwn_texts(message))
    assert "Bound parameters:\n```$1 = '42'\n$2 = '" in flat
    parameters = flat[flat.index("Bound parameters:") :]
    assert unsafe_spots(parameters, []) == []
    assert "<@U123>" not in flat
    assert "<!channel>" not in flat
