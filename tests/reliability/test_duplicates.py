"""Duplicates (issue 10's reliability suite): every `BillingClient` call sent twice, one after the other and
at once (asyncio.gather), has the effect of one call: one charge, one PaymentIntent, one grant, one email,
one ledger entry, one usage row. The second call answers as the first did, or with the documented typed
refusal ("already cancelled", "not an upgrade"), and then the first call's effect stands alone.

Each case runs on two organizations set up alike: one gets the call once, the other twice. Everything
observable of the two (rows of every table per organization, charges, Stripe's PaymentIntents, invoices,
ledger entries, usage, balance, emails, settings, the subscription) must then be the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import psycopg
import pytest

from models.errors import BillingError, HoldNotOpen, InvalidRequest, UnknownOrganization, UsageGuardPaused
from models.keys import period_key
from models.tables import metadata
from stack.stripe_server import CARD_OK
from testkit import TestKit
from tests.reliability.conftest import assert_books_balance

EMAIL = "billing@acme.test"
Mode = Literal["sequence", "concurrent"]
MODES: list[Mode] = ["sequence", "concurrent"]
# Every table that holds an organization's rows: each must hold as many after two calls as after one.
ORG_TABLES = sorted(t.name for t in metadata.sorted_tables if "org_id" in t.c)

Context = dict[str, Any]
Setup = Callable[[TestKit, str], Awaitable[Context]]
Call = Callable[[TestKit, str, Context], Awaitable[object]]


# -- outcomes and what can be seen of an organization -------------------------------------------------------

async def outcome(call: Callable[[], Awaitable[object]]) -> object:
    """The call's answer, or its typed refusal. Any other exception fails the test."""
    try:
        return await call()
    except BillingError as exc:
        return exc


async def twice(mode: Mode, call: Callable[[], Awaitable[object]]) -> list[object]:
    if mode == "sequence":
        return [await outcome(call), await outcome(call)]
    return list(await asyncio.gather(outcome(call), outcome(call)))


# What differs between two organizations, or between a first call and its repeat, by construction.
_INCIDENTAL = frozenset({"org_id", "replayed", "invoice_number", "payment_intent", "idempotency_key"})


def shape(answer: object, varies: frozenset[str] = frozenset()) -> object:
    """An answer without what names its organization, its moment or its Stripe objects (and without the
    fields `varies` that are documented to describe the call rather than the request)."""
    if dataclasses.is_dataclass(answer) and not isinstance(answer, type):
        return {k: shape(v) for k, v in dataclasses.asdict(answer).items()
                if k not in _INCIDENTAL | varies and not isinstance(v, datetime)}
    if isinstance(answer, BillingError):
        return (type(answer).__name__,)
    return answer


def one_answer(outcomes: list[object], refusal: tuple[type[BillingError], str] | None,
               varies: frozenset[str] = frozenset()) -> object:
    """The answer of the pair: the same answer twice, or (where a refusal of the repeat is documented) that
    refusal for one of them."""
    answers = [o for o in outcomes if not isinstance(o, BillingError)]
    refused = [o for o in outcomes if isinstance(o, BillingError)]
    assert answers, f"neither call was answered: {outcomes}"
    assert all(shape(a, varies) == shape(answers[0], varies) for a in answers), f"two answers: {answers}"
    for exc in refused:
        assert refusal is not None, f"a repeat was refused: {exc!r}"
        kind, message = refusal
        assert isinstance(exc, kind) and re.search(message, exc.message), f"not the documented refusal: {exc!r}"
    return answers[0]


