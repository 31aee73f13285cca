"""The PostgreSQL gateway's configuration (``jitgate gateway postgres --config``).

::

    name: postgres                    # optional: the gateway's name (default postgres)
    listen: "127.0.0.1:6432"          # optional (this is the default)
    default_target: app               # optional: for a database name no target has
    hold_timeout_seconds: 3600        # optional: how long a held statement waits
    max_message_bytes: 67108864       # optional: largest protocol message (64 MiB)
    tls:                              # optional: TLS towards the gateway's clients
      mode: require                   # disable | allow | require (default allow)
      cert: /etc/jitgate/gateway.crt
      key: /etc/jitgate/gateway.key
    server:                           # optional: a standalone gateway's jitgate server
      url: https://jitgate.example.com
      token_env: JITGATE_TOKEN        # or token: / token_file:
    audit_batch: {max_records: 1000, max_delay_ms: 250}
    workers: 4                        # optional: gateway processes on the listen port
                                      # (jitgate proxy postgres only; default 1)
    metrics: "127.0.0.1:9187"         # optional: serve GET /metrics (Prometheus) there
                                      # (jitgate proxy postgres only; default: none)
    targets:
      - name: app                     # clients connect with database=app
        environment: production
        description: the billing database
        upstream: postgresql://jitgate@db.internal:5432/app?sslmode=verify-full
      - name: reports
        environment: staging
        upstream:                     # the mapping form: a DSN and/or fields
          dsn: postgresql://reporter@db.internal/reports
          password_file: /run/secrets/reporter   # or password_env: / password:

Every model is closed (an unknown key is an error). A file that cannot be used
raises :class:`GatewayConfigError` with one ``file:line: field.path: message``
per problem. Passwords and tokens are :class:`pydantic.SecretStr`: no
``repr``, ``str``, dump or error message of the configuration shows them (nor
does an error echo the DSN it could not parse). ``password_file`` and
``token_file`` are read when the secret is needed (so a rotated file is picked
up), and checked when the file is loaded. Relative paths in the file are
relative to the file's directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from jitgate.policy.errors import Path as FieldPath
from jitgate.policy.errors import PolicyError, PolicyProblem
from jitgate.policy.loader import problem_of
from jitgate.policy.model import field_error
from jitgate.policy.source import SourceMap, describe_type, parse_yaml

SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
TlsMode = Literal["disable", "allow", "require"]

DEFAULT_PORT = 5432
DEFAULT_LISTEN = "127.0.0.1:6432"
#: The most gateway processes one listen port may have: more than the cores
#: of any machine the gateway is meant for only adds memory and upstream logins.
MAX_WORKERS = 64
#: The DSN query parameters understood (libpq's names).
DSN_PARAMETERS = ("sslmode", "sslrootcert", "application_name")
#: Other libpq parameters: named in an error. Anything else is not shown, as
#: it may be a piece of a password whose '?' or '&' was not percent-encoded.
_LIBPQ_PARAMETERS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "gssencmode",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "krbsrvname",
        "gsslib",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
        "require_auth",
        "sslcertmode",
    }
)
_ENCODE_HINT = "percent-encode '@', ':', '/', '?', '&' and '%' in the user name and password"

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.$-]*")


def _name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise field_error(
            "name",
            f"{value[:70]!r} is not a valid name: use letters, digits and _ . $ - (not first)",
        )
    return value


#: A target, environment or gateway name.
Name = Annotated[str, Field(min_length=1, max_length=63), AfterValidator(_name)]


class GatewayConfigError(ValueError):
    """A gateway configuration that cannot be used (one line per problem)."""

    def __init__(self, problems: Iterable[PolicyProblem]) -> None:
        self.problems: tuple[PolicyProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class _Closed(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=True, hide_input_in_errors=True
    )


def _base_dir(info: ValidationInfo) -> Path | None:
    context = info.context
    if isinstance(context, Mapping):
        base = context.get("base_dir")
        if isinstance(base, Path):
            return base
    return None


def _relative_to_file(value: Path | None, info: ValidationInfo) -> Path | None:
    """A relative path in a config file is relative to the file's directory."""
    base = _base_dir(info)
    if value is None or value.is_absolute() or base is None:
        return value
    return base / value


