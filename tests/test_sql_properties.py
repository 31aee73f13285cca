"""Properties of the SQL analyzer: what names, literals and comments say never matters.

A statement is written as a template of tokens. Whatever identifiers and
literals fill it and whatever whitespace or comments (full of dangerous
words) sit between its tokens, the set of finding codes stays the one of
the template.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast.parser import scan

from jitgate.actions.sql import analyze_sql

PROPERTY = settings(max_examples=200, deadline=None)

#: Words that must never turn into findings when they sit in a name, a literal or a comment.
DANGEROUS_WORDS = [
    "DROP TABLE invoices;",
    "DELETE FROM users",
    "TRUNCATE",
    "; GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC;",
    "pg_terminate_backend(1)",
    "COPY x TO PROGRAM 'rm -rf /'",
    "' OR 1=1 --",
    '"',
    "$$",
    "$x$",
    "\\",
    ";",
    "\n",
]

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=30,
)
_WORDY = st.lists(st.one_of(_TEXT, st.sampled_from(DANGEROUS_WORDS)), max_size=4).map("".join)
_SIMPLE_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def _is_bare_name(name: str) -> bool:
    if not _SIMPLE_NAME.fullmatch(name):
        return False
    tokens = scan(name)
    return len(tokens) == 1 and tokens[0].kind == "NO_KEYWORD"


def identifier(name: str) -> str:
    """``name`` as SQL: bare when it may be, double-quoted otherwise."""
    return name if _is_bare_name(name) else '"' + name.replace('"', '""') + '"'


def _names() -> st.SearchStrategy[str]:
    plain = st.from_regex(_SIMPLE_NAME, fullmatch=True).filter(lambda n: len(n) <= 40)
    words = st.sampled_from(["drop", "delete", "truncate", "select", "pg_read_file", "user"])
    # pg_temp would make a qualified name temporary; none of the templates qualify names.
    return st.one_of(plain, words, _WORDY).filter(lambda n: bool(n) and n != "pg_temp")


_STRINGS = ["string", "escape", "dollar"]


@st.composite
def literals(draw: st.DrawFn, kinds: tuple[str, ...] = (*_STRINGS, "integer", "decimal")) -> str:
    """A string or number literal, written in one of PostgreSQL's styles."""
    kind = draw(st.sampled_from(kinds))
    if kind == "integer":
        return str(draw(st.integers(min_value=0, max_value=2**31 - 1)))
    if kind == "decimal":
        return f"{draw(st.integers(0, 10**6))}.{draw(st.integers(0, 999))}"
    value = draw(_WORDY)
    if kind == "dollar" and "$" not in value:
        tag = draw(st.sampled_from(["", "q", "body", "DROP"]))
        return f"${tag}${value}${tag}$"
    if kind == "escape":
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


@st.composite
def separators(draw: st.DrawFn) -> str:
    """Whitespace or a comment full of dangerous words, between two tokens."""
    kind = draw(st.sampled_from(["space", "newline", "line_comment", "block_comment"]))
    words = draw(_WORDY)
    if kind == "line_comment":
        return " --" + re.sub(r"[\r\n]", " ", words) + "\n"
    if kind == "block_comment":
        return " /* " + words.replace("/*", "/ *").replace("*/", "* /") + " */ "
    return " " if kind == "space" else "\n\t"


#: Templates: tokens, with T/C/X (identifiers), L (literal), S (string) and N
#: (number) placeholders, and the finding codes the statement has whatever fills them.
DANGEROUS = [
    ("DELETE FROM T", {"sql.delete_without_where"}),
    ("DELETE FROM ONLY T WHERE 1 = 1", {"sql.always_true_where"}),
    ("DELETE FROM T WHERE C = L OR true", {"sql.always_true_where"}),
    ("UPDATE T SET C = L", {"sql.update_without_where"}),
    ("UPDATE T SET C = L WHERE C = C", {"sql.always_true_where"}),
    ("DROP TABLE T", {"sql.drop"}),
    ("DROP SCHEMA T CASCADE", {"sql.drop_schema"}),
    ("TRUNCATE T", {"sql.truncate"}),
    (
        "WITH X AS ( DELETE FROM T WHERE C = L RETURNING * ) SELECT * FROM X",
        {"sql.nested_dml"},
    ),
    ("EXPLAIN ANALYZE DELETE FROM T", {"sql.nested_dml", "sql.delete_without_where"}),
    ("SELECT pg_terminate_backend ( N ) FROM T", {"sql.dangerous_function"}),
    ("SELECT C , pg_catalog . pg_read_file ( L ) FROM T", {"sql.dangerous_function"}),
    ("GRANT SELECT ON T TO X", {"sql.privilege_change"}),
    ("COPY T TO PROGRAM S", {"sql.copy_program"}),
    ("COPY T FROM S", {"sql.copy_server_file"}),
    ("SET session_replication_role = replica", {"sql.replication_role"}),
    ("ALTER TABLE T ADD COLUMN C text DEFAULT L", {"sql.schema_change"}),
    ("CREATE INDEX X ON T ( C )", {"sql.schema_change", "sql.heavy_lock"}),
    ("LOCK TABLE T", {"sql.heavy_lock"}),
    ("EXECUTE X", {"sql.dynamic_sql"}),
    ("SELECT L ; SELECT N ; DROP TABLE T", {"sql.drop"}),
]

