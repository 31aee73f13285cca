"""Shell analyzer on tree-sitter-bash.

A command line is parsed with tree-sitter-bash and every simple command that
would run is extracted, wherever it sits: lists, pipelines, subshells, groups,
``if``/``while``/``for``/``case`` bodies and conditions, function bodies (a
function may be called, so its body counts), command and process
substitutions anywhere in a word (arguments, assignments, strings, redirect
targets, here-documents), and through wrappers (``sudo``, ``env``,
``timeout``, ``xargs``...) and nested shells (``sh -c``, ``ssh host cmd``,
``su -c``), whose command strings are parsed in turn.

Each such command is a :class:`~jitgate.actions.findings.Unit`:

* ``type`` is the command name (the base name of what was written, after
  quote removal: ``/bin/rm``, ``\\rm`` and ``r''m`` are all ``rm``), with its
  verb where the verb matters (``kubectl delete``, ``git push``);
* ``text`` is the command's exact source text, including the wrappers it was
  given to (``sudo -u app rm -rf /srv/x``) and its redirects. A wrapper that
  only changes how a command runs (sudo, env, nice, timeout, xargs, sh -c) is
  not a unit of its own; one that reaches somewhere else (``ssh``, ``kubectl
  exec``, ``docker exec``, ``find -exec``) is, followed by the command it runs.
  Commands from a re-parsed string (``sh -c '...'``) have that string's text.

What the commands mean is :mod:`jitgate.actions.commands`' business. This
module fails closed: text that does not parse, that is empty, that holds NUL
bytes, or that nests deeper than the analyzer follows is reported, never
silently passed.

Scripts and programs whose code is not on the command line (``./deploy.sh``,
``bash x.sh``, ``source env.sh``, ``python manage.py ...``, ``python -c``)
are ``shell.unseen_script``: the analyzer cannot vouch for them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import tree_sitter as ts
import tree_sitter_bash as tsb

from jitgate.actions.commands import (
    DOWNLOADERS,
    SUBSTITUTION,
    TERMINAL,
    UNKNOWN_PIPE,
    Argv,
    Expansion,
    Feed,
    Hit,
    Invocation,
    Part,
    Stdin,
    Word,
    command_name,
    output_of,
    recognizer_for,
    write_target_hits,
)
from jitgate.actions.findings import Analysis, Finding, Unit, excerpt

_LANGUAGE = ts.Language(tsb.language())

#: tree-sitter-bash's external scanner (0.25) calls isalpha()/isdigit() on the
#: code point it looks at; beyond Latin-1 that reads outside glibc's table and,
#: depending on the memory layout, crashes the process. Bash itself treats every
#: non-ASCII byte as an ordinary word character, so the tree is built from a
#: copy where each such byte is ":" (a plain word character), byte for byte:
#: offsets are unchanged and every text and value is read from the original.
_ASCII_SHAPE = bytes(range(128)) + b":" * 128

#: How deep statements, substitutions and nested shells may nest before the
#: analyzer stops following (and holds the command as ``shell.dynamic_command``).
MAX_NESTING = 48
#: How many shells deep a command string is re-parsed (``sh -c "sh -c '...'"``).
MAX_SCRIPTS = 8
#: How many wrappers may be stacked on one command (``sudo env nice ...``).
MAX_WRAPPERS = 32
#: Nodes looked at when checking whether a substitution downloads something.
_DOWNLOAD_SCAN_BUDGET = 4096

DYNAMIC = "<dynamic>"
UNPARSED = "<unparsed>"
REDIRECT = "redirect"

_WRITES = frozenset({">", ">|", ">>", "&>", "&>>", ">&", "<>"})
_APPENDS = frozenset({">>", "&>>"})
_SUBSTITUTIONS = frozenset({"command_substitution", "process_substitution"})
_HEREDOC_PARTS = frozenset({"<<", "<<-", "heredoc_start", "heredoc_body", "heredoc_end"})


def analyze_shell(text: str) -> Analysis:
    """The units and findings of one shell command line (or script)."""
    collector = _Collector()
    if "\x00" in text:
        # bash stops reading a command string at a NUL; whatever a gateway
        # does with the rest, it is not what an approver would read
        collector.unparsed(text, "command text contains a NUL byte")
        text = text.replace("\x00", "\n")
    if not text.strip():
        collector.unparsed(text, "no command")
    else:
        _Script(collector, text.encode("utf-8", "surrogatepass"), depth=0).run(TERMINAL, 0)
    findings = sorted(collector.findings, key=lambda f: f.unit)  # stable: source order within
    return Analysis.of(tuple(collector.units), tuple(findings))


# --- what the analysis accumulates ---------------------------------------------------------


@dataclass(slots=True)
class _Collector:
    units: list[Unit] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    _excerpts: dict[int, str] = field(default_factory=dict)
    _seen: set[tuple[str, int, str, str]] = field(default_factory=set)

    def unit(self, type_: str, text: str) -> int:
        index = len(self.units)
        self.units.append(Unit(index, type_, text))
        return index

    def hit(self, unit: int, hit: Hit) -> None:
        key = (hit.code, unit, hit.subject, hit.message)
        if key in self._seen:
            return
        self._seen.add(key)
        if unit not in self._excerpts:
            self._excerpts[unit] = excerpt(self.units[unit].text)
        self.findings.append(
            Finding.of(
                hit.code,
                hit.message,
                unit=unit,
                excerpt=self._excerpts[unit],
                subject=hit.subject,
                risk=hit.risk,
            )
        )

    def unparsed(self, text: str, why: str) -> None:
        self.hit(self.unit(UNPARSED, text), Hit("shell.parse_error", why))


# --- one parsed text: the command line or a nested command string --------------------------


@dataclass(frozen=True, slots=True)
class _Redirects:
    """What a command's redirects amount to."""

    writes: tuple[tuple[str, ts.Node], ...] = ()  # (operator, target)
    extra_args: tuple[ts.Node, ...] = ()  # words tree-sitter hung on a redirect
    stdin: Stdin | None = None
    end: int = 0  # where the command's text ends, heredoc bodies excluded