async def observe(kit: TestKit, org: str) -> dict[str, object]:
    """Everything the calls under test can have changed, without what names the organization or the moment.
    Waits until the organization's workflows are idle and pending alerts are emailed."""
    await kit.settle()
    seen: dict[str, object] = {}
    async with await psycopg.AsyncConnection.connect(kit.database_url, autocommit=True) as conn:
        for table in ORG_TABLES:
            cur = await conn.execute(f"SELECT count(*) FROM {table} WHERE org_id = %s", (org,))
            row = await cur.fetchone()
            seen[f"rows in {table}"] = row[0] if row else None
        cur = await conn.execute(
            "SELECT action, max_uses, window_seconds, paused_at IS NOT NULL FROM usage_guards WHERE org_id = %s "
            "ORDER BY action", (org,))
        seen["usage guards"] = await cur.fetchall()
        cur = await conn.execute("SELECT user_id, limit_milli FROM user_limits WHERE org_id = %s ORDER BY user_id",
                                 (org,))
        seen["user limits"] = await cur.fetchall()
        cur = await conn.execute(
            "SELECT low_balance_threshold, low_balance_armed, recharge_threshold FROM wallets WHERE org_id = %s",
            (org,))
        seen["wallet settings"] = await cur.fetchall()
        cur = await conn.execute("SELECT action, status, cost FROM holds WHERE org_id = %s ORDER BY cost, status",
                                 (org,))
        seen["holds"] = await cur.fetchall()
        cur = await conn.execute("SELECT template, sent_at IS NOT NULL FROM outbox WHERE org_id = %s "
                                 "ORDER BY template", (org,))
        seen["outbox"] = await cur.fetchall()
    seen["charges"] = sorted((c.purpose, c.amount_cents, c.currency, c.status) for c in kit.charges(org))
    seen["payment intents"] = len(await kit.payments.stripe_payment_intents(org))
    seen["invoices"] = sorted((i.purpose, i.total_cents) for i in await kit.billing.invoices(org))
    seen["emails"] = sorted(m.template for m in kit.emails(org))
    try:
        seen["entries"] = [(t.kind, t.credits) for t in await kit.billing.transactions(org)]
        seen["usage"] = [shape(u) for u in await kit.billing.usage(org)]
        seen["balance"] = shape(await kit.billing.balance(org))
        seen["auto-recharge"] = shape(await kit.billing.auto_recharge(org))
    except UnknownOrganization:
        seen["entries"] = None
    try:
        seen["subscription"] = shape(await kit.billing.subscription(org))
    except InvalidRequest:
        seen["subscription"] = None
    return seen


# -- the cases: how two organizations are set up, the call, and the refusal a repeat may get ----------------

async def nothing(kit: TestKit, org: str) -> Context:
    return {}


def subscribed(plan: str = "pro", seats: int = 1, *, cancelled: bool = False) -> Setup:
    async def setup(kit: TestKit, org: str) -> Context:
        await kit.billing.subscribe(org, plan=plan, seats=seats, email=EMAIL)
        if cancelled:
            await kit.billing.cancel(org)
        return {}
    return setup


def free_wallet(*then: Callable[[TestKit, str], Awaitable[object]]) -> Setup:
    async def setup(kit: TestKit, org: str) -> Context:
        await kit.billing.open_wallet(org)
        for step in then:
            await step(kit, org)
        return {}
    return setup


async def free_wallet_and_card(kit: TestKit, org: str) -> Context:
    await kit.billing.open_wallet(org)
    return {"card": await kit.payments.create_card(CARD_OK)}


async def guard_paused(kit: TestKit, org: str) -> Context:
    await kit.billing.open_wallet(org)
    await kit.billing.set_usage_guard(org, "ai_chat", max_uses=1)
    for key in ("u1", "u2"):
        try:
            await kit.billing.debit(org, action="ai_chat", tier="fast", idempotency_key=key)
        except UsageGuardPaused:
            pass
    return {}


async def auto_recharging(kit: TestKit, org: str) -> Context:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.billing.set_auto_recharge(org, threshold=Decimal(100), pack="500")
    return {}


async def held(kit: TestKit, org: str) -> Context:
    await kit.billing.open_wallet(org)
    await kit.billing.ledger.hold(org, "ai_chat", tier="fast", quantity=5, idempotency_key="h1")
    return {}


async def use_a_hold(kit: TestKit, org: str, ctx: Context) -> object:
    async with kit.billing.hold(org, action="ai_chat", tier="fast", quantity=5, idempotency_key="h1") as h:
        return h


async def debit(kit: TestKit, org: str, quantity: int = 3) -> object:
    return await kit.billing.debit(org, action="ai_chat", tier="fast", quantity=quantity, idempotency_key="d1")


