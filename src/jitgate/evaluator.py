"""From an attempted action to a decision: analysis, fingerprint, policy.

The :class:`Evaluator` is what the CLI, the server and the gateways call. It
is pure computation with bounded in-memory caches: statement texts repeat (an
ORM sends the same few hundred statements all day), so the analysis of a text
and its fingerprint are computed once. When the policy has no CEL condition,
a decision depends only on the kind, text, target, environment, user and
groups, so whole decisions for text actions are memoised on exactly those.

:meth:`Evaluator.allows` answers the one question a gateway asks of every
statement, "may it run now?", without analysing each text anew: statements
such as ``SELECT abalance FROM pgbench_accounts WHERE aid = 48213`` differ
from one call to the next only in their constants. When the analyzer proves
that its analysis of a statement does not depend on any constant's value
(it is *constant-free*, see :func:`jitgate.actions.sql.analyze_sql_shaped`)
and the statement is allowed, the statement's *shape* (its tokens from the
PostgreSQL lexer, constants replaced by their kind) is remembered, and every
later text of that shape is allowed after a scan of its tokens, without a
parse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import TypeVar

from jitgate.actions.analyzers import analyze, analyze_text
from jitgate.actions.findings import Analysis, Risk
from jitgate.actions.model import (
    BOUND_PARAMETERS,
    TEXT_KINDS,
    Action,
    ActionKind,
    Actor,
    fingerprint,
)
from jitgate.actions.sql import analyze_sql_shaped, may_have_shape_worth_caching, sql_shape
from jitgate.policy import Decision, Outcome, Policy, default_policy

#: Texts longer than this are analysed every time: caching a 10 MB statement
#: would pin it in memory for little gain.
MAX_CACHED_TEXT = 64 * 1024


class Evaluator:
    """Evaluates actions against one compiled policy."""

    def __init__(
        self,
        policy: Policy | None = None,
        cache_size: int = 8192,
        *,
        memoize_decisions: bool = True,
    ) -> None:
        self.policy = policy if policy is not None else default_policy()
        self._cache_size = cache_size
        # Per text kind; None where decisions may depend on time or attributes.
        memoize = memoize_decisions and not getattr(self.policy, "conditional", True)
        self._decisions: dict[ActionKind, dict[_DecisionKey, Decision]] | None = (
            {k: {} for k in TEXT_KINDS} if memoize else None
        )
        # For allows(), when decisions are memoised: SQL texts known to be
        # allowed, and shapes every text of which is allowed (keys as
        # _DecisionKey, with the shape in place of the text).
        self._allowed: dict[_DecisionKey, bool] | None = {} if memoize else None
        self._shapes: dict[_DecisionKey, bool] | None = {} if memoize else None
        self._analysis: Callable[[ActionKind, str], Analysis] = lru_cache(maxsize=cache_size)(
            analyze_text
        )
        self._fingerprint: Callable[[ActionKind, str, str, str], str] = lru_cache(
            maxsize=cache_size
        )(_text_fingerprint)

    @property
    def memoizes(self) -> bool:
        """Whether a text's decision depends only on the text, target,
        environment, user and groups (the policy has no conditions), so a
        caller may remember it."""
        return self._decisions is not None

    def analyze(self, action: Action) -> Analysis:
        if action.kind in TEXT_KINDS:
            if len(action.text) <= MAX_CACHED_TEXT:
                return self._analysis(action.kind, action.text)
            return analyze_text(action.kind, action.text)
        return analyze(action)

    def fingerprint(self, action: Action) -> str:
        if (
            action.kind in TEXT_KINDS
            and len(action.text) <= MAX_CACHED_TEXT
            and BOUND_PARAMETERS not in action.attributes
        ):
            return self._fingerprint(action.kind, action.text, action.target, action.environment)
        return fingerprint(action)

    def evaluate(self, action: Action) -> Decision:
        memo = self._decisions
        if (
            memo is None
            or action.kind not in TEXT_KINDS
            or len(action.text) > MAX_CACHED_TEXT
            or action.attributes  # e.g. bound parameters: part of the fingerprint
        ):
            return self._evaluate(action)
        decisions = memo[action.kind]
        actor = action.actor
        key = (action.text, action.target, action.environment, actor.user, actor.groups)
        decision = decisions.get(key)
        if decision is None:
            decision = self._evaluate(action)
            if len(decisions) >= self._cache_size:
                del decisions[next(iter(decisions))]  # oldest first
            decisions[key] = decision
        return decision

    def allows(self, text: str, target: str, environment: str, actor: Actor) -> bool:
        """Whether the SQL ``text`` may run: True exactly when
        ``evaluate(Action(kind=ActionKind.SQL, text=text, target=target,
        environment=environment, actor=actor))`` would be
        :attr:`Outcome.ALLOW` (with the time of the call; attributes such as
        bound parameters never change the outcome of a memoising evaluator).

        Fast for statements that differ only in their constants: when
        decisions are memoised (:attr:`memoizes`), an allowed statement whose
        analysis the analyzer proves independent of every constant's value
        makes its shape (:func:`jitgate.actions.sql.sql_shape`) allowed for
        this target, environment, user and groups, and later texts of that
        shape are answered from their tokens alone. Texts longer than
        :data:`MAX_CACHED_TEXT` or holding a NUL are evaluated every time.

        A statement that is not allowed is fully decided (fingerprint
        included) and memoised as :meth:`evaluate` would, so the
        ``evaluate()`` that usually follows a False costs a lookup.
        """
        shapes = self._shapes
        allowed = self._allowed
        decisions = self._decisions
        if (
            shapes is None
            or allowed is None
            or decisions is None
            or len(text) > MAX_CACHED_TEXT
            or "\x00" in text
        ):
            action = Action(
                kind=_SQL, text=text, target=target, environment=environment, actor=actor
            )
            return self._decide(action, self.analyze(action), "").outcome is _ALLOW
        user = actor.user
        groups = actor.groups
        key = (text, target, environment, user, groups)
        if key in allowed:
            return True
        memo = decisions[_SQL]
        decision = memo.get(key)
        if decision is not None:
            return decision.outcome is _ALLOW
        shape = sql_shape(text) if may_have_shape_worth_caching(text) else None
        # A text without constants is its own shape: the exact memo covers it.
        shape_key = (
            None if shape is None or shape is text else (shape, target, environment, user, groups)
        )
        if shape_key is not None and shape_key in shapes:
            return True
        action = Action(kind=_SQL, text=text, target=target, environment=environment, actor=actor)
        analysis, constant_free = analyze_sql_shaped(text)
        decision = self._decide(action, analysis, "")
        if decision.outcome is _ALLOW:
            _remember(allowed, key, True, self._cache_size)
            if constant_free and shape_key is not None:
                _remember(shapes, shape_key, True, self._cache_size)
            return True
        # The caller will ask evaluate() for the whole decision next.
        decision = replace(decision, fingerprint=self.fingerprint(action))
        _remember(memo, key, decision, self._cache_size)
        return False

    def _evaluate(self, action: Action) -> Decision:
        return self._decide(action, self.analyze(action), self.fingerprint(action))

    def _decide(self, action: Action, analysis: Analysis, digest: str) -> Decision:
        try:
            return self.policy.evaluate(action, analysis, digest)
        except Exception as error:
            return Decision(
                outcome=Outcome.DENY,
                risk=max(analysis.risk, Risk.HIGH),
                rules=(),
                reasons=(f"policy evaluation failed ({type(error).__name__}: {error}); denied",),
                fingerprint=digest,
                analysis=analysis,
                message="jitgate could not evaluate its policy; the action is denied",
            )

    def clear_cache(self) -> None:
        self._analysis.cache_clear()  # type: ignore[attr-defined]
        if self._decisions is not None:
            for decisions in self._decisions.values():
                decisions.clear()
        for table in (self._allowed, self._shapes):
            if table is not None:
                table.clear()
        self._fingerprint.cache_clear()  # type: ignore[attr-defined]


_DecisionKey = tuple[str, str, str, str, frozenset[str]]
_SQL = ActionKind.SQL
_ALLOW = Outcome.ALLOW
_V = TypeVar("_V")


def _remember(table: dict[_DecisionKey, _V], key: _DecisionKey, value: _V, limit: int) -> None:
    """Add ``key`` to a bounded table, dropping the oldest entry when full."""
    if limit <= 0:
        return
    if len(table) >= limit:
        oldest = next(iter(table), None)
        if oldest is not None:
            table.pop(oldest, None)
    table[key] = value


def _text_fingerprint(kind: ActionKind, text: str, target: str, environment: str) -> str:
    return fingerprint(Action(kind=kind, text=text, target=target, environment=environment))
