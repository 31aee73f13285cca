"""The policy engine's semantics: which rules apply, what wins, what it says."""

from __future__ import annotations

import fnmatch
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.actions.findings import FINDING_CODES, Analysis, Finding, Risk, Unit
from jitgate.actions.model import Action, ActionKind
from jitgate.approvals.chain import ApprovalChain, GrantScope, Quorum, Stage
from jitgate.policy import Decision, Outcome, Policy, load_policy, load_policy_text
from jitgate.policy.chains import merge_chains
from jitgate.policy.conditions import VARIABLES, Variables, compile_condition

POLICIES = Path(__file__).parent / "policies"
NOON = datetime(2024, 1, 4, 12, 0, tzinfo=UTC)  # a Thursday


def analysis(*findings: tuple[str, int] | str, units: tuple[tuple[str, str], ...] = ()) -> Analysis:
    """An analysis with canned findings: a code, or (code, unit index)."""
    unit_list = tuple(Unit(i, type_, text) for i, (type_, text) in enumerate(units))
    out = []
    for item in findings:
        code, unit = (item, 0) if isinstance(item, str) else item
        text = unit_list[unit].text if unit < len(unit_list) else ""
        out.append(Finding.of(code, f"{FINDING_CODES[code].title}", unit=unit, excerpt=text))
    return Analysis.of(unit_list, tuple(out))


def action(kind: str = "sql", text: str = "SELECT 1", **kw: Any) -> Action:
    kw.setdefault("at", NOON)
    if kind not in ("sql", "shell"):
        kw.setdefault("payload", {"service": "api"})
        text = ""
    return Action.create(kind, text, **kw)


def decide(policy: Policy, act: Action, found: Analysis | None = None) -> Decision:
    return policy.evaluate(act, found or Analysis(), act.fingerprint())


def rules_policy(rules: str, *, default: str = "allow", header: str = "") -> Policy:
    text = (
        f"version: 1\ndefault: {default}\n{header}"
        "chains:\n  c:\n    stages: [{name: approvers, groups: [approvers]}]\n"
        f"rules:\n{rules}"
    )
    return load_policy_text(text, source="test.yaml")


# --- most restrictive wins ----------------------------------------------------------

OUTCOMES = [Outcome.ALLOW, Outcome.REQUIRE_APPROVAL, Outcome.DENY]


@settings(max_examples=300, deadline=None)
@given(
    rules=st.lists(st.tuples(st.sampled_from(OUTCOMES), st.booleans()), min_size=0, max_size=6),
    default=st.sampled_from(OUTCOMES),
)
def test_most_restrictive_matching_outcome_wins(
    rules: list[tuple[Outcome, bool]], default: Outcome
) -> None:
    lines = []
    for i, (outcome, matches) in enumerate(rules):
        user = "alice" if matches else "bob"
        chain = "\n    chain: c" if outcome is Outcome.REQUIRE_APPROVAL else ""
        lines.append(
            f"  - id: r{i}\n    match: {{users: [{user}]}}\n    outcome: {outcome.label}{chain}\n"
        )
    header = "defaults: {chain: c}\n" if default is Outcome.REQUIRE_APPROVAL else ""
    policy = rules_policy("".join(lines) or "  []\n", default=default.label, header=header)
    decision = decide(policy, action(user="alice"))
    matching = [(f"r{i}", o) for i, (o, m) in enumerate(rules) if m]
    expected = max((o for _, o in matching), default=default)
    assert decision.outcome is expected
    assert decision.rules == tuple(rule_id for rule_id, _ in matching)
    assert (decision.chain is not None) == (expected is Outcome.REQUIRE_APPROVAL)
    assert decision.reasons