@dataclass(frozen=True, slots=True)
class _Heredoc:
    body: str
    line_end: int  # the end of the line with <<EOF: the body starts on the next
    opener_end: int  # end of the delimiter word after <<
    quoted: bool  # <<'EOF': no expansion or substitution in the body


class _Script:
    def __init__(self, collector: _Collector, source: bytes, depth: int) -> None:
        self.acc = collector
        self.src = source
        self.depth = depth
        self.spans: list[tuple[int, int, int]] = []  # (unit, start, end) of this text's units
        self.heredocs: dict[int, _Heredoc] = {}
        self.heredoc_floor = 0

    # -- entry -----------------------------------------------------------------------------

    def run(self, stdin: Stdin, level: int) -> int | None:
        """Analyse the text; the index of its first unit, if any."""
        first_unit = len(self.acc.units)
        tree = ts.Parser(_LANGUAGE).parse(self.src.translate(_ASCII_SHAPE))
        root = tree.root_node
        if self.depth == 0 and all(c.type == "comment" for c in root.named_children):
            self.acc.unparsed(self.text(0, len(self.src)), "no command")
            return first_unit
        self.scan(root, stdin, level)
        if root.has_error:
            self.report_parse_error(root)
        return first_unit if len(self.acc.units) > first_unit else None

    def text(self, start: int, end: int) -> str:
        return self.src[start:end].decode("utf-8", "replace")

    def node_text(self, node: ts.Node) -> str:
        return self.text(node.start_byte, node.end_byte)

    def unit(self, type_: str, span: tuple[int, int]) -> int:
        index = self.acc.unit(type_, self.text(*span))
        self.spans.append((index, *span))
        return index

    # -- walking ---------------------------------------------------------------------------

    def scan(self, node: ts.Node, stdin: Stdin, level: int) -> Stdin:
        """Find and analyse the commands under ``node``, in source order.

        Returns what the last statement found writes to its standard output
        (what a pipeline's next stage reads).
        """
        if level > MAX_NESTING:
            self.too_deep(node)
            return UNKNOWN_PIPE
        out = UNKNOWN_PIPE
        stack = [node]
        while stack:
            current = stack.pop()
            kind = current.type
            if kind == "command":
                out = self.command(current, (), stdin, level + 1)
            elif kind == "redirected_statement":
                out = self.redirected(current, stdin, level + 1)
            elif kind == "pipeline":
                out = self.pipeline(current.children, stdin, level + 1)
            elif kind in _SUBSTITUTIONS:
                self.substitution(current, stdin, level + 1)
            else:
                stack.extend(reversed(current.children))
        return out

    def pipeline(self, stages: Iterable[ts.Node], stdin: Stdin, level: int) -> Stdin:
        current = stdin
        for stage in stages:
            if stage.is_named and stage.type != "comment":
                current = self.scan(stage, current, level)
        return current

    def substitution(self, node: ts.Node, stdin: Stdin, level: int) -> None:
        inner = node.children[1:-1]
        if node.children and node.children[0].type == "`" and inner:
            body = self.src[inner[0].start_byte : inner[-1].end_byte]
            if b"\\" in body:
                # inside backticks the shell removes one level of backslashes
                # before parsing: \` starts a nested substitution
                self.nested(
                    _unescape_backticks(body), stdin, (node.start_byte, node.end_byte), level
                )
                return
        for child in inner:
            self.scan(child, stdin, level)

    def redirected(self, node: ts.Node, stdin: Stdin, level: int) -> Stdin:
        body = node.child_by_field_name("body")
        redirects = [
            c for i, c in enumerate(node.children) if node.field_name_for_child(i) == "redirect"
        ]
        if body is None or body.type == "command":
            return self.command(body, redirects, stdin, level, anchor=node)
        facts = self.redirect_facts(redirects)
        mark = len(self.acc.units)
        out = self.scan(body, facts.stdin or stdin, level)
        owner = mark if len(self.acc.units) > mark else None
        self.check_writes(facts, owner, (node.start_byte, facts.end or node.end_byte))
        if facts.extra_args:
            words = tuple(self.word(n) for n in facts.extra_args)
            self.argv(words, stdin, False, (words[0].start, words[-1].end), level)
        self.redirect_tails(redirects, out, stdin, level)
        return out

    def command(
        self,
        node: ts.Node | None,
        redirects: Sequence[ts.Node],
        stdin: Stdin,
        level: int,
        anchor: ts.Node | None = None,
    ) -> Stdin:
        """One simple command, with the redirects of the statement around it."""
        name: ts.Node | None = None
        args: list[ts.Node] = []
        own_redirects: list[ts.Node] = []
        assignments: list[ts.Node] = []
        if node is not None:
            for i, child in enumerate(node.children):
                role = node.field_name_for_child(i)
                if role == "name":
                    name = child.children[0] if child.children else child
                elif role == "argument":
                    args.append(child)
                elif role == "redirect":
                    own_redirects.append(child)
                elif child.is_named:
                    assignments.append(child)
        all_redirects = [*own_redirects, *redirects]
        facts = self.redirect_facts(all_redirects)
        word_nodes = [name, *args] if name is not None else args
        word_nodes += facts.extra_args
        words = tuple(self.word(n) for n in word_nodes)
        outer = anchor or node
        start = outer.start_byte if outer is not None else words[0].start if words else 0
        end = max(facts.end, node.end_byte if node else 0, words[-1].end if words else 0)
        span = (start, end)
        first, out = (
            self.argv(words, facts.stdin or stdin, False, span, level) if words else (None, stdin)
        )
        self.check_writes(facts, first, span)
        for assignment in assignments:
            self.scan(assignment, stdin, level)
        for word_node, word in zip(word_nodes, words, strict=True):
            if word.substitutes:
                self.scan(word_node, stdin, level)
        self.redirect_tails(all_redirects, out, stdin, level)
        return out

    def redirect_facts(self, redirects: Sequence[ts.Node]) -> _Redirects:
        writes: list[tuple[str, ts.Node]] = []
        extra: list[ts.Node] = []
        stdin: Stdin | None = None
        end = 0
        for redirect in redirects:
            if redirect.type != "heredoc_redirect":
                end = max(end, redirect.end_byte)
            if redirect.type == "file_redirect":
                op, targets = "", []
                for i, child in enumerate(redirect.children):
                    if redirect.field_name_for_child(i) == "destination":
                        targets.append(child)
                    elif not child.is_named:
                        op = child.type
                if not targets:
                    continue
                extra.extend(targets[1:])
                target = targets[0]
                if op in _WRITES and not (op == ">&" and target.type == "number"):
                    writes.append((op, target))
                elif op == "<":
                    word = self.word(target)
                    feed = Feed.DOWNLOAD if word.downloads else Feed.FILE
                    stdin = Stdin(feed, origin=word.shown)
            elif redirect.type == "herestring_redirect":
                if redirect.named_children:
                    text = self.word(redirect.named_children[-1]).shell_text
                    stdin = Stdin(Feed.TEXT, text + "\n", "here-string")
            elif redirect.type == "heredoc_redirect":
                doc = self.heredoc(redirect)
                end = max(end, doc.opener_end)
                extra.extend(
                    child
                    for i, child in enumerate(redirect.children)
                    if redirect.field_name_for_child(i) == "argument"
                    and child.end_byte <= doc.line_end
                )
                stdin = Stdin(Feed.TEXT, doc.body, "here-document")
        return _Redirects(tuple(writes), tuple(extra), stdin, end)

    def redirect_tails(
        self, redirects: Sequence[ts.Node], out: Stdin, stdin: Stdin, level: int
    ) -> None:
        """Substitutions in redirects, and what tree-sitter hangs on a here-document:
        the rest of the line after ``<<EOF`` (``| psql``, ``&& rm x``)."""
        for redirect in redirects:
            if redirect.type == "file_redirect":
                # only the target: the words after it are the command's arguments
                target = redirect.child_by_field_name("destination")
                if target is not None:
                    self.scan(target, stdin, level)
                continue
            if redirect.type != "heredoc_redirect":
                self.scan(redirect, stdin, level)
                continue
            doc = self.heredoc(redirect)
            for i, child in enumerate(redirect.children):
                role = redirect.field_name_for_child(i)
                if child.end_byte > doc.line_end:
                    # the body: substitutions run unless the delimiter is quoted
                    if not doc.quoted and child.type != "heredoc_end":
                        self.scan(child, stdin, level)
                elif child.type == "pipeline":
                    self.pipeline(child.children, out, level)
                elif child.is_named and child.type not in _HEREDOC_PARTS and role != "argument":
                    self.scan(child, stdin, level)

    def heredoc(self, redirect: ts.Node) -> _Heredoc:
        """Where a here-document's body is, read from the source rather than the
        tree: tree-sitter-bash lexes body lines that start with a backslash as
        words of the command (``psql <<'EOF'`` followed by ``\\c db``)."""
        known = self.heredocs.get(redirect.start_byte)
        if known is not None:
            return known
        opener = next((c for c in redirect.children if c.type == "heredoc_start"), redirect)
        closer = next((c for c in redirect.children if c.type == "heredoc_end"), None)
        newline = self.src.find(b"\n", opener.end_byte)
        line_end = len(self.src) if newline < 0 else newline
        start = line_end + 1
        start = max(start, self.heredoc_floor)  # the second of two heredocs on one line
        stop = closer.start_byte if closer is not None and closer.start_byte >= start else None
        body = self.text(start, len(self.src) if stop is None else stop)
        if any(c.type == "<<-" for c in redirect.children):
            body = re.sub(r"(?m)^\t+", "", body)
        delimiter = self.node_text(opener)
        quoted = any(mark in delimiter for mark in "'\"\\")
        doc = _Heredoc(body, line_end, opener.end_byte, quoted)
        self.heredoc_floor = max(self.heredoc_floor, closer.end_byte if closer else start)
        self.heredocs[redirect.start_byte] = doc
        return doc

    def check_writes(self, facts: _Redirects, owner: int | None, span: tuple[int, int]) -> None:
        for op, target in facts.writes:
            word = self.word(target)
            if word.value is None:
                continue
            how = "redirect appends to" if op in _APPENDS else "redirect overwrites"
            for hit in write_target_hits(word.value, how):
                if owner is None:
                    owner = self.unit(REDIRECT, span)
                self.acc.hit(owner, hit)

    # -- commands --------------------------------------------------------------------------

    def argv(
        self,
        words: tuple[Word, ...],
        stdin: Stdin,
        via_xargs: bool,
        span: tuple[int, int],
        level: int,
    ) -> tuple[int | None, Stdin]:
        """Unwrap and recognise one command; its first unit and its output."""
        first: int | None = None
        for _ in range(MAX_WRAPPERS):
            if not words:
                return first, UNKNOWN_PIPE
            name = words[0]
            if name.value is None or name.glob or name.brace or not name.value:
                index = self.unit(DYNAMIC, span)
                self.acc.hit(
                    index,
                    Hit(
                        "shell.dynamic_command",
                        f"command name built at run time: {name.text}",
                        name.text,
                    ),
                )
                if name.downloads:
                    self.acc.hit(
                        index, Hit("shell.remote_code", "runs a downloaded command", name.text)
                    )
                return index if first is None else first, UNKNOWN_PIPE
            invocation = Invocation(
                command_name(name.value), name.value, words[1:], stdin, via_xargs
            )
            found = recognizer_for(invocation.name)(invocation)
            if found.transparent and len(found.inner) == 1:
                inner = found.inner[0]
                if isinstance(inner, Argv):
                    words, via_xargs = inner.words, via_xargs or inner.via_xargs
                    continue
                nested = self.nested(inner.text, inner.stdin or stdin, span, level)
                return nested if first is None else first, UNKNOWN_PIPE
            index = self.unit(found.type, span)
            first = index if first is None else first
            for hit in found.hits:
                self.acc.hit(index, hit)
            mark = len(self.acc.units)
            for inner in found.inner:
                if isinstance(inner, Argv):
                    if not inner.words:
                        continue
                    inner_span = (inner.words[0].start, inner.words[-1].end)
                    if inner_span[1] <= inner_span[0]:
                        inner_span = span
                    self.argv(inner.words, stdin, inner.via_xargs, inner_span, level + 1)
                else:
                    self.nested(inner.text, inner.stdin or stdin, span, level)
            if found.followup is not None:
                ran = frozenset(u.type for u in self.acc.units[mark:])
                for hit in found.followup(ran):
                    self.acc.hit(index, hit)
            return first, output_of(invocation)
        index = self.unit(DYNAMIC, span)
        self.acc.hit(index, Hit("shell.dynamic_command", "too many stacked wrappers to follow"))
        return index if first is None else first, UNKNOWN_PIPE

    def nested(
        self, text: str | bytes, stdin: Stdin, span: tuple[int, int], level: int
    ) -> int | None:
        """A command string run by a shell: parsed and analysed in turn."""
        if self.depth + 1 > MAX_SCRIPTS or level + 1 > MAX_NESTING:
            index = self.unit(DYNAMIC, span)
            self.acc.hit(index, Hit("shell.dynamic_command", "shells nested too deeply to follow"))
            return index
        source = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        return _Script(self.acc, source, self.depth + 1).run(stdin, level + 1)

    def too_deep(self, node: ts.Node) -> None:
        index = self.unit(DYNAMIC, (node.start_byte, node.end_byte))
        self.acc.hit(index, Hit("shell.dynamic_command", "commands nested too deeply to follow"))

    def report_parse_error(self, root: ts.Node) -> None:
        error = _first_error(root)
        where = error.start_byte if error is not None else 0
        owner = next((u for u, s, e in reversed(self.spans) if s <= where < e), None)
        if error is None:
            what = "does not parse"
        elif error.is_missing:
            what = f"missing {error.type!r}"
        else:
            what = f"does not parse near {excerpt(self.node_text(error), 40)!r}"
        hit = Hit("shell.parse_error", f"command line {what}")
        if owner is None:
            owner = self.unit(UNPARSED, (0, len(self.src)))
        self.acc.hit(owner, hit)

    # -- words -----------------------------------------------------------------------------

    def word(self, node: ts.Node) -> Word:
        text = self.node_text(node)
        kind = node.type
        start, end = node.start_byte, node.end_byte
        if kind == "word":  # the common case, kept cheap
            value = _unescape_word(text)
            glob = _GLOB_CHARS.search(text) is not None
            brace = ("{" in text or "}" in text) and "," in text
            return Word(text, (value,), value, start, end, glob, brace)
        if kind == "raw_string":
            return Word(text, (text[1:-1],), text[1:-1], start, end)
        parts: list[Part] = []
        flags = _WordFlags()
        self.parts(node, text, parts, flags)
        runs = any(isinstance(p, Expansion) and p.opaque == SUBSTITUTION for p in parts)
        return Word.of(
            text,
            parts,
            start,
            end,
            glob=flags.glob,
            brace=flags.brace and "," in text,
            downloads=runs and _downloads(node, self.src),
        )

    def parts(self, node: ts.Node, raw: str, out: list[Part], flags: _WordFlags) -> None:
        kind = node.type
        if kind == "word":
            if _GLOB_CHARS.search(raw):
                flags.glob = True
            if "{" in raw or "}" in raw:
                flags.brace = True
            out.append(_unescape_word(raw))
        elif kind == "raw_string":
            out.append(raw[1:-1])
        elif kind == "string":
            for child in node.children:
                if child.type == "string_content":
                    out.append(_unescape_double(self.node_text(child)))
                elif child.type != '"':
                    out.append(_expansion(child, self.node_text(child)))
        elif kind == "ansi_c_string":
            out.append(_ansi_c(raw[2:-1]))
        elif kind in ("concatenation", "translated_string"):
            for child in node.children:
                self.parts(child, self.node_text(child), out, flags)
        elif kind in ("number", "$", "brace_expression"):
            flags.brace |= kind == "brace_expression"
            out.append(raw)
        else:
            out.append(_expansion(node, raw))


