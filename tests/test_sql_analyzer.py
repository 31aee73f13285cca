"""The SQL analyzer: the labelled corpus, units, subjects and hostile input."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pglast.ast
import pytest
from pglast.parser import parse_sql_json

from jitgate.actions import sql
from jitgate.actions.findings import FINDING_CODES, MAX_EXCERPT, Analysis, Risk
from jitgate.actions.sql import analyze_sql

CORPUS = Path(__file__).parent / "corpus" / "sql.jsonl"
SAMPLES = Path("/work/shared/examples/sample-actions.jsonl")
SQL_CODES = {code for code in FINDING_CODES if code.startswith("sql.")}


def _corpus() -> list[dict[str, Any]]:
    with CORPUS.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


CASES = _corpus()


# --- the labelled corpus ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{n:03d} {case['note']}" for n, case in enumerate(CASES, 1)]
)
def test_corpus_case(case: dict[str, Any]) -> None:
    analysis = analyze_sql(case["text"])
    expected_hold = case["expect"] == "hold"
    assert analysis.dangerous is expected_hold, analysis.findings
    assert set(case["codes"]) <= analysis.codes, analysis.findings


def test_corpus_is_big_and_well_formed() -> None:
    assert len(CASES) >= 170
    holds = [case for case in CASES if case["expect"] == "hold"]
    allows = [case for case in CASES if case["expect"] == "allow"]
    assert len(holds) >= 60
    assert len(allows) >= 60
    for case in CASES:
        assert case["expect"] in ("hold", "allow")
        assert set(case["codes"]) <= SQL_CODES, case
        assert case["note"]
        if case["expect"] == "hold":
            assert case["codes"], f"a hold case names the codes it expects: {case}"


def test_corpus_covers_every_sql_code() -> None:
    covered = {code for case in CASES for code in case["codes"]}
    # No statement type the parser knows is unclassified (see the test below),
    # so no corpus text can show that code.
    assert covered == SQL_CODES - {"sql.unclassified"}


@pytest.mark.skipif(not SAMPLES.exists(), reason="shared examples not available")
def test_corpus_contains_the_shared_sql_samples() -> None:
    labelled = {case["text"]: case["expect"] for case in CASES}
    with SAMPLES.open(encoding="utf-8") as lines:
        samples = [json.loads(line) for line in lines if line.strip()]
    production = [s for s in samples if s["kind"] == "sql" and s["env"] == "production"]
    assert production
    for sample in production:
        assert labelled.get(sample["text"]) == sample["expect"], sample


def test_every_emitted_code_is_a_known_code() -> None:
    extra = [
        "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",
        "CREATE TABLE t AS EXECUTE p",
        "ALTER FUNCTION f() SET session_replication_role = replica",
        "DROP SUBSCRIPTION s",
        "DROP USER MAPPING FOR u SERVER s",
        "DROP SERVER remote CASCADE",
    ]
    for text in [case["text"] for case in CASES] + extra:
        analysis = analyze_sql(text)
        for finding in analysis.findings:
            assert finding.code in SQL_CODES, finding
            assert finding.message, finding
            assert finding.excerpt or not text.strip(), finding


# --- units -----------------------------------------------------------------------------------


def test_one_unit_per_statement_with_its_exact_text() -> None:
    text = "SELECT 1;\n  DELETE FROM t WHERE id = 1 ;UPDATE t\n   SET a = 1\n WHERE id = 2;"
    analysis = analyze_sql(text)
    assert [(u.index, u.type) for u in analysis.units] == [
        (0, "select"),
        (1, "delete"),
        (2, "update"),
    ]
    assert [u.text for u in analysis.units] == [
        "SELECT 1",
        "DELETE FROM t WHERE id = 1",
        "UPDATE t\n   SET a = 1\n WHERE id = 2",
    ]
    assert analysis.findings == ()


@pytest.mark.parametrize(
    "prefix",
    ["SELECT 'héllo wörld';", "SELECT '日本語テキスト', 'ü';", "SELECT '🦀🦀🦀' AS crab;"],
)
def test_statement_text_after_non_ascii_text(prefix: str) -> None:
    analysis = analyze_sql(f"{prefix} DROP TABLE invoices; SELECT 'ça'")
    assert [u.text for u in analysis.units] == [
        prefix.rstrip(";"),
        "DROP TABLE invoices",
        "SELECT 'ça'",
    ]
    [finding] = analysis.findings
    assert (finding.code, finding.unit, finding.excerpt) == ("sql.drop", 1, "DROP TABLE invoices")


def test_leading_comments_are_not_part_of_the_statement() -> None:
    analysis = analyze_sql("-- clean up\n/* really */ DELETE FROM invoices")
    assert [u.text for u in analysis.units] == ["DELETE FROM invoices"]


@pytest.mark.parametrize(
    ("text", "unit_type"),
    [
        ("SELECT 1", "select"),
        ("VALUES (1)", "values"),
        ("INSERT INTO t VALUES (1)", "insert"),
        ("UPDATE t SET a = 1 WHERE id = 1", "update"),
        ("DELETE FROM t WHERE id = 1", "delete"),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "merge"),
        ("TRUNCATE t", "truncate"),
        ("DROP TABLE t", "drop"),
        ("DROP DATABASE d", "drop_database"),
        ("CREATE TABLE t (a int)", "create_table"),
        ("CREATE TABLE t AS SELECT 1", "create_table_as"),
        ("CREATE MATERIALIZED VIEW m AS SELECT 1", "create_materialized_view"),
        ("CREATE INDEX ON t (a)", "create_index"),
        ("CREATE VIEW v AS SELECT 1", "create_view"),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "create_function"),
        ("CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'", "create_procedure"),
        ("ALTER TABLE t ADD COLUMN b int", "alter_table"),
        ("ALTER INDEX i SET (fillfactor = 50)", "alter_index"),
        ("GRANT SELECT ON t TO r", "grant"),
        ("REVOKE SELECT ON t FROM r", "revoke"),
        ("GRANT r TO u", "grant_role"),
        ("CREATE ROLE r", "create_role"),
        ("DO $$BEGIN END$$", "do"),
        ("COPY t TO STDOUT", "copy"),
        ("EXPLAIN SELECT 1", "explain"),
        ("SET search_path TO app", "set"),
        ("RESET search_path", "reset"),
        ("SHOW work_mem", "show"),
        ("BEGIN", "transaction"),
        ("COMMIT", "transaction"),
        ("VACUUM t", "vacuum"),
        ("ANALYZE t", "analyze"),
        ("LOCK t", "lock"),
        ("CALL p()", "call"),
        ("EXECUTE p", "execute"),
        ("PREPARE p AS SELECT 1", "prepare"),
        ("CREATE AGGREGATE a (int) (sfunc = f, stype = int)", "create_aggregate"),
        ("ALTER SYSTEM SET work_mem = '1GB'", "alter_system"),
        ("COMMENT ON TABLE t IS 'x'", "comment_on"),
    ],
)
def test_unit_types(text: str, unit_type: str) -> None:
    [unit] = analyze_sql(text).units
    assert unit.type == unit_type


def test_findings_point_at_their_statement() -> None:
    text = "SELECT 1; SELECT 2; DELETE FROM invoices; SELECT 3; TRUNCATE payments"
    analysis = analyze_sql(text)
    assert len(analysis.units) == 5
    by_code = {finding.code: finding for finding in analysis.findings}
    assert by_code["sql.delete_without_where"].unit == 2
    assert by_code["sql.delete_without_where"].excerpt == "DELETE FROM invoices"
    assert by_code["sql.truncate"].unit == 4
    assert by_code["sql.truncate"].excerpt == "TRUNCATE payments"


def test_the_same_finding_in_two_statements_is_kept_twice() -> None:
    analysis = analyze_sql("DELETE FROM t; DELETE FROM t")
    assert [f.unit for f in analysis.findings] == [0, 1]


def test_duplicate_findings_in_one_statement_are_merged() -> None:
    analysis = analyze_sql("SELECT pg_terminate_backend(1), pg_terminate_backend(1)")
    assert len(analysis.findings) == 1


def test_excerpt_is_bounded() -> None:
    text = "DELETE FROM invoices " + " ".join(f"/* {n} */" for n in range(2000))
    [finding] = analyze_sql(text).findings
    assert len(finding.excerpt) <= MAX_EXCERPT
    assert finding.excerpt.startswith("DELETE FROM invoices")


# --- subjects and messages -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code", "subject"),
    [
        ("DELETE FROM public.invoices", "sql.delete_without_where", "public.invoices"),
        ("UPDATE users SET a = 1", "sql.update_without_where", "users"),
        ("DELETE FROM invoices WHERE 1 = 1", "sql.always_true_where", "invoices"),
        ("WITH d AS (DELETE FROM logs RETURNING 1) SELECT 1", "sql.nested_dml", "logs"),
        ("TRUNCATE a, b", "sql.truncate", "a, b"),
        ("DROP TABLE a, s.b", "sql.drop", "a, s.b"),
        ("DROP FUNCTION purge(int)", "sql.drop", "purge"),
        ("DROP SCHEMA billing", "sql.drop_schema", "billing"),
        ("DROP DATABASE prod", "sql.drop_database", "prod"),
        ("DROP ROLE analyst", "sql.role_change", "analyst"),
        ("GRANT SELECT ON users TO PUBLIC", "sql.privilege_change", "users"),
        ("CREATE TABLE orders (id int)", "sql.schema_change", "orders"),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "sql.schema_change", "f"),
        (
            "SELECT pg_catalog.pg_terminate_backend(1)",
            "sql.dangerous_function",
            "pg_catalog.pg_terminate_backend",
        ),
        ("SELECT PG_READ_FILE('/etc/passwd')", "sql.dangerous_function", "pg_read_file"),
        ("COPY users TO PROGRAM 'gzip'", "sql.copy_program", "users"),
        ("LOCK TABLE invoices", "sql.heavy_lock", "invoices"),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "sql.merge", "t"),
        ("EXECUTE purge", "sql.dynamic_sql", "purge"),
        (
            "SET session_replication_role = replica",
            "sql.replication_role",
            "session_replication_role",
        ),
    ],
)
def test_subjects(text: str, code: str, subject: str) -> None:
    analysis = analyze_sql(text)
    assert subject in [f.subject for f in analysis.findings if f.code == code], analysis.findings


def test_messages_name_the_object_and_the_danger() -> None:
    [finding] = analyze_sql("DELETE FROM invoices").findings
    assert finding.message == "DELETE from invoices has no WHERE clause: it deletes every row"
    [finding] = analyze_sql("UPDATE users SET a = 1 WHERE 'x' = 'x'").findings
    assert "users" in finding.message
    assert "always true" in finding.message
    [finding] = analyze_sql("DROP TABLE invoices").findings
    assert "invoices" in finding.message


def test_risk_adjustments() -> None:
    assert analyze_sql("CALL p()").risk is Risk.MEDIUM
    set_role = analyze_sql("SET ROLE reporting")
    assert set_role.risk is Risk.LOW
    assert not set_role.dangerous
    assert analyze_sql("DROP DATABASE d").risk is Risk.CRITICAL


# --- semantics worth pinning down ------------------------------------------------------------


@pytest.mark.parametrize(
    "inner",
    [
        "DELETE FROM t",
        "UPDATE t SET a = 1",
        "SELECT pg_terminate_backend(1)",
        "INSERT INTO t SELECT * FROM u",
        "CREATE TABLE x AS SELECT 1",
        "EXECUTE p",
    ],
)
def test_plain_explain_has_no_findings(inner: str) -> None:
    assert analyze_sql(f"EXPLAIN {inner}").findings == ()
    assert analyze_sql(f"EXPLAIN ANALYZE {inner}").findings != () or inner.startswith("INSERT")


def test_function_settings_are_analysed() -> None:
    analysis = analyze_sql("ALTER FUNCTION f() SET session_replication_role = replica")
    assert {"sql.schema_change", "sql.replication_role"} <= analysis.codes


def test_nested_dml_in_a_function_body_reports_the_nesting() -> None:
    analysis = analyze_sql(
        "CREATE FUNCTION purge() RETURNS void LANGUAGE plpgsql AS "
        "$$BEGIN DELETE FROM invoices; END$$"
    )
    nested = [f for f in analysis.findings if f.code == "sql.nested_dml"]
    assert nested
    assert "purge" in nested[0].message
    assert nested[0].subject == "invoices"


def test_unparsable_function_body_is_held() -> None:
    analysis = analyze_sql(
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$BEGIN garbage here; END$$"
    )
    assert "sql.dynamic_sql" in analysis.codes
    assert analysis.dangerous


def test_deeply_nested_function_bodies_are_held() -> None:
    body = "DELETE FROM t WHERE id = 1"
    for _ in range(10):
        quoted = body.replace("'", "''")
        body = f"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS '{quoted}'"
    analysis = analyze_sql(body)
    assert "sql.dynamic_sql" in analysis.codes


def test_every_parser_statement_type_has_a_handler() -> None:
    statements = {name for name in dir(pglast.ast) if name.endswith("Stmt")}
    # Not statements of their own: wrappers and PL/pgSQL-only or post-analysis nodes.
    not_top_level = {"RawStmt", "SetOperationStmt", "PLAssignStmt", "ReplicaIdentityStmt"}
    assert statements - not_top_level - set(sql._HANDLERS) == set()


def test_a_statement_type_without_handler_is_unclassified(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handlers = {tag: h for tag, h in sql._HANDLERS.items() if tag != "ListenStmt"}
    monkeypatch.setattr(sql, "_HANDLERS", handlers)
    analysis = analyze_sql("LISTEN jobs")
    assert analysis.codes == {"sql.unclassified"}
    assert analysis.dangerous


def test_analysis_is_deterministic() -> None:
    text = "WITH d AS (DELETE FROM t RETURNING *) SELECT pg_reload_conf(); DROP TABLE x"
    assert analyze_sql(text) == analyze_sql(text)


# --- hostile input ---------------------------------------------------------------------------


def _is_parse_error(analysis: Analysis) -> bool:
    return analysis.codes == {"sql.parse_error"} and analysis.risk is Risk.CRITICAL


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "no SQL statement"),
        ("   \n\t  ", "no SQL statement"),
        ("-- nothing but a comment", "no SQL statement"),
        ("/* nothing */ ;;", "no SQL statement"),
        ("SELECT 1\x00; DROP TABLE t", "NUL"),
        ("SELECT '\udcff'", "Unicode"),
        ("SELEC 1", "does not parse"),
    ],
)
def test_bad_text_is_a_parse_error(text: str, words: str) -> None:
    analysis = analyze_sql(text)
    assert _is_parse_error(analysis)
    [finding] = analysis.findings
    assert words in finding.message
    assert finding.unit == 0
    assert [u.index for u in analysis.units] == [0]


def test_random_bytes_never_raise() -> None:
    rng = random.Random(20240601)
    for _ in range(300):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        analysis = analyze_sql(raw.decode("utf-8", errors="surrogateescape"))
        assert isinstance(analysis, Analysis)


def test_hundred_thousand_parentheses() -> None:
    analysis = analyze_sql("SELECT " + "(" * 100_000 + "1" + ")" * 100_000)
    assert _is_parse_error(analysis)


def test_nesting_beyond_the_json_decoder() -> None:
    # Parses, but its JSON is nested deeper than Python's recursion limit.
    analysis = analyze_sql("DELETE FROM t WHERE " + "NOT " * 5_000 + "false")
    assert analysis.dangerous


def test_deep_where_clause_fails_closed() -> None:
    analysis = analyze_sql("DELETE FROM t WHERE " + "NOT " * 300 + "false")
    assert analysis.dangerous
    assert analysis.codes & {"sql.always_true_where", "sql.parse_error"}


def test_like_patterns_cannot_backtrack_forever() -> None:
    subject, pattern = "a" * 900, "%a" * 40 + "b"
    start = time.thread_time()
    analysis = analyze_sql(f"DELETE FROM t WHERE '{subject}' LIKE '{pattern}'")
    assert time.thread_time() - start < 1
    assert analysis.findings == ()
    flagged = analyze_sql(f"DELETE FROM t WHERE '{subject}b' LIKE '{pattern}'")
    assert "sql.always_true_where" in flagged.codes


def test_long_or_chains_are_not_too_deep() -> None:
    where = " OR ".join(f"id = {n}" for n in range(5_000))
    assert analyze_sql(f"DELETE FROM t WHERE {where}").findings == ()
    assert "sql.always_true_where" in analyze_sql(f"DELETE FROM t WHERE {where} OR 1=1").codes


def _bare_parse_seconds(text: str) -> float:
    start = time.thread_time()
    json.loads(parse_sql_json(text))
    return time.thread_time() - start


def _analysis_seconds(text: str) -> tuple[float, Analysis]:
    start = time.thread_time()
    analysis = analyze_sql(text)
    return time.thread_time() - start, analysis


@pytest.mark.slow
def test_ten_megabyte_statements_are_analysed_in_linear_time() -> None:
    literal = "SELECT '" + "DROP TABLE x; " * 750_000 + "'"
    assert len(literal) > 10_000_000
    seconds, analysis = _analysis_seconds(literal)
    assert analysis.units[0].type == "select"
    assert analysis.findings == ()
    assert seconds < 4 * _bare_parse_seconds(literal) + 0.5

    in_list = "DELETE FROM t WHERE id IN (" + ",".join(map(str, range(200_000))) + ")"
    seconds, analysis = _analysis_seconds(in_list)
    assert analysis.findings == ()
    assert seconds < 4 * _bare_parse_seconds(in_list) + 0.5

    bulk = in_list.replace("WHERE id IN", "WHERE 1 = 1 OR id IN")
    assert "sql.always_true_where" in analyze_sql(bulk).codes