def test_default_outcome_applies_when_no_rule_matches() -> None:
    policy = rules_policy("  - id: r\n    match: {kinds: [shell]}\n    outcome: allow\n",
                          default="deny")
    decision = decide(policy, action())
    assert decision.outcome is Outcome.DENY
    assert decision.rules == ()
    assert decision.message
    assert decision.reasons == ("no rule matched; denied by the policy default",)
    allowed = decide(policy, action("shell", "ls"))
    assert allowed.outcome is Outcome.ALLOW
    assert allowed.rules == ("r",)


def test_default_require_approval_uses_the_defaults_chain() -> None:
    policy = rules_policy("  []\n", default="require_approval", header="defaults: {chain: c}\n")
    decision = decide(policy, action())
    assert decision.outcome is Outcome.REQUIRE_APPROVAL
    assert decision.chain is not None
    assert [s.name for s in decision.chain.stages] == ["approvers"]


def test_allow_with_no_findings_says_so() -> None:
    policy = rules_policy("  []\n")
    decision = decide(policy, action())
    assert decision.outcome is Outcome.ALLOW
    assert decision.reasons == ("no dangerous finding; allowed by default",)
    assert decision.risk is Risk.NONE


# --- match fields ----------------------------------------------------------------------

ACME = load_policy(POLICIES / "acme.yaml")


def test_environment_aliases_are_canonical_in_rules_and_actions() -> None:
    found = analysis("sql.delete_without_where")
    for env in ("prod", "production", "PRD", "live"):
        assert decide(ACME, action(environment=env), found).outcome is Outcome.REQUIRE_APPROVAL
    for env in ("staging", "", "qa"):
        assert decide(ACME, action(environment=env), found).outcome is Outcome.ALLOW


def test_unless_exempts_and_its_condition_is_honoured() -> None:
    high = analysis("sql.delete_without_where")
    critical = analysis("sql.drop_database")
    dba: dict[str, Any] = {"environment": "production", "groups": ["dba"]}
    assert decide(ACME, action(**dba), high).outcome is Outcome.ALLOW
    # The unless only holds below critical: a DBA's DROP DATABASE is still held.
    held = decide(ACME, action(**dba), critical)
    assert held.outcome is Outcome.REQUIRE_APPROVAL
    assert held.rules == ("prod-dangerous",)


def test_target_globs() -> None:
    drop = analysis("sql.drop")
    assert decide(ACME, action(target="billing-eu"), drop).outcome is Outcome.DENY
    # Globs are case-sensitive.
    assert decide(ACME, action(target="Billing-eu"), drop).outcome is Outcome.ALLOW
    assert decide(ACME, action(target="crm"), drop).outcome is Outcome.ALLOW
    decision = decide(ACME, action(target="billing-eu"), drop)
    assert decision.message == "Billing objects are never dropped through jitgate."


def test_finding_globs_match_every_code_they_cover() -> None:
    for code in ("sql.drop", "sql.drop_database", "sql.drop_schema"):
        decision = decide(ACME, action(target="billing-1"), analysis(code))
        assert decision.outcome is Outcome.DENY, code
    assert decide(ACME, action(target="billing-1"), analysis("sql.truncate")).outcome is (
        Outcome.ALLOW
    )


def test_finding_globs_also_match_codes_outside_the_vocabulary() -> None:
    policy = rules_policy("  - id: r\n    match: {findings: ['sql.drop*']}\n    outcome: deny\n")
    unknown = Analysis.of((), (Finding("sql.drop_everything", Risk.HIGH, "new analyzer code"),))
    assert decide(policy, action(), unknown).outcome is Outcome.DENY
    other = Analysis.of((), (Finding("sql.future_code", Risk.HIGH, "x"),))
    assert decide(policy, action(), other).outcome is Outcome.ALLOW


def test_users_and_groups() -> None:
    policy = rules_policy(
        "  - id: u\n    match: {users: [alice]}\n    outcome: deny\n"
        "  - id: g\n    match: {groups: [contractors, interns]}\n    outcome: deny\n"
    )
    assert decide(policy, action(user="alice")).rules == ("u",)
    assert decide(policy, action(user="bob", groups=["interns", "x"])).rules == ("g",)
    assert decide(policy, action(user="bob", groups=["staff"])).rules == ()
    assert decide(policy, action(user="alice", groups=["contractors"])).rules == ("u", "g")


