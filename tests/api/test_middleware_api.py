"""The checks of tests/api/test_middleware.py again, metering through the billing HTTP API (ApiMeter against
kit.api_url with an admin key of the organization): the same answers, headers and balances as in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest

from api.middleware import ApiMeter, Meter
from examples.credits_app.app import SEARCH, create_app
from testkit import TestKit
from tests.api.test_middleware import (
    client,
    state,
    test_a_2xx_answer_commits_the_cost_once,
    test_a_4xx_answer_releases,
    test_a_5xx_answer_releases,
    test_a_bare_asgi_app_is_metered,
    test_a_client_that_leaves_mid_stream_is_not_charged,
    test_a_failed_commit_keeps_the_handlers_answer,
    test_a_hold_under_the_threshold_starts_the_auto_recharge,
    test_a_stream_over_http_settles_before_its_last_chunk,
    test_an_answer_without_a_result_is_not_charged,
    test_an_exception_releases_and_is_raised_again,
    test_every_hold_open_is_the_apis_429_problem,
    test_out_of_credits_is_the_apis_403_problem,
    test_the_fastapi_form_holds_before_the_handler,
    test_the_idempotency_key_is_the_hold_id,
    test_unmetered_routes_and_requests_without_an_organization,
    wallet,
)

# Collected here too: each runs with this module's `meter` (pytest resolves fixtures where a test is collected);
# `wallet` is the fixture they share.
__all__ = [
    "test_a_2xx_answer_commits_the_cost_once",
    "test_a_4xx_answer_releases",
    "test_a_5xx_answer_releases",
    "test_a_bare_asgi_app_is_metered",
    "test_a_client_that_leaves_mid_stream_is_not_charged",
    "test_a_failed_commit_keeps_the_handlers_answer",
    "test_a_hold_under_the_threshold_starts_the_auto_recharge",
    "test_a_stream_over_http_settles_before_its_last_chunk",
    "test_an_answer_without_a_result_is_not_charged",
    "test_an_exception_releases_and_is_raised_again",
    "test_every_hold_open_is_the_apis_429_problem",
    "test_out_of_credits_is_the_apis_403_problem",
    "test_the_fastapi_form_holds_before_the_handler",
    "test_the_idempotency_key_is_the_hold_id",
    "test_unmetered_routes_and_requests_without_an_organization",
    "wallet",
]

D = Decimal


@pytest.fixture
async def meter(kit: TestKit, org: str) -> AsyncIterator[Meter]:
    async with ApiMeter(kit.api_url, await kit.api_key("admin", org_id=org)) as api:
        yield api


async def test_the_api_meter_answers_as_the_ledger_meter(kit: TestKit, meter: Meter, wallet: str) -> None:
    """The hold's numbers over HTTP are the ledger's: decimal strings back to Decimals, the concurrency."""
    held = await meter.hold(wallet, "direct-1", SEARCH)
    assert (held.org_id, held.idempotency_key, held.cost, held.available, held.status, held.replayed) == (
        wallet, "direct-1", D(10), D(40), "open", False)
    assert (held.concurrency_limit, held.concurrency_open) == (1, 1)
    again = await meter.hold(wallet, "direct-1", SEARCH)
    assert (again.replayed, again.cost) == (True, D(10))
    done = await meter.commit(wallet, "direct-1")
    assert (done.status, done.cost, done.available, done.concurrency_open) == ("committed", D(10), D(40), 0)
    assert (await meter.commit(wallet, "direct-1")).replayed is True
    assert await state(kit, wallet) == (D(40), D(0), 0)


async def test_a_key_the_api_refuses_is_a_503_not_the_callers_401(kit: TestKit, wallet: str) -> None:
    """The service's own key is wrong (revoked, mistyped): the request cannot be metered, so it is not served;
    the caller is not told to authenticate (that is the service's problem, not theirs)."""
    async with ApiMeter(kit.api_url, "bk_not_a_key") as meter, client(create_app(meter), wallet) as http:
        r = await http.post("/v1/search", json={"q": "acme"})
    assert r.status_code == 503
    assert r.json()["type"].endswith("/ServiceUnavailable") and "API key" in r.json()["detail"]
    assert await state(kit, wallet) == (D(50), D(0), 0)


async def test_a_client_of_ones_own(kit: TestKit, wallet: str) -> None:
    """ApiMeter over an httpx client the app owns (its proxies, its transport): used, not closed."""
    secret = await kit.api_key("admin", org_id=wallet)
    async with httpx.AsyncClient() as own:
        meter = ApiMeter(kit.api_url, secret, client=own)
        async with client(create_app(meter), wallet) as http:
            r = await http.post("/v1/search", json={"q": "acme"})
        await meter.aclose()
        assert not own.is_closed
    assert (r.status_code, r.headers["x-credits-remaining"]) == (200, "40")
