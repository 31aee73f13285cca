"""Decision throughput against a bare pglast parse, measured side by side.

For a generated corpus of distinct SQL statements (mixed reads, writes, DDL
and dangerous statements) this prints, in one run:

* bare parse: ``json.loads(pglast.parser.parse_sql_json(text))`` per statement,
  the fastest way pglast gives the full tree;
* uncached decisions: a fresh :class:`Evaluator` (empty caches) deciding each
  statement: analysis + fingerprint + default catalog;
* cached decisions: the same evaluator deciding the same statements again
  (the default catalog has no time conditions, so whole decisions are
  memoised per statement, target, environment and actor); and the same with
  that memo off, the policy evaluated on every call;

and the ratios. Targets: uncached/bare throughput >= 0.4 (a decision costs at
most 2.5 bare parses) and cached/bare >= 10. Each figure is the best of
``--rounds`` rounds, the rounds interleaved so that machine noise hits all
three alike. The shell analyzer is measured the same way against a bare
tree-sitter parse, for information.

    python bench/bench_evaluate.py [--statements 12000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tree_sitter as ts
import tree_sitter_bash as tsb
from pglast import parser

from corpus import shell_corpus, sql_corpus
from jitgate.actions.model import Action
from jitgate.evaluator import Evaluator
from jitgate.policy import Outcome


def timed(run: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start
    finally:
        gc.enable()


def measure(
    name: str, texts: Sequence[str], kind: str, bare: Callable[[str], object], rounds: int
) -> dict[str, float]:
    actions = [
        Action.create(kind, t, environment="production", target="main", user="dev") for t in texts
    ]
    bare_t: list[float] = []
    cold_t: list[float] = []
    warm_t: list[float] = []
    policy_t: list[float] = []
    decisions: list[Outcome] = []

    def parse_all() -> None:
        for text in texts:
            bare(text)

    def decide_all(evaluator: Evaluator) -> None:
        # Results are dropped as they come, like the bare parses: keeping
        # 10,000 trees alive would slow the side that keeps them.
        for action in actions:
            evaluator.evaluate(action)

    for _ in range(rounds):
        bare_t.append(timed(parse_all))
        evaluator = Evaluator(cache_size=len(texts) * 2)
        cold_t.append(timed(lambda ev=evaluator: decide_all(ev)))
        warm_t.append(timed(lambda ev=evaluator: decide_all(ev)))
        decisions = [evaluator.evaluate(a).outcome for a in actions]
        # The same with the decision memo off: analysis and fingerprint come
        # from the caches, the policy is evaluated every time (what a policy
        # with time conditions costs).
        no_memo = Evaluator(cache_size=len(texts) * 2, memoize_decisions=False)
        decide_all(no_memo)
        policy_t.append(timed(lambda ev=no_memo: decide_all(ev)))
    n = len(texts)
    bare_rate, cold_rate, warm_rate, policy_rate = (
        n / min(t) for t in (bare_t, cold_t, warm_t, policy_t)
    )
    held = sum(d is not Outcome.ALLOW for d in decisions)
    print(f"\n{name}: {n} distinct statements, {held} held in production, best of {rounds} rounds")
    print(f"  {'bare parse':28} {bare_rate:>12,.0f} /s  {1e6 / bare_rate:8.1f} µs each")
    print(f"  {'uncached decisions':28} {cold_rate:>12,.0f} /s  {1e6 / cold_rate:8.1f} µs each")
    print(f"  {'cached decisions':28} {warm_rate:>12,.0f} /s  {1e6 / warm_rate:8.1f} µs each")
    print(
        f"  {'cached, policy re-evaluated':28} {policy_rate:>12,.0f} /s  "
        f"{1e6 / policy_rate:8.1f} µs each  (decision memo off)"
    )
    print(f"  uncached / bare throughput  {cold_rate / bare_rate:8.2f}")
    print(f"  cached / bare throughput    {warm_rate / bare_rate:8.2f}")
    print(f"  cached (memo off) / bare    {policy_rate / bare_rate:8.2f}")
    spread = statistics.pstdev(cold_t) / statistics.mean(cold_t)
    print(f"  (round-to-round spread of uncached timings: {spread:.1%})")
    return {
        "bare": bare_rate,
        "uncached": cold_rate,
        "cached": warm_rate,
        "uncached_ratio": cold_rate / bare_rate,
        "cached_ratio": warm_rate / bare_rate,
    }


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--statements", type=int, default=12_000)
    options.add_argument("--shell", type=int, default=4_000)
    options.add_argument("--rounds", type=int, default=5)
    options.add_argument("--seed", type=int, default=7)
    args = options.parse_args()
    rng = random.Random(args.seed)
    sql = sql_corpus(rng, args.statements)
    shell = shell_corpus(rng, args.shell)

    def bare_sql(text: str) -> object:
        return json.loads(parser.parse_sql_json(text))

    bash = ts.Parser(ts.Language(tsb.language()))

    def bare_shell(text: str) -> object:
        return bash.parse(text.encode())

    result = measure("SQL (PostgreSQL)", sql, "sql", bare_sql, args.rounds)
    measure("shell (bash)", shell, "shell", bare_shell, args.rounds)
    ok = result["uncached_ratio"] >= 0.4 and result["cached_ratio"] >= 10
    print(
        f"\ntargets: uncached/bare >= 0.40 ({result['uncached_ratio']:.2f}), "
        f"cached/bare >= 10 ({result['cached_ratio']:.2f}): {'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
