"""Schemathesis over every operation of the served spec, with a platform key, on a kit's live server: whatever
valid-by-the-schema request it makes, no 5xx, and an answer whose status, content type and body the spec declares.

A kit of its own, not the session's: the generated requests subscribe, buy packs and register webhook endpoints for
organizations of their own; on the shared kit those workflows and payments would be carried by other tests' clock
advances and audits. Besides requests generated from the schema, each operation sends the spec's own examples
(a debit, a plan, a pack...), and half of its requests name an organization that exists (a subscription, some
usage, a user limit), so they reach the engine, not only the 404 of an unknown organization or the 422 of an
unknown name. Nothing is excluded. Examples are bounded (EXAMPLES per operation, no shrinking): about 40 s here.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from testkit import TestKit, start_testkit

EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ORG = "fuzzed-org"


def _fuzz(spec: dict[str, Any], base_url: str, secret: str) -> list[str]:
    """Run every operation's examples (in a thread: the kit's server answers on the test's event loop); returns
    the failures, each with its curl command."""
    schema = schemathesis.openapi.from_dict(spec)
    headers = {"Authorization": f"Bearer {secret}"}
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the spec itself is valid
        operation = result.ok()
        examples = schema.get_strategies_from_examples(operation)
        strategies = [operation.as_strategy(), *(example.map(_at_org) for example in examples)]
        if "{org_id}" in operation.path:
            strategies.append(operation.as_strategy(path_parameters={"org_id": ORG}))
        strategy = st.one_of(strategies)

        @given(case=strategy)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case: Case[Any]) -> None:
            case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=120)

        try:
            run()
        except Exception as exc:  # every operation runs; the failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    return failures


def _at_org(case: Case[Any]) -> Case[Any]:
    """The spec's examples (a debit, a plan, a pack...) sent to the organization that exists."""
    if case.path_parameters and "org_id" in case.path_parameters:
        case.path_parameters["org_id"] = ORG
    return case


async def test_every_operation_answers_as_its_spec_says() -> None:
    async with start_testkit() as kit:
        await _prepare(kit)
        secret = await kit.api_key("platform")
        async with httpx.AsyncClient(base_url=kit.api_url) as http:
            spec = (await http.get("/v1/openapi.json")).raise_for_status().json()
        failures = await asyncio.to_thread(_fuzz, spec, kit.api_url, secret)
    assert not failures, "\n\n".join(failures)


async def _prepare(kit: TestKit) -> None:
    await kit.billing.subscribe(ORG, plan="pro", seats=2, email="billing@fuzzed.test")
    await kit.billing.debit(ORG, action="ai_chat", tier="smart", user_id="u1", idempotency_key="seen")
    await kit.billing.set_user_limit(ORG, "u1", Decimal(100))
    await kit.billing.set_usage_guard(ORG, "insight", max_uses=1000)
