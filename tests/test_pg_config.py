"""The PostgreSQL gateway's configuration: DSNs, the YAML file and its errors,
target selection, and passwords and tokens that never show."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest
from pydantic import ValidationError

from jitgate.gateways.postgres.config import (
    GatewayConfig,
    GatewayConfigError,
    Upstream,
    load_gateway_config,
    parse_dsn,
    parse_gateway_config,
)

SECRET = "Sup3r-s3cret/p@ss:w%rd"
ENCODED = quote(SECRET, safe="")
#: Pieces of SECRET that must not show either.
PIECES = ("Sup3r", "s3cret", "p@ss", "w%rd")
TOKEN = "jg_token_0123456789abcdef"


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(GatewayConfigError) as caught:
        load_gateway_config(path, environ=environ or {})
    return str(caught.value).splitlines()


# --- DSNs ---------------------------------------------------------------------------------


def test_a_full_dsn() -> None:
    upstream = Upstream.model_validate(
        "postgresql://app%20user:p%40ss%2Fw%3Ard@db.example.com:6543/my%2Fdb"
        "?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=jit%20gate"
    )
    assert upstream.host == "db.example.com"
    assert upstream.port == 6543
    assert upstream.user == "app user"
    assert upstream.resolve_password() == "p@ss/w:rd"
    assert upstream.database == upstream.dbname == "my/db"
    assert upstream.sslmode == "verify-full"
    assert upstream.sslrootcert == Path("/etc/ca.pem")
    assert upstream.application_name == "jit gate"


def test_dsn_defaults() -> None:
    upstream = Upstream.model_validate("postgres://alice@db")
    assert (upstream.host, upstream.port, upstream.user) == ("db", 5432, "alice")
    assert upstream.password is None
    assert upstream.resolve_password() is None
    assert upstream.database == "alice"  # libpq's default: the user name
    assert upstream.sslmode == "prefer"
    assert upstream.sslrootcert is None
    assert upstream.application_name is None


def test_dsn_edge_cases() -> None:
    assert parse_dsn("postgresql://u@[::1]:5433/d") == {
        "user": "u",
        "host": "::1",
        "port": 5433,
        "database": "d",
    }
    assert parse_dsn("postgresql://u@[::1]/d")["host"] == "::1"
    assert parse_dsn("POSTGRESQL://u:@h/")["password"] == ""
    # An unencoded '@' in the password: the host is after the last '@'.
    assert parse_dsn("postgresql://u:a@b@h/d")["password"] == "a@b"
    assert parse_dsn("postgresql://u:pw@h/d?")["host"] == "h"


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        (f"mysql://u:{ENCODED}@h/d", "expected a postgresql:// URL"),
        (f"host=h user=u password={ENCODED}", "expected a postgresql:// URL"),
        (f"postgresql://u:{ENCODED}@/d", "names no host"),
        (f"postgresql://u:{ENCODED}@h:port/d", "port is not a number"),
        (f"postgresql://u:{ENCODED}@h:123456/d", "port is not a number"),
        (f"postgresql://u:{ENCODED}@h:65536/d", "less than or equal to 65535"),
        (f"postgresql://u:{ENCODED}@h:0/d", "greater than or equal to 1"),
        (f"postgresql://u:{ENCODED}@h1,h2/d", "several hosts"),
        (f"postgresql://u:{ENCODED}@[::1/d", "malformed [IPv6] host"),
        (f"postgresql://u:{ENCODED}@h/d?sslmode=bogus", "'disable', 'prefer', 'require'"),
        (f"postgresql://u:{ENCODED}@h/d?connect_timeout=3", "parameter 'connect_timeout'"),
        (f"postgresql://u:{ENCODED}@h/d?s3cret=1", "parameter (name not shown)"),
        (f"postgresql://u:{ENCODED}@h/d?sslmode", "has no value"),
        (f"postgresql://u:{ENCODED}@h/d?sslmode=require&sslmode=disable", "given twice"),
        (f"postgresql://u:{ENCODED}@h/a/b", "must not contain '/'"),
        (f"postgresql://u:{ENCODED}%ff@h/d", "password is not valid percent-encoded"),
        (f"postgresql://u:{ENCODED} x@h/d", "must not contain spaces"),
        (f"postgresql://:{ENCODED}@h/d", "user: required field is missing"),
        (f"postgresql://u:{ENCODED}@h/d?sslmode=disable&sslrootcert=/ca", "sslmode is disable"),
        # Passwords that were not percent-encoded: an error, which shows none of them.
        (f"postgresql://u:{SECRET}@h/d", "percent-encode"),
        ("postgresql://u:Sup3r?s3cret@h/d", "percent-encode"),
        ("postgresql://u:Sup3r/s3cret@h/d", "percent-encode"),
        ("postgresql://u:Sup3r/s3cret@h", "percent-encode"),
        ("postgresql://u:Sup3r/s3cret", "port is not a number"),
        ("postgresql://u:Sup3r#s3cret@h/d", "must not contain spaces or '#'"),
        ("postgresql://u@h/d?sslmode=require&s3cret=Sup3r", "parameter (name not shown)"),
    ],
)
def test_bad_dsns(dsn: str, message: str) -> None:
    with pytest.raises(GatewayConfigError) as caught:
        GatewayConfig.single("127.0.0.1:6432", dsn, "prod", "t")
    text = str(caught.value)
    assert message in text
    assert text.startswith("--upstream: ")
    for piece in PIECES:
        assert piece not in text
    # Validating directly: pydantic's own message hides the input too.
    with pytest.raises(ValidationError) as direct:
        Upstream.model_validate(dsn)
    for piece in PIECES:
        assert piece not in str(direct.value)


def test_spaces_in_passwords_are_kept(tmp_path: Path) -> None:
    assert Upstream.model_validate("postgres://u:%20pw%20@h").resolve_password() == " pw "
    upstream = Upstream.model_validate({"host": "h", "user": "u", "password": " pw "})
    assert upstream.resolve_password() == " pw "
    (tmp_path / "pw").write_text(" pw \n")
    upstream = Upstream.model_validate({"host": "h", "user": "u", "password_file": tmp_path / "pw"})
    assert upstream.resolve_password() == " pw "


def test_the_mapping_form(tmp_path: Path) -> None:
    password_file = write(tmp_path, SECRET + "\n", "pw")
    upstream = Upstream.model_validate(
        {"dsn": "postgresql://app@db/app?sslmode=require", "password_file": str(password_file)}
    )
    assert upstream.resolve_password() == SECRET
    # The file is read each time: a rotated password is picked up.
    password_file.write_text("rotated\n")
    assert upstream.resolve_password() == "rotated"

    upstream = Upstream.model_validate({"host": "db", "user": "app", "password_env": "PGPW"})
    assert upstream.resolve_password({"PGPW": SECRET}) == SECRET
    with pytest.raises(GatewayConfigError, match=r"PGPW .* is not set"):
        upstream.resolve_password({})

    with pytest.raises(ValidationError, match="port given both in the dsn and as a field"):
        Upstream.model_validate({"dsn": "postgresql://app@db:1/app", "port": 2})
    with pytest.raises(ValidationError, match="give only one of password, password_env"):
        Upstream.model_validate({"dsn": f"postgresql://a:{ENCODED}@db/x", "password_env": "X"})


# --- secrecy ------------------------------------------------------------------------------


def test_secrets_never_show(tmp_path: Path) -> None:
    config = GatewayConfig.model_validate(
        {
            "targets": [
                {
                    "name": "app",
                    "environment": "production",
                    "upstream": f"postgresql://app:{ENCODED}@db/app",
                },
                {
                    "name": "other",
                    "environment": "staging",
                    "upstream": {"host": "db", "user": "u", "password": SECRET},
                },
            ],
            "server": {"url": "https://jitgate.example.com/", "token": TOKEN},
        }
    )
    upstream = config.targets[0].upstream
    assert upstream.resolve_password() == SECRET
    assert config.targets[1].upstream.resolve_password() == SECRET
    assert config.server is not None
    assert config.server.resolve_token() == TOKEN
    assert config.server.url == "https://jitgate.example.com"
    shown = [
        repr(config),
        str(config),
        repr(upstream),
        str(upstream),
        upstream.url(),
        config.model_dump_json(),
        str(config.model_dump()),
        repr(config.targets),
        f"{upstream}",
        f"{upstream!r}",
    ]
    for text in shown:
        assert SECRET not in text
        assert "Sup3r" not in text
        assert TOKEN not in text
    assert str(upstream) == "postgresql://app@db:5432/app?sslmode=prefer"


def test_a_validation_error_does_not_echo_secrets() -> None:
    data = {
        "targets": [
            {"name": "app", "environment": "prod", "upstream": {"host": "h", "user": "u"}},
            {"name": "x", "environment": 5, "upstream": f"postgresql://u:{ENCODED}@h:bad/d"},
        ],
        "server": {"url": "https://j", "token": TOKEN, "token_env": "T"},
    }
    with pytest.raises(GatewayConfigError) as caught:
        parse_gateway_config(data, "inline")
    text = str(caught.value)
    assert "targets[1].upstream: the DSN's port is not a number" in text
    assert "server: server: give only one of token, token_env" in text
    assert SECRET not in text
    assert TOKEN not in text
    with pytest.raises(ValidationError) as direct:
        GatewayConfig.model_validate(data)
    assert SECRET not in str(direct.value)
    assert TOKEN not in str(direct.value)


# --- the YAML file ------------------------------------------------------------------------

GOOD = """\
name: pg-prod
listen: "0.0.0.0:7432"
default_target: app
hold_timeout_seconds: 600
max_message_bytes: 1048576
tls:
  mode: require
  cert: tls/gateway.crt
  key: tls/gateway.key
