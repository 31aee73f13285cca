"""Policy tests as code (run_policy_tests) and policy lint (lint_policy)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jitgate.actions.findings import Analysis, Finding, Unit
from jitgate.actions.model import Action
from jitgate.policy import (
    CaseStatus,
    Decision,
    Policy,
    PolicyTestReport,
    default_policy,
    lint_policy,
    load_policy,
    load_policy_text,
    run_policy_tests,
)

POLICIES = Path(__file__).parent / "policies"
ACME = load_policy(POLICIES / "acme.yaml")

#: What a fake analyzer finds in each text: (code, type of the single unit).
CANNED: dict[str, tuple[str | None, str]] = {
    "SELECT 1": (None, "select"),
    "DELETE FROM invoices": ("sql.delete_without_where", "delete"),
    "GRANT ALL ON t TO bob": ("sql.privilege_change", "grant"),
}


def fake_evaluator(policy: Policy) -> Callable[[Action], Decision]:
    """The lead's evaluator analyses; here the findings are canned by text."""

    def evaluate(action: Action) -> Decision:
        code, unit_type = CANNED.get(action.text, (None, "other"))
        units = (Unit(0, unit_type, action.text),) if action.text else ()
        findings = (Finding.of(code, "canned", excerpt=action.text),) if code else ()
        return policy.evaluate(action, Analysis.of(units, findings), action.fingerprint())

    return evaluate


def run(cases: str | Path, policy: Policy = ACME) -> PolicyTestReport:
    return run_policy_tests(policy, cases, fake_evaluator(policy))


def test_fixture_cases_pass_fail_and_error_as_expected() -> None:
    report = run(POLICIES / "acme-cases.yaml")
    status = {r.name: r.status for r in report.results}
    assert status == {
        "select in production": CaseStatus.PASSED,
        "delete without where in production": CaseStatus.PASSED,
        "grant needs security": CaseStatus.PASSED,
        "deploy at night (Berlin) is denied": CaseStatus.PASSED,
        "deploy in the afternoon is allowed": CaseStatus.PASSED,
        "this case expects the wrong thing": CaseStatus.FAILED,
        "unknown kind": CaseStatus.ERROR,
        "naive time": CaseStatus.ERROR,
        "typo in expect_rules": CaseStatus.ERROR,
        "unknown field": CaseStatus.ERROR,
    }
    assert (report.passed, report.failed, report.errors) == (5, 5, 4)
    assert not report.ok
    assert report.summary() == "5 passed, 1 failed, 4 errors"


def test_failure_message_explains_the_mismatch() -> None:
    report = run(POLICIES / "acme-cases.yaml")
    failed = next(r for r in report.results if r.status is CaseStatus.FAILED)
    assert failed.message == (
        "expected deny, got allow (statement 1 (DELETE FROM invoices): canned "
        "[sql.delete_without_where, high] → recorded; no rule matched, allowed by default); "
        "expected rules [billing-no-drop], got []"
    )
    assert failed.decision is not None
    assert failed.line == 39
    assert str(failed).startswith(f"FAILED this case expects the wrong thing ({failed.file}:39)")


def test_malformed_cases_are_errors_with_file_and_line() -> None:
    report = run(POLICIES / "acme-cases.yaml")
    errors = {r.name: r for r in report.results if r.status is CaseStatus.ERROR}
    assert errors["unknown kind"].line == 47
    assert errors["unknown kind"].message.endswith(
        "acme-cases.yaml:47: cases[6].kind: unknown action kind 'sqll' (expected one of: sql, "
        "shell, deploy, tool_call, http, custom)")
    assert str(errors["unknown kind"]).startswith("ERROR unknown kind: /")
    assert errors["naive time"].line == 54
    assert "needs a timezone" in errors["naive time"].message
    assert errors["typo in expect_rules"].line == 61
    assert errors["typo in expect_rules"].message.endswith(
        "acme-cases.yaml:61: cases[8].expect_rules: names rules the policy does not have: "
        "prod-dangerus")
    # Two problems: the first (by line) locates the result, the message has both.
    assert errors["unknown field"].line == 63
    message = errors["unknown field"].message
    assert "acme-cases.yaml:63: cases[9].expect: required field is missing" in message
    assert "acme-cases.yaml:66: cases[9].expct: unknown field 'expct'" in message
    assert all(r.file.endswith("acme-cases.yaml") for r in errors.values())


def test_cases_from_text_and_all_passing() -> None:
    text = """\
cases:
  - name: grant
    kind: sql
    text: GRANT ALL ON t TO bob
    env: prod
    expect: require_approval
    expect_rules: [privileges, prod-dangerous]
    expect_stages: [approvers, security]
  - name: contractors deleting in staging
    kind: sql
    text: DELETE FROM invoices
    env: staging
    groups: [contractors]
    expect: require_approval
    expect_stages: [leads]
"""
    report = run(text)
    assert report.ok, [str(r) for r in report.results]
    assert report.source == "<cases>"


