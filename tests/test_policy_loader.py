"""Loading policies: every problem is reported with its file, line and field path."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitgate.actions.findings import Risk
from jitgate.actions.model import ActionKind
from jitgate.approvals.chain import GrantScope, Quorum
from jitgate.policy import Outcome, Policy, PolicyError, load_policy, load_policy_text
from jitgate.policy.model import parse_duration

POLICIES = Path(__file__).parent / "policies"

# Line numbers matter in this file: BASE's lines are numbered on the right.
BASE = """\
version: 1
name: acme
chains:
  prod-approvers:
    stages:
      - name: approvers
        groups: [approvers]
rules:
  - id: r1
    match:
      environments: [production]
      risk: medium
    outcome: require_approval
    chain: prod-approvers
"""
#          line:  1 version, 3 chains, 6 stage name, 7 groups, 9 rule id,
#                11 environments, 12 risk, 13 outcome, 14 chain


def problems_of(text: str, source: str = "acme.yaml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, source=source)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


STAGE = "        groups: [approvers]\n"


def in_stage(extra: str) -> str:
    """BASE with ``extra`` lines after the stage's groups (line 8 on)."""
    return edit(STAGE, STAGE + extra)


def assert_problem(text: str, line: int, path: str, fragment: str) -> None:
    found = problems_of(text)
    prefix = f"acme.yaml:{line}: {path}: " if path else f"acme.yaml:{line}: "
    assert any(p.startswith(prefix) and fragment in p for p in found), found


def test_base_policy_is_valid() -> None:
    policy = load_policy_text(BASE, source="acme.yaml")
    assert isinstance(policy, Policy)
    assert policy.rules[0].id == "r1"
    assert policy.rules[0].line == 9


