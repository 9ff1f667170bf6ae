"""The quota and runway alerts become emails once, with exact figures, over real SMTP (the aiosmtpd sink) and the
real PostgreSQL; an alert no longer true is retired unsent; the poller records the runway alerts due at most once a
minute of its clock. Starter: 3,000 credits over 31 days from T0; enrichments 500 hard, sessions 5,000 soft."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from ledger import Ledger
from ledger.pool import LeanPool
from ledger.quotas import Quotas
from ledger.runway import record_runway_alerts, runway_alert, set_runway_alert
from mail.alerts import AlertSender
from mail.mailer import Mailer
from models.errors import InvalidRequest, UnknownOrganization
from models.ledger_types import StartPeriod
from stack.mail import SmtpSink
from tests.conftest import T0, OrgFactory
from tests.support.db import rows

D = Decimal
AT = T0 + timedelta(hours=1)
EPOCH = str(int(T0.timestamp()))
# A fifth of the 31-day period: 700 credits used by then run at 3,500 by its end, past the 3,000 allocation.
FIFTH = T0 + timedelta(days=6, hours=4, minutes=48)


@pytest.fixture
async def sender(database_url: str, sink: SmtpSink) -> AsyncIterator[AlertSender]:
    mailer = await Mailer.open(database_url, sink.url, pool_size=2)
    pool = LeanPool(database_url, 2)
    await pool.open()
    yield AlertSender(pool, mailer)
    await pool.close()
    await mailer.close()


async def add_profile(url: str, org: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO billing_profiles (org_id, email, created_at, updated_at) VALUES (%s, %s, %s, %s)",
            (org, "owner@acme.test", T0, T0))


def flat(text: str) -> str:
    return " ".join(text.split())


# -- quotas ----------------------------------------------------------------------------------------------------


async def test_quota_alerts_are_emailed_once_with_exact_figures(
    quotas: Quotas, ledger: Ledger, new_org: OrgFactory, sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    org = await new_org("starter")
    await add_profile(database_url, org)
    await quotas.record(org, "enrichments", quantity=400, idempotency_key="e1", now=AT)  # 80% of 500
    assert await sender.send_pending(AT) >= 1
    await quotas.record(org, "enrichments", quantity=100, idempotency_key="e2", now=AT)  # 100%, hard
    assert await sender.send_pending(AT) >= 1
    await quotas.record(org, "sessions", quantity=5500, idempotency_key="s1", now=AT)    # 110%, soft: both at once
    assert await sender.send_pending(AT) >= 1
    assert await sender.send_pending(AT) == 0
    assert await ledger.pending_alerts(org) == []
    got = sink.messages(org)
    assert [(m.template, m.subject) for m in got] == [
        ("quota_80", "80% of your enrichments quota used"),
        ("quota_100", "Your enrichments quota is reached"),
        ("quota_100", "Your sessions quota is reached"),  # its 80% alert, overtaken, retired unsent
    ]
    e80, e100, s100 = (flat(m.text) for m in got)
    assert ("Your organization has used 400 of its 500 enrichments this period (80%), the limit of its starter plan. "
            "Past the limit, more enrichments are refused until the next period.") in e80
    assert ("has used 500 of its 500 enrichments this period (100%), the limit of its starter plan. "
            "More enrichments are refused until the next period.") in e100
    assert ("has used 5,500 of its 5,000 sessions this period (110%), the limit of its starter plan. "
            "More sessions are still counted past the limit.") in s100
    assert "<strong>5,500</strong>" in got[2].html
    assert all(m.to == "owner@acme.test" and m.key.startswith("alert:") for m in got)
    kinds = await rows(database_url, "SELECT kind, sent_at IS NOT NULL FROM alerts WHERE org_id = %s ORDER BY id", org)
    assert kinds == [("quota_80", True), ("quota_100", True), ("quota_80", True), ("quota_100", True)]


async def test_a_quota_alert_no_longer_true_is_retired_unsent(
    quotas: Quotas, ledger: Ledger, new_org: OrgFactory, sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    ended = await new_org("starter")
    await quotas.record(ended, "enrichments", quantity=400, idempotency_key="e1", now=AT)
    renewal = T0 + timedelta(days=31)  # the next period started before the alert went out
    await ledger.start_period(StartPeriod(ended, f"{ended}:renewal", "starter", renewal, renewal + timedelta(days=28),
                                          renewal))
    upgraded = await new_org("starter")
    await quotas.record(upgraded, "enrichments", quantity=450, idempotency_key="e1", now=AT)  # 90% of 500
    # Upgraded to pro in the period (enrichments 5,000): 450 is 9%, the warning no longer holds.
    await ledger.start_period(StartPeriod(upgraded, f"{upgraded}:pro", "pro", T0, T0 + timedelta(days=31), AT))
    assert (await ledger.balance(upgraded, now=AT)).plan_name == "pro"
    assert [a.kind for org in (ended, upgraded) for a in await ledger.pending_alerts(org)] == ["quota_80", "quota_80"]
    for org in (ended, upgraded):
        await add_profile(database_url, org)
    await sender.send_pending(renewal + timedelta(hours=1))
    await sender.send_pending(AT + timedelta(minutes=1))
    assert sink.messages(ended) == [] and sink.messages(upgraded) == []
    assert await ledger.pending_alerts(ended) == [] and await ledger.pending_alerts(upgraded) == []


# -- the runway alert -------------------------------------------------------------------------------------------


async def test_the_runway_setting(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("starter")
    assert await runway_alert(ledger.pool, org) is False
    await set_runway_alert(ledger.pool, org, True)
    assert await runway_alert(ledger.pool, org) is True
    await set_runway_alert(ledger.pool, org, False)
    assert await runway_alert(ledger.pool, org) is False
    with pytest.raises(UnknownOrganization):
        await set_runway_alert(ledger.pool, "no-such-org", True)
    with pytest.raises(UnknownOrganization):
        await runway_alert(ledger.pool, "no-such-org")
    with pytest.raises(InvalidRequest, match="true or false"):
        await set_runway_alert(ledger.pool, org, "yes")  # type: ignore[arg-type]
    assert await runway_alert(ledger.pool, org) is False


async def test_a_known_burn_rate_opted_in_alerts_once_with_the_exact_projection(
    ledger: Ledger, new_org: OrgFactory, sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    org = await new_org("starter")
    await add_profile(database_url, org)
    await set_runway_alert(ledger.pool, org, True)
    await ledger.debit(org, "ai_chat", tier="fast", quantity=700, idempotency_key="burn", now=AT)
    try:
        # Two days in (under a tenth of the period), the rate says little yet: no alert.
        await sender.send_pending(T0 + timedelta(days=2))
        assert await rows(database_url, "SELECT 1 FROM alerts WHERE org_id = %s", org) == []
        assert await sender.send_pending(FIFTH) >= 1
        assert await sender.send_pending(FIFTH + timedelta(minutes=5)) == 0  # once a period
        assert await rows(database_url, "SELECT kind, period_key, detail FROM alerts WHERE org_id = %s", org) == [
            ("runway", EPOCH, "3500000")]
        [(kind, data)] = await rows(database_url, "SELECT type, data FROM events WHERE org_id = %s", org)
        assert kind == "credits.runway"
        assert {k: data[k] for k in ("projected", "allocation", "period_start")} == {
            "projected": "3500", "allocation": "3000", "period_start": "2026-01-15T12:00:00Z"}
        [m] = sink.messages(org)
        assert (m.template, m.subject) == ("runway", "Your plan credits are projected to run out this period")
        assert ("At its rate of use so far this period, your organization is projected to use 3,500 credits by the "
                "period's end on 2026-02-15, more than its 3,000 plan credits. It has used 700 of them so far (23%).") \
            in flat(m.text)
        assert "<strong>3,500</strong>" in m.html
    finally:
        await set_runway_alert(ledger.pool, org, False)


async def test_no_runway_alert_when_not_opted_in_or_past_80_percent(
    ledger: Ledger, new_org: OrgFactory, sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    quiet, busy = await new_org("starter"), await new_org("starter")
    await ledger.debit(quiet, "ai_chat", tier="fast", quantity=700, idempotency_key="burn", now=AT)
    await ledger.debit(busy, "ai_chat", tier="fast", quantity=2500, idempotency_key="burn", now=AT)  # 83%
    await set_runway_alert(ledger.pool, busy, True)
    try:
        for org in (quiet, busy):
            await add_profile(database_url, org)
        await sender.send_pending(FIFTH)
        await record_runway_alerts(ledger.pool, FIFTH + timedelta(days=1))  # a day later, still none
        assert await rows(database_url, "SELECT kind FROM alerts WHERE org_id = %s", quiet) == []
        assert await rows(database_url, "SELECT kind FROM alerts WHERE org_id = %s", busy) == [("plan_80",)]
        assert sink.messages(quiet) == [] and [m.template for m in sink.messages(busy)] == ["usage_80"]
    finally:
        await set_runway_alert(ledger.pool, busy, False)


async def test_the_poller_records_runway_alerts_at_most_once_a_minute(
    ledger: Ledger, new_org: OrgFactory, sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    org = await new_org("starter")
    await add_profile(database_url, org)
    await ledger.debit(org, "ai_chat", tier="fast", quantity=700, idempotency_key="burn", now=AT)
    await sender.send_pending(FIFTH)  # this poller's last recording: now
    await set_runway_alert(ledger.pool, org, True)
    try:
        await sender.send_pending(FIFTH + timedelta(seconds=59))
        assert sink.messages(org) == []
        assert await sender.send_pending(FIFTH + timedelta(seconds=60)) >= 1
        assert [m.template for m in sink.messages(org)] == ["runway"]
    finally:
        await set_runway_alert(ledger.pool, org, False)


async def test_a_runway_alert_opted_out_before_its_email_is_retired_unsent(
    ledger: Ledger, new_org: OrgFactory, sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    org = await new_org("starter")
    await add_profile(database_url, org)
    await ledger.debit(org, "ai_chat", tier="fast", quantity=700, idempotency_key="burn", now=AT)
    await set_runway_alert(ledger.pool, org, True)
    assert await record_runway_alerts(ledger.pool, FIFTH) >= 1
    assert [a.kind for a in await ledger.pending_alerts(org)] == ["runway"]
    await set_runway_alert(ledger.pool, org, False)
    await sender.send_pending(FIFTH)
    assert sink.messages(org) == [] and await ledger.pending_alerts(org) == []


class RunwayDown(AlertSender):
    """Its runway recording fails (the database refused the statement, say)."""

    async def record_runway(self, now: datetime) -> int:
        raise ConnectionError("runway recording failed")


async def test_a_failed_runway_recording_holds_up_no_email(
    ledger: Ledger, new_org: OrgFactory, sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    org = await new_org("starter")
    await add_profile(database_url, org)
    await ledger.debit(org, "insight", tier="smart", quantity=60, idempotency_key="all", now=AT)  # plan_100
    down = RunwayDown(sender.pool, sender.mailer)
    with pytest.raises(ConnectionError):  # a single batch propagates it, as it does a database error
        await down.send_pending(AT)
    assert sink.messages(org) == []
    stop = asyncio.Event()
    task = asyncio.create_task(down.run(stop, interval=0.05, clock=lambda: AT))
    for _ in range(200):  # the poller logs it and sends the emails of the alerts recorded
        if sink.messages(org):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [m.template for m in sink.messages(org)] == ["credits_exhausted"]
