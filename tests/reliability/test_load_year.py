"""Load (issue 10's reliability suite): ORGS organizations through MONTHS simulated months each on the
time-skipping server, with random subscriptions (plans, monthly and annual, trials, seats, VAT), upgrades,
downgrades, seat changes, cancels, resumes, re-subscriptions, packs, auto-recharge, debits and holds, declined
cards and injected faults; the books balance at every quarter's audit and at the end.

Size: BILLING_LOAD_ORGS and BILLING_LOAD_MONTHS; BILLING_LOAD_SEED (default fixed, so CI is repeatable; printed)
reproduces a run. CI runs the defaults, the largest size that stays within a few minutes on the 2-core CI
machine; the issue's 200 organizations x 12 months is the longer variant, run by hand:

    BILLING_LOAD_ORGS=200 BILLING_LOAD_MONTHS=12 .venv/bin/python -m pytest tests/reliability/test_load_year.py -s

Organizations join over the first month (so renewals spread), then each step skips 3.5 days: a third of them act
(one operation each, concurrently), faults are injected, and the clock advances. Every choice about an
organization comes from its own generator (seeded by the seed and its id), so concurrency does not change it.

The kit is this module's own, on a fresh embedded database: the audit judges the whole database, and the
session's holds organizations whose workflows live on another kit's Temporal server.

Faults injected (testkit/payments.py KitPayments, stack/mail.py SmtpSink), each followed until resolved:
* a renewal Stripe refuses (400), or whose answer is lost after Stripe charged: the subscription shows an
  incident through the advance; the fault is then cleared and the renewal goes through once, on the
  operator's retry_now or on the incident backoff;
* an upgrade or added seats whose answer is lost after Stripe charged: ServiceUnavailable, an incident, then
  the change completed (charged once) on retry_now or the backoff;
* upgrades and added seats Stripe refuses: PaymentProviderRefused, nothing changed or charged;
* a crash right after Stripe charged a renewal or a pack, before anything is recorded: the retried activity
  finds the PaymentIntent and records it, charged once;
* a pack Stripe refuses: PaymentProviderRefused, nothing charged; bought again under the same key once cleared;
* a billing contact the SMTP server refuses (550) for a few steps: the emails are recorded as failed;
* declined cards (kit.use_card) for a while: declined charges, dunning, reverts to Free, re-subscriptions.

Every operation succeeds or raises a BillingError; an IdempotencyConflict (keys are never reused for other
content), or a ServiceUnavailable or PaymentProviderRefused where no fault was injected, is a failure, as is
anything else raised.

Checked at the end, beyond the audit (no broken finding, no open incident): every injected fault was resolved;
each organization's `renewals` equals its renewal payments (each renewal charged once, under its own key, paid
or declined); at Stripe, no key has two succeeded PaymentIntents and the succeeded PaymentIntents are exactly
the succeeded payments (same key, same amount); no payment is pending.

What the simulation found is left out of it and kept as minimal xfail(strict) cases at the end of this file.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
import pytest
import stripe
from stripe.params import PaymentIntentListParams

from models.billing_types import CardKind
from models.catalog import CATALOG
from models.errors import BillingError, IdempotencyConflict, InvalidRequest, PaymentProviderRefused, ServiceUnavailable
from models.keys import pack_key, period_key
from models.ledger_types import Balance
from models.subscription_types import Subscription
from payments.stripe_client import metadata_value
from testkit import TestKit, start_testkit
from tests.reliability.conftest import assert_books_balance

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


# CI's size: 60 x 12 (100 x 12 took about 4.5 minutes and the whole CI run to 20); 200 x 12 takes about 9.
ORGS = _env_int("BILLING_LOAD_ORGS", 60)
MONTHS = _env_int("BILLING_LOAD_MONTHS", 12)
SEED = _env_int("BILLING_LOAD_SEED", 20260115)

# The clock moves this much between rounds of operations: 3.5 days, so that renewals (a month or a year after
# a step's operations) fall at several moments of later steps, not all at their start.
STEP = timedelta(hours=84)
STEP_DAYS = STEP / timedelta(days=1)
JOIN_STEPS = math.ceil(30 / STEP_DAYS)  # subscriptions spread over the first month: renewals spread too
# Every organization lives MONTHS months after it joined (an annual plan renews once in a year's run).
STEPS = JOIN_STEPS + math.ceil(MONTHS * 365 / 12 / STEP_DAYS)
CHECKPOINT_STEPS = math.ceil(91 / STEP_DAYS)  # an audit every quarter
CONCURRENCY = 8                       # organizations acting at once
P_TURN = 0.35                         # chance an organization acts in a step
# Of the renewals due in a step, with a working card: each of 3 faults. A step with such faults advances to
# FAULT_FOLLOW_UP past the last one's renewal, follows them up (each incident retried for hours by then: they
# are due within FAULT_BAND of each other) and then advances the rest of the step.
P_RENEWAL_FAULT = 0.04
FAULT_BAND = timedelta(hours=12)
FAULT_FOLLOW_UP = timedelta(hours=2)
P_SMTP_REFUSED = 0.004                # per organization and step
SMTP_REFUSED_STEPS = 3
CHANGE_KEYS = 64                      # a faulty period: upgrade-1.. and seats-1.. up to this get the fault

PLANS = ("starter", "pro", "enterprise")
PACKS = tuple(CATALOG.packs)


def seat_cap(plan: str) -> int:
    top = CATALOG.plan(plan).max_seats
    return min(top, 12) if top is not None else 12


def price(plan: str) -> int:
    return CATALOG.plan(plan).price_cents_per_seat


class _Release(Exception):
    """Raised inside a hold's block to release it."""


