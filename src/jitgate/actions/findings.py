"""What analyzers report: findings, risk levels and the analysis of one action.

Finding codes are a stable vocabulary: policies match on them (with globs such
as ``sql.drop*``), the audit trail records them and the analytics group by
them. Every code an analyzer may emit is listed in :data:`FINDING_CODES` with
its default risk; a test checks that no analyzer emits an unlisted code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum


class Risk(IntEnum):
    NONE = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Risk:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            allowed = ", ".join(r.label for r in cls)
            raise ValueError(f"unknown risk level {name!r} (expected one of: {allowed})") from None


@dataclass(frozen=True, slots=True)
class FindingType:
    code: str
    risk: Risk
    title: str


def _types(*entries: tuple[str, Risk, str]) -> Mapping[str, FindingType]:
    return {code: FindingType(code, risk, title) for code, risk, title in entries}


N, L, M, H, C = Risk.NONE, Risk.LOW, Risk.MEDIUM, Risk.HIGH, Risk.CRITICAL

#: Every finding code, its default risk and a one-line title.
#: ``risk >= MEDIUM`` means dangerous: the default catalog holds it in production.
FINDING_CODES: Mapping[str, FindingType] = _types(
    # --- SQL (PostgreSQL dialect) -------------------------------------------
    ("sql.parse_error", C, "SQL text that does not parse (held: fail closed)"),
    ("sql.delete_without_where", H, "DELETE without a WHERE clause"),
    ("sql.update_without_where", H, "UPDATE without a WHERE clause"),
    ("sql.always_true_where", H, "DELETE/UPDATE whose WHERE matches every row"),
    ("sql.merge", M, "MERGE that may update or delete rows"),
    ("sql.nested_dml", M, "data-modifying statement nested inside another statement"),
    ("sql.truncate", H, "TRUNCATE"),
    ("sql.drop", H, "DROP of a persistent object"),
    ("sql.drop_database", C, "DROP DATABASE"),
    ("sql.drop_schema", C, "DROP SCHEMA"),
    ("sql.schema_change", M, "CREATE/ALTER of a persistent object"),
    ("sql.privilege_change", C, "GRANT/REVOKE or default privileges change"),
    ("sql.role_change", C, "role or user created, altered or dropped"),
    ("sql.server_change", C, "server-level change (ALTER SYSTEM, LOAD, tablespaces, ...)"),
    ("sql.replication_role", H, "SET session_replication_role (disables triggers and FKs)"),
    ("sql.copy_program", C, "COPY ... PROGRAM runs a program on the server"),
    ("sql.copy_server_file", H, "COPY to or from a file on the server"),
    ("sql.dangerous_function", H, "call of a dangerous server function"),
    ("sql.dynamic_sql", H, "dynamic SQL the analyzer cannot see into"),
    ("sql.heavy_lock", M, "statement that takes a heavy lock"),
    ("sql.unclassified", M, "statement type the analyzer does not know to be safe"),
    # --- shell and infrastructure commands -----------------------------------
    ("shell.parse_error", C, "command line that does not parse (held: fail closed)"),
    ("shell.dynamic_command", H, "command built at run time the analyzer cannot see into"),
    ("shell.unseen_script", M, "runs a script or file whose content is not visible"),
    ("shell.remote_code", H, "downloads and runs code"),
    ("shell.rm", L, "removes files"),
    ("shell.rm_recursive", H, "removes a directory tree"),
    ("shell.rm_system_path", C, "removes a root or system path"),
    ("shell.find_delete", H, "find that deletes what it finds"),
    ("shell.disk_write", C, "raw write to a disk or device (dd, mkfs, wipefs, shred, ...)"),
    ("shell.dd", M, "dd copy"),
    ("shell.permissions_recursive", M, "recursive chmod/chown"),
    ("shell.system_file_write", H, "overwrites a system file"),
    ("shell.power", H, "shutdown, reboot or halt"),
    ("shell.service_stop", H, "stops, disables or masks a service"),
    ("shell.service_restart", M, "restarts a service"),
    ("shell.process_kill", M, "kills processes"),
    ("shell.kubectl_delete", H, "kubectl delete"),
    ("shell.kubectl_drain", H, "kubectl drain/cordon"),
    ("shell.kubectl_scale_zero", H, "kubectl scale to zero replicas"),
    ("shell.kubectl_change", M, "kubectl apply/replace/patch/edit/rollout/set/create"),
    ("shell.kubectl_exec", M, "kubectl exec into a running container"),
    ("shell.helm_uninstall", H, "helm uninstall/delete"),
    ("shell.helm_change", M, "helm install/upgrade/rollback"),
    ("shell.terraform_destroy", C, "terraform destroy (or apply -destroy)"),
    ("shell.terraform_apply_auto", H, "terraform apply -auto-approve"),
    ("shell.terraform_change", M, "terraform apply/import/state change"),
    ("shell.cloud_destroy", H, "cloud CLI destructive verb (aws/gcloud/az/gsutil)"),
    ("shell.cloud_change", M, "cloud CLI modifying verb"),
    ("shell.git_force_push", H, "git push --force or remote branch deletion"),
    ("shell.git_destructive", M, "git command that discards work (reset --hard, clean -fdx)"),
    ("shell.docker_prune", H, "docker system/volume prune"),
    ("shell.docker_remove", M, "docker rm/rmi/volume rm"),
    ("shell.redis_flush", H, "redis-cli FLUSHALL/FLUSHDB"),
    ("shell.redis_admin", H, "redis-cli SHUTDOWN/CONFIG SET/DEBUG"),
    ("shell.database_session", L, "opens an interactive database session"),
    # --- structured kinds ------------------------------------------------------
    ("deploy.release", M, "deployment of a new version"),
    ("deploy.rollback", M, "deployment rollback"),
    ("deploy.scale_down", H, "deployment scaled to zero or torn down"),
    ("tool.destructive", H, "AI agent tool call with a destructive verb"),
    ("tool.call", L, "AI agent tool call"),
    ("custom.destructive", H, "custom action with a destructive verb (delete, cancel, ...)"),
    ("http.delete", M, "HTTP DELETE"),
    ("http.write", L, "HTTP write (POST/PUT/PATCH)"),
    ("action.invalid", C, "action that could not be analyzed (held: fail closed)"),
)

del N, L, M, H, C


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing an analyzer noticed about one statement or command.

    ``unit`` is the 0-based index of the statement (SQL) or command (shell)
    the finding is about, ``excerpt`` its exact text, so a reason can point at
    it; ``subject`` names the object concerned (a table, a path, a namespace).
    """

    code: str
    risk: Risk
    message: str
    unit: int = 0
    excerpt: str = ""
    subject: str = ""

    @classmethod
    def of(
        cls,
        code: str,
        message: str,
        *,
        unit: int = 0,
        excerpt: str = "",
        subject: str = "",
        risk: Risk | None = None,
    ) -> Finding:
        """A finding with the code's default risk unless one is given."""
        return cls(
            code=code,
            risk=FINDING_CODES[code].risk if risk is None else risk,
            message=message,
            unit=unit,
            excerpt=excerpt,
            subject=subject,
        )


@dataclass(frozen=True, slots=True)
class Unit:
    """One statement (SQL) or one command that would run (shell).

    ``type`` is a short lower-case name: ``delete``, ``select``,
    ``create_table`` for SQL; the command with its verb for shell
    (``rm``, ``kubectl delete``, ``terraform apply``).
    """

    index: int
    type: str
    text: str


@dataclass(frozen=True, slots=True)
class Analysis:
    """The analysis of one action: the units it consists of and the findings."""

    units: tuple[Unit, ...] = ()
    findings: tuple[Finding, ...] = ()
    codes: frozenset[str] = field(default=frozenset())
    risk: Risk = Risk.NONE

    @classmethod
    def of(cls, units: tuple[Unit, ...], findings: tuple[Finding, ...]) -> Analysis:
        return cls(
            units=units,
            findings=findings,
            codes=frozenset(f.code for f in findings),
            risk=max((f.risk for f in findings), default=Risk.NONE),
        )

    @property
    def dangerous(self) -> bool:
        return self.risk >= Risk.MEDIUM


#: Longest excerpt kept in a finding; reasons quote it, and a 10 MB statement
#: must not turn into a 10 MB reason.
MAX_EXCERPT = 200


def excerpt(text: str, limit: int = MAX_EXCERPT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
