"""Evaluator.allows() against evaluate() on statements that differ in their literals.

What the PostgreSQL gateway asks for every statement under pgbench's
select-only load: may ``SELECT abalance FROM pgbench_accounts WHERE aid = N;``
run, with a different N each time, so that no decision memo ever hits. This
prints, side by side, the cost per call of:

* ``evaluate(Action(...)).outcome is Outcome.ALLOW``: analysis, fingerprint
  and policy for every text (the evaluator's caches are keyed on exact text);
* ``allows(text, target, environment, actor)``: after the first text, a scan
  of the tokens and a look-up of the statement's shape;

and, for reference, the pieces: ``pglast.parser.scan`` alone, the shape,
and a bare ``json.loads(parse_sql_json(text))``. The same on TPC-B-like
``UPDATE ... WHERE aid = N`` statements shows the cost of a statement the
shape cache cannot serve (its WHERE clause is read for tautologies). Each
figure is the best of ``--rounds`` interleaved rounds; target: allows() on the
pgbench SELECT at most 10 µs.

    python bench/bench_evaluator_shapes.py [--calls 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence

from pglast import parser

from bench_evaluate import timed  # the same clock discipline (no GC during a run)
from jitgate.actions.model import Action, ActionKind, Actor
from jitgate.actions.sql import sql_shape
from jitgate.evaluator import Evaluator
from jitgate.policy import Outcome

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};"
TARGET = "pgbench"
ENVIRONMENT = "production"
ACTOR = Actor.of("bench", ["app"])


def texts_of(template: str, rng: random.Random, count: int) -> list[str]:
    return [
        template.format(aid=rng.randint(1, 10_000_000), delta=rng.randint(-5000, 5000))
        for _ in range(count)
    ]


def measure(name: str, texts: Sequence[str], rounds: int) -> tuple[float, float]:
    """Best µs per call of evaluate() and allows(), printed with the pieces."""

    def evaluate_all(evaluator: Evaluator) -> None:
        for text in texts:
            action = Action(
                kind=ActionKind.SQL,
                text=text,
                target=TARGET,
                environment=ENVIRONMENT,
                actor=ACTOR,
            )
            _ = evaluator.evaluate(action).outcome is Outcome.ALLOW

    def allows_all(evaluator: Evaluator) -> None:
        allows = evaluator.allows
        for text in texts:
            allows(text, TARGET, ENVIRONMENT, ACTOR)

    def scan_all() -> None:
        scan = parser.scan
        for text in texts:
            scan(text)

    def shape_all() -> None:
        for text in texts:
            sql_shape(text)

    def parse_all() -> None:
        parse, loads = parser.parse_sql_json, json.loads
        for text in texts:
            loads(parse(text))

    runs: dict[str, list[float]] = {
        "evaluate()": [],
        "allows()": [],
        "scan": [],
        "shape": [],
        "parse + json.loads": [],
    }
    for _ in range(rounds):
        # Fresh evaluators each round, warmed on one text the load never sends.
        evaluating = Evaluator()
        allowing = Evaluator()
        warm = texts[0].replace(" = ", " =  ", 1)
        evaluating.evaluate(
            Action(
                kind=ActionKind.SQL, text=warm, target=TARGET, environment=ENVIRONMENT, actor=ACTOR
            )
        )
        allowing.allows(texts[0], TARGET, ENVIRONMENT, ACTOR)
        runs["evaluate()"].append(timed(lambda ev=evaluating: evaluate_all(ev)))
        runs["allows()"].append(timed(lambda ev=allowing: allows_all(ev)))
        runs["scan"].append(timed(scan_all))
        runs["shape"].append(timed(shape_all))
        runs["parse + json.loads"].append(timed(parse_all))
    n = len(texts)
    best = {label: min(times) / n * 1e6 for label, times in runs.items()}
    check = Evaluator()
    allowed = sum(check.allows(text, TARGET, ENVIRONMENT, ACTOR) for text in texts[:1000])
    print(f"\n{name}: {n} distinct texts, best of {rounds} rounds ({allowed}/1000 allowed)")
    print(f"  {'evaluate()':22} {best['evaluate()']:8.2f} µs/call")
    print(
        f"  {'allows()':22} {best['allows()']:8.2f} µs/call   "
        f"({best['evaluate()'] / best['allows()']:.1f}x faster)"
    )
    for label in ("scan", "shape", "parse + json.loads"):
        print(f"    {label:20} {best[label]:8.2f} µs")
    return best["evaluate()"], best["allows()"]


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--calls", type=int, default=50_000)
    options.add_argument("--rounds", type=int, default=5)
    options.add_argument("--seed", type=int, default=7)
    args = options.parse_args()
    rng = random.Random(args.seed)
    _, fast = measure("pgbench select-only", texts_of(SELECT, rng, args.calls), args.rounds)
    measure("TPC-B UPDATE (never served by shape)", texts_of(UPDATE, rng, args.calls // 5), 3)
    print(
        f"\ntarget: allows() <= 10 µs on the pgbench SELECT ({fast:.2f}): "
        f"{'met' if fast <= 10 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
