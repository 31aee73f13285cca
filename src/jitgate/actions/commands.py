"""What individual commands do: one recognizer per command name.

The shell analyzer (:mod:`jitgate.actions.shell`) turns a command line into
simple commands whose words are resolved as far as they are static. This
module knows what those commands mean: a recognizer takes the resolved
invocation (name, arguments, where its standard input comes from) and returns
a :class:`Recognition`: the unit type (``kubectl delete``), the findings, and
for wrappers and hops the command or script they run in turn.

Everything here is pure: no I/O, no global state. Recognizers never look at
the filesystem; a path is judged by its spelling alone.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum

from jitgate.actions.findings import Risk


def _names(text: str) -> frozenset[str]:
    """A vocabulary written as one space-separated string."""
    return frozenset(text.split())


def _prefixes(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# --- words -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expansion:
    """A part of a word only known at run time (``$X``, ``${X}``, ``$(...)``)."""

    text: str
    #: ``${X:?}`` aborts instead of expanding to nothing
    guarded: bool = False

    @property
    def opaque(self) -> str:
        runs = any(mark in self.text for mark in ("$(", "`", "<(", ">("))
        return SUBSTITUTION if runs else self.text


Part = str | Expansion

#: Stands for a substitution's output when a dynamic string is parsed as shell.
SUBSTITUTION = "$SUBSTITUTION"


@dataclass(frozen=True, slots=True)
class Word:
    """One shell word: its source text and, when static, its value after quote removal."""

    text: str
    parts: tuple[Part, ...]
    value: str | None
    start: int = 0
    end: int = 0
    #: unquoted ``*``, ``?`` or ``[``: the shell replaces the word by file names
    glob: bool = False
    #: unquoted ``{a,b}``: the shell turns the word into several
    brace: bool = False
    #: holds a command or process substitution that downloads something
    downloads: bool = False
    #: holds a command or process substitution: commands the shell runs first
    substitutes: bool = False

    @classmethod
    def of(
        cls,
        text: str,
        parts: Sequence[Part],
        start: int = 0,
        end: int = 0,
        *,
        glob: bool = False,
        brace: bool = False,
        downloads: bool = False,
    ) -> Word:
        static = all(isinstance(p, str) for p in parts)
        value = "".join(p for p in parts if isinstance(p, str)) if static else None
        substitutes = not static and any(
            isinstance(p, Expansion) and p.opaque == SUBSTITUTION for p in parts
        )
        return cls(text, tuple(parts), value, start, end, glob, brace, downloads, substitutes)

    @classmethod
    def literal(cls, value: str) -> Word:
        return cls(value, (value,), value)

    @property
    def static_head(self) -> str:
        """The static text the word starts with (all of it when the word is static)."""
        if self.value is not None:
            return self.value
        first = self.parts[0] if self.parts else ""
        return first if isinstance(first, str) else ""

    def after(self, count: int) -> Word:
        """The word without its first ``count`` characters, which are static:
        the value attached to an option (``-cSQL``, ``--command="$SQL"``)."""
        first = self.parts[0] if self.parts else ""
        assert isinstance(first, str)
        rest: list[Part] = [first[count:]] if first[count:] else []
        rest.extend(self.parts[1:])
        text = "".join(p if isinstance(p, str) else p.text for p in rest)
        return Word.of(text, rest, downloads=self.downloads)

    @property
    def shown(self) -> str:
        """The value when static, else the source text: what a reason should quote."""
        return self.text if self.value is None else self.value

    @property
    def shell_text(self) -> str:
        """The word as text for a nested shell (``sh -c WORD``): static parts by
        value, variables as written, and substitutions (which the outer shell
        runs, and the analyzer has seen there) as an opaque placeholder."""
        return "".join(p if isinstance(p, str) else p.opaque for p in self.parts)


# --- standard input ----------------------------------------------------------


class Feed(Enum):
    TERMINAL = "terminal"  # inherited: nothing the analyzer knows of
    PIPE = "pipe"  # output of a command whose output is not known
    DOWNLOAD = "download"  # output of curl/wget: code from the network
    FILE = "file"  # a file's content
    TEXT = "text"  # statically known text (echo, heredoc, here-string)


@dataclass(frozen=True, slots=True)
class Stdin:
    feed: Feed = Feed.TERMINAL
    text: str = ""  # the content for TEXT
    origin: str = ""  # file name, or the command that produces it


TERMINAL = Stdin()
UNKNOWN_PIPE = Stdin(Feed.PIPE)


# --- what a recognizer gets and returns --------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    name: str  # resolved command name: the base name of what was written
    path: str  # the command name as written (after quote removal)
    args: tuple[Word, ...]
    stdin: Stdin = TERMINAL
    #: run by xargs (or find -exec): more operands are appended at run time
    via_xargs: bool = False

    @property
    def display(self) -> str:
        return " ".join([self.name, *(w.shown for w in self.args)])


@dataclass(frozen=True, slots=True)
class Hit:
    """A finding before it is tied to a unit."""

    code: str
    message: str
    subject: str = ""
    risk: Risk | None = None


@dataclass(frozen=True, slots=True)
class Argv:
    """A command run by a wrapper or a hop, as words."""

    words: tuple[Word, ...]
    via_xargs: bool = False


@dataclass(frozen=True, slots=True)
class Script:
    """Shell text run by a wrapper or a hop (``sh -c``, ``ssh host cmd``)."""

    text: str
    stdin: Stdin | None = None  # None: the invocation's standard input


Inner = Argv | Script


@dataclass(frozen=True, slots=True)
class Recognition:
    type: str
    hits: tuple[Hit, ...] = ()
    inner: tuple[Inner, ...] = ()
    #: a pure wrapper (sudo, env, sh -c): when it runs something, that is the
    #: unit and the wrapper itself is not one
    transparent: bool = False
    #: more findings once the inner commands are known, from their unit types
    #: (find -exec: a find that deletes is one whose -exec command removes files)
    followup: Callable[[frozenset[str]], tuple[Hit, ...]] | None = None


Recognizer = Callable[[Invocation], Recognition]


def _seen(inv: Invocation, type_: str = "", *hits: Hit) -> Recognition:
    """A command seen and judged: its unit type (the bare name unless given) and findings."""
    return Recognition(type_ or inv.name, tuple(hits))


# --- options -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opt:
    name: str
    value: Word | None = None


@dataclass(frozen=True, slots=True)
class Parsed:
    opts: tuple[Opt, ...]
    operands: tuple[Word, ...]
    dashdash: bool = False  # the options ended with "--"
    after_dashdash: int = -1  # where the operands given after "--" start

    def has(self, *names: str) -> bool:
        return any(o.name in names for o in self.opts)

    def values(self, *names: str) -> list[Word]:
        return [o.value for o in self.opts if o.name in names and o.value is not None]

    def value(self, *names: str) -> str | None:
        found = self.values(*names)
        return found[-1].shown if found else None

    def names(self) -> set[str]:
        return {o.name for o in self.opts}


def parse_options(
    args: Sequence[Word],
    *,
    short_values: str = "",
    long_values: Iterable[str] = (),
    stop_at_operand: bool = False,
) -> Parsed:
    """Split arguments into options and operands the way getopt_long does.

    ``short_values`` lists the short options that take a value (attached,
    ``-nprod``, or the next word); ``long_values`` the long ones (``--x=v`` or
    the next word). A word is read as an option by its static beginning, so
    ``--command="$SQL"`` is the option ``--command`` with a value built at run
    time; a word with no static beginning is an operand. ``stop_at_operand`` is
    POSIX mode: the first operand ends the options (what wrappers do, so the
    wrapped command's own options are left alone).
    """
    longs = frozenset(long_values)
    opts: list[Opt] = []
    operands: list[Word] = []
    i = 0
    while i < len(args):
        word = args[i]
        head = word.static_head
        dynamic = word.value is None
        if head == "-" or not head.startswith("-") or (dynamic and head == "--"):
            if stop_at_operand:
                operands.extend(args[i:])
                break
            operands.append(word)
            i += 1
            continue
        if head == "--":
            mark = len(operands)
            operands.extend(args[i + 1 :])
            return Parsed(tuple(opts), tuple(operands), True, mark)
        if head.startswith("--"):
            name, eq, _ = head.partition("=")
            if eq:
                opts.append(Opt(name, word.after(len(name) + 1)))
            elif name in longs and i + 1 < len(args) and not dynamic:
                opts.append(Opt(name, args[i + 1]))
                i += 1
            else:
                opts.append(Opt(name))
            i += 1
            continue
        for j, ch in enumerate(head[1:], start=2):
            if ch in short_values:
                if j < len(head) or dynamic:
                    opts.append(Opt("-" + ch, word.after(j)))
                elif i + 1 < len(args):
                    opts.append(Opt("-" + ch, args[i + 1]))
                    i += 1
                else:
                    opts.append(Opt("-" + ch))
                break
            opts.append(Opt("-" + ch))
        i += 1
    return Parsed(tuple(opts), tuple(operands))


def _skip_assignments(words: Sequence[Word]) -> tuple[Word, ...]:
    """Drop leading ``VAR=value`` words (env, sudo): they set the environment."""
    i = 0
    while i < len(words) and _is_assignment(words[i]):
        i += 1
    return tuple(words[i:])


_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _is_assignment(word: Word) -> bool:
    first = word.parts[0] if word.parts else ""
    return isinstance(first, str) and _ASSIGNMENT.match(first) is not None


def _lower(word: Word | None) -> str:
    return "" if word is None or word.value is None else word.value.lower()


def _join(words: Iterable[Word]) -> str:
    return " ".join(w.shown for w in words)


def _short_values(values: Iterable[str]) -> str:
    return "".join(v[1] for v in values if len(v) == 2)


# --- paths ---------------------------------------------------------------------


class Reach(IntEnum):
    """How much a path operand of a destructive command can take with it."""

    LOCAL = 1  # a relative path inside the working directory, or under /tmp
    WIDE = 2  # any other absolute path, a home subdirectory, a path built at run time
    SYSTEM = 3  # /, a top-level or system directory, a home, the working directory itself


_GLOB = re.compile(r"[*?\[]")
_TREES = _names("etc boot bin sbin lib lib32 lib64 libx32 dev")
_TREES |= {"proc", "sys"}
_TEMP = ("/tmp/", "/var/tmp/")
_HOME_VARS = frozenset({"$HOME", "${HOME}"})


def _is_system_dir(path: str) -> bool:
    """``path`` (absolute, normalised) is the root, a top-level or a system directory."""
    parts = [p for p in path.split("/") if p]
    depth = len(parts)
    if depth <= 1:
        return True
    top = parts[0]
    if top in _TREES:
        return True
    if top in ("usr", "var", "home", "mnt", "media", "srv", "opt") and depth == 2:
        return top not in ("srv", "opt")
    return depth == 3 and (parts[:2] == ["var", "lib"] or parts[:2] == ["usr", "local"])


def _in_system_tree(path: str) -> bool:
    """Anywhere below a directory whose files the system or its databases live on."""
    parts = [p for p in path.split("/") if p]
    return bool(parts) and (parts[0] in _TREES | {"usr"} or parts[:2] == ["var", "lib"])


def _glob_reaches_system(path: str) -> bool:
    """A glob in a component whose parent is a system directory (``/var/lib/*``)."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _GLOB.search(part):
            parent = "/".join(parts[:i]) or "/"
            return _is_system_dir(parent) if parent.startswith("/") else parent in ("", ".")
    return False


def _normalise(path: str) -> str:
    norm = posixpath.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("//") else norm


def reach_of_text(path: str) -> Reach:
    """The reach of a static path, judged by its spelling."""
    if not path:
        return Reach.LOCAL
    if path.startswith("~"):
        rest = path[path.find("/") :] if "/" in path else ""
        rest = _normalise("/" + rest.lstrip("/"))
        if rest == "/" or _glob_reaches_system(rest.replace("/", "", 1) or "."):
            return Reach.SYSTEM
        return Reach.WIDE
    if path.startswith("/"):
        norm = _normalise(path)
        if _is_system_dir(norm) or _glob_reaches_system(norm):
            return Reach.SYSTEM
        return Reach.LOCAL if norm.startswith(_TEMP) else Reach.WIDE
    norm = _normalise(path)
    first = norm.split("/")[0]
    if norm == "." or first == ".." or (first and not first.strip("*?.[]")):
        return Reach.SYSTEM
    return Reach.LOCAL


def expand_braces(text: str, limit: int = 32) -> list[str]:
    """``/{etc,usr}`` -> ``/etc``, ``/usr``; at most ``limit`` results."""
    out: list[str] = []
    todo = [text]
    while todo and len(out) < limit:
        item = todo.pop()
        open_at = item.find("{")
        close_at = item.find("}", open_at + 1)
        inner = item[open_at + 1 : close_at] if open_at >= 0 and close_at > 0 else ""
        if "," not in inner or "{" in inner:
            out.append(item)
            continue
        head, tail = item[:open_at], item[close_at + 1 :]
        todo.extend(head + alt + tail for alt in reversed(inner.split(",")))
    return out


@dataclass(frozen=True, slots=True)
class PathReach:
    reach: Reach
    why: str = ""


def reach_of(word: Word) -> PathReach:
    """The reach of a path operand; a path built at run time is judged as if
    its unknown parts were empty (``"$DIR"/*`` is ``/*`` when DIR is unset)."""
    if word.value is not None:
        texts = expand_braces(word.value) if word.brace else [word.value]
        return PathReach(max(reach_of_text(t) for t in texts))
    first = word.parts[0]
    if isinstance(first, Expansion) and first.text in _HOME_VARS:
        rest = "".join(p if isinstance(p, str) else "x" for p in word.parts[1:])
        return PathReach(reach_of_text("~" + rest), "home directory")
    emptied = "".join(p if isinstance(p, str) else ("x" if p.guarded else "") for p in word.parts)
    # /tmp/$X is /tmp itself when X is empty: that one is common and not worth a CRITICAL
    collapses = emptied.startswith("/") and _normalise(emptied) not in ("/tmp", "/var/tmp")
    if collapses and reach_of_text(emptied) is Reach.SYSTEM:
        unset = next(p.text for p in word.parts if isinstance(p, Expansion))
        return PathReach(Reach.SYSTEM, f"{emptied} if {unset} is empty or unset")
    return PathReach(Reach.WIDE, "path built at run time")


# --- devices and system files ----------------------------------------------------

_HARMLESS_DEVICES = re.compile(
    r"/dev/(null|zero|full|u?random|stdin|stdout|stderr|tty\d*|console|ptmx|(fd|pts|shm)/.*)$"
)


def is_device(path: str) -> bool:
    return path.startswith("/dev/") and not _HARMLESS_DEVICES.match(_normalise(path))


def is_system_file(path: str) -> bool:
    norm = _normalise(path) if path.startswith("/") else ""
    return norm.startswith(("/etc/", "/boot/")) or norm in ("/etc", "/boot")


SYSRQ = "/proc/sysrq-trigger"


def write_target_hits(path: str, how: str) -> tuple[Hit, ...]:
    """What writing to ``path`` means (a redirect, tee, cp, dd of=)."""
    if is_device(path):
        return (Hit("shell.disk_write", f"{how} raw device {path}", path),)
    if path.startswith("/") and _normalise(path) == SYSRQ:
        return (Hit("shell.power", f"{how} {SYSRQ}: can reboot or halt the host", path),)
    if is_system_file(path):
        return (Hit("shell.system_file_write", f"{how} system file {path}", path),)
    return ()


# --- file removal ------------------------------------------------------------------


def _rm(inv: Invocation) -> Recognition:
    p = parse_options(inv.args, long_values=("--interactive",))
    recursive = p.has("-r", "-R", "--recursive")
    paths = p.operands
    subject = _join(paths) or ("(paths read by xargs)" if inv.via_xargs else "")
    hits: list[Hit] = []
    if p.has("--no-preserve-root"):
        hits.append(
            Hit(
                "shell.rm_system_path",
                "rm --no-preserve-root: allows removing /",
                "/",
                Risk.CRITICAL,
            )
        )
    reaches = [(w, reach_of(w)) for w in paths]
    if recursive and (paths or inv.via_xargs):
        worst = max((r.reach for _, r in reaches), default=Reach.WIDE)
        risk = Risk.MEDIUM if worst is Reach.LOCAL else Risk.HIGH
        hits.append(Hit("shell.rm_recursive", f"recursive rm of {subject}", subject, risk))
        for word, r in reaches:
            if r.reach is Reach.SYSTEM:
                why = f" ({r.why})" if r.why else ""
                hits.append(Hit("shell.rm_system_path", f"rm -r of {word.shown}{why}", word.shown))
        return Recognition("rm", tuple(hits))
    for word in paths:
        v = word.value or ""
        if v.startswith("/") and (_in_system_tree(v) or reach_of(word).reach is Reach.SYSTEM):
            hits.append(Hit("shell.rm_system_path", f"rm of {v}", v, Risk.HIGH))
    if not hits:
        hits.append(Hit("shell.rm", f"rm {subject}".rstrip(), subject))
    return Recognition("rm", tuple(hits))


def _unlink(inv: Invocation) -> Recognition:
    return _rm(Invocation("rm", inv.path, inv.args, inv.stdin, inv.via_xargs))


_FIND_DELETERS = _names("rm unlink shred rmdir")
_FIND_EXEC = _names("-exec -execdir -ok -okdir")


def _find(inv: Invocation) -> Recognition:
    args = inv.args
    i = 0
    while i < len(args) and args[i].value in ("-H", "-L", "-P"):
        i += 1
    starts: list[Word] = []
    while i < len(args) and not (args[i].value or "x").startswith(("-", "(", "!")):
        starts.append(args[i])
        i += 1
    inner: list[Inner] = []
    deletes = False
    while i < len(args):
        v = args[i].value
        if v == "-delete":
            deletes = True
        elif v in _FIND_EXEC:
            j = i + 1
            while j < len(args) and args[j].value not in (";", "+"):
                j += 1
            if args[i + 1 : j]:
                inner.append(Argv(tuple(args[i + 1 : j]), via_xargs=True))
            i = j
        i += 1
    subject = _join(starts) or "."
    hit = Hit("shell.find_delete", f"find that deletes what it finds under {subject}", subject)

    def followup(ran: frozenset[str]) -> tuple[Hit, ...]:
        return (hit,) if ran & _FIND_DELETERS and not deletes else ()

    return Recognition("find", (hit,) if deletes else (), tuple(inner), followup=followup)


# --- disks ---------------------------------------------------------------------------


def _dd(inv: Invocation) -> Recognition:
    target = next(((w.value, w) for w in inv.args if w.shown.startswith("of=")), None)
    if target is None:
        return _seen(inv, "dd", Hit("shell.dd", "dd copy to standard output"))
    value, word = target
    if value is None:
        return _seen(
            inv,
            "dd",
            Hit(
                "shell.disk_write",
                f"dd to a target built at run time: {word.text}",
                word.text,
                Risk.HIGH,
            ),
        )
    path = value[3:]
    hits = write_target_hits(path, "dd writes")
    return _seen(inv, "dd", *(hits or (Hit("shell.dd", f"dd copy to {path}", path),)))


def _disk_tool(read_only: Callable[[Parsed], bool] = lambda p: False) -> Recognizer:
    def recognize(inv: Invocation) -> Recognition:
        p = parse_options(inv.args)
        if read_only(p) or p.has("--help", "-V", "--version"):
            return _seen(inv)
        devices = [w for w in inv.args if w.shown.startswith("/dev/")]
        subject = _join(devices or p.operands[-1:])
        return _seen(
            inv, inv.name, Hit("shell.disk_write", f"{inv.name} {subject}".rstrip(), subject)
        )

    return recognize


def _lists(p: Parsed) -> bool:
    return p.has("-l", "--list", "-d", "--dump") or not p.operands


def _wipefs_reads(p: Parsed) -> bool:
    return not p.has("-a", "--all", "-o", "--offset")


def _parted_reads(p: Parsed) -> bool:
    verbs = {_lower(w) for w in p.operands[1:]}
    return p.has("-l", "--list") or verbs <= {"print", "p", "unit", "s", "b"}


def _shred(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args, short_values="ns", long_values=("--iterations", "--size", "--random-source")
    )
    hits = []
    for w in p.operands:
        device = w.value is not None and is_device(w.value)
        risk = Risk.CRITICAL if device or w.value is None else Risk.HIGH
        hits.append(Hit("shell.disk_write", f"shred overwrites {w.shown}", w.shown, risk))
    return _seen(inv, "shred", *hits)


# --- permissions ------------------------------------------------------------------------


def _reaches_core(word: Word) -> bool:
    """/, a top-level directory, a home or a tree the system runs from."""
    if reach_of(word).reach is not Reach.SYSTEM:
        return False
    v = word.value
    if v is None or not v.startswith("/"):
        return True
    norm = _normalise(v)
    return norm.count("/") <= 1 or _in_system_tree(norm) or _glob_reaches_system(norm)


def _permissions(inv: Invocation) -> Recognition:
    p = parse_options(inv.args, long_values=("--from",))
    if not p.has("-R", "--recursive"):
        return _seen(inv)
    has_reference = any(o.name == "--reference" for o in p.opts)
    paths = p.operands if has_reference else p.operands[1:]
    subject = _join(paths)
    risk = Risk.CRITICAL if any(_reaches_core(w) for w in paths) else None
    return _seen(
        inv,
        inv.name,
        Hit("shell.permissions_recursive", f"recursive {inv.name} on {subject}", subject, risk),
    )


# --- power, services, processes --------------------------------------------------------


def _power(inv: Invocation) -> Recognition:
    p = parse_options(inv.args)
    if p.has("-c", "--help", "-k"):  # cancel, help, warn only
        return _seen(inv)
    return _seen(inv, inv.name, Hit("shell.power", inv.display, inv.name))


def _init(inv: Invocation) -> Recognition:
    level = _lower(inv.args[0]) if inv.args else ""
    if level in ("0", "6", "1", "s"):
        return _seen(
            inv, inv.name, Hit("shell.power", f"{inv.name} {level}: changes runlevel", level)
        )
    return _seen(inv)


_SYSTEMCTL_POWER = _names(
    "reboot poweroff halt kexec soft-reboot suspend hibernate hybrid-sleep "
    "suspend-then-hibernate rescue emergency"
)
_SYSTEMCTL_STOP = _names("stop disable mask kill isolate freeze")
_SYSTEMCTL_RESTART = _names(
    "restart try-restart reload-or-restart try-reload-or-restart condrestart"
)
_POWER_TARGETS = re.compile(r"(rescue|emergency|poweroff|reboot|halt|kexec)(\.target)?$")


def _systemctl(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args,
        short_values="HMtpPsnoj",
        long_values=(
            "--host",
            "--machine",
            "--type",
            "--property",
            "--signal",
            "--state",
            "--kill-whom",
            "--kill-who",
            "--lines",
            "--output",
            "--root",
            "--job-mode",
            "--what",
            "--timestamp",
            "--when",
            "--message",
            "--reboot-argument",
        ),
    )
    if not p.operands:
        return _seen(inv)
    verb = _lower(p.operands[0])
    units = p.operands[1:]
    subject = _join(units)
    type_ = f"systemctl {verb}"
    if verb in _SYSTEMCTL_POWER or (
        verb == "isolate" and any(_POWER_TARGETS.match(_lower(u)) for u in units)
    ):
        return _seen(
            inv, type_, Hit("shell.power", f"systemctl {verb} {subject}".rstrip(), subject or verb)
        )
    if verb in _SYSTEMCTL_STOP or (verb == "disable" and p.has("--now")):
        return _seen(inv, type_, Hit("shell.service_stop", f"systemctl {verb} {subject}", subject))
    if verb in _SYSTEMCTL_RESTART:
        return _seen(
            inv, type_, Hit("shell.service_restart", f"systemctl {verb} {subject}", subject)
        )
    return _seen(inv, type_)


def _service(inv: Invocation) -> Recognition:
    words = [w for w in inv.args if not (w.value or "x").startswith("-")]
    if len(words) < 2:
        return _seen(inv)
    unit, action = words[0].shown, _lower(words[1])
    type_ = f"service {action}"
    if action == "stop":
        return _seen(inv, type_, Hit("shell.service_stop", f"service {unit} stop", unit))
    if action in ("restart", "force-reload", "try-restart", "condrestart"):
        return _seen(inv, type_, Hit("shell.service_restart", f"service {unit} {action}", unit))
    return _seen(inv, type_)


def _kill(inv: Invocation) -> Recognition:
    args = [w.shown for w in inv.args]
    if not args or args[0] in ("-l", "-L", "--list", "--table"):
        return _seen(inv)
    i = 0
    signal = ""
    if args[0] in ("-s", "-n", "--signal") and len(args) > 1:
        signal, i = args[1], 2
    elif args[0].startswith("-") and args[0] != "--":
        signal, i = args[0].lstrip("-"), 1
    if signal.removeprefix("SIG") == "0":
        return _seen(inv)  # signal 0 only checks that the process exists
    if i < len(args) and args[i] == "--":
        i += 1
    targets = args[i:]
    subject = " ".join(targets)
    # pid -1 is every process the caller may signal; pid 1 is init
    risk = Risk.HIGH if {"-1", "1"} & set(targets) else None
    return _seen(inv, "kill", Hit("shell.process_kill", f"kill {subject}", subject, risk))


def _pkill(inv: Invocation) -> Recognition:
    p = parse_options(inv.args, short_values="sugGPtUF", long_values=("--signal",))
    if p.has("-l", "--list", "-V", "--version", "--help"):
        return _seen(inv)
    subject = _join(p.operands)
    told = f"{inv.name} {subject}".rstrip()
    return _seen(inv, inv.name, Hit("shell.process_kill", told, subject))


# --- kubernetes ---------------------------------------------------------------------------

_KUBECTL_VALUES = _names(
    "-n --namespace --context --cluster --user --kubeconfig -s --server --token --as "
    "--as-group --as-uid --request-timeout -l --selector -o --output -f --filename -c "
    "--container --field-selector -L --label-columns --sort-by --template -p --patch "
    "--type --replicas --current-replicas --timeout --grace-period --image --port "
    "--to-revision --for --subresource --field-manager -k --kustomize "
    "--certificate-authority --client-certificate --client-key --tls-server-name "
    "--cache-dir -v --v --since --tail --pod-running-timeout --chunk-size "
    "--resource-version --env"
)
_KUBECTL_SHORT = _short_values(_KUBECTL_VALUES)
#: read-only verbs; any other verb is held as a change (fail closed)
_KUBECTL_READ = _names(
    "get describe logs log top explain version api-resources api-versions cluster-info "
    "config auth diff wait events completion plugin kustomize help port-forward proxy "
    "whoami alpha"
)
_ROLLOUT_READ = _names("status history")
_CRITICAL_KINDS = _names(
    "ns namespace namespaces pv persistentvolume persistentvolumes crd crds "
    "customresourcedefinition customresourcedefinitions node nodes no"
)


def _kube_resources(p: Parsed, verb_at: int) -> tuple[list[str], bool]:
    """``type/name`` strings named after the verb, and whether a critical kind is among them."""
    ops = [w.shown for w in p.operands[verb_at + 1 :]]
    if not ops:
        found = [f"file:{f.shown}" for f in p.values("-f", "--filename")]
        selector = p.value("-l", "--selector")
        return found or ([f"selector:{selector}"] if selector else []), False
    if "/" in ops[0]:
        kinds = {o.split("/")[0].lower() for o in ops}
        return ops, bool(kinds & _CRITICAL_KINDS)
    kind = ops[0]
    critical = kind.split(",")[0].split(".")[0].lower() in _CRITICAL_KINDS
    names = ops[1:] or (["*"] if p.has("--all") else [])
    return [f"{kind}/{n}" for n in names] or [kind], critical


def _kubectl(inv: Invocation) -> Recognition:
    args = inv.args
    cut = next((i for i, w in enumerate(args) if w.value == "--"), len(args))
    p = parse_options(args[:cut], short_values=_KUBECTL_SHORT, long_values=_KUBECTL_VALUES)
    if not p.operands:
        return _seen(inv)
    verb = _lower(p.operands[0])
    sub = _lower(p.operands[1]) if len(p.operands) > 1 else ""
    type_ = f"{inv.name} {verb} {sub}" if verb == "rollout" and sub else f"{inv.name} {verb}"
    all_ns = p.has("-A", "--all-namespaces")
    ns = "*" if all_ns else p.value("-n", "--namespace") or ""
    grouped = verb in ("rollout", "set", "create", "certificate") and len(p.operands) > 2
    resources, critical = _kube_resources(p, 1 if grouped else 0)
    subject = ", ".join(f"{ns}/{r}" if ns else r for r in resources) or ns
    dry_run = p.value("--dry-run") not in (None, "none") or (
        p.has("--dry-run") and p.value("--dry-run") is None
    )
    inner = (Argv(args[cut + 1 :]),) if cut < len(args) - 1 else ()
    if verb == "exec":
        pod = p.operands[1].shown if len(p.operands) > 1 else ""
        where = f"{ns}/{pod}" if ns else pod
        hit = Hit("shell.kubectl_exec", f"{inv.name} exec into {where}", where)
        return Recognition(type_, (hit,), inner)
    if dry_run or verb in _KUBECTL_READ or (verb == "rollout" and sub in _ROLLOUT_READ):
        return _seen(inv, type_)
    if verb == "delete":
        risk = Risk.CRITICAL if critical or all_ns or p.has("--all") else None
        return _seen(
            inv, type_, Hit("shell.kubectl_delete", f"{inv.name} delete {subject}", subject, risk)
        )
    if verb in ("drain", "cordon"):
        node = _join(p.operands[1:])
        return _seen(inv, type_, Hit("shell.kubectl_drain", f"{inv.name} {verb} {node}", node))
    if verb == "scale":
        replicas = p.value("--replicas")
        if replicas is not None and replicas.strip() == "0":
            return _seen(
                inv,
                type_,
                Hit(
                    "shell.kubectl_scale_zero",
                    f"{inv.name} scale {subject} to zero replicas",
                    subject,
                ),
            )
    what = f"{verb} {sub}".strip() if verb == "rollout" else verb
    return Recognition(
        type_,
        (Hit("shell.kubectl_change", f"{inv.name} {what} {subject}".rstrip(), subject),),
        inner,
    )


_HELM_VALUES = _names(
    "-n --namespace --kube-context --kubeconfig --repository-config --registry-config "
    "--repository-cache --burst-limit --kube-apiserver --kube-as-user --kube-as-group "
    "--kube-token --kube-ca-file -f --values --set --set-string --set-file --set-json "
    "--version --timeout -o --output --revision --description --post-renderer --repo "
    "--username --password --ca-file --cert-file --key-file --history-max --cascade --max "
    "--keyring"
)
_HELM_UNINSTALL = _names("uninstall delete del un")
_HELM_CHANGE = _names("install upgrade rollback")


def _helm(inv: Invocation) -> Recognition:
    p = parse_options(inv.args, short_values="nfo", long_values=_HELM_VALUES)
    if not p.operands:
        return _seen(inv)
    verb = _lower(p.operands[0])
    type_ = f"helm {verb}"
    ns = p.value("-n", "--namespace") or ""
    releases = [f"{ns}/{w.shown}" if ns else w.shown for w in p.operands[1:]]
    if p.has("--dry-run") or verb not in _HELM_UNINSTALL | _HELM_CHANGE:
        return _seen(inv, type_)
    if verb in _HELM_UNINSTALL:
        subject = ", ".join(releases)
        return _seen(inv, type_, Hit("shell.helm_uninstall", f"helm {verb} {subject}", subject))
    subject = releases[0] if releases else ns
    return _seen(inv, type_, Hit("shell.helm_change", f"helm {verb} {subject}", subject))


# --- terraform ----------------------------------------------------------------------------

_TF_VALUES = _names(
    "-var -var-file -target -replace -lock-timeout -parallelism -state -state-out -backup "
    "-out -backend-config -config -provider"
)
_TF_READ = _names(
    "plan validate fmt init show output version providers graph console get login logout "
    "metadata test modules query"
)
_TF_STATE_READ = _names("list show pull")
_TF_WORKSPACE_READ = _names("list show select new")


def _flag_on(v: str, *names: str) -> bool:
    name, eq, val = v.partition("=")
    return name.lstrip("-") in names and (not eq or val.lower() in ("true", "1", "yes"))


def _terragrunt(inv: Invocation) -> Recognition:
    words = list(inv.args)
    while words and words[0].value in ("run-all", "run", "--all", "--"):
        words.pop(0)
    return _terraform(Invocation("terragrunt", inv.path, tuple(words), inv.stdin))


def _terraform(inv: Invocation) -> Recognition:
    ops: list[Word] = []
    flags: list[str] = []
    i = 0
    while i < len(inv.args):
        w = inv.args[i]
        v = w.value
        if v is not None and v.startswith("-") and len(v) > 1:
            flags.append(v)
            if "=" not in v and "-" + v.lstrip("-") in _TF_VALUES:
                i += 1
        else:
            ops.append(w)
        i += 1
    if not ops:
        return _seen(inv)
    verb = _lower(ops[0])
    sub = _lower(ops[1]) if len(ops) > 1 else ""
    type_ = (
        f"{inv.name} {verb} {sub}".rstrip()
        if verb in ("state", "workspace")
        else (f"{inv.name} {verb}")
    )
    chdir = next((f.partition("=")[2] for f in flags if f.startswith("-chdir=")), "")
    subject = chdir or "."
    name = inv.name
    if verb == "destroy" or (verb == "apply" and any(_flag_on(f, "destroy") for f in flags)):
        return _seen(
            inv,
            type_,
            Hit(
                "shell.terraform_destroy",
                f"{name} {verb}: destroys the infrastructure in {subject}",
                subject,
            ),
        )
    if verb == "apply":
        if any(_flag_on(f, "auto-approve") for f in flags):
            return _seen(
                inv,
                type_,
                Hit(
                    "shell.terraform_apply_auto",
                    f"{name} apply without confirmation in {subject}",
                    subject,
                ),
            )
        if len(ops) > 1:
            plan = ops[1].shown
            return _seen(
                inv,
                type_,
                Hit(
                    "shell.terraform_apply_auto",
                    f"{name} apply of saved plan {plan}: no confirmation",
                    plan,
                ),
            )
        return _seen(
            inv, type_, Hit("shell.terraform_change", f"{name} apply in {subject}", subject)
        )
    if (
        verb in _TF_READ
        or (verb == "state" and sub in _TF_STATE_READ)
        or (verb == "workspace" and sub in _TF_WORKSPACE_READ)
    ):
        return _seen(inv, type_)
    what = " ".join(w.shown for w in ops)
    addresses = _join(ops[2:] if verb in ("state", "workspace") else ops[1:])
    return _seen(inv, type_, Hit("shell.terraform_change", f"{name} {what}", addresses or subject))


# --- cloud CLIs ----------------------------------------------------------------------------

_AWS_GLOBAL_VALUES = _names(
    "--profile --region --output --endpoint-url --query --cli-read-timeout "
    "--cli-connect-timeout --color --ca-bundle --cli-binary-format"
)
_AWS_DESTROY = _prefixes("delete terminate remove deregister purge destroy drop")
_AWS_READ = _prefixes(
    "describe list get head batch-get scan query lookup search filter validate estimate "
    "preview simulate wait help select test- check"
)
_AWS_SUBJECT = re.compile(r"--[a-z-]*(-ids?|-name|-names|-identifier|-arn|bucket|cluster)$")


def _aws_subject(args: Sequence[Word]) -> str:
    found: list[str] = []
    for i, w in enumerate(args):
        v = w.value or ""
        if v.startswith("s3://"):
            found.append(v)
        elif _AWS_SUBJECT.match(v.partition("=")[0]):
            if "=" in v:
                found.append(v.partition("=")[2])
            elif i + 1 < len(args):
                found.append(args[i + 1].shown)
    return ", ".join(found)


def _last_operand(args: Sequence[Word]) -> Word | None:
    operands = [w for w in args if not (w.value or "x").startswith("-")]
    return operands[-1] if operands else None


def _aws(inv: Invocation) -> Recognition:
    ops: list[Word] = []
    i = 0
    args = inv.args
    while i < len(args) and len(ops) < 2:
        v = args[i].value
        if v is not None and v.startswith("-"):
            if v in _AWS_GLOBAL_VALUES:
                i += 1
        else:
            ops.append(args[i])
        i += 1
    if len(ops) < 2:
        return _seen(inv)
    service, op = _lower(ops[0]), _lower(ops[1])
    type_ = f"aws {service} {op}"
    rest = {w.value for w in args[i:]}
    subject = _aws_subject(args[i:]) or f"{service} {op}"
    if "--dry-run" in rest or "--dryrun" in rest:
        return _seen(inv, type_)
    if service == "s3":
        if op in ("rm", "rb"):
            return _seen(inv, type_, Hit("shell.cloud_destroy", f"aws s3 {op} {subject}", subject))
        s3_operands = [w for w in args[i:] if (w.value or "").startswith("s3://")]
        into_s3 = bool(s3_operands) and s3_operands[-1] is _last_operand(args[i:])
        if op == "mb" or (op == "mv" and s3_operands) or (op in ("cp", "sync") and into_s3):
            return _seen(inv, type_, Hit("shell.cloud_change", f"aws s3 {op} {subject}", subject))
        return _seen(inv, type_)
    if op.startswith(_AWS_DESTROY):
        risk = Risk.CRITICAL if "--skip-final-snapshot" in rest else None
        return _seen(
            inv, type_, Hit("shell.cloud_destroy", f"aws {service} {op} {subject}", subject, risk)
        )
    if op.startswith(_AWS_READ) or service in ("configure", "sts", "help"):
        return _seen(inv, type_)
    return _seen(inv, type_, Hit("shell.cloud_change", f"aws {service} {op} {subject}", subject))


_GCLOUD_DESTROY = _names("delete remove purge destroy rm rb")
_GCLOUD_CHANGE = _names(
    "create update deploy stop resize start restart reset patch set add import export "
    "restore promote failover disable enable cp mv rsync upgrade rollback suspend resume "
    "scale apply set-iam-policy add-iam-policy-binding remove-iam-policy-binding "
    "deallocate run invoke execute move attach detach replace abandon-instances "
    "recreate-instances rolling-action clone undelete"
)
_GCLOUD_READ = _names(
    "list describe get show read tail info version help ls cat du wait check "
    "print-access-token print-identity-token query search logs browse login "
    "activate-service-account configure-docker get-credentials get-iam-policy ssh scp "
    "connect exists open"
)
_LOCAL_GROUPS = _names(
    "config auth components init account extension login logout version help interactive feedback"
)


def _verb_among(ops: Sequence[Word], *verbs: frozenset[str]) -> tuple[int, str]:
    for i, w in enumerate(ops):
        v = _lower(w)
        if any(v in group for group in verbs) or v.startswith(("get-", "list-", "set-")):
            return i, v
    return -1, ""


def _cloud_cli(tool: str, value_options: str) -> Recognizer:
    values = frozenset(value_options.split())
    shorts = _short_values(values)

    def recognize(inv: Invocation) -> Recognition:
        p = parse_options(inv.args, short_values=shorts, long_values=values)
        ops = p.operands
        if not ops or _lower(ops[0]) in _LOCAL_GROUPS:
            return _seen(inv, f"{tool} {_lower(ops[0])}".rstrip() if ops else tool)
        at, verb = _verb_among(ops, _GCLOUD_DESTROY, _GCLOUD_CHANGE, _GCLOUD_READ)
        path = " ".join(_lower(w) for w in ops[: at + 1]) if at >= 0 else _lower(ops[0])
        type_ = f"{tool} {path}"
        named = p.value("--name", "-n") or p.value("--resource-group", "-g")
        subject = _join(ops[at + 1 :]) or named or path
        if p.has("--dry-run") or p.has("--validate-only"):
            return _seen(inv, type_)
        if verb in _GCLOUD_DESTROY:
            return _seen(
                inv, type_, Hit("shell.cloud_destroy", f"{tool} {path} {subject}", subject)
            )
        if verb in _GCLOUD_READ or verb.startswith(("get-", "list-")):
            if tool == "gcloud" and verb == "ssh" and p.values("--command"):
                command = p.values("--command")[-1]
                return _remote(inv, type_, command, subject)
            return _seen(inv, type_)
        return _seen(inv, type_, Hit("shell.cloud_change", f"{tool} {path} {subject}", subject))

    return recognize


_gcloud = _cloud_cli(
    "gcloud",
    "--project --account --configuration --format --verbosity --zone --region "
    "--impersonate-service-account --billing-project --flags-file --filter --limit "
    "--sort-by --page-size --command --quota-project",
)
_az = _cloud_cli(
    "az",
    "-g --resource-group -n --name --subscription -o --output --query -l --location "
    "--ids --only-show-errors",
)


def _gsutil(inv: Invocation) -> Recognition:
    p = parse_options(inv.args, short_values="ohuip", stop_at_operand=True)
    if not p.operands:
        return _seen(inv)
    verb = _lower(p.operands[0])
    rest = p.operands[1:]
    type_ = f"gsutil {verb}"
    sub = parse_options(rest)
    subject = _join(sub.operands)
    if verb in ("rm", "rb"):
        return _seen(inv, type_, Hit("shell.cloud_destroy", f"gsutil {verb} {subject}", subject))
    if verb in ("rsync",) and sub.has("-d"):
        return _seen(
            inv,
            type_,
            Hit(
                "shell.cloud_destroy",
                f"gsutil rsync -d deletes extra objects in {subject}",
                subject,
            ),
        )
    if verb in (
        "cp",
        "mv",
        "rsync",
        "setmeta",
        "acl",
        "iam",
        "defacl",
        "mb",
        "lifecycle",
        "retention",
        "versioning",
        "web",
        "cors",
        "label",
        "defstorageclass",
        "rewrite",
        "compose",
    ):
        return _seen(inv, type_, Hit("shell.cloud_change", f"gsutil {verb} {subject}", subject))
    return _seen(inv, type_)


# --- git ---------------------------------------------------------------------------------

_GIT_GLOBAL_VALUES = _names(
    "-C -c --git-dir --work-tree --namespace --exec-path --super-prefix --config-env --list-cmds"
)


def _git(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args, short_values="Cc", long_values=_GIT_GLOBAL_VALUES, stop_at_operand=True
    )
    if not p.operands:
        return _seen(inv)
    verb = _lower(p.operands[0])
    rest = p.operands[1:]
    type_ = f"git {verb}"
    check = _GIT_VERBS.get(verb)
    hits = check(rest) if check else ()
    return Recognition(type_, hits)


def _git_push(args: Sequence[Word]) -> tuple[Hit, ...]:
    p = parse_options(
        args, short_values="o", long_values=("--repo", "--push-option", "--receive-pack", "--exec")
    )
    refs = [w.shown for w in p.operands[1:]]
    forced = p.has("-f", "--force", "--force-with-lease", "--mirror", "-d", "--delete", "--prune")
    forced = forced or any(r.startswith(("+", ":")) for r in refs)
    if not forced:
        return ()
    subject = _join(p.operands) or "(default remote)"
    return (
        Hit(
            "shell.git_force_push",
            f"git push rewriting or deleting remote refs: {subject}",
            subject,
        ),
    )


def _destructive(message: str) -> Callable[[Sequence[Word]], tuple[Hit, ...]]:
    def check(args: Sequence[Word]) -> tuple[Hit, ...]:
        p = parse_options(args)
        subject = _join(p.operands)
        told = f"{message}: {subject}" if subject else message
        return (Hit("shell.git_destructive", told, subject),)

    return check


def _when(
    test: Callable[[Parsed], bool], message: str, short_values: str = ""
) -> Callable[[Sequence[Word]], tuple[Hit, ...]]:
    def check(args: Sequence[Word]) -> tuple[Hit, ...]:
        p = parse_options(args, short_values=short_values)
        return _destructive(message)(args) if test(p) else ()

    return check


def _checkout_discards(p: Parsed) -> bool:
    return p.has("-f", "--force") or p.dashdash or any(w.value == "." for w in p.operands)


def _restore_discards(p: Parsed) -> bool:
    return bool(p.operands) and (p.has("-W", "--worktree") or not p.has("-S", "--staged"))


_GIT_VERBS: Mapping[str, Callable[[Sequence[Word]], tuple[Hit, ...]]] = {
    "push": _git_push,
    "reset": _when(
        lambda p: p.has("--hard", "--merge", "--keep"), "git reset --hard discards uncommitted work"
    ),
    "clean": _when(
        lambda p: p.has("-f", "--force") and not p.has("-n", "--dry-run"),
        "git clean -f deletes untracked files",
        short_values="eE",
    ),
    "checkout": _when(_checkout_discards, "git checkout discards local changes", short_values="bB"),
    "restore": _when(_restore_discards, "git restore discards local changes", short_values="s"),
    "switch": _when(
        lambda p: p.has("-f", "--force", "--discard-changes"),
        "git switch discards local changes",
        short_values="cC",
    ),
    "stash": lambda a: (
        _destructive("git stash drops stashed work")(a)
        if a and _lower(a[0]) in ("drop", "clear")
        else ()
    ),
    "branch": _when(
        lambda p: p.has("-D") or (p.has("-d", "--delete") and p.has("-f", "--force")),
        "git branch -D deletes unmerged branches",
    ),
    "filter-branch": _destructive("git filter-branch rewrites history"),
    "filter-repo": _destructive("git filter-repo rewrites history"),
    "update-ref": _when(lambda p: p.has("-d"), "git update-ref -d deletes a ref"),
    "reflog": lambda a: (
        _destructive("git reflog expire/delete drops recovery points")(a)
        if a and _lower(a[0]) in ("expire", "delete")
        else ()
    ),
    "gc": _when(lambda p: p.value("--prune") == "now", "git gc --prune=now drops unreachable work"),
}


# --- containers --------------------------------------------------------------------------

_DOCKER_GLOBAL_VALUES = _names(
    "-H --host -c --context --config -l --log-level --tlscacert --tlscert --tlskey"
)
_DOCKER_EXEC_VALUES = _names("-e --env --env-file -u --user -w --workdir --detach-keys --index")
_COMPOSE_VALUES = _names(
    "-f --file -p --project-name --project-directory --profile --env-file --ansi "
    "--progress --parallel"
)


def _exec_hop(inv: Invocation, type_: str, args: Sequence[Word]) -> Recognition:
    p = parse_options(
        args, short_values="euw", long_values=_DOCKER_EXEC_VALUES, stop_at_operand=True
    )
    if len(p.operands) < 2:
        return _seen(inv, type_)
    return Recognition(type_, (), (Argv(p.operands[1:]),))


def _docker(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args, short_values="Hcl", long_values=_DOCKER_GLOBAL_VALUES, stop_at_operand=True
    )
    if not p.operands:
        return _seen(inv)
    if inv.name == "docker-compose":
        return _compose(inv, "docker-compose", p.operands)
    verb = _lower(p.operands[0])
    rest = p.operands[1:]
    if verb == "compose":
        return _compose(inv, f"{inv.name} compose", rest)
    sub = _lower(rest[0]) if rest else ""
    args = parse_options(
        rest[1:] if verb in _DOCKER_GROUPS else rest, long_values=("--filter", "--time", "--signal")
    )
    subject = _join(args.operands)
    name = inv.name
    if verb in _DOCKER_GROUPS:
        type_ = f"{name} {verb} {sub}".rstrip()
        if sub == "prune":
            wide = verb in ("system", "volume", "container") or args.has("-a", "--all")
            risk = None if wide else Risk.LOW
            return _seen(
                inv, type_, Hit("shell.docker_prune", f"{type_} {subject}".rstrip(), verb, risk)
            )
        if sub in ("rm", "remove"):
            risk = Risk.HIGH if verb == "volume" else None
            return _seen(
                inv, type_, Hit("shell.docker_remove", f"{type_} {subject}", subject, risk)
            )
        if verb == "container":
            return _docker_verb(inv, type_, sub, args, rest)
        return _seen(inv, type_)
    return _docker_verb(inv, f"{name} {verb}", verb, args, p.operands)


_DOCKER_GROUPS = _names("system volume image container network builder buildx")


_DOCKER_RUN_VALUES = _names(
    "-a --attach -c --cpu-shares --cidfile --cpus --cpuset-cpus --device -e --env --env-file "
    "--entrypoint --expose -h --hostname --health-cmd --ip -l --label --log-driver --log-opt "
    "-m --memory --mount --name --network --net -p --publish --platform --pull --restart "
    "--runtime --shm-size --stop-signal --stop-timeout --tmpfs -u --user --ulimit -v --volume "
    "--volumes-from -w --workdir --gpus --group-add --add-host --dns --cap-add --cap-drop "
    "--security-opt --ipc --pid --uts --userns --label-file --link --sysctl --isolation"
)


def _run_hop(type_: str, args: Sequence[Word]) -> Recognition:
    """``docker run IMAGE CMD``: the command runs in a new container, which may
    have host paths mounted, so it is analysed like any other."""
    p = parse_options(
        args,
        short_values=_short_values(_DOCKER_RUN_VALUES),
        long_values=_DOCKER_RUN_VALUES,
        stop_at_operand=True,
    )
    entrypoint = p.values("--entrypoint")
    command = (*entrypoint[-1:], *p.operands[1:])
    return Recognition(type_, (), (Argv(command),) if command else ())


def _docker_verb(
    inv: Invocation, type_: str, verb: str, args: Parsed, words: Sequence[Word]
) -> Recognition:
    subject = _join(args.operands)
    if verb == "exec":
        return _exec_hop(inv, type_, words[1:])
    if verb == "run":
        return _run_hop(type_, words[1:])
    if verb in ("rm", "rmi"):
        return _seen(inv, type_, Hit("shell.docker_remove", f"{type_} {subject}", subject))
    if verb in ("stop", "kill"):
        return _seen(
            inv, type_, Hit("shell.service_stop", f"{type_} {subject}", subject, Risk.MEDIUM)
        )
    if verb == "restart":
        return _seen(inv, type_, Hit("shell.service_restart", f"{type_} {subject}", subject))
    return _seen(inv, type_)


def _compose(inv: Invocation, tool: str, words: Sequence[Word]) -> Recognition:
    p = parse_options(words, short_values="fp", long_values=_COMPOSE_VALUES, stop_at_operand=True)
    if not p.operands:
        return _seen(inv, tool)
    verb = _lower(p.operands[0])
    type_ = f"{tool} {verb}"
    args = parse_options(p.operands[1:], short_values="t", long_values=("--timeout", "--rmi"))
    subject = _join(args.operands) or "(all services)"
    if verb == "exec":
        hop = parse_options(
            p.operands[1:],
            short_values="euw",
            long_values=_DOCKER_EXEC_VALUES,
            stop_at_operand=True,
        )
        inner = (Argv(hop.operands[1:]),) if len(hop.operands) > 1 else ()
        return Recognition(type_, (), inner)
    if verb == "down":
        hits = [
            Hit(
                "shell.service_stop", f"{type_}: stops and removes containers", subject, Risk.MEDIUM
            )
        ]
        if args.has("-v", "--volumes"):
            hits.append(
                Hit("shell.docker_remove", f"{type_} -v removes volumes", subject, Risk.HIGH)
            )
        return _seen(inv, type_, *hits)
    if verb == "rm":
        return _seen(inv, type_, Hit("shell.docker_remove", f"{type_} {subject}", subject))
    if verb in ("stop", "kill"):
        return _seen(
            inv, type_, Hit("shell.service_stop", f"{type_} {subject}", subject, Risk.MEDIUM)
        )
    if verb == "restart":
        return _seen(inv, type_, Hit("shell.service_restart", f"{type_} {subject}", subject))
    return _seen(inv, type_)


# --- databases -------------------------------------------------------------------------


def _sql_hits(label: str, sql: str) -> tuple[Hit, ...]:
    """The SQL analyzer's findings, told as coming from ``label``."""
    try:
        # imported here so that a broken SQL analyzer holds SQL instead of
        # taking every shell command down with it
        from jitgate.actions.sql import analyze_sql

        analysis = analyze_sql(sql)
    except Exception as error:  # fail closed: an analyzer failure must not let SQL through
        return (
            Hit("sql.parse_error", f"{label}: SQL could not be analysed ({type(error).__name__})"),
        )
    return tuple(Hit(f.code, f"{label}: {f.message}", f.subject, f.risk) for f in analysis.findings)


@dataclass(frozen=True, slots=True)
class _ClientInput:
    """What a database client is given to run: its findings, and shell it escapes to."""

    hits: tuple[Hit, ...] = ()
    inner: tuple[Inner, ...] = ()


_PSQL_INCLUDE = _names("\\i \\ir \\include \\include_relative")
_PSQL_PIPES = _names("\\o \\out \\g \\gx \\w \\write")


def _psql_meta(label: str, meta: str) -> _ClientInput:
    """One psql backslash command: most are harmless; a few run shell or files."""
    if meta.startswith("\\!"):
        command = meta[2:].strip()
        return _ClientInput(inner=(Script(command, TERMINAL),) if command else ())
    name, _, rest = meta.partition(" ")
    rest = rest.strip()
    if name in _PSQL_INCLUDE:
        return _ClientInput((Hit("shell.unseen_script", f"{label} runs SQL file {rest}", rest),))
    if name in _PSQL_PIPES and rest.startswith("|"):
        return _ClientInput(inner=(Script(rest[1:], TERMINAL),))
    if name == "\\copy" and re.search(r"\bprogram\b", rest, re.I):
        return _ClientInput(
            (Hit("shell.dynamic_command", f"{label}: \\copy ... program runs a shell command"),)
        )
    return _ClientInput()


_DOLLAR_TAG = re.compile(r"\$[A-Za-z_0-9]*\$")


def _split_psql(text: str) -> tuple[str, list[str]]:
    """SQL and backslash commands apart: a backslash outside quotes, comments and
    dollar quoting starts a meta-command that runs to the end of the line."""
    sql: list[str] = []
    metas: list[str] = []
    i, n = 0, len(text)
    quote = ""
    while i < n:
        ch = text[i]
        if quote:
            close = text.find(quote, i)
            stop = n if close < 0 else close + len(quote)
            sql.append(text[i:stop])
            i, quote = stop, ""
            continue
        if ch in "'\"":
            quote = ch
            sql.append(ch)
            i += 1
            continue
        if ch == "$":
            tag = _DOLLAR_TAG.match(text, i)
            if tag:
                quote = tag.group(0)
                sql.append(quote)
                i += len(quote)
                continue
        if text.startswith("--", i):
            eol = text.find("\n", i)
            eol = n if eol < 0 else eol
            sql.append(text[i:eol])
            i = eol
            continue
        if ch == "\\":
            eol = text.find("\n", i)
            eol = n if eol < 0 else eol
            metas.append(text[i:eol].strip())
            i = eol
            continue
        sql.append(ch)
        i += 1
    return "".join(sql), metas


def _postgres_input(label: str, text: str) -> _ClientInput:
    sql, metas = _split_psql(text) if "\\" in text else (text, [])
    hits = list(_sql_hits(label, sql)) if sql.strip(" \t\n;") else []
    inner: list[Inner] = []
    for meta in metas:
        found = _psql_meta(label, meta)
        hits.extend(found.hits)
        inner.extend(found.inner)
    return _ClientInput(tuple(hits), tuple(inner))


#: MySQL statements with no PostgreSQL counterpart that only look or switch database
_MYSQL_ONLY_READS = _names("USE DESCRIBE DESC HELP STATUS SHOW")


def _mysql_input(label: str, text: str) -> _ClientInput:
    """MySQL SQL for the PostgreSQL analyzer: backquoted names become double-quoted
    ones and MySQL-only read statements are left out; what still does not parse
    is held as ``sql.parse_error``."""
    kept = [
        statement
        for statement in text.replace("`", '"').split(";")
        if statement.strip() and statement.split()[0].upper() not in _MYSQL_ONLY_READS
    ]
    return _ClientInput(_sql_hits(label, ";\n".join(kept)) if kept else ())


Dialect = Callable[[str, str], _ClientInput]


def _stdin_sql(inv: Invocation, label: str, dialect: Dialect) -> _ClientInput:
    stdin = inv.stdin
    if stdin.feed is Feed.TEXT:
        return dialect(f"{label} stdin", stdin.text)
    if stdin.feed is Feed.DOWNLOAD:
        told = f"{label} runs SQL downloaded by {stdin.origin}"
        return _ClientInput((Hit("shell.remote_code", told, stdin.origin),))
    if stdin.feed is Feed.FILE:
        told = f"{label} runs SQL from {stdin.origin}"
        return _ClientInput((Hit("shell.unseen_script", told, stdin.origin),))
    if stdin.feed is Feed.PIPE:
        return _ClientInput((Hit("shell.unseen_script", f"{label} runs SQL read from a pipe"),))
    return _ClientInput((Hit("shell.database_session", f"interactive {label} session"),))


def _inline_sql(label: str, word: Word, dialect: Dialect) -> _ClientInput:
    """``psql -c WORD``, ``mysql -e WORD``."""
    found = dialect(label, word.shell_text)
    if word.value is not None:
        return found
    told = f"{label} with SQL built at run time: {word.text}"
    return _ClientInput((Hit("shell.dynamic_command", told, word.text), *found.hits), found.inner)


def _client(type_: str, inputs: Iterable[_ClientInput]) -> Recognition:
    taken = list(inputs)
    hits = tuple(h for i in taken for h in i.hits)
    return Recognition(type_, hits, tuple(x for i in taken for x in i.inner))


_PSQL_VALUES = _names(
    "-c --command -d --dbname -f --file -h --host -p --port -U --username -v --set "
    "--variable -o --output -L --log-file -P --pset -F --field-separator -R "
    "--record-separator -T --table-attr"
)
_PSQL_SHORT = _short_values(_PSQL_VALUES)


def _psql(inv: Invocation) -> Recognition:
    p = parse_options(inv.args, short_values=_PSQL_SHORT, long_values=_PSQL_VALUES)
    if p.has("-l", "--list", "-V", "--version", "-?", "--help"):
        return _seen(inv)
    inputs: list[_ClientInput] = []
    for opt in p.opts:
        if opt.value is None:
            continue
        if opt.name in ("-c", "--command"):
            inputs.append(_inline_sql("psql -c", opt.value, _postgres_input))
        elif opt.name in ("-f", "--file") and opt.value.value == "-":
            inputs.append(_stdin_sql(inv, "psql -f -", _postgres_input))
        elif opt.name in ("-f", "--file"):
            told = f"psql runs SQL file {opt.value.shown}"
            inputs.append(_ClientInput((Hit("shell.unseen_script", told, opt.value.shown),)))
    if not p.values("-c", "--command", "-f", "--file"):
        inputs.append(_stdin_sql(inv, "psql", _postgres_input))
    return _client("psql", inputs)


_MYSQL_VALUES = _names(
    "-e --execute -h --host -P --port -u --user -D --database -S --socket "
    "--default-character-set --login-path --init-command --protocol --defaults-file "
    "--defaults-extra-file"
)


def _mysql(inv: Invocation) -> Recognition:
    # -p takes its password only when attached (-psecret; bare -p prompts), so
    # it is dropped before parsing rather than declared as taking a value
    args = [w for w in inv.args if not (w.value or "").startswith("-p")]
    p = parse_options(args, short_values="ehPuDS", long_values=_MYSQL_VALUES)
    if p.has("-V", "--version", "-?", "--help"):
        return _seen(inv)
    sql = p.values("-e", "--execute")
    if not sql:
        return _client(inv.name, [_stdin_sql(inv, inv.name, _mysql_input)])
    return _client(inv.name, (_inline_sql(f"{inv.name} -e", w, _mysql_input) for w in sql))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pg_tool(statement: str) -> Recognizer:
    """dropdb, dropuser: the SQL they send, analysed as such."""

    def recognize(inv: Invocation) -> Recognition:
        p = parse_options(
            inv.args,
            short_values="hpUd",
            long_values=("--host", "--port", "--username", "--maintenance-db"),
        )
        if p.has("-V", "--version", "-?", "--help") or not p.operands:
            return _seen(inv)
        hits: list[Hit] = []
        for word in p.operands:
            hits.extend(_sql_hits(inv.name, f"{statement} {_quote_ident(word.shown)}"))
        return Recognition(inv.name, tuple(hits))

    return recognize


def _pg_restore(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args,
        short_values="dfFhpUnNtTIPLjSe",
        long_values=(
            "--dbname",
            "--file",
            "--format",
            "--host",
            "--port",
            "--username",
            "--schema",
            "--table",
            "--index",
            "--jobs",
            "--role",
            "--superuser",
            "--use-list",
        ),
    )
    target = p.value("-d", "--dbname")
    if target is None:
        return _seen(inv)  # without a database it only prints the SQL
    dump = _join(p.operands) or "standard input"
    cleans = " after dropping what it restores" if p.has("-c", "--clean") else ""
    told = f"pg_restore runs the SQL of {dump} in {target}{cleans}"
    return _seen(inv, "pg_restore", Hit("shell.unseen_script", told, dump))


_REDIS_VALUES = _names(
    "-h -p -s -a -u -r -i -n -d -D -t --user --pass --cacert --cacertdir --cert --key "
    "--sni --tls-ciphers --tls-ciphersuites --rdb --functions-rdb --eval --pattern "
    "--count --quoted-pattern --memkeys-samples --intrinsic-latency --lru-test "
    "--keystats-samples --cluster-yes --replica --pipe-timeout"
)
_REDIS_SHORT = _short_values(_REDIS_VALUES)
_REDIS_ADMIN = _names("shutdown debug slaveof replicaof bgrewriteaof failover")
_REDIS_ADMIN_SUB = {
    "config": _names("set resetstat rewrite"),
    "cluster": _names("reset failover forget flushslots delslots"),
    "module": _names("load unload loadex"),
    "script": _names("flush kill"),
    "function": _names("flush delete restore"),
    "acl": _names("setuser deluser load"),
}


def _redis_command(words: Sequence[str]) -> Hit | None:
    if not words:
        return None
    verb = words[0].lower()
    sub = words[1].lower() if len(words) > 1 else ""
    if verb in ("flushall", "flushdb"):
        return Hit("shell.redis_flush", f"redis {verb.upper()}", verb.upper())
    if verb in _REDIS_ADMIN or sub in _REDIS_ADMIN_SUB.get(verb, frozenset()):
        what = f"{verb} {sub}".upper() if verb in _REDIS_ADMIN_SUB else verb.upper()
        return Hit("shell.redis_admin", f"redis {what}", what)
    return None


def _redis(inv: Invocation) -> Recognition:
    values = _REDIS_VALUES
    p = parse_options(inv.args, short_values=_REDIS_SHORT, long_values=values, stop_at_operand=True)
    if p.has("--version", "-v", "--help"):
        return _seen(inv)
    if p.values("--eval"):
        script = p.values("--eval")[-1].shown
        return _seen(
            inv,
            inv.name,
            Hit("shell.unseen_script", f"{inv.name} runs Lua script {script}", script),
        )
    if p.operands:
        hit = _redis_command([w.shown for w in p.operands])
        return _seen(inv, inv.name, *([hit] if hit else []))
    if inv.stdin.feed is Feed.TEXT:
        found = (_redis_command(line.split()) for line in inv.stdin.text.splitlines())
        return _seen(inv, inv.name, *(h for h in found if h))
    if inv.stdin.feed is Feed.TERMINAL:
        if p.has(
            "--scan",
            "--bigkeys",
            "--memkeys",
            "--hotkeys",
            "--stat",
            "--latency",
            "--latency-history",
            "--latency-dist",
            "--rdb",
        ):
            return _seen(inv)
        return _seen(inv, inv.name, Hit("shell.database_session", f"interactive {inv.name}"))
    return _seen(
        inv,
        inv.name,
        Hit(
            "shell.unseen_script", f"{inv.name} runs commands read from its input", inv.stdin.origin
        ),
    )


# --- files written -----------------------------------------------------------------------


def _writes(inv: Invocation, paths: Iterable[Word], how: str) -> Recognition:
    hits = [h for w in paths if w.value is not None for h in write_target_hits(w.value, how)]
    return _seen(inv, inv.name, *hits)


def _tee(inv: Invocation) -> Recognition:
    p = parse_options(inv.args, long_values=("--output-error",))
    return _writes(
        inv, p.operands, "tee -a appends to" if p.has("-a", "--append") else "tee overwrites"
    )


def _copy(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args,
        short_values="tSmgoMZ",
        long_values=("--target-directory", "--suffix", "--mode", "--group", "--owner", "--backup"),
    )
    target = p.values("-t", "--target-directory")
    dests = target or list(p.operands[-1:] if len(p.operands) > 1 else [])
    written = _writes(inv, dests, f"{inv.name} overwrites")
    if inv.name != "mv":
        return written
    sources = p.operands if target else p.operands[:-1]
    moved = [
        Hit(
            "shell.rm_system_path",
            f"mv takes {w.shown} away from where the system expects it",
            w.shown,
            Risk.HIGH,
        )
        for w in sources
        if (w.value or "").startswith("/")
        and (_in_system_tree(w.value or "") or reach_of(w).reach is Reach.SYSTEM)
    ]
    return _seen(inv, inv.name, *written.hits, *moved)


def _truncate(inv: Invocation) -> Recognition:
    p = parse_options(inv.args, short_values="sr", long_values=("--size", "--reference"))
    return _writes(inv, p.operands, "truncate shrinks")


def _sed(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args, short_values="efl", long_values=("--expression", "--file", "--line-length")
    )
    if not p.has("-i", "--in-place"):
        return _seen(inv)
    files = p.operands if p.values("-e", "--expression", "-f", "--file") else p.operands[1:]
    return _writes(inv, files, "sed -i edits")


# --- wrappers: commands that run another command -------------------------------------------


def _wrapper(
    short_values: str = "",
    long_values: Iterable[str] = (),
    *,
    operands_before: int = 0,
    assignments: bool = False,
    no_command: Iterable[str] = (),
    xargs: bool = False,
) -> Recognizer:
    """A command that runs the command in its operands, after ``operands_before``
    operands of its own (timeout's duration, chroot's directory)."""
    longs = tuple(long_values)
    quiet = frozenset(no_command)

    def recognize(inv: Invocation) -> Recognition:
        p = parse_options(
            inv.args, short_values=short_values, long_values=longs, stop_at_operand=True
        )
        if p.names() & quiet:
            return _seen(inv)
        command = p.operands[operands_before:]
        if assignments:
            command = _skip_assignments(command)
        if not command:
            return _seen(inv)
        return Recognition(inv.name, (), (Argv(tuple(command), via_xargs=xargs),), transparent=True)

    return recognize


def _env(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args,
        short_values="uCS",
        long_values=("--unset", "--chdir", "--split-string"),
        stop_at_operand=True,
    )
    command = _skip_assignments(p.operands)
    split = p.values("-S", "--split-string")
    if split:
        text = " ".join([split[-1].shell_text, *(w.shell_text for w in command)])
        return Recognition("env", (), (Script(text),), transparent=True)
    if not command:
        return _seen(inv)
    return Recognition("env", (), (Argv(command),), transparent=True)


def _sudo(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args,
        short_values="ugpCDrtUTR",
        long_values=(
            "--user",
            "--group",
            "--prompt",
            "--close-from",
            "--chdir",
            "--role",
            "--type",
            "--other-user",
            "--host",
            "--command-timeout",
            "--chroot",
        ),
        stop_at_operand=True,
    )
    if p.has("-e", "--edit"):
        return _writes(Invocation("sudoedit", inv.path, inv.args), p.operands, "sudoedit edits")
    command = _skip_assignments(p.operands)
    if not command:
        return _seen(inv)
    return Recognition(inv.name, (), (Argv(command),), transparent=True)


def _time(inv: Invocation) -> Recognition:
    return _wrapper("fo", ("--format", "--output"))(inv)


def _command(inv: Invocation) -> Recognition:
    return _wrapper(no_command=("-v", "-V"))(inv)


def _watch(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args, short_values="nq", long_values=("--interval",), stop_at_operand=True
    )
    if not p.operands:
        return _seen(inv)
    if p.has("-x", "--exec") or any(w.value is None for w in p.operands):
        return Recognition("watch", (), (Argv(p.operands),), transparent=True)
    return Recognition("watch", (), (Script(_join(p.operands)),), transparent=True)


def _flock(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args,
        short_values="Ew",
        long_values=("--timeout", "--conflict-exit-code"),
        stop_at_operand=True,
    )
    ops = p.operands
    if len(ops) >= 3 and ops[1].value in ("-c", "--command"):
        return _script_of(inv, "flock -c", ops[2])
    if len(ops) >= 2:
        return Recognition("flock", (), (Argv(ops[1:]),), transparent=True)
    return _seen(inv)


def _su(inv: Invocation) -> Recognition:
    p = parse_options(
        inv.args,
        short_values="csgGwu",
        long_values=(
            "--command",
            "--shell",
            "--group",
            "--supp-group",
            "--whitelist-environment",
            "--session-command",
            "--user",
        ),
    )
    commands = p.values("-c", "--command", "--session-command")
    if commands:
        return _script_of(inv, f"{inv.name} -c", commands[-1])
    if inv.name == "runuser" and p.dashdash:
        command = p.operands[p.after_dashdash :]
        if command:
            return Recognition(inv.name, (), (Argv(command),), transparent=True)
    return _seen(inv)


def _xargs(inv: Invocation) -> Recognition:
    return _wrapper(
        "ILnPsdEa",
        (
            "--replace",
            "--max-lines",
            "--max-args",
            "--max-procs",
            "--max-chars",
            "--delimiter",
            "--eof",
            "--arg-file",
            "--process-slot-var",
        ),
        xargs=True,
    )(inv)


def _script_command(inv: Invocation) -> Recognition:
    """``script -c CMD [file]`` runs CMD through a shell."""
    p = parse_options(
        inv.args,
        short_values="cEIOBTm",
        long_values=(
            "--command",
            "--echo",
            "--log-in",
            "--log-out",
            "--log-io",
            "--log-timing",
            "--logging-format",
        ),
    )
    commands = p.values("-c", "--command")
    return _script_of(inv, "script -c", commands[-1]) if commands else _seen(inv)


def _parallel(inv: Invocation) -> Recognition:
    """GNU parallel joins its command words and runs them through a shell, once
    per input item (``:::`` lists or standard input)."""
    p = parse_options(
        inv.args,
        short_values="jSadInNLE",
        long_values=(
            "--jobs",
            "--sshlogin",
            "--arg-file",
            "--delimiter",
            "--max-args",
            "--max-lines",
            "--eof",
            "--joblog",
            "--results",
            "--timeout",
            "--delay",
        ),
        stop_at_operand=True,
    )
    words = list(p.operands)
    cut = next((i for i, w in enumerate(words) if w.value in (":::", "::::", ":::+")), None)
    command, items = (words, []) if cut is None else (words[:cut], words[cut + 1 :])
    items = [w for w in items if w.value not in (":::", "::::", ":::+")]
    if not command:
        return _seen(inv)
    static = all(w.value is not None for w in (*command, *items))
    one_line = len(command) == 1 and " " in (command[0].value or "")
    if static and (items or one_line):
        # parallel joins the words into a command line for a shell
        return Recognition("parallel", (), (Script(_join([*command, *items])),), True)
    return Recognition("parallel", (), (Argv((*command, *items), via_xargs=not items),), True)


def _trap(inv: Invocation) -> Recognition:
    """``trap 'CMD' EXIT``: CMD runs later, in this shell."""
    if not inv.args or (inv.args[0].value or "").startswith("-"):
        return _seen(inv)
    return _script_of(inv, "trap", inv.args[0])


def _alias(inv: Invocation) -> Recognition:
    """An alias's text may run later in an interactive shell: it is analysed now."""
    bodies = [w.value.partition("=")[2] for w in inv.args if w.value and "=" in w.value]
    return Recognition("alias", (), tuple(Script(b) for b in bodies if b.strip()))


def _busybox(inv: Invocation) -> Recognition:
    if not inv.args or (inv.args[0].value or "").startswith("-"):
        return _seen(inv)
    return Recognition("busybox", (), (Argv(inv.args),), transparent=True)


# --- shells, interpreters, scripts -----------------------------------------------------------

SHELLS = _names("sh bash zsh dash ksh ash mksh fish rbash")
DOWNLOADERS = _names("curl wget fetch aria2c http https xh")
_SCRIPT_SUFFIXES = (".sh", ".bash", ".zsh", ".ksh", ".py", ".pl", ".rb", ".js", ".php")


def _script_of(inv: Invocation, label: str, word: Word) -> Recognition:
    """``sh -c WORD`` and the like: the text is analysed as shell in turn."""
    if word.value is not None:
        return Recognition(inv.name, (), (Script(word.value),), transparent=True)
    hits = [
        Hit(
            "shell.dynamic_command",
            f"{label} with a command built at run time: {word.text}",
            word.text,
        )
    ]
    if word.downloads:
        hits.append(Hit("shell.remote_code", f"{label} runs downloaded code", word.text))
    static = any(isinstance(p, str) and p.strip() for p in word.parts)
    return Recognition(inv.name, tuple(hits), (Script(word.shell_text),) if static else ())


def _stdin_code(inv: Invocation, what: str, *, parse: bool) -> Recognition:
    """A shell or interpreter reading its program from standard input."""
    stdin = inv.stdin
    if stdin.feed is Feed.DOWNLOAD:
        return _seen(
            inv,
            inv.name,
            Hit(
                "shell.remote_code",
                f"{stdin.origin} | {inv.name}: runs downloaded code",
                stdin.origin,
            ),
        )
    if stdin.feed is Feed.FILE:
        return _seen(
            inv,
            inv.name,
            Hit("shell.unseen_script", f"{inv.name} runs {stdin.origin}", stdin.origin),
        )
    if stdin.feed is Feed.TEXT and parse:
        return Recognition(inv.name, (), (Script(stdin.text, TERMINAL),), transparent=True)
    if stdin.feed in (Feed.PIPE, Feed.TEXT):
        code = "shell.dynamic_command" if parse else "shell.unseen_script"
        return _seen(inv, inv.name, Hit(code, f"{inv.name} runs {what} read from a pipe"))
    return _seen(inv)


def _script_file(inv: Invocation, word: Word) -> Recognition:
    if word.downloads:
        return _seen(
            inv,
            inv.name,
            Hit("shell.remote_code", f"{inv.name} runs downloaded code: {word.text}", word.text),
        )
    if word.value in ("/dev/stdin", "-"):
        return _stdin_code(inv, "commands", parse=inv.name in SHELLS | {"source", "."})
    return _seen(
        inv,
        inv.name,
        Hit(
            "shell.unseen_script",
            f"{inv.name} runs {word.shown}, whose content is not seen",
            word.shown,
        ),
    )


def _shell(inv: Invocation) -> Recognition:
    args = inv.args
    command_mode = from_stdin = False
    i = 0
    while i < len(args):
        v = args[i].value
        if v is None or not v.startswith(("-", "+")) or v in ("-", "+"):
            break
        i += 1
        if v == "--":
            break
        if v.startswith("--"):
            if v in ("--rcfile", "--init-file"):
                i += 1
            continue
        letters = v[1:]
        command_mode = command_mode or "c" in letters
        from_stdin = from_stdin or "s" in letters
        i += sum(1 for ch in letters if ch in "oO")
    rest = args[i:]
    if command_mode:
        return _script_of(inv, f"{inv.name} -c", rest[0]) if rest else _seen(inv)
    if rest and not from_stdin:
        return _script_file(inv, rest[0])
    return _stdin_code(inv, "commands", parse=True)


#: the options that give an interpreter its program on the command line
_INLINE = (
    (re.compile(r"(python|pypy)"), "c", ("--command",)),
    (re.compile(r"(perl|ruby|lua)"), "eE", ()),
    (re.compile(r"(node|nodejs|deno|bun)"), "ep", ("--eval", "--print")),
    (re.compile(r"php"), "r", ()),
)


def _inline_code(name: str, option: str) -> bool:
    for pattern, letters, longs in _INLINE:
        if pattern.match(name):
            if option.startswith("--"):
                return option.partition("=")[0] in longs
            return any(ch in letters for ch in option[1:])
    return False


def _interpreter(inv: Invocation) -> Recognition:
    """python, perl, node...: a script file, inline code or a module is code the
    analyzer does not read (``shell.unseen_script``, held as MEDIUM)."""
    for i, word in enumerate(inv.args):
        v = word.value
        if v == "-":
            return _stdin_code(inv, "code", parse=False)
        if v is None or not v.startswith("-"):
            return _script_file(inv, word)
        if v in ("-V", "--version", "-h", "--help", "-v"):
            return _seen(inv)
        if _inline_code(inv.name, v):
            return _seen(
                inv,
                inv.name,
                Hit(
                    "shell.unseen_script", f"{inv.name} {v}: inline code is not analysed", inv.name
                ),
            )
        if v.startswith("-m") and _PYTHON.match(inv.name):
            module = v[2:] or (inv.args[i + 1].shown if i + 1 < len(inv.args) else "")
            return _seen(
                inv,
                inv.name,
                Hit("shell.unseen_script", f"{inv.name} runs module {module}", module),
            )
    return _stdin_code(inv, "code", parse=False)


def _eval(inv: Invocation) -> Recognition:
    text = " ".join(w.shell_text for w in inv.args)
    shown = " ".join(w.text for w in inv.args)
    hits = [Hit("shell.dynamic_command", f"eval: runs text as a command: {shown}", shown)]
    if any(w.downloads for w in inv.args):
        hits.append(Hit("shell.remote_code", "eval of downloaded code", shown))
    static = any(isinstance(p, str) and p.strip() for w in inv.args for p in w.parts)
    return Recognition("eval", tuple(hits), (Script(text),) if static else ())


def _source(inv: Invocation) -> Recognition:
    if not inv.args:
        return _seen(inv)
    return _script_file(inv, inv.args[0])


_SSH_VALUES = "BbcDEeFIiJLlmOoPpQRSWw"


def _ssh(inv: Invocation) -> Recognition:
    p = parse_options(inv.args, short_values=_SSH_VALUES, stop_at_operand=True)
    if not p.operands:
        return _seen(inv)
    host = p.operands[0].shown
    remote = p.operands[1:]
    if p.has("-N"):
        return _seen(inv)
    if not remote:
        stdin = inv.stdin
        if stdin.feed is Feed.TEXT:
            return Recognition("ssh", (), (Script(stdin.text, TERMINAL),))
        if stdin.feed is Feed.TERMINAL:
            return _seen(inv)
        return Recognition("ssh", _stdin_code(inv, "commands", parse=True).hits)
    if len(remote) == 1:
        return _remote(inv, "ssh", remote[0], host)
    # ssh joins its operands with spaces and the remote shell parses the result
    joined = " ".join(w.shell_text for w in remote)
    parts: list[Part] = (
        [joined] if all(w.value is not None for w in remote) else [joined, Expansion("")]
    )
    word = Word(joined, tuple(parts), joined if len(parts) == 1 else None)
    return _remote(inv, "ssh", word, host)


def _remote(inv: Invocation, type_: str, command: Word, where: str) -> Recognition:
    script = _script_of(inv, f"{type_} {where}", command)
    return Recognition(type_, script.hits, script.inner)


def unseen_script_path(path: str) -> bool:
    """``./deploy.sh``, ``bin/migrate``, ``cleanup.py``: a program whose code we don't see."""
    if path.endswith(_SCRIPT_SUFFIXES):
        return True
    return "/" in path and not path.startswith("/")


def _other(inv: Invocation) -> Recognition:
    if unseen_script_path(inv.path):
        return _seen(
            inv,
            inv.name,
            Hit("shell.unseen_script", f"runs {inv.path}, whose content is not seen", inv.path),
        )
    return _seen(inv)


# --- the table -------------------------------------------------------------------------------

_sudo_like = _wrapper("uC", ("--user",))
_nice = _wrapper("n", ("--adjustment",))
_ionice = _wrapper(
    "cnP",
    ("--class", "--classdata", "--pid", "--pgid", "--uid"),
    no_command=("-p", "-P", "-u", "--pid", "--pgid", "--uid"),
)
_timeout = _wrapper("sk", ("--signal", "--kill-after"), operands_before=1)
_chroot = _wrapper(long_values=("--userspec", "--groups"), operands_before=1)
_stdbuf = _wrapper("ioe", ("--input", "--output", "--error"))
_exec = _wrapper("a")
_plain = _wrapper()
_disk = _disk_tool()

RECOGNIZERS: Mapping[str, Recognizer] = {
    # files and disks
    "rm": _rm,
    "unlink": _unlink,
    "find": _find,
    "dd": _dd,
    "mkfs": _disk,
    "mke2fs": _disk,
    "mkswap": _disk,
    "mkntfs": _disk,
    "mkdosfs": _disk,
    "blkdiscard": _disk,
    "wipefs": _disk_tool(_wipefs_reads),
    "fdisk": _disk_tool(_lists),
    "sfdisk": _disk_tool(_lists),
    "gdisk": _disk_tool(_lists),
    "sgdisk": _disk_tool(lambda p: p.has("-p", "--print", "-v", "--verify", "-i", "--info")),
    "cfdisk": _disk,
    "parted": _disk_tool(_parted_reads),
    "shred": _shred,
    "chmod": _permissions,
    "chown": _permissions,
    "chgrp": _permissions,
    "tee": _tee,
    "cp": _copy,
    "mv": _copy,
    "install": _copy,
    "truncate": _truncate,
    "sed": _sed,
    # host
    "shutdown": _power,
    "reboot": _power,
    "halt": _power,
    "poweroff": _power,
    "init": _init,
    "telinit": _init,
    "systemctl": _systemctl,
    "service": _service,
    "kill": _kill,
    "pkill": _pkill,
    "killall": _pkill,
    "killall5": _pkill,
    # infrastructure
    "kubectl": _kubectl,
    "oc": _kubectl,
    "helm": _helm,
    "terraform": _terraform,
    "tofu": _terraform,
    "terragrunt": _terragrunt,
    "aws": _aws,
    "gcloud": _gcloud,
    "az": _az,
    "gsutil": _gsutil,
    "git": _git,
    "docker": _docker,
    "podman": _docker,
    "docker-compose": _docker,
    # databases
    "psql": _psql,
    "mysql": _mysql,
    "mariadb": _mysql,
    "dropdb": _pg_tool("DROP DATABASE"),
    "dropuser": _pg_tool("DROP ROLE"),
    "redis-cli": _redis,
    "valkey-cli": _redis,
    "keydb-cli": _redis,
    # wrappers
    "sudo": _sudo,
    "doas": _sudo_like,
    "env": _env,
    "nice": _nice,
    "ionice": _ionice,
    "nohup": _plain,
    "timeout": _timeout,
    "xargs": _xargs,
    "watch": _watch,
    "exec": _exec,
    "command": _command,
    "builtin": _plain,
    "stdbuf": _stdbuf,
    "chroot": _chroot,
    "su": _su,
    "runuser": _su,
    "flock": _flock,
    "time": _time,
    "setsid": _plain,
    "coproc": _plain,
    "busybox": _busybox,
    "parallel": _parallel,
    "nsenter": _wrapper("tSGrw", ("--target", "--setuid", "--setgid", "--root", "--wd")),
    "unshare": _wrapper(
        "S",
        ("--setuid", "--setgid", "--map-user", "--map-group", "--root", "--wd", "--propagation"),
    ),
    "chrt": _wrapper(operands_before=1, no_command=("-p", "--pid", "-m", "--max")),
    "taskset": _wrapper(operands_before=1, no_command=("-p", "--pid")),
    "systemd-run": _wrapper(
        "pEuMH",
        (
            "--unit",
            "--property",
            "--setenv",
            "--description",
            "--slice",
            "--uid",
            "--gid",
            "--working-directory",
            "--machine",
            "--host",
            "--on-calendar",
            "--on-active",
        ),
    ),
    "strace": _wrapper("oepsuEPIabXS", ()),
    "ltrace": _wrapper("oepsunlLA", ()),
    "proxychains": _plain,
    "proxychains4": _plain,
    "torsocks": _plain,
    "script": _script_command,
    "trap": _trap,
    "alias": _alias,
    "pg_restore": _pg_restore,
    # code the analyzer does not see into
    "eval": _eval,
    "source": _source,
    ".": _source,
    "ssh": _ssh,
    **dict.fromkeys(SHELLS, _shell),
    **dict.fromkeys(
        ("perl", "ruby", "node", "nodejs", "php", "lua", "Rscript", "deno", "bun", "tclsh"),
        _interpreter,
    ),
}

_PYTHON = re.compile(r"(python|pypy)[0-9.]*$")


def recognizer_for(name: str) -> Recognizer:
    found = RECOGNIZERS.get(name)
    if found is not None:
        return found
    if name.startswith("mkfs."):
        return _disk
    if _PYTHON.match(name):
        return _interpreter
    return _other


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if "/" in path.rstrip("/") else path


command_name = _base


# --- what a command writes to its standard output ----------------------------------------------


def output_of(inv: Invocation) -> Stdin:
    """What the next command of a pipeline reads from this one."""
    name = inv.name
    if name in DOWNLOADERS:
        return Stdin(Feed.DOWNLOAD, origin=inv.display)
    if name in ("echo", "printf"):
        args = list(inv.args)
        while name == "echo" and args and args[0].value in ("-n", "-e", "-E", "-ne", "-en"):
            args.pop(0)
        if all(w.value is not None for w in args):
            return Stdin(Feed.TEXT, " ".join(w.shown for w in args) + "\n", name)
        return UNKNOWN_PIPE
    if name in ("cat", "tee"):
        p = parse_options(inv.args)
        files = [w for w in p.operands if w.value != "-"] if name == "cat" else []
        if not files:
            return inv.stdin if inv.stdin.feed is not Feed.TERMINAL else UNKNOWN_PIPE
        if any(w.downloads for w in files):
            return Stdin(Feed.DOWNLOAD, origin=_join(files))
        return Stdin(Feed.FILE, origin=_join(files))
    return UNKNOWN_PIPE
