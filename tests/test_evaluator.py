"""The evaluator: caching, fingerprints and failing closed."""

from __future__ import annotations

import pytest

from jitgate.actions import Action, Analysis, Risk
from jitgate.evaluator import MAX_CACHED_TEXT, Evaluator
from jitgate.policy import Decision, Outcome, Policy, default_policy


def test_cached_and_uncached_decisions_are_identical() -> None:
    evaluator = Evaluator()
    action = Action.create("sql", "SELECT 1; DELETE FROM invoices", environment="production")
    first = evaluator.evaluate(action)
    second = evaluator.evaluate(action)
    fresh = Evaluator().evaluate(action)
    for decision in (second, fresh):
        assert decision.to_dict() == first.to_dict()
    assert first.outcome is Outcome.REQUIRE_APPROVAL


def test_cache_is_keyed_by_target_and_environment_for_fingerprints() -> None:
    evaluator = Evaluator()
    a = evaluator.evaluate(Action.create("sql", "SELECT 1", target="a", environment="production"))
    b = evaluator.evaluate(Action.create("sql", "SELECT 1", target="b", environment="production"))
    assert a.fingerprint != b.fingerprint
    assert (
        a.fingerprint
        == Action.create("sql", "SELECT 1", target="a", environment="production").fingerprint()
    )


def test_huge_text_is_evaluated_but_not_cached() -> None:
    evaluator = Evaluator()
    text = "SELECT 1 -- " + "x" * MAX_CACHED_TEXT + "\n; TRUNCATE invoices"
    decision = evaluator.evaluate(Action.create("sql", text, environment="production"))
    assert decision.outcome is Outcome.REQUIRE_APPROVAL
    assert evaluator._analysis.cache_info().currsize == 0  # type: ignore[attr-defined]


class BrokenPolicy:
    rules = ()

    def evaluate(self, action: Action, analysis: Analysis, fingerprint: str) -> Decision:
        raise RuntimeError("boom")


def test_a_policy_that_raises_denies() -> None:
    evaluator = Evaluator(BrokenPolicy())  # type: ignore[arg-type]
    decision = evaluator.evaluate(Action.create("sql", "SELECT 1", environment="production"))
    assert decision.outcome is Outcome.DENY
    assert decision.risk >= Risk.HIGH
    assert "boom" in decision.reasons[0]


def test_an_analyzer_that_raises_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    import jitgate.actions.analyzers as analyze_module

    def explode(text: str) -> Analysis:
        raise MemoryError("no memory")

    monkeypatch.setattr(analyze_module, "analyze_sql", explode)
    decision = Evaluator().evaluate(Action.create("sql", "SELECT 1", environment="production"))
    assert decision.outcome is not Outcome.ALLOW
    assert "action.invalid" in decision.analysis.codes


def test_default_policy_is_shared_and_compiled_once() -> None:
    assert default_policy() is default_policy()
    assert isinstance(Evaluator().policy, Policy)
