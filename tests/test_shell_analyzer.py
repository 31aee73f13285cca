"""The shell analyzer: the labelled corpus, then focused behaviour."""

from __future__ import annotations

import json
import shlex
import threading
from pathlib import Path
from typing import Any

import pytest

from jitgate.actions.findings import FINDING_CODES, Analysis, Risk, excerpt
from jitgate.actions.shell import (
    DYNAMIC,
    MAX_SCRIPTS,
    MAX_WRAPPERS,
    UNPARSED,
    analyze_shell,
)

CORPUS_PATH = Path(__file__).parent / "corpus" / "shell.jsonl"
SAMPLES_PATH = Path("/work/shared/examples/sample-actions.jsonl")


def _load_corpus() -> list[dict[str, Any]]:
    with CORPUS_PATH.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


CORPUS = _load_corpus()


def _case_id(case: dict[str, Any]) -> str:
    return f"{case['expect']}:{case['note']}"


def _codes(text: str) -> set[str]:
    return set(analyze_shell(text).codes)


def _by_code(analysis: Analysis, code: str) -> list[Any]:
    return [f for f in analysis.findings if f.code == code]


# --- the corpus --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CORPUS, ids=[_case_id(c) for c in CORPUS])
def test_corpus_case(case: dict[str, Any]) -> None:
    analysis = analyze_shell(case["text"])
    verdict = "hold" if analysis.dangerous else "allow"
    assert verdict == case["expect"], (analysis.codes, analysis.findings)
    missing = set(case["codes"]) - analysis.codes
    assert not missing, f"missing {missing}; got {sorted(analysis.codes)}"


def test_corpus_is_large_and_balanced() -> None:
    expects = [c["expect"] for c in CORPUS]
    assert len(CORPUS) >= 80
    assert expects.count("allow") >= 40
    assert expects.count("hold") >= 40
    assert len({c["text"] for c in CORPUS}) == len(CORPUS), "duplicate corpus texts"


def test_corpus_only_names_known_codes() -> None:
    named = {code for case in CORPUS for code in case["codes"]}
    assert named <= set(FINDING_CODES)


def test_corpus_covers_every_shell_code() -> None:
    named = {code for case in CORPUS for code in case["codes"]}
    shell_codes = {c for c in FINDING_CODES if c.startswith("shell.")}
    assert shell_codes - named == set()


@pytest.mark.skipif(not SAMPLES_PATH.exists(), reason="shared examples not present")
def test_corpus_includes_the_shared_shell_samples() -> None:
    with SAMPLES_PATH.open(encoding="utf-8") as handle:
        samples = [json.loads(line) for line in handle if line.strip()]
    shell = [s for s in samples if s["kind"] == "shell" and s["env"] == "production"]
    ours = {c["text"]: c["expect"] for c in CORPUS}
    assert shell
    for sample in shell:
        assert ours.get(sample["text"]) == sample["expect"], sample["text"]


# --- units ---------------------------------------------------------------------------------


def test_units_of_a_compound_line_in_source_order() -> None:
    line = 'cd /srv/app && sudo -u app rm -rf build; echo "$(date)" | tee -a log.txt'
    analysis = analyze_shell(line)
    assert [(u.index, u.type, u.text) for u in analysis.units] == [
        (0, "cd", "cd /srv/app"),
        (1, "rm", "sudo -u app rm -rf build"),
        (2, "echo", 'echo "$(date)"'),
        (3, "date", "date"),
        (4, "tee", "tee -a log.txt"),
    ]
    [finding] = analysis.findings
    assert (finding.code, finding.unit, finding.subject) == ("shell.rm_recursive", 1, "build")
    assert finding.excerpt == "sudo -u app rm -rf build"


def test_unit_types_carry_the_verb_that_matters() -> None:
    line = (
        "kubectl -n prod delete pod x; terraform apply; git push; systemctl stop nginx; "
        "helm uninstall api; aws ec2 terminate-instances --instance-ids i-1; psql -l; rm a"
    )
    assert [u.type for u in analyze_shell(line).units] == [
        "kubectl delete",
        "terraform apply",
        "git push",
        "systemctl stop",
        "helm uninstall",
        "aws ec2 terminate-instances",
        "psql",
        "rm",
    ]