server:
  url: https://jitgate.example.com
  token_file: token.txt
audit_batch: {max_records: 50, max_delay_ms: 100}
targets:
  - name: app
    environment: production
    description: the billing database
    upstream: postgresql://jitgate@db.internal:5432/app?sslmode=verify-full
  - name: reports
    environment: staging
    upstream:
      dsn: postgresql://reporter@db.internal/reports
      password_env: REPORTS_PW
"""


def good_dir(tmp_path: Path) -> Path:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "gateway.crt").write_text("cert")
    (tmp_path / "tls" / "gateway.key").write_text("key")
    (tmp_path / "token.txt").write_text(TOKEN + "\n")
    return write(tmp_path, GOOD)


def test_a_good_file(tmp_path: Path) -> None:
    config = load_gateway_config(good_dir(tmp_path), environ={"REPORTS_PW": SECRET})
    assert config.name == "pg-prod"
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 7432)
    assert str(config.listen) == "0.0.0.0:7432"
    assert config.hold_timeout_seconds == 600
    assert config.max_message_bytes == 1 << 20
    assert config.tls_mode == "require"
    assert config.tls_required
    # Relative paths are relative to the file's directory.
    assert config.tls_files() == (
        str(tmp_path / "tls" / "gateway.crt"),
        str(tmp_path / "tls" / "gateway.key"),
    )
    assert config.server is not None
    assert config.server.token_file == tmp_path / "token.txt"
    assert config.server.resolve_token() == TOKEN
    assert (config.audit_batch.max_records, config.audit_batch.max_delay_ms) == (50, 100)
    app, reports = config.targets
    assert (app.name, app.environment, app.description) == (
        "app",
        "production",
        "the billing database",
    )
    assert app.upstream.sslmode == "verify-full"
    assert app.upstream.resolve_password() is None
    assert reports.upstream.resolve_password({"REPORTS_PW": SECRET}) == SECRET
    assert reports.upstream.database == "reports"


def test_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "targets: [{name: app, environment: dev, upstream: 'postgres://u@h'}]")
    config = load_gateway_config(path)
    assert config.name == "postgres"
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 6432)
    assert config.tls is None
    assert config.tls_mode == "disable"
    assert not config.tls_required
    assert config.tls_files() is None
    assert config.hold_timeout_seconds == 3600
    assert config.max_message_bytes == 64 * 1024 * 1024
    assert config.server is None
    assert config.default_target is None
    assert (config.audit_batch.max_records, config.audit_batch.max_delay_ms) == (1000, 250)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "targets:\n  - name: app\n    environment: dev\n    upstream: postgres://u@h\n"
            "  - name: app\n    environment: dev\n    upstream: postgres://u@h\n",
            "gateway.yaml:5: targets[1].name: two targets are named 'app' "
            "(the first is targets[0])",
        ),
        (
            "default_target: nope\ntargets:\n  - name: app\n    environment: dev\n"
            "    upstream: postgres://u@h\n",
            "gateway.yaml:1: default_target: default_target 'nope' is not a target (targets: app)",
        ),
        (
            "targets:\n  - name: app\n    environment: dev\n    upstream:\n      host: h\n"
            "      user: u\n      passwd: x\n",
            "gateway.yaml:7: targets[0].upstream.passwd: unknown field 'passwd' (expected one "
            "of: host, port, user, password, password_file, password_env, database, sslmode, "
            "sslrootcert, application_name)",
        ),
        (
            "targets:\n  - name: app\n    environment: dev\n    upstream: mysql://u@h\n",
            "gateway.yaml:4: targets[0].upstream: expected a postgresql:// URL",
        ),
        (
            "listen: 6432x\ntargets:\n  - name: app\n    environment: dev\n"
            "    upstream: postgres://u@h\n",
            "gateway.yaml:1: listen: expected host:port (like 127.0.0.1:6432), not '6432x'",
        ),
        (
            "tls: {mode: require}\ntargets:\n  - name: app\n    environment: dev\n"
            "    upstream: postgres://u@h\n",
            "gateway.yaml:1: tls: tls mode require needs a cert and a key",
        ),
        (
            "tls:\n  cert: missing.crt\n  key: missing.key\n",
            "gateway.yaml:2: tls.cert: no such file:",
        ),
        ("targets: []\n", "gateway.yaml:1: targets: needs at least 1 item(s)"),
        ("name: x\n", "gateway.yaml:1: targets: required field is missing"),
        (
            "targets:\n  - name: 'bad name'\n    environment: dev\n    upstream: postgres://u@h\n",
            "gateway.yaml:2: targets[0].name: 'bad name' is not a valid name",
        ),
        (
            "hold_timeout_seconds: soon\ntargets: []\n",
            "gateway.yaml:1: hold_timeout_seconds: ",
        ),
        (
            "server: {url: 'ftp://x', token: abc}\ntargets: []\n",
            "gateway.yaml:1: server.url: the server url must be an http:// or https:// URL",
        ),
        ("targets: [\n", "gateway.yaml:2: YAML syntax error"),
        ("name: a\nname: b\n", "gateway.yaml:2: name: duplicate key 'name'"),
        ("- a\n- b\n", "gateway.yaml:1: the gateway config must be a mapping"),
        ("", "gateway.yaml:1: the gateway config is empty"),
        ("bogus: 1\n", "gateway.yaml:1: bogus: unknown field 'bogus' (expected one of: name,"),
    ],
)
def test_errors_name_the_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    lines = errors_of(write(tmp_path, text))
    assert any(line.startswith(f"{tmp_path}/{expected}") for line in lines), lines


def test_every_problem_is_reported(tmp_path: Path) -> None:
    text = (
        "listen: nowhere\nmax_message_bytes: 10\ntargets:\n  - name: app\n"
        "    environment: dev\n    upstream: {host: h}\n"
    )
    lines = errors_of(write(tmp_path, text))
    assert len(lines) == 3, lines
    assert lines[0].endswith(
        "gateway.yaml:1: listen: expected host:port (like 127.0.0.1:6432), not 'nowhere'"
    )
    assert "gateway.yaml:2: max_message_bytes: Input should be greater than or equal to" in lines[1]
    assert lines[2].endswith("gateway.yaml:6: targets[0].upstream.user: required field is missing")


def test_missing_secrets_are_found_at_load(tmp_path: Path) -> None:
    text = (
        "server:\n  url: https://j.example\n  token_env: JG_TOKEN\n"
        "targets:\n  - name: app\n    environment: dev\n    upstream:\n"
        "      dsn: postgres://u@h\n      password_file: nothere\n"
        "  - name: b\n    environment: dev\n    upstream:\n      dsn: postgres://u@h\n"
        "      password_env: B_PW\n"
    )
    path = write(tmp_path, text)
    lines = errors_of(path)
    assert lines == [
        f"{path}:9: targets[0].upstream.password_file: cannot read the password file "
        f"{tmp_path / 'nothere'}: No such file or directory",
        f"{path}:14: targets[1].upstream.password_env: the environment variable B_PW "
        "(the upstream password) is not set",
        f"{path}:3: server.token_env: the environment variable JG_TOKEN (the service token) "
        "is not set",
    ]
    (tmp_path / "nothere").write_text("pw")
    config = load_gateway_config(path, environ={"JG_TOKEN": TOKEN, "B_PW": "x"})
    assert config.targets[0].upstream.resolve_password() == "pw"


def test_the_process_environment_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "targets: [{name: a, environment: dev, upstream: {dsn: 'postgres://u@h', "
    text += "password_env: JITGATE_TEST_PW}}]"
    path = write(tmp_path, text)
    monkeypatch.delenv("JITGATE_TEST_PW", raising=False)
    with pytest.raises(GatewayConfigError, match="JITGATE_TEST_PW"):
        load_gateway_config(path)
    monkeypatch.setenv("JITGATE_TEST_PW", SECRET)
    config = load_gateway_config(path)
    assert config.targets[0].upstream.resolve_password() == os.environ["JITGATE_TEST_PW"]


def test_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError, match=r"nope\.yaml: cannot read the gateway config"):
        load_gateway_config(tmp_path / "nope.yaml")


def test_tls_variants(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("c")
    (tmp_path / "k.pem").write_text("k")
    base = "targets: [{name: a, environment: dev, upstream: 'postgres://u@h'}]\n"
    allow = load_gateway_config(write(tmp_path, base + "tls: {cert: c.pem, key: k.pem}\n"))
    assert allow.tls_mode == "allow"
    assert not allow.tls_required
    assert allow.tls_files() == (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    off = load_gateway_config(write(tmp_path, base + "tls: {mode: disable}\n"))
    assert off.tls_files() is None
    assert load_gateway_config(write(tmp_path, base + "tls: none\n")).tls is None
    lines = errors_of(write(tmp_path, base + "tls: {cert: c.pem}\n"))
    assert lines == [f"{tmp_path / 'gateway.yaml'}:2: tls: give both cert and key, or neither"]


def test_listen_forms() -> None:
    def listen(value: object) -> tuple[str, int]:
        config = GatewayConfig.model_validate(
            {
                "listen": value,
                "targets": [{"name": "a", "environment": "d", "upstream": "postgres://u@h"}],
            }
        )
        return config.listen_host, config.listen_port

    assert listen("127.0.0.1:6432") == ("127.0.0.1", 6432)
    assert listen("localhost:0") == ("localhost", 0)
    assert listen("[::1]:7000") == ("::1", 7000)
    assert listen({"host": "0.0.0.0", "port": 1}) == ("0.0.0.0", 1)
    assert listen(5000) == ("127.0.0.1", 5000)
    for bad in (":6432", "host", "host:", "host:123456", "[::1]", "::1:6432"):
        with pytest.raises(ValidationError):
            listen(bad)


# --- workers --------------------------------------------------------------------------------

WORKERS_BASE = (
    "listen: 127.0.0.1:6432\ntargets: [{name: a, environment: dev, upstream: 'postgres://u@h'}]\n"
)


def test_workers(tmp_path: Path) -> None:
    assert load_gateway_config(write(tmp_path, WORKERS_BASE)).workers == 1
    path = write(tmp_path, WORKERS_BASE + "workers: 64\n")
    assert load_gateway_config(path, standalone=True).workers == 64
    # In the server's process (jitgate serve --gateway) the gateway runs once.
    assert errors_of(path) == [
        f"{path}:3: workers: 64 workers need a standalone gateway (jitgate proxy postgres "
        "--config FILE); jitgate serve --gateway runs the gateway in the server's own "
        "process: remove workers or set it to 1"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "workers must be from 1 to 64 (gateway processes), not 0"),
        ("-3", "workers must be from 1 to 64 (gateway processes), not -3"),
        ("65", "workers must be from 1 to 64 (gateway processes), not 65"),
        ("two", "expected a whole number, not a string"),
        ("'2'", "expected a whole number, not a string"),
        ("2.0", "expected a whole number, not a number"),
        ("true", "expected a whole number, not a boolean"),
    ],
)
def test_bad_workers(tmp_path: Path, value: str, message: str) -> None:
    path = write(tmp_path, WORKERS_BASE + f"workers: {value}\n")
    with pytest.raises(GatewayConfigError) as caught:
        load_gateway_config(path, standalone=True)
    assert str(caught.value) == f"{path}:3: workers: {message}"


def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    text = WORKERS_BASE.replace("6432", "0") + "workers: 2\n"
    path = write(tmp_path, text)
    with pytest.raises(GatewayConfigError) as caught:
        load_gateway_config(path, standalone=True)
    assert str(caught.value) == (
        f"{path}:3: workers: 2 workers need a fixed listen port: with port 0 each worker "
        "would listen on a different one"
    )
    # One process may pick its port.
    assert load_gateway_config(write(tmp_path, WORKERS_BASE.replace("6432", "0"))).listen_port == 0


def test_the_command_line_overrides_the_files_listen_and_workers(tmp_path: Path) -> None:
    path = write(tmp_path, WORKERS_BASE + "workers: 4\n")
    config = load_gateway_config(path, standalone=True)
    assert config.with_options() is config
    both = config.with_options(listen="0.0.0.0:7000", workers=2)
    assert (both.listen_host, both.listen_port, both.workers) == ("0.0.0.0", 7000, 2)
    assert both.targets == config.targets
    assert config.with_options(workers=1).with_options(listen="127.0.0.1:0").listen_port == 0
    for options, expected in [
        ({"workers": 0}, "--workers: workers must be from 1 to 64"),
        ({"listen": "127.0.0.1:0"}, "--workers: 4 workers need a fixed listen port"),
        ({"listen": "nowhere"}, "--listen: expected host:port"),
    ]:
        with pytest.raises(GatewayConfigError) as caught:
            config.with_options(**options)  # type: ignore[arg-type]
        assert str(caught.value).startswith(expected), str(caught.value)


# --- the command line's single target -----------------------------------------------------


def test_single() -> None:
    config = GatewayConfig.single("127.0.0.1:0", f"postgresql://u:{ENCODED}@db/sales", "prod")
    (target,) = config.targets
    assert target.name == "sales"  # named after the upstream database
    assert target.environment == "prod"
    assert target.upstream.resolve_password() == SECRET
    assert config.listen_port == 0
    # One target: every database name reaches it.
    assert config.target_for("sales") is target
    assert config.target_for("anything") is target

    named = GatewayConfig.single("127.0.0.1:6432", "postgresql://u@db/sales", "prod", "main")
    assert named.targets[0].name == "main"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("nowhere", "postgresql://u@db/d", "prod", None), "--listen: expected host:port"),
        (("127.0.0.1:1", "postgresql://u@db/d", "no good", None), "--env: 'no good' is not"),
        (("127.0.0.1:1", "postgresql://u@db/d", "prod", "a b"), "--target: 'a b' is not"),
        (("127.0.0.1:1", "postgresql://u@db:x/d", "prod", None), "--upstream: the DSN's port"),
        (("127.0.0.1:1", "postgresql://db/d", "prod", None), "--upstream: user: required"),
    ],
)
def test_single_errors_name_the_option(
    args: tuple[str, str, str, str | None], expected: str
) -> None:
    with pytest.raises(GatewayConfigError) as caught:
        GatewayConfig.single(*args)
    assert str(caught.value).startswith(expected), str(caught.value)


@pytest.mark.parametrize(
    ("listen", "workers", "expected"),
    [
        ("127.0.0.1:1", 0, "--workers: workers must be from 1 to 64 (gateway processes), not 0"),
        ("127.0.0.1:1", 65, "--workers: workers must be from 1 to 64 (gateway processes), not 65"),
        ("127.0.0.1:0", 2, "--workers: 2 workers need a fixed listen port: with port 0 each"),
    ],
)
def test_single_workers(listen: str, workers: int, expected: str) -> None:
    assert GatewayConfig.single("127.0.0.1:1", "postgresql://u@db/d", "prod").workers == 1
    many = GatewayConfig.single("127.0.0.1:1", "postgresql://u@db/d", "prod", workers=64)
    assert many.workers == 64
    with pytest.raises(GatewayConfigError) as caught:
        GatewayConfig.single(listen, "postgresql://u@db/d", "prod", workers=workers)
    assert str(caught.value).startswith(expected), str(caught.value)


# --- target selection ---------------------------------------------------------------------


def config_with(*names: str, default: str | None = None) -> GatewayConfig:
    targets = [{"name": n, "environment": "dev", "upstream": "postgres://u@h"} for n in names]
    return GatewayConfig.model_validate({"targets": targets, "default_target": default})


def test_target_for() -> None:
    several = config_with("app", "reports")
    app = several.target_for("app")
    assert app is not None
    assert app.name == "app"
    reports = several.target_for("reports")
    assert reports is not None
    assert reports.name == "reports"
    assert several.target_for("other") is None
    assert several.target_for("") is None
    assert several.target_for("APP") is None  # database names are case-sensitive

    defaulted = config_with("app", "reports", default="reports")
    assert defaulted.target_for("app") is defaulted.targets[0]
    assert defaulted.target_for("other") is defaulted.targets[1]

    only = config_with("app")
    assert only.target_for("whatever") is only.targets[0]
    assert only.target("whatever") is None