@pytest.mark.parametrize(
    ("text", "line", "path", "fragment"),
    [
        pytest.param(
            in_stage("        grups: [x]\n"),
            8, "chains.prod-approvers.stages[0].grups", "unknown field 'grups' (expected one of: "
            "name, groups, approvals", id="unknown-field-at-depth",
        ),
        pytest.param(
            edit("      risk: medium\n", "      risk: medium\n      enviroments: [staging]\n"),
            13, "rules[0].match.enviroments", "unknown field 'enviroments'", id="misspelt-match",
        ),
        pytest.param(
            edit("version: 1\n", "version: 1\ncolour: blue\n"),
            2, "colour", "unknown field 'colour'", id="unknown-top-level-field",
        ),
        pytest.param(
            in_stage("        approvals: '2'\n"),
            8, "chains.prod-approvers.stages[0].approvals", "expected a whole number, not a string",
            id="wrong-type-int",
        ),
        pytest.param(
            edit("      environments: [production]\n", "      environments: production\n"),
            11, "rules[0].match.environments", "expected a list, not a string",
            id="wrong-type-list",
        ),
        pytest.param(
            edit("    match:\n", "    match: [1]\n    xmatch:\n"),
            10, "rules[0].match", "expected a mapping, not a list", id="wrong-type-mapping",
        ),
        pytest.param(
            edit("      risk: medium\n", "      risk: hgih\n"),
            12, "rules[0].match.risk",
            "unknown risk level 'hgih' (expected one of: none, low, medium, high, critical)",
            id="unknown-risk",
        ),
        pytest.param(
            edit("    outcome: require_approval\n", "    outcome: maybe\n"),
            13, "rules[0].outcome", "unknown outcome 'maybe'", id="unknown-outcome",
        ),
        pytest.param(
            edit("      risk: medium\n", "      risk: medium\n      kinds: [sql, sqll]\n"),
            13, "rules[0].match.kinds[1]", "unknown action kind 'sqll'", id="unknown-kind",
        ),
        pytest.param(
            in_stage("        timeout: 5 minutes\n"),
            8, "chains.prod-approvers.stages[0].timeout", "invalid duration '5 minutes'",
            id="bad-duration",
        ),
        pytest.param(
            in_stage("    ttl: 0\n"),
            8, "chains.prod-approvers.ttl", "a duration must be positive", id="zero-duration",
        ),
        pytest.param(
            edit("    chain: prod-approvers\n", "    chain: prod-aprovers\n"),
            14, "rules[0].chain", "unknown chain 'prod-aprovers' (chains: prod-approvers)",
            id="unknown-chain",
        ),
        pytest.param(
            BASE + "  - id: r1\n    outcome: deny\n",
            15, "rules[1].id", "duplicate rule id 'r1' (also rules[0])", id="duplicate-rule-id",
        ),
        pytest.param(
            edit("      risk: medium\n", "      risk: medium\n      risk: high\n"),
            13, "rules[0].match.risk", "duplicate key 'risk' in rules[0].match (first at line 12)",
            id="duplicate-yaml-key",
        ),
        pytest.param(
            edit("name: acme\n", "name: acme\nname: other\n"),
            3, "name", "duplicate key 'name' in the document (first at line 2)",
            id="duplicate-top-level-key",
        ),
        pytest.param(
            edit("      risk: medium\n", "      when: 'time.hour >'\n"),
            12, "rules[0].match.when", "invalid condition at 1:12: Syntax error",
            id="cel-syntax",
        ),
        pytest.param(
            edit("      risk: medium\n", "      when: 'time.hour == \"x\"'\n"),
            12, "rules[0].match.when", "found no matching overload for '_==_' applied to "
            "'(int, string)'", id="cel-type-error",
        ),
        pytest.param(
            edit("      risk: medium\n", "      when: 'time.hour'\n"),
            12, "rules[0].match.when", "condition must be a boolean, not int", id="cel-not-bool",
        ),
        pytest.param(
            edit("      risk: medium\n", "      when: 'user == \"bob\"'\n"),
            12, "rules[0].match.when", "undeclared reference to 'user'", id="cel-undeclared",
        ),
        pytest.param(
            edit("      risk: medium\n", "      when: |\n        time.hour > 3 &&\n"
                 "        time.weekday == \"monday\"\n"),
            14, "rules[0].match.when", "invalid condition at 2:", id="cel-block-scalar-line",
        ),
        pytest.param(
            edit("      risk: medium\n", "      findings: [sql.truncate, 'sql.dorp*']\n"),
            12, "rules[0].match.findings[1]",
            "finding pattern 'sql.dorp*' matches no known finding code (did you mean sql.drop?)",
            id="bad-finding-glob",
        ),
        pytest.param(
            edit("name: acme\n", "name: acme\ntimezone: Mars/Olympus_Mons\n"),
            3, "timezone", "unknown timezone 'Mars/Olympus_Mons'", id="bad-timezone",
        ),
        pytest.param(
            edit("version: 1\n", "version: 2\n"),
            1, "version", "unsupported policy version 2 (expected 1)", id="bad-version",
        ),
        pytest.param(
            edit("    outcome: require_approval\n", ""),
            9, "rules[0].outcome", "required field is missing", id="missing-outcome",
        ),
        pytest.param(
            edit("    outcome: require_approval\n", "    outcome: deny\n"),
            14, "rules[0].chain", "only require_approval rules take a chain (this rule's "
            "outcome is deny)", id="deny-with-chain",
        ),
        pytest.param(
            edit("    chain: prod-approvers\n", ""),
            13, "rules[0].outcome", "a require_approval rule needs a chain", id="missing-chain",
        ),
        pytest.param(
            edit("name: acme\n", "name: acme\ndefault: require_approval\n"),
            3, "default", "default: require_approval needs a chain: set defaults.chain",
            id="default-require-without-chain",
        ),
        pytest.param(
            edit("        groups: [approvers]\n", "        groups: []\n"),
            7, "chains.prod-approvers.stages[0].groups",
            "a stage needs at least one approver group", id="empty-stage-groups",
        ),
        pytest.param(
            in_stage("        approvals: 0\n"),
            8, "chains.prod-approvers.stages[0].approvals", "approvals must be at least 1",
            id="zero-approvals",
        ),
        pytest.param(
            edit("    stages:\n      - name: approvers\n        groups: [approvers]\n",
                 "    stages: []\n"),
            5, "chains.prod-approvers.stages", "a chain needs at least one stage",
            id="no-stages",
        ),
        pytest.param(
            in_stage("        quorum: most\n"),
            8, "chains.prod-approvers.stages[0].quorum", "unknown quorum 'most' (expected one of: "
            "any, all)", id="unknown-quorum",
        ),
        pytest.param(
            edit("    chain: prod-approvers\n", "    chain: [prod-approvers]\n"),
            14, "rules[0].chain", "expected the name of a chain or an inline chain mapping",
            id="chain-wrong-type",
        ),
        pytest.param(
            edit("    chain: prod-approvers\n",
                 "    chain:\n      stages:\n        - name: approvers\n"
                 "          groups: [other]\n"),
            17, "rules[0].chain.stages[0].groups", "stage 'approvers' names groups ['other'] here "
            "but ['approvers'] at chains.prod-approvers.stages[0]", id="stage-group-conflict",
        ),
        pytest.param(
            edit("    chain: prod-approvers\n",
                 "    chain:\n      stages:\n        - {name: a, groups: [x]}\n"
                 "        - {name: a, groups: [x]}\n"),
            17, "rules[0].chain.stages[1].name", "duplicate stage name 'a'",
            id="duplicate-stage-in-chain",
        ),
        pytest.param(
            edit("    chain: prod-approvers\n",
                 "    chain:\n      stages:\n        - name: approvers\n"
                 "          groups: [approvers]\n          nmae: x\n"),
            18, "rules[0].chain.stages[0].nmae", "unknown field 'nmae'",
            id="inline-chain-unknown-field",
        ),
    ],
)
def test_bad_policy_is_reported_at_its_line(text: str, line: int, path: str, fragment: str) -> None:
    assert_problem(text, line, path, fragment)