@dataclass(frozen=True)
class Case:
    name: str
    setup: Setup
    call: Call
    refusal: tuple[type[BillingError], str] | None = None
    varies: frozenset[str] = frozenset()  # answer fields that describe the call, not the request


CASES = [
    Case("subscribe", nothing, lambda k, o, c: k.billing.subscribe(o, plan="pro", seats=2, email=EMAIL),
         (InvalidRequest, "already has a subscription")),
    Case("subscribe with a trial", nothing,
         lambda k, o, c: k.billing.subscribe(o, plan="starter", trial_days=14, email=EMAIL),
         (InvalidRequest, "already has a subscription")),
    Case("upgrade", subscribed("starter"), lambda k, o, c: k.billing.upgrade(o, plan="pro"),
         (InvalidRequest, "not an upgrade")),
    Case("downgrade", subscribed("enterprise"), lambda k, o, c: k.billing.downgrade(o, plan="pro")),
    Case("downgrade withdrawn", subscribed("enterprise"), lambda k, o, c: k.billing.downgrade(o, plan="enterprise")),
    Case("more seats", subscribed("pro", 1), lambda k, o, c: k.billing.change_seats(o, seats=3)),
    Case("fewer seats", subscribed("pro", 3), lambda k, o, c: k.billing.change_seats(o, seats=1)),
    Case("cancel", subscribed(), lambda k, o, c: k.billing.cancel(o), (InvalidRequest, "already cancelled")),
    Case("resume", subscribed(cancelled=True), lambda k, o, c: k.billing.resume(o),
         (InvalidRequest, "not cancelled")),
    Case("retry_now", subscribed(), lambda k, o, c: k.billing.retry_now(o)),
    Case("buy_credits", subscribed(), lambda k, o, c: k.billing.buy_credits(o, pack="500", idempotency_key="p1")),
    Case("buy_credits with a new card", free_wallet_and_card,
         lambda k, o, c: k.billing.buy_credits(o, pack="1000", idempotency_key="p1", email=EMAIL,
                                               payment_method=c["card"])),
    Case("open_wallet", nothing, lambda k, o, c: k.billing.open_wallet(o)),
    Case("debit", free_wallet(), lambda k, o, c: debit(k, o)),
    Case("debit under a usage guard", free_wallet(lambda k, o: k.billing.set_usage_guard(o, "ai_chat", max_uses=1)),
         lambda k, o, c: debit(k, o)),
    Case("debit crossing the low-balance alert",
         free_wallet(lambda k, o: k.billing.set_low_balance_alert(o, Decimal(40))),
         lambda k, o, c: debit(k, o, 20)),
    Case("debit under a user limit", free_wallet(lambda k, o: k.billing.set_user_limit(o, "ann", Decimal(5))),
         lambda k, o, c: k.billing.debit(o, action="ai_chat", tier="fast", quantity=4, user_id="ann",
                                         idempotency_key="d1")),
    # recharge_triggered says this call started the recharge (a repeat starts none); available is the
    # balance when the call answered, and the recharge may have landed before the repeat.
    Case("debit triggering auto-recharge", auto_recharging, lambda k, o, c: debit(k, o, 9950),
         varies=frozenset({"recharge_triggered", "available"})),
    # A hold's key stays claimed once committed: holding under it again is HoldNotOpen (docs/ledger.md).
    Case("hold (reserve, then commit)", free_wallet(), use_a_hold, (HoldNotOpen, "it is committed")),
    Case("ledger hold", free_wallet(),
         lambda k, o, c: k.billing.ledger.hold(o, "ai_chat", tier="fast", quantity=5, idempotency_key="h1")),
    Case("ledger commit", held, lambda k, o, c: k.billing.ledger.commit(o, "h1")),
    Case("ledger release", held, lambda k, o, c: k.billing.ledger.release(o, "h1")),
    Case("set_auto_recharge", subscribed(),
         lambda k, o, c: k.billing.set_auto_recharge(o, threshold=Decimal(200), pack="1000",
                                                     spending_limit_cents=20000)),
    Case("set_user_limit", free_wallet(), lambda k, o, c: k.billing.set_user_limit(o, "ann", Decimal("12.5"))),
    Case("set_usage_guard", free_wallet(),
         lambda k, o, c: k.billing.set_usage_guard(o, "insight", max_uses=3, window=timedelta(minutes=5))),
    Case("set_low_balance_alert", free_wallet(), lambda k, o, c: k.billing.set_low_balance_alert(o, Decimal(10))),
]


