"""sql_shape()'s shortcut gives exactly the lexer's shape.

For ASCII texts whose only constants are plain integers, :func:`sql_shape`
replaces runs of digits without running PostgreSQL's lexer. The shape decides
which statements share a cached "allowed" (tests/test_evaluator_shapes.py), so
the shortcut must never answer differently from the lexer: not for floats,
hexadecimal or underscored integers, integers too large for 32 bits, digits
in identifiers, comments, strings, parameters, or the keywords that give a
text no shape. Checked exhaustively for short texts over an alphabet of the
characters that matter, and by property for statement-like texts, with the
shortcut's memo cold and warm.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.actions import sql
from jitgate.actions.sql import sql_shape

#: The characters the shortcut's rules are about: digits, letters that make
#: numbers something else (``e``, ``x``, ``_``), the dot, the characters that
#: start comments, strings, quoted identifiers, parameters and escapes, and
#: white space.
ALPHABET = "0 9.ex_-/*'\"$\\\n"


def lexer_shape(text: str) -> str | None:
    return sql._lexed_shape(text)


def assert_same_shape(text: str) -> None:
    expected = lexer_shape(text)
    got = sql_shape(text)
    assert got == expected, text
    if expected is text:
        assert got is text, text  # the evaluator tells "no constant" by identity


@pytest.fixture(autouse=True)
def cold_memo() -> None:
    sql._SHORTCUTS.clear()


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_every_short_text_over_the_tricky_characters(length: int) -> None:
    for chars in itertools.product(ALPHABET, repeat=length):
        assert_same_shape("".join(chars))


WORDS = [
    "SELECT",
    "select",
    "FROM",
    "t",
    "t1",
    "x9_y",
    "e",
    "E",
    "x",
    "float",
    "FLOAT",
    "Float8",
    "float4",
    "uescape",
    "UESCAPE",
    "0",
    "7",
    "007",
    "123456789",
    "999999999",
    "1234567890",
    "2147483647",
    "2147483648",
    "99999999999",
    "0000000000001",
    "1e5",
    "1E+5",
    "1.5",
    ".5",
    "5.",
    "1_000",
    "0x1F",
    "0b101",
    "0o17",
    "123abc",
    "$1",
    "'a'",
    "E'\\n'",
    "$$x$$",
    '"t1"',
    "U&'a'",
    "B'101'",
    "X'ff'",
    "--c\n",
    "/* c */",
    "::int4",
    "=",
    "-",
    "+",
    "*",
    "/",
    "(",
    ")",
    ",",
    ";",
    "[",
    "]",
    "\x01",
    "\x7f",
    "é",
    "\x00",
]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(["", " ", "\t", "\n"]))))
def test_statement_like_texts(parts: list[tuple[str, str]]) -> None:
    text = "".join(word + space for word, space in parts)
    assert_same_shape(text)
    assert_same_shape(text)  # memo warm


@settings(max_examples=1000, deadline=None)
@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(["", "0", "00"]))
def test_integers_are_integers_only_while_they_fit_in_32_bits(value: int, zeros: str) -> None:
    text = f"SELECT abalance FROM pgbench_accounts WHERE aid = {zeros}{value};"
    assert_same_shape(text)


def test_texts_of_one_shape_share_the_memo_and_still_get_their_own_shape() -> None:
    first = sql_shape("SELECT a FROM t WHERE id = 12345")
    second = sql_shape("SELECT a FROM t WHERE id = 54321")
    assert first == second == "SELECT a FROM t WHERE id = \x00i"
    assert len(sql._SHORTCUTS) == 1
    # Same classes, but a keyword that gives no shape: the memo does not answer for it.
    assert sql_shape("SELECT float FROM t WHERE id = 12345") is None


def test_the_memo_stays_bounded() -> None:
    for n in range(sql._MAX_SHORTCUTS + 10):
        sql_shape("SELECT " + "a" * (n % 50 + 1) + " " * (n // 50) + "1")
    assert len(sql._SHORTCUTS) <= sql._MAX_SHORTCUTS