def test_risk_threshold_on_the_action_and_on_findings() -> None:
    policy = rules_policy(
        "  - id: action-high\n    match: {risk: high}\n    outcome: deny\n"
        "  - id: shell-high\n    match: {findings: ['shell.*'], risk: high}\n    outcome: deny\n"
    )
    assert decide(policy, action(), analysis("sql.merge")).rules == ()  # medium
    assert decide(policy, action(), analysis("sql.truncate")).rules == ("action-high",)  # high
    # A low shell finding plus a high one elsewhere: the action is high, but no
    # shell finding is.
    mixed = analysis("shell.rm", "sql.truncate")
    assert decide(policy, action("shell", "rm x"), mixed).rules == ("action-high",)
    assert decide(policy, action("shell", "rm -r x"), analysis("shell.rm_recursive")).rules == (
        "action-high", "shell-high")


def test_statements_globs_and_reason_points_at_them() -> None:
    units = (("select", "SELECT 1"), ("delete", "DELETE FROM t WHERE id = 1"))
    found = analysis(units=units)
    who: dict[str, Any] = {"groups": ["contractors"], "environment": "staging"}
    decision = decide(ACME, action(text="SELECT 1; DELETE FROM t WHERE id = 1", **who), found)
    assert decision.outcome is Outcome.REQUIRE_APPROVAL
    assert decision.rules == ("contractors-delete",)
    assert decision.reasons[0].startswith(
        "statement 2 (DELETE FROM t WHERE id = 1): delete → rule contractors-delete requires "
        "approval"
    )
    assert decision.chain is not None
    assert decision.chain.stages[0].quorum is Quorum.ALL
    truncate = analysis(units=(("truncate_table", "TRUNCATE t"),))
    assert decide(ACME, action(text="TRUNCATE t", **who), truncate).rules == (
        "contractors-delete",)
    select = analysis(units=(("select", "SELECT 1"),))
    assert decide(ACME, action(**who), select).rules == ()


def test_kinds() -> None:
    grant = analysis("sql.privilege_change")
    assert decide(ACME, action(environment="prod"), grant).rules == ("prod-dangerous",
                                                                     "privileges")
    assert "privileges" not in decide(ACME, action("shell", "x", environment="prod"), grant).rules


def test_empty_list_never_matches() -> None:
    policy = rules_policy("  - id: r\n    match: {environments: []}\n    outcome: deny\n")
    assert decide(policy, action(environment="production")).outcome is Outcome.ALLOW


def test_rule_without_match_applies_to_everything() -> None:
    policy = rules_policy("  - id: r\n    outcome: deny\n    message: closed\n")
    decision = decide(policy, action("http"))
    assert decision.outcome is Outcome.DENY
    assert decision.message == "closed"
    assert decision.reasons == ("Rule r denies it: closed",)


# --- conditions and time ----------------------------------------------------------------


def time_policy(condition: str, timezone: str = "Europe/Berlin") -> Policy:
    return rules_policy(
        f"  - id: t\n    match:\n      when: '{condition}'\n    outcome: deny\n",
        header=f"timezone: {timezone}\n",
    )


