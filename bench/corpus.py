"""Generated benchmark corpora: distinct statements in a realistic mix."""

from __future__ import annotations

import random

TABLES = ["invoices", "users", "orders", "payments", "events", "accounts", "sessions", "items"]
COLUMNS = ["id", "status", "amount", "created_at", "user_id", "email", "name", "total", "kind"]

SQL_TEMPLATES: list[tuple[int, str]] = [
    (30, "SELECT {c1}, {c2} FROM {t} WHERE id = {n}"),
    (10, "SELECT * FROM {t} WHERE {c1} = '{s}' ORDER BY {c2} DESC LIMIT {n}"),
    (
        8,
        "SELECT t.{c1}, count(*) FROM {t} t JOIN {t2} u ON u.{c2} = t.id "
        "WHERE t.{c3} > {n} GROUP BY t.{c1} HAVING count(*) > {m}",
    ),
    (
        6,
        "WITH recent AS (SELECT * FROM {t} WHERE created_at > now() - interval '{m} days') "
        "SELECT {c1}, sum({c2}) FROM recent WHERE {c3} IN ({n}, {m}, {k}) GROUP BY 1",
    ),
    (
        4,
        "SELECT {c1} FROM {t} WHERE {c2} IN (SELECT {c2} FROM {t2} WHERE {c3} = {n}) "
        "AND {c1} ILIKE '%{s}%'",
    ),
    (12, "INSERT INTO {t} ({c1}, {c2}, {c3}) VALUES ({n}, '{s}', now()) RETURNING id"),
    (
        3,
        "INSERT INTO {t} ({c1}, {c2}) VALUES ({n}, '{s}') ON CONFLICT (id) DO UPDATE "
        "SET {c2} = excluded.{c2}",
    ),
    (10, "UPDATE {t} SET {c1} = '{s}', {c2} = {c2} + {m} WHERE id = {n}"),
    (4, "DELETE FROM {t} WHERE id = {n}"),
    (3, "BEGIN; UPDATE {t} SET {c1} = {n} WHERE {c2} = '{s}'; COMMIT"),
    (2, "SET statement_timeout = {n}"),
    (2, "CREATE INDEX idx_{t}_{c1}_{n} ON {t} ({c1})"),
    (1, "ALTER TABLE {t} ADD COLUMN col_{n} text"),
    (1, "DELETE FROM {t}"),
    (1, "UPDATE {t} SET {c1} = '{s}' WHERE 1 = 1"),
    (1, "TRUNCATE {t}, {t2}"),
    (1, "DROP TABLE IF EXISTS tmp_{t}_{n}"),
    (1, "GRANT SELECT ON {t} TO role_{n}"),
    (1, "SELECT pg_terminate_backend({n})"),
]

SHELL_TEMPLATES: list[tuple[int, str]] = [
    (20, "ls -la /srv/{s}"),
    (10, "grep -r '{s}' /var/log/app-{n}.log | tail -n {m}"),
    (10, "kubectl get pods -n ns-{s}"),
    (8, "cat /etc/app/{s}.conf && echo done-{n}"),
    (6, "git log --oneline -n {n} -- src/{s}.py"),
    (5, "docker ps --filter name={s}"),
    (5, "curl -s http://localhost:{n}/health"),
    (3, "psql -h db-{n} -c 'SELECT count(*) FROM {t} WHERE id = {m}'"),
    (2, "rm -rf /srv/{s}/cache-{n}"),
    (2, "kubectl delete pod {s}-{n} -n prod"),
    (1, "sudo systemctl stop app-{s}"),
    (1, "terraform apply -auto-approve -var n={n}"),
    (1, "psql -c 'TRUNCATE {t}_{n}'"),
]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 10)))


def _fill(rng: random.Random, template: str) -> str:
    c1, c2, c3 = rng.sample(COLUMNS, 3)
    t, t2 = rng.sample(TABLES, 2)
    return template.format(
        t=t,
        t2=t2,
        c1=c1,
        c2=c2,
        c3=c3,
        s=_word(rng),
        n=rng.randint(1, 10**9),
        m=rng.randint(1, 1000),
        k=rng.randint(1, 1000),
    )


def _corpus(rng: random.Random, templates: list[tuple[int, str]], size: int) -> list[str]:
    weights = [w for w, _ in templates]
    bodies = [b for _, b in templates]
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < size:
        text = _fill(rng, rng.choices(bodies, weights)[0])
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def sql_corpus(rng: random.Random, size: int) -> list[str]:
    return _corpus(rng, SQL_TEMPLATES, size)


def shell_corpus(rng: random.Random, size: int) -> list[str]:
    return _corpus(rng, SHELL_TEMPLATES, size)