SAFE = [
    ("SELECT C FROM T WHERE X = L", set()),
    ("SELECT L , N , C FROM T", set()),
    ("INSERT INTO T ( C ) VALUES ( L ) RETURNING C", set()),
    ("UPDATE T SET C = L WHERE X = N", set()),
    ("DELETE FROM T WHERE C = L", set()),
    ("DELETE FROM T WHERE C = L AND 1 = 1", set()),
    ("EXPLAIN DELETE FROM T", set()),
    ("CREATE TEMP TABLE T ( C int )", set()),
    ("SELECT * FROM T FOR UPDATE", set()),
    ("SET search_path TO X", set()),
    ("BEGIN ; SELECT L ; COMMIT", set()),
]


@st.composite
def renderings(draw: st.DrawFn, template: str) -> str:
    names = draw(st.lists(_names(), min_size=3, max_size=3, unique=True))
    fill = {"T": identifier(names[0]), "C": identifier(names[1]), "X": identifier(names[2])}
    tokens = template.split()
    pieces: list[str] = []
    for position, token in enumerate(tokens):
        if token == "L":
            pieces.append(draw(literals()))
        elif token == "S":
            pieces.append(draw(literals(tuple(_STRINGS))))
        elif token == "N":
            pieces.append(str(draw(st.integers(min_value=0, max_value=10**9))))
        else:
            pieces.append(fill.get(token, token))
        if position < len(tokens) - 1:
            pieces.append(draw(separators()))
    return "".join(pieces)


def _plain(template: str) -> str:
    fill = {"T": "t1", "C": "c1", "X": "x1", "L": "'v'", "S": "'v'", "N": "1"}
    return " ".join(fill.get(token, token) for token in template.split())


@pytest.mark.parametrize(("template", "codes"), DANGEROUS + SAFE)
def test_templates_have_their_codes(template: str, codes: set[str]) -> None:
    analysis = analyze_sql(_plain(template))
    assert analysis.codes == codes
    assert analysis.dangerous is bool(codes)


@PROPERTY
@given(data=st.data(), case=st.sampled_from(DANGEROUS))
def test_dangerous_templates_keep_their_codes(
    data: st.DataObject, case: tuple[str, set[str]]
) -> None:
    template, codes = case
    text = data.draw(renderings(template))
    assert analyze_sql(text).codes == codes, text


@PROPERTY
@given(data=st.data(), case=st.sampled_from(SAFE))
def test_safe_templates_stay_safe(data: st.DataObject, case: tuple[str, set[str]]) -> None:
    template, codes = case
    text = data.draw(renderings(template))
    analysis = analyze_sql(text)
    assert analysis.codes == codes, text
    assert not analysis.dangerous, text


@PROPERTY
@given(name=_names(), literal=literals())
def test_names_and_literals_alone_never_matter(name: str, literal: str) -> None:
    text = f"SELECT {literal} AS {identifier(name)}, {identifier(name)} FROM {identifier(name)}"
    assert analyze_sql(text).codes == set(), text


# --- comments between the tokens of every corpus statement -----------------------------------

CORPUS = Path(__file__).parent / "corpus" / "sql.jsonl"
_COMMENT_TOKENS = {"SQL_COMMENT", "C_COMMENT"}


def _corpus_texts() -> list[str]:
    texts = []
    with CORPUS.open(encoding="utf-8") as lines:
        for line in lines:
            case = json.loads(line)
            if "sql.parse_error" not in case["codes"]:
                texts.append(case["text"])
    return texts


def _tokens(text: str) -> list[str]:
    data = text.encode("utf-8")
    return [
        data[token.start : token.end + 1].decode("utf-8")
        for token in scan(text)
        if token.name not in _COMMENT_TOKENS
    ]


CORPUS_TEXTS = _corpus_texts()


@PROPERTY
@given(data=st.data(), text=st.sampled_from(CORPUS_TEXTS))
def test_comments_between_tokens_never_change_the_codes(data: st.DataObject, text: str) -> None:
    tokens = _tokens(text)
    rebuilt = tokens[0] + "".join(data.draw(separators()) + token for token in tokens[1:])
    assert analyze_sql(rebuilt).codes == analyze_sql(text).codes, rebuilt