@pytest.mark.parametrize(
    ("at", "condition"),
    [
        # 23:30 UTC on Friday 5 January is 00:30 on Saturday in Berlin (UTC+1).
        (datetime(2024, 1, 5, 23, 30, tzinfo=UTC),
         'time.hour == 0 && time.minute == 30 && time.weekday == 6 && time.weekend '
         '&& time.date == "2024-01-06" && time.timezone == "Europe/Berlin"'),
        # In summer Berlin is UTC+2.
        (datetime(2024, 7, 5, 22, 30, tzinfo=UTC), "time.hour == 0 && time.weekday == 6"),
        (datetime(2024, 1, 8, 7, 59, tzinfo=UTC), "time.hour == 8 && time.weekday == 1 && "
         "!time.weekend"),
        (datetime(2024, 1, 8, 7, 59, tzinfo=UTC),
         'time.now == timestamp("2024-01-08T07:59:00Z")'),
    ],
)
def test_time_is_read_in_the_policy_timezone(at: datetime, condition: str) -> None:
    policy = time_policy(condition)
    assert decide(policy, action(at=at)).outcome is Outcome.DENY
    assert decide(policy, action(at=at + timedelta(hours=5))).outcome is Outcome.ALLOW


def test_time_defaults_to_utc() -> None:
    policy = rules_policy("  - id: t\n    match: {when: 'time.hour == 23'}\n    outcome: deny\n")
    assert decide(policy, action(at=datetime(2024, 1, 5, 23, 30, tzinfo=UTC))).rules == ("t",)


def test_night_deploys_in_the_fixture() -> None:
    night = datetime(2024, 1, 4, 21, 30, tzinfo=UTC)  # 22:30 in Berlin
    decision = decide(ACME, action("deploy", environment="production", at=night))
    assert decision.outcome is Outcome.DENY
    assert decision.message == "No production deploys at night or on weekends."
    assert decide(ACME, action("deploy", environment="production")).outcome is Outcome.ALLOW


@pytest.mark.parametrize(
    "condition",
    [
        'action.kind == "sql" && action.text == "SELECT 1" && action.target == "db"',
        'action.environment == "production" && action.findings == ["sql.truncate"]',
        'action.statements == ["truncate_table"] && action.risk == "high"',
        "action.risk_level == 3",
        'actor.user == "alice" && "ops" in actor.groups && actor.groups == ["dev", "ops"]',
        'action.attributes.ticket == "OPS-1" && action.attributes.nested.n == 2',
        'action.attributes.tags == ["a", "b"]',
    ],
)
def test_condition_variables(condition: str) -> None:
    policy = rules_policy(f"  - id: c\n    match: {{when: '{condition}'}}\n    outcome: deny\n")
    act = action(target="db", environment="prod", user="alice", groups=["ops", "dev"],
                 attributes={"ticket": "OPS-1", "nested": {"n": 2}, "tags": ("a", "b")})
    found = analysis("sql.truncate", units=(("truncate_table", "TRUNCATE t"),))
    assert decide(policy, act, found).outcome is Outcome.DENY


def test_payload_variable() -> None:
    policy = rules_policy(
        "  - id: c\n    match: {when: 'action.payload.replicas == 0'}\n    outcome: deny\n"
    )
    assert decide(policy, action("deploy", payload={"replicas": 0})).outcome is Outcome.DENY
    assert decide(policy, action("deploy", payload={"replicas": 3})).outcome is Outcome.ALLOW


def test_condition_runtime_error_fails_closed_for_restrictive_rules() -> None:
    policy = rules_policy(
        "  - id: needs-ticket\n    match: {when: 'action.attributes.ticket == \"x\"'}\n"
        "    outcome: require_approval\n    chain: c\n"
    )
    decision = decide(policy, action())
    assert decision.outcome is Outcome.REQUIRE_APPROVAL
    assert decision.rules == ("needs-ticket",)
    assert any("condition failed to evaluate" in r and "the rule applies" in r
               for r in decision.reasons), decision.reasons
    assert decide(policy, action(attributes={"ticket": "y"})).outcome is Outcome.ALLOW


def test_condition_runtime_error_fails_closed_for_allow_rules() -> None:
    policy = rules_policy(
        "  - id: ticketed\n    match: {when: 'action.attributes.ticket != \"\"'}\n"
        "    outcome: allow\n",
        default="deny",
    )
    decision = decide(policy, action())
    assert decision.outcome is Outcome.DENY
    assert decision.rules == ()
    assert any("the rule does not apply" in r for r in decision.reasons)
    assert decide(policy, action(attributes={"ticket": "T-1"})).outcome is Outcome.ALLOW