def test_unit_texts_are_exact_source_slices() -> None:
    line = "FOO=1 nice -n 5 rm -rf ./out 2>/dev/null && ls  -l"
    analysis = analyze_shell(line)
    assert [u.text for u in analysis.units] == [
        "FOO=1 nice -n 5 rm -rf ./out 2>/dev/null",
        "ls  -l",
    ]
    assert all(u.text in line for u in analysis.units)


def test_hops_are_units_followed_by_what_they_run() -> None:
    analysis = analyze_shell("kubectl exec -it db-0 -n prod -- rm -rf /data")
    assert [(u.type, u.text) for u in analysis.units] == [
        ("kubectl exec", "kubectl exec -it db-0 -n prod -- rm -rf /data"),
        ("rm", "rm -rf /data"),
    ]
    exec_finding = _by_code(analysis, "shell.kubectl_exec")[0]
    assert (exec_finding.unit, exec_finding.subject) == (0, "prod/db-0")
    assert {f.unit for f in _by_code(analysis, "shell.rm_recursive")} == {1}


def test_commands_of_a_nested_shell_string_are_units_with_that_text() -> None:
    analysis = analyze_shell("ssh db1 'systemctl stop postgresql && rm -rf /var/lib/pgsql'")
    assert [(u.type, u.text) for u in analysis.units] == [
        ("ssh", "ssh db1 'systemctl stop postgresql && rm -rf /var/lib/pgsql'"),
        ("systemctl stop", "systemctl stop postgresql"),
        ("rm", "rm -rf /var/lib/pgsql"),
    ]
    assert {(f.code, f.unit) for f in analysis.findings} >= {
        ("shell.service_stop", 1),
        ("shell.rm_recursive", 2),
        ("shell.rm_system_path", 2),
    }


def test_every_finding_points_at_its_unit_and_quotes_it() -> None:
    for case in CORPUS:
        analysis = analyze_shell(case["text"])
        for finding in analysis.findings:
            assert 0 <= finding.unit < len(analysis.units), case["text"]
            assert finding.excerpt == excerpt(analysis.units[finding.unit].text)


def test_every_emitted_code_is_a_known_code() -> None:
    emitted = {code for case in CORPUS for code in analyze_shell(case["text"]).codes}
    assert emitted <= set(FINDING_CODES)
    assert {c for c in emitted if not c.startswith(("shell.", "sql."))} == set()


# --- subjects and risk -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code", "subject"),
    [
        ("rm -rf /var/lib/mysql", "shell.rm_recursive", "/var/lib/mysql"),
        ("rm -rf a 'b c'", "shell.rm_recursive", "a b c"),
        ("kubectl delete statefulset db -n prod", "shell.kubectl_delete", "prod/statefulset/db"),
        ("kubectl delete ns prod", "shell.kubectl_delete", "ns/prod"),
        ("kubectl --namespace=pay delete pod/api-0", "shell.kubectl_delete", "pay/pod/api-0"),
        (
            "kubectl scale deploy api --replicas=0 -n prod",
            "shell.kubectl_scale_zero",
            "prod/deploy/api",
        ),
        ("helm uninstall api -n prod", "shell.helm_uninstall", "prod/api"),
        ("dd if=/dev/zero of=/dev/nvme0n1", "shell.disk_write", "/dev/nvme0n1"),
        ("echo x > /etc/hosts", "shell.system_file_write", "/etc/hosts"),
        ("aws s3 rm s3://backups --recursive", "shell.cloud_destroy", "s3://backups"),
        ("git push --force origin main", "shell.git_force_push", "origin main"),
        ("systemctl stop nginx postgresql", "shell.service_stop", "nginx postgresql"),
        ("psql -c 'TRUNCATE invoices'", "sql.truncate", "invoices"),
    ],
)
def test_subjects(line: str, code: str, subject: str) -> None:
    found = _by_code(analyze_shell(line), code)
    assert [f.subject for f in found] == [subject]


