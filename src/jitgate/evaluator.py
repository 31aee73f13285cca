"""From an attempted action to a decision: analysis, fingerprint, policy.

The :class:`Evaluator` is what the CLI, the server and the gateways call. It
is pure computation with bounded in-memory caches: statement texts repeat (an
ORM sends the same few hundred statements all day), so the analysis of a text
and its fingerprint are computed once. When the policy has no CEL condition,
a decision depends only on the kind, text, target, environment, user and
groups, so whole decisions for text actions are memoised on exactly those.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from jitgate.actions.analyzers import analyze, analyze_text
from jitgate.actions.findings import Analysis, Risk
from jitgate.actions.model import BOUND_PARAMETERS, TEXT_KINDS, Action, ActionKind, fingerprint
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

    def _evaluate(self, action: Action) -> Decision:
        analysis = self.analyze(action)
        digest = self.fingerprint(action)
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
        self._fingerprint.cache_clear()  # type: ignore[attr-defined]


_DecisionKey = tuple[str, str, str, str, frozenset[str]]


def _text_fingerprint(kind: ActionKind, text: str, target: str, environment: str) -> str:
    return fingerprint(Action(kind=kind, text=text, target=target, environment=environment))
