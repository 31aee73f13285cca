"""The policy engine and the default catalog.

A policy is a YAML file of rules over analyzed actions (see
``docs/policies.md``); loaded and compiled once, it decides on each action
with :meth:`Policy.evaluate`: allow, require approval (with the approval
chain to satisfy) or deny, with the reasons pointing at the exact statement
or command.
"""

from jitgate.policy.catalog import default_policy
from jitgate.policy.decision import Decision, Outcome
from jitgate.policy.engine import Policy
from jitgate.policy.errors import PolicyError, PolicyProblem
from jitgate.policy.lint import LintWarning, lint_policy
from jitgate.policy.loader import load_policy, load_policy_text
from jitgate.policy.testing import CaseResult, CaseStatus, PolicyTestReport, run_policy_tests

__all__ = [
    "CaseResult",
    "CaseStatus",
    "Decision",
    "LintWarning",
    "Outcome",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "PolicyTestReport",
    "default_policy",
    "lint_policy",
    "load_policy",
    "load_policy_text",
    "run_policy_tests",
]