@dataclass
class Fault:
    kind: str                # "refused renewal", "lost upgrade", "crashed pack", "smtp refused", ...
    org: str
    keys: list[str]          # the charges' keys it applies to (the address, for SMTP)
    step: int
    seen: bool = False       # its effect was observed (an incident, a crash that fired, a refusal answered)
    resolved: bool = False   # and it is over: the charge made once, the change complete, or nothing charged
    stage: int = 0           # incident faults: 1 once cleared and left to the incident backoff
    # Incident faults: the step the incident names, what the subscription had then, what completes it.
    incident: str = ""
    during: Subscription | None = None
    paid_before: int = 0     # succeeded payments under `keys` before the change
    want: str | int | None = None  # lost upgrade: the plan; lost seats: the count; "free": cancelled meanwhile


@dataclass
class Org:
    id: str
    email: str
    join_step: int
    rng: random.Random
    card: CardKind = "ok"
    sub: Subscription | None = None
    n: int = 0
    fault: Fault | None = None   # an incident, renewal-time or SMTP fault in progress: one at a time

    def key(self, what: str) -> str:
        self.n += 1
        return f"{what}-{self.n}"


@dataclass
class Sim:
    kit: TestKit
    rng: random.Random
    orgs: list[Org]
    ops: Counter[tuple[str, str]] = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    step: int = 0

    def problem(self, text: str) -> None:
        self.problems.append(f"step {self.step} (day {self.step * STEP_DAYS:.1f}): {text}")

    def expect(self, ok: bool, text: str) -> None:
        if not ok:
            self.problem(text)

    # -- one operation: success, or a typed refusal -------------------------------------------------------

    async def call(self, o: Org, kind: str, op: Awaitable[T], *, injected: bool = False) -> T | BillingError | None:
        """The operation's answer, or its BillingError; None when it raised anything else (a problem).
        `injected`: a fault is injected into it, so Stripe's refusal or ServiceUnavailable (a change whose
        answer was lost) is expected."""
        try:
            result = await op
        except BillingError as err:
            name = type(err).__name__
            self.ops[kind, name] += 1
            if isinstance(err, IdempotencyConflict) or (
                    isinstance(err, ServiceUnavailable | PaymentProviderRefused) and not injected):
                self.problem(f"{kind} of {o.id}: unexpected {name}: {err}")
            return err
        except Exception as err:
            self.ops[kind, "unexpected"] += 1
            self.problem(f"{kind} of {o.id}: not a BillingError: {type(err).__name__}: {err}\n"
                         f"{traceback.format_exc()}")
            return None
        self.ops[kind, "ok"] += 1
        return result

    async def read(self, o: Org) -> Subscription | None:
        view = await self.call(o, "read", self.kit.billing.subscription(o.id))
        return view if isinstance(view, Subscription) else None

    # -- an organization's turn ---------------------------------------------------------------------------

    async def turn(self, o: Org) -> None:
        if self.step == o.join_step:
            await self.subscribe(o, first=True)
            return
        s = await self.read(o)
        if s is None:
            return
        o.sub = s
        if o.fault is not None and o.fault.kind == "lost renewal":
            # Left out: a change while a renewal charged at Stripe but not recorded is an incident strands that
            # charge (cancel) or conflicts with it for good (downgrade, seats, upgrade): the xfail tests below.
            weights = {"debit": 4, "hold": 2, "pack": 2, "card": 1}
        elif s.status == "free":
            weights = {"subscribe": 10, "debit": 5, "drain": 1, "pack": 2, "card": 10 if o.card != "ok" else 1}
        elif s.status == "past_due":
            weights = {"card": 10 if o.card != "ok" else 1, "cancel": 3, "debit": 6, "pack": 2, "upgrade": 1,
                       "hold": 2}
        else:
            weights = {"debit": 20, "drain": 5, "hold": 8, "pack": 6, "auto_recharge": 5, "upgrade": 6,
                       "downgrade": 6, "seats": 8, "cancel": 3, "resume": 6 if s.cancel_at_period_end else 1,
                       "card": 12 if o.card != "ok" else 3}
        kind = o.rng.choices(list(weights), list(weights.values()))[0]
        await getattr(self, f"op_{kind}")(o, s)

    async def subscribe(self, o: Org, *, first: bool = False) -> None:
        plan = o.rng.choices(PLANS, (4, 4, 2))[0]
        interval = "year" if o.rng.random() < 0.2 else "month"
        trial = o.rng.choice((7, 14, 30)) if o.rng.random() < (0.3 if first else 0.1) else 0
        seats = o.rng.randint(1, seat_cap(plan))
        vat = o.rng.choice((Decimal(0), Decimal("0.2"), Decimal("0.21")))
        r = await self.call(o, "subscribe", self.kit.billing.subscribe(
            o.id, plan=plan, seats=seats, interval=interval, trial_days=trial, email=o.email, vat_rate=vat))
        if isinstance(r, Subscription):
            o.sub = r
            self.expect((r.plan, r.seats, r.interval, r.status) ==
                        (plan, seats, interval, "trialing" if trial else "active"), f"subscribe of {o.id}: {r}")

    async def op_subscribe(self, o: Org, s: Subscription) -> None:
        await self.subscribe(o)

    async def op_upgrade(self, o: Org, s: Subscription) -> None:
        higher = [p for p in PLANS if price(p) > price(s.plan)]
        target = o.rng.choice(higher) if higher and o.rng.random() < 0.9 else o.rng.choice(PLANS)
        r = await self.change(o, s, "upgrade", target, self.kit.billing.upgrade(o.id, plan=target),
                              faulty=target in higher)
        if isinstance(r, Subscription):
            self.expect(r.plan == target and r.pending_plan is None, f"upgrade of {o.id} to {target}: {r}")

    async def op_downgrade(self, o: Org, s: Subscription) -> None:
        lower = [p for p in PLANS if price(p) < price(s.plan)]
        target = o.rng.choice(lower) if lower and o.rng.random() < 0.8 else o.rng.choice(PLANS)
        r = await self.call(o, "downgrade", self.kit.billing.downgrade(o.id, plan=target))
        if isinstance(r, Subscription):
            self.expect(r.plan == s.plan and r.pending_plan == (None if target == s.plan else target),
                        f"downgrade of {o.id} to {target}: {r}")

    async def op_seats(self, o: Org, s: Subscription) -> None:
        seats = o.rng.randint(1, seat_cap(s.plan) + 1)  # one past the plan's cap now and then: refused
        r = await self.change(o, s, "seats", seats, self.kit.billing.change_seats(o.id, seats=seats),
                              faulty=s.seats < seats <= seat_cap(s.plan) and s.pending_plan is None)
        if isinstance(r, Subscription):
            if seats > s.seats:
                ok = (r.seats, r.pending_seats) == (seats, None)
            elif seats < s.seats:
                ok = (r.seats, r.pending_seats) == (s.seats, seats)
            else:
                ok = (r.seats, r.pending_seats) == (s.seats, None)
            self.expect(ok, f"seats of {o.id} from {s.seats} to {seats}: {r}")

    async def op_cancel(self, o: Org, s: Subscription) -> None:
        r = await self.call(o, "cancel", self.kit.billing.cancel(o.id))
        if isinstance(r, Subscription) and o.fault is not None and o.fault.kind == "refused renewal":
            o.fault.want = "free"  # the renewal's retry finds the subscription cancelled: Free, nothing charged
        if isinstance(r, Subscription):
            self.expect(r.cancel_at_period_end or (s.status == "past_due" and r.status == "free"),
                        f"cancel of {o.id} ({s.status}): {r}")

    async def op_resume(self, o: Org, s: Subscription) -> None:
        r = await self.call(o, "resume", self.kit.billing.resume(o.id))
        if isinstance(r, Subscription) and o.fault is not None and o.fault.kind == "refused renewal":
            o.fault.want = None
        if isinstance(r, Subscription):
            self.expect(not r.cancel_at_period_end and s.cancel_at_period_end, f"resume of {o.id}: {s} -> {r}")

    async def op_card(self, o: Org, s: Subscription) -> None:
        kind: CardKind = "ok" if o.card != "ok" else "declined"
        r = await self.call(o, f"card {kind}", self.kit.use_card(o.id, kind))
        if isinstance(r, str):
            o.card = kind

    async def op_pack(self, o: Org, s: Subscription) -> None:
        # Not injected here: a pack whose charge is lost after Stripe charged (lose_after_stripe) fails its
        # purchase untyped, with the payment left pending (test_a_pack_charge_lost_after_stripe_..., xfail).
        pack = o.rng.choice(PACKS)
        idem = o.key("pack")
        key = pack_key(o.id, idem)
        roll = o.rng.random() if o.card == "ok" else 1.0
        fault = None
        if roll < 0.1:
            fault = self.inject(Fault("crashed pack", o.id, [key], self.step))
            self.kit.payments.crash_after_stripe.add(key)
        elif roll < 0.18:
            fault = self.inject(Fault("refused pack", o.id, [key], self.step))
            self.kit.payments.refuse_charges.add(key)
        try:
            r = await self.call(o, "pack", self.kit.billing.buy_credits(o.id, pack=pack, idempotency_key=idem),
                                injected=fault is not None)
        finally:
            self.kit.payments.refuse_charges.discard(key)
        credits = CATALOG.pack(pack).credits
        if fault is None:
            if not isinstance(r, BillingError) and r is not None:
                self.expect(r.credits == credits, f"pack {pack} of {o.id}: {r}")
            return
        if fault.kind == "crashed pack":
            fault.seen = key not in self.kit.payments.crash_after_stripe
            self.kit.payments.crash_after_stripe.discard(key)
            fault.resolved = fault.seen and not isinstance(r, BillingError) and r is not None and r.credits == credits
            self.expect(fault.resolved, f"crashed pack {key}: {r!r}, the crash fired: {fault.seen}")
            return
        fault.seen = isinstance(r, PaymentProviderRefused)
        self.expect(fault.seen, f"refused pack {key}: answered {r!r}")
        again = await self.call(o, "pack", self.kit.billing.buy_credits(o.id, pack=pack, idempotency_key=idem))
        fault.resolved = fault.seen and not isinstance(again, BillingError) and again is not None \
            and again.credits == credits
        self.expect(fault.resolved, f"refused pack {key} bought again once cleared: {again!r}")

    async def op_auto_recharge(self, o: Org, s: Subscription) -> None:
        await self.call(o, "auto_recharge", self.kit.billing.set_auto_recharge(
            o.id, threshold=Decimal(o.rng.choice((100, 500, 1000, 2000))), pack=o.rng.choice(("500", "1000")),
            spending_limit_cents=o.rng.choice((5000, 10000, 30000)), enabled=o.rng.random() < 0.8))

    async def op_debit(self, o: Org, s: Subscription) -> None:
        await self.call(o, "debit", self.kit.billing.debit(
            o.id, action="ai_chat", tier=o.rng.choice(("fast", "smart")),
            quantity=o.rng.choice((1, 10, 100, 500, 2000)), idempotency_key=o.key("debit")))

    async def op_drain(self, o: Org, s: Subscription) -> None:
        """Spend the balance down to around an auto-recharge threshold: the debit that crosses it starts one."""
        b = await self.call(o, "read", self.kit.billing.balance(o.id))
        if isinstance(b, Balance) and (q := int(b.available) - o.rng.randint(0, 2000)) > 0:
            await self.call(o, "drain", self.kit.billing.debit(o.id, action="ai_chat", tier="fast", quantity=q,
                                                                idempotency_key=o.key("debit")))

    async def op_hold(self, o: Org, s: Subscription) -> None:
        key, quantity, commit = o.key("hold"), o.rng.randint(1, 100), o.rng.random() < 0.7

        async def held() -> bool:
            try:
                async with self.kit.billing.hold(o.id, action="lead_enrichment", idempotency_key=key,
                                                 quantity=quantity):
                    if not commit:
                        raise _Release
            except _Release:
                return False
            return True

        await self.call(o, "hold", held())

    # -- faults ---------------------------------------------------------------------------------------------

    def inject(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def clear(self, keys: list[str]) -> None:
        for seam in (self.kit.payments.refuse_charges, self.kit.payments.lose_after_stripe,
                     self.kit.payments.crash_after_stripe):
            seam.difference_update(keys)

    async def paid_under(self, keys: list[str]) -> int:
        (n,), = await rows(self.kit, "SELECT count(*) FROM payments WHERE key = ANY(%s) AND status = 'succeeded'",
                           keys)
        return int(n)

    async def payment_status(self, key: str) -> str | None:
        found = await rows(self.kit, "SELECT status FROM payments WHERE key = %s", key)
        return str(found[0][0]) if found else None

    async def change(self, o: Org, s: Subscription, kind: str, want: str | int, op: Awaitable[Subscription],
                     *, faulty: bool) -> Subscription | BillingError | None:
        """An upgrade or added seats, maybe with Stripe refusing its charge (nothing changes, nothing is
        charged) or its answer lost after Stripe charged (ServiceUnavailable: the subscription completes the
        change on its own, an incident until then). The change's number is the workflow's own: every
        upgrade-n and seats-n key of the period gets the fault."""
        roll = o.rng.random()
        if not faulty or s.status != "active" or s.period_start is None or roll >= 0.14 or \
                (roll >= 0.07 and o.fault is not None):
            return await self.call(o, kind, op)
        keys = [period_key(o.id, s.period_start, f"{what}-{n}") for what in ("upgrade", "seats")
                for n in range(1, CHANGE_KEYS + 1)]
        lost = roll >= 0.07
        f = self.inject(Fault(f"{'lost' if lost else 'refused'} {kind}", o.id, keys, self.step, incident=kind,
                              paid_before=await self.paid_under(keys), want=want))
        (self.kit.payments.lose_after_stripe if lost else self.kit.payments.refuse_charges).update(keys)
        r = await self.call(o, kind, op, injected=True)
        if lost and isinstance(r, ServiceUnavailable):
            view = await self.read(o)
            f.seen = view is not None and view.incident is not None and \
                view.incident.startswith(f"{kind} failed") and "SimulatedLoss" in view.incident
            self.expect(f.seen, f"{f.kind} of {o.id}: no incident: {view}")
            self.clear(keys)  # the refused renewals keep their fault through an advance; this one is cleared now
            f.during = view
            if o.rng.random() < 0.5:
                done = await self.call(o, "retry_now", self.kit.billing.retry_now(o.id))
                if isinstance(done, Subscription):
                    await self.resolved(o, f, done)
            else:
                f.stage, o.fault = 1, f  # the backoff's next try (within a minute) completes it in the advance
            return r
        # Refused, or no charge was due (the last seconds of a period) or the change was refused first.
        self.clear(keys)
        f.seen = isinstance(r, PaymentProviderRefused) and not lost
        paid = await self.paid_under(keys)
        after = await self.read(o)
        f.resolved = paid == f.paid_before and after is not None and (
            isinstance(r, Subscription) or (after.plan, after.seats) == (s.plan, s.seats))
        self.expect(f.resolved, f"{f.kind} of {o.id}: answered {r!r}, {paid - f.paid_before} charged, now {after}")
        return r

    async def inject_at_renewals(self) -> timedelta | None:
        """Faults on renewals due in this step: Stripe refuses it, its answer is lost after Stripe charged, or
        the worker crashes right after Stripe charged. Only renewals due within FAULT_BAND of the first chosen
        one get theirs, so that one follow-up sees every incident retried for hours, not days. Returns how far
        to advance before that follow-up (None: no fault)."""
        now = self.kit.now()
        chosen: list[tuple[datetime, float, Org]] = []
        for o in self.orgs:
            s = o.sub
            if (o.fault is not None or o.card != "ok" or s is None or s.status != "active" or s.period_end is None
                    or not now + timedelta(minutes=5) < s.period_end < now + STEP - FAULT_FOLLOW_UP):
                continue
            roll = self.rng.random()
            if roll < 3 * P_RENEWAL_FAULT:
                chosen.append((s.period_end, roll, o))
        chosen.sort(key=lambda c: (c[0], c[2].id))
        due = [c for c in chosen if c[0] < chosen[0][0] + FAULT_BAND] if chosen else []
        last: datetime | None = None
        for period_end, roll, o in due:
            fresh = await self.read(o)
            if fresh is None or fresh.cancel_at_period_end or fresh.incident is not None \
                    or fresh.period_end != period_end or fresh.status != "active":
                continue
            o.sub, last = fresh, period_end
            key = period_key(o.id, period_end, "renewal")
            if roll < P_RENEWAL_FAULT:
                o.fault = self.inject(Fault("refused renewal", o.id, [key], self.step, incident="renewal"))
                self.kit.payments.refuse_charges.add(key)
            elif roll < 2 * P_RENEWAL_FAULT:
                o.fault = self.inject(Fault("lost renewal", o.id, [key], self.step, incident="renewal"))
                self.kit.payments.lose_after_stripe.add(key)
            else:
                o.fault = self.inject(Fault("crashed renewal", o.id, [key], self.step))
                self.kit.payments.crash_after_stripe.add(key)
        return None if last is None else last + FAULT_FOLLOW_UP - now

    def inject_smtp(self) -> None:
        for o in self.orgs:
            if o.fault is None and o.sub is not None and self.rng.random() < P_SMTP_REFUSED:
                o.fault = self.inject(Fault("smtp refused", o.id, [o.email], self.step))
                self.kit.sink.refuse.add(o.email)

    async def follow_up(self, final: bool = False) -> None:
        """After an advance: what each fault in progress did, and its end."""
        for o in self.orgs:
            f = o.fault
            if f is None:
                continue
            if f.kind == "smtp refused":
                if final or self.step >= f.step + SMTP_REFUSED_STEPS:
                    self.kit.sink.refuse.discard(o.email)
                    f.seen = f.resolved = True
                    o.fault = None
                continue
            if f.kind == "crashed renewal":
                key = f.keys[0]
                f.seen = key not in self.kit.payments.crash_after_stripe  # it fired
                self.clear(f.keys)
                status = await self.payment_status(key)
                f.resolved = f.seen and status == "succeeded"
                self.expect(f.resolved, f"crashed renewal {key}: fired {f.seen}, payment {status}")
                o.fault = None
                continue
            view = await self.read(o)
            if view is None:
                continue
            if f.stage == 0:  # the fault was in place through the advance: the incident is open
                error = "PaymentProviderRefused" if f.kind.startswith("refused") else "SimulatedLoss"
                f.seen = view.incident is not None and view.incident.startswith(f"{f.incident} failed") \
                    and error in view.incident
                self.expect(f.seen, f"{f.kind} of {o.id}: no incident: {view}")
                self.clear(f.keys)
                f.during = view
                if not (final or self.rng.random() < 0.5):
                    f.stage = 1  # left to the backoff (at most an hour): it goes through in the next advance
                    continue
                r = await self.call(o, "retry_now", self.kit.billing.retry_now(o.id))
                if isinstance(r, Subscription):
                    await self.resolved(o, f, r)
                o.fault = None
                continue
            await self.resolved(o, f, view)
            o.fault = None

    async def resolved(self, o: Org, f: Fault, view: Subscription) -> None:
        """The incident fault is over: its step went through once."""
        assert f.during is not None
        if f.incident == "renewal" and f.want == "free":  # cancelled while the incident was open
            done = view.status == "free" and await self.payment_status(f.keys[0]) is None
        elif f.incident == "renewal":
            # Charged once (a lost one found at Stripe; a refused one charged anew: declined if the card is).
            status = await self.payment_status(f.keys[0])
            done = view.renewals == f.during.renewals + 1 and status in (
                ("succeeded",) if f.kind == "lost renewal" else ("succeeded", "declined"))
        else:
            # Charged once, the change made (and kept, unless a cancellation took effect at the period's end).
            paid = await self.paid_under(f.keys)
            done = paid == f.paid_before + 1 and (
                (view.plan if f.incident == "upgrade" else view.seats) == f.want
                or (view.status == "free" and f.during.cancel_at_period_end))
        f.resolved = done and view.incident is None
        self.expect(f.resolved, f"{f.kind} of {o.id}: not complete: {view} (while open: {f.during})")


# -- the run ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def load_kit() -> AsyncIterator[TestKit]:
    async with start_testkit() as k:  # a fresh embedded database (see the module docstring)
        yield k


async def advance(kit: TestKit, delta: timedelta) -> None:
    try:
        await kit.advance(delta)
    except TimeoutError:  # a loaded machine: advance's settle waits 60 s at most; the clock has moved already
        await kit.settle(within=600)


async def rows(kit: TestKit, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(kit.database_url) as conn:
        cur = await conn.execute(sql, params)
        return list(await cur.fetchall())


async def stripe_intents(kit: TestKit) -> list[stripe.PaymentIntent]:
    """Every PaymentIntent localstripe holds (this kit's own)."""
    intents: list[stripe.PaymentIntent] = []
    params: PaymentIntentListParams = {"limit": 100}
    while True:
        page = await kit.payments.stripe.v1.payment_intents.list_async(params=params)
        intents += page.data
        if not page.has_more or not page.data:
            return intents
        params["starting_after"] = page.data[-1].id


async def final_checks(sim: Sim) -> list[str]:
    """The end-of-run statements beyond the audit; returns the figures they measured."""
    kit = sim.kit
    gate = asyncio.Semaphore(CONCURRENCY)

    async def view(o: Org) -> Subscription | BillingError | None:
        async with gate:
            return await sim.call(o, "read", kit.billing.subscription(o.id))

    views = dict(zip([o.id for o in sim.orgs], await asyncio.gather(*(view(o) for o in sim.orgs)), strict=True))
    renewal_payments = {org: (n, ok) for org, n, ok in await rows(
        kit, "SELECT org_id, count(*), count(*) FILTER (WHERE status = 'succeeded') FROM payments "
             "WHERE purpose = 'renewal' GROUP BY org_id")}
    statuses: Counter[str] = Counter()
    renewals = 0
    for org, v in views.items():
        if not isinstance(v, Subscription):
            continue
        statuses[v.status] += 1
        renewals += v.renewals
        sim.expect(v.incident is None, f"{org}: an incident is still open: {v.incident}")
        # Each renewal is charged once, under its own key, paid or declined: as many renewal payments.
        n = renewal_payments.get(org, (0, 0))[0]
        sim.expect(v.renewals == n, f"{org}: renewals {v.renewals}, renewal payments {n}")

    intents = await stripe_intents(kit)
    succeeded = [pi for pi in intents if pi.status == "succeeded"]
    per_key = Counter(metadata_value(pi, "billing_key") for pi in succeeded)
    twice = {k: n for k, n in per_key.items() if n > 1}
    sim.expect(not twice, f"keys with more than one succeeded PaymentIntent: {twice}")
    at_stripe = {(metadata_value(pi, "billing_key"), pi.id, pi.amount) for pi in succeeded}
    recorded = {(k, pi, amount) for k, pi, amount in await rows(
        kit, "SELECT key, stripe_payment_intent, amount_cents FROM payments WHERE status = 'succeeded'")}
    sim.expect(at_stripe == recorded, f"succeeded PaymentIntents without their payment: {at_stripe - recorded}; "
                                      f"succeeded payments without their PaymentIntent: {recorded - at_stripe}")
    pending = await rows(kit, "SELECT key FROM payments WHERE status = 'pending'")
    sim.expect(not pending, f"payments still pending: {pending}")

    charges = await rows(kit, "SELECT purpose, status, count(*), sum(amount_cents) FROM payments GROUP BY 1, 2 "
                              "ORDER BY 1, 2")
    (invoices,), = await rows(kit, "SELECT count(*) FROM invoices")
    (sent, failed, unsent), = await rows(
        kit, "SELECT count(*) FILTER (WHERE sent_at IS NOT NULL), count(*) FILTER (WHERE failed_at IS NOT NULL), "
             "count(*) FILTER (WHERE sent_at IS NULL AND failed_at IS NULL) FROM outbox")
    templates = Counter(m.template for m in kit.sink.messages())
    return [
        f"subscriptions at the end: {dict(sorted(statuses.items()))}; renewals counted: {renewals}",
        "charges (purpose status count EUR): " + "; ".join(
            f"{p} {s} {n} {Decimal(c or 0) / 100:.2f}" for p, s, n, c in charges),
        f"declined charges: {sum(n for _, s, n, _ in charges if s == 'declined')}; "
        f"invoices: {invoices}; PaymentIntents at Stripe: {len(intents)} ({len(succeeded)} succeeded)",
        f"emails received: {sum(templates.values())}; outbox sent {sent}, failed {failed}, unsent {unsent}; "
        f"by template: {dict(sorted(templates.items()))}",
    ]


async def test_a_simulated_year_of_organizations_with_faults_keeps_the_books_whole(load_kit: TestKit) -> None:
    kit = load_kit
    started = time.monotonic()
    print(f"\nload: seed {SEED} (BILLING_LOAD_SEED), {ORGS} organizations (BILLING_LOAD_ORGS), {MONTHS} months "
          f"(BILLING_LOAD_MONTHS): {STEPS} steps of {STEP_DAYS} days", flush=True)
    rng = random.Random(SEED)
    orgs = [Org(f"load-{i:04d}", f"billing@load-{i:04d}.test", rng.randrange(JOIN_STEPS),
                random.Random(f"{SEED}:{i}")) for i in range(ORGS)]
    sim = Sim(kit, rng, orgs)
    gate = asyncio.Semaphore(CONCURRENCY)
    audits: list[float] = []
    phases: dict[str, float] = {"operations": 0.0, "advance": 0.0}

    async def turn(o: Org) -> None:
        async with gate:
            await sim.turn(o)

    async def audit() -> None:
        t = time.monotonic()
        try:
            await assert_books_balance(kit)  # open incidents allowed: some injected faults are in progress
        except AssertionError as err:
            sim.problem(f"audit: {err}")
        audits.append(time.monotonic() - t)

    try:
        for step in range(STEPS):
            sim.step = step
            t = time.monotonic()
            # No call may let the time-skipping server skip (a pack purchase awaits a workflow's result).
            with kit.env.auto_time_skipping_disabled():
                await sim.follow_up()
                acting = [o for o in orgs if o.join_step == step or (o.join_step < step and rng.random() < P_TURN)]
                await asyncio.gather(*(turn(o) for o in acting))
                renewal_faults = await sim.inject_at_renewals()
            sim.inject_smtp()
            phases["operations"] += time.monotonic() - t
            t = time.monotonic()
            if renewal_faults is not None:
                await advance(kit, renewal_faults)
                with kit.env.auto_time_skipping_disabled():
                    await sim.follow_up()
                await advance(kit, STEP - renewal_faults)
            else:
                await advance(kit, STEP)
            phases["advance"] += time.monotonic() - t
            if (step + 1) % CHECKPOINT_STEPS == 0:
                await audit()
            if step % 10 == 9:
                print(f"  step {step + 1}/{STEPS}: {time.monotonic() - started:.0f}s, "
                      f"{sum(sim.ops.values())} operations, {len(sim.faults)} faults", flush=True)
        sim.step = STEPS
        with kit.env.auto_time_skipping_disabled():
            await sim.follow_up(final=True)
    finally:  # the kit is this module's: leave no fault behind for its teardown
        kit.payments.refuse_charges.clear()
        kit.payments.lose_after_stripe.clear()
        kit.payments.crash_after_stripe.clear()
        kit.sink.refuse.clear()
    simulated = time.monotonic() - started
    await kit.settle(within=600)
    t = time.monotonic()
    try:
        await assert_books_balance(kit, allow_incidents=False)
    except AssertionError as err:
        sim.problem(f"final audit: {err}")
    audits.append(time.monotonic() - t)
    figures = await final_checks(sim)
    unresolved = [f for f in sim.faults if not f.resolved]
    sim.expect(not unresolved, "injected faults not resolved: " + ", ".join(
        f"{f.kind} of {f.org} at step {f.step}" for f in unresolved))

    kinds = sorted({k for k, _ in sim.ops} - {"read"})
    print(f"load figures (seed {SEED}): {ORGS} organizations, {MONTHS} months ({STEPS * STEP_DAYS:.0f} days), "
          f"wall {time.monotonic() - started:.0f}s (simulation {simulated:.0f}s, {len(audits)} audits "
          f"{sum(audits):.0f}s; operations {phases['operations']:.0f}s, advances {phases['advance']:.0f}s)")
    reads = sum(n for (k, _), n in sim.ops.items() if k == "read")
    print(f"operations: {sum(sim.ops.values()) - reads} (and {reads} reads of a subscription or balance); " + "; ".join(
        f"{k} " + " ".join(f"{outcome}={n}" for (kk, outcome), n in sorted(sim.ops.items()) if kk == k)
        for k in kinds))
    faults = sorted({f.kind for f in sim.faults})
    print("faults injected/seen/resolved: " + "; ".join(
        f"{k} {sum(f.kind == k for f in sim.faults)}/{sum(f.kind == k and f.seen for f in sim.faults)}/"
        f"{sum(f.kind == k and f.resolved for f in sim.faults)}" for k in faults))
    for line in figures:
        print(line)
    assert not sim.problems, f"{len(sim.problems)} problems (seed {SEED}):\n" + "\n".join(sim.problems[:50])


# -- what the simulation found: minimal cases, left out of it (workflows/ is not this suite's to fix) ----------
#
# A charge Stripe made whose answer was lost for good (lose_after_stripe: the payment row stays pending, the
# PaymentIntent succeeded) must still be completed and answered (DESIGN.md section 8, rule 2).


@pytest.fixture(scope="module")
async def cases_kit() -> AsyncIterator[TestKit]:
    """A kit of their own: these cases leave broken books behind, which the load test's audits would see."""
    async with start_testkit() as k:
        yield k


async def assert_books_of(kit: TestKit, org: str) -> None:
    """The audit of one organization's books (each case leaves its own broken): no finding at all."""
    await kit.settle()
    report = await kit.audit(orgs=[org])
    assert not report.findings, [f"{f.check} {f.kind}: {f.detail}" for f in report.findings]


async def renewal_lost_after_stripe(kit: TestKit, org: str, plan: str) -> str:
    """Subscribe, then run the first renewal with its answer lost after Stripe charged: an open incident."""
    sub = await kit.billing.subscribe(org, plan=plan, email=f"billing@{org}.test")
    assert sub.period_end is not None
    key = period_key(org, sub.period_end, "renewal")
    kit.payments.lose_after_stripe.add(key)
    await kit.advance(sub.period_end + timedelta(seconds=30) - kit.now())
    held = await kit.billing.subscription(org)
    assert held.incident is not None and "SimulatedLoss" in held.incident
    return key


@pytest.mark.parametrize("change", ["cancel", "downgrade", "fewer seats", "upgrade"])
async def test_no_change_while_a_renewal_charged_but_unrecorded_is_in_doubt(cases_kit: TestKit, change: str) -> None:
    """Found by the simulation: a change accepted during such an incident either undid what the renewal
    paid for (cancel: to Free with the charge unrecorded) or conflicted with its key for good (downgrade).
    Now refused, typed and changing nothing, until the renewal is completed; then accepted."""
    kit, org = cases_kit, f"case-{change.replace(' ', '-')}"
    key = await renewal_lost_after_stripe(kit, org, "pro")
    calls = {
        "cancel": lambda: kit.billing.cancel(org),
        "downgrade": lambda: kit.billing.downgrade(org, plan="starter"),
        "fewer seats": lambda: kit.billing.change_seats(org, seats=1),
        "upgrade": lambda: kit.billing.upgrade(org, plan="enterprise"),
    }
    if change == "fewer seats":
        kit.payments.lose_after_stripe.discard(key)
        await kit.billing.retry_now(org)
        await kit.billing.change_seats(org, seats=3)  # more seats now, to have some to take away
        sub = await kit.billing.subscription(org)
        assert sub.period_end is not None
        key = period_key(org, sub.period_end, "renewal")
        kit.payments.lose_after_stripe.add(key)
        await kit.advance(sub.period_end + timedelta(seconds=30) - kit.now())
    before = await kit.billing.subscription(org)
    assert before.incident is not None
    with pytest.raises(InvalidRequest, match="being completed"):
        await calls[change]()
    assert await kit.billing.subscription(org) == before
    kit.payments.lose_after_stripe.discard(key)
    done = await kit.billing.retry_now(org)
    assert (done.incident, done.status) == (None, "active")
    assert [c.status for c in kit.charges(org) if c.purpose == "renewal"] == ["succeeded"] * done.renewals
    await calls[change]()  # the renewal completed: the change is accepted
    await assert_books_of(kit, org)


async def test_a_pack_charged_but_unrecorded_is_completed_and_answered(cases_kit: TestKit) -> None:
    """Found by the simulation: the purchase failed untyped with the payment pending. Now the charge in doubt
    is an incident, tried again under its key; the caller hears ServiceUnavailable meanwhile, and the same
    key answers the purchase once it completed."""
    kit, org = cases_kit, "case-pack"
    await kit.billing.subscribe(org, plan="starter", email=f"billing@{org}.test")
    key = pack_key(org, "p1")
    kit.payments.lose_after_stripe.add(key)
    deadline, kit.billing.deadline = kit.billing.deadline, timedelta(seconds=5)
    try:
        with pytest.raises(ServiceUnavailable):
            await kit.billing.buy_credits(org, pack="500", idempotency_key="p1")
    finally:
        kit.billing.deadline = deadline
        kit.payments.lose_after_stripe.discard(key)
    await kit.advance(timedelta(hours=2))  # the backoff's next try finds Stripe's PaymentIntent and records it
    assert [(c.purpose, c.status) for c in kit.charges(org)] == [("subscription", "succeeded"),
                                                                 ("pack", "succeeded")]
    bought = await kit.billing.buy_credits(org, pack="500", idempotency_key="p1")
    assert bought.credits == 500
    assert len(await kit.payments.stripe_payment_intents(org)) == 2
    await assert_books_of(kit, org)
