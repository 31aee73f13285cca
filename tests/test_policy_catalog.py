"""The default catalog, code by code of the finding vocabulary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jitgate.actions.findings import FINDING_CODES, Analysis, Finding, Risk, Unit
from jitgate.actions.model import Action
from jitgate.approvals.chain import GrantScope
from jitgate.policy import Decision, Outcome, default_policy, lint_policy, load_policy_text
from jitgate.policy.catalog import default_catalog_text

POLICY = default_policy()
AT = datetime(2024, 3, 1, 3, 0, tzinfo=UTC)

#: The codes that need a second, security approval in production.
SECURITY = frozenset({
    "sql.privilege_change", "sql.role_change", "sql.drop_database", "sql.drop_schema",
    "sql.server_change", "sql.copy_program", "sql.replication_role",
    "shell.disk_write", "shell.rm_system_path", "shell.terraform_destroy",
})
PARSE_ERRORS = ("sql.parse_error", "shell.parse_error", "action.invalid")

DANGEROUS = sorted(c for c, t in FINDING_CODES.items() if t.risk >= Risk.MEDIUM)
HARMLESS = sorted(c for c, t in FINDING_CODES.items() if t.risk < Risk.MEDIUM)


def kind_of(code: str) -> str:
    family = code.split(".", 1)[0]
    return {"sql": "sql", "shell": "shell", "deploy": "deploy", "tool": "tool_call",
            "http": "http", "custom": "custom"}.get(family, "sql")


def decide(code: str, environment: str, *, risk: Risk | None = None) -> Decision:
    kind = kind_of(code)
    text, payload = ("the text", None) if kind in ("sql", "shell") else ("", {"x": 1})
    act = Action.create(kind, text, payload=payload, environment=environment, at=AT)
    units = (Unit(0, "statement", text),) if text else ()
    found = Analysis.of(units, (Finding.of(code, "what the analyzer saw", excerpt=text,
                                            risk=risk),))
    return POLICY.evaluate(act, found, act.fingerprint())


def test_catalog_is_shared_and_clean() -> None:
    assert default_policy() is POLICY
    assert lint_policy(POLICY) == []
    assert POLICY.default is Outcome.ALLOW
    assert [r.id for r in POLICY.rules] == [
        "production-dangerous", "production-unanalyzable", "production-security"]


def test_security_codes_all_exist() -> None:
    assert set(FINDING_CODES) >= SECURITY


@pytest.mark.parametrize("code", DANGEROUS)
def test_dangerous_findings_are_held_in_production(code: str) -> None:
    for environment in ("production", "prod", "PRD", "live"):
        decision = decide(code, environment)
        assert decision.outcome is Outcome.REQUIRE_APPROVAL, (code, environment)
        assert "production-dangerous" in decision.rules
        assert decision.chain is not None
        expected = ["approvers", "security"] if code in SECURITY else ["approvers"]
        assert [s.name for s in decision.chain.stages] == expected
        prefix = {"sql": "statement 1 (the text): ", "shell": "command 1 (the text): "}.get(
            kind_of(code), "")
        assert decision.reasons[0].startswith(
            f"{prefix}what the analyzer saw [{code}, {FINDING_CODES[code].risk.label}] → rule")


@pytest.mark.parametrize("code", DANGEROUS)
@pytest.mark.parametrize("environment", ["staging", "stg", "development", "qa", ""])
def test_dangerous_findings_are_recorded_but_allowed_elsewhere(code: str, environment: str) -> None:
    decision = decide(code, environment)
    assert decision.outcome is Outcome.ALLOW
    assert decision.rules == ()
    assert decision.risk == FINDING_CODES[code].risk
    assert decision.analysis.codes == {code}
    assert len(decision.reasons) == 1
    assert code in decision.reasons[0]
    assert "recorded" in decision.reasons[0]


@pytest.mark.parametrize("code", HARMLESS)
@pytest.mark.parametrize("environment", ["production", "staging", ""])
def test_low_findings_are_recorded_and_allowed_everywhere(code: str, environment: str) -> None:
    decision = decide(code, environment)
    assert decision.outcome is Outcome.ALLOW
    assert "recorded" in decision.reasons[0]


@pytest.mark.parametrize("code", PARSE_ERRORS)
def test_unanalyzable_actions_are_held_in_production_whatever_their_risk(code: str) -> None:
    assert FINDING_CODES[code].risk is Risk.CRITICAL
    for risk in Risk:
        decision = decide(code, "production", risk=risk)
        assert decision.outcome is Outcome.REQUIRE_APPROVAL, risk
        assert "production-unanalyzable" in decision.rules
    assert decide(code, "staging").outcome is Outcome.ALLOW


def test_actions_without_findings_run_everywhere() -> None:
    for environment in ("production", "staging", ""):
        act = Action.create("sql", "SELECT 1", environment=environment)
        decision = POLICY.evaluate(act, Analysis.of((Unit(0, "select", "SELECT 1"),), ()), "fp")
        assert decision.outcome is Outcome.ALLOW
        assert decision.reasons == ("no dangerous finding; allowed by default",)
        assert decision.chain is None


def test_chains_are_as_documented() -> None:
    decision = decide("sql.privilege_change", "production")
    chain = decision.chain
    assert chain is not None
    approvers, security = chain.stages
    assert (approvers.groups, approvers.approvals, approvers.mfa) == (("approvers",), 1, False)
    assert approvers.timeout == timedelta(minutes=30)
    assert approvers.escalate_to == ()
    assert (security.groups, security.approvals, security.mfa) == (("security",), 1, True)
    assert chain.ttl == timedelta(hours=1)
    assert chain.grant_scope is GrantScope.ACTION
    assert chain.grant_ttl == timedelta(minutes=5)
    assert chain.break_glass is False
    assert decision.rules == ("production-dangerous", "production-security")


def test_mixed_findings_hold_for_the_dangerous_one_only() -> None:
    act = Action.create("shell", "rm a.txt; rm -rf /", environment="prod")
    units = (Unit(0, "rm", "rm a.txt"), Unit(1, "rm", "rm -rf /"))
    found = Analysis.of(units, (
        Finding.of("shell.rm", "removes files", unit=0, excerpt="rm a.txt"),
        Finding.of("shell.rm_system_path", "removes the root", unit=1, excerpt="rm -rf /"),
    ))
    decision = POLICY.evaluate(act, found, act.fingerprint())
    assert decision.outcome is Outcome.REQUIRE_APPROVAL
    assert decision.reasons == (
        "command 2 (rm -rf /): removes the root [shell.rm_system_path, critical] → rules "
        "production-dangerous, production-security require approval",
    )
    assert decision.chain is not None
    assert [s.name for s in decision.chain.stages] == ["approvers", "security"]


def test_catalog_text_is_a_policy_file_teams_can_copy() -> None:
    text = default_catalog_text()
    copy = load_policy_text(text, source="copy.yaml")
    assert [r.id for r in copy.rules] == [r.id for r in POLICY.rules]
    # It is commented for the reader.
    assert text.count("\n#") > 10