def params() -> list[Any]:
    return [pytest.param(case, id=case.name.replace(" ", "-")) for case in CASES]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", params())
async def test_a_call_sent_twice_has_one_effect(kit: TestKit, org: str, case: Case, mode: Mode) -> None:
    once, twice_ = f"{org}-once", f"{org}-twice"
    ctx_once, ctx_twice = await case.setup(kit, once), await case.setup(kit, twice_)
    single = await outcome(lambda: case.call(kit, once, ctx_once))
    assert not isinstance(single, BillingError), f"the call itself was refused: {single}"
    answer = one_answer(await twice(mode, lambda: case.call(kit, twice_, ctx_twice)), case.refusal, case.varies)
    assert shape(answer, case.varies) == shape(single, case.varies)
    assert await observe(kit, twice_) == await observe(kit, once)
    await assert_books_balance(kit)


@pytest.mark.parametrize("mode", MODES)
async def test_resume_action_twice_lifts_the_pause_once(kit: TestKit, org: str, mode: Mode) -> None:
    """Documented answers differ: True (it was paused), then False (nothing to lift); the effect is one."""
    once, twice_ = f"{org}-once", f"{org}-twice"
    await guard_paused(kit, once)
    await guard_paused(kit, twice_)
    assert await kit.billing.resume_action(once, "ai_chat") is True
    answers = await twice(mode, lambda: kit.billing.resume_action(twice_, "ai_chat"))
    assert sorted(answers, key=str) == [False, True]
    assert await observe(kit, twice_) == await observe(kit, once)
    await assert_books_balance(kit)


@pytest.mark.parametrize("mode", MODES)
async def test_retry_now_twice_on_an_incident_runs_the_step_once(kit: TestKit, org: str, mode: Mode) -> None:
    """A renewal Stripe refused (an incident), then fixed: the operator's retry sent twice renews once."""
    once, twice_ = f"{org}-once", f"{org}-twice"
    refused: set[str] = set()
    due = kit.now()
    for o in (once, twice_):
        sub = await kit.billing.subscribe(o, plan="pro", email=EMAIL)
        assert sub.period_end is not None
        due = max(due, sub.period_end)
        refused.add(renewal := period_key(o, sub.period_end, "renewal"))
        kit.payments.refuse_charges.add(renewal)
    try:
        await kit.advance(due + timedelta(seconds=30) - kit.now())  # both due, both refused: incidents
        for o in (once, twice_):
            assert (await kit.billing.subscription(o)).incident is not None
    finally:
        kit.payments.refuse_charges.difference_update(refused)
    single = await kit.billing.retry_now(once)
    assert (single.renewals, single.incident) == (1, None)
    answer = one_answer(await twice(mode, lambda: kit.billing.retry_now(twice_)), None)
    assert shape(answer) == shape(single)
    assert await observe(kit, twice_) == await observe(kit, once)
    await assert_books_balance(kit)


READS: dict[str, Callable[[TestKit, str], Awaitable[object]]] = {
    "balance": lambda k, o: k.billing.balance(o),
    "usage": lambda k, o: k.billing.usage(o, by="tier"),
    "transactions": lambda k, o: k.billing.transactions(o),
    "subscription": lambda k, o: k.billing.subscription(o),
    "invoices": lambda k, o: k.billing.invoices(o),
    "auto_recharge": lambda k, o: k.billing.auto_recharge(o),
}


@pytest.mark.parametrize("mode", MODES)
async def test_reads_twice_answer_the_same_and_change_nothing(kit: TestKit, org: str, mode: Mode) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    await debit(kit, org)
    before = await observe(kit, org)
    for name, read in READS.items():
        first, second = await twice(mode, lambda read=read: read(kit, org))  # type: ignore[misc]
        assert not isinstance(first, BillingError), (name, first)
        assert first == second, name
    assert await observe(kit, org) == before
    await assert_books_balance(kit)