def test_condition_runtime_error_in_unless_keeps_a_restrictive_rule() -> None:
    policy = rules_policy(
        "  - id: r\n    unless: {when: 'action.attributes.approved_by_cab == true'}\n"
        "    outcome: deny\n"
    )
    assert decide(policy, action()).outcome is Outcome.DENY
    assert decide(policy, action(attributes={"approved_by_cab": True})).outcome is Outcome.ALLOW
    allow = rules_policy(
        "  - id: r\n    unless: {when: 'action.attributes.risky == true'}\n    outcome: allow\n",
        default="deny",
    )
    assert decide(allow, action()).outcome is Outcome.DENY
    assert decide(allow, action(attributes={"risky": False})).outcome is Outcome.ALLOW


def test_unrepresentable_attribute_values_do_not_crash() -> None:
    policy = rules_policy(
        "  - id: r\n    match: {when: 'action.attributes.n > 1'}\n    outcome: deny\n"
    )
    assert decide(policy, action(attributes={"n": 2**80})).outcome is Outcome.DENY  # fail closed
    assert decide(policy, action(attributes={"n": object()})).outcome is Outcome.DENY


# --- chains --------------------------------------------------------------------------------


def test_matching_require_rules_merge_their_chains() -> None:
    decision = decide(ACME, action(environment="prod", groups=["contractors"]),
                      analysis("sql.privilege_change", units=(("grant", "GRANT ALL ON t TO x"),)))
    assert decision.rules == ("prod-dangerous", "privileges")
    chain = decision.chain
    assert chain is not None
    assert [s.name for s in chain.stages] == ["approvers", "security"]
    approvers = chain.stages[0]
    assert approvers.approvals == 2  # max(1, 2)
    assert approvers.timeout == timedelta(minutes=20)  # min(30m, 20m)
    assert approvers.escalate_to == ("oncall-leads",)
    assert chain.stages[1].mfa is True
    assert chain.ttl == timedelta(hours=1)  # min(1h, 2h default)
    assert chain.break_glass is False  # only one of them allows it
    assert chain.grant_scope is GrantScope.ACTION  # one says action
    assert chain.grant_ttl == timedelta(minutes=10)  # min(10m default, 15m)


def test_deny_wins_over_require_and_keeps_no_chain() -> None:
    decision = decide(ACME, action(environment="prod", target="billing-1"),
                      analysis("sql.drop_database"))
    assert decision.outcome is Outcome.DENY
    assert decision.chain is None
    assert decision.rules == ("prod-dangerous", "billing-no-drop")


_stages = st.builds(
    Stage,
    name=st.sampled_from(["a", "b", "c"]),
    groups=st.just(("g",)),
    approvals=st.integers(1, 4),
    quorum=st.sampled_from(list(Quorum)),
    mfa=st.booleans(),
    timeout=st.one_of(st.none(), st.integers(1, 100).map(lambda m: timedelta(minutes=m))),
    escalate_to=st.lists(st.sampled_from(["x", "y"]), max_size=2, unique=True).map(tuple),
)
_chains = st.builds(
    ApprovalChain,
    stages=st.lists(_stages, min_size=1, max_size=3, unique_by=lambda s: s.name).map(tuple),
    ttl=st.integers(1, 100).map(lambda m: timedelta(minutes=m)),
    break_glass=st.booleans(),
    grant_scope=st.sampled_from(list(GrantScope)),
    grant_ttl=st.integers(1, 100).map(lambda m: timedelta(minutes=m)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_chains, min_size=1, max_size=4))
