"""The action model and the analyzers that say what an action would do."""

from jitgate.actions.analyzers import analyze, analyze_text
from jitgate.actions.findings import FINDING_CODES, Analysis, Finding, FindingType, Risk, Unit
from jitgate.actions.model import (
    Action,
    ActionKind,
    Actor,
    InvalidAction,
    canonical_environment,
    fingerprint,
)

__all__ = [
    "FINDING_CODES",
    "Action",
    "ActionKind",
    "Actor",
    "Analysis",
    "Finding",
    "FindingType",
    "InvalidAction",
    "Risk",
    "Unit",
    "analyze",
    "analyze_text",
    "canonical_environment",
    "fingerprint",
]
