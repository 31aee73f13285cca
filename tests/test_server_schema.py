"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis 4).

A real uvicorn server over a real store; requests authenticated as a normal
user (ann). Every operation gets schema-valid data (positive) and invalid
data (negative), with random request ids and with the id of a real request.
Checks: no 5xx, every error body has ``error.code``, status codes, content
types and response bodies as documented, and invalid data refused (4xx).
The number of examples is bounded so a backend takes well under 30 s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import ApiEnv
from jitgate.audit.keys import SigningKey
from test_server_sse import live

#: Examples per operation and pass (random ids / a real id; positive / negative).
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}


def error_body_has_a_code(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answer is ``{"error": {"code": str, "message": str}}``."""
    if response.status_code < 400:
        return None
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(error, dict) and isinstance(error.get("code"), str) and error["code"]):
        raise AssertionError(f"error answer without error.code: {response.text[:200]}")
    if not isinstance(error.get("message"), str):
        raise AssertionError(f"error answer without error.message: {response.text[:200]}")
    return True


CHECKS = [
    not_a_server_error,
    error_body_has_a_code,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def example_runner(
    strategy: Any,
    examples: int,
    checks: list[Any],
    base_url: str,
    headers: dict[str, str],
    statuses: Counter[tuple[str, int]],
) -> Any:
    """A Hypothesis test calling the server with each generated case."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        statuses[case.meta.generation.mode.value, response.status_code] += 1
        case.validate_response(response, checks=checks)

    return run


def fuzz(
    schema: Any,
    base_url: str,
    headers: dict[str, str],
    ids: dict[str, str] | None,
) -> tuple[list[str], Counter[tuple[str, int]]]:
    """Run every operation in both modes; the failures and the statuses seen."""
    failures: list[str] = []
    statuses: Counter[tuple[str, int]] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        path_parameters = None
        if ids is not None:
            if "{id}" not in operation.path:
                continue
            # A pending request never ends its event stream: watch a finished one.
            key = "final" if operation.path.endswith("/events") else "pending"
            path_parameters = {"id": ids[key]}
        for mode, examples in EXAMPLES.items():
            negative = mode is GenerationMode.NEGATIVE
            checks = [*CHECKS, negative_data_rejection] if negative else CHECKS
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

            run = example_runner(strategy, examples, checks, base_url, headers, statuses)
            try:
                run()
            except Unsatisfiable:
                # No parameters and no body: nothing can be made invalid.
                assert negative, operation.label
            except Exception as exc:
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return failures, statuses


async def test_openapi_fuzzing(api: ApiEnv) -> None:
    started = time.monotonic()
    api.service.signing_key = SigningKey.generate()  # receipts and the public key answer
    pending = await api.submit("ann")
    final = await api.submit("ann")
    await api.act("ann", final["id"], "cancel")
    document = (await api.call(None, "GET", "/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(document)
    async with live(api) as (url, _server):
        headers = api.headers("ann")
        failures, statuses = await asyncio.to_thread(fuzz, schema, url, headers, None)
        ids = {"pending": pending["id"], "final": final["id"]}
        more, more_statuses = await asyncio.to_thread(fuzz, schema, url, headers, ids)
    failures += more
    statuses += more_statuses
    assert not failures, "\n\n".join(failures)
    assert not any(status >= 500 for _, status in statuses), statuses
    # The run reached the handlers, not just the authentication layer (negative
    # cases also drop or break the token on purpose: 401 is right for those).
    positive = {status: n for (mode, status), n in statuses.items() if mode == "positive"}
    assert positive.get(200, 0) > 0
    assert positive.get(400, 0) > 0
    assert positive.get(404, 0) > 0
    assert 401 not in positive, positive
    assert statuses["negative", 400] > 0
    assert time.monotonic() - started < 60