def test_merged_chain_is_at_least_as_strict_as_each(chains: list[ApprovalChain]) -> None:
    merged = merge_chains(chains)
    by_name = {s.name: s for s in merged.stages}
    assert len(by_name) == len(merged.stages)
    order = list(dict.fromkeys(s.name for c in chains for s in c.stages))
    assert [s.name for s in merged.stages] == order
    for chain in chains:
        assert merged.ttl <= chain.ttl
        assert merged.grant_ttl <= chain.grant_ttl
        assert merged.break_glass <= chain.break_glass
        if chain.grant_scope is GrantScope.ACTION:
            assert merged.grant_scope is GrantScope.ACTION
        for stage in chain.stages:
            m = by_name[stage.name]
            assert m.approvals >= stage.approvals
            assert m.mfa >= stage.mfa
            assert set(stage.escalate_to) <= set(m.escalate_to)
            if stage.quorum is Quorum.ALL:
                assert m.quorum is Quorum.ALL
            if stage.timeout is not None:
                assert m.timeout is not None
                assert m.timeout <= stage.timeout


# --- reasons --------------------------------------------------------------------------------


def test_reasons_point_at_the_statement() -> None:
    units = (("select", "SELECT 1"), ("delete", "DELETE FROM invoices"))
    found = Analysis.of(units=tuple(Unit(i, t, x) for i, (t, x) in enumerate(units)), findings=(
        Finding.of("sql.delete_without_where",
                   "DELETE from invoices has no WHERE clause: it deletes every row",
                   unit=1, excerpt="DELETE FROM invoices"),
    ))
    decision = decide(ACME, action(text="SELECT 1; DELETE FROM invoices", environment="prod"),
                      found)
    assert decision.reasons[0] == (
        "statement 2 (DELETE FROM invoices): DELETE from invoices has no WHERE clause: it "
        "deletes every row [sql.delete_without_where, high] → rule prod-dangerous requires "
        "approval"
    )


def test_reasons_use_the_unit_text_when_a_finding_has_no_excerpt() -> None:
    found = Analysis.of((Unit(0, "rm", "rm -rf /var/lib/x"),),
                        (Finding.of("shell.rm_recursive", "removes a tree", unit=0),))
    decision = decide(ACME, action("shell", "rm -rf /var/lib/x", environment="prod"), found)
    assert decision.reasons[0].startswith("command 1 (rm -rf /var/lib/x): removes a tree "
                                          "[shell.rm_recursive, high] → rule prod-dangerous")


def test_reasons_name_every_rule_behind_a_finding() -> None:
    decision = decide(ACME, action(environment="prod"), analysis("sql.role_change"))
    assert decision.reasons[0].endswith(
        "[sql.role_change, critical] → rules prod-dangerous, privileges require approval")


def test_allowed_findings_are_recorded_in_the_reasons() -> None:
    decision = decide(ACME, action("shell", "rm a", environment="staging"),
                      analysis("shell.rm", units=(("rm", "rm a"),)))
    assert decision.outcome is Outcome.ALLOW
    assert decision.reasons == (
        "command 1 (rm a): removes files [shell.rm, low] → recorded; no rule matched, "
        "allowed by default",
    )


def test_only_findings_behind_a_hold_are_listed() -> None:
    found = analysis("shell.rm", "shell.rm_recursive", units=(("rm", "rm a; rm -r b"),))
    decision = decide(ACME, action("shell", "rm a; rm -r b", environment="prod"), found)
    assert len(decision.reasons) == 1
    assert "shell.rm_recursive" in decision.reasons[0]


def test_structured_kinds_have_no_statement_label() -> None:
    found = Analysis.of((), (Finding("deploy.release", Risk.MEDIUM, "deployment of api 1.2"),))
    decision = decide(ACME, action("deploy", environment="prod"), found)
    assert decision.reasons[0] == (
        "deployment of api 1.2 [deploy.release, medium] → rule prod-dangerous requires "
        "approval")


# --- speed structures are invisible ----------------------------------------------------------


