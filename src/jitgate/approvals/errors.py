"""Why the approval state machine refuses a command.

Every refusal is an :class:`ApprovalError` subclass with a stable ``code``:
adapters map codes to HTTP statuses and CLI messages, the audit trail records
them, and clients may branch on them. Codes never change meaning once
released; the message is for humans and may change.
"""

from __future__ import annotations

from typing import ClassVar


class ApprovalError(Exception):
    """A command the approval state machine refuses."""

    code: ClassVar[str] = "approval_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code.replace("_", " "))

    @property
    def message(self) -> str:
        return str(self.args[0])


# --- input that is not usable --------------------------------------------------


class InvalidChainError(ApprovalError):
    code = "invalid_chain"


class InvalidRequestError(ApprovalError):
    """The request cannot be created from what was given."""

    code = "invalid_request"


class ApprovalNotRequiredError(ApprovalError):
    code = "approval_not_required"


class DecisionMismatchError(ApprovalError):
    """The decision was made for a different action than the one held."""

    code = "decision_mismatch"


class InvalidTimeError(ApprovalError):
    code = "invalid_time"


class AnonymousActorError(ApprovalError):
    """No user name: nobody can be held to account, and self-approval checks
    would compare blanks."""

    code = "anonymous_actor"


# --- who may do what ----------------------------------------------------------


class SelfApprovalError(ApprovalError):
    code = "self_approval"


class SelfDenialError(ApprovalError):
    """The requester withdraws with ``cancel``; a denial is an approver's verdict."""

    code = "self_denial"


class SelfReviewError(ApprovalError):
    code = "self_review"


class NotEligibleError(ApprovalError):
    code = "not_eligible"


class NotRequesterError(ApprovalError):
    code = "not_requester"


class NotExecutorError(ApprovalError):
    code = "not_executor"


class AlreadyApprovedError(ApprovalError):
    """The approver already approved this stage."""

    code = "already_approved"


class AlreadyFilledStageError(ApprovalError):
    """The approver already approved another stage: one person fills at most one."""

    code = "already_filled_stage"


class GroupSatisfiedError(ApprovalError):
    """Quorum ALL: every group the approver could count for has its approvals."""

    code = "group_satisfied"


class MfaRequiredError(ApprovalError):
    code = "mfa_required"


class MfaInvalidError(ApprovalError):
    code = "mfa_invalid"


class MfaReplayedError(ApprovalError):
    code = "mfa_replayed"


class InvalidTotpSecretError(ApprovalError):
    code = "totp_secret_invalid"


class ReasonRequiredError(ApprovalError):
    code = "reason_required"


class JustificationRequiredError(ApprovalError):
    code = "justification_required"


class BreakGlassNotAllowedError(ApprovalError):
    code = "break_glass_not_allowed"


# --- the request's state ------------------------------------------------------


class NotPendingError(ApprovalError):
    code = "not_pending"


class RequestExpiredError(ApprovalError):
    code = "request_expired"


class NotApprovedError(ApprovalError):
    code = "not_approved"


class NotExecutingError(ApprovalError):
    code = "not_executing"


class OutcomeRequiredError(ApprovalError):
    code = "outcome_required"


class ReviewNotRequiredError(ApprovalError):
    code = "review_not_required"


class AlreadyReviewedError(ApprovalError):
    code = "already_reviewed"


# --- grants ---------------------------------------------------------------------


class NoGrantError(ApprovalError):
    code = "no_grant"


class GrantMismatchError(ApprovalError):
    code = "grant_mismatch"


class GrantUsedError(ApprovalError):
    code = "grant_used"


class GrantExpiredError(ApprovalError):
    code = "grant_expired"


class GrantRevokedError(ApprovalError):
    code = "grant_revoked"


#: Every refusal code, for adapters that map them exhaustively.
_REFUSALS: list[type[ApprovalError]] = [ApprovalError, *ApprovalError.__subclasses__()]
ERROR_CODES: frozenset[str] = frozenset(cls.code for cls in _REFUSALS)