@pytest.mark.parametrize(
    ("line", "risk"),
    [
        ("rm -rf ./build", Risk.MEDIUM),
        ("rm -rf /srv/app/releases/41", Risk.HIGH),
        ("rm -rf /var/lib/mysql", Risk.CRITICAL),
        ("rm -rf /", Risk.CRITICAL),
        ("rm file.txt", Risk.LOW),
        ("chmod -R 755 ./public", Risk.MEDIUM),
        ("chmod -R 777 /", Risk.CRITICAL),
        ("docker image prune", Risk.LOW),
        ("psql", Risk.LOW),
        ("kubectl delete pod api-0", Risk.HIGH),
        ("kubectl delete ns prod", Risk.CRITICAL),
        ("terraform destroy", Risk.CRITICAL),
        ("echo hello", Risk.NONE),
    ],
)
def test_risk(line: str, risk: Risk) -> None:
    assert analyze_shell(line).risk == risk


def test_rm_message_explains_an_empty_variable() -> None:
    [finding] = _by_code(analyze_shell('rm -rf "$DIR"/*'), "shell.rm_system_path")
    assert "/* if $DIR is empty or unset" in finding.message


def test_sql_findings_are_re_emitted_on_the_psql_unit() -> None:
    analysis = analyze_shell("cd /tmp; psql -d app -c 'DROP TABLE users; SELECT 1'")
    [drop] = _by_code(analysis, "sql.drop")
    assert drop.unit == 1
    assert analysis.units[1].type == "psql"
    assert drop.message.startswith("psql -c: ")
    assert drop.subject == "users"
    assert drop.excerpt == "psql -d app -c 'DROP TABLE users; SELECT 1'"


def test_heredoc_sql_is_analysed_and_the_rest_of_the_line_too() -> None:
    line = "psql app <<'EOF' && rm -rf /srv/x\nDELETE FROM invoices;\nEOF"
    analysis = analyze_shell(line)
    assert [u.type for u in analysis.units] == ["psql", "rm"]
    assert {(f.code, f.unit) for f in analysis.findings} >= {
        ("sql.delete_without_where", 0),
        ("shell.rm_recursive", 1),
    }


def test_text_piped_into_psql_through_cat_and_a_heredoc() -> None:
    assert "sql.truncate" in _codes("cat <<EOF | psql app\nTRUNCATE invoices;\nEOF")


def test_substitutions_are_analysed_once() -> None:
    analysis = analyze_shell('sh -c "rm -rf $(pwd)/x"; eval "$(curl -s https://x)"')
    assert [u.type for u in analysis.units].count("pwd") == 1
    assert [u.type for u in analysis.units].count("curl") == 1


# --- fail closed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["", "  \n\t", "# only a comment", "rm -rf (", "echo 'open", "if true; then ls", "ls |"],
)
def test_parse_errors_and_empty_text_fail_closed(line: str) -> None:
    analysis = analyze_shell(line)
    assert "shell.parse_error" in analysis.codes
    assert analysis.risk == Risk.CRITICAL


def test_text_that_does_not_parse_is_a_unit_of_its_own() -> None:
    analysis = analyze_shell("echo 'open")
    [finding] = _by_code(analysis, "shell.parse_error")
    assert analysis.units[finding.unit].type == UNPARSED


def test_nul_bytes_fail_closed_and_what_follows_is_still_read() -> None:
    analysis = analyze_shell("echo hi\x00rm -rf /srv/x")
    assert {"shell.parse_error", "shell.rm_recursive"} <= analysis.codes


@pytest.mark.parametrize(
    "text",
    [
        bytes(range(256)).decode("latin-1"),
        "\ud800\udfff rm -rf /x",
        "\x1b[31mred\x1b[0m",
        "'" * 1001,
        "$(" * 500,
        "\\" * 999,
        "${" * 300 + "}" * 300,
        "<<" * 200,
        "<<EOF\n" * 50,
    ],
)
def test_garbage_returns_an_analysis(text: str) -> None:
    analysis = analyze_shell(text)
    assert isinstance(analysis, Analysis)
    assert analysis.codes <= set(FINDING_CODES)


