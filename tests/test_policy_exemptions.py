"""``unless`` exemptions must cover the whole action.

An exemption for reviewed index builds must not carry a ``DROP TABLE`` sent
in the same batch; an exemption for heavy locks must not cover a truncate.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.actions import Action, Analysis, Finding, Risk, Unit
from jitgate.policy import Outcome, load_policy_text

POLICY = load_policy_text(
    """
version: 1
chains:
  one: {stages: [{name: approvers, groups: [approvers]}]}
rules:
  - id: by-statement
    match: {kinds: [sql], risk: medium}
    unless: {users: [bot], statements: [create_index, alter_table]}
    outcome: require_approval
    chain: one
  - id: by-finding
    match: {kinds: [shell], risk: medium}
    unless: {findings: ["shell.service_restart", "shell.kubectl_change"]}
    outcome: require_approval
    chain: one
""",
    source="exemptions.yaml",
)

STATEMENT_TYPES = ["create_index", "alter_table", "drop", "delete", "select"]
SHELL_CODES = ["shell.service_restart", "shell.kubectl_change", "shell.rm_recursive",
               "shell.kubectl_delete"]


@settings(max_examples=400, deadline=None)
@given(types=st.lists(st.sampled_from(STATEMENT_TYPES), min_size=1, max_size=4),
       user=st.sampled_from(["bot", "ann"]))
def test_statement_exemption_needs_every_statement_exempt(types: list[str], user: str) -> None:
    units = tuple(Unit(i, t, f"stmt {i}") for i, t in enumerate(types))
    findings = (Finding("sql.schema_change", Risk.MEDIUM, "m"),)
    analysis = Analysis.of(units, findings)
    action = Action.create("sql", "x", user=user)
    decision = POLICY.evaluate(action, analysis, "fp")
    exempt = user == "bot" and all(t in {"create_index", "alter_table"} for t in types)
    assert (decision.outcome is Outcome.ALLOW) == exempt


@settings(max_examples=400, deadline=None)
@given(codes=st.lists(st.sampled_from(SHELL_CODES), min_size=1, max_size=4, unique=True))
def test_finding_exemption_needs_every_finding_exempt(codes: list[str]) -> None:
    findings = tuple(Finding(code, Risk.MEDIUM, "m", unit=0) for code in codes)
    analysis = Analysis.of((Unit(0, "cmd", "cmd"),), findings)
    decision = POLICY.evaluate(Action.create("shell", "x"), analysis, "fp")
    exempt = set(codes) <= {"shell.service_restart", "shell.kubectl_change"}
    assert (decision.outcome is Outcome.ALLOW) == exempt


def test_the_real_analyzer_cannot_smuggle_a_drop_past_an_index_exemption() -> None:
    from jitgate.evaluator import Evaluator

    evaluator = Evaluator(POLICY)
    index = Action.create("sql", "CREATE INDEX i ON t (a)", user="bot")
    both = Action.create("sql", "CREATE INDEX i ON t (a); DROP TABLE payments", user="bot")
    assert evaluator.evaluate(index).outcome is Outcome.ALLOW
    assert evaluator.evaluate(both).outcome is Outcome.REQUIRE_APPROVAL