def test_memoised_decisions_follow_dynamic_conditions() -> None:
    found = analysis("sql.delete_without_where")
    # Same kind, environment and codes: the memo must not answer for the actor.
    assert decide(ACME, action(environment="prod"), found).outcome is Outcome.REQUIRE_APPROVAL
    assert decide(ACME, action(environment="prod", groups=["dba"]), found).outcome is (
        Outcome.ALLOW)
    assert decide(ACME, action(environment="prod"), found).outcome is Outcome.REQUIRE_APPROVAL


def test_decisions_are_frozen_and_equal_to_plainly_built_ones() -> None:
    act = action(environment="prod")
    found = analysis("sql.truncate")
    decision = decide(ACME, act, found)
    with pytest.raises(FrozenInstanceError):
        decision.outcome = Outcome.ALLOW  # type: ignore[misc]
    plain = Decision(decision.outcome, decision.risk, decision.rules, decision.reasons,
                     decision.fingerprint, decision.analysis, decision.chain, decision.message)
    assert decision == plain
    assert decision.to_dict() == plain.to_dict()


REFERENCE_RULES = """\
  - id: a
    match: {environments: [production], risk: medium}
    outcome: require_approval
    chain: c
  - id: b
    match: {kinds: [sql], findings: ['sql.drop*', sql.truncate]}
    unless: {users: [root]}
    outcome: deny
  - id: c
    match: {environments: [staging, production], groups: [contractors], risk: low}
    outcome: require_approval
    chain: {stages: [{name: leads, groups: [leads]}]}
  - id: d
    match: {findings: ['shell.*'], risk: high, targets: ['web-*']}
    outcome: require_approval
    chain: c
  - id: e
    match: {kinds: [shell], users: [root]}
    outcome: allow
"""
REFERENCE = rules_policy(REFERENCE_RULES, default="allow")
REFERENCE_SPEC: list[dict[str, Any]] = [
    {"id": "a", "env": {"production"}, "risk": Risk.MEDIUM, "outcome": Outcome.REQUIRE_APPROVAL},
    {"id": "b", "kinds": {"sql"}, "findings": ["sql.drop*", "sql.truncate"],
     "unless_users": {"root"}, "outcome": Outcome.DENY},
    {"id": "c", "env": {"staging", "production"}, "groups": {"contractors"}, "risk": Risk.LOW,
     "outcome": Outcome.REQUIRE_APPROVAL},
    {"id": "d", "findings": ["shell.*"], "finding_risk": Risk.HIGH, "targets": ["web-*"],
     "outcome": Outcome.REQUIRE_APPROVAL},
    {"id": "e", "kinds": {"shell"}, "users": {"root"}, "outcome": Outcome.ALLOW},
]


def reference_matches(rule: dict[str, Any], act: Action, found: Analysis) -> bool:
    """The documented semantics, written as plainly as possible."""
    if "kinds" in rule and act.kind.value not in rule["kinds"]:
        return False
    if "env" in rule and act.environment not in rule["env"]:
        return False
    if "users" in rule and act.actor.user not in rule["users"]:
        return False
    if "groups" in rule and not rule["groups"] & act.actor.groups:
        return False
    if "targets" in rule and not any(fnmatch.fnmatchcase(act.target, t) for t in rule["targets"]):
        return False
    if "findings" in rule:
        floor = rule.get("finding_risk", Risk.NONE)
        if not any(
            any(fnmatch.fnmatchcase(f.code, g) for g in rule["findings"]) and f.risk >= floor
            for f in found.findings
        ):
            return False
    if "risk" in rule and found.risk < rule["risk"]:
        return False
    return not ("unless_users" in rule and act.actor.user in rule["unless_users"])