def test_yaml_syntax_error_has_the_line() -> None:
    found = problems_of("version: 1\nrules:\n  - id: a\n    match: {kinds: [sql\n")
    assert len(found) == 1
    assert found[0].startswith("acme.yaml:5: YAML syntax error:"), found


def test_yaml_indentation_error_has_the_line() -> None:
    found = problems_of("version: 1\nrules:\n  - id: a\n   outcome: deny\n")
    assert found[0].startswith("acme.yaml:4: YAML syntax error:"), found


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"])
def test_empty_file_is_an_error(text: str) -> None:
    found = problems_of(text)
    assert found == ["acme.yaml:1: the policy is empty (expected a mapping with version, "
                     "rules, ...)"]


@pytest.mark.parametrize(
    ("text", "what"), [("- id: a\n", "a list"), ("just words\n", "a string"), ("3\n", "a number")]
)
def test_top_level_must_be_a_mapping(text: str, what: str) -> None:
    assert problems_of(text) == [f"acme.yaml:1: the policy must be a mapping, not {what}"]


def test_several_documents_are_an_error() -> None:
    found = problems_of("version: 1\n---\nversion: 1\n")
    assert "YAML syntax error" in found[0]


def test_all_problems_are_reported_at_once_in_line_order() -> None:
    text = edit("      risk: medium\n", "      risk: hgih\n      kinds: [sqll]\n")
    text = text.replace("version: 1\n", "version: 1\ntimezone: Nowhere/Land\n")
    found = problems_of(text)
    assert [p.split(":")[1] for p in found] == ["2", "13", "14"]


def test_missing_version_is_reported() -> None:
    assert_problem("name: x\n", 1, "version", "required field is missing")


def test_load_policy_reports_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "team-policy.yaml"
    path.write_text(edit("      risk: medium\n", "      risk: hgih\n"), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}:12: rules[0].match.risk: unknown risk level")
    problem = info.value.problems[0]
    assert (problem.file, problem.line, problem.path) == (str(path), 12, ("rules", 0, "match",
                                                                          "risk"))


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy"):
        load_policy(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyError, match="cannot read the policy"):
        load_policy(binary)


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


