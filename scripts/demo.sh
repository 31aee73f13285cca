#!/usr/bin/env bash
# A short tour of `jitgate evaluate` on the built-in catalog (run by `make demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
JITGATE=.venv/bin/jitgate

show() {
  printf '\n\033[1m$ jitgate %s\033[0m\n' "$*"
  "$JITGATE" "$@" || true
}

echo "jitgate: the default catalog, deciding in production and in staging."
show evaluate --env production "SELECT * FROM invoices WHERE id = 9"
show evaluate --env production "UPDATE users SET last_login = now() WHERE id = 3"
show evaluate --env production "SELECT 1; DELETE FROM invoices -- cleanup"
show evaluate --env production "WITH gone AS (DELETE FROM invoices WHERE 'a' = 'a' RETURNING *) SELECT count(*) FROM gone"
show evaluate --env production "GRANT ALL ON ALL TABLES IN SCHEMA public TO intern"
show evaluate --env staging "DELETE FROM invoices"
show evaluate --kind shell --env prod "sudo sh -c 'rm -rf /var/lib/postgresql'"
show evaluate --kind shell --env prod "echo 'rm -rf /' && kubectl get pods -n prod"
show evaluate --kind shell --env prod --json "psql -h db -c 'TRUNCATE invoices'"
show evaluate --kind tool_call --env prod '{"tool": "run_sql", "arguments": {"query": "DROP SCHEMA billing CASCADE"}}'
printf '\n\033[1m$ jitgate evaluate --batch examples/actions.jsonl\033[0m\n'
"$JITGATE" evaluate --batch examples/actions.jsonl | cut -c1-160
show policy check examples/policy.yaml
show policy test examples/policy.yaml examples/policy-cases.yaml
echo
echo "Try your own: .venv/bin/jitgate evaluate --env prod 'DROP TABLE users'"
echo "Policy reference: docs/policies.md; the catalog: .venv/bin/jitgate policy default"