@settings(max_examples=500, deadline=None)
@given(
    kind=st.sampled_from(["sql", "shell"]),
    env=st.sampled_from(["production", "prod", "staging", "qa", ""]),
    user=st.sampled_from(["alice", "root"]),
    groups=st.lists(st.sampled_from(["contractors", "dev"]), max_size=2),
    target=st.sampled_from(["web-1", "db-1", ""]),
    codes=st.lists(st.sampled_from(sorted(FINDING_CODES)), max_size=3, unique=True),
    risks=st.lists(st.sampled_from(list(Risk)), min_size=3, max_size=3),
)
def test_engine_agrees_with_a_plain_reference(
    kind: str, env: str, user: str, groups: list[str], target: str, codes: list[str],
    risks: list[Risk],
) -> None:
    act = action(kind, "x", environment=env, user=user, groups=groups, target=target)
    found = Analysis.of((), tuple(
        Finding(code, risk, "m") for code, risk in zip(codes, risks, strict=False)))
    matching = [r for r in REFERENCE_SPEC if reference_matches(r, act, found)]
    decision = decide(REFERENCE, act, found)
    assert decision.rules == tuple(r["id"] for r in matching)
    assert decision.outcome is max((r["outcome"] for r in matching), default=Outcome.ALLOW)
    assert decision.risk is found.risk
    # And a second time (memoised), identically.
    again = decide(REFERENCE, act, found)
    assert (again.outcome, again.rules, again.reasons, again.chain) == (
        decision.outcome, decision.rules, decision.reasons, decision.chain)


@pytest.mark.parametrize("name", sorted(VARIABLES))
def test_every_declared_variable_is_provided(name: str) -> None:
    condition = compile_condition(f"{name} == {name}")
    assert condition.variables == (name,)
    act = action(environment="prod", attributes={"a": [1, {"b": None}]}, user="u",
                 groups=["g"])
    variables = Variables(act, analysis("sql.truncate", units=(("truncate_table", "T"),)),
                          ZoneInfo("Europe/Berlin"))
    assert condition.evaluate(variables) is True


def test_conditions_see_only_the_variables_they_name() -> None:
    condition = compile_condition('time . hour >= 0 &&\n  "x" in actor.groups || "sql.x" == "a"')
    assert condition.variables == ("actor.groups", "time.hour")


def test_actions_built_without_create_are_canonicalised() -> None:
    raw = Action(kind=ActionKind.SQL, text="TRUNCATE t", environment=" PROD ", at=NOON)
    decision = decide(ACME, raw, analysis("sql.truncate"))
    assert decision.outcome is Outcome.REQUIRE_APPROVAL
    assert decision.rules == ("prod-dangerous",)


def test_policy_is_immutable() -> None:
    with pytest.raises(FrozenInstanceError):
        ACME.default = Outcome.DENY  # type: ignore[misc]
    with pytest.raises(TypeError):
        ACME.chains["x"] = ACME.chains["security"]  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        ACME.rules[0].outcome = Outcome.ALLOW  # type: ignore[misc]


def test_reasons_memo_is_keyed_by_the_analysis_and_the_kind() -> None:
    shared = analysis("sql.truncate", units=(("truncate", "TRUNCATE t"),))
    as_sql = decide(ACME, action(environment="prod"), shared)
    as_shell = decide(ACME, action("shell", "x", environment="prod"), shared)
    assert as_sql.reasons[0].startswith("statement 1 (TRUNCATE t)")
    assert as_shell.reasons[0].startswith("command 1 (TRUNCATE t)")
    assert decide(ACME, action(environment="prod"), shared).reasons == as_sql.reasons
    # Another analysis object with other content is never answered from the memo.
    other = analysis("sql.truncate", units=(("truncate", "TRUNCATE u"),))
    assert decide(ACME, action(environment="prod"), other).reasons[0].startswith(
        "statement 1 (TRUNCATE u)")
    # Same analysis, another resolution (a DBA is exempt): other reasons.
    dba = decide(ACME, action(environment="prod", groups=["dba"]), shared)
    assert dba.outcome is Outcome.ALLOW
    assert "recorded" in dba.reasons[0]