def test_values_are_normalised() -> None:
    text = """\
version: 1
timezone: Europe/Berlin
defaults: {ttl: 90m, grant_ttl: 30, grant_scope: rule, break_glass: true}
chains:
  c:
    stages:
      - {name: s, groups: [g, g], quorum: ALL, timeout: 1h30m, escalate_to: [h]}
    grant: {ttl: 2m}
rules:
  - id: r
    match: {environments: [PROD, stg], kinds: [SQL], statements: [DELETE], risk: High}
    outcome: Require_Approval
    chain: c
"""
    policy = load_policy_text(text)
    rule = policy.rules[0]
    assert rule.outcome is Outcome.REQUIRE_APPROVAL
    assert rule.match.environments == frozenset({"production", "staging"})
    assert rule.match.kinds == frozenset({ActionKind.SQL})
    assert rule.match.risk is Risk.HIGH
    assert rule.match.statements is not None
    assert rule.match.statements.match("delete")
    chain = policy.chains["c"]
    assert chain is rule.chain or chain == rule.chain
    stage = chain.stages[0]
    assert stage.groups == ("g",)
    assert stage.quorum is Quorum.ALL
    assert stage.timeout == timedelta(minutes=90)
    assert chain.ttl == timedelta(minutes=90)  # from defaults
    assert chain.break_glass is True
    # A grant mapping sets the scope (default action) and ttl; unset ttl → defaults.
    assert chain.grant_scope is GrantScope.ACTION
    assert chain.grant_ttl == timedelta(minutes=2)
    assert policy.timezone.key == "Europe/Berlin"


def test_defaults_chain_serves_rules_without_chain_and_the_default() -> None:
    text = """\
version: 1
default: require_approval
defaults:
  chain: {stages: [{name: a, groups: [ops]}]}
rules:
  - id: r
    match: {kinds: [shell]}
    outcome: require_approval
"""
    policy = load_policy_text(text)
    assert policy.default_chain is not None
    assert policy.rules[0].chain == policy.default_chain


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), ("1h30m", 5400), ("45", 45),
     (" 10 M ", 600)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(seconds) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "5 minutes", "1w", "-5m", "m", "5m5", "0s", 0, -3, True, 1.5,
                                 None, [5], "366d", 10**30, "9" * 40 + "d"])
def test_bad_durations(bad: object) -> None:
    from pydantic_core import PydanticCustomError

    with pytest.raises(PydanticCustomError):
        parse_duration(bad)


@given(st.sampled_from(["s", "m", "h", "d"]), st.data())
def test_duration_units(unit: str, data: st.DataObject) -> None:
    factor = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    n = data.draw(st.integers(1, 365 * 86400 // factor))
    assert parse_duration(f"{n}{unit}") == timedelta(seconds=n * factor)
    assert parse_duration(n * factor) == timedelta(seconds=n * factor)


# --- never a traceback ------------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(
        ["sql", "prod", "deny", "allow", "require_approval", "medium", "hgih", "5m", "x",
         "sql.drop*", "nope.*", "time.hour > 3", "time.hour", "approvers", ""]
    ),
)
_keys = st.sampled_from(
    ["version", "name", "timezone", "default", "defaults", "chains", "rules", "id", "match",
     "unless", "outcome", "chain", "stages", "groups", "approvals", "kinds", "environments",
     "findings", "risk", "when", "ttl", "grant", "scope", "timeout", "bogus"]
)
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_keys, children, max_size=4)
    ),
    max_leaves=20,
)


def problems_or_none(text: str) -> tuple[str, ...] | None:
    """The problems of ``text``, or None if it loads; anything else propagates."""
    try:
        load_policy_text(text, source="fuzz.yaml")
    except PolicyError as error:
        return tuple(str(p) for p in error.problems)
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_arbitrary_documents_load_or_fail_cleanly(document: object) -> None:
    found = problems_or_none(yaml.safe_dump(document))
    if found is not None:
        assert found
        assert all(p.startswith("fuzz.yaml") for p in found)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_fails_cleanly(text: str) -> None:
    found = problems_or_none(text)
    assert found is None or found


def test_policy_fixture_loads() -> None:
    policy = load_policy(POLICIES / "acme.yaml")
    assert [r.id for r in policy.rules] == [
        "prod-dangerous", "privileges", "billing-no-drop", "night-deploys", "contractors-delete"
    ]
    assert policy.source.endswith("acme.yaml")


def test_non_string_keys_are_explained() -> None:
    assert_problem(
        edit("    outcome: require_approval\n", "    outcome: require_approval\n    on: x\n"),
        9, "rules[0]", "key True is not a string: quote it",
    )