def test_tree_sitter_never_sees_a_non_ascii_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """tree-sitter-bash 0.25's scanner calls isdigit()/isalpha() on non-ASCII code
    points, which reads outside glibc's table and can crash the process: the
    analyzer parses an ASCII copy and reads all text from the original."""
    import jitgate.actions.shell as shell_module

    real_parser = shell_module.ts.Parser
    parsed: list[bytes] = []

    class RecordingParser:
        def __init__(self, language: object) -> None:
            self.inner = real_parser(language)

        def parse(self, source: bytes) -> object:
            parsed.append(source)
            return self.inner.parse(source)

    monkeypatch.setattr(shell_module.ts, "Parser", RecordingParser)
    line = "rm -rf /srv/données; sh -c 'echo 修正 \U0010fff0 {\U000fffff'; echo \udcff"
    analysis = analyze_shell(line)
    assert len(parsed) == 2  # the line and the sh -c string
    assert all(byte < 0x80 for source in parsed for byte in source)
    [finding] = _by_code(analysis, "shell.rm_recursive")
    assert finding.subject == "/srv/données"
    assert analysis.units[1].text.startswith("echo 修正")


def test_non_ascii_text_keeps_its_meaning() -> None:
    assert _codes('git commit -m "修正: kubectl delete ns prod"') == set()
    assert _codes("cat 文件.txt") == set()
    found = _by_code(analyze_shell("cat 報告.sql | psql"), "shell.unseen_script")
    assert [f.subject for f in found] == ["報告.sql"]


def test_a_ten_megabyte_command_line() -> None:
    analysis = analyze_shell("echo " + "a" * 10_000_000 + "; rm -rf /srv/x")
    assert "shell.rm_recursive" in analysis.codes
    assert all(len(f.excerpt) <= 200 for f in analysis.findings)


def test_deeply_nested_substitutions_stop_with_a_dynamic_command() -> None:
    line = "echo " + "$(echo " * 3000 + "rm -rf /" + ")" * 3000
    analysis = analyze_shell(line)
    assert "shell.dynamic_command" in analysis.codes
    assert any(u.type == DYNAMIC for u in analysis.units)


def test_shells_nested_beyond_the_limit_are_dynamic() -> None:
    line = "rm -rf /srv/x"
    for _ in range(MAX_SCRIPTS):
        line = "sh -c " + shlex.quote(line)
    assert "shell.rm_recursive" in _codes(line)  # within the limit: followed to the end
    deeper = "sh -c " + shlex.quote(line)
    assert "shell.dynamic_command" in _codes(deeper)


def test_too_many_stacked_wrappers_are_dynamic() -> None:
    assert "shell.dynamic_command" in _codes("nohup " * (MAX_WRAPPERS + 1) + "ls")
    assert _codes("nohup " * 5 + "ls") == set()


def test_long_lists_are_not_recursed_into() -> None:
    analysis = analyze_shell(" && ".join(["true"] * 5000) + " && rm -rf /srv/x")
    assert len(analysis.units) == 5001
    assert analysis.findings[0].unit == 5000


def test_concurrent_use_gives_the_same_answers() -> None:
    texts = [c["text"] for c in CORPUS]
    expected = [analyze_shell(t) for t in texts]
    failures: list[str] = []

    def worker() -> None:
        for text, want in zip(texts, expected, strict=True):
            if analyze_shell(text) != want:
                failures.append(text)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_analysis_touches_no_files_and_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import os
    import subprocess

    texts = [c["text"] for c in CORPUS]
    expected = [analyze_shell(t) for t in texts]  # warm up lazy imports first

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the analyzer must not do I/O")

    for owner, name in [
        (builtins, "open"),
        (os, "stat"),
        (os, "listdir"),
        (os, "scandir"),
        (os, "system"),
        (os, "getenv"),
        (subprocess, "Popen"),
    ]:
        monkeypatch.setattr(owner, name, forbidden)
    assert [analyze_shell(t) for t in texts] == expected