def test_stage_mismatch_is_reported() -> None:
    text = "cases:\n  - {name: g, kind: sql, text: SELECT 1, expect: allow, expect_stages: [x]}\n"
    result = run(text).results[0]
    assert result.status is CaseStatus.FAILED
    assert result.message == "expected stages [x], got []"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("cases: [\n", 3, "YAML syntax error"),
        ("- a\n", 1, "a cases file must be a mapping"),
        ("cases: []\n", 1, "cases: needs at least 1 item(s)"),
        ("cases:\n  - 3\n", 2, "a case must be a mapping, not a number"),
        ("cases:\n  - name: a\n    kind: sql\n    expect: allow\n  - name: a\n    kind: sql\n"
         "    expect: allow\n", 5, "duplicate case name"),
        ("cases:\n  - name: a\n    kind: sql\n    text: x\n    payload: {a: 1}\n"
         "    expect: allow\n", 2, "carries text, not a payload"),
        ("cases:\n  - name: a\n    kind: sql\n    at: yesterday\n    expect: allow\n", 4,
         "invalid time 'yesterday'"),
        ("cases:\n  - name: a\n    kind: sql\n    expect: allow\n    expect: deny\n", 5,
         "duplicate key 'expect'"),
    ],
)
def test_broken_cases_files(text: str, line: int, fragment: str) -> None:
    report = run(text + "\n")
    bad = [r for r in report.results if r.status is CaseStatus.ERROR]
    assert bad, report
    assert any(r.line == line and fragment in r.message for r in bad), [
        (r.line, r.message) for r in bad]
    assert not report.ok


def test_missing_cases_file(tmp_path: Path) -> None:
    report = run(tmp_path / "nope.yaml")
    assert report.errors == 1
    assert "cannot read the cases" in report.results[0].message


def test_evaluator_exceptions_become_errors() -> None:
    def explode(action: Action) -> Decision:
        raise RuntimeError("analyzer crashed")

    text = "cases:\n  - {name: a, kind: sql, text: SELECT 1, expect: allow}\n"
    result = run_policy_tests(ACME, text, explode).results[0]
    assert result.status is CaseStatus.ERROR
    assert "analyzer crashed" in result.message


# --- lint ---------------------------------------------------------------------------------

LINTED = """\
version: 1
default: allow
chains:
  used:
    stages: [{name: a, groups: [ops], timeout: 2h, escalate_to: [ops]}]
    ttl: 1h
  unused:
    stages: [{name: b, groups: [ops], escalate_to: [leads]}]
rules:
  - id: nothing
    match: {environments: []}
    outcome: deny
  - id: wrong-kind
    match: {kinds: [shell], findings: ['sql.*']}
    outcome: deny
  - id: first
    match: {kinds: [sql], risk: high}
    outcome: require_approval
    chain: used
  - id: same
    match: {risk: high, kinds: [sql]}
    outcome: allow
  - id: empty-unless
    match: {kinds: [http]}
    unless: {}
    outcome: deny
"""


def test_lint_finds_each_kind_of_problem() -> None:
    policy = load_policy_text(LINTED, source="lint.yaml")
    warnings = lint_policy(policy)
    found = {(w.check, w.line) for w in warnings}
    assert found == {
        ("stage-timeout", 5),
        ("stage-escalation", 5),  # escalates to its own group
        ("unused-chain", 7),
        ("stage-escalation", 8),  # escalate_to without timeout
        ("never-matches", 11),
        ("never-matches", 14),
        ("shadowed", 20),
        ("ineffective-allow", 22),
        ("never-matches", 25),
    }, [str(w) for w in warnings]
    text = "\n".join(str(w) for w in warnings)
    assert "lint.yaml:11: rules[0].match.environments: rule nothing can never match: " \
           "environments is an empty list (leave a field out to not constrain it) " \
           "[never-matches]" in text
    assert "none of its findings can occur in a shell action" in text
    assert "rule same has the same conditions as rule first (require_approval)" in text


def test_lint_shadowed_more_restrictive_later_rule_points_at_the_earlier() -> None:
    policy = load_policy_text(
        "version: 1\ndefault: deny\nrules:\n"
        "  - id: a\n    match: {kinds: [sql]}\n    outcome: allow\n"
        "  - id: b\n    match: {kinds: [sql]}\n    outcome: deny\n",
        source="p.yaml",
    )
    (warning,) = lint_policy(policy)
    assert warning.check == "shadowed"
    assert warning.line == 4
    assert "rule a has the same conditions as the more restrictive rule b" in warning.message


def test_lint_is_quiet_on_good_policies() -> None:
    assert lint_policy(default_policy()) == []
    assert lint_policy(ACME) == []