@dataclass(slots=True)
class _WordFlags:
    glob: bool = False
    brace: bool = False


def _expansion(node: ts.Node, text: str) -> Expansion:
    guarded = node.type == "expansion" and any(c.type in (":?", "?") for c in node.children)
    return Expansion(text, guarded)


def _downloads(node: ts.Node, src: bytes) -> bool:
    """Whether a substitution under ``node`` runs curl, wget and the like."""
    stack = [node]
    budget = _DOWNLOAD_SCAN_BUDGET
    while stack and budget:
        budget -= 1
        current = stack.pop()
        if current.type == "command_name":
            name = src[current.start_byte : current.end_byte].decode("utf-8", "replace")
            if command_name(_unescape_word(name.strip("'\""))) in DOWNLOADERS:
                return True
        stack.extend(current.children)
    return False


def _first_error(root: ts.Node) -> ts.Node | None:
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            return node
        stack.extend(reversed([c for c in node.children if c.has_error or c.is_missing]))
    return None


# --- quoting ---------------------------------------------------------------------------------

_WORD_ESCAPE = re.compile(r"\\(.)", re.S)
_GLOB_CHARS = re.compile(r"(?<!\\)[*?\[]")
_DOUBLE_ESCAPE = re.compile(r'\\([$`"\\\n])')
_ANSI_ESCAPE = re.compile(
    r"\\(x[0-9a-fA-F]{1,2}|u[0-9a-fA-F]{1,4}|U[0-9a-fA-F]{1,8}|[0-7]{1,3}|c.|.)", re.S
)
_ANSI_SIMPLE = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}


def _unescape_word(raw: str) -> str:
    """An unquoted word after quote removal: ``\\rm`` is ``rm``."""
    if "\\" not in raw:
        return raw
    return _WORD_ESCAPE.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), raw)


def _unescape_double(raw: str) -> str:
    if "\\" not in raw:
        return raw
    return _DOUBLE_ESCAPE.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), raw)


def _ansi_c(raw: str) -> str:
    """The value of ``$'...'``."""

    def decode(match: re.Match[str]) -> str:
        esc = match.group(1)
        head = esc[0]
        if head in "xuU" and len(esc) > 1:
            code = int(esc[1:], 16)
            return chr(code) if code < 0x110000 else ""
        if head.isdigit() and head in "01234567":
            return chr(int(esc, 8) & 0xFF)
        if head == "c" and len(esc) == 2:
            return chr(ord(esc[1]) & 0x1F)
        return _ANSI_SIMPLE.get(esc, "\\" + esc)

    return _ANSI_ESCAPE.sub(decode, raw)


def _unescape_backticks(body: bytes) -> bytes:
    return re.sub(rb"\\([$`\\])", rb"\1", body)
