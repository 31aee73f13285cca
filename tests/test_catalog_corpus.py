"""The labelled corpora through the whole evaluation with the default catalog.

The analyzer tests check findings; this checks what a user sees: in production
every case labelled ``hold`` needs a person (require_approval or deny) and
every ``allow`` case runs; outside production the catalog only records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jitgate.actions import Action
from jitgate.evaluator import Evaluator
from jitgate.policy import Outcome

CORPUS = Path(__file__).parent / "corpus"
EVALUATOR = Evaluator()


def cases() -> list[Any]:
    out = []
    for name in ("sql", "shell"):
        lines = (CORPUS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if line.strip():
                case = json.loads(line)
                out.append(pytest.param(name, case, id=f"{name}:{number}:{case.get('note', '')}"))
    return out


CASES = cases()


def test_corpus_is_large_enough() -> None:
    kinds = [p.values[0] for p in CASES]
    assert kinds.count("sql") >= 150
    assert kinds.count("shell") >= 60


@pytest.mark.parametrize(("kind", "case"), CASES)
def test_production_holds_exactly_the_dangerous_cases(kind: str, case: dict[str, Any]) -> None:
    decision = EVALUATOR.evaluate(Action.create(kind, case["text"], environment="production"))
    held = decision.outcome is not Outcome.ALLOW
    assert held == (case["expect"] == "hold"), decision.reasons
    if held:
        assert decision.rules, "a held action names the rule that held it"
        assert decision.reasons


@pytest.mark.parametrize(("kind", "case"), CASES)
def test_prod_alias_decides_like_production(kind: str, case: dict[str, Any]) -> None:
    full = EVALUATOR.evaluate(Action.create(kind, case["text"], environment="production"))
    alias = EVALUATOR.evaluate(Action.create(kind, case["text"], environment="prod"))
    assert (alias.outcome, alias.rules, alias.fingerprint) == (
        full.outcome,
        full.rules,
        full.fingerprint,
    )


@pytest.mark.parametrize(("kind", "case"), CASES)
def test_outside_production_the_catalog_only_records(kind: str, case: dict[str, Any]) -> None:
    decision = EVALUATOR.evaluate(Action.create(kind, case["text"], environment="staging"))
    assert decision.outcome is Outcome.ALLOW
    production = EVALUATOR.evaluate(Action.create(kind, case["text"], environment="production"))
    assert decision.risk == production.risk, "the risk is still recorded outside production"