def _read_secret_file(path: Path, what: str) -> str:
    """A secret file's content without its final line break."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
        problem = PolicyProblem(f"cannot read the {what} file {path}: {reason}")
        raise GatewayConfigError([problem]) from None
    return text.removesuffix("\n").removesuffix("\r")


def _read_secret_env(variable: str, environ: Mapping[str, str] | None, what: str) -> str:
    value = (os.environ if environ is None else environ).get(variable)
    if not value:
        raise GatewayConfigError(
            [PolicyProblem(f"the environment variable {variable} (the {what}) is not set")]
        )
    return value


def _one_secret(
    owner: str, what: str, values: Mapping[str, object | None], *, required: bool
) -> None:
    given = [name for name, value in values.items() if value is not None]
    if len(given) > 1:
        raise field_error("secret", f"{owner}: give only one of {', '.join(given)}")
    if required and not given:
        raise field_error("secret", f"{owner}: give the {what} with one of {', '.join(values)}")


# --- upstream servers -------------------------------------------------------------------


def _unquote(value: str, what: str) -> str:
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:  # its message would quote bytes of the value
        raise ValueError(f"the DSN's {what} is not valid percent-encoded UTF-8") from None


def parse_dsn(dsn: str) -> dict[str, Any]:
    """The fields of a ``postgresql://`` (or ``postgres://``) URL, percent-decoded.

    Raises :class:`ValueError` with a message that never repeats the URL (it
    may contain a password).
    """
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError(
            "expected a postgresql:// URL (postgresql://user:password@host:port/dbname)"
        )
    if any(c.isspace() or c == "#" for c in rest):
        raise ValueError("the DSN must not contain spaces or '#' (percent-encode them)")
    # Like libpq: the authority ends at the first '/' or '?'. Nothing parsed
    # below is echoed in an error: with a password that was not
    # percent-encoded, any piece of the URL may be a piece of the password.
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if "@" in path or "@" in query:
        raise ValueError(f"the DSN has an '@' after its host: {_ENCODE_HINT}")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        userinfo, hostport = "", netloc
    if "," in hostport:
        raise ValueError("the DSN names several hosts: give exactly one")
    out: dict[str, Any] = {}
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if user:
            out["user"] = _unquote(user, "user name")
        if colon:
            out["password"] = _unquote(password, "password")
    if hostport.startswith("["):
        host, bracket, port = hostport[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError("the DSN has a malformed [IPv6] host")
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
    host = _unquote(host, "host")
    if not host:
        raise ValueError("the DSN names no host (Unix sockets are not supported)")
    out["host"] = host
    if port:
        if not (port.isascii() and port.isdigit() and len(port) <= 5):
            raise ValueError(f"the DSN's port is not a number ({_ENCODE_HINT})")
        out["port"] = int(port)
    if "/" in path:
        raise ValueError("the DSN's database name must not contain '/' (percent-encode it)")
    if path:
        out["database"] = _unquote(path, "database name")
    for item in query.split("&"):
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = _unquote(key, "parameter name")
        if key not in DSN_PARAMETERS:
            name = repr(key) if key in _LIBPQ_PARAMETERS else "(name not shown)"
            raise ValueError(
                f"unsupported DSN parameter {name} (supported: {', '.join(DSN_PARAMETERS)})"
            )
        if not eq:
            raise ValueError(f"the DSN parameter {key!r} has no value")
        if key in out:
            raise ValueError(f"the DSN parameter {key!r} is given twice")
        out[key] = _unquote(value, key)
    return out


class Upstream(_Closed):
    """An upstream PostgreSQL server and the credentials the gateway logs in with.

    Validated from a DSN string or a mapping of these fields, optionally with
    a ``dsn`` key whose values the other keys complete (a field given both ways
    is an error). ``password`` is the literal password (from the DSN or the
    YAML); use :meth:`resolve_password` for the effective one, which also
    reads ``password_file`` or ``password_env``.
    """

    # A password (or a user name) may begin or end with a space: keep them.
    model_config = ConfigDict(str_strip_whitespace=False)

    host: Annotated[str, Field(min_length=1, max_length=255)]
    port: Annotated[int, Field(ge=1, le=65535)] = DEFAULT_PORT
    user: Annotated[str, Field(min_length=1, max_length=63)]
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: Annotated[str, Field(min_length=1)] | None = None
    #: The database to connect to; as with libpq, the user name if not given.
    database: Annotated[str, Field(min_length=1, max_length=63)]
    sslmode: SslMode = "prefer"
    sslrootcert: Path | None = None
    application_name: Annotated[str, Field(max_length=63)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_dsn(cls, data: Any) -> Any:
        if isinstance(data, str):
            fields = cls._dsn_fields(data)
        elif isinstance(data, Mapping):
            fields = dict(data)
            if "dsn" in fields:
                dsn = fields.pop("dsn")
                if not isinstance(dsn, str):
                    raise field_error("dsn", f"dsn must be a string, not {describe_type(dsn)}")
                parsed = cls._dsn_fields(dsn)
                both = sorted(set(parsed) & set(fields))
                if both:
                    raise field_error(
                        "dsn",
                        f"{', '.join(both)} given both in the dsn and as a field: give it once",
                    )
                fields = {**parsed, **fields}
        else:
            return data
        if "database" not in fields:
            user = fields.get("user")
            # Without a usable user, validation fails on it; the placeholder
            # only keeps a second, confusing error off the database.
            fields["database"] = user if isinstance(user, str) and user else "-"
        return fields

    @staticmethod
    def _dsn_fields(dsn: str) -> dict[str, Any]:
        try:
            return parse_dsn(dsn.strip())
        except ValueError as exc:  # the message never contains the DSN
            raise field_error("dsn", str(exc)) from None

    @field_validator("password_file", "sslrootcert")
    @classmethod
    def _paths(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _relative_to_file(value, info)

    @field_validator("host", "user", "database", "application_name")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise field_error("nul", "must not contain a NUL character")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> Upstream:
        sources = {
            "password": self.password,
            "password_file": self.password_file,
            "password_env": self.password_env,
        }
        _one_secret("upstream", "password", sources, required=False)
        if self.sslrootcert is not None and self.sslmode == "disable":
            raise field_error("sslmode", "sslrootcert is given but sslmode is disable")
        return self

    @property
    def dbname(self) -> str:
        """The database to connect to (same as ``database``, libpq's name)."""
        return self.database

    def resolve_password(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The password to log in with: literal, read from ``password_file`` now, or
        from ``password_env``; None for none. :class:`GatewayConfigError` if unavailable."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return _read_secret_file(self.password_file, "password")
        if self.password_env is not None:
            return _read_secret_env(self.password_env, environ, "upstream password")
        return None

    def url(self) -> str:
        """The upstream as a ``postgresql://`` URL without the password (for logs)."""
        host = f"[{self.host}]" if ":" in self.host else quote(self.host, safe="")
        url = f"postgresql://{quote(self.user, safe='')}@{host}:{self.port}"
        url += f"/{quote(self.database, safe='')}?sslmode={self.sslmode}"
        if self.application_name:
            url += f"&application_name={quote(self.application_name, safe='')}"
        return url

    def __str__(self) -> str:
        return self.url()


class Target(_Closed):
    """A database the gateway's clients can reach: they connect with database=``name``."""

    name: Name
    upstream: Upstream
    #: The environment the policy sees (``production``, ``staging``, ...).
    environment: Name
    description: Annotated[str, Field(max_length=500)] | None = None


# --- the gateway ----------------------------------------------------------------------


class Listen(_Closed):
    """The address the gateway listens on; written ``host:port`` (``[::1]:6432`` for IPv6)."""

    host: Annotated[str, Field(min_length=1, max_length=255)] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 6432

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"port": data}
        if not isinstance(data, str):
            return data
        text = data.strip()
        match = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text)
        if match is None:
            raise field_error("listen", f"expected host:port (like {DEFAULT_LISTEN}), not {text!r}")
        host = match.group(1) or match.group(3)
        return {"host": host, "port": int(match.group(2) or match.group(4))}

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Tls(_Closed):
    """TLS towards the gateway's clients.

    ``allow``: a client's SSLRequest is answered ``S`` (a certificate is
    needed); ``require``: a client that does not use TLS is refused;
    ``disable``: SSLRequest is answered ``N``.
    """

    mode: TlsMode = "allow"
    cert: Path | None = None
    key: Path | None = None

    @field_validator("cert", "key")
    @classmethod
    def _paths(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        value = _relative_to_file(value, info)
        if value is not None and not value.is_file():
            raise field_error("file", f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _pair(self) -> Tls:
        if (self.cert is None) != (self.key is None):
            raise field_error("tls", "give both cert and key, or neither")
        if self.mode != "disable" and self.cert is None:
            raise field_error("tls", f"tls mode {self.mode} needs a cert and a key")
        return self


class ServerLink(_Closed):
    """The jitgate server a standalone gateway reports to, and its service token."""

    url: Annotated[str, Field(min_length=1, max_length=500)]
    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise field_error("url", "the server url must be an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise field_error("url", "put the token in token/token_file/token_env, not the url")
        return value.rstrip("/")

    @field_validator("token_file")
    @classmethod
    def _path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _relative_to_file(value, info)

    @model_validator(mode="after")
    def _one_token(self) -> ServerLink:
        sources = {"token": self.token, "token_file": self.token_file, "token_env": self.token_env}
        _one_secret("server", "service token", sources, required=True)
        return self

    def resolve_token(self, environ: Mapping[str, str] | None = None) -> str:
        """The service token (a file is read now); :class:`GatewayConfigError` if unavailable."""
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            token = _read_secret_file(self.token_file, "token").strip()
            if not token:
                problem = PolicyProblem(f"the token file {self.token_file} is empty")
                raise GatewayConfigError([problem])
            return token
        assert self.token_env is not None
        return _read_secret_env(self.token_env, environ, "service token").strip()


class AuditBatch(_Closed):
    """How statement records are batched on their way to the audit trail."""

    #: At most what the server takes in one call (``MAX_RECORDS``); larger
    #: batches cost the audit trail less per record.
    max_records: Annotated[int, Field(ge=1, le=1000)] = 1000
    max_delay_ms: Annotated[int, Field(ge=0, le=60_000)] = 250


class GatewayConfig(_Closed):
    name: Name = "postgres"
    listen: Listen = Listen()
    targets: Annotated[list[Target], Field(min_length=1)]
    default_target: str | None = None
    tls: Tls | None = None
    hold_timeout_seconds: Annotated[float, Field(gt=0, le=365 * 86400)] = 3600
    max_message_bytes: Annotated[int, Field(ge=64 * 1024, le=1 << 30)] = 64 * 1024 * 1024
    server: ServerLink | None = None
    audit_batch: AuditBatch = AuditBatch()
    #: Gateway processes sharing the listen port (SO_REUSEPORT), each a whole
    #: gateway; only ``jitgate proxy postgres`` runs more than one.
    workers: Annotated[int, Field(strict=True)] = 1
    #: Where ``GET /metrics`` is served (Prometheus); only ``jitgate proxy
    #: postgres`` serves it. None: nothing listens.
    metrics: Listen | None = None

    @field_validator("tls", mode="before")
    @classmethod
    def _none(cls, value: Any) -> Any:
        return None if value == "none" else value

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int) -> int:
        if not 1 <= value <= MAX_WORKERS:
            raise field_error(
                "workers",
                f"workers must be from 1 to {MAX_WORKERS} (gateway processes), not {value}",
            )
        return value

    @field_validator("targets")
    @classmethod
    def _unique(cls, targets: list[Target]) -> list[Target]:
        first: dict[str, int] = {}
        for index, target in enumerate(targets):
            if target.name in first:
                raise field_error(
                    "duplicate",
                    f"two targets are named {target.name!r} "
                    f"(the first is targets[{first[target.name]}])",
                    at=(index, "name"),
                )
            first[target.name] = index
        return targets

    @model_validator(mode="after")
    def _default_exists(self) -> GatewayConfig:
        names = [t.name for t in self.targets]
        if self.default_target is not None and self.default_target not in names:
            raise field_error(
                "default_target",
                f"default_target {self.default_target!r} is not a target "
                f"(targets: {', '.join(names)})",
                at=("default_target",),
            )
        return self

    @model_validator(mode="after")
    def _workers_share_a_port(self) -> GatewayConfig:
        # Port 0 lets each process pick a free port: the workers would not share one.
        if self.workers > 1 and self.listen.port == 0:
            raise field_error(
                "workers",
                f"{self.workers} workers need a fixed listen port: with port 0 each "
                "worker would listen on a different one",
                at=("workers",),
            )
        return self

    @model_validator(mode="after")
    def _metrics_elsewhere(self) -> GatewayConfig:
        metrics = self.metrics
        if (
            metrics is not None
            and metrics.port != 0
            and (metrics.host, metrics.port) == (self.listen.host, self.listen.port)
        ):
            raise field_error(
                "metrics",
                f"metrics cannot be served on the listen address ({self.listen})",
                at=("metrics",),
            )
        return self

    @property
    def listen_host(self) -> str:
        return self.listen.host

    @property
    def listen_port(self) -> int:
        return self.listen.port

    @property
    def tls_mode(self) -> TlsMode:
        return "disable" if self.tls is None else self.tls.mode

    @property
    def tls_required(self) -> bool:
        """Whether clients that do not use TLS are refused."""
        return self.tls_mode == "require"

    def tls_files(self) -> tuple[str, str] | None:
        """(certificate file, key file) when clients may use TLS, else None."""
        if self.tls is None or self.tls.mode == "disable":
            return None
        if self.tls.cert is None or self.tls.key is None:  # excluded by validation
            return None
        return str(self.tls.cert), str(self.tls.key)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def with_options(
        self,
        *,
        listen: str | None = None,
        workers: int | None = None,
        metrics: str | None = None,
    ) -> GatewayConfig:
        """This configuration with the command line's ``--listen``, ``--workers``
        and ``--metrics`` (given ones win over the file's), checked again as a
        whole; :class:`GatewayConfigError` naming the option."""
        update: dict[str, Any] = {}
        if listen is not None:
            update["listen"] = listen
        if workers is not None:
            update["workers"] = workers
        if metrics is not None:
            update["metrics"] = metrics
        if not update:
            return self
        # The targets and the rest are validated already: instances pass as they are.
        data = {name: getattr(self, name) for name in type(self).model_fields} | update
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            raise _errors(exc, type(self), None, SourceMap("<command line>")) from None

    def target_for(self, database: str) -> Target | None:
        """The target a client's startup ``database`` selects: the one of that name,
        else the default target (or the only one), else None."""
        found = self.target(database)
        if found is not None:
            return found
        if self.default_target is not None:
            return self.target(self.default_target)
        return self.targets[0] if len(self.targets) == 1 else None

    @classmethod
    def single(
        cls,
        listen: str,
        upstream_dsn: str,
        environment: str,
        target_name: str | None = None,
        workers: int = 1,
        metrics: str | None = None,
    ) -> GatewayConfig:
        """The one-target configuration of the command line (``--listen``,
        ``--upstream``, ``--env``, ``--target``, ``--workers``, ``--metrics``; the target is named
        after the upstream database unless ``target_name`` is given). Every
        client reaches that target, whatever database it names."""
        try:
            upstream = Upstream.model_validate(upstream_dsn)
        except ValidationError as exc:
            raise _errors(exc, Upstream, "--upstream", SourceMap("<command line>")) from None
        target = {
            "name": target_name if target_name is not None else upstream.database,
            "upstream": upstream,
            "environment": environment,
        }
        data: dict[str, Any] = {"listen": listen, "targets": [target], "workers": workers}
        if metrics is not None:
            data["metrics"] = metrics
        try:
            return cls.model_validate(data, context={"base_dir": Path.cwd()})
        except ValidationError as exc:
            raise _errors(exc, cls, None, SourceMap("<command line>")) from None


# --- loading --------------------------------------------------------------------------

_OPTIONS = {
    ("listen",): "--listen",
    ("targets", 0, "environment"): "--env",
    ("targets", 0, "name"): "--target",
    ("workers",): "--workers",
    ("metrics",): "--metrics",
}


def _errors(
    exc: ValidationError, model: type[BaseModel], option: str | None, where: SourceMap
) -> GatewayConfigError:
    problems: list[PolicyProblem] = []
    for error in exc.errors(include_url=False):
        problem = _problem(error, model, where)
        if option is not None:
            problem = PolicyProblem(problem.message, path=problem.path, file=option)
        else:
            name = _OPTIONS.get(problem.path[:3]) or _OPTIONS.get(problem.path[:1])
            if name is not None:
                problem = PolicyProblem(problem.message, file=name)
        problems.append(problem)
    return GatewayConfigError(problems)


def _problem(error: ErrorDetails, model: type[BaseModel], where: SourceMap) -> PolicyProblem:
    """:func:`problem_of`, with the path a validator reported (its ``at``) appended."""
    ctx = error.get("ctx") or {}
    at = ctx.get("at")
    if isinstance(at, tuple):
        error = {**error, "loc": (*error["loc"], *at)}
    return problem_of(error, model, where)


def parse_gateway_config(
    data: Any,
    source: str = "<gateway config>",
    *,
    lines: SourceMap | None = None,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    standalone: bool = False,
) -> GatewayConfig:
    """Validate ``data`` (the parsed YAML) and check that every secret it refers
    to (files, environment variables) is available now.

    ``standalone``: the gateway runs as ``jitgate proxy postgres``, in processes
    of its own. Otherwise (``jitgate serve --gateway``) it runs in the server's
    one process, and ``workers`` above 1 is refused rather than ignored."""
    where = lines if lines is not None else SourceMap(source)
    if not isinstance(data, dict):
        raise GatewayConfigError(
            [
                where.problem(
                    (),
                    f"the gateway config must be a mapping with 'targets', "
                    f"not {describe_type(data)}",
                )
            ]
        )
    try:
        config = GatewayConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = sorted(
            (_problem(error, GatewayConfig, where) for error in exc.errors(include_url=False)),
            key=lambda p: p.line or 0,
        )
        raise GatewayConfigError(problems) from None
    problems = []
    if config.workers > 1 and not standalone:
        problems.append(
            where.problem(
                ("workers",),
                f"{config.workers} workers need a standalone gateway (jitgate proxy postgres "
                "--config FILE); jitgate serve --gateway runs the gateway in the server's "
                "own process: remove workers or set it to 1",
            )
        )
    if config.metrics is not None and not standalone:
        problems.append(
            where.problem(
                ("metrics",),
                "metrics are served by a standalone gateway (jitgate proxy postgres "
                "--config FILE); jitgate serve --gateway runs the gateway in the server's "
                "own process, whose /metrics has the server's: remove metrics",
            )
        )
    secrets: list[tuple[FieldPath, Any]] = [
        (("targets", i, "upstream"), target.upstream.resolve_password)
        for i, target in enumerate(config.targets)
    ]
    if config.server is not None:
        secrets.append((("server",), config.server.resolve_token))
    for path, resolve in secrets:
        try:
            resolve(environ)
        except GatewayConfigError as exc:
            for problem in exc.problems:
                problems.append(where.problem(_secret_path(data, path), problem.message))
    if problems:
        raise GatewayConfigError(problems)
    return config


def _secret_path(data: Any, path: FieldPath) -> FieldPath:
    """The path of the ``*_file``/``*_env`` key under ``path`` in the raw data, if any."""
    node = data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return path
    if isinstance(node, Mapping):
        for key in ("password_file", "password_env", "token_file", "token_env"):
            if key in node:
                return (*path, key)
    return path


def load_gateway_config(
    path: str | PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    standalone: bool = False,
) -> GatewayConfig:
    """The configuration in the YAML file at ``path``; :class:`GatewayConfigError`
    (naming the file, line and field) if it cannot be read or used.
    ``standalone``: see :func:`parse_gateway_config`."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise GatewayConfigError(
            [PolicyProblem(f"cannot read the gateway config: {reason}", file=source)]
        ) from None
    try:
        data, lines = parse_yaml(text, source)
    except PolicyError as exc:
        raise GatewayConfigError(exc.problems) from None
    if data is None:
        raise GatewayConfigError(
            [PolicyProblem("the gateway config is empty (expected 'targets')", file=source, line=1)]
        )
    base_dir = Path(path).resolve().parent
    return parse_gateway_config(
        data, source, lines=lines, base_dir=base_dir, environ=environ, standalone=standalone
    )
